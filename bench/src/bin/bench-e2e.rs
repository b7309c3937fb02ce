//! `bench-e2e`: the standard end-to-end benchmark. One job — Kafka → dedupe
//! → identity → 10 audiences + 5 computed traits → Kafka sinks — on
//! generated data, with its two bounds measured in the same run.
//!
//! ```text
//! eval "$(scripts/kafka.sh start | grep '^KAFKA_BROKERS=')"; export KAFKA_BROKERS
//! cargo run --release -p weft-bench --bin bench-e2e -- --events 1000000
//! ```
//!
//! **Input.** `--events` generated events (`weft_bench::gen`, seed 42, 2 %
//! client retries, 0.1 % malformed lines, `events / 20` people) with event
//! times in the 30 days before the run (so windows are live), produced
//! round-robin to `--partitions` partitions of a fresh topic.
//!
//! **The job** (the spec is written by [`write_spec`]): a live Kafka source
//! (ingestion time, 100 ms ticks), dedupe by `messageId` (`--dedupe-window`),
//! identity with the default rules, the computed traits and audiences of
//! [`weft_bench::cost::TRAITS`] and [`weft_bench::cost::AUDIENCES`], and two
//! transactional Kafka sinks (`audiences`, `computed_traits`), on a
//! `weft_engine::runtime::Cluster` of `--workers` workers in this process.
//!
//! **Phases.**
//!
//! 1. **ceiling**: one thread, a plain rdkafka `BaseConsumer`
//!    (`read_committed`) over the topic, each value decoded with
//!    `serde_json::from_slice::<serde_json::Value>`: events/s;
//! 2. **weft, throughput**: the job submitted over the full topic; it is done
//!    with its input when every sink has committed a frontier above the
//!    wall-clock time at which the source had read every record (so every
//!    output change caused by the input is visible to `read_committed`
//!    readers). events/s = events / (that moment − submission). A live job
//!    is measured, not a bounded one: a bounded job ends by advancing to the
//!    end of time, which also plays out every window expiry of the next 90
//!    days. Peak memory is sampled every 50 ms during this phase: the Rust
//!    live heap (jemalloc's allocated bytes: the `weft` binary's allocator;
//!    librdkafka's buffers are not in it) and VmRSS (peak reset through `/proc/self/clear_refs` first). The peak
//!    includes the backlog's batches in flight; the **retained** heap, 2 s
//!    after the sinks caught up with the job idle, is the state the job
//!    holds: memory per profile = retained live heap growth / profiles;
//! 3. **weft, latency**: the same job goes on live; a producer adds new
//!    events at `R/2` (R from phase 2), and every `--probe-ms` a *probe*: a
//!    new anonymous visitor's page view of a blog post, which makes that
//!    visitor a member of `anonymous_readers`. **Latency of a probe** = wall
//!    time just before the probe is handed to the producer → wall time at
//!    which a `read_committed` consumer of the audiences topic (started at
//!    its end, `fetch.wait.max.ms` 10) receives the membership insert keyed
//!    `anonymous_id:<probe>/anonymous_readers`. It covers the producer, the
//!    broker, the source tick, the dataflow and the sink's transaction.
//!    p50/p99 over the probes after the first `--warmup-secs`;
//! 4. **COST**: [`weft_bench::cost::Cost`], one thread, consumes the same
//!    topic (`read_committed`) and computes the memberships and trait values
//!    at `T` = (the smallest frontier the sinks committed in phase 2) − 1, on
//!    the insert-only data: events/s (consume + decode + compute), and the
//!    compute alone, and its peak live heap growth (its whole state: it
//!    holds everything to the end); on the `profiles` workload
//!    ([`Cost::counting`]) the same identity and the 20 counts per profile;
//! 5. **check**: the sink topics are read back (`read_committed`) and
//!    accumulated up to logical time `T` (per key, the last record with
//!    `weft.time <= T`): the memberships must equal the COST's set exactly
//!    and every computed trait value must equal it (numbers within 1e-9
//!    relative: sums are added in another order).
//!
//! Topics and state are removed at the end.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;
use weft_bench::cost::{Cost, CostOutput, CostValue, AUDIENCES, TRAITS};
use weft_bench::gen::{GenConfig, Generator};
use weft_bench::kafka::send;
use weft_connectors::kafka::admin;
use weft_dataflows::spec::JobSpec;
use weft_engine::runtime::{Cluster, ClusterConfig, JobId, JobReport, JobStatus};

/// The `weft` binary's allocator; the live heap is jemalloc's count of
/// allocated bytes (`stats.allocated`: live allocations, in size classes).
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    about = "End-to-end: Kafka → dedupe → identity → audiences → Kafka, with its ceiling and COST."
)]
struct Args {
    /// `standard`: the benchmark job on `weft_bench::gen` events (the
    /// throughput, latency and COST figures). `profiles`: the memory goal's
    /// profile shape, `--profiles` profiles of 3 identifiers and 20 counters
    /// each (see [`profile_events`]); throughput and memory, checked against
    /// the counts the generator implies and against COST.
    #[arg(long, value_enum, default_value_t = Workload::Standard)]
    workload: Workload,
    /// Events to produce (workload `standard`).
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Profiles to produce (workload `profiles`: 21 events each).
    #[arg(long, default_value_t = 100_000)]
    profiles: u64,
    /// Partitions of the input topic.
    #[arg(long, default_value_t = 2)]
    partitions: i32,
    /// Timely worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Dedupe window of the job (a job-spec duration).
    /// The default covers the whole generated history: a backfill plays 30
    /// days of event time in seconds, and records more than a window older
    /// than the newest event of their logical time count as late, which
    /// dedupe passes unchecked (at 24 h most records of the backfill are late).
    #[arg(long, default_value = "30d")]
    dedupe_window: String,
    /// The Kafka source's tick (a job-spec duration): the granularity of logical time.
    #[arg(long, default_value = "100ms")]
    tick: String,
    /// Length of the latency phase, seconds (0: skip it).
    #[arg(long, default_value_t = 30.0)]
    latency_secs: f64,
    /// Probes sent during the first seconds of the latency phase are not counted.
    #[arg(long, default_value_t = 5.0)]
    warmup_secs: f64,
    /// Interval between two latency probes, ms.
    #[arg(long, default_value_t = 100)]
    probe_ms: u64,
    /// Skip the COST baseline and the check.
    #[arg(long)]
    no_cost: bool,
    /// Record and print the updates each arrangement holds once caught up
    /// (timely's event log costs a few percent of throughput).
    #[arg(long)]
    arrangement_sizes: bool,
    /// Write a jemalloc heap profile of the retained state (idle, 2 s after
    /// catching up) into this directory: `heap.retained.prof`, read with
    /// `jeprof --text`. Needs `--features heap-profile` and
    /// `_RJEM_MALLOC_CONF=prof:true,lg_prof_sample:16` in the environment.
    #[arg(long)]
    heap_profile: Option<std::path::PathBuf>,
    /// Brokers [default: $KAFKA_BROKERS].
    #[arg(long)]
    brokers: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Workload {
    Standard,
    Profiles,
}

const DAY_MS: i64 = 86_400_000;
const PROBE_AUDIENCE: &str = "anonymous_readers";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn producer(brokers: &str, linger_ms: &str) -> Result<BaseProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", linger_ms)
        .set("batch.size", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create()?)
}

/// Generated events whose times fill `[start_ms, start_ms + span_ms)`.
fn generator(events: u64, seed: u64, start_ms: i64, span_ms: i64) -> Result<Generator> {
    let mut cfg = GenConfig::with_events(events);
    cfg.seed = seed;
    cfg.start_ms = start_ms;
    cfg.span_ms = span_ms.max(1);
    Ok(Generator::new(&cfg)?)
}

/// Produces the history; returns (records, bytes).
fn produce(brokers: &str, topic: &str, events: u64, partitions: i32) -> Result<(u64, u64)> {
    let p = producer(brokers, "20")?;
    let span = 30 * DAY_MS;
    let mut gen = generator(events, 42, now_ms() - span, span)?;
    let mut buf = Vec::with_capacity(64 << 10);
    let (mut n, mut bytes) = (0u64, 0u64);
    while gen.next_into(&mut buf).is_some() {
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        send(&p, topic, (n % partitions as u64) as i32, &buf)?;
        p.poll(Duration::ZERO);
        bytes += buf.len() as u64;
        buf.clear();
        n += 1;
    }
    p.flush(Duration::from_secs(300))?;
    Ok((n, bytes))
}

// ---------------------------------------------------------------------------
// The profile-shaped workload (the memory goal: profiles of 3 identifiers and
// 20 counters each).

/// Counters per profile in the `profiles` workload.
const COUNTERS: usize = 20;

/// The `profiles` workload's counters: (trait, event name), one unwindowed
/// count per event name.
fn counter_events() -> Vec<(String, String)> {
    (0..COUNTERS)
        .map(|k| (format!("counter_{k:02}"), format!("Counter {k:02}")))
        .collect()
}

/// The `profiles` workload's computed traits: (trait, definition).
fn counter_traits() -> Vec<(String, String)> {
    counter_events()
        .into_iter()
        .map(|(name, event)| (name, format!(r#"count(track "{event}")"#)))
        .collect()
}

/// Event `round` (0..=COUNTERS) of profile `p` of `profiles`, with event times
/// filling `[start_ms, start_ms + span_ms)` in production order (round by
/// round, profile by profile). Round 0 is an anonymous visitor's
/// `track "Counter 00"`; round 1 is the `identify` that names its user id and
/// email (3 identifiers: the anonymous profile merges with the user's);
/// rounds 2..=20 are `track "Counter 01"`..`"Counter 19"`, by user id on odd
/// rounds and by anonymous id on even ones. Every profile ends with each of
/// its 20 counters at 1, and is named by its anonymous id (seen first).
fn profile_event(p: u64, round: usize, profiles: u64, start_ms: i64, span_ms: i64) -> String {
    let slot = round as u64 * profiles + p;
    let total = (COUNTERS as u64 + 1) * profiles;
    let ts = weft_bench::gen::format_iso8601_ms(
        start_ms + (slot as f64 * span_ms as f64 / total as f64) as i64,
    );
    let (anon, user) = (format!("anon-{p:08x}"), format!("user-{p}"));
    if round == 1 {
        return format!(
            r#"{{"type":"identify","messageId":"m-{p}-{round}","anonymousId":"{anon}","userId":"{user}","traits":{{"email":"{user}@example.com"}},"timestamp":"{ts}"}}"#
        );
    }
    let counter = if round == 0 { 0 } else { round - 1 };
    let who = if round % 2 == 1 {
        format!(r#""userId":"{user}""#)
    } else {
        format!(r#""anonymousId":"{anon}""#)
    };
    format!(
        r#"{{"type":"track","messageId":"m-{p}-{round}","event":"Counter {counter:02}",{who},"properties":{{"n":{round}}},"timestamp":"{ts}"}}"#
    )
}

/// Produces the `profiles` workload; returns (records, bytes).
fn produce_profiles(
    brokers: &str,
    topic: &str,
    profiles: u64,
    partitions: i32,
) -> Result<(u64, u64)> {
    let p = producer(brokers, "20")?;
    let span = DAY_MS;
    let start = now_ms() - span;
    let (mut n, mut bytes) = (0u64, 0u64);
    for round in 0..=COUNTERS {
        for k in 0..profiles {
            let event = profile_event(k, round, profiles, start, span);
            send(&p, topic, (n % partitions as u64) as i32, event.as_bytes())?;
            p.poll(Duration::ZERO);
            bytes += event.len() as u64;
            n += 1;
        }
    }
    p.flush(Duration::from_secs(300))?;
    Ok((n, bytes))
}

/// Checks the `profiles` workload's computed traits at `t`: every profile's
/// 20 counters at 1, keyed by its anonymous id, and nothing else.
fn check_profiles(brokers: &str, topic: &str, t: u64, profiles: u64) -> Result<(bool, String)> {
    let traits = sink_state(brokers, &format!("{topic}-traits"), t)?;
    let mut got: BTreeSet<(String, String)> = BTreeSet::new();
    let mut wrong_value = 0u64;
    for d in traits.values() {
        let name = d.get("trait").and_then(|v| v.as_str()).unwrap_or_default();
        let profile = d
            .get("profile")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        if d.get("value").and_then(serde_json::Value::as_f64) != Some(1.0) {
            wrong_value += 1;
        }
        got.insert((name.to_string(), profile.to_string()));
    }
    let want: BTreeSet<(String, String)> = (0..profiles)
        .flat_map(|p| {
            (0..COUNTERS).map(move |k| {
                (
                    format!("counter_{k:02}"),
                    format!("anonymous_id:anon-{p:08x}"),
                )
            })
        })
        .collect();
    let missing = want.difference(&got).count();
    let extra = got.difference(&want).count();
    let ok = missing == 0 && extra == 0 && wrong_value == 0;
    Ok((
        ok,
        format!(
            "{}: {} counter values (expected {}; missing {missing}, unexpected {extra}, not 1: {wrong_value})",
            if ok { "MATCH" } else { "MISMATCH" },
            got.len(),
            want.len()
        ),
    ))
}

// ---------------------------------------------------------------------------
// Reading a topic.

/// A `read_committed` consumer with every partition of `topic` assigned at `offset`.
fn consumer(brokers: &str, topic: &str, offset: Offset) -> Result<(BaseConsumer, usize)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "weft-bench-e2e")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len());
    ensure!(partitions > 0, "topic {topic} has no partitions");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(topic, p, offset)?;
    }
    c.assign(&tpl)?;
    Ok((c, partitions))
}

/// End offsets (exclusive) per partition.
type Ends = BTreeMap<i32, i64>;

/// Reads every record of `topic` up to its end (or, with `ends`, below those
/// offsets), calling `f` with each message; returns the records read and the
/// end offsets seen.
fn read_all(
    brokers: &str,
    topic: &str,
    ends: Option<&Ends>,
    mut f: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<(u64, Ends)> {
    let (c, partitions) = consumer(brokers, topic, Offset::Beginning)?;
    let mut done: BTreeSet<i32> = BTreeSet::new();
    if let Some(ends) = ends {
        // Partitions with nothing to read are done from the start.
        done.extend((0..partitions as i32).filter(|p| ends.get(p).copied().unwrap_or(0) <= 0));
    }
    let mut seen: Ends = BTreeMap::new();
    let mut n = 0u64;
    let deadline = Instant::now() + Duration::from_secs(900);
    while done.len() < partitions {
        ensure!(Instant::now() < deadline, "reading {topic} took over 900 s");
        match c.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                if ends.is_none() {
                    done.insert(p);
                }
            }
            Some(Err(e)) => bail!("reading {topic}: {e}"),
            Some(Ok(m)) => {
                let (p, o) = (m.partition(), m.offset());
                let end = ends.map(|e| e.get(&p).copied().unwrap_or(0));
                if end.is_some_and(|end| o >= end) {
                    done.insert(p);
                    continue;
                }
                if ends.is_none() {
                    done.remove(&p);
                }
                seen.insert(p, o + 1);
                n += 1;
                f(&m);
                if end.is_some_and(|end| o + 1 >= end) {
                    done.insert(p);
                }
            }
        }
    }
    Ok((n, seen))
}

/// CPU time (user + system) of the calling thread, from /proc (10 ms resolution).
fn thread_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU time (user + system) of the whole process, from /proc (10 ms resolution).
fn process_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// The ceiling: consume + `serde_json::Value` decode, one thread. Returns
/// (secs, cpu secs, the end offsets of the history).
fn ceiling(brokers: &str, topic: &str, expected: u64) -> Result<(f64, f64, Ends)> {
    let (t, cpu) = (Instant::now(), thread_cpu());
    let mut valid = 0u64;
    let (n, ends) = read_all(brokers, topic, None, |m| {
        let payload = m.payload().unwrap_or_default();
        valid += u64::from(serde_json::from_slice::<serde_json::Value>(payload).is_ok());
    })?;
    std::hint::black_box(valid);
    ensure!(
        n == expected,
        "the ceiling read {n} records, expected {expected}"
    );
    Ok((t.elapsed().as_secs_f64(), thread_cpu() - cpu, ends))
}

// ---------------------------------------------------------------------------
// Memory.

/// Bytes allocated and not yet freed (jemalloc's `stats.allocated`, read
/// after advancing its statistics epoch).
fn live_heap() -> i64 {
    use tikv_jemalloc_ctl::{epoch, stats};
    if epoch::advance().is_err() {
        return 0;
    }
    stats::allocated::read().map_or(0, |b| b as i64)
}

/// Writes jemalloc's sampled heap profile (live allocations by call stack).
#[cfg(feature = "heap-profile")]
fn dump_heap_profile(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // The mallctl keeps the pointer only for the call; a leaked name is a
    // few bytes once per run.
    let name: &'static [u8] = Box::leak(name.into_bytes_with_nul().into_boxed_slice());
    tikv_jemalloc_ctl::raw::write_str(b"prof.dump\0", name).map_err(|e| {
        anyhow::anyhow!("prof.dump failed ({e}): run with _RJEM_MALLOC_CONF=prof:true")
    })?;
    println!("heap profile of the retained state: {}", path.display());
    Ok(())
}

#[cfg(not(feature = "heap-profile"))]
fn dump_heap_profile(_path: &Path) -> Result<()> {
    bail!("--heap-profile needs bench-e2e built with --features heap-profile")
}

fn status_kb(key: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Samples the live heap and VmRSS every 50 ms until stopped; keeps the peaks.
struct MemorySampler {
    stop: Arc<AtomicBool>,
    peaks: Arc<Mutex<(i64, u64)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MemorySampler {
    fn start() -> MemorySampler {
        // Reset VmHWM (peak RSS) to the current RSS.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let stop = Arc::new(AtomicBool::new(false));
        let peaks = Arc::new(Mutex::new((live_heap(), status_kb("VmRSS:"))));
        let (s, p) = (stop.clone(), peaks.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let (heap, rss) = (live_heap(), status_kb("VmRSS:"));
                let mut g = p.lock().expect("peaks");
                *g = (g.0.max(heap), g.1.max(rss));
                drop(g);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        MemorySampler {
            stop,
            peaks,
            thread: Some(thread),
        }
    }

    /// (peak live heap bytes, peak RSS KiB: the larger of the samples and VmHWM).
    fn finish(mut self) -> (i64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let (heap, rss) = *self.peaks.lock().expect("peaks");
        (heap, rss.max(status_kb("VmHWM:")))
    }
}

// ---------------------------------------------------------------------------
// The job.

/// Writes and loads the job spec (live Kafka source, two Kafka sinks).
fn write_spec(
    dir: &Path,
    brokers: &str,
    topic: &str,
    dedupe_window: &str,
    tick: &str,
    workload: Workload,
) -> Result<JobSpec> {
    let mut spec = format!(
        r#"[job]
name = "bench-e2e-{pid}"
state_dir = "{state}"

[[sources]]
type = "kafka"
name = "events"
brokers = "{brokers}"
topics = ["{topic}"]
tick = "{tick}"

[dedupe]
window = "{dedupe_window}"

[identity]
"#,
        pid = std::process::id(),
        state = dir.join("state").display(),
    );
    let (traits, audiences, sinks): (Vec<(String, String)>, &[(&str, &str)], &[(&str, &str)]) =
        match workload {
            Workload::Standard => (
                TRAITS
                    .iter()
                    .map(|(n, q)| (n.to_string(), q.to_string()))
                    .collect(),
                &AUDIENCES,
                &[("audiences", "audiences"), ("traits", "computed_traits")],
            ),
            Workload::Profiles => (counter_traits(), &[], &[("traits", "computed_traits")]),
        };
    for (name, query) in traits {
        spec.push_str(&format!(
            "\n[[traits]]\nname = \"{name}\"\nquery = '{query}'\n"
        ));
    }
    for (name, query) in audiences {
        spec.push_str(&format!(
            "\n[[audiences]]\nname = \"{name}\"\nquery = '{query}'\n"
        ));
    }
    for (name, output) in sinks {
        spec.push_str(&format!(
            "\n[[sinks]]\ntype = \"kafka\"\nname = \"{name}\"\noutput = \"{output}\"\nbrokers = \"{brokers}\"\ntopic = \"{topic}-{name}\"\npartitions = 1\noptions = {{ \"retry.backoff.ms\" = \"5\" }}\n"
        ));
    }
    let path = dir.join("e2e.toml");
    std::fs::write(&path, spec)?;
    Ok(JobSpec::load(&path)?)
}

fn report(cluster: &Cluster, id: JobId) -> Result<JobReport> {
    cluster.report(id).context("the job is registered")
}

/// The smallest frontier the job's sinks have committed (`None` until each has one).
fn sink_frontier(r: &JobReport) -> Option<u64> {
    if r.sinks.is_empty() {
        return None;
    }
    r.sinks
        .values()
        .map(|s| s.frontier)
        .try_fold(u64::MAX, |m, f| f.map(|f| m.min(f)))
}

/// Phase 2 result.
struct Throughput {
    secs: f64,
    /// CPU seconds of the whole process during the phase.
    cpu: f64,
    /// The evaluation time: every input record is at a logical time `<= t`,
    /// and the sinks have committed everything at times `<= t`.
    t: u64,
    peak_heap: i64,
    peak_rss_kb: u64,
    heap_before: i64,
    rss_before_kb: u64,
    /// Live heap 2 s after the sinks caught up (the job idle): the state the
    /// job retains, without the in-flight batches of the backlog.
    retained_heap: i64,
    /// The arrangements' sizes at the same moment (when recorded).
    arrangements: Vec<weft_engine::arrangements::ArrangementSize>,
    /// The event log's sizes at the same moment (`None`: events on the heap).
    event_log: Option<weft_dataflows::stored::EventLogStats>,
    /// Window expiries held until their time.
    held: weft_operators::future::Held,
    report: JobReport,
}

fn throughput(
    cluster: &Cluster,
    spec: &JobSpec,
    expected: u64,
    heap_profile: Option<&Path>,
) -> Result<(JobId, Throughput)> {
    let heap_before = live_heap();
    let rss_before_kb = status_kb("VmRSS:");
    let sampler = MemorySampler::start();
    let cpu = process_cpu();
    let started = Instant::now();
    let id = cluster.submit(spec)?;
    let deadline = started + Duration::from_secs(3600);
    let read_all_at = loop {
        ensure!(
            Instant::now() < deadline,
            "the job did not read the topic within an hour"
        );
        let r = report(cluster, id)?;
        ensure!(
            r.status != JobStatus::Finished,
            "the job finished: {:?}",
            r.errors
        );
        if r.records >= expected {
            break now_ms() as u64;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let frontier = loop {
        ensure!(
            Instant::now() < deadline,
            "the sinks did not catch up within an hour"
        );
        let r = report(cluster, id)?;
        if let Some(f) = sink_frontier(&r).filter(|f| *f > read_all_at) {
            break f;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let secs = started.elapsed().as_secs_f64();
    let cpu = process_cpu() - cpu;
    let (peak_heap, peak_rss_kb) = sampler.finish();
    std::thread::sleep(Duration::from_secs(2));
    let retained_heap = live_heap();
    if let Some(dir) = heap_profile {
        dump_heap_profile(&dir.join("heap.retained.prof"))?;
    }
    let arrangements = weft_engine::arrangements::snapshot();
    let event_log = weft_dataflows::stored::log().map(|l| l.stats());
    let held = weft_operators::future::held();
    Ok((
        id,
        Throughput {
            retained_heap,
            arrangements,
            event_log,
            held,
            secs,
            cpu,
            t: frontier - 1,
            peak_heap,
            peak_rss_kb,
            heap_before,
            rss_before_kb,
            report: report(cluster, id)?,
        },
    ))
}

// ---------------------------------------------------------------------------
// Latency.

fn probe_key(k: u64) -> String {
    format!(
        "anonymous_id:probe-{}-{k}/{PROBE_AUDIENCE}",
        std::process::id()
    )
}

fn probe_event(k: u64) -> String {
    let now = weft_bench::gen::format_iso8601_ms(now_ms());
    format!(
        r#"{{"type":"page","messageId":"probe-{pid}-{k}","anonymousId":"probe-{pid}-{k}","name":"Blog Post","properties":{{"path":"/blog/latency-probe","title":"Probe"}},"context":{{"library":{{"name":"bench-e2e","version":"1"}}}},"timestamp":"{now}","sentAt":"{now}"}}"#,
        pid = std::process::id()
    )
}

/// Watches the audiences topic from its end; records when each probe's membership insert arrives.
fn watch_probes(
    brokers: String,
    topic: String,
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let (c, _) = consumer(&brokers, &topic, Offset::End)?;
    while !stop.load(Ordering::Relaxed) {
        match c.poll(Duration::from_millis(5)) {
            Some(Ok(m)) if m.payload().is_some() => {
                let at = Instant::now();
                if let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) {
                    if key.starts_with("anonymous_id:probe-") {
                        seen.lock()
                            .expect("seen")
                            .entry(key.to_string())
                            .or_insert(at);
                    }
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) | None | Some(Ok(_)) => {}
            Some(Err(e)) => bail!("watching {topic}: {e}"),
        }
    }
    Ok(())
}

/// Phase 3 result.
struct Latency {
    ingest_rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    probes: usize,
    missing: usize,
    /// Wall clock minus the sinks' committed frontier, sampled every 100 ms
    /// after the warm-up: p50, p99 (ms). Separates the dataflow's lag from
    /// the output topic's visibility.
    frontier_lag_ms: (f64, f64),
    /// Sink commits per second and mean commit duration (ms) during the phase.
    commits_per_sec: f64,
    commit_ms: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn latency(
    args: &Args,
    brokers: &str,
    topic: &str,
    cluster: &Cluster,
    id: JobId,
    rate: f64,
) -> Result<Latency> {
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (b, t, s, st) = (
            brokers.to_string(),
            format!("{topic}-audiences"),
            seen.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || watch_probes(b, t, s, st))
    };
    std::thread::sleep(Duration::from_secs(1)); // let the watcher reach the end
    let load = producer(brokers, "5")?;
    let probes = producer(brokers, "0")?;
    let secs = args.latency_secs;
    let total = (rate * secs) as u64 + 1;
    let mut gen = generator(total, 4242, now_ms(), (secs * 1e3) as i64)?;
    let first = report(cluster, id)?;
    let before = first.records;
    let commit_stats = |r: &JobReport| {
        r.sinks.values().fold((0u64, 0.0f64), |(n, s), k| {
            (n + k.commit_seconds.count, s + k.commit_seconds.sum_seconds)
        })
    };
    let commits_before = commit_stats(&first);
    let mut lags: Vec<f64> = Vec::new();
    let mut next_sample = Instant::now();
    let started = Instant::now();
    let mut sent = 0u64;
    let mut sent_probes: Vec<(u64, Instant)> = Vec::new();
    let mut buf = Vec::with_capacity(4096);
    let probe_every = Duration::from_millis(args.probe_ms.max(1));
    let mut next_probe = started;
    let partitions = args.partitions as u64;
    while started.elapsed().as_secs_f64() < secs {
        let due = ((started.elapsed().as_secs_f64() * rate) as u64).min(total);
        while sent < due {
            buf.clear();
            if gen.next_into(&mut buf).is_none() {
                break;
            }
            if buf.last() == Some(&b'\n') {
                buf.pop();
            }
            send(&load, topic, (sent % partitions) as i32, &buf)?;
            sent += 1;
        }
        load.poll(Duration::ZERO);
        if Instant::now() >= next_probe {
            let k = sent_probes.len() as u64;
            let event = probe_event(k);
            let at = Instant::now();
            send(&probes, topic, (k % partitions) as i32, event.as_bytes())?;
            probes.poll(Duration::ZERO);
            sent_probes.push((k, at));
            next_probe += probe_every;
        }
        if Instant::now() >= next_sample {
            next_sample += Duration::from_millis(100);
            if started.elapsed().as_secs_f64() >= args.warmup_secs {
                if let Some(f) = sink_frontier(&report(cluster, id)?) {
                    lags.push((now_ms() - f as i64) as f64);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let phase_secs = started.elapsed().as_secs_f64();
    let commits_after = commit_stats(&report(cluster, id)?);
    let commits = commits_after.0.saturating_sub(commits_before.0);
    let commit_secs = commits_after.1 - commits_before.1;
    lags.sort_by(f64::total_cmp);
    load.flush(Duration::from_secs(60))?;
    probes.flush(Duration::from_secs(60))?;
    let ingested = report(cluster, id)?.records - before;
    let ingest_rate = ingested as f64 / started.elapsed().as_secs_f64();
    // Wait (bounded) for the last probes.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let s = seen.lock().expect("seen");
        if sent_probes
            .iter()
            .all(|(k, _)| s.contains_key(&probe_key(*k)))
        {
            break;
        }
        drop(s);
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    watcher.join().expect("watcher thread")?;
    let seen = seen.lock().expect("seen");
    let warmup = started + Duration::from_secs_f64(args.warmup_secs);
    let mut lat = Vec::new();
    let mut missing = 0;
    for (k, at) in sent_probes.iter().filter(|(_, at)| *at >= warmup) {
        match seen.get(&probe_key(*k)) {
            Some(got) => lat.push(got.duration_since(*at).as_secs_f64() * 1e3),
            None => missing += 1,
        }
    }
    lat.sort_by(f64::total_cmp);
    Ok(Latency {
        ingest_rate,
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        max_ms: percentile(&lat, 1.0),
        probes: lat.len(),
        missing,
        frontier_lag_ms: (percentile(&lags, 0.5), percentile(&lags, 0.99)),
        commits_per_sec: commits as f64 / phase_secs,
        commit_ms: if commits > 0 {
            commit_secs * 1e3 / commits as f64
        } else {
            f64::NAN
        },
    })
}

// ---------------------------------------------------------------------------
// COST and the check.

/// Phase 4 result.
struct CostRun {
    secs: f64,
    compute_secs: f64,
    peak_heap: i64,
    /// Live heap growth after the last event, before `finish` builds the
    /// output (whose strings for every value are the comparison's, not state).
    state_heap: i64,
    output: CostOutput,
}

fn cost(
    brokers: &str,
    topic: &str,
    ends: &Ends,
    t: u64,
    expected: u64,
    counting: bool,
) -> Result<CostRun> {
    let heap_before = live_heap();
    let sampler = MemorySampler::start();
    let started = Instant::now();
    let mut program = if counting {
        Cost::counting(t as i64, &counter_events())
    } else {
        Cost::new(t as i64)
    };
    let mut compute = Duration::ZERO;
    let (n, _) = read_all(brokers, topic, Some(ends), |m| {
        let c = Instant::now();
        program.push(m.payload().unwrap_or_default());
        compute += c.elapsed();
    })?;
    ensure!(
        n == expected,
        "the COST program read {n} records, expected {expected}"
    );
    let state_heap = live_heap() - heap_before;
    let c = Instant::now();
    let output = program.finish();
    compute += c.elapsed();
    let secs = started.elapsed().as_secs_f64();
    let (peak_heap, _) = sampler.finish();
    Ok(CostRun {
        secs,
        compute_secs: compute.as_secs_f64(),
        peak_heap: peak_heap - heap_before,
        state_heap,
        output,
    })
}

/// A sink topic accumulated up to logical time `t`: key → data (JSON), for keys present.
fn sink_state(brokers: &str, topic: &str, t: u64) -> Result<BTreeMap<String, serde_json::Value>> {
    let mut state: BTreeMap<String, Option<serde_json::Value>> = BTreeMap::new();
    let mut bad = 0u64;
    read_all(brokers, topic, None, |m| {
        let time = m
            .headers()
            .and_then(|h| h.iter().find(|x| x.key == "weft.time"))
            .and_then(|x| std::str::from_utf8(x.value?).ok()?.parse::<u64>().ok());
        let (Some(time), Some(key)) = (time, m.key().and_then(|k| std::str::from_utf8(k).ok()))
        else {
            bad += 1;
            return;
        };
        if time > t {
            return;
        }
        let data = m.payload().and_then(|p| {
            let v: serde_json::Value = serde_json::from_slice(p).ok()?;
            Some(v.get("data")?.clone())
        });
        state.insert(key.to_string(), data);
    })?;
    ensure!(
        bad == 0,
        "{bad} records of {topic} had no key or weft.time header"
    );
    Ok(state
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect())
}

fn same_value(weft: &serde_json::Value, cost: &CostValue) -> bool {
    match (weft, cost) {
        (serde_json::Value::Number(n), CostValue::Num(x)) => n
            .as_f64()
            .is_some_and(|y| (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)),
        (serde_json::Value::String(s), CostValue::Str(c)) => s == c,
        (serde_json::Value::Bool(b), CostValue::Bool(c)) => b == c,
        (serde_json::Value::Null, CostValue::Null) => true,
        _ => false,
    }
}

/// Compares Weft's sinks at `t` with the COST output; returns a one-line verdict and whether it matched.
fn check(
    brokers: &str,
    topic: &str,
    t: u64,
    cost: &CostOutput,
    with_audiences: bool,
) -> Result<(bool, String)> {
    let audiences = if with_audiences {
        sink_state(brokers, &format!("{topic}-audiences"), t)?
    } else {
        BTreeMap::new()
    };
    let traits = sink_state(brokers, &format!("{topic}-traits"), t)?;
    let weft_members: BTreeSet<(String, String)> = audiences
        .values()
        .filter_map(|d| {
            Some((
                d.get("audience")?.as_str()?.to_string(),
                d.get("profile")?.as_str()?.to_string(),
            ))
        })
        .collect();
    let only_weft = weft_members.difference(&cost.memberships).count();
    let only_cost = cost.memberships.difference(&weft_members).count();
    let mut weft_traits: BTreeMap<(String, String), serde_json::Value> = BTreeMap::new();
    for d in traits.values() {
        let name = d.get("trait").and_then(|v| v.as_str()).unwrap_or_default();
        let profile = d
            .get("profile")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let value = d.get("value").cloned().unwrap_or(serde_json::Value::Null);
        weft_traits.insert((name.to_string(), profile.to_string()), value);
    }
    let trait_mismatch = weft_traits
        .iter()
        .filter(|(k, v)| cost.traits.get(*k).is_none_or(|c| !same_value(v, c)))
        .count()
        + cost
            .traits
            .keys()
            .filter(|k| !weft_traits.contains_key(*k))
            .count();
    let ok = only_weft == 0 && only_cost == 0 && trait_mismatch == 0;
    let mut per_audience: BTreeMap<&str, usize> = BTreeMap::new();
    for (a, _) in &weft_members {
        *per_audience.entry(a.as_str()).or_default() += 1;
    }
    let verdict = format!(
        "{}: memberships (Weft {} / COST {}; only in Weft {only_weft}, only in COST {only_cost}), \
         computed-trait values (Weft {} / COST {}; differing or missing {trait_mismatch})\n  memberships per audience: {per_audience:?}",
        if ok { "MATCH" } else { "MISMATCH" },
        weft_members.len(),
        cost.memberships.len(),
        weft_traits.len(),
        cost.traits.len(),
    );
    Ok((ok, verdict))
}

// ---------------------------------------------------------------------------

fn main() -> Result<()> {
    let args = Args::parse();
    let brokers = args
        .brokers
        .clone()
        .or_else(|| std::env::var("KAFKA_BROKERS").ok())
        .context("set --brokers or KAFKA_BROKERS (eval \"$(scripts/kafka.sh start)\")")?;
    let topic = format!("bench-e2e-{}", std::process::id());
    admin::create_topic(&brokers, &topic, args.partitions, &[])?;
    let dir = tempfile::tempdir()?;
    let result = run(&args, &brokers, &topic, dir.path());
    let topics = [
        topic.clone(),
        format!("{topic}-audiences"),
        format!("{topic}-traits"),
        format!("{topic}-audiences.weft-progress"),
        format!("{topic}-traits.weft-progress"),
    ];
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    if let Err(e) = admin::delete_topics(&brokers, &refs) {
        eprintln!("warning: cannot delete the benchmark topics: {e}");
    }
    result
}

fn run(args: &Args, brokers: &str, topic: &str, dir: &Path) -> Result<()> {
    let mb = |b: f64| b / 1e6;
    let t = Instant::now();
    let profiles_workload = args.workload == Workload::Profiles;
    let (events, bytes) = if profiles_workload {
        produce_profiles(brokers, topic, args.profiles, args.partitions)?
    } else {
        produce(brokers, topic, args.events, args.partitions)?
    };
    println!(
        "produce: {events} events ({:.0} MB) to {} partitions in {:.1} s",
        mb(bytes as f64),
        args.partitions,
        t.elapsed().as_secs_f64()
    );

    // PHASE 1. The ceiling.
    let (ceil_secs, ceil_cpu, ends) = ceiling(brokers, topic, events)?;
    let ceil_rate = events as f64 / ceil_secs;
    println!(
        "ceiling (rdkafka consume + serde_json::Value, 1 thread): {ceil_secs:.2} s, {ceil_rate:.0} events/s (cpu {ceil_cpu:.2} s)"
    );

    // PHASE 2. Weft: the job over the whole topic.
    let spec = write_spec(
        dir,
        brokers,
        topic,
        &args.dedupe_window,
        &args.tick,
        args.workload,
    )?;
    if args.arrangement_sizes {
        weft_engine::arrangements::record();
    }
    let cluster = Cluster::start(ClusterConfig::single(args.workers))?;
    let (id, tp) = throughput(&cluster, &spec, events, args.heap_profile.as_deref())?;
    let rate = events as f64 / tp.secs;
    let d = &tp.report.dedupe;
    println!(
        "weft ({} workers): {:.2} s, {rate:.0} events/s until every output change is committed \
         (process cpu {:.1} s = {:.0}% of {} cores; rejected {}, duplicates dropped {}, late {})",
        args.workers,
        tp.secs,
        tp.cpu,
        100.0 * tp.cpu / tp.secs / args.workers as f64,
        args.workers,
        tp.report.rejected,
        d.dropped_duplicates,
        d.late
    );
    let heap = (tp.peak_heap - tp.heap_before) as f64;
    let retained = (tp.retained_heap - tp.heap_before) as f64;
    let rss = (tp.peak_rss_kb.saturating_sub(tp.rss_before_kb) * 1024) as f64;
    if !tp.report.errors.is_empty() {
        println!("  job errors: {:?}", tp.report.errors);
    }

    // PHASE 3. Latency at half the load.
    // (The probes join an audience of the standard job.)
    let lat = if args.latency_secs > 0.0 && !profiles_workload {
        Some(latency(args, brokers, topic, &cluster, id, rate / 2.0)?)
    } else {
        None
    };
    cluster.drop_job(id)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while report(&cluster, id)?.status != JobStatus::Finished && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.shutdown()?;
    drop(cluster);

    // PHASE 4. COST, and the check.
    // (The COST program computes the standard job's outputs, or the
    // `profiles` workload's counters.)
    let cost_run = if args.no_cost {
        None
    } else {
        Some(cost(
            brokers,
            topic,
            &ends,
            tp.t,
            events,
            profiles_workload,
        )?)
    };
    let profiles = if profiles_workload {
        Some(args.profiles)
    } else {
        cost_run.as_ref().map(|c| c.output.stats.profiles)
    };

    // Summary.
    println!();
    println!(
        "== bench-e2e: {events} events, {} partitions, {} workers ==",
        args.partitions, args.workers
    );
    println!("throughput");
    println!("  weft                                {rate:>10.0} events/s");
    println!(
        "  ceiling (consume + JSON decode)     {ceil_rate:>10.0} events/s   weft/ceiling = {:.3}",
        rate / ceil_rate
    );
    if let Some(c) = &cost_run {
        let cost_rate = events as f64 / c.secs;
        println!(
            "  COST (1 thread, consume+compute)    {cost_rate:>10.0} events/s   weft/COST = {:.3}   (compute alone {:.0} events/s)",
            rate / cost_rate,
            events as f64 / c.compute_secs
        );
        let s = c.output.stats;
        println!(
            "  COST: {} rejected, {} duplicates, {} identifiers, {} profiles, {} limit conflicts",
            s.rejected, s.duplicates, s.identifiers, s.profiles, s.limit_conflicts
        );
    }
    if let Some(l) = &lat {
        println!(
            "latency (probe produced → membership visible to read_committed), at {:.0} events/s ({:.0}% of max):",
            l.ingest_rate,
            100.0 * l.ingest_rate / rate
        );
        println!(
            "  p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms over {} probes{}",
            l.p50_ms,
            l.p99_ms,
            l.max_ms,
            l.probes,
            if l.missing > 0 {
                format!(" ({} probes never seen)", l.missing)
            } else {
                String::new()
            }
        );
        println!(
            "  sinks' committed frontier behind the wall clock: p50 {:.0} ms, p99 {:.0} ms; {:.1} commits/s, {:.1} ms per commit",
            l.frontier_lag_ms.0, l.frontier_lag_ms.1, l.commits_per_sec, l.commit_ms
        );
    }
    println!("memory (throughput phase)");
    println!(
        "  peak live heap growth {:.0} MB, peak RSS growth {:.0} MB; retained live heap (idle, 2 s after catching up) {:.0} MB",
        mb(heap),
        mb(rss),
        mb(retained)
    );
    if let Some(p) = profiles.filter(|p| *p > 0) {
        println!(
            "  per profile ({p} profiles): retained {:.0} B heap (= {:.0} MB per million profiles); peak {:.0} B heap, {:.0} B RSS",
            retained / p as f64,
            retained / p as f64,
            heap / p as f64,
            rss / p as f64
        );
    }
    match &tp.event_log {
        Some(l) => println!(
            "  event log (on disk, not in the heap): {:.0} MB written, {:.0} MB live ({:.0} B per profile), {:.1} MB buffered in memory",
            mb(l.written_bytes as f64),
            mb(l.live_bytes as f64),
            profiles.filter(|p| *p > 0).map_or(0.0, |p| l.live_bytes as f64 / p as f64),
            mb(l.buffered_bytes as f64)
        ),
        None => println!("  event log: off (WEFT_EVENT_LOG=memory): events at rest are in the heap"),
    }
    println!(
        "  window expiries held (hold_future): {} updates ({:.1} per profile), {:.1} MB in memory, {:.0} MB in scratch files",
        tp.held.updates,
        profiles.filter(|p| *p > 0).map_or(0.0, |p| tp.held.updates as f64 / p as f64),
        mb(tp.held.memory_bytes as f64),
        mb(tp.held.disk_bytes as f64),
    );
    if !tp.arrangements.is_empty() {
        let total: i64 = tp.arrangements.iter().map(|a| a.records).sum();
        let per = |n: i64| match profiles.filter(|p| *p > 0) {
            Some(p) => format!("{:.1} per profile", n as f64 / p as f64),
            None => String::new(),
        };
        println!(
            "  arrangements: {total} updates held ({}), largest:",
            per(total)
        );
        for a in tp.arrangements.iter().take(30) {
            println!(
                "    {:>10} {:<40} ({} operators{}) {}",
                a.records,
                a.name,
                a.operators,
                if a.batcher_records != 0 {
                    format!(", {} in batchers", a.batcher_records)
                } else {
                    String::new()
                },
                per(a.records)
            );
        }
    }
    if profiles_workload {
        let (ok, verdict) = check_profiles(brokers, topic, tp.t, args.profiles)?;
        println!("check at logical time {}: {verdict}", tp.t);
        if !ok {
            bail!("Weft's computed counters are not the generated ones");
        }
    }
    if let Some(c) = &cost_run {
        let per = profiles
            .filter(|p| *p > 0)
            .map_or(0.0, |p| c.state_heap as f64 / p as f64);
        println!(
            "  COST state (live heap growth after the last event) {:.0} MB ({per:.0} B per profile), weft retained / COST state = {:.2}; COST peak with its output {:.0} MB",
            mb(c.state_heap as f64),
            retained / c.state_heap.max(1) as f64,
            mb(c.peak_heap as f64),
        );
        let (ok, verdict) = check(brokers, topic, tp.t, &c.output, !profiles_workload)?;
        println!("check at logical time {}: {verdict}", tp.t);
        if !ok {
            bail!("Weft's sinks and the COST program disagree");
        }
    }
    Ok(())
}

//! Privacy benchmark: deletion latency while ingesting at half of the
//! maximum throughput, and sustained deletions per second — end to end,
//! through a real job (Kafka source → dedupe → regulations → identity →
//! computed traits and audiences → transactional Kafka sinks).
//!
//! ```text
//! eval "$(scripts/kafka.sh start)"; export KAFKA_BROKERS
//! cargo run --release -p weft-bench --bin bench-privacy -- --events 300000
//! ```
//!
//! 1. **produce** `--events` generated events (event times in the last 30
//!    days, so windows are live) to a fresh topic; remember their userIds.
//! 2. **max**: the job over the topic with a bounded source: records/s is the
//!    maximum throughput `R` of this pipeline on this machine.
//! 3. **latency**: the same job live (fresh state), caught up with the topic;
//!    a producer adds new events at `R/2` while a DELETE of a known userId is
//!    appended to the regulation log every `--interval-ms` (the job has caught
//!    up when a no-op deletion has been committed by every sink). From the audit log
//!    (`applied` / `committed` lines with wall-clock times, see
//!    `engine/src/audit.rs`): request → applied (the regulation's logical time
//!    complete: every derived collection retracted) and request → committed by
//!    every sink (the Kafka transactions holding the tombstones committed).
//! 4. **sustained**: `--burst` DELETEs appended at once while ingest goes on;
//!    deletions/s = burst / (time until every sink committed all of them).
//!
//! Segment's published limits are the baseline: a 30-day deletion SLA and at
//! most 110,000 users deleted per month (0.042/s).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::ClientConfig;
use weft_bench::gen::{default_users, parse_iso8601_ms, GenConfig, Generator};
use weft_bench::kafka::send;
use weft_connectors::kafka::admin;
use weft_dataflows::spec::JobSpec;
use weft_engine::runtime::{Cluster, ClusterConfig, JobStatus};

#[derive(Parser)]
#[command(about = "Deletion latency and sustained deletions/s through a live job.")]
struct Args {
    /// Events loaded before the measurements.
    #[arg(long, default_value_t = 300_000)]
    events: u64,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 2)]
    partitions: i32,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Deletions measured for latency.
    #[arg(long, default_value_t = 60)]
    deletions: usize,
    /// Wall time between two measured deletions.
    #[arg(long, default_value_t = 250)]
    interval_ms: u64,
    /// Deletions appended at once in the sustained phase.
    #[arg(long, default_value_t = 2000)]
    burst: usize,
    /// Brokers [default: $KAFKA_BROKERS].
    #[arg(long)]
    brokers: Option<String>,
}

const DAY_MS: i64 = 86_400_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn producer(brokers: &str) -> Result<BaseProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.kbytes", "1048576")
        .create()?)
}

/// Events of the last 30 days, `seed` chosen per stream so the live stream adds new messages.
fn generator(events: u64, users: u64, seed: u64) -> Result<Generator> {
    let mut cfg = GenConfig::with_events(events);
    cfg.seed = seed;
    cfg.users = users;
    cfg.span_ms = 30 * DAY_MS;
    cfg.start_ms = now_ms() - cfg.span_ms;
    Ok(Generator::new(&cfg)?)
}

/// Produces the load; returns the distinct userIds seen.
fn produce_load(brokers: &str, topic: &str, events: u64, partitions: i32) -> Result<Vec<String>> {
    let p = producer(brokers)?;
    let mut gen = generator(events, default_users(events), 42)?;
    let mut buf = Vec::with_capacity(64 << 10);
    let mut users = std::collections::BTreeSet::new();
    let mut i = 0u64;
    while gen.next_into(&mut buf).is_some() {
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&buf) {
            if let Some(u) = v.get("userId").and_then(|u| u.as_str()) {
                users.insert(u.to_string());
            }
        }
        send(&p, topic, (i % partitions as u64) as i32, &buf)?;
        p.poll(Duration::ZERO);
        buf.clear();
        i += 1;
    }
    p.flush(Duration::from_secs(300))?;
    Ok(users.into_iter().collect())
}

/// The job: the pipeline `weft run` builds, with two transactional Kafka sinks.
fn write_spec(dir: &Path, brokers: &str, topic: &str, bounded: bool) -> Result<JobSpec> {
    let name = if bounded { "max" } else { "live" };
    let spec = format!(
        r#"
[job]
name = "bench-privacy-{name}"
state_dir = "{dir}/state"

[[sources]]
type = "kafka"
name = "events"
brokers = "{brokers}"
topics = ["{topic}"]
tick = "100ms"
bounded = {bounded}

[dedupe]
window = "24h"

[regulations]
path = "{dir}/regulations.jsonl"
audit = "{dir}/audit.jsonl"

[[traits]]
name = "orders_90d"
query = 'count(track "Order Completed" within 90d)'

[[traits]]
name = "revenue_90d"
query = 'sum(properties.revenue from track "Order Completed" within 90d)'

[[audiences]]
name = "shoppers"
query = 'count(track "Product Viewed" within 30d) >= 3'

[[audiences]]
name = "high_value"
query = 'computed.revenue_90d > 500 or count(track "Order Completed" within 30d) >= 3'

[[sinks]]
type = "kafka"
name = "audiences"
output = "audiences"
brokers = "{brokers}"
topic = "{topic}-audiences"

[[sinks]]
type = "kafka"
name = "traits"
output = "profile_traits"
brokers = "{brokers}"
topic = "{topic}-traits"
"#,
        dir = dir.display()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, spec)?;
    Ok(JobSpec::load(&path)?)
}

/// Per regulation id: wall ms of `applied`, and of each sink's `committed`.
#[derive(Default, Debug)]
struct Audit {
    applied: Option<i64>,
    committed: BTreeMap<String, i64>,
}

fn read_audit(path: &Path) -> HashMap<String, Audit> {
    let mut out: HashMap<String, Audit> = HashMap::new();
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(ev), Some(id), Some(wall)) = (
            v["event"].as_str(),
            v["regulation"].as_str(),
            v["wall"].as_str().and_then(parse_iso8601_ms),
        ) else {
            continue;
        };
        let a = out.entry(id.to_string()).or_default();
        match ev {
            "applied" => a.applied = Some(wall),
            "committed" => {
                a.committed
                    .insert(v["sink"].as_str().unwrap_or("").to_string(), wall);
            }
            _ => {}
        }
    }
    out
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Waits (bounded) until every id has been committed by `sinks` sinks.
fn wait_committed(audit: &Path, ids: &[String], sinks: usize, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let a = read_audit(audit);
        if ids
            .iter()
            .all(|id| a.get(id).is_some_and(|x| x.committed.len() >= sinks))
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn append_deletes(log: &Path, lines: &[(String, String)]) -> Result<i64> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut text = String::new();
    for (id, user) in lines {
        text.push_str(&format!(
            "{{\"type\":\"delete\",\"identifier\":\"user_id:{user}\",\"id\":\"{id}\"}}\n"
        ));
    }
    let at = now_ms();
    f.write_all(text.as_bytes())?;
    f.flush()?;
    Ok(at)
}

/// Produces new events at `rate`/s until `stop`.
fn ingest_at(
    brokers: String,
    topic: String,
    partitions: i32,
    rate: f64,
    users: u64,
    stop: Arc<AtomicBool>,
) -> Result<u64> {
    let p = producer(&brokers)?;
    // The same population as the load (new sessions, new messages).
    let mut gen = generator(users * 400, users, 4242)?;
    let mut buf = Vec::with_capacity(4096);
    let started = Instant::now();
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            buf.clear();
            gen.next_into(&mut buf);
            if buf.last() == Some(&b'\n') {
                buf.pop();
            }
            send(&p, &topic, (sent % partitions as u64) as i32, &buf)?;
            sent += 1;
        }
        p.poll(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(5));
    }
    p.flush(Duration::from_secs(60))?;
    Ok(sent)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let brokers = args
        .brokers
        .clone()
        .or_else(|| std::env::var("KAFKA_BROKERS").ok())
        .context("set --brokers or KAFKA_BROKERS (scripts/kafka.sh start)")?;
    let topic = format!("bench-privacy-{}", std::process::id());
    let topics = [
        topic.clone(),
        format!("{topic}-audiences"),
        format!("{topic}-traits"),
    ];
    admin::create_topic(&brokers, &topic, args.partitions, &[])?;
    let result = run(&args, &brokers, &topic);
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    if let Err(e) = admin::delete_topics(&brokers, &refs) {
        eprintln!("warning: cannot delete the benchmark topics: {e}");
    }
    result
}

fn run(args: &Args, brokers: &str, topic: &str) -> Result<()> {
    let t = Instant::now();
    let users = produce_load(brokers, topic, args.events, args.partitions)?;
    println!(
        "produce: {} events ({} userIds) in {:.1} s",
        args.events,
        users.len(),
        t.elapsed().as_secs_f64()
    );
    anyhow::ensure!(
        users.len() >= args.deletions + args.burst,
        "too few userIds ({}) for {} + {} deletions: raise --events",
        users.len(),
        args.deletions,
        args.burst
    );

    // PHASE 1. Maximum throughput of the pipeline (bounded source).
    let dir = tempfile::tempdir()?;
    let spec = write_spec(dir.path(), brokers, topic, true)?;
    let cluster = Cluster::start(ClusterConfig::single(args.workers))?;
    let t = Instant::now();
    let id = cluster.submit(&spec)?;
    let report = loop {
        std::thread::sleep(Duration::from_millis(50));
        let r = cluster.report(id).context("job registered")?;
        if r.status == JobStatus::Finished {
            break r;
        }
    };
    let secs = t.elapsed().as_secs_f64();
    let max_rate = report.records as f64 / secs;
    println!(
        "max: {} records in {secs:.2} s = {max_rate:.0} events/s ({} workers; errors: {:?})",
        report.records, args.workers, report.errors
    );

    // PHASE 2. Live: catch up, then ingest at R/2 and delete.
    let dir = tempfile::tempdir()?;
    let spec = write_spec(dir.path(), brokers, topic, false)?;
    let log = dir.path().join("regulations.jsonl");
    let audit = dir.path().join("audit.jsonl");
    let id = cluster.submit(&spec)?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while cluster.report(id).context("job")?.records < args.events {
        anyhow::ensure!(Instant::now() < deadline, "the live job did not catch up");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Caught up means processed, not just read: a no-op deletion committed by every sink.
    let t = Instant::now();
    append_deletes(&log, &[("warmup".into(), "nobody-at-all".into())])?;
    anyhow::ensure!(
        wait_committed(&audit, &["warmup".into()], 2, Duration::from_secs(600)),
        "the live job did not process its backlog"
    );
    println!(
        "live: caught up with {} events (backlog processed {:.1} s after it was read)",
        args.events,
        t.elapsed().as_secs_f64()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let ingest = {
        let (b, t, s) = (brokers.to_string(), topic.to_string(), stop.clone());
        let parts = args.partitions;
        let rate = max_rate / 2.0;
        let users = default_users(args.events);
        std::thread::spawn(move || ingest_at(b, t, parts, rate, users, s))
    };
    let before = cluster.report(id).context("job")?.records;
    let ingest_started = Instant::now();
    let mut rng = SmallRng::seed_from_u64(7);
    let mut pool = users;
    let mut take = |rng: &mut SmallRng| pool.swap_remove(rng.gen_range(0..pool.len()));
    let mut requested: Vec<(String, i64)> = Vec::new();
    for k in 0..args.deletions {
        let rid = format!("lat-{k}");
        let at = append_deletes(&log, &[(rid.clone(), take(&mut rng))])?;
        requested.push((rid, at));
        std::thread::sleep(Duration::from_millis(args.interval_ms));
    }
    let ids: Vec<String> = requested.iter().map(|(i, _)| i.clone()).collect();
    let all = wait_committed(&audit, &ids, 2, Duration::from_secs(300));
    let ingested = cluster.report(id).context("job")?.records - before;
    let ingest_rate = ingested as f64 / ingest_started.elapsed().as_secs_f64();
    let a = read_audit(&audit);
    let mut applied = Vec::new();
    let mut committed = Vec::new();
    for (rid, at) in &requested {
        if let Some(x) = a.get(rid) {
            if let Some(w) = x.applied {
                applied.push((w - at) as f64);
            }
            if x.committed.len() >= 2 {
                committed.push((x.committed.values().max().copied().unwrap_or(0) - at) as f64);
            }
        }
    }
    applied.sort_by(f64::total_cmp);
    committed.sort_by(f64::total_cmp);
    println!(
        "latency while ingesting {ingest_rate:.0} events/s ({:.0}% of max), {} deletions{}:",
        100.0 * ingest_rate / max_rate,
        requested.len(),
        if all {
            ""
        } else {
            " (NOT all committed within 300 s)"
        }
    );
    println!(
        "  request → applied (derived state retracted): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        percentile(&applied, 0.5),
        percentile(&applied, 0.99),
        percentile(&applied, 1.0)
    );
    println!(
        "  request → every sink committed:              p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        percentile(&committed, 0.5),
        percentile(&committed, 0.99),
        percentile(&committed, 1.0)
    );

    // PHASE 3. A burst of deletions, ingest still running.
    let burst: Vec<(String, String)> = (0..args.burst)
        .map(|k| (format!("burst-{k}"), take(&mut rng)))
        .collect();
    let at = append_deletes(&log, &burst)?;
    let ids: Vec<String> = burst.iter().map(|(i, _)| i.clone()).collect();
    let all = wait_committed(&audit, &ids, 2, Duration::from_secs(600));
    let a = read_audit(&audit);
    let last = ids
        .iter()
        .filter_map(|i| a.get(i).and_then(|x| x.committed.values().max().copied()))
        .max()
        .unwrap_or(at);
    let secs = ((last - at) as f64 / 1e3).max(1e-3);
    let rate = args.burst as f64 / secs;
    println!(
        "sustained: {} deletions committed by every sink in {secs:.2} s = {rate:.0} deletions/s{} \
         (Segment: 110,000/month = 0.042/s → {:.0}×)",
        args.burst,
        if all { "" } else { " (NOT all committed)" },
        rate / (110_000.0 / (30.0 * 86_400.0))
    );

    stop.store(true, Ordering::Relaxed);
    let produced = ingest.join().expect("ingest thread")?;
    println!("live ingest produced {produced} events");
    cluster.drop_job(id)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while cluster.report(id).context("job")?.status != JobStatus::Finished
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.shutdown()?;
    Ok(())
}

//! Kafka source benchmark: Weft's source (consume + reclock + parse into
//! events) beside a plain rdkafka consumer loop (consume + generic JSON
//! decode), both over the same topic in the same run.
//!
//! ```text
//! eval "$(scripts/kafka.sh start)"; export KAFKA_BROKERS
//! cargo run --release -p weft-bench --bin bench-kafka-source -- --events 1000000
//! ```
//!
//! - produce: N generated events (`weft_bench::gen`, 2 % retries, 0.1 %
//!   malformed) round-robin over `--partitions` partitions of a fresh topic;
//! - baseline: one `BaseConsumer`, all partitions assigned from the start,
//!   `read_committed`, every message decoded with
//!   `serde_json::from_slice::<serde_json::Value>`, until every partition
//!   reports its end;
//! - ceiling: the same loop without decoding (what the broker and
//!   librdkafka deliver to one thread);
//! - weft: one `KafkaPart` (worker 0 of 1, bounded), polled with `--budget`
//!   until done: consume, bind offsets to times (fsync'd to a state
//!   directory), `parse_event` into typed events or error records.
//!
//! Both read the same bytes from the same broker, so the ratio is the cost
//! of Weft's source relative to the simplest consumer that decodes JSON.
//! Wall-clock rates include the broker (on a small machine it competes for
//! the same cores); the CPU time of the polling thread isolates the
//! client-side work. `WEFT_BENCH_DEBUG=1` also prints how many binding
//! entries (fsync batches × partitions) the source wrote. The topic is
//! deleted at the end.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;
use weft_bench::gen::{GenConfig, Generator};
use weft_bench::kafka::send;
use weft_connectors::kafka::{admin, KafkaSourceConfig};
use weft_connectors::source::{Poll, SourcePart};

#[derive(Parser)]
#[command(about = "Kafka source throughput: Weft's source vs. a plain rdkafka consumer loop.")]
struct Args {
    /// Events to produce.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Partitions of the benchmark topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Records per `poll` of the Weft source.
    #[arg(long, default_value_t = 4096)]
    budget: usize,
    /// Repetitions of each measurement (the best is reported).
    #[arg(long, default_value_t = 2)]
    reps: usize,
    /// Brokers [default: $KAFKA_BROKERS].
    #[arg(long)]
    brokers: Option<String>,
    /// Run only one measurement (`ceiling`, `baseline` or `weft`), e.g. under a profiler.
    #[arg(long)]
    only: Option<String>,
}

/// CPU time (user + system) of the calling thread, from /proc (10 ms resolution).
fn thread_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Consumer settings shared by both sides, so that only the client-side work differs.
fn consumer_config(brokers: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers)
        .set("group.id", "weft-bench-baseline")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true");
    cfg
}

fn produce(brokers: &str, topic: &str, events: u64, partitions: i32) -> Result<(u64, u64)> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create()?;
    let mut gen = Generator::new(&GenConfig::with_events(events))?;
    let mut buf = Vec::with_capacity(64 << 10);
    let mut i = 0u64;
    let mut bytes = 0u64;
    while gen.next_into(&mut buf).is_some() {
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        let partition = (i % partitions as u64) as i32;
        send(&producer, topic, partition, &buf)?;
        producer.poll(Duration::ZERO);
        bytes += buf.len() as u64;
        buf.clear();
        i += 1;
    }
    producer.flush(Duration::from_secs(300))?;
    Ok((i, bytes))
}

/// The baseline: consume everything, decode each value as a generic JSON
/// value (or, with `decode` false, only touch its length: the broker's and
/// librdkafka's ceiling).
fn baseline(
    brokers: &str,
    topic: &str,
    partitions: i32,
    expected: u64,
    decode: bool,
) -> Result<u64> {
    let consumer: BaseConsumer = consumer_config(brokers).create()?;
    // Connect and learn the partitions first, as Weft's source does when it is created.
    consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut at_end = BTreeSet::new();
    let (mut n, mut valid) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(600);
    while at_end.len() < partitions as usize || n < expected {
        if Instant::now() > deadline {
            bail!("baseline read only {n} of {expected} records");
        }
        match consumer.poll(Duration::ZERO) {
            None => std::thread::sleep(Duration::from_millis(1)),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => bail!("baseline consumer: {e}"),
            Some(Ok(m)) => {
                n += 1;
                at_end.remove(&m.partition());
                let payload = m.payload().unwrap_or_default();
                if !decode {
                    valid += payload.len() as u64;
                } else if serde_json::from_slice::<serde_json::Value>(payload).is_ok() {
                    valid += 1;
                }
            }
        }
    }
    std::hint::black_box(valid);
    Ok(n)
}

/// Weft's source: one bounded part reading every partition.
fn weft(brokers: &str, topic: &str, budget: usize) -> Result<(u64, u64)> {
    let state = std::env::temp_dir().join(format!("weft-bench-kafka-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let mut cfg = KafkaSourceConfig::new("bench", brokers, vec![topic.to_string()], state.clone());
    cfg.bounded = true;
    let mut part = cfg.part(0, 1)?;
    let mut out = Vec::with_capacity(budget);
    let (mut n, mut errors) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if Instant::now() > deadline {
            bail!("weft source read only {n} records in 600 s");
        }
        let p = part.poll(&mut out, budget);
        n += out.len() as u64;
        errors += out.iter().filter(|(d, _)| d.is_err()).count() as u64;
        out.clear();
        match p {
            Poll::Done => break,
            Poll::Pending { idle: true, .. } => std::thread::sleep(Duration::from_millis(1)),
            Poll::Pending { .. } => {}
        }
    }
    drop(part);
    if std::env::var_os("WEFT_BENCH_DEBUG").is_some() {
        let mut lines = 0;
        let mut stack = vec![state.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d)?.flatten() {
                if e.path().is_dir() {
                    stack.push(e.path());
                } else {
                    lines += std::fs::read_to_string(e.path())?.lines().count();
                }
            }
        }
        eprintln!("binding entries written: {lines}");
    }
    let _ = std::fs::remove_dir_all(&state);
    Ok((n, errors))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let brokers = match args
        .brokers
        .clone()
        .or_else(|| std::env::var("KAFKA_BROKERS").ok())
    {
        Some(b) => b,
        None => bail!("set KAFKA_BROKERS (eval \"$(scripts/kafka.sh start)\") or pass --brokers"),
    };
    let topic = format!("weft-bench-source-{}", std::process::id());
    admin::create_topic(&brokers, &topic, args.partitions, &[])
        .context("creating the benchmark topic")?;
    let result = run(&args, &brokers, &topic);
    if let Err(e) = admin::delete_topics(&brokers, &[&topic]) {
        eprintln!("cannot delete {topic}: {e}");
    }
    result
}

fn run(args: &Args, brokers: &str, topic: &str) -> Result<()> {
    let started = Instant::now();
    let (events, bytes) = produce(brokers, topic, args.events, args.partitions)?;
    let produce_s = started.elapsed().as_secs_f64();
    println!(
        "produced {events} events ({:.1} MB) to {} partitions in {produce_s:.2} s ({:.0} events/s)",
        bytes as f64 / 1e6,
        args.partitions,
        events as f64 / produce_s
    );
    // 0: consume only, 1: baseline (consume + serde_json::Value), 2: weft.
    let names = ["ceiling", "baseline", "weft"];
    let selected: Vec<usize> = match &args.only {
        None => vec![0, 1, 2],
        Some(o) => match names.iter().position(|n| n == o) {
            Some(i) => vec![i],
            None => bail!("--only must be one of {names:?}"),
        },
    };
    let mut best = [f64::MAX; 3];
    let mut best_cpu = [f64::MAX; 3];
    let mut weft_errors = 0;
    for rep in 0..args.reps {
        // Rotate the order, so that none always runs first.
        for k in 0..selected.len() {
            let which = selected[(rep + k) % selected.len()];
            let t = Instant::now();
            let cpu = thread_cpu();
            let n = match which {
                0 => baseline(brokers, topic, args.partitions, events, false)?,
                1 => baseline(brokers, topic, args.partitions, events, true)?,
                _ => {
                    let (n, errors) = weft(brokers, topic, args.budget)?;
                    weft_errors = errors;
                    n
                }
            };
            if n != events {
                bail!(
                    "measurement {} read {n} records, expected {events}",
                    names[which]
                );
            }
            best[which] = best[which].min(t.elapsed().as_secs_f64());
            best_cpu[which] = best_cpu[which].min(thread_cpu() - cpu);
        }
    }
    let rate = |s: f64| events as f64 / s;
    println!(
        "best of {} runs, {} events, {} partitions, one polling thread each (cpu = that thread's user+sys time):",
        args.reps, events, args.partitions
    );
    let labels = [
        "ceiling   rdkafka BaseConsumer, no decoding         ",
        "baseline  rdkafka BaseConsumer + serde_json::Value  ",
        "weft      KafkaPart (reclock + parse_event)         ",
    ];
    for &i in &selected {
        let extra = if i == 2 {
            format!("  ({weft_errors} error records)")
        } else {
            String::new()
        };
        println!(
            "  {} {:>7.2} s {:>10.0} events/s   cpu {:>6.2} s {:>10.0} events/cpu-s{extra}",
            labels[i],
            best[i],
            rate(best[i]),
            best_cpu[i],
            rate(best_cpu[i])
        );
    }
    if selected.len() == 3 {
        println!(
            "  ratio weft/baseline: {:.2} (wall), {:.2} (cpu)   weft/ceiling: {:.2} (wall)",
            rate(best[2]) / rate(best[1]),
            rate(best_cpu[2]) / rate(best_cpu[1]),
            rate(best[2]) / rate(best[0])
        );
    }
    Ok(())
}

//! `bench-lake`: the Parquet lake sink's write throughput and the cost of an
//! erase.
//!
//! ```text
//! cargo run --release -p weft-bench --bin bench-lake -- --events 500000
//! ```
//!
//! Input: `--events` generated Segment events (`weft_bench::gen`, one day of
//! event time by default), parsed beforehand (parsing is not measured),
//! duplicates and malformed lines left out, in logical times of `--batch`
//! events; a commit every `--commit-every` times and at the end.
//!
//! 1. **write**: `write` + `commit` of every time into a fresh lake; rows/s,
//!    MB/s of Parquet published, and MB/s of the events' JSON.
//! 2. **erase**: `erase` + `commit` of one person over the lake's files: the
//!    most active person, one seen in a single event, and an absent
//!    identifier (only bloom filters are read). Each on a fresh copy of the
//!    lake.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use clap::Parser;
use weft_bench::gen::{GenConfig, Generator, LineKind, DAY_MS};
use weft_connectors::lake::{LakeConfig, LakeStats, ParquetLakeSink};
use weft_connectors::sink::Sink;
use weft_dataflows::event::{parse_event, Event, ParseContext};

/// Benchmark the Parquet lake sink.
#[derive(Debug, Parser)]
#[command(name = "bench-lake")]
struct Args {
    /// Events to generate.
    #[arg(long, default_value_t = 500_000)]
    events: u64,
    /// Hours of event time the events span.
    #[arg(long, default_value_t = 24)]
    span_hours: i64,
    /// Events per logical time.
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    /// Logical times per commit.
    #[arg(long, default_value_t = 10)]
    commit_every: usize,
    /// Target file size, MiB.
    #[arg(long, default_value_t = 128)]
    target_mb: u64,
    /// Directory for the lakes (default: a temp dir).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

/// The good events of a generated stream.
fn events(args: &Args) -> anyhow::Result<(Vec<Event>, u64)> {
    let mut cfg = GenConfig::with_events(args.events);
    cfg.span_ms = args.span_hours * DAY_MS / 24;
    let mut gen = Generator::new(&cfg)?;
    let (mut out, mut json_bytes, mut buf) = (Vec::new(), 0u64, Vec::new());
    while let Some(kind) = gen.next_into(&mut buf) {
        if kind == LineKind::Event {
            let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
            if let Ok(e) = parse_event(line, &ParseContext::default()) {
                json_bytes += line.len() as u64;
                out.push(e);
            }
        }
        buf.clear();
    }
    Ok((out, json_bytes))
}

fn config(root: &Path, args: &Args) -> LakeConfig {
    let mut c = LakeConfig::new("events", root);
    c.target_file_bytes = args.target_mb << 20;
    c
}

/// Writes every event, committing every `commit_every` times; returns the last time.
fn write_all(sink: &mut ParquetLakeSink<Event>, events: &[Event], args: &Args) -> u64 {
    let mut time = 0u64;
    for (i, chunk) in events.chunks(args.batch).enumerate() {
        time = 1 + i as u64;
        let mut updates: Vec<(Event, isize)> = chunk.iter().map(|e| (e.clone(), 1)).collect();
        updates.sort();
        sink.write(time, &updates).expect("write");
        if (i + 1) % args.commit_every == 0 {
            sink.commit(&[time + 1]).expect("commit");
        }
    }
    sink.commit(&[time + 1]).expect("commit");
    time
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Erases `ids` from a copy of the lake at `source`; returns the time and what it did.
fn erase(source: &Path, copy: &Path, args: &Args, time: u64, ids: &[String]) -> (f64, LakeStats) {
    copy_dir(source, copy).expect("copy the lake");
    let mut sink = ParquetLakeSink::<Event>::open(config(copy, args)).expect("open");
    let started = Instant::now();
    sink.erase(time, ids).expect("erase");
    sink.commit(&[time + 1]).expect("commit");
    (started.elapsed().as_secs_f64(), sink.stats())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let temp = tempfile_dir(&args)?;
    let (events, json_bytes) = events(&args)?;
    println!(
        "bench-lake: {} events ({:.1} MB of JSON), {} per time, commit every {} times, target {} MiB",
        events.len(),
        json_bytes as f64 / 1e6,
        args.batch,
        args.commit_every,
        args.target_mb
    );

    // 1. Write.
    let root = temp.join("lake");
    let mut sink = ParquetLakeSink::<Event>::open(config(&root, &args))?;
    let started = Instant::now();
    let last = write_all(&mut sink, &events, &args);
    let secs = started.elapsed().as_secs_f64();
    let stats = sink.stats();
    drop(sink);
    println!(
        "write: {:.2} s, {:.0} rows/s, {:.1} MB/s Parquet ({:.1} MB in {} files, avg {:.2} MB), {:.1} MB/s of event JSON",
        secs,
        stats.rows_written as f64 / secs,
        stats.bytes_published as f64 / 1e6 / secs,
        stats.bytes_published as f64 / 1e6,
        stats.files_published,
        stats.bytes_published as f64 / 1e6 / stats.files_published.max(1) as f64,
        json_bytes as f64 / 1e6 / secs,
    );

    // 2. Erase.
    let mut per_user: HashMap<&str, usize> = HashMap::new();
    for e in &events {
        if let Some(u) = e.user_id() {
            *per_user.entry(u).or_default() += 1;
        }
    }
    let heavy = per_user
        .iter()
        .max_by_key(|(u, n)| (**n, *u))
        .map(|(u, _)| *u);
    let light = per_user
        .iter()
        .filter(|(_, n)| **n == 1)
        .min_by_key(|(u, _)| *u)
        .map(|(u, _)| *u);
    let cases = [
        ("most active person", heavy),
        ("person with one event", light),
        ("absent person", Some("no-such-user")),
    ];
    for (i, (label, user)) in cases.iter().enumerate() {
        let Some(user) = user else { continue };
        let ids = vec![format!("user_id:{user}")];
        let copy = temp.join(format!("erase-{i}"));
        let (secs, s) = erase(&root, &copy, &args, last + 1, &ids);
        println!(
            "erase ({label}, {} events): {:.3} s over {} files: {} read, {} rewritten, {} rows removed",
            per_user.get(user).copied().unwrap_or(0),
            secs,
            stats.files_published,
            s.files_read,
            s.files_rewritten,
            s.rows_removed,
        );
        std::fs::remove_dir_all(&copy)?;
    }
    if args.dir.is_none() {
        std::fs::remove_dir_all(&temp)?;
    }
    Ok(())
}

/// The working directory: `--dir` (kept), or a fresh temp dir (removed at the end).
fn tempfile_dir(args: &Args) -> anyhow::Result<std::path::PathBuf> {
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("bench-lake-{}", std::process::id())),
    };
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

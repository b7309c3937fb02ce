//! PostgreSQL warehouse benchmark: rows delivered per second by Weft's
//! warehouse sink, beside a plain loader measured in the same run.
//!
//! ```text
//! eval "$(scripts/postgres.sh start)"; export WEFT_PG_URL
//! cargo run --release -p weft-bench --bin bench-warehouse -- --events 200000
//! ```
//!
//! - input: `--events` generated events (`weft_bench::gen`, good events
//!   only: the dataflow drops retries and malformed lines before sinks),
//!   parsed with `parse_event`, cut into logical times of `--per-time`
//!   events, committed every `--commit-every` times;
//! - weft insert: `WarehouseSink<Event>` into a fresh schema: Segment
//!   tables with inferred, evolving columns (a track event is two rows:
//!   `tracks` and its own table), one transaction per commit with the
//!   progress row;
//! - weft delete: the same events retracted, time by time (rows deleted);
//! - weft users: the identify events' top-level traits as profile traits
//!   (`TraitRecord`s) into `users` (one column per trait);
//! - baseline: the same events as raw JSON into one table
//!   `(id text primary key, type text, body jsonb)` with one COPY per
//!   commit, in a transaction (what the simplest loader does, without
//!   typed columns, schema inference or per-event tables).
//!
//! Wall-clock rates include the server (on a small machine it competes for
//! the same cores); the CPU time of the benchmark thread isolates the
//! client-side work (building rows, encoding COPY). The schema is dropped
//! at the end.

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use postgres::{Client, NoTls};
use weft_bench::gen::{GenConfig, Generator, LineKind};
use weft_connectors::sink::Sink;
use weft_connectors::warehouse::{WarehouseConfig, WarehouseSink};
use weft_dataflows::event::{parse_event, Event, EventType, Field, ParseContext};
use weft_dataflows::identity::{Identifier, TraitRecord};

#[derive(Parser)]
#[command(about = "PostgreSQL warehouse sink throughput beside a plain COPY loader.")]
struct Args {
    /// Events to generate.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Events per logical time.
    #[arg(long, default_value_t = 1000)]
    per_time: usize,
    /// Times per commit (one transaction each).
    #[arg(long, default_value_t = 10)]
    commit_every: usize,
    /// Server URL [default: $WEFT_PG_URL].
    #[arg(long)]
    url: Option<String>,
    /// Keep the benchmark schemas (for inspection).
    #[arg(long)]
    keep: bool,
}

/// CPU time (user + system) of the calling thread, from /proc (10 ms resolution).
fn thread_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Wall and thread-CPU seconds of `f`.
fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64, f64)> {
    let (w, c) = (Instant::now(), thread_cpu());
    let v = f()?;
    Ok((v, w.elapsed().as_secs_f64(), thread_cpu() - c))
}

/// The logical time of batch `i`.
fn time_of(i: usize) -> u64 {
    1_767_225_600_000 + i as u64
}

/// Writes `batches` (one per time) through `sink`, committing every `every` times.
fn deliver<D>(
    sink: &mut dyn Sink<D>,
    batches: &[Vec<(D, isize)>],
    every: usize,
    first: usize,
) -> Result<()> {
    for (i, b) in batches.iter().enumerate() {
        sink.write(time_of(first + i), b)?;
        if (i + 1) % every == 0 {
            sink.commit(&[time_of(first + i) + 1])?;
        }
    }
    sink.commit(&[time_of(first + batches.len())])?;
    Ok(())
}

/// Sorted and consolidated, as the engine hands changes to sinks.
fn consolidate<D: Ord>(mut v: Vec<(D, isize)>) -> Vec<(D, isize)> {
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v.dedup_by(|a, b| a.0 == b.0);
    v
}

/// The identify events' top-level traits, as the profile traits output carries them.
fn traits_of(events: &[Event]) -> Vec<TraitRecord> {
    let mut out = Vec::new();
    for e in events.iter().filter(|e| e.kind == EventType::Identify) {
        let profile = match (e.user_id(), e.anonymous_id()) {
            (Some(u), _) => Identifier::new("user_id", u),
            (None, Some(a)) => Identifier::new("anonymous_id", a),
            _ => continue,
        };
        let Some(raw) = e.get(Field::Traits) else {
            continue;
        };
        let Ok(serde_json::Value::Object(m)) = serde_json::from_str(raw) else {
            continue;
        };
        for (k, v) in m {
            out.push(TraitRecord {
                profile: profile.clone(),
                key: k.into(),
                value: v.to_string().into(),
            });
        }
    }
    out
}

fn drop_schema(url: &str, schema: &str) -> Result<()> {
    let mut c = Client::connect(url, NoTls)?;
    c.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))?;
    Ok(())
}

/// The baseline: raw JSON into one jsonb table, one COPY + transaction per commit.
fn baseline(
    url: &str,
    schema: &str,
    lines: &[(String, &'static str, Vec<u8>)],
    per_commit: usize,
) -> Result<u64> {
    let mut c = Client::connect(url, NoTls)?;
    c.batch_execute(&format!(
        "CREATE SCHEMA \"{schema}\"; CREATE TABLE \"{schema}\".events (id text PRIMARY KEY, type text, body jsonb)"
    ))?;
    let mut buf = Vec::new();
    for chunk in lines.chunks(per_commit) {
        let mut t = c.transaction()?;
        let mut w =
            t.copy_in(format!("COPY \"{schema}\".events (id, type, body) FROM STDIN").as_str())?;
        for (id, kind, json) in chunk {
            buf.clear();
            buf.extend_from_slice(id.as_bytes());
            buf.push(b'\t');
            buf.extend_from_slice(kind.as_bytes());
            buf.push(b'\t');
            for &b in json {
                match b {
                    b'\\' => buf.extend_from_slice(b"\\\\"),
                    b'\t' => buf.extend_from_slice(b"\\t"),
                    b'\n' => buf.extend_from_slice(b"\\n"),
                    b'\r' => buf.extend_from_slice(b"\\r"),
                    b => buf.push(b),
                }
            }
            buf.push(b'\n');
            w.write_all(&buf)?;
        }
        w.finish()?;
        t.commit()?;
    }
    Ok(lines.len() as u64)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let url = match args
        .url
        .clone()
        .or_else(|| std::env::var("WEFT_PG_URL").ok())
    {
        Some(u) => u,
        None => bail!(
            "no server: pass --url or set WEFT_PG_URL (eval \"$(scripts/postgres.sh start)\")"
        ),
    };
    if args.per_time == 0 || args.commit_every == 0 {
        bail!("--per-time and --commit-every must be positive");
    }

    // STEP 1. Input: good events, parsed, cut into times.
    let mut cfg = GenConfig::with_events(args.events);
    cfg.duplicate_rate = 0.0;
    cfg.malformed_rate = 0.0;
    let mut gen = Generator::new(&cfg)?;
    let mut buf = Vec::new();
    let mut events = Vec::with_capacity(args.events as usize);
    let mut raw = Vec::with_capacity(args.events as usize);
    let cx = ParseContext::default();
    while let Some(kind) = gen.next_into(&mut buf) {
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf).to_vec();
        buf.clear();
        if kind != LineKind::Event {
            continue;
        }
        let e = parse_event(&line, &cx)
            .map_err(|r| anyhow::anyhow!("generated event rejected: {r}"))?;
        raw.push((e.message_id().to_string(), e.kind.as_str(), line));
        events.push(e);
    }
    let bytes: usize = raw.iter().map(|r| r.2.len()).sum();
    let batches: Vec<Vec<(Event, isize)>> = events
        .chunks(args.per_time)
        .map(|c| consolidate(c.iter().map(|e| (e.clone(), 1)).collect()))
        .collect();
    let retractions: Vec<Vec<(Event, isize)>> = batches
        .iter()
        .map(|b| b.iter().map(|(e, _)| (e.clone(), -1)).collect())
        .collect();
    let traits = traits_of(&events);
    let trait_batches: Vec<Vec<(TraitRecord, isize)>> = traits
        .chunks(args.per_time)
        .map(|c| consolidate(c.iter().map(|t| (t.clone(), 1)).collect()))
        .collect();
    let n = events.len() as f64;
    println!(
        "# bench-warehouse: {} events ({:.1} MB JSON), {} per time, commit every {} times ({} events per transaction)",
        events.len(),
        bytes as f64 / 1e6,
        args.per_time,
        args.commit_every,
        args.per_time * args.commit_every
    );

    let schema = format!("weft_bench_{}", std::process::id());
    let base_schema = format!("{schema}_baseline");
    let result = (|| -> Result<()> {
        // STEP 2. Weft: insert.
        let config = WarehouseConfig::new("bench-events", &url, &schema);
        let mut sink: WarehouseSink<Event> =
            WarehouseSink::open(&config).context("opening the sink")?;
        let ((), wall, cpu) = timed(|| deliver(&mut sink, &batches, args.commit_every, 0))?;
        let s = sink.stats();
        let mut c = Client::connect(&url, NoTls)?;
        let tables: i64 = c
            .query_one(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1",
                &[&schema],
            )?
            .get(0);
        let columns: i64 = c
            .query_one(
                "SELECT count(*) FROM information_schema.columns WHERE table_schema = $1",
                &[&schema],
            )?
            .get(0);
        println!(
            "weft insert     {:>9.0} events/s {:>9.0} rows/s  {:>6.1} MB/s   ({} rows in {} tables, {} columns, {} commits; client CPU {:.0}% of wall)",
            n / wall,
            s.rows as f64 / wall,
            bytes as f64 / 1e6 / wall,
            s.rows,
            tables - 1,
            columns,
            s.commits,
            100.0 * cpu / wall
        );

        // STEP 3. Weft: delete everything, time by time.
        let first = batches.len() + 1;
        let before = sink.stats();
        let ((), wall, cpu) = timed(|| deliver(&mut sink, &retractions, args.commit_every, first))?;
        let deleted = sink.stats().deletes - before.deletes;
        let left: i64 = c
            .query_one(
                format!("SELECT count(*) FROM \"{schema}\".tracks").as_str(),
                &[],
            )?
            .get(0);
        if left != 0 {
            bail!("{left} track rows left after retracting every event");
        }
        println!(
            "weft delete     {:>9.0} events/s {:>9.0} rows/s                ({deleted} rows; client CPU {:.0}% of wall)",
            n / wall,
            deleted as f64 / wall,
            100.0 * cpu / wall
        );

        // STEP 4. Weft: profile traits into users.
        let config = WarehouseConfig::new("bench-traits", &url, &schema);
        let mut tsink: WarehouseSink<TraitRecord> = WarehouseSink::open(&config)?;
        let ((), wall, cpu) = timed(|| deliver(&mut tsink, &trait_batches, args.commit_every, 0))?;
        let users: i64 = c
            .query_one(
                format!("SELECT count(*) FROM \"{schema}\".users").as_str(),
                &[],
            )?
            .get(0);
        println!(
            "weft users      {:>9.0} traits/s                          ({} traits, {users} users rows; client CPU {:.0}% of wall)",
            traits.len() as f64 / wall,
            traits.len(),
            100.0 * cpu / wall
        );

        // STEP 5. Baseline: raw JSON, one table.
        let (loaded, wall, cpu) =
            timed(|| baseline(&url, &base_schema, &raw, args.per_time * args.commit_every))?;
        println!(
            "baseline COPY   {:>9.0} events/s {:>9.0} rows/s  {:>6.1} MB/s   ({loaded} rows into one jsonb table; client CPU {:.0}% of wall)",
            n / wall,
            loaded as f64 / wall,
            bytes as f64 / 1e6 / wall,
            100.0 * cpu / wall
        );
        Ok(())
    })();
    if !args.keep {
        for s in [&schema, &base_schema] {
            if let Err(e) = drop_schema(&url, s) {
                eprintln!("cannot drop schema {s}: {e}");
            }
        }
    }
    result
}

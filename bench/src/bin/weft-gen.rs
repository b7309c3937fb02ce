//! `weft-gen`: writes a seeded, realistic file of Segment-spec events as JSON
//! lines (gzip-compressed when the output path ends with `.gz`).
//!
//! ```text
//! weft-gen --events 1000000 --seed 42 --out /tmp/events.jsonl.gz
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use weft_bench::gen::{self, GenConfig, GenStats, DAY_MS};

/// Generate a seeded, realistic Segment event stream as JSON lines.
#[derive(Debug, Parser)]
#[command(name = "weft-gen", version)]
struct Args {
    /// Total number of lines to write (good events + duplicates + malformed).
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Random seed; the same seed and options give byte-identical output.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Output path (`-` for stdout); gzip-compressed if it ends with `.gz`.
    #[arg(long)]
    out: PathBuf,
    /// Probability that a line re-emits an earlier event (a client retry).
    #[arg(long, default_value_t = 0.02)]
    duplicates: f64,
    /// Probability that a line is malformed.
    #[arg(long, default_value_t = 0.001)]
    malformed: f64,
    /// Number of distinct people [default: events / 20, at least 10].
    #[arg(long)]
    users: Option<u64>,
    /// Start of the event-time window (ISO-8601, UTC).
    #[arg(long, default_value = "2026-01-01T00:00:00Z")]
    start: String,
    /// Length of the event-time window in days (fractions allowed).
    #[arg(long, default_value_t = 30.0)]
    span_days: f64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let start_ms = gen::parse_iso8601_ms(&args.start)
        .with_context(|| format!("--start {:?} is not an ISO-8601 date-time", args.start))?;
    let span_ms = (args.span_days * DAY_MS as f64).round();
    if !(1.0..1e15).contains(&span_ms) {
        bail!("--span-days must be positive (got {})", args.span_days);
    }
    let cfg = GenConfig {
        events: args.events,
        seed: args.seed,
        duplicate_rate: args.duplicates,
        malformed_rate: args.malformed,
        users: args
            .users
            .unwrap_or_else(|| gen::default_users(args.events)),
        start_ms,
        span_ms: span_ms as i64,
    };

    let began = Instant::now();
    let stats: GenStats = if args.out.as_os_str() == "-" {
        let stdout = std::io::stdout();
        let mut lock = stdout.lock();
        let stats = gen::generate(&cfg, &mut lock)?;
        lock.flush()?;
        stats
    } else {
        gen::generate_to_path(&cfg, &args.out)
            .with_context(|| format!("writing {}", args.out.display()))?
    };
    let secs = began.elapsed().as_secs_f64();

    let on_disk = match std::fs::metadata(&args.out) {
        Ok(m)
            if args
                .out
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gz")) =>
        {
            format!(", {} bytes compressed", m.len())
        }
        _ => String::new(),
    };
    eprintln!(
        "weft-gen: {} events ({} duplicates, {} malformed), {} bytes ({:.0} B/event){} to {} in {:.2} s ({:.0} events/s)",
        stats.events,
        stats.duplicates,
        stats.malformed,
        stats.bytes,
        stats.bytes as f64 / stats.events.max(1) as f64,
        on_disk,
        args.out.display(),
        secs,
        stats.events as f64 / secs.max(1e-9),
    );
    Ok(())
}

//! Ingest benchmark: parse + validate alone, and the end-to-end file job,
//! each beside a baseline measured in the same run.
//!
//! ```text
//! cargo run --release -p weft-bench --bin bench-ingest -- --events 1000000
//! ```
//!
//! - parse: `weft_dataflows::event::parse_event` over in-memory lines vs.
//!   `serde_json::from_slice::<serde_json::Value>` (a generic DOM parse that
//!   validates nothing) over the same lines, one thread each;
//! - file job: `weft run` of the quickstart-shaped job (counts + dead letters)
//!   at 1 and 2 workers vs. a single-thread read-lines + `serde_json::Value`
//!   decode loop over the same file (the read + decode ceiling of one core).

use std::io::{BufRead, BufReader, Write};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use weft_bench::gen::{GenConfig, Generator};
use weft_dataflows::event::{parse_event, ParseContext};
use weft_dataflows::spec::JobSpec;
use weft_engine::run::{run, RunOptions};

#[derive(Parser)]
#[command(about = "Ingest benchmark: parse+validate and the end-to-end file job.")]
struct Args {
    /// Events to generate.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Repetitions of each measurement (the best is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Directory for the generated file (default: a temp dir).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

fn best<F: FnMut() -> u64>(reps: usize, mut f: F) -> (f64, u64) {
    let mut best = f64::MAX;
    let mut check = 0;
    for _ in 0..reps {
        let t = Instant::now();
        check = f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    (best, check)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg = GenConfig::with_events(args.events);
    let mut gen = Generator::new(&cfg)?;
    let mut lines: Vec<Vec<u8>> = Vec::with_capacity(args.events as usize);
    let mut buf = Vec::new();
    while gen.next_into(&mut buf).is_some() {
        let mut l = std::mem::take(&mut buf);
        if l.last() == Some(&b'\n') {
            l.pop();
        }
        lines.push(l);
    }
    let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
    let n = lines.len() as f64;
    println!(
        "# bench-ingest: {} events, {:.1} MB, {} reps (best of)",
        lines.len(),
        bytes as f64 / 1e6,
        args.reps
    );

    // Parse + validate alone.
    let cx = ParseContext::default();
    let (weft_s, ok) = best(args.reps, || {
        lines.iter().filter(|l| parse_event(l, &cx).is_ok()).count() as u64
    });
    let (base_s, base_ok) = best(args.reps, || {
        lines
            .iter()
            .filter(|l| serde_json::from_slice::<serde_json::Value>(l).is_ok())
            .count() as u64
    });
    println!(
        "parse+validate  weft parse_event        {:>10.0} events/s  {:>7.1} MB/s  ({} valid)",
        n / weft_s,
        bytes as f64 / 1e6 / weft_s,
        ok
    );
    println!(
        "parse baseline  serde_json::Value       {:>10.0} events/s  {:>7.1} MB/s  ({} parsed)",
        n / base_s,
        bytes as f64 / 1e6 / base_s,
        base_ok
    );
    println!(
        "ratio parse_event / Value               {:>10.2}x",
        base_s / weft_s
    );

    // End-to-end file job.
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = std::env::temp_dir().join(format!("weft-bench-ingest-{}", std::process::id()));
            tmp.clone()
        }
    };
    std::fs::create_dir_all(&dir)?;
    let input = dir.join("events.jsonl");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&input)?);
        for l in &lines {
            f.write_all(l)?;
            f.write_all(b"\n")?;
        }
    }
    drop(lines);
    let (read_s, read_n) = best(args.reps, || {
        let r = BufReader::with_capacity(1 << 20, std::fs::File::open(&input).unwrap());
        let mut count = 0u64;
        for l in r.split(b'\n') {
            let l = l.unwrap();
            if serde_json::from_slice::<serde_json::Value>(&l).is_ok() {
                count += 1;
            }
        }
        count
    });
    println!(
        "file baseline   read lines + Value, 1 thread {:>7.0} events/s  ({} parsed)",
        n / read_s,
        read_n
    );
    let job = dir.join("job.toml");
    std::fs::write(
        &job,
        r#"[job]
name = "bench-ingest"
[[sources]]
type = "file"
name = "events"
path = "events.jsonl"
[[sinks]]
type = "file"
name = "counts"
output = "counts"
path = "out/counts.jsonl"
[[sinks]]
type = "file"
name = "dead-letter"
output = "errors"
path = "out/errors.jsonl"
"#,
    )?;
    let spec = JobSpec::load(&job)?;
    for workers in [1, 2] {
        let (s, records) = best(args.reps, || {
            let report = run(
                &spec,
                &RunOptions {
                    workers,
                    progress: false,
                },
                Arc::new(AtomicBool::new(false)),
            )
            .unwrap();
            report.records
        });
        println!(
            "weft run file job, {workers} worker(s)    {:>10.0} events/s  {:>7.1} MB/s  ({} records)  ratio to 1-thread baseline {:.2}x",
            n / s,
            bytes as f64 / 1e6 / s,
            records,
            read_s / s
        );
    }
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

//! Webhook sink benchmark: delivered events/s to a local HTTP receiver, and
//! whether a failing destination slows a healthy one.
//!
//! ```text
//! cargo run --release -p weft-bench --bin bench-webhook -- --events 200000
//! ```
//!
//! N generated events (`weft_bench::gen`, parsed into `Event`s; duplicates
//! and malformed lines left out) are written to `WebhookSink`s in times of
//! `--per-time` events, with a commit after each time, as the engine does.
//! Each receiver is an axum server on 127.0.0.1 that decodes every batch
//! (`{"batch":[…]}`) and counts its messages. Three runs:
//!
//! - `alone`: one sink, one healthy receiver;
//! - `beside healthy`: the same, plus a second sink (same writes) to a second
//!   healthy receiver;
//! - `beside failing`: the same, but the second receiver answers every
//!   request with 503 (its sink retries with the default backoff and queues
//!   everything, spilling to disk past 64 MiB).
//!
//! The rate is N / (time from the first write until the healthy sink's
//! final `commit(&[])` returns, i.e. until its queue is drained). The ratio
//! `beside failing / beside healthy` is the healthy destination's throughput
//! with a failing neighbour relative to a healthy neighbour (1.0 = no
//! effect); the writer does the same work in both. The `enqueue` figure is
//! the cost of `write` + `commit` on the calling (worker) thread alone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use clap::Parser;
use weft_bench::gen::{GenConfig, Generator, LineKind};
use weft_connectors::sink::Sink;
use weft_connectors::webhook::{WebhookConfig, WebhookSink};
use weft_dataflows::event::{parse_event, Event, ParseContext};

#[derive(Parser)]
#[command(about = "Webhook sink throughput, alone and beside a failing destination.")]
struct Args {
    /// Events to generate.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Events per logical time (one commit each).
    #[arg(long, default_value_t = 1_000)]
    per_time: usize,
    /// Messages per request.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Repetitions of each run (the best is reported).
    #[arg(long, default_value_t = 2)]
    reps: usize,
}

/// A local receiver: decodes each batch and counts messages; or fails.
struct Receiver {
    url: String,
    received: Arc<AtomicU64>,
    _runtime: tokio::runtime::Runtime,
}

#[derive(serde::Deserialize)]
struct Batch {
    batch: Vec<serde::de::IgnoredAny>,
}

impl Receiver {
    fn start(healthy: bool) -> Result<Receiver> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let received = Arc::new(AtomicU64::new(0));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state((received.clone(), healthy));
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("a listener");
            axum::serve(listener, app).await.expect("the receiver runs");
        });
        Ok(Receiver {
            url,
            received,
            _runtime: runtime,
        })
    }
}

async fn receive(
    State((received, healthy)): State<(Arc<AtomicU64>, bool)>,
    body: Bytes,
) -> StatusCode {
    if !healthy {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    match serde_json::from_slice::<Batch>(&body) {
        Ok(b) => {
            received.fetch_add(b.batch.len() as u64, Ordering::Relaxed);
            StatusCode::OK
        }
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

fn events(n: u64) -> Result<Vec<Event>> {
    let mut gen = Generator::new(&GenConfig::with_events(n))?;
    let (mut buf, mut out) = (Vec::new(), Vec::new());
    let cx = ParseContext::default();
    while let Some(kind) = gen.next_into(&mut buf) {
        if kind == LineKind::Event {
            if let Ok(e) = parse_event(buf.trim_ascii_end(), &cx) {
                out.push(e);
            }
        }
        buf.clear();
    }
    Ok(out)
}

fn open(name: &str, url: &str, args: &Args, dir: &std::path::Path) -> Result<WebhookSink<Event>> {
    let mut c = WebhookConfig::new(name, url, dir);
    c.batch_size = args.batch_size;
    c.drain_timeout = Duration::from_secs(600);
    WebhookSink::open(&c).with_context(|| format!("opening sink {name}"))
}

/// CPU time (user + system) of the calling thread, from /proc (10 ms resolution).
fn thread_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // Fields after the command name (in parentheses): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// What one run measured.
#[derive(Clone, Copy, Default)]
struct Rates {
    /// Events delivered to the healthy receiver per second (wall clock).
    delivered: f64,
    /// Microseconds of wall-clock time per event in the healthy sink's `write`.
    write_us: f64,
    /// Milliseconds of wall-clock time per `commit` (with new messages: 2 fdatasyncs).
    commit_ms: f64,
    /// Microseconds of the writing thread's CPU per event and sink.
    cpu_us: f64,
}

/// One run of the healthy sink, alone or beside a neighbour.
fn run(
    events: &[(u64, Vec<(Event, isize)>)],
    n: u64,
    neighbour: Option<bool>,
    args: &Args,
) -> Result<Rates> {
    let dir = TempDir::new()?;
    let healthy = Receiver::start(true)?;
    let other = neighbour.map(Receiver::start).transpose()?;
    let mut sink = open("healthy", &healthy.url, args, &dir.path().join("a"))?;
    let mut second = match &other {
        Some(r) => Some(open("neighbour", &r.url, args, &dir.path().join("b"))?),
        None => None,
    };
    let started = Instant::now();
    let cpu = thread_cpu();
    let (mut writing, mut committing) = (Duration::ZERO, Duration::ZERO);
    for (t, updates) in events {
        let s = Instant::now();
        sink.write(*t, updates)?;
        let w = Instant::now();
        sink.commit(&[t + 1])?;
        writing += w - s;
        committing += w.elapsed();
        if let Some(b) = &mut second {
            b.write(*t, updates)?;
            b.commit(&[t + 1])?;
        }
    }
    let cpu = thread_cpu() - cpu;
    sink.commit(&[])?;
    let elapsed = started.elapsed();
    let got = healthy.received.load(Ordering::Relaxed);
    anyhow::ensure!(got >= n, "the healthy receiver got {got} of {n} events");
    let stats = sink.metrics().snapshot();
    anyhow::ensure!(stats.retries == 0, "the healthy sink retried: {stats:?}");
    if let (Some(b), Some(false)) = (&second, neighbour) {
        let s = b.metrics().snapshot();
        eprintln!(
            "  failing neighbour: {} retries, {} queued ({} B in memory, {} B spilled to disk), {} delivered",
            s.retries, s.queued_messages, s.memory_bytes, s.spilled_bytes, s.delivered_messages
        );
    }
    drop(second);
    let sinks = if neighbour.is_some() { 2.0 } else { 1.0 };
    Ok(Rates {
        delivered: n as f64 / elapsed.as_secs_f64(),
        write_us: writing.as_secs_f64() * 1e6 / n as f64,
        commit_ms: committing.as_secs_f64() * 1e3 / events.len() as f64,
        cpu_us: cpu * 1e6 / (n as f64 * sinks),
    })
}

/// A scratch directory, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> Result<TempDir> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "weft-bench-webhook-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir(path))
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The best of `runs` runs (by delivered rate).
fn best(runs: usize, mut f: impl FnMut() -> Result<Rates>) -> Result<Rates> {
    let mut top = Rates::default();
    for _ in 0..runs.max(1) {
        let r = f()?;
        if r.delivered > top.delivered {
            top = r;
        }
    }
    Ok(top)
}

fn report(label: &str, r: &Rates) {
    println!(
        "{label:<16} {:>9.0} events/s delivered   write {:>5.1} µs/event, commit {:>5.1} ms, writer CPU {:>5.1} µs/event/sink",
        r.delivered, r.write_us, r.commit_ms, r.cpu_us
    );
}

fn main() -> Result<()> {
    let args = Args::parse();
    let all = events(args.events)?;
    let n = all.len() as u64;
    let times: Vec<(u64, Vec<(Event, isize)>)> = all
        .chunks(args.per_time.max(1))
        .enumerate()
        .map(|(i, c)| (1 + i as u64, c.iter().map(|e| (e.clone(), 1)).collect()))
        .collect();
    println!(
        "webhook sink: {n} events, {} per time, batches of {}, best of {}",
        args.per_time, args.batch_size, args.reps
    );
    let alone = best(args.reps, || run(&times, n, None, &args))?;
    report("alone", &alone);
    let healthy = best(args.reps, || run(&times, n, Some(true), &args))?;
    report("beside healthy", &healthy);
    let failing = best(args.reps, || run(&times, n, Some(false), &args))?;
    report("beside failing", &failing);
    println!(
        "ratio beside failing / beside healthy  {:.2}x",
        failing.delivered / healthy.delivered
    );
    println!(
        "ratio beside failing / alone           {:.2}x",
        failing.delivered / alone.delivered
    );
    Ok(())
}

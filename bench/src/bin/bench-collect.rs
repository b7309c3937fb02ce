//! Collection API benchmark: events/s accepted over HTTP (batches and single
//! calls) and request latency at a fixed rate, against the same events
//! stored without HTTP.
//!
//! ```text
//! cargo run --release -p weft-bench --bin bench-collect -- --events 100000
//! ```
//!
//! An embedded cluster runs one job whose HTTP source has no topic (events go
//! to its fsync'd collect log) and whose `counts` output goes to a file, so the
//! job reads and processes everything while the benchmark posts. The HTTP
//! server is Weft's own (`weft_engine::api::serve`, 127.0.0.1); the clients
//! are minimal HTTP/1.1 keep-alive connections on a separate tokio runtime.
//! Events come from `weft_bench::gen` (no duplicates, no malformed lines).
//!
//! Rows:
//!
//! - `log append, no HTTP`: `--clients` threads append the request blocks
//!   (one per batch, or one per event) straight to a collect log — the
//!   storage cost alone (group commit included);
//! - `parse + append, no HTTP`: the same, each block first going through
//!   the API's request parsing (`parse_request`) — everything but HTTP;
//! - `HTTP batch` / `HTTP single`: `--clients` connections post `/v1/batch`
//!   (`--batch` events) or each event to its own call (`/v1/track`,
//!   `/v1/identify`, ... by its type) as fast as answered (closed loop);
//!   latency is per request;
//! - `HTTP single @ rate`: single calls started at a fixed
//!   `--rate` per second for `--seconds` (open loop: latency is measured
//!   from each request's scheduled start, so a stall counts in full).
//!
//! At the end the job is dropped and its record count checked against the
//! number of events answered 200 (nothing accepted is lost).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_bench::gen::{GenConfig, Generator, LineKind};
use weft_connectors::collect::{log, parse_request, Call};
use weft_dataflows::spec::JobSpec;
use weft_engine::api::{serve, ApiConfig};
use weft_engine::runtime::{Cluster, ClusterConfig, JobStatus};

#[derive(Parser, Debug)]
#[command(about = "Collection API throughput and latency")]
struct Args {
    /// Events per throughput row.
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Events per `/v1/batch` request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Concurrent clients (connections, or threads without HTTP).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Requests per second of the fixed-rate row.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// Seconds of the fixed-rate row.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Timely worker threads of the job.
    #[arg(long, default_value_t = 1)]
    workers: usize,
}

const KEY: &str = "bench-key";

fn main() -> Result<()> {
    let args = Args::parse();
    let events = generate(args.events)?;
    let mean = events.iter().map(Vec::len).sum::<usize>() / events.len().max(1);
    println!(
        "{} events of {mean} bytes on average; batches of {}; {} clients; {} worker(s)",
        events.len(),
        args.batch,
        args.clients,
        args.workers
    );
    let batches = bodies(&events, args.batch);
    let singles = bodies(&events, 1);

    // STEP 1. Without HTTP.
    let dir = tempfile::tempdir()?;
    println!(
        "\n{:<26} {:>12} {:>10} {:>10}",
        "row", "events/s", "p50 ms", "p99 ms"
    );
    for (name, blocks) in [("batch", &batches), ("single", &singles)] {
        let r = no_http(
            &dir.path().join(format!("append-{name}")),
            blocks,
            args.clients,
            false,
        )?;
        row(
            &format!("log append, no HTTP ({name})"),
            events.len(),
            r,
            None,
        );
        let r = no_http(
            &dir.path().join(format!("parse-{name}")),
            blocks,
            args.clients,
            true,
        )?;
        row(&format!("parse + append ({name})"), events.len(), r, None);
    }

    // STEP 2. Over HTTP, with a job reading.
    let state = tempfile::tempdir()?;
    let spec_path = state.path().join("job.toml");
    std::fs::write(
        &spec_path,
        format!(
            "[job]\nname = \"bench-collect\"\nstate_dir = \"state\"\n[[sources]]\ntype = \"http\"\nname = \"api\"\nwrite_keys = [\"{KEY}\"]\n[[sinks]]\ntype = \"file\"\nname = \"counts\"\noutput = \"counts\"\npath = \"counts.jsonl\"\n"
        ),
    )?;
    let spec = JobSpec::load(&spec_path)?;
    let cluster = Arc::new(Cluster::start(ClusterConfig::single(args.workers))?);
    let server = serve(
        ApiConfig {
            listen: "127.0.0.1:0".into(),
            token: None,
        },
        cluster.clone(),
    )?;
    let addr = server.local_addr().to_string();
    let id = cluster.submit(&spec).map_err(|e| anyhow::anyhow!("{e}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster.shared().collect.route(KEY).is_none() {
        if Instant::now() > deadline {
            bail!(
                "the job did not register its write key: {:?}",
                cluster.report(id)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut accepted = 0u64;
    let batch_requests: Vec<(String, Vec<u8>)> = batches
        .iter()
        .map(|b| ("/v1/batch".to_string(), b.clone()))
        .collect();
    let single_requests: Vec<(String, Vec<u8>)> =
        singles.iter().map(|b| (call_path(b), b.clone())).collect();
    let r = client_rt.block_on(closed_loop(&addr, &batch_requests, args.clients))?;
    accepted += events.len() as u64;
    row("HTTP batch", events.len(), r.0, Some(&r.1));
    let r = client_rt.block_on(closed_loop(&addr, &single_requests, args.clients))?;
    accepted += events.len() as u64;
    row("HTTP single", events.len(), r.0, Some(&r.1));
    let n = (args.rate * args.seconds) as usize;
    let paced: Vec<(String, Vec<u8>)> = single_requests.iter().cycle().take(n).cloned().collect();
    let (elapsed, lat) = client_rt.block_on(open_loop(&addr, &paced, args.rate))?;
    accepted += n as u64;
    row(
        &format!("HTTP single @ {}/s", args.rate),
        n,
        elapsed,
        Some(&lat),
    );
    println!(
        "  (open loop: max {:.2} ms; latency from each request's scheduled start)",
        lat.last().map_or(0.0, |d| d.as_secs_f64() * 1e3)
    );

    // STEP 3. Everything answered 200 reached the job.
    let deadline = Instant::now() + Duration::from_secs(300);
    while cluster.report(id).map_or(0, |r| r.records) < accepted {
        if Instant::now() > deadline {
            bail!(
                "the job read {:?} of {accepted} events",
                cluster.report(id).map(|r| r.records)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.drop_job(id).map_err(|e| anyhow::anyhow!("{e}"))?;
    while cluster
        .report(id)
        .is_some_and(|r| r.status != JobStatus::Finished)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let report = cluster.report(id).context("job report")?;
    println!(
        "\njob read {} events ({} rejected); {} answered 200",
        report.records, report.rejected, accepted
    );
    if report.records != accepted || !report.errors.is_empty() {
        bail!("lost or extra events: {report:?}");
    }
    server.stop();
    cluster.shutdown()?;
    Ok(())
}

fn generate(n: u64) -> Result<Vec<Vec<u8>>> {
    let mut cfg = GenConfig::with_events(n);
    cfg.duplicate_rate = 0.0;
    cfg.malformed_rate = 0.0;
    let mut g = Generator::new(&cfg)?;
    let mut out = Vec::with_capacity(n as usize);
    let mut buf = Vec::new();
    while let Some(kind) = g.next_into(&mut buf) {
        if kind == LineKind::Event {
            let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
            out.push(line.to_vec());
        }
        buf.clear();
    }
    Ok(out)
}

/// The endpoint of a single call: `/v1/<its type>` (as a Segment library posts it).
fn call_path(event: &[u8]) -> String {
    let kind = serde_json::from_slice::<serde_json::Value>(event)
        .ok()
        .and_then(|v| v["type"].as_str().map(str::to_string))
        .unwrap_or_else(|| "track".to_string());
    format!("/v1/{kind}")
}

/// Request bodies: `/v1/batch` envelopes of `per` events, or (per = 1) the
/// events themselves for single calls (`/v1/track`, `/v1/identify`, ...).
fn bodies(events: &[Vec<u8>], per: usize) -> Vec<Vec<u8>> {
    if per == 1 {
        return events.to_vec();
    }
    events
        .chunks(per)
        .map(|c| {
            let mut b = b"{\"batch\":[".to_vec();
            for (i, e) in c.iter().enumerate() {
                if i > 0 {
                    b.push(b',');
                }
                b.extend_from_slice(e);
            }
            b.extend_from_slice(b"]}");
            b
        })
        .collect()
}

/// Stores `blocks` in a fresh log from `clients` threads; with `parse`, each
/// goes through `parse_request` first (as the API does). Returns the time.
fn no_http(
    dir: &std::path::Path,
    blocks: &[Vec<u8>],
    clients: usize,
    parse: bool,
) -> Result<Duration> {
    let (writer, _reader) = log::open(dir, "bench")?;
    let next = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let (writer, next) = (writer.clone(), &next);
                s.spawn(move || -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                        let Some(body) = blocks.get(i) else {
                            return Ok(());
                        };
                        let mut lines = Vec::with_capacity(body.len() + 64);
                        if parse {
                            let call = if body.starts_with(b"{\"batch\"") {
                                Call::Batch
                            } else {
                                Call::Track
                            };
                            let got =
                                parse_request(call, body, 0).map_err(|r| anyhow::anyhow!("{r}"))?;
                            for e in got.events {
                                lines.extend_from_slice(&e.json);
                                lines.push(b'\n');
                            }
                        } else {
                            lines.extend_from_slice(body);
                            lines.push(b'\n');
                        }
                        writer.append_blocking(lines)?;
                    }
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        }
        Ok(())
    })?;
    Ok(start.elapsed())
}

/// `clients` keep-alive connections post `(path, body)` requests as fast as they
/// are answered; returns the time and the sorted request latencies.
async fn closed_loop(
    addr: &str,
    bodies: &[(String, Vec<u8>)],
    clients: usize,
) -> Result<(Duration, Vec<Duration>)> {
    let bodies = Arc::new(bodies.to_vec());
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (bodies, next, addr) = (bodies.clone(), next.clone(), addr.to_string());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(&addr).await?;
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some((path, body)) = bodies.get(i) else {
                    return Ok::<_, anyhow::Error>(lat);
                };
                let t = Instant::now();
                conn.post(path, body).await?;
                lat.push(t.elapsed());
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = start.elapsed();
    all.sort();
    Ok((elapsed, all))
}

/// Starts one request (`(path, body)`) every `1/rate` s, on a pool of keep-alive
/// connections; returns the time and the sorted latencies from each
/// request's scheduled start.
async fn open_loop(
    addr: &str,
    bodies: &[(String, Vec<u8>)],
    rate: u64,
) -> Result<(Duration, Vec<Duration>)> {
    let pool: Arc<Mutex<Vec<Conn>>> = Arc::default();
    let start = tokio::time::Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let mut tasks = Vec::with_capacity(bodies.len());
    for (i, (path, body)) in bodies.iter().enumerate() {
        let scheduled = start + period * i as u32;
        tokio::time::sleep_until(scheduled).await;
        let (pool, addr, path, body) = (pool.clone(), addr.to_string(), path.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let taken = pool.lock().expect("pool").pop();
            let mut conn = match taken {
                Some(c) => c,
                None => Conn::connect(&addr).await?,
            };
            conn.post(&path, &body).await?;
            let latency = scheduled.elapsed();
            pool.lock().expect("pool").push(conn);
            Ok::<_, anyhow::Error>(latency)
        }));
    }
    let mut lat = Vec::with_capacity(tasks.len());
    for t in tasks {
        lat.push(t.await??);
    }
    let elapsed = start.elapsed();
    lat.sort();
    Ok((elapsed, lat))
}

/// A minimal HTTP/1.1 keep-alive client connection.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn connect(addr: &str) -> Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// POSTs `body` with the write key; fails unless the answer is 200.
    async fn post(&mut self, path: &str, body: &[u8]) -> Result<()> {
        // base64("bench-key:")
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Basic YmVuY2gta2V5Og==\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut request = Vec::with_capacity(head.len() + body.len());
        request.extend_from_slice(head.as_bytes());
        request.extend_from_slice(body);
        self.stream.write_all(&request).await?;
        // Read the head, then Content-Length bytes of body.
        self.buf.clear();
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("the server closed the connection");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = std::str::from_utf8(&self.buf[..head_end])?.to_ascii_lowercase();
        let status = head.get(9..12).unwrap_or("");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse())
            .transpose()?
            .unwrap_or(0);
        while self.buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("the server closed the connection mid-body");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        if status != "200" {
            bail!(
                "{path} answered {status}: {}",
                String::from_utf8_lossy(&self.buf[head_end..])
            );
        }
        Ok(())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

fn row(name: &str, events: usize, elapsed: Duration, latencies: Option<&[Duration]>) {
    let rate = events as f64 / elapsed.as_secs_f64();
    match latencies {
        Some(l) => println!(
            "{name:<26} {rate:>12.0} {:>10.2} {:>10.2}",
            percentile(l, 0.50),
            percentile(l, 0.99)
        ),
        None => println!("{name:<26} {rate:>12.0} {:>10} {:>10}", "-", "-"),
    }
}

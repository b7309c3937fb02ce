//! Profile API latency and throughput on 127.0.0.1.
//!
//! 1. Builds profiles: a `weft` job (embedded cluster) reads generated events
//!    (identity, two computed traits, two audiences); the profile index's
//!    heap size is measured with a counting allocator (live bytes after the
//!    job has finished and its dataflows are dropped, minus before).
//! 2. Serves the Profile API (`weft_engine::api::profiles::routes`) with axum
//!    on 127.0.0.1, and loads it **open loop** at `--rate` requests/s over
//!    `--connections` keep-alive connections: request `i` is due at
//!    `start + i / rate`, latency is measured from when it was due (so a
//!    stalled server is charged for the requests queued behind it), and
//!    identifiers are drawn from every userId / anonymousId of the input.
//! 3. Maximum throughput: the same connections, closed loop, as fast as the
//!    server answers.
//! 4. Baseline: the same lookups straight on the index, in-process, one
//!    thread; the ratio to (2) is the HTTP overhead.
//!
//! The load generator is a minimal HTTP/1.1 client on tokio (it shares the
//! machine with the server; both are in this process).

use std::alloc::System;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use weft_bench::gen::{generate_to_path, GenConfig};
use weft_dataflows::spec::JobSpec;
use weft_engine::profile_index::{EventPage, Lookup, ProfileIndex};
use weft_engine::runtime::{Cluster, ClusterConfig, JobStatus};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Load the Profile API on 127.0.0.1 and compare with in-process index lookups.
#[derive(Debug, Parser)]
#[command(name = "bench-profile-api")]
struct Args {
    /// Generated events to build profiles from.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Worker threads of the cluster that builds them.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Open-loop request rate (requests per second).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Seconds of open-loop load (and of the maximum-throughput run).
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// `events_limit` of each request.
    #[arg(long, default_value_t = 10)]
    events_limit: usize,
    /// Threads of the server's tokio runtime.
    #[arg(long, default_value_t = 2)]
    server_threads: usize,
    /// Working directory (default: a temporary one).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn live_bytes() -> i64 {
    let s = GLOBAL.stats();
    s.bytes_allocated as i64 - s.bytes_deallocated as i64
}

const JOB: &str = r#"
[job]
name = "bench-profile-api"
state_dir = "state"
[[sources]]
type = "file"
name = "events"
path = "events.jsonl"
[[traits]]
name = "orders"
query = 'count(track "Order Completed")'
[[traits]]
name = "revenue"
query = 'sum(properties.revenue from track "Order Completed")'
[[audiences]]
name = "viewers"
query = 'count(track "Product Viewed") >= 3'
[[audiences]]
name = "pros"
query = 'trait.plan = "pro"'
"#;

/// Every userId / anonymousId of the input, as URL path segments `kind:value`.
fn identifiers(path: &std::path::Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).expect("read events");
    let mut set = std::collections::BTreeSet::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        for (field, kind) in [("userId", "user_id"), ("anonymousId", "anonymous_id")] {
            if let Some(id) = v[field].as_str().filter(|s| !s.is_empty()) {
                set.insert((kind.to_string(), id.to_string()));
            }
        }
    }
    set.into_iter().collect()
}

/// `kind:value`, percent-encoded as one path segment.
fn segment(kind: &str, value: &str) -> String {
    let mut out = String::new();
    for b in format!("{kind}:{value}").bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    reader: BufReader<tokio::io::ReadHalf<TcpStream>>,
    writer: tokio::io::WriteHalf<TcpStream>,
    line: String,
    body: Vec<u8>,
}

impl Conn {
    async fn open(addr: std::net::SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).await.expect("connect");
        s.set_nodelay(true).unwrap();
        let (r, w) = tokio::io::split(s);
        Conn {
            reader: BufReader::new(r),
            writer: w,
            line: String::new(),
            body: Vec::new(),
        }
    }

    /// Sends one GET and reads the answer; returns its status.
    async fn get(&mut self, path: &str) -> u16 {
        let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        self.writer.write_all(req.as_bytes()).await.expect("write");
        self.line.clear();
        self.reader.read_line(&mut self.line).await.expect("status");
        let status: u16 = self
            .line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let mut length = 0usize;
        loop {
            self.line.clear();
            self.reader.read_line(&mut self.line).await.expect("header");
            let l = self.line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().expect("content-length");
                }
            }
        }
        self.body.resize(length, 0);
        self.reader.read_exact(&mut self.body).await.expect("body");
        status
    }
}

struct Stats {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

fn stats(mut nanos: Vec<u64>) -> Stats {
    nanos.sort_unstable();
    let q = |p: f64| nanos[((nanos.len() - 1) as f64 * p).round() as usize] as f64 / 1e6;
    Stats {
        p50: q(0.5),
        p99: q(0.99),
        p999: q(0.999),
        max: *nanos.last().unwrap() as f64 / 1e6,
    }
}

/// Open loop: request `i` due at `start + i / rate`, on connection `i % connections`.
async fn open_loop(
    addr: std::net::SocketAddr,
    paths: Arc<Vec<String>>,
    rate: u64,
    connections: usize,
    total: usize,
) -> (Vec<u64>, f64, BTreeMap<u16, usize>) {
    let start = Instant::now() + Duration::from_millis(50);
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    let mut tasks = Vec::new();
    for c in 0..connections {
        let paths = paths.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await;
            let mut lat = Vec::new();
            let mut errors: BTreeMap<u16, usize> = BTreeMap::new();
            let mut i = c;
            while i < total {
                let due = start + interval * i as u32;
                tokio::time::sleep_until(due.into()).await;
                let status = conn.get(&paths[i % paths.len()]).await;
                if status != 200 {
                    let n = errors.entry(status).or_default();
                    if *n < 3 {
                        eprintln!("  a {status} answer: GET {}", paths[i % paths.len()]);
                    }
                    *n += 1;
                }
                lat.push(due.elapsed().as_nanos() as u64);
                i += connections;
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::with_capacity(total);
    let mut errors: BTreeMap<u16, usize> = BTreeMap::new();
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        for (status, n) in e {
            *errors.entry(status).or_default() += n;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    (all, seconds, errors)
}

/// Closed loop: every connection sends its next request as soon as the last is answered.
async fn closed_loop(
    addr: std::net::SocketAddr,
    paths: Arc<Vec<String>>,
    connections: usize,
    seconds: u64,
) -> (usize, f64) {
    let end = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let paths = paths.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await;
            let mut n = 0usize;
            let mut i = c * 7919;
            while Instant::now() < end {
                conn.get(&paths[i % paths.len()]).await;
                n += 1;
                i += 1;
            }
            n
        }));
    }
    let mut n = 0;
    for t in tasks {
        n += t.await.unwrap();
    }
    (n, start.elapsed().as_secs_f64())
}

/// The same lookups on the index itself, one thread.
fn baseline(
    index: &ProfileIndex,
    ids: &[(String, String)],
    limit: usize,
    total: usize,
) -> (Vec<u64>, f64) {
    let page = EventPage {
        limit,
        before: None,
    };
    let mut lat = Vec::with_capacity(total);
    let start = Instant::now();
    let mut bytes = 0usize;
    for i in 0..total {
        let (k, v) = &ids[i % ids.len()];
        let t = Instant::now();
        if let Lookup::Found(b) = index.lookup(k, v, &page) {
            bytes += b.len();
        }
        lat.push(t.elapsed().as_nanos() as u64);
    }
    std::hint::black_box(bytes);
    (lat, start.elapsed().as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let input = dir.join("events.jsonl");
    generate_to_path(&GenConfig::with_events(args.events), &input)?;
    std::fs::write(dir.join("job.toml"), JOB)?;
    let spec = JobSpec::load(&dir.join("job.toml"))?;
    let ids = identifiers(&input);

    // STEP 1. Build profiles.
    let cluster = Arc::new(Cluster::start(ClusterConfig::single(args.workers))?);
    let before = live_bytes();
    let started = Instant::now();
    let job = cluster.submit(&spec)?;
    loop {
        std::thread::sleep(Duration::from_millis(50));
        if cluster
            .report(job)
            .is_some_and(|r| r.status == JobStatus::Finished)
        {
            break;
        }
    }
    let build = started.elapsed().as_secs_f64();
    let index = cluster
        .profile_index(job)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let index_bytes = live_bytes() - before;
    let s = index.stats();
    println!(
        "built profiles from {} events in {build:.1}s on {} workers: {} profiles, {} identifiers, {} events indexed; index heap {:.1} MiB ({:.0} B/event); worker 0 spent {:.2}s applying index changes",
        args.events,
        args.workers,
        s.profiles,
        s.identifiers,
        s.events,
        index_bytes as f64 / (1 << 20) as f64,
        index_bytes as f64 / s.events.max(1) as f64,
        s.apply_seconds
    );

    // STEP 2. Serve the Profile API on 127.0.0.1.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.server_threads)
        .enable_all()
        .build()?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let app = weft_engine::api::profiles::routes(cluster.clone());
    server_rt.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
        axum::serve(listener, app).await.expect("serve");
    });
    let paths: Arc<Vec<String>> = Arc::new(
        ids.iter()
            .map(|(k, v)| {
                format!(
                    "/v1/jobs/{job}/profiles/{}?events_limit={}",
                    segment(k, v),
                    args.events_limit
                )
            })
            .collect(),
    );
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let total = (args.rate * args.seconds) as usize;
    let (lat, seconds, errors) = client_rt.block_on(open_loop(
        addr,
        paths.clone(),
        args.rate,
        args.connections,
        total,
    ));
    let st = stats(lat);
    println!(
        "open loop, {} req/s target over {} connections: {total} requests in {seconds:.1}s = {:.0} req/s achieved; latency p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms; non-200 answers {} (by status: {errors:?})",
        args.rate,
        args.connections,
        total as f64 / seconds,
        st.p50,
        st.p99,
        st.p999,
        st.max,
        errors.values().sum::<usize>(),
    );

    // STEP 3. Maximum throughput.
    let (n, secs) = client_rt.block_on(closed_loop(addr, paths, args.connections, args.seconds));
    println!(
        "closed loop over {} connections: {n} requests in {secs:.1}s = {:.0} req/s",
        args.connections,
        n as f64 / secs
    );

    // STEP 4. The same lookups in-process.
    let (lat, secs) = baseline(&index, &ids, args.events_limit, total);
    let b = stats(lat);
    println!(
        "in-process index lookups (one thread): {total} in {secs:.2}s = {:.0} lookups/s; p50 {:.4} ms, p99 {:.4} ms, max {:.3} ms",
        total as f64 / secs,
        b.p50,
        b.p99,
        b.max
    );
    println!(
        "HTTP overhead at p50: {:.1}x the in-process lookup",
        st.p50 / b.p50.max(1e-9)
    );
    drop(server_rt);
    cluster.shutdown()?;
    Ok(())
}

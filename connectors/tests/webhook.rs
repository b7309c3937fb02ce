//! The webhook sink against real HTTP servers (axum on 127.0.0.1): servers
//! that fail with 5xx, time out, throttle with `Retry-After`, are slow,
//! reject with 400, or never recover. Every test checks zero loss: the set of
//! `messageId`s that reached the server (or the discard / dead-letter file)
//! is exactly the set of changes written.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::Value;
use tokio::sync::watch;
use weft_connectors::sink::Sink;
use weft_connectors::webhook::{message_id, WebhookConfig, WebhookSink, WebhookStats};
use weft_dataflows::event::{parse_event, Event, ParseContext};

// ---------------------------------------------------------------------------
// A recording HTTP server.

/// What the server is told about a request before it answers.
#[derive(Clone, Copy, Debug)]
struct Incoming<'a> {
    /// 0-based, in arrival order.
    index: usize,
    /// Whether the test has opened the server's gate.
    gate_open: bool,
    body: &'a str,
}

/// How the server answers.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    /// Sleep this long first.
    delay: Duration,
    /// Wait until the gate opens first.
    wait_for_gate: bool,
}

impl Reply {
    fn status(status: u16) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: String::new(),
            delay: Duration::ZERO,
            wait_for_gate: false,
        }
    }

    fn ok() -> Self {
        Reply::status(200)
    }
}

/// One request as received.
#[derive(Clone, Debug)]
struct Request {
    at: Instant,
    key: String,
    messages: Vec<Value>,
}

impl Request {
    fn ids(&self) -> Vec<String> {
        self.messages
            .iter()
            .map(|m| m["messageId"].as_str().unwrap().to_string())
            .collect()
    }
}

type Behavior = Box<dyn Fn(Incoming<'_>) -> Reply + Send + Sync>;

struct ServerState {
    behavior: Behavior,
    count: AtomicUsize,
    gate: watch::Sender<bool>,
    /// Every request, in arrival order.
    requests: Mutex<Vec<Request>>,
    /// Requests answered with 2xx.
    accepted: Mutex<Vec<Request>>,
}

/// An HTTP server on an ephemeral port of 127.0.0.1; stops when dropped.
struct Server {
    addr: SocketAddr,
    state: Arc<ServerState>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Server {
    fn start(behavior: impl Fn(Incoming<'_>) -> Reply + Send + Sync + 'static) -> Server {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ServerState {
            behavior: Box::new(behavior),
            count: AtomicUsize::new(0),
            gate: watch::channel(false).0,
            requests: Mutex::new(Vec::new()),
            accepted: Mutex::new(Vec::new()),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let app = Router::new()
            .route("/hook", post(handle))
            .with_state(state.clone());
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
        Server {
            addr,
            state,
            runtime: Some(runtime),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn open_gate(&self) {
        self.state.gate.send_replace(true);
    }

    fn requests(&self) -> Vec<Request> {
        self.state.requests.lock().unwrap().clone()
    }

    fn accepted(&self) -> Vec<Request> {
        self.state.accepted.lock().unwrap().clone()
    }

    /// `messageId`s of every accepted message, duplicates included.
    fn accepted_ids(&self) -> Vec<String> {
        self.accepted().iter().flat_map(Request::ids).collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn handle(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let index = state.count.fetch_add(1, Ordering::SeqCst);
    let text = String::from_utf8(body.to_vec()).expect("UTF-8 body");
    let parsed: Value = serde_json::from_str(&text).expect("a JSON body");
    let request = Request {
        at: Instant::now(),
        key: headers
            .get("idempotency-key")
            .expect("an Idempotency-Key header")
            .to_str()
            .unwrap()
            .to_string(),
        messages: parsed["batch"].as_array().expect("a batch array").clone(),
    };
    assert_eq!(
        headers.get("content-type").unwrap(),
        "application/json",
        "content type"
    );
    state.requests.lock().unwrap().push(request.clone());
    let reply = (state.behavior)(Incoming {
        index,
        gate_open: *state.gate.borrow(),
        body: &text,
    });
    if reply.wait_for_gate {
        let mut gate = state.gate.subscribe();
        let _ = gate.wait_for(|open| *open).await;
    }
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let status = StatusCode::from_u16(reply.status).unwrap();
    if status.is_success() {
        state.accepted.lock().unwrap().push(request);
    }
    let mut out = HeaderMap::new();
    for (k, v) in reply.headers {
        out.insert(k, v.parse().unwrap());
    }
    (status, out, reply.body).into_response()
}

// ---------------------------------------------------------------------------
// Changes, sinks, checks.

/// The changes of one time.
type Changes = (u64, Vec<(Event, isize)>);

fn event(i: u64, note: &str) -> Event {
    let json = format!(
        r#"{{"type":"track","event":"E{}","userId":"u{}","messageId":"m{i}","timestamp":"2026-01-01T00:00:00Z","properties":{{"i":{i},"note":"{note}"}}}}"#,
        i % 5,
        i % 17
    );
    parse_event(json.as_bytes(), &ParseContext::default()).unwrap()
}

/// `per_time` new events at each time of `times`, and a retraction of the
/// first event of the previous time (so `delete` messages are sent too).
fn workload(times: std::ops::RangeInclusive<u64>, per_time: u64) -> Vec<Changes> {
    times
        .map(|t| {
            let mut changes: Vec<(Event, isize)> = (0..per_time)
                .map(|i| (event(t * 1000 + i, ""), 1))
                .collect();
            if t > 1 {
                changes.push((event((t - 1) * 1000, ""), -1));
            }
            (t, changes)
        })
        .collect()
}

/// The `messageId` of every change, computed from the change.
fn expected_ids(sink: &str, changes: &[Changes]) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for (t, updates) in changes {
        for (e, diff) in updates {
            let mut json = Vec::new();
            e.write_json(&mut json);
            ids.insert(message_id(sink, *t, *diff, &json));
        }
    }
    ids
}

/// A configuration with short waits, so failures resolve quickly.
fn config(name: &str, url: &str, dir: &Path) -> WebhookConfig {
    let mut c = WebhookConfig::new(name, url, dir);
    c.headers = vec![("Authorization".into(), "Bearer test".into())];
    c.batch_size = 10;
    c.linger = Duration::from_millis(20);
    c.request_timeout = Duration::from_secs(5);
    c.retry_horizon = Duration::from_secs(60);
    c.initial_backoff = Duration::from_millis(10);
    c.max_backoff = Duration::from_millis(50);
    c.drain_timeout = Duration::from_secs(60);
    c
}

/// Writes each time's changes and commits the frontier after it.
fn feed(sink: &mut WebhookSink<Event>, changes: &[Changes]) {
    for (t, updates) in changes {
        sink.write(*t, updates).unwrap();
        sink.commit(&[t + 1]).unwrap();
    }
}

/// Checks every accepted message against its change: a `messageId` always
/// names the same message, and `op`, `diff` and `time` match the data.
fn check_messages(requests: &[Request]) {
    let mut seen: BTreeMap<String, Value> = BTreeMap::new();
    for r in requests {
        for m in &r.messages {
            let id = m["messageId"].as_str().unwrap().to_string();
            let diff = m["diff"].as_i64().unwrap();
            assert_eq!(m["op"], if diff > 0 { "insert" } else { "delete" });
            assert!(m["time"].is_u64() && m["data"]["messageId"].is_string());
            if let Some(earlier) = seen.insert(id.clone(), m.clone()) {
                assert_eq!(&earlier, m, "two different messages share the id {id}");
            }
        }
    }
}

/// Asserts two id sets are equal, printing only the difference.
fn assert_same(got: &BTreeSet<String>, want: &BTreeSet<String>, what: &str) {
    let missing: Vec<_> = want.difference(got).take(5).collect();
    let extra: Vec<_> = got.difference(want).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: {} ids expected, {} received; missing {missing:?}…, unexpected {extra:?}…",
        want.len(),
        got.len()
    );
}

fn stats(sink: &WebhookSink<Event>) -> WebhookStats {
    sink.metrics().snapshot()
}

/// Polls `done` every 10 ms; panics if it is still false after a minute.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The lines of a JSON-lines file (none if it does not exist).
fn read_jsonl(path: &Path) -> Vec<Value> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("{e}"),
    }
}

fn batch_ids(record: &Value) -> Vec<String> {
    record["batch"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["messageId"].as_str().unwrap().to_string())
        .collect()
}

fn segment_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("queue")).unwrap().count()
}

// ---------------------------------------------------------------------------
// Tests.

#[test]
fn server_errors_are_retried_until_accepted() {
    let server = Server::start(|r| match r.index {
        0 | 2 | 4 => Reply::status(500),
        1 | 3 => Reply::status(503),
        _ => Reply::ok(),
    });
    let dir = tempfile::tempdir().unwrap();
    let changes = workload(1..=5, 10);
    let mut sink = WebhookSink::open(&config("flaky", &server.url(), dir.path())).unwrap();
    feed(&mut sink, &changes);
    sink.commit(&[]).unwrap();

    let s = stats(&sink);
    let received: BTreeSet<String> = server.accepted_ids().into_iter().collect();
    assert_same(&received, &expected_ids("flaky", &changes), "zero loss");
    assert_eq!(s.retries, 5, "{s:?}");
    assert_eq!(s.delivered_messages, 54, "{s:?}");
    assert_eq!(server.requests().len() as u64, s.delivered_batches + 5);
    assert_eq!(
        (
            s.queued_messages,
            s.discarded_messages,
            s.dead_lettered_messages
        ),
        (0, 0, 0)
    );
    assert_eq!(
        s.last_error.as_deref(),
        Some("HTTP 500: "),
        "the last failure"
    );
    check_messages(&server.requests());
}

#[test]
fn timeouts_are_retried() {
    let server = Server::start(|r| Reply {
        delay: if r.index < 2 {
            Duration::from_secs(5)
        } else {
            Duration::ZERO
        },
        ..Reply::ok()
    });
    let dir = tempfile::tempdir().unwrap();
    let changes = workload(1..=3, 10);
    let mut c = config("slowstart", &server.url(), dir.path());
    c.request_timeout = Duration::from_millis(300);
    let mut sink = WebhookSink::open(&c).unwrap();
    feed(&mut sink, &changes);
    sink.commit(&[]).unwrap();

    let s = stats(&sink);
    let received: BTreeSet<String> = server.accepted_ids().into_iter().collect();
    assert_same(&received, &expected_ids("slowstart", &changes), "zero loss");
    assert_eq!(s.retries, 2, "{s:?}");
    assert!(
        s.last_error.as_deref().unwrap().starts_with("timeout"),
        "{s:?}"
    );
    // The timed-out requests were sent again with the same key.
    let requests = server.requests();
    assert_eq!(requests[0].key, requests[1].key);
    assert_eq!(requests[1].key, requests[2].key);
    check_messages(&requests);
}

#[test]
fn throttling_honours_retry_after_in_both_forms() {
    let server = Server::start(|r| match r.index {
        0 => Reply {
            headers: vec![("retry-after", "1".into())],
            ..Reply::status(429)
        },
        1 => Reply {
            headers: vec![(
                "retry-after",
                http_date(SystemTime::now() + Duration::from_secs(2)),
            )],
            ..Reply::status(429)
        },
        _ => Reply::ok(),
    });
    let dir = tempfile::tempdir().unwrap();
    let changes = workload(1..=1, 5);
    let mut sink = WebhookSink::open(&config("throttled", &server.url(), dir.path())).unwrap();
    feed(&mut sink, &changes);
    sink.commit(&[]).unwrap();

    let s = stats(&sink);
    let received: BTreeSet<String> = server.accepted_ids().into_iter().collect();
    assert_same(&received, &expected_ids("throttled", &changes), "zero loss");
    assert_eq!(s.retries, 2, "{s:?}");
    let r = server.requests();
    assert_eq!(r.len(), 3);
    // Without Retry-After the waits would be at most max_backoff (50 ms).
    assert!(
        r[1].at - r[0].at >= Duration::from_secs(1),
        "Retry-After: 1 honoured"
    );
    assert!(
        r[2].at - r[1].at >= Duration::from_secs(1),
        "Retry-After: <date> honoured"
    );
}

#[test]
fn a_slow_destination_gets_everything() {
    let server = Server::start(|_| Reply {
        delay: Duration::from_millis(100),
        ..Reply::ok()
    });
    let dir = tempfile::tempdir().unwrap();
    let changes = workload(1..=10, 10);
    let mut sink = WebhookSink::open(&config("slow", &server.url(), dir.path())).unwrap();
    feed(&mut sink, &changes);
    sink.commit(&[]).unwrap();

    let s = stats(&sink);
    let ids = server.accepted_ids();
    let received: BTreeSet<String> = ids.iter().cloned().collect();
    assert_same(&received, &expected_ids("slow", &changes), "zero loss");
    assert_eq!(ids.len(), received.len(), "no duplicates without failures");
    assert_eq!(s.retries, 0, "{s:?}");
    assert_eq!(s.delivered_messages, 109);
    assert!(
        server.requests().iter().all(|r| r.messages.len() <= 10),
        "batch_size"
    );
    check_messages(&server.requests());
}

#[test]
fn rejected_batches_are_discarded_and_recorded_not_retried() {
    let server = Server::start(|r| {
        if r.body.contains("poison") {
            Reply {
                body: r#"{"error":"poison pill"}"#.into(),
                ..Reply::status(400)
            }
        } else {
            Reply::ok()
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut changes = workload(1..=5, 10);
    changes[1].1.push((event(7, "poison"), 1));
    changes[3].1.push((event(23, "poison"), 1));
    let mut sink = WebhookSink::open(&config("strict", &server.url(), dir.path())).unwrap();
    feed(&mut sink, &changes);
    sink.commit(&[]).unwrap();

    let s = stats(&sink);
    assert_eq!(s.retries, 0, "never retried: {s:?}");
    assert_eq!(s.discarded_batches, 2, "{s:?}");
    assert_eq!(
        server.requests().len() as u64,
        s.delivered_batches + s.discarded_batches
    );
    let records = read_jsonl(&sink.discard_path());
    assert_eq!(records.len(), 2);
    let mut discarded = BTreeSet::new();
    for r in &records {
        assert_eq!(r["status"], 400);
        assert_eq!(r["response"], r#"{"error":"poison pill"}"#);
        assert_eq!(r["sink"], "strict");
        assert!(r["batch"].to_string().contains("poison"));
        discarded.extend(batch_ids(r));
    }
    assert_eq!(s.discarded_messages, discarded.len() as u64);
    let received: BTreeSet<String> = server.accepted_ids().into_iter().collect();
    assert!(received.is_disjoint(&discarded));
    let all: BTreeSet<String> = received.union(&discarded).cloned().collect();
    assert_same(&all, &expected_ids("strict", &changes), "zero loss");
}

#[test]
fn batches_failing_past_the_horizon_are_dead_lettered() {
    let server = Server::start(|_| Reply {
        body: "overloaded".into(),
        ..Reply::status(503)
    });
    let dir = tempfile::tempdir().unwrap();
    let changes = workload(1..=3, 9);
    let mut c = config("doomed", &server.url(), dir.path());
    c.retry_horizon = Duration::from_millis(300);
    let mut sink = WebhookSink::open(&c).unwrap();
    feed(&mut sink, &changes);
    sink.commit(&[]).unwrap();

    let s = stats(&sink);
    assert!(server.accepted().is_empty());
    let records = read_jsonl(&sink.dead_letter_path());
    let mut dead = BTreeSet::new();
    for r in &records {
        assert_eq!(r["lastError"], "HTTP 503: overloaded");
        assert!(r["attempts"].as_u64().unwrap() >= 2, "{r}");
        assert!(r["at"].as_u64().unwrap() >= r["firstAttemptAt"].as_u64().unwrap() + 300);
        dead.extend(batch_ids(r));
    }
    assert_same(&dead, &expected_ids("doomed", &changes), "zero loss");
    assert_eq!(s.dead_lettered_messages, 29, "{s:?}");
    assert_eq!(s.dead_lettered_batches, records.len() as u64);
    assert_eq!((s.queued_messages, s.delivered_messages), (0, 0));
}

#[test]
fn a_failing_or_stalled_destination_does_not_hold_back_a_healthy_one() {
    let failing = Server::start(|r| {
        if r.gate_open {
            Reply::ok()
        } else {
            Reply::status(503)
        }
    });
    let stalled = Server::start(|_| Reply {
        wait_for_gate: true,
        ..Reply::ok()
    });
    let healthy = Server::start(|_| Reply::ok());
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let changes = Arc::new(workload(1..=20, 10));
    let servers = [
        (&failing, "failing"),
        (&stalled, "stalled"),
        (&healthy, "healthy"),
    ];
    let sinks: Vec<WebhookSink<Event>> = servers
        .iter()
        .zip(&dirs)
        .map(|((server, name), dir)| {
            let mut c = config(name, &server.url(), dir.path());
            c.request_timeout = Duration::from_secs(600);
            c.drain_timeout = Duration::from_secs(600);
            WebhookSink::open(&c).unwrap()
        })
        .collect();
    // One thread writes to the failing, the stalled and then the healthy
    // sink, as a worker would: the healthy one gets its changes only if
    // writing to the others did not wait for them.
    let feeder = {
        let changes = changes.clone();
        std::thread::spawn(move || {
            let mut sinks = sinks;
            for sink in &mut sinks {
                feed(sink, &changes);
            }
            sinks
        })
    };
    wait_until("the failing destination has been tried", || {
        !failing.requests().is_empty()
    });
    let expected = expected_ids("healthy", &changes);
    wait_until("the healthy destination has everything", || {
        healthy.accepted_ids().into_iter().collect::<BTreeSet<_>>() == expected
    });
    // Meanwhile the others have accepted nothing: their gates are still shut.
    assert!(failing.accepted().is_empty() && stalled.accepted().is_empty());
    failing.open_gate();
    stalled.open_gate();
    let mut sinks = feeder.join().unwrap();
    for (sink, (server, name)) in sinks.iter_mut().zip(servers) {
        sink.commit(&[]).unwrap();
        let received: BTreeSet<String> = server.accepted_ids().into_iter().collect();
        assert_same(&received, &expected_ids(name, &changes), name);
        assert_eq!(stats(sink).queued_messages, 0);
    }
}

#[test]
fn a_full_memory_queue_spills_to_disk_and_drains() {
    let server = Server::start(|r| {
        if r.gate_open {
            Reply::ok()
        } else {
            Reply::status(503)
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let changes = workload(1..=30, 10);
    let mut c = config("spill", &server.url(), dir.path());
    c.max_memory_bytes = 2048;
    c.segment_bytes = 4096;
    let mut sink = WebhookSink::open(&c).unwrap();
    feed(&mut sink, &changes);

    let s = stats(&sink);
    assert_eq!(
        s.queued_messages, 329,
        "nothing can be delivered yet: {s:?}"
    );
    assert!(s.memory_bytes <= 2048, "{s:?}");
    assert!(s.spilled_bytes > 20_000, "{s:?}");
    assert!(segment_files(dir.path()) > 10);
    server.open_gate();
    sink.commit(&[]).unwrap();

    let s = stats(&sink);
    let received: BTreeSet<String> = server.accepted_ids().into_iter().collect();
    assert_same(&received, &expected_ids("spill", &changes), "zero loss");
    assert_eq!(
        (s.queued_messages, s.memory_bytes, s.spilled_bytes),
        (0, 0, 0),
        "{s:?}"
    );
    assert_eq!(
        segment_files(dir.path()),
        1,
        "delivered segments are deleted"
    );
    check_messages(&server.requests());
}

#[test]
fn a_restart_resends_the_batch_in_flight_with_the_same_keys() {
    // The third request is received and never answered: it is in flight
    // when the sink goes away.
    let server = Server::start(|r| Reply {
        wait_for_gate: r.index == 2,
        ..Reply::ok()
    });
    let dir = tempfile::tempdir().unwrap();
    let changes = workload(1..=20, 10);
    let mut c = config("restart", &server.url(), dir.path());
    c.request_timeout = Duration::from_secs(120);

    let mut first = WebhookSink::open(&c).unwrap();
    feed(&mut first, &changes[..10]);
    wait_until("the third request is in flight", || {
        server.requests().len() == 3
    });
    // Times 11..=13 are written but not committed when the sink stops;
    // one change of them (a ghost) is not written again after the restart.
    let mut uncommitted = changes[10..13].to_vec();
    uncommitted[1].1.push((event(999_999, "ghost"), 1));
    for (t, updates) in &uncommitted {
        first.write(*t, updates).unwrap();
    }
    drop(first);

    // The restarted sink batches differently (the batch in flight is still
    // sent as it was) and keeps nothing in memory (every message is read
    // back from disk).
    c.batch_size = 25;
    c.max_memory_bytes = 0;
    let mut second = WebhookSink::open(&c).unwrap();
    assert_eq!(second.committed_frontier(), vec![11]);
    // The restarted job writes everything again; times before 11 are skipped.
    feed(&mut second, &changes);
    second.commit(&[]).unwrap();

    let s = stats(&second);
    assert_eq!(s.skipped_messages, 10 + 9 * 11, "{s:?}");
    let requests = server.requests();
    let ids = server.accepted_ids();
    let received: BTreeSet<String> = ids.iter().cloned().collect();
    assert_same(
        &received,
        &expected_ids("restart", &changes),
        "zero loss, no ghost",
    );
    assert_eq!(
        ids.len(),
        received.len(),
        "the unanswered batch was accepted once"
    );
    // The batch in flight was sent again first, identical, with the same key.
    assert_eq!(requests[3].key, requests[2].key);
    assert_eq!(requests[3].ids(), requests[2].ids());
    let keys: BTreeSet<&str> = requests.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(
        keys.len(),
        requests.len() - 1,
        "only that batch was sent twice"
    );
    check_messages(&requests);
}

#[test]
fn a_state_directory_serves_one_sink_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let c = config("solo", "http://127.0.0.1:9/hook", dir.path());
    let _first = WebhookSink::<Event>::open(&c).unwrap();
    let err = WebhookSink::<Event>::open(&c).unwrap_err();
    assert!(
        err.to_string().contains("in use by another open sink"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------

/// `t` as an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn http_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (H. Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[month as usize - 1],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[test]
fn http_dates_are_formatted_right() {
    let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
    assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
    let t = UNIX_EPOCH + Duration::from_secs(1_835_481_599);
    assert_eq!(http_date(t), "Tue, 29 Feb 2028 23:59:59 GMT");
}

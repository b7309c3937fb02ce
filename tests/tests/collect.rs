//! The Segment-compatible collection API over real HTTP on 127.0.0.1, with
//! jobs on an embedded cluster: every call type, batches, gzip, both ways of
//! sending the write key, the 401s and 400s; every accepted event reaches
//! the job's sink exactly once (also across a restart, at the same times);
//! the Kafka-topic variant against the real broker; and Segment's own
//! Python library (segment-analytics-python, from `scripts/python-deps.sh`)
//! pointed at Weft; and, with `weft serve`, every event answered 200 survives
//! a SIGKILL of the server.

#[path = "../../connectors/tests/kafka_support/mod.rs"]
mod kafka_support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use serde_json::{json, Value};
use weft_dataflows::spec::JobSpec;
use weft_engine::api::{serve, ApiConfig, ApiServer};
use weft_engine::runtime::{Cluster, ClusterConfig, JobId, JobStatus};
use weft_tests::read_changes;

const KEY: &str = "wk_test";

/// A job with an HTTP source and file sinks of its events and errors.
fn job_toml(name: &str, source_extra: &str) -> String {
    format!(
        r#"
[job]
name = "{name}"
state_dir = "state"
[[sources]]
type = "http"
name = "api"
write_keys = ["{KEY}", "wk_second"]
tick = "20ms"
{source_extra}
[dedupe]
window = "30d"
[[sinks]]
type = "file"
name = "events"
output = "events"
path = "events.jsonl"
[[sinks]]
type = "file"
name = "errors"
output = "errors"
path = "errors.jsonl"
"#
    )
}

/// A cluster running one job, and the HTTP API in front of it.
struct Running {
    cluster: Arc<Cluster>,
    server: Option<ApiServer>,
    id: JobId,
    base: String,
    http: Client,
}

impl Running {
    fn start(dir: &Path, toml: &str, workers: usize) -> Running {
        let path = dir.join("job.toml");
        std::fs::write(&path, toml).unwrap();
        let spec = JobSpec::load(&path).unwrap();
        let cluster = Arc::new(Cluster::start(ClusterConfig::single(workers)).unwrap());
        let server = serve(
            ApiConfig {
                listen: "127.0.0.1:0".into(),
                token: None,
            },
            cluster.clone(),
        )
        .unwrap();
        let id = cluster.submit(&spec).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while cluster.shared().collect.route(KEY).is_none() {
            let report = cluster.report(id).unwrap();
            assert!(report.errors.is_empty(), "{:?}", report.errors);
            assert!(
                Instant::now() < deadline,
                "the write key was never registered"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Running {
            base: format!("http://{}", server.local_addr()),
            cluster,
            server: Some(server),
            id,
            http: Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        }
    }

    /// POSTs `body` to `/v1/<path>`; returns the status and the JSON answer.
    fn post(&self, path: &str, auth: Auth<'_>, body: Vec<u8>, gzip: bool) -> (u16, Value) {
        let mut r = self
            .http
            .post(format!("{}/v1/{path}", self.base))
            .header("content-type", "application/json");
        if let Auth::Basic(k) = auth {
            r = r.basic_auth(k, Some(""));
        }
        let body = if gzip {
            r = r.header("content-encoding", "gzip");
            gzip_bytes(&body)
        } else {
            body
        };
        let response = r.body(body).send().unwrap();
        let status = response.status().as_u16();
        let text = response.text().unwrap();
        let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
        (status, value)
    }

    /// Drops the job, waits until it has drained, and stops everything.
    fn finish(self) {
        self.cluster.drop_job(self.id).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = self.cluster.report(self.id).unwrap();
            if r.status == JobStatus::Finished {
                assert!(r.errors.is_empty(), "job errors: {:?}", r.errors);
                break;
            }
            assert!(Instant::now() < deadline, "the job did not finish");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop();
    }

    /// Stops the server and the cluster without dropping the job first
    /// (as a process that exits would).
    fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.stop();
        }
        self.cluster.shutdown().unwrap();
    }
}

#[derive(Clone, Copy)]
enum Auth<'a> {
    Basic(&'a str),
    None,
}

fn gzip_bytes(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn track(id: &str) -> Value {
    json!({"userId": format!("u-{id}"), "event": "Order Completed", "messageId": id,
           "properties": {"total": 10}})
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

/// Net count of each record in a JSON-lines sink, keyed by `key(data)`.
fn net(path: &Path, key: impl Fn(&Value) -> String) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    for c in read_changes(path) {
        *m.entry(key(&c.data)).or_default() += c.diff;
    }
    m.retain(|_, v| *v != 0);
    m
}

fn message_ids(path: &Path) -> BTreeMap<String, i64> {
    net(path, |d| d["messageId"].as_str().unwrap().to_string())
}

fn ok() -> Value {
    json!({"success": true})
}

#[test]
fn every_call_type_batches_gzip_auth_and_door_checks() {
    let dir = tempfile::tempdir().unwrap();
    let run = Running::start(dir.path(), &job_toml("collect-calls", ""), 2);
    let mut accepted: BTreeSet<String> = BTreeSet::new();

    // STEP 1. One call of each type, key in the header.
    let singles = [
        (
            "track",
            json!({"userId":"u1","event":"Signed Up","messageId":"s-track"}),
        ),
        (
            "identify",
            json!({"userId":"u1","traits":{"email":"a@b.c"},"messageId":"s-identify"}),
        ),
        (
            "page",
            json!({"anonymousId":"a1","name":"Home","messageId":"s-page"}),
        ),
        (
            "screen",
            json!({"userId":"u1","name":"Cart","messageId":"s-screen"}),
        ),
        (
            "group",
            json!({"userId":"u1","groupId":"g1","messageId":"s-group"}),
        ),
        (
            "alias",
            json!({"userId":"u1","previousId":"a1","messageId":"s-alias"}),
        ),
    ];
    for (path, body) in &singles {
        assert_eq!(
            run.post(path, Auth::Basic(KEY), bytes(body), false),
            (200, ok()),
            "{path}"
        );
        accepted.insert(body["messageId"].as_str().unwrap().into());
    }
    // The key in the body, and the second key of the source; a gzip body.
    let mut body = track("s-body-key");
    body["writeKey"] = json!(KEY);
    assert_eq!(
        run.post("track", Auth::None, bytes(&body), false),
        (200, ok())
    );
    assert_eq!(
        run.post(
            "track",
            Auth::Basic("wk_second"),
            bytes(&track("s-gzip")),
            true
        ),
        (200, ok())
    );
    accepted.extend(["s-body-key".to_string(), "s-gzip".to_string()]);

    // STEP 2. Batches: plain and gzip, key in the body, with envelope context.
    let batch = |prefix: &str, n: usize| {
        let msgs: Vec<Value> = (0..n)
            .map(|i| {
                let mut m = track(&format!("{prefix}-{i}"));
                m["type"] = json!("track");
                m
            })
            .collect();
        json!({"batch": msgs, "writeKey": KEY, "context": {"library": {"name": "test"}},
               "sentAt": "2026-01-01T00:00:01Z"})
    };
    assert_eq!(
        run.post("batch", Auth::None, bytes(&batch("b", 100)), false),
        (200, ok())
    );
    assert_eq!(
        run.post("batch", Auth::Basic(KEY), bytes(&batch("bz", 2_500)), true),
        (200, ok())
    );
    accepted.extend((0..100).map(|i| format!("b-{i}")));
    accepted.extend((0..2_500).map(|i| format!("bz-{i}")));
    // A client's retry of a batch: the same messageIds, dropped by dedupe.
    assert_eq!(
        run.post("batch", Auth::None, bytes(&batch("b", 100)), true),
        (200, ok())
    );
    // No messageId: the API makes one.
    let anonymous =
        json!({"batch": [{"type":"page","anonymousId":"x","name":"P"}], "writeKey": KEY});
    assert_eq!(
        run.post("batch", Auth::None, bytes(&anonymous), false),
        (200, ok())
    );
    // Accepted at the door, rejected by validation (no userId or anonymousId).
    let invalid = json!({"event":"No One","messageId":"s-invalid"});
    assert_eq!(
        run.post("track", Auth::Basic(KEY), bytes(&invalid), false),
        (200, ok())
    );

    // STEP 3. Refusals: nothing of these is stored.
    let code = |r: (u16, Value)| (r.0, r.1["code"].as_str().unwrap_or("").to_string());
    let e = |s: u16, c: &str| (s, c.to_string());
    let t = bytes(&track("never-1"));
    assert_eq!(
        code(run.post("track", Auth::Basic("wk_wrong"), t.clone(), false)),
        e(401, "invalid_write_key")
    );
    assert_eq!(
        code(run.post("track", Auth::None, t.clone(), false)),
        e(401, "missing_write_key")
    );
    let mut wrong = track("never-2");
    wrong["writeKey"] = json!("wk_wrong");
    assert_eq!(
        code(run.post("track", Auth::None, bytes(&wrong), false)),
        e(401, "invalid_write_key")
    );
    let malformed = run.post(
        "track",
        Auth::Basic(KEY),
        b"{\"userId\": \"u\", ".to_vec(),
        false,
    );
    assert_eq!(code(malformed.clone()), e(400, "invalid_json"));
    assert!(
        malformed.1["message"].as_str().unwrap().contains("line 1"),
        "{malformed:?}"
    );
    assert_eq!(malformed.1["success"], json!(false));
    let mut big = track("never-3");
    big["properties"]["blob"] = json!("x".repeat(33 * 1024));
    assert_eq!(
        code(run.post("track", Auth::Basic(KEY), bytes(&big), false)),
        e(400, "event_too_large")
    );
    let mut big_batch = batch("never-4", 3);
    big_batch["batch"][1]["properties"]["blob"] = json!("x".repeat(33 * 1024));
    let r = run.post("batch", Auth::Basic(KEY), bytes(&big_batch), true);
    assert_eq!(code(r.clone()), e(400, "event_too_large"));
    assert!(
        r.1["message"].as_str().unwrap().starts_with("batch[1]"),
        "{r:?}"
    );
    let mut huge = batch("never-5", 40);
    for i in 0..40 {
        huge["batch"][i]["properties"]["blob"] = json!("y".repeat(14 * 1024));
    }
    assert_eq!(
        code(run.post("batch", Auth::Basic(KEY), bytes(&huge), false)),
        e(400, "request_too_large")
    );
    assert_eq!(
        code(run.post("batch", Auth::Basic(KEY), bytes(&huge), true)),
        e(400, "request_too_large")
    );
    assert_eq!(
        code(run.post(
            "batch",
            Auth::Basic(KEY),
            bytes(&batch("never-6", 2_501)),
            true
        )),
        e(400, "too_many_events")
    );

    // STEP 4. The sink has exactly the accepted events.
    let route = run.cluster.shared().collect.route(KEY).unwrap();
    let (requests, events, refused, failed) = route.counters.snapshot();
    assert_eq!((requests, failed), (13, 0));
    assert_eq!(events, 6 + 2 + 100 + 2_500 + 100 + 1 + 1);
    assert!(refused >= 5, "{refused}");
    run.finish();
    let got = message_ids(&dir.path().join("events.jsonl"));
    assert!(got.values().all(|n| *n == 1), "each event once");
    let (generated, named): (Vec<_>, Vec<_>) = got
        .keys()
        .partition(|k| k.len() == 36 && k.chars().filter(|c| *c == '-').count() == 4);
    assert_eq!(generated.len(), 1, "the API filled in one messageId");
    assert_eq!(
        named.into_iter().cloned().collect::<BTreeSet<_>>(),
        accepted
    );
    // Filled-in and merged fields reached the events.
    let changes = read_changes(&dir.path().join("events.jsonl"));
    let b0 = changes
        .iter()
        .find(|c| c.data["messageId"] == "b-0")
        .unwrap();
    assert_eq!(b0.data["context"]["library"]["name"], "test");
    assert_eq!(b0.data["sentAt"], "2026-01-01T00:00:01.000Z");
    assert!(b0.data["receivedAt"].as_str().unwrap().starts_with("20"));
    let types: BTreeSet<_> = changes
        .iter()
        .map(|c| c.data["type"].as_str().unwrap())
        .collect();
    assert_eq!(types.len(), 6, "{types:?}");
    // The event rejected by validation is on the errors output.
    let errors = read_changes(&dir.path().join("errors.jsonl"));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].data["reason"], "missing_id");
}

#[test]
fn a_restart_replays_every_accepted_event_at_its_time() {
    let dir = tempfile::tempdir().unwrap();
    let toml = job_toml("collect-restart", "");
    // STEP 1. Concurrent clients, single calls and batches; then the process stops.
    let run = Running::start(dir.path(), &toml, 2);
    let accepted = post_concurrently(&run, "r1", 4, 60);
    run.stop();
    let first = read_changes(&dir.path().join("events.jsonl"));
    let first_ids: BTreeSet<String> = first
        .iter()
        .map(|c| c.data["messageId"].as_str().unwrap().to_string())
        .collect();
    assert!(first_ids.is_subset(&accepted));

    // STEP 2. The same job again: the log is replayed, new events follow.
    let run = Running::start(dir.path(), &toml, 3);
    let more = post_concurrently(&run, "r2", 2, 30);
    // Dropping a job stops its sources where they are (what they have not
    // read stays in the log for the job's next run): wait until the source
    // has read everything accepted, replayed and new, before dropping it.
    let expected = (accepted.len() + more.len()) as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while run.cluster.report(run.id).unwrap().records < expected {
        assert!(
            Instant::now() < deadline,
            "the source never read every accepted event"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    run.finish();
    let second = read_changes(&dir.path().join("events.jsonl"));
    let got = message_ids(&dir.path().join("events.jsonl"));
    let all: BTreeSet<String> = accepted.union(&more).cloned().collect();
    let got_ids: BTreeSet<String> = got.keys().cloned().collect();
    assert_eq!(
        got_ids,
        all,
        "nothing accepted is lost: missing {:?}, unexpected {:?}",
        all.difference(&got_ids).collect::<Vec<_>>(),
        got_ids.difference(&all).collect::<Vec<_>>()
    );
    assert!(got.values().all(|n| *n == 1), "nothing twice");
    // Events of the first run are emitted at the times recorded then.
    let time_of = |changes: &[weft_tests::Change]| -> BTreeMap<String, u64> {
        changes
            .iter()
            .map(|c| (c.data["messageId"].as_str().unwrap().to_string(), c.time))
            .collect()
    };
    let (t1, t2) = (time_of(&first), time_of(&second));
    for (id, t) in &t1 {
        assert_eq!(t2.get(id), Some(t), "{id} moved");
    }
    let last_first = t1.values().max().copied().unwrap_or(0);
    for id in &more {
        assert!(
            t2[id] > last_first,
            "new events come after the replayed ones"
        );
    }
}

/// `threads` clients each send `per_thread` requests (every third a batch
/// of 10); returns the messageIds of every event answered 200.
fn post_concurrently(
    run: &Running,
    prefix: &str,
    threads: usize,
    per_thread: usize,
) -> BTreeSet<String> {
    let mut accepted = BTreeSet::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut mine = Vec::new();
                    for i in 0..per_thread {
                        let id = format!("{prefix}-{t}-{i}");
                        let (status, body) = if i % 3 == 0 {
                            let msgs: Vec<Value> = (0..10)
                                .map(|k| {
                                    let mut m = track(&format!("{id}-{k}"));
                                    m["type"] = json!("track");
                                    m
                                })
                                .collect();
                            mine.extend((0..10).map(|k| format!("{id}-{k}")));
                            run.post(
                                "batch",
                                Auth::Basic(KEY),
                                bytes(&json!({"batch": msgs})),
                                t % 2 == 0,
                            )
                        } else {
                            mine.push(id.clone());
                            run.post("track", Auth::Basic(KEY), bytes(&track(&id)), false)
                        };
                        assert_eq!((status, body), (200, ok()));
                    }
                    mine
                })
            })
            .collect();
        for h in handles {
            accepted.extend(h.join().unwrap());
        }
    });
    accepted
}

#[test]
fn a_topic_source_goes_through_kafka() {
    let brokers = brokers_or_skip!();
    let mut topics = kafka_support::Topics::new(&brokers);
    let topic = kafka_support::unique("collect");
    topics.names.push(topic.clone());
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("topic = \"{topic}\"\nbrokers = \"{brokers}\"\npartitions = 3");
    let run = Running::start(dir.path(), &job_toml("collect-kafka", &extra), 2);
    let accepted = post_concurrently(&run, "k", 3, 20);
    // The job's events file fills as the source reads the topic.
    let events = dir.path().join("events.jsonl");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(&events).map_or(0, |t| t.lines().count()) < accepted.len() {
        assert!(
            Instant::now() < deadline,
            "the job did not read every event from the topic"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    run.finish();
    let got = message_ids(&events);
    assert_eq!(got.keys().cloned().collect::<BTreeSet<_>>(), accepted);
    assert!(got.values().all(|n| *n == 1));
    // The topic holds complete events, keyed by userId, timestamped on receipt.
    let records = kafka_support::read_all(&brokers, &topic, "read_committed");
    assert_eq!(records.len(), accepted.len());
    let mut by_key: BTreeMap<Vec<u8>, BTreeSet<i32>> = BTreeMap::new();
    for r in &records {
        let v: Value = serde_json::from_slice(&r.value).unwrap();
        assert!(
            v["receivedAt"].is_string() && v["messageId"].is_string(),
            "{v}"
        );
        assert_eq!(r.key.as_deref(), v["userId"].as_str().map(str::as_bytes));
        by_key
            .entry(r.key.clone().unwrap())
            .or_default()
            .insert(r.partition);
    }
    assert!(
        by_key.values().all(|p| p.len() == 1),
        "one person, one partition"
    );
}

fn python_path() -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/python-deps.sh");
    let out = Command::new("bash").arg(&script).output().unwrap();
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("PYTHONPATH="))
        .expect("python-deps.sh prints PYTHONPATH=...")
        .to_string()
}

/// Segment's Python library, unchanged, with only its host pointed at Weft:
/// every call type, batched by the library's own consumer thread, gzip on
/// and off, plus a bad key that the library reports.
const SEGMENT_PYTHON: &str = r#"
import sys
from segment.analytics import Client
host, key, gz = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
errors = []
client = Client(key, host=host, gzip=gz, on_error=lambda e, batch: errors.append(str(e)), upload_size=7, max_retries=1)
for i in range(20):
    uid = "py-%s-%d" % (gz, i)
    client.identify(uid, {"email": "%s@example.com" % uid, "plan": "pro"})
    client.track(uid, "Item Purchased", {"price": i}, message_id="py-%s-track-%d" % (gz, i))
    client.page(uid, "Docs", "Install", {"url": "http://x/%d" % i})
    client.screen(uid, "App", "Home")
    client.group(uid, "g-%d" % (i % 3), {"name": "Acme"})
    client.alias(uid, "anon-%s-%d" % (gz, i))
client.flush()
client.join()
if errors:
    print("ERRORS", errors)
    sys.exit(1)
bad = []
other = Client("wk_not_a_key", host=host, gzip=gz, on_error=lambda e, batch: bad.append(e.status), max_retries=1)
other.track("x", "E")
other.flush()
other.join()
print("BAD", bad)
"#;

#[test]
fn segment_analytics_python_works_unchanged() {
    let pythonpath = python_path();
    let dir = tempfile::tempdir().unwrap();
    let run = Running::start(dir.path(), &job_toml("collect-python", ""), 2);
    for gz in ["1", "0"] {
        let out = Command::new("python3")
            .arg("-c")
            .arg(SEGMENT_PYTHON)
            .arg(&run.base)
            .arg(KEY)
            .arg(gz)
            .env("PYTHONPATH", &pythonpath)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "segment-analytics-python failed: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("BAD [401]"),
            "the library reports the 401: {stdout}"
        );
    }
    run.finish();
    let changes = read_changes(&dir.path().join("events.jsonl"));
    let mut by_type: BTreeMap<String, usize> = BTreeMap::new();
    for c in &changes {
        assert_eq!(c.diff, 1);
        *by_type
            .entry(c.data["type"].as_str().unwrap().into())
            .or_default() += 1;
        assert_eq!(c.data["context"]["library"]["name"], "analytics-python");
    }
    let want: BTreeMap<String, usize> = ["alias", "group", "identify", "page", "screen", "track"]
        .into_iter()
        .map(|t| (t.to_string(), 40))
        .collect();
    assert_eq!(by_type, want);
    let track_ids: BTreeSet<_> = changes
        .iter()
        .filter(|c| c.data["type"] == "track")
        .map(|c| c.data["messageId"].as_str().unwrap().to_string())
        .collect();
    assert!(track_ids.contains("py-True-track-19") && track_ids.contains("py-False-track-0"));
    let errors = read_changes(&dir.path().join("errors.jsonl"));
    assert!(errors.is_empty(), "{errors:?}");
}

/// `target/<profile>/weft`, built by `cargo test --workspace`.
fn weft_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("weft");
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build -p weft-engine --bin weft`",
        bin.display()
    );
    bin
}

/// A `weft serve` process; killed (SIGKILL) when dropped if still running.
struct Server {
    child: std::process::Child,
    base: String,
}

impl Server {
    fn start(dir: &Path) -> Server {
        use std::io::BufRead;
        let mut child = Command::new(weft_bin())
            .args(["serve", "--workers", "2", "--http", "127.0.0.1:0"])
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(url) = line.split("listening on ").nth(1) {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let base = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("weft serve did not say where it listens");
        Server { child, base }
    }

    fn client(&self) -> weft_engine::api::client::Client {
        weft_engine::api::client::Client::new(&self.base, None).unwrap()
    }

    /// Submits the job and waits until it runs.
    fn submit(&self, toml: &str, dir: &Path) -> JobId {
        let c = self.client();
        let id = c.submit(toml, Some(dir)).unwrap()["id"].as_u64().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let job = c.job(id).unwrap();
            if job["status"] == "running" {
                return id;
            }
            assert!(Instant::now() < deadline, "the job did not start: {job}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn events_answered_200_survive_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let toml = job_toml("collect-crash", "");
    let acked = Mutex::new(BTreeSet::new());
    let attempted = Mutex::new(BTreeSet::new());

    // STEP 1. Clients post batches while the server is SIGKILLed.
    let mut server = Server::start(dir.path());
    server.submit(&toml, dir.path());
    let url = format!("{}/v1/batch", server.base);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for t in 0..4 {
            let (url, acked, attempted, stop) = (&url, &acked, &attempted, &stop);
            s.spawn(move || {
                let http = Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()
                    .unwrap();
                for i in 0.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    let ids: Vec<String> = (0..5).map(|k| format!("c-{t}-{i}-{k}")).collect();
                    attempted.lock().unwrap().extend(ids.iter().cloned());
                    let msgs: Vec<Value> = ids
                        .iter()
                        .map(|id| {
                            let mut m = track(id);
                            m["type"] = json!("track");
                            m
                        })
                        .collect();
                    let sent = http
                        .post(url)
                        .basic_auth(KEY, Some(""))
                        .body(bytes(&json!({"batch": msgs})))
                        .send();
                    match sent {
                        Ok(r) if r.status().as_u16() == 200 => acked.lock().unwrap().extend(ids),
                        Ok(r) => panic!("unexpected answer {}", r.status()),
                        // The server is gone: the outcome of this request is unknown.
                        Err(_) => return,
                    }
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked.lock().unwrap().len() < 2_000 {
            assert!(Instant::now() < deadline, "too few events accepted");
            std::thread::sleep(Duration::from_millis(10));
        }
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    drop(server);

    // STEP 2. Restart with the same state; the job replays its log.
    let server = Server::start(dir.path());
    let id = server.submit(&toml, dir.path());
    let http = Client::new();
    let after = json!({"batch": [{"type":"track","event":"After","userId":"u","messageId":"after-restart"}]});
    let r = http
        .post(format!("{}/v1/batch", server.base))
        .basic_auth(KEY, Some(""))
        .body(bytes(&after))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    server.client().cancel(id).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.client().job(id).unwrap()["status"] != "finished" {
        assert!(Instant::now() < deadline, "the job did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(server);

    // STEP 3. Every event answered 200 is in the output, once; nothing else.
    let got = message_ids(&dir.path().join("events.jsonl"));
    assert!(got.values().all(|n| *n == 1), "nothing twice");
    let got: BTreeSet<String> = got.into_keys().collect();
    let acked = acked.into_inner().unwrap();
    let missing: Vec<_> = acked.difference(&got).take(5).collect();
    assert!(
        missing.is_empty(),
        "accepted but lost: {missing:?} (of {})",
        acked.len()
    );
    assert!(got.contains("after-restart"));
    let mut allowed = attempted.into_inner().unwrap();
    allowed.insert("after-restart".into());
    assert!(got.is_subset(&allowed));
}

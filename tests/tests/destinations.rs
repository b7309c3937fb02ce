//! The destination sinks inside a `weft run` job, end to end: one job with a
//! file source of generated events writes the same outputs to file sinks
//! (the reference) and to
//!
//! * a webhook: a real HTTP server (axum on 127.0.0.1) that fails, throttles
//!   and then accepts requests;
//! * PostgreSQL (`WEFT_PG_URL`; that part is skipped, loudly, only if it is
//!   unset): Segment-style event tables and audience memberships;
//! * a Parquet lake, read back with pyarrow (`scripts/python-deps.sh`).
//!
//! Each destination's content must equal the file sink's net output for the
//! same output, and a deletion regulation for one person (taking effect
//! after all the traffic) must leave no trace of them in any destination.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::Value;
use weft_bench::gen::{generate_to_path, GenConfig};
use weft_dataflows::event::{parse_event, Field, ParseContext};
use weft_tests::{read_changes, run_job};

// ---------------------------------------------------------------------------
// A webhook receiver that fails some requests, then accepts.

/// One request as received.
#[derive(Clone, Debug)]
struct Request {
    key: String,
    status: u16,
    messages: Vec<Value>,
}

#[derive(Default)]
struct Received {
    count: AtomicUsize,
    requests: Mutex<Vec<Request>>,
}

/// The reply to the `index`-th request (0-based): the first requests fail in
/// every retryable way (503, 429 with `Retry-After`, 500, 408), and every
/// fifth of the next ones fails with 503; the rest are accepted.
fn reply(index: usize) -> (u16, Option<&'static str>) {
    match index {
        0 => (503, None),
        1 => (429, Some("1")),
        2 => (500, None),
        3 => (408, None),
        i if i < 40 && i % 5 == 4 => (503, None),
        _ => (200, None),
    }
}

async fn handle(State(state): State<Arc<Received>>, headers: HeaderMap, body: Bytes) -> Response {
    let index = state.count.fetch_add(1, Ordering::SeqCst);
    let (status, retry_after) = reply(index);
    let parsed: Value = serde_json::from_slice(&body).expect("a JSON body");
    let request = Request {
        key: headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .expect("an Idempotency-Key header")
            .to_string(),
        status,
        messages: parsed["batch"].as_array().expect("a batch array").clone(),
    };
    state.requests.lock().unwrap().push(request);
    let mut response = StatusCode::from_u16(status).unwrap().into_response();
    if let Some(after) = retry_after {
        response
            .headers_mut()
            .insert("retry-after", after.parse().unwrap());
    }
    response
}

/// An HTTP server on an ephemeral port of 127.0.0.1; stops when dropped.
struct Server {
    addr: SocketAddr,
    received: Arc<Received>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Server {
    fn start() -> Server {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Received::default());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let app = Router::new()
            .route("/hook", post(handle))
            .with_state(received.clone());
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
        Server {
            addr,
            received,
            runtime: Some(runtime),
        }
    }

    fn requests(&self) -> Vec<Request> {
        self.received.requests.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

// ---------------------------------------------------------------------------
// PostgreSQL: a schema of our own, dropped at the end.

/// `WEFT_PG_URL`, or `None` after a loud message.
fn pg_url() -> Option<String> {
    match std::env::var("WEFT_PG_URL") {
        Ok(u) if !u.trim().is_empty() => Some(u),
        _ => {
            eprintln!(
                "\n!!!!!!!!!! SKIPPING the postgres destination: WEFT_PG_URL is unset \
                 (eval \"$(scripts/postgres.sh start | grep '^WEFT_PG_URL=')\"; export WEFT_PG_URL)\n"
            );
            None
        }
    }
}

struct TestSchema {
    url: String,
    name: String,
}

impl TestSchema {
    fn new(url: &str) -> TestSchema {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        TestSchema {
            url: url.to_string(),
            name: format!("weft_test_destinations_{}_{nanos}", std::process::id()),
        }
    }

    fn connect(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls).expect("connect to PostgreSQL")
    }

    /// Every row of every table but `weft_progress`, as JSON, by table.
    fn rows(&self) -> BTreeMap<String, Vec<Value>> {
        let mut c = self.connect();
        let tables: Vec<String> = c
            .query(
                "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 AND table_name <> 'weft_progress'",
                &[&self.name],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        tables
            .into_iter()
            .map(|t| {
                let rows = c
                    .query(
                        &format!("SELECT to_jsonb(t)::text FROM \"{}\".\"{t}\" t", self.name),
                        &[],
                    )
                    .unwrap()
                    .iter()
                    .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap())
                    .collect();
                (t, rows)
            })
            .collect()
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        if let Ok(mut c) = postgres::Client::connect(&self.url, postgres::NoTls) {
            if let Err(e) =
                c.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name))
            {
                eprintln!("cannot drop test schema {}: {e}", self.name);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The lake, read by pyarrow.

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

/// Every row of every file the manifest lists (timestamps as epoch ms).
const PYARROW_READER: &str = r#"
import json, os, sys
import pyarrow as pa, pyarrow.parquet as pq
root = sys.argv[1]
manifest = json.load(open(os.path.join(root, '_weft_manifest.json')))
rows = []
for entry in manifest['files']:
    table = pq.read_table(os.path.join(root, entry['path']))
    for i, f in enumerate(table.schema):
        if pa.types.is_timestamp(f.type):
            table = table.set_column(i, f.name, table.column(i).cast(pa.int64()))
    rows.extend(table.to_pylist())
print(json.dumps(rows))
"#;

fn read_lake(root: &Path, pythonpath: &str) -> Vec<Value> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(PYARROW_READER)
        .arg(root)
        .env("PYTHONPATH", pythonpath)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pyarrow failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

// ---------------------------------------------------------------------------
// Net contents.

/// Sums diffs per key, dropping zeros; every surviving multiplicity must be 1.
fn net<K: Ord + std::fmt::Debug>(changes: impl IntoIterator<Item = (K, i64)>) -> BTreeSet<K> {
    let mut m: BTreeMap<K, i64> = BTreeMap::new();
    for (k, d) in changes {
        *m.entry(k).or_default() += d;
    }
    m.retain(|_, d| *d != 0);
    for (k, d) in &m {
        assert_eq!(*d, 1, "{k:?} has multiplicity {d}");
    }
    m.into_keys().collect()
}

/// A file sink's net records, as JSON text (both sides of a comparison are
/// parsed from the sinks' JSON, so equal records print equally).
fn file_net(path: &Path) -> BTreeSet<String> {
    let changes = read_changes(path);
    net(changes.into_iter().map(|c| (c.data.to_string(), c.diff)))
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

/// What identifies an event across destinations: messageId, userId, anonymousId.
type EventKey = (String, Option<String>, Option<String>);

fn event_key(id: &Value, user: &Value, anon: &Value) -> EventKey {
    let s = |v: &Value| v.as_str().map(str::to_string);
    (s(id).expect("an id"), s(user), s(anon))
}

fn string_of(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
}

const EVENT_TABLES: [&str; 6] = [
    "tracks",
    "identifies",
    "pages",
    "screens",
    "groups",
    "aliases",
];

fn job(hook: &str, pg_schema: Option<&str>) -> String {
    let mut toml = format!(
        r#"
[job]
name = "destinations"
[[sources]]
type = "file"
name = "events"
path = "events.jsonl"
chunk_bytes = 65536
[[traits]]
name = "views"
query = 'count(track "Product Viewed")'
[[audiences]]
name = "viewers"
query = 'count(track "Product Viewed") >= 2'
[[audiences]]
name = "visitors"
query = 'count(page) >= 1'
[regulations]
path = "regulations.jsonl"
[[sinks]]
type = "file"
name = "events-file"
output = "events"
path = "out/events.jsonl"
[[sinks]]
type = "file"
name = "audiences-file"
output = "audiences"
path = "out/audiences.jsonl"
[[sinks]]
type = "webhook"
name = "hook"
output = "events"
url = "{hook}"
headers = {{ Authorization = "Bearer test" }}
batch_size = 50
linger = "20ms"
timeout = "5s"
initial_backoff = "20ms"
max_backoff = "200ms"
drain_timeout = "60s"
[[sinks]]
type = "lake"
name = "events-lake"
output = "events"
root = "lake/events"
target_file_mb = 1
[[sinks]]
type = "lake"
name = "audiences-lake"
output = "audiences"
root = "lake/audiences"
"#
    );
    if let Some(schema) = pg_schema {
        for (name, output) in [("events-pg", "events"), ("audiences-pg", "audiences")] {
            toml.push_str(&format!(
                "[[sinks]]\ntype = \"postgres\"\nname = \"{name}\"\noutput = \"{output}\"\nschema = \"{schema}\"\n"
            ));
        }
    }
    toml
}

#[test]
fn destinations_hold_the_file_sinks_net_output_and_forget_a_deleted_person() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cfg = GenConfig {
        events: 3_000,
        seed: 5,
        duplicate_rate: 0.0,
        malformed_rate: 0.0,
        users: 100,
        ..GenConfig::with_events(3_000)
    };
    generate_to_path(&cfg, &root.join("events.jsonl")).unwrap();
    let text = std::fs::read_to_string(root.join("events.jsonl")).unwrap();
    let cx = ParseContext::default();
    let events: Vec<_> = text
        .lines()
        .map(|l| parse_event(l.as_bytes(), &cx).unwrap())
        .collect();
    let last_received = events
        .iter()
        .map(|e| e.received_at_ms().unwrap_or(e.time_ms))
        .max()
        .unwrap();
    // The person: a user with several events; their identifiers as the
    // events link them (the user id and the anonymous ids sent with it).
    let user = events
        .iter()
        .filter_map(|e| e.get(Field::UserId))
        .nth(30)
        .unwrap()
        .to_string();
    let person_events: BTreeSet<String> = events
        .iter()
        .filter(|e| e.get(Field::UserId) == Some(user.as_str()))
        .map(|e| e.message_id().to_string())
        .collect();
    let mut person: BTreeSet<String> = events
        .iter()
        .filter(|e| e.get(Field::UserId) == Some(user.as_str()))
        .filter_map(|e| e.get(Field::AnonymousId).map(str::to_string))
        .collect();
    person.insert(user.clone());
    assert!(person_events.len() >= 2, "{user} has few events");
    std::fs::write(
        root.join("regulations.jsonl"),
        format!(
            "{{\"type\":\"delete\",\"identifier\":\"user_id:{user}\",\"at\":{},\"id\":\"req-1\"}}\n",
            last_received + 60_000
        ),
    )
    .unwrap();

    let server = Server::start();
    let pg = pg_url().map(|u| TestSchema::new(&u));
    let toml = job(
        &format!("http://{}/hook", server.addr),
        pg.as_ref().map(|s| s.name.as_str()),
    );
    let report = run_job(root, &toml, 2).unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);

    // The reference: the file sinks' net output, without the person.
    let file_events = file_net(&root.join("out/events.jsonl"));
    let file_audiences = file_net(&root.join("out/audiences.jsonl"));
    assert!(file_events.len() > 2_000 && !file_audiences.is_empty());
    let mentions_person = |text: &str| {
        person
            .iter()
            .find(|id| text.contains(&format!("\"{id}\"")))
            .cloned()
    };
    for e in &file_events {
        assert_eq!(mentions_person(e), None, "{e}");
    }
    let want_events: BTreeSet<EventKey> = file_events
        .iter()
        .map(|e| parse(e))
        .map(|e| event_key(&e["messageId"], &e["userId"], &e["anonymousId"]))
        .collect();
    let want_audiences: BTreeSet<(String, String)> = file_audiences
        .iter()
        .map(|m| parse(m))
        .map(|m| {
            (
                string_of(&m["audience"]).to_string(),
                string_of(&m["profile"]).to_string(),
            )
        })
        .collect();

    // STEP 1. The webhook: every change delivered (some more than once,
    // with the same id), retried requests sent again with the same key.
    let requests = server.requests();
    let failed: Vec<&Request> = requests.iter().filter(|r| r.status != 200).collect();
    assert!(failed.len() >= 5, "{} failed requests", failed.len());
    let accepted: Vec<&Request> = requests.iter().filter(|r| r.status == 200).collect();
    let accepted_keys: BTreeSet<&str> = accepted.iter().map(|r| r.key.as_str()).collect();
    for f in &failed {
        assert!(
            accepted_keys.contains(f.key.as_str()),
            "the batch of failed request {} was never accepted",
            f.key
        );
    }
    let mut by_id: BTreeMap<String, Value> = BTreeMap::new();
    for m in accepted.iter().flat_map(|r| r.messages.iter()) {
        let id = string_of(&m["messageId"]).to_string();
        if let Some(earlier) = by_id.insert(id, m.clone()) {
            assert_eq!(&earlier, m, "one messageId, two messages");
        }
    }
    let hook_net = net(by_id
        .values()
        .map(|m| (m["data"].to_string(), m["diff"].as_i64().unwrap())));
    assert_eq!(hook_net, file_events, "webhook content");
    // The person's events reached the webhook, and so did their deletion.
    let deleted: BTreeSet<&str> = by_id
        .values()
        .filter(|m| m["op"] == "delete")
        .map(|m| string_of(&m["data"]["messageId"]))
        .collect();
    for id in &person_events {
        assert!(deleted.contains(id.as_str()), "no delete message for {id}");
    }

    // STEP 2. The lake: events and audience changes read back by pyarrow.
    let pythonpath = python_path();
    let lake_events = read_lake(&root.join("lake/events"), &pythonpath);
    let lake_net = net(lake_events.iter().map(|r| {
        (
            event_key(&r["message_id"], &r["user_id"], &r["anonymous_id"]),
            r["weft_diff"].as_i64().unwrap(),
        )
    }));
    assert_eq!(lake_net, want_events, "lake events");
    let lake_audiences = read_lake(&root.join("lake/audiences"), &pythonpath);
    let lake_net = net(lake_audiences.iter().map(|r| {
        (
            (
                string_of(&r["audience"]).to_string(),
                string_of(&r["profile"]).to_string(),
            ),
            r["weft_diff"].as_i64().unwrap(),
        )
    }));
    assert_eq!(lake_net, want_audiences, "lake audiences");
    for row in lake_events.iter().chain(&lake_audiences) {
        let text = row.to_string();
        assert_eq!(mentions_person(&text), None, "lake row {text}");
    }

    eprintln!(
        "{} events, {} memberships; webhook: {} requests ({} failed); lake: {} event rows, {} membership rows; the person: {} identifiers, {} events",
        file_events.len(),
        file_audiences.len(),
        requests.len(),
        failed.len(),
        lake_events.len(),
        lake_audiences.len(),
        person.len(),
        person_events.len()
    );

    // STEP 3. PostgreSQL: Segment-style event tables and memberships.
    let Some(pg) = pg else { return };
    let tables = pg.rows();
    let mut pg_events = BTreeSet::new();
    for t in EVENT_TABLES {
        for r in tables.get(t).into_iter().flatten() {
            assert!(
                pg_events.insert(event_key(&r["id"], &r["user_id"], &r["anonymous_id"])),
                "{t}: {r} twice"
            );
        }
    }
    assert_eq!(pg_events, want_events, "postgres event tables");
    let pg_audiences: BTreeSet<(String, String)> = tables["audience_memberships"]
        .iter()
        .map(|r| {
            (
                string_of(&r["audience"]).to_string(),
                string_of(&r["profile"]).to_string(),
            )
        })
        .collect();
    assert_eq!(pg_audiences, want_audiences, "postgres memberships");
    eprintln!(
        "postgres: {} tables, {} event rows",
        tables.len(),
        pg_events.len()
    );
    for (t, rows) in &tables {
        for r in rows {
            let text = r.to_string();
            assert_eq!(mentions_person(&text), None, "{t} row {text}");
        }
    }
}

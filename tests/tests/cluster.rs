//! A two-process cluster on 127.0.0.1, driven over the control API.
//!
//! * A file job submitted over HTTP to a 2 × 2-worker cluster writes the
//!   same net output as `weft run` on one process, and the job's counters
//!   (summed over both processes by the runtime's telemetry) count every
//!   input line.
//! * Requests without the token, or with a wrong one, get 401; a malformed
//!   spec or regulation 400 with a JSON reason; an unknown job 404; a
//!   regulation for a job that cannot take one 409.
//! * A live job (Kafka source) reports a consumer lag of 0 once caught up,
//!   and takes a deletion over the API: the audit log
//!   records it applied and committed by every sink, and no sink keeps a
//!   record of the person (skipped, loudly, without a broker).
//! * Dropping a job drains it to `finished`; `POST /v1/shutdown` stops
//!   both processes. Whatever happens, the test kills what it started.
//!
//! * The whole path of the cluster issue: a job fed by the Segment-compatible
//!   collection API (single calls and batches), a runtime audience that
//!   backfills, profiles read back by any identifier, a deletion that
//!   empties the Profile API and every sink of the person, refusals with
//!   reasons, nothing accepted lost, drop and shutdown
//!   (`a_two_process_cluster_collects_serves_profiles_and_forgets`).
//!
//! The `weft` binary must be built: `cargo build -p weft-engine --bin weft`.

#[path = "../../connectors/tests/kafka_support/mod.rs"]
mod kafka_support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_bench::gen::{generate_to_path, GenConfig};
use weft_engine::api::client::Client;
use weft_tests::{read_changes, run_job};

const TOKEN: &str = "test-token-5f2a";

fn weft_bin() -> PathBuf {
    // target/<profile>/deps/<this test> → target/<profile>/weft
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("weft");
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build -p weft-engine --bin weft`",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The processes of a test cluster; killed on drop if still running.
struct TestCluster {
    processes: Vec<Child>,
    logs: Vec<PathBuf>,
    api: String,
}

impl TestCluster {
    /// Starts `n` processes of `workers` threads in `dir`; waits for process 0's API.
    fn start(dir: &Path, n: usize, workers: usize) -> TestCluster {
        let hosts: Vec<String> = (0..n)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let mut cluster = TestCluster {
            processes: Vec::new(),
            logs: Vec::new(),
            api: String::new(),
        };
        for p in 0..n {
            let log = dir.join(format!("process-{p}.log"));
            let child = Command::new(weft_bin())
                .current_dir(dir)
                .env("WEFT_LOG", "info")
                .args(["serve", "--process", &p.to_string(), "--hosts"])
                .arg(hosts.join(","))
                .args(["--workers", &workers.to_string(), "--http", "127.0.0.1:0"])
                .args(["--token", TOKEN])
                .stdout(File::create(dir.join(format!("process-{p}.out"))).unwrap())
                .stderr(File::create(&log).unwrap())
                .spawn()
                .unwrap();
            cluster.processes.push(child);
            cluster.logs.push(log);
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        cluster.api = loop {
            let text = std::fs::read_to_string(&cluster.logs[0]).unwrap_or_default();
            if let Some(addr) = text
                .lines()
                .find_map(|l| l.strip_prefix("weft: control API listening on "))
            {
                break addr.trim().to_string();
            }
            assert!(
                Instant::now() < deadline,
                "process 0 did not serve its API:\n{}",
                cluster.logs_text()
            );
            assert!(
                cluster.all_running(),
                "a process exited:\n{}",
                cluster.logs_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        cluster
    }

    fn client(&self) -> Client {
        Client::new(&self.api, Some(TOKEN.to_string())).unwrap()
    }

    fn all_running(&mut self) -> bool {
        self.processes
            .iter_mut()
            .all(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn logs_text(&self) -> String {
        self.logs
            .iter()
            .map(|l| {
                format!(
                    "--- {}\n{}",
                    l.display(),
                    std::fs::read_to_string(l).unwrap_or_default()
                )
            })
            .collect()
    }

    /// Waits (bounded) for every process to exit; their exit codes.
    fn wait_exit(&mut self, within: Duration) -> Vec<Option<i32>> {
        let deadline = Instant::now() + within;
        let mut codes = vec![None; self.processes.len()];
        loop {
            for (i, c) in self.processes.iter_mut().enumerate() {
                if codes[i].is_none() {
                    if let Ok(Some(status)) = c.try_wait() {
                        codes[i] = Some(status.code().unwrap_or(-1));
                    }
                }
            }
            if codes.iter().all(Option::is_some) || Instant::now() > deadline {
                return codes;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for c in &mut self.processes {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

/// Polls a job until `done` holds for it (bounded); returns it.
fn wait_job(client: &Client, id: u64, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let job = client.job(id).unwrap();
        if done(&job) {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} did not become {what}: {job}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (bounded) until the audit log says regulation `reg` was applied
/// and then committed by `sinks` sinks.
fn wait_audit(audit: &Path, reg: &str, sinks: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = std::fs::read_to_string(audit).unwrap_or_default();
        let entries: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|e: &Value| e["regulation"] == reg)
            .collect();
        let applied = entries.iter().any(|e| e["event"] == "applied");
        let committed = entries.iter().filter(|e| e["event"] == "committed").count();
        if applied && committed == sinks {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "regulation {reg} not applied and committed by {sinks} sinks: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The net content of a change file: record → summed diff, zeros dropped.
fn net(path: &Path) -> BTreeMap<String, i64> {
    let mut m: BTreeMap<String, i64> = BTreeMap::new();
    for c in read_changes(path) {
        *m.entry(c.data.to_string()).or_default() += c.diff;
    }
    m.retain(|_, d| *d != 0);
    m
}

const OUTPUTS: [&str; 5] = ["events", "errors", "counts", "identities", "audiences"];

fn file_job(name: &str) -> String {
    let mut toml = format!(
        r#"
[job]
name = "{name}"
[[sources]]
type = "file"
name = "events"
path = "events.jsonl"
chunk_bytes = 16384
[dedupe]
window = "30d"
[[audiences]]
name = "viewers"
query = 'count(track "Product Viewed") >= 2'
"#
    );
    for out in OUTPUTS {
        toml.push_str(&format!(
            "[[sinks]]\ntype = \"file\"\nname = \"{out}\"\noutput = \"{out}\"\npath = \"out-{name}/{out}.jsonl\"\n"
        ));
    }
    toml
}

/// Raw HTTP status and JSON of a request (for the error cases the client hides).
fn raw(method: reqwest::Method, url: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let http = reqwest::blocking::Client::new();
    let mut r = http.request(method, url).body(body.to_string());
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let resp = r.send().unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[test]
fn a_two_process_cluster_runs_jobs_submitted_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cfg = GenConfig {
        events: 6_000,
        seed: 5,
        users: 150,
        ..GenConfig::with_events(6_000)
    };
    generate_to_path(&cfg, &root.join("events.jsonl")).unwrap();
    let lines = std::fs::read_to_string(root.join("events.jsonl"))
        .unwrap()
        .lines()
        .count() as u64;

    // STEP 1. The reference: `weft run` on one process.
    let single = root.join("single");
    std::fs::create_dir_all(&single).unwrap();
    std::fs::copy(root.join("events.jsonl"), single.join("events.jsonl")).unwrap();
    let report = run_job(&single, &file_job("split"), 1).unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);

    // STEP 2. The same job on 2 processes × 2 workers, submitted over HTTP.
    let mut cluster = TestCluster::start(root, 2, 2);
    let client = cluster.client();
    let info = client.jobs().unwrap();
    assert_eq!(info["jobs"], Value::Array(vec![]));
    let submitted = client.submit(&file_job("split"), Some(root)).unwrap();
    assert_eq!(submitted["name"], "split");
    let id = submitted["id"].as_u64().unwrap();
    let job = wait_job(&client, id, "finished", |j| j["status"] == "finished");
    assert_eq!(job["errors"], Value::Array(vec![]), "{job}");
    assert_eq!(job["workers"]["total"], 4);
    assert_eq!(job["workers"]["completed"], 4, "{job}");
    // Both processes read part of the file; process 0 reports the sum.
    assert_eq!(job["records"].as_u64(), Some(lines), "{job}");
    assert_eq!(job["records"].as_u64(), Some(report.records));
    assert_eq!(job["rejected"].as_u64(), Some(report.rejected));
    for out in OUTPUTS {
        let two = net(&root.join(format!("out-split/{out}.jsonl")));
        let one = net(&single.join(format!("out-split/{out}.jsonl")));
        assert!(!one.is_empty() || out == "errors", "{out} is empty");
        assert_eq!(two, one, "output {out} differs between 2 processes and 1");
    }
    let listed = client.jobs().unwrap();
    assert_eq!(listed["jobs"][0]["id"].as_u64(), Some(id));
    let metrics = reqwest::blocking::get(format!("{}/metrics", cluster.api))
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "weft_job_records_total{{job=\"split\",id=\"{id}\"}} {lines}\n"
        )),
        "{metrics}"
    );
    assert!(metrics.contains("weft_cluster_workers 4\n"), "{metrics}");
    assert!(
        metrics.contains("weft_sink_commit_seconds_count{job=\"split\""),
        "{metrics}"
    );

    // STEP 3. Auth and bad requests.
    let jobs_url = format!("{}/v1/jobs", cluster.api);
    let (status, body) = raw(reqwest::Method::GET, &jobs_url, None, "");
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().unwrap().contains("token"), "{body}");
    let (status, _) = raw(reqwest::Method::GET, &jobs_url, Some("wrong"), "");
    assert_eq!(status, 401);
    let (status, _) = raw(reqwest::Method::POST, &jobs_url, None, &file_job("x"));
    assert_eq!(status, 401);
    let (status, body) = raw(
        reqwest::Method::POST,
        &jobs_url,
        Some(TOKEN),
        "[job]\nname = \"bad\"\n[[sources]]\ntype = \"nope\"\n",
    );
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("nope"), "{body}");
    let (status, body) = raw(
        reqwest::Method::POST,
        &jobs_url,
        Some(TOKEN),
        &file_job("missing").replace("events.jsonl", "absent.jsonl"),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("does not exist"),
        "{body}"
    );
    let (status, body) = raw(
        reqwest::Method::GET,
        &format!("{jobs_url}/999"),
        Some(TOKEN),
        "",
    );
    assert_eq!(status, 404, "{body}");
    let (status, body) = raw(
        reqwest::Method::POST,
        &format!("{jobs_url}/{id}/regulations"),
        Some(TOKEN),
        r#"{"type":"delete","identifier":"user_id:u1"}"#,
    );
    assert_eq!(status, 409, "no [regulations]: {body}");

    // STEP 4. A live job takes a regulation over the API, then is dropped.
    live_regulation(&cluster, root);

    // STEP 5. Shutdown stops every process.
    client.shutdown().unwrap();
    let codes = cluster.wait_exit(Duration::from_secs(120));
    assert_eq!(
        codes,
        vec![Some(0), Some(0)],
        "processes did not exit cleanly:\n{}",
        cluster.logs_text()
    );
}

/// A job reading a Kafka topic (never ending) with a regulation log: a
/// deletion posted to the API is applied and committed by every sink.
fn live_regulation(cluster: &TestCluster, root: &Path) {
    let Some(brokers) = kafka_support::brokers() else {
        return;
    };
    let client = cluster.client();
    let mut topics = kafka_support::Topics::new(&brokers);
    let topic = topics.create("cluster-live", 4);
    let records: Vec<(i32, Vec<u8>)> = (0..400)
        .map(|i| ((i % 4) as i32, kafka_support::event(i)))
        .collect();
    kafka_support::produce(&brokers, &topic, &records);
    let spec = format!(
        r#"
[job]
name = "live"
[[sources]]
type = "kafka"
name = "events"
brokers = "{brokers}"
topics = ["{topic}"]
tick = "20ms"
[regulations]
path = "live-regulations.jsonl"
audit = "live-audit.jsonl"
[[sinks]]
type = "file"
name = "events"
output = "events"
path = "out-live/events.jsonl"
[[sinks]]
type = "file"
name = "identities"
output = "identities"
path = "out-live/identities.jsonl"
"#
    );
    let id = client.submit(&spec, Some(root)).unwrap()["id"]
        .as_u64()
        .unwrap();
    wait_job(&client, id, "caught up", |j| {
        j["records"].as_u64() == Some(400) && j["status"] == "running"
    });
    // Caught up: the consumer lag (high watermarks - next offsets, summed
    // over both processes' partitions) is 0, and 400 offsets are consumed.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = reqwest::blocking::get(format!("{}/metrics", cluster.api))
            .unwrap()
            .text()
            .unwrap();
        let labels = format!("{{job=\"live\",id=\"{id}\",source=\"events\"}}");
        if metrics.contains(&format!("weft_source_lag{labels} 0\n"))
            && metrics.contains(&format!("weft_source_consumed_total{labels} 400\n"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no consumer lag of 0 for the live source:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // u3's events, before the deletion (kafka_support::event: userId u{i % 17}).
    let mentions_u3 = |dir: &Path| {
        net(&dir.join("out-live/events.jsonl"))
            .keys()
            .filter(|k| k.contains("\"u3\""))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while mentions_u3(root) == 0 {
        assert!(
            Instant::now() < deadline,
            "u3's events never reached the sink"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let regs_url = format!("{}/v1/jobs/{id}/regulations", cluster.api);
    let (status, body) = raw(
        reqwest::Method::POST,
        &regs_url,
        Some(TOKEN),
        r#"{"type":"forget","identifier":"user_id:u3"}"#,
    );
    assert_eq!(status, 400, "{body}");
    let (status, _) = raw(reqwest::Method::POST, &regs_url, Some(TOKEN), "not json");
    assert_eq!(status, 400);
    let (status, _) = raw(
        reqwest::Method::POST,
        &regs_url,
        None,
        r#"{"type":"delete","identifier":"user_id:u3"}"#,
    );
    assert_eq!(status, 401);
    let answer = client
        .regulate(id, r#"{"type":"delete","identifier":"user_id:u3"}"#)
        .unwrap();
    let reg = answer["id"].as_str().unwrap().to_string();
    assert!(reg.starts_with("api-live-"), "{answer}");
    let log = std::fs::read_to_string(root.join("live-regulations.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 1);
    assert!(log.contains(&reg), "{log}");

    // Applied, then committed by both sinks (the audit log says when).
    let audit = root.join("live-audit.jsonl");
    wait_audit(&audit, &reg, 2);
    assert_eq!(mentions_u3(root), 0, "the events sink still holds u3");
    assert!(
        !std::fs::read_to_string(root.join("out-live/identities.jsonl"))
            .unwrap()
            .contains("\"u3\""),
        "the identities sink still mentions u3"
    );

    // Dropping drains the job to `finished`; a finished job takes no regulation.
    let dropped = client.cancel(id).unwrap();
    assert_eq!(dropped["id"].as_u64(), Some(id));
    wait_job(&client, id, "finished", |j| j["status"] == "finished");
    let (status, body) = raw(
        reqwest::Method::POST,
        &regs_url,
        Some(TOKEN),
        r#"{"type":"delete","identifier":"user_id:u4"}"#,
    );
    assert_eq!(status, 409, "{body}");
}

// ---------------------------------------------------------------------------
// The whole path of issue 8, on a 2-process cluster.

const WRITE_KEY: &str = "wk_e2e_7c1d";

/// Posts a Segment call to process 0's collection API: `(status, JSON)`.
fn collect(api: &str, call: &str, key: Option<&str>, body: &str) -> (u16, Value) {
    let http = reqwest::blocking::Client::new();
    let mut r = http
        .post(format!("{api}/v1/{call}"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(k) = key {
        r = r.basic_auth(k, Some(""));
    }
    let resp = r.send().unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A profile over the Profile API: `(status, JSON)`.
fn profile(api: &str, job: u64, identifier: &str) -> (u16, Value) {
    let id = identifier.replace('@', "%40");
    raw(
        reqwest::Method::GET,
        &format!("{api}/v1/jobs/{job}/profiles/{id}?events_limit=100"),
        Some(TOKEN),
        "",
    )
}

/// Waits (bounded) until `check` accepts the profile of `identifier`.
fn wait_profile(
    api: &str,
    job: u64,
    identifier: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, p) = profile(api, job, identifier);
        if status == 200 && check(&p) {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "profile of {identifier} never showed {what}: {status} {p}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn identifiers_of(p: &Value) -> BTreeSet<String> {
    p["identifiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            format!(
                "{}:{}",
                i["kind"].as_str().unwrap(),
                i["value"].as_str().unwrap()
            )
        })
        .collect()
}

fn audiences_of(p: &Value) -> BTreeSet<String> {
    p["audiences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// Submitted over HTTP to 2 processes × 2 workers: a job fed by the
/// collection API (single calls and batches, write-key auth), with a computed
/// trait and an audience from its spec and an audience added while it runs
/// (backfilled from what the job holds); a profile read back by any of its
/// identifiers; a person deleted (gone from the Profile API and every sink);
/// bad requests refused with reasons and nothing accepted lost; the job
/// dropped and the cluster shut down.
#[test]
fn a_two_process_cluster_collects_serves_profiles_and_forgets() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut cluster = TestCluster::start(root, 2, 2);
    let client = cluster.client();
    let api = cluster.api.clone();
    let spec = format!(
        r#"
[job]
name = "e2e"
state_dir = "state-e2e"
[[sources]]
type = "http"
name = "api"
write_keys = ["{WRITE_KEY}"]
tick = "20ms"
[dedupe]
window = "30d"
[[traits]]
name = "orders"
query = 'count(track "Order Completed")'
[[audiences]]
name = "buyers"
query = 'count(track "Order Completed") >= 1'
[regulations]
path = "e2e-regulations.jsonl"
audit = "e2e-audit.jsonl"
[[sinks]]
type = "file"
name = "events"
output = "events"
path = "out-e2e/events.jsonl"
[[sinks]]
type = "file"
name = "identities"
output = "identities"
path = "out-e2e/identities.jsonl"
[[sinks]]
type = "file"
name = "audiences"
output = "audiences"
path = "out-e2e/audiences.jsonl"
"#
    );
    let id = client.submit(&spec, Some(root)).unwrap()["id"]
        .as_u64()
        .unwrap();

    // STEP 1. The write key works once the job is built (bounded wait); a
    // request without it, or with another, is 401.
    let mut accepted: BTreeSet<String> = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, body) = collect(
            &api,
            "page",
            Some(WRITE_KEY),
            r#"{"anonymousId":"anon-a","name":"Home","messageId":"e2e-1","properties":{"path":"/"}}"#,
        );
        if status == 200 {
            assert_eq!(body["success"], true, "{body}");
            accepted.insert("e2e-1".into());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the write key never worked: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let track = r#"{"userId":"ua","event":"Order Completed","messageId":"x"}"#;
    let (status, body) = collect(&api, "track", None, track);
    assert_eq!(status, 401, "{body}");
    let (status, _) = collect(&api, "track", Some("wk_unknown"), track);
    assert_eq!(status, 401);
    let (status, body) = raw(reqwest::Method::GET, &format!("{api}/v1/jobs"), None, "");
    assert_eq!(status, 401, "{body}");

    // STEP 2. Single calls and batches.
    let singles = [
        (
            "identify",
            r#"{"userId":"ua","anonymousId":"anon-a","messageId":"e2e-2","traits":{"email":"a@example.com","plan":"pro"}}"#,
            "e2e-2",
        ),
        (
            "alias",
            r#"{"previousId":"anon-a2","userId":"ua","messageId":"e2e-3"}"#,
            "e2e-3",
        ),
        (
            "identify",
            r#"{"userId":"ub","messageId":"e2e-4","traits":{"email":"b@example.com"}}"#,
            "e2e-4",
        ),
        (
            "identify",
            r#"{"userId":"uc","anonymousId":"anon-c","messageId":"e2e-5","traits":{"email":"c@example.com"}}"#,
            "e2e-5",
        ),
        (
            "screen",
            r#"{"anonymousId":"anon-a2","name":"Cart","messageId":"e2e-6"}"#,
            "e2e-6",
        ),
    ];
    for (call, body, mid) in singles {
        let (status, answer) = collect(&api, call, Some(WRITE_KEY), body);
        assert_eq!(status, 200, "{call}: {answer}");
        accepted.insert(mid.into());
    }
    let mut batch = Vec::new();
    let mut add = |m: Value| {
        accepted.insert(m["messageId"].as_str().unwrap().to_string());
        batch.push(m);
    };
    add(
        serde_json::json!({"type":"track","userId":"ua","event":"Order Completed","messageId":"e2e-b1","properties":{"revenue":30}}),
    );
    for i in 0..3 {
        add(
            serde_json::json!({"type":"track","userId":"ua","event":"Product Viewed","messageId":format!("e2e-b2{i}")}),
        );
    }
    add(
        serde_json::json!({"type":"track","userId":"ub","event":"Product Viewed","messageId":"e2e-b3"}),
    );
    for i in 0..2 {
        add(
            serde_json::json!({"type":"track","userId":"uc","event":"Order Completed","messageId":format!("e2e-b4{i}")}),
        );
    }
    add(
        serde_json::json!({"type":"page","anonymousId":"anon-c","name":"Blog","messageId":"e2e-b5"}),
    );
    let (status, answer) = collect(
        &api,
        "batch",
        Some(WRITE_KEY),
        &serde_json::json!({ "batch": batch }).to_string(),
    );
    assert_eq!(status, 200, "{answer}");
    // A retried call (same messageId) is accepted and deduplicated.
    let (status, _) = collect(&api, "identify", Some(WRITE_KEY), singles[2].1);
    assert_eq!(status, 200);

    // STEP 3. Refused at the door, with a JSON reason; nothing of it is kept.
    let big = format!(
        r#"{{"userId":"ua","event":"Big","messageId":"e2e-big","properties":{{"blob":"{}"}}}}"#,
        "x".repeat(33 * 1024)
    );
    let (status, body) = collect(&api, "track", Some(WRITE_KEY), &big);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["success"], false, "{body}");
    assert!(body["message"].as_str().unwrap().contains("32"), "{body}");
    let many: Vec<Value> = (0..2501)
        .map(|i| serde_json::json!({"type":"track","userId":"ua","event":"E","messageId":format!("e2e-many-{i}")}))
        .collect();
    let (status, body) = collect(
        &api,
        "batch",
        Some(WRITE_KEY),
        &serde_json::json!({ "batch": many }).to_string(),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("2500")
            || body["message"].as_str().unwrap().contains("2,500"),
        "{body}"
    );
    let (status, body) = collect(&api, "track", Some(WRITE_KEY), "{not json");
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].is_string(), "{body}");

    // Every accepted event (and the retry) is read by the job.
    let expected = accepted.len() as u64 + 1;
    wait_job(&client, id, "caught up", |j| {
        j["records"].as_u64() == Some(expected)
    });

    // STEP 4. An audience added at runtime backfills: ua already viewed 3 products.
    let added = client
        .audience_add(
            id,
            &serde_json::json!({"name": "viewers", "query": "count(track \"Product Viewed\") >= 3"}),
        )
        .unwrap();
    assert_eq!(added["name"], "viewers", "{added}");

    // STEP 5. The profile, by any identifier, merged across ids.
    let a = wait_profile(&api, id, "email:a@example.com", "viewers", |p| {
        audiences_of(p).contains("viewers")
    });
    let ids_a: BTreeSet<String> = [
        "anonymous_id:anon-a",
        "anonymous_id:anon-a2",
        "user_id:ua",
        "email:a@example.com",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(identifiers_of(&a), ids_a, "{a}");
    assert_eq!(a["traits"]["plan"], "pro", "{a}");
    assert_eq!(a["computed_traits"]["orders"].as_f64(), Some(1.0), "{a}");
    assert_eq!(
        audiences_of(&a),
        ["buyers", "viewers"]
            .into_iter()
            .map(String::from)
            .collect(),
        "{a}"
    );
    // page, identify, alias, screen, 1 order, 3 views.
    assert_eq!(a["events_total"], 8, "{a}");
    for other in ["user_id:ua", "anonymous_id:anon-a2"] {
        let (status, p) = profile(&api, id, other);
        assert_eq!(status, 200, "{p}");
        assert_eq!(
            p["profile"], a["profile"],
            "{other} is another profile: {p}"
        );
    }
    let b = wait_profile(&api, id, "user_id:ub", "b", |_| true);
    assert!(audiences_of(&b).is_empty(), "{b}");
    assert_eq!(b["events_total"], 2, "the retry is deduplicated: {b}");
    let c = wait_profile(&api, id, "anonymous_id:anon-c", "c", |_| true);
    assert_eq!(c["computed_traits"]["orders"].as_f64(), Some(2.0), "{c}");
    let (status, _) = profile(&api, id, "user_id:nobody");
    assert_eq!(status, 404);
    let members = net(&root.join("out-e2e/audiences.jsonl"));
    assert!(
        members
            .keys()
            .any(|k| k.contains("\"viewers\"") && k.contains("anon-a")),
        "the audiences sink has no viewers membership for A: {members:?}"
    );

    // STEP 6. A deletion: C is gone from the Profile API and from every sink.
    let answer = client
        .regulate(id, r#"{"type":"delete","identifier":"user_id:uc"}"#)
        .unwrap();
    let reg = answer["id"].as_str().unwrap().to_string();
    let audit = root.join("e2e-audit.jsonl");
    wait_audit(&audit, &reg, 3);
    let deadline = Instant::now() + Duration::from_secs(60);
    for ident in ["user_id:uc", "anonymous_id:anon-c", "email:c@example.com"] {
        loop {
            let (status, p) = profile(&api, id, ident);
            if status == 404 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{ident} still has a profile: {p}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    for out in ["events", "identities", "audiences"] {
        let held = net(&root.join(format!("out-e2e/{out}.jsonl")));
        assert!(
            !held.keys().any(|k| k.contains("\"uc\"")
                || k.contains("anon-c")
                || k.contains("c@example.com")),
            "the {out} sink still holds C: {held:?}"
        );
    }
    // Nothing accepted is lost: every other event is in the events sink, once.
    let events = net(&root.join("out-e2e/events.jsonl"));
    let kept: BTreeSet<String> = events
        .keys()
        .map(|k| {
            serde_json::from_str::<Value>(k).unwrap()["messageId"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let of_c: BTreeSet<String> = ["e2e-5", "e2e-b40", "e2e-b41", "e2e-b5"]
        .into_iter()
        .map(String::from)
        .collect();
    let expected: BTreeSet<String> = accepted.difference(&of_c).cloned().collect();
    assert_eq!(kept, expected);
    assert!(events.values().all(|d| *d == 1), "{events:?}");

    // STEP 7. Drop the runtime audience, then the job; shut the cluster down.
    let dropped = client.audience_drop(id, "viewers").unwrap();
    assert_eq!(dropped["dropped"], true, "{dropped}");
    wait_profile(&api, id, "user_id:ua", "no viewers", |p| {
        !audiences_of(p).contains("viewers")
    });
    client.cancel(id).unwrap();
    wait_job(&client, id, "finished", |j| j["status"] == "finished");
    let (status, _) = collect(&api, "track", Some(WRITE_KEY), track);
    assert_ne!(status, 200, "a dropped job takes no events");
    client.shutdown().unwrap();
    let codes = cluster.wait_exit(Duration::from_secs(120));
    assert_eq!(
        codes,
        vec![Some(0), Some(0)],
        "processes did not exit cleanly:\n{}",
        cluster.logs_text()
    );
}

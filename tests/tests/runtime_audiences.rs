//! Audiences and computed traits added, replaced and dropped over HTTP while a
//! job runs (a live Kafka source, the real broker), at 1 and 2 workers:
//!
//! * an added audience backfills: its net memberships equal those of the same
//!   query declared in the spec, and so do an added computed trait's values;
//! * a replacement changes only that audience, by exactly the difference
//!   between the old and the new query (no exit-and-re-entry);
//! * a drop emits an exit for every member (a retraction for every value),
//!   after its entries;
//! * the spec's audiences and traits see no change from any of this;
//! * a bad query, an unknown reference, a spec name or a used definition is
//!   refused with 400/404/409 and changes nothing;
//! * a restart of the job restores the runtime definitions before anything is
//!   output: their changes then equal the spec twins' change for change.
//!
//! No new events arrive after the first ones are read and no query has a
//! window, so every change after that comes from the definitions alone.

#[path = "../../connectors/tests/kafka_support/mod.rs"]
mod kafka_support;
mod profile_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use profile_support::{members, values, wait_finished, wait_for, Server};
use serde_json::{json, Value};
use weft_bench::gen::{GenConfig, Generator};
use weft_dataflows::spec::JobSpec;
use weft_engine::runtime::{Cluster, ClusterConfig, JobId, JobStatus};
use weft_tests::{read_changes, Change};

const VIEWERS: &str = r#"count(track "Product Viewed") >= 3"#;
const PROS: &str = r#"trait.plan = "pro""#;
const ORDERS: &str = r#"count(track "Order Completed")"#;

fn spec(dir: &Path, brokers: &str, topic: &str, out: &str, bounded: bool) -> JobSpec {
    let toml = format!(
        r#"
[job]
name = "runtime-audiences"
state_dir = "state"
[[sources]]
type = "kafka"
name = "events"
brokers = "{brokers}"
topics = ["{topic}"]
tick = "10ms"
bounded = {bounded}
[[traits]]
name = "orders"
query = '{ORDERS}'
[[audiences]]
name = "viewers"
query = '{VIEWERS}'
[[audiences]]
name = "pros"
query = '{PROS}'
[[sinks]]
type = "file"
name = "audiences"
output = "audiences"
path = "{out}/audiences.jsonl"
[[sinks]]
type = "file"
name = "computed"
output = "computed_traits"
path = "{out}/computed.jsonl"
"#
    );
    let path = dir.join(format!("{out}.toml"));
    std::fs::write(&path, toml).unwrap();
    JobSpec::load(&path).unwrap()
}

/// Produces generated events; returns how many lines, and every userId and
/// anonymousId (`kind:value`) they carry.
fn produce(brokers: &str, topic: &str) -> (u64, BTreeSet<String>) {
    let mut generator = Generator::new(&GenConfig {
        events: 3_000,
        seed: 5,
        malformed_rate: 0.0,
        ..GenConfig::default()
    })
    .unwrap();
    let mut records = Vec::new();
    let mut buf = Vec::new();
    let mut identifiers = BTreeSet::new();
    while generator.next_into(&mut buf).is_some() {
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf).to_vec();
        if let Ok(v) = serde_json::from_slice::<Value>(&line) {
            for (field, kind) in [("userId", "user_id"), ("anonymousId", "anonymous_id")] {
                if let Some(id) = v[field].as_str().filter(|s| !s.is_empty()) {
                    identifiers.insert(format!("{kind}:{id}"));
                }
            }
        }
        records.push(((records.len() % 2) as i32, line));
        buf.clear();
    }
    kafka_support::produce(brokers, topic, &records);
    (records.len() as u64, identifiers)
}

/// A profile's audiences and computed traits, from the API.
type Seen = (BTreeSet<String>, BTreeMap<String, Value>);

fn seen(server: &Server, job: JobId, identifier: &str) -> (String, Seen) {
    let (status, v) = server.profile(job, identifier, &[("events_limit", "0")]);
    assert_eq!(status, 200, "{identifier}: {v}");
    let a = v["audiences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let c = v["computed_traits"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (v["profile"].as_str().unwrap().to_string(), (a, c))
}

/// The distinct profiles holding `identifiers`.
fn profile_names(server: &Server, job: JobId, identifiers: &BTreeSet<String>) -> BTreeSet<String> {
    identifiers.iter().map(|i| seen(server, job, i).0).collect()
}

/// Every profile's audiences and computed traits.
fn scan(server: &Server, job: JobId, profiles: &BTreeSet<String>) -> BTreeMap<String, Seen> {
    profiles
        .iter()
        .map(|p| (p.clone(), seen(server, job, p).1))
        .collect()
}

/// The profiles in audience `name`.
fn having(
    server: &Server,
    job: JobId,
    profiles: &BTreeSet<String>,
    name: &str,
) -> BTreeSet<String> {
    scan(server, job, profiles)
        .into_iter()
        .filter(|(_, (a, _))| a.contains(name))
        .map(|(p, _)| p)
        .collect()
}

fn changes_of(changes: &[Change], field: &str, name: &str) -> Vec<(u64, i64, String)> {
    changes
        .iter()
        .filter(|c| c.data[field] == name)
        .map(|c| {
            let mut d = c.data.clone();
            d.as_object_mut().unwrap().remove(field);
            (c.time, c.diff, d.to_string())
        })
        .collect()
}

#[test]
fn runtime_audiences_backfill_replace_drop_and_survive_a_restart() {
    let brokers = brokers_or_skip!();
    for workers in [1, 2] {
        scenario(&brokers, workers);
    }
}

fn scenario(brokers: &str, workers: usize) {
    let mut topics = kafka_support::Topics::new(brokers);
    let topic = topics.create("weft-runtime-audiences", 2);
    let (lines, identifiers) = produce(brokers, &topic);
    let dir = tempfile::tempdir().unwrap();

    // STEP 1. The job reads everything; the spec's definitions settle.
    let live = spec(dir.path(), brokers, &topic, "out1", false);
    let cluster = Arc::new(Cluster::start(ClusterConfig::single(workers)).unwrap());
    let server = Server::start(cluster.clone());
    let job = cluster.submit(&live).unwrap();
    wait_for("every record read", Duration::from_secs(120), || {
        let r = cluster.report(job).unwrap();
        (r.status == JobStatus::Running && r.records == lines).then_some(())
    });
    let read_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    wait_for(
        "the index to pass the reads",
        Duration::from_secs(120),
        || {
            let s = cluster.profile_index(job).ok()?.stats();
            s.as_of.filter(|t| *t > read_at)
        },
    );

    let (status, all) = server.definitions(job);
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["definitions"].as_array().unwrap().len(), 3);

    // STEP 2. Refusals change nothing.
    let refused = [
        (json!({"name": "bad", "query": "count(track) >="}), 400),
        (json!({"name": "bad", "query": r#"audience("nope")"#}), 400),
        (json!({"name": "bad name", "query": VIEWERS}), 400),
        (json!({"name": "viewers", "query": PROS}), 409),
        (
            json!({"name": "t", "kind": "trait", "query": ORDERS, "key": "k"}),
            400,
        ),
        (json!({"name": "x", "query": VIEWERS, "colour": "red"}), 400),
    ];
    for (body, want) in refused {
        let (status, v) = server.set(job, body.clone());
        assert_eq!(status, want, "{body}: {v}");
        assert!(v["error"].is_string(), "{v}");
    }
    assert_eq!(server.drop_definition(job, "viewers").0, 409);
    assert_eq!(server.drop_definition(job, "nope").0, 404);
    assert_eq!(
        server.set(999, json!({"name": "a", "query": VIEWERS})).0,
        404
    );

    // STEP 3. Add: an audience, a computed trait, and one to replace later.
    let add = |body: Value| {
        let (status, v) = server.set(job, body.clone());
        assert_eq!(status, 201, "{body}: {v}");
    };
    add(json!({"name": "rt_viewers", "query": VIEWERS}));
    add(json!({"name": "rt_orders", "kind": "trait", "query": ORDERS}));
    add(json!({"name": "rt_x", "query": VIEWERS, "key": "rt_x_key"}));
    add(json!({"name": "rt_drop", "query": VIEWERS}));
    add(json!({"name": "rt_uses_x", "query": r#"audience("rt_x") and computed.rt_orders >= 0"#}));
    // A spec count is a slot of the job's count rows: imported from them.
    add(json!({"name": "rt_many_orders", "query": "computed.orders >= 2"}));
    assert_eq!(server.drop_definition(job, "rt_x").0, 409, "rt_x is used");
    assert_eq!(server.drop_definition(job, "rt_uses_x").0, 200);

    // Every profile, through the API; then wait until each shows the backfill.
    let profiles = profile_names(&server, job, &identifiers);
    let viewers: BTreeSet<String> = having(&server, job, &profiles, "viewers");
    let pros: BTreeSet<String> = having(&server, job, &profiles, "pros");
    assert!(
        viewers.len() > 5 && pros.len() > 5,
        "{} {}",
        viewers.len(),
        pros.len()
    );
    wait_for(
        "every profile to show the added definitions",
        Duration::from_secs(120),
        || {
            scan(&server, job, &profiles)
                .iter()
                .all(|(_, (a, c))| {
                    a.contains("viewers") == a.contains("rt_viewers")
                        && a.contains("viewers") == a.contains("rt_x")
                        && a.contains("viewers") == a.contains("rt_drop")
                        && c.get("orders") == c.get("rt_orders")
                        && a.contains("rt_many_orders")
                            == c.get("orders")
                                .and_then(Value::as_f64)
                                .is_some_and(|n| n >= 2.0)
                })
                .then_some(())
        },
    );

    assert!(
        !having(&server, job, &profiles, "rt_many_orders").is_empty(),
        "some profile has two orders"
    );

    // STEP 4. Replace rt_x: viewers → pros.
    let (status, v) = server.set(
        job,
        json!({"name": "rt_x", "query": PROS, "key": "rt_x_key"}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["replaced"], true);
    assert_eq!(v["rebuilt"], json!(["rt_x"]));
    wait_for(
        "rt_x to follow the new query",
        Duration::from_secs(120),
        || {
            scan(&server, job, &profiles)
                .iter()
                .all(|(_, (a, _))| a.contains("pros") == a.contains("rt_x"))
                .then_some(())
        },
    );

    // STEP 5. Drop an audience and the computed trait.
    assert_eq!(server.drop_definition(job, "rt_drop").0, 200);
    assert_eq!(server.drop_definition(job, "rt_many_orders").0, 200);
    assert_eq!(server.drop_definition(job, "rt_orders").0, 200);
    wait_for(
        "rt_drop and rt_orders to go",
        Duration::from_secs(120),
        || {
            scan(&server, job, &profiles)
                .iter()
                .all(|(_, (a, c))| {
                    !a.contains("rt_drop")
                        && !a.contains("rt_many_orders")
                        && c.get("rt_orders").is_none()
                })
                .then_some(())
        },
    );
    let (_, listed) = server.definitions(job);
    let runtime: Vec<(String, String)> = listed["definitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["origin"] == "runtime")
        .map(|d| {
            (
                d["name"].as_str().unwrap().into(),
                d["query"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        runtime,
        vec![
            ("rt_viewers".to_string(), VIEWERS.to_string()),
            ("rt_x".to_string(), PROS.to_string())
        ]
    );

    // STEP 6. Stop the job; check its output.
    cluster.drop_job(job).unwrap();
    let report = wait_finished(&cluster, job);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(
        server.set(job, json!({"name": "late", "query": VIEWERS})).0,
        409
    );
    drop(server);
    cluster.shutdown().unwrap();

    let aud = read_changes(&dir.path().join("out1/audiences.jsonl"));
    let computed = read_changes(&dir.path().join("out1/computed.jsonl"));
    assert_eq!(
        members(&aud, "viewers"),
        viewers,
        "the API and the sink agree"
    );
    assert_eq!(members(&aud, "pros"), pros, "the API and the sink agree");
    // The spec's definitions changed only while events were read.
    let first_runtime = aud
        .iter()
        .filter(|c| c.data["audience"] != "viewers" && c.data["audience"] != "pros")
        .map(|c| c.time)
        .min()
        .unwrap();
    for c in aud
        .iter()
        .filter(|c| c.data["audience"] == "viewers" || c.data["audience"] == "pros")
    {
        assert!(
            c.time < first_runtime,
            "spec audience changed at {}: {c:?}",
            c.time
        );
    }
    assert!(computed
        .iter()
        .filter(|c| c.data["trait"] == "orders")
        .all(|c| c.time < first_runtime));
    // Backfill: the added audience equals its spec twin, and only entered.
    assert_eq!(members(&aud, "rt_viewers"), viewers);
    assert!(changes_of(&aud, "audience", "rt_viewers")
        .iter()
        .all(|(_, d, _)| *d == 1));
    // Replacement: exactly the difference, after a full entry.
    assert_eq!(members(&aud, "rt_x_key"), pros);
    let rt_x = changes_of(&aud, "audience", "rt_x_key");
    let sym: BTreeSet<&String> = viewers.symmetric_difference(&pros).collect();
    assert_eq!(rt_x.len(), viewers.len() + sym.len(), "{rt_x:?}");
    // A dropped audience: every member entered, then exited, each once.
    let dropped = changes_of(&aud, "audience", "rt_drop");
    assert_eq!(members(&aud, "rt_drop"), BTreeSet::new());
    let entered: Vec<_> = dropped.iter().filter(|(_, d, _)| *d == 1).collect();
    let exited: Vec<_> = dropped.iter().filter(|(_, d, _)| *d == -1).collect();
    assert_eq!(
        (entered.len(), exited.len()),
        (viewers.len(), viewers.len())
    );
    let last_entry = entered.iter().map(|(t, _, _)| *t).max().unwrap();
    assert!(exited.iter().all(|(t, _, _)| *t > last_entry));
    // Its user was dropped: it entered and left the same profiles.
    let uses_x = changes_of(&aud, "audience", "rt_uses_x");
    assert_eq!(members(&aud, "rt_uses_x"), BTreeSet::new());
    assert_eq!(
        uses_x.iter().filter(|(_, d, _)| *d == 1).count(),
        uses_x.iter().filter(|(_, d, _)| *d == -1).count()
    );
    // Drop of a computed trait: every value retracted; while it lived it equalled its twin.
    let orders = values(&computed, "orders");
    assert!(values(&computed, "rt_orders").is_empty());
    let rt_orders = changes_of(&computed, "trait", "rt_orders");
    let inserted: BTreeMap<String, i64> =
        rt_orders
            .iter()
            .filter(|(_, d, _)| *d > 0)
            .fold(BTreeMap::new(), |mut m, (_, d, r)| {
                *m.entry(r.clone()).or_default() += d;
                m
            });
    assert_eq!(inserted.len(), orders.len());
    assert_eq!(
        rt_orders.iter().filter(|(_, d, _)| *d < 0).count(),
        orders.len()
    );

    // STEP 7. Restart (bounded this time): the runtime definitions come back
    // before anything is output, so they change exactly like their twins.
    let restarted = spec(dir.path(), brokers, &topic, "out2", true);
    let cluster = Arc::new(Cluster::start(ClusterConfig::single(workers)).unwrap());
    let server = Server::start(cluster.clone());
    let job = cluster.submit(&restarted).unwrap();
    let report = wait_finished(&cluster, job);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let (_, listed) = server.definitions(job);
    let names: Vec<&str> = listed["definitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["origin"] == "runtime")
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["rt_viewers", "rt_x"]);
    drop(server);
    cluster.shutdown().unwrap();
    let aud = read_changes(&dir.path().join("out2/audiences.jsonl"));
    assert!(!changes_of(&aud, "audience", "viewers").is_empty());
    assert_eq!(
        changes_of(&aud, "audience", "rt_viewers"),
        changes_of(&aud, "audience", "viewers")
    );
    assert_eq!(
        changes_of(&aud, "audience", "rt_x_key"),
        changes_of(&aud, "audience", "pros")
    );
    assert!(changes_of(
        &read_changes(&dir.path().join("out2/computed.jsonl")),
        "trait",
        "rt_orders"
    )
    .is_empty());
}

//! The Profile API against the oracle of a finished job's file sinks, over
//! real HTTP on 127.0.0.1, at 1 and 2 workers and on two processes (whose
//! updates reach the index on process 0): every profile's id,
//! identifiers, traits, computed traits and audiences equal the sinks' net
//! output; any of its identifiers finds it; its events page through without
//! loss or repeat, newest first, and every event of the job belongs to
//! exactly one profile. Malformed requests get 400, unknown ones 404.

mod profile_support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use profile_support::{members, net, values, wait_finished, Server};
use serde_json::Value;
use weft_bench::gen::{generate_to_path, GenConfig};
use weft_dataflows::spec::JobSpec;
use weft_engine::runtime::{Cluster, ClusterConfig};
use weft_tests::read_changes;

const JOB: &str = r#"
[job]
name = "profile-api"
state_dir = "state"
[[sources]]
type = "file"
name = "events"
path = "events.jsonl"
chunk_bytes = 65536
[[traits]]
name = "orders"
query = 'count(track "Order Completed")'
[[traits]]
name = "last_page"
query = 'last(name from page)'
[[audiences]]
name = "viewers"
query = 'count(track "Product Viewed") >= 3'
[[audiences]]
name = "pros"
key = "pro_plan"
query = 'trait.plan = "pro"'
[[sinks]]
type = "file"
name = "identities"
output = "identities"
path = "out/identities.jsonl"
[[sinks]]
type = "file"
name = "traits"
output = "profile_traits"
path = "out/traits.jsonl"
[[sinks]]
type = "file"
name = "audiences"
output = "audiences"
path = "out/audiences.jsonl"
[[sinks]]
type = "file"
name = "computed"
output = "computed_traits"
path = "out/computed.jsonl"
[[sinks]]
type = "file"
name = "events"
output = "events"
path = "out/events.jsonl"
"#;

fn id_text(v: &Value) -> String {
    format!(
        "{}:{}",
        v["kind"].as_str().unwrap(),
        v["value"].as_str().unwrap()
    )
}

/// What the sinks say about every profile.
#[derive(Default)]
struct Oracle {
    /// identifier → profile.
    profile_of: BTreeMap<String, String>,
    /// profile → its identifiers.
    identifiers: BTreeMap<String, BTreeSet<String>>,
    /// profile → trait key → value.
    traits: BTreeMap<String, BTreeMap<String, Value>>,
    /// profile → computed trait → value.
    computed: BTreeMap<String, BTreeMap<String, Value>>,
    /// profile → audience names.
    audiences: BTreeMap<String, BTreeSet<String>>,
    /// Events of the job.
    events: usize,
}

fn oracle(dir: &std::path::Path) -> Oracle {
    let mut o = Oracle::default();
    for (record, n) in net(&read_changes(&dir.join("out/identities.jsonl"))) {
        assert_eq!(n, 1);
        let v: Value = serde_json::from_str(&record).unwrap();
        let (ident, profile) = (id_text(&v["identifier"]), id_text(&v["profile"]));
        assert!(o
            .profile_of
            .insert(ident.clone(), profile.clone())
            .is_none());
        o.identifiers.entry(profile).or_default().insert(ident);
    }
    for (record, n) in net(&read_changes(&dir.join("out/traits.jsonl"))) {
        assert_eq!(n, 1);
        let v: Value = serde_json::from_str(&record).unwrap();
        let key = v["key"].as_str().unwrap().to_string();
        let t = o.traits.entry(id_text(&v["profile"])).or_default();
        assert!(t.insert(key, v["value"].clone()).is_none());
    }
    let computed = read_changes(&dir.join("out/computed.jsonl"));
    for name in ["orders", "last_page"] {
        for (profile, value) in values(&computed, name) {
            o.computed
                .entry(profile)
                .or_default()
                .insert(name.to_string(), value);
        }
    }
    let audiences = read_changes(&dir.join("out/audiences.jsonl"));
    for (name, key) in [("viewers", "viewers"), ("pros", "pro_plan")] {
        for profile in members(&audiences, key) {
            o.audiences
                .entry(profile)
                .or_default()
                .insert(name.to_string());
        }
    }
    o.events = net(&read_changes(&dir.join("out/events.jsonl")))
        .values()
        .map(|n| *n as usize)
        .sum();
    o
}

fn check_profiles(server: &Server, job: u64, o: &Oracle) {
    let mut events_seen = 0;
    for (profile, identifiers) in &o.identifiers {
        let (status, v) = server.profile(job, profile, &[("events_limit", "0")]);
        assert_eq!(status, 200, "{profile}: {v}");
        assert_eq!(v["complete"], true);
        assert!(v["as_of"].as_u64().is_some(), "{v}");
        assert_eq!(v["profile"].as_str(), Some(profile.as_str()), "{v}");
        let got: BTreeSet<String> = v["identifiers"]
            .as_array()
            .unwrap()
            .iter()
            .map(id_text)
            .collect();
        assert_eq!(&got, identifiers, "{profile}");
        let traits: BTreeMap<String, Value> = v["traits"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(
            traits,
            o.traits.get(profile).cloned().unwrap_or_default(),
            "{profile}"
        );
        let computed: BTreeMap<String, Value> = v["computed_traits"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(
            computed,
            o.computed.get(profile).cloned().unwrap_or_default(),
            "{profile}"
        );
        let audiences: BTreeSet<String> = v["audiences"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            audiences,
            o.audiences.get(profile).cloned().unwrap_or_default(),
            "{profile}"
        );
        // Every other identifier finds the same profile.
        for ident in identifiers.iter().take(3) {
            let (status, w) = server.profile(job, ident, &[("events_limit", "0")]);
            assert_eq!(status, 200, "{ident}: {w}");
            assert_eq!(w["profile"].as_str(), Some(profile.as_str()));
        }
        // Events: all of them, newest first, none twice.
        let total = v["events_total"].as_u64().unwrap() as usize;
        let events = server.all_events(job, profile, 7);
        assert_eq!(events.len(), total, "{profile}");
        // (A retry outside the dedupe window is a second event with the same messageId.)
        let distinct: BTreeSet<String> = events.iter().map(|e| e.to_string()).collect();
        assert_eq!(distinct.len(), total, "{profile}: an event came twice");
        let times: Vec<&str> = events
            .iter()
            .map(|e| e["timestamp"].as_str().unwrap())
            .collect();
        assert!(
            times.windows(2).all(|w| w[0] >= w[1]),
            "{profile}: not newest first"
        );
        events_seen += total;
    }
    assert_eq!(
        events_seen, o.events,
        "every event belongs to exactly one profile"
    );
}

/// A cluster of `processes` processes × `workers` threads on 127.0.0.1, in
/// this test process: process 0 (which takes commands and serves the API)
/// and the others.
fn start_cluster(processes: usize, workers: usize) -> (Arc<Cluster>, Vec<Cluster>) {
    if processes == 1 {
        let c = Cluster::start(ClusterConfig::single(workers)).unwrap();
        return (Arc::new(c), Vec::new());
    }
    let addresses: Vec<String> = (0..processes)
        .map(|_| {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            format!("127.0.0.1:{port}")
        })
        .collect();
    let others: Vec<_> = (1..processes)
        .map(|process| {
            let addresses = addresses.clone();
            std::thread::spawn(move || {
                Cluster::start(ClusterConfig {
                    workers,
                    process,
                    addresses,
                })
                .unwrap()
            })
        })
        .collect();
    let first = Cluster::start(ClusterConfig {
        workers,
        process: 0,
        addresses,
    })
    .unwrap();
    let others = others.into_iter().map(|t| t.join().unwrap()).collect();
    (Arc::new(first), others)
}

#[test]
fn profile_api_answers_what_the_sinks_say() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = GenConfig {
        events: 4_000,
        seed: 7,
        ..GenConfig::default()
    };
    generate_to_path(&cfg, &dir.path().join("events.jsonl")).unwrap();
    std::fs::write(dir.path().join("job.toml"), JOB).unwrap();
    // One process with 1 and 2 workers; two processes (the index lives on process 0).
    for (processes, workers) in [(1, 1), (1, 2), (2, 1)] {
        let spec = JobSpec::load(&dir.path().join("job.toml")).unwrap();
        let (cluster, others) = start_cluster(processes, workers);
        let server = Server::start(cluster.clone());
        let job = cluster.submit(&spec).unwrap();
        let report = wait_finished(&cluster, job);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let o = oracle(dir.path());
        assert!(o.identifiers.len() > 50, "too few profiles to mean much");
        assert!(o.audiences.len() > 5 && o.computed.len() > 5);
        check_profiles(&server, job, &o);

        // Unknown and malformed requests.
        let (status, v) = server.profile(job, "user_id:nobody-has-this", &[]);
        assert_eq!(status, 404, "{v}");
        assert!(v["as_of"].as_u64().is_some());
        assert_eq!(server.profile(job, "no-colon", &[]).0, 400);
        assert_eq!(server.profile(999, "user_id:x", &[]).0, 404);
        let some = o.identifiers.keys().next().unwrap();
        assert_eq!(
            server.profile(job, some, &[("events_limit", "5000")]).0,
            400
        );
        assert_eq!(
            server.profile(job, some, &[("events_before", "junk")]).0,
            400
        );
        assert_eq!(server.profile(job, some, &[("colour", "red")]).0, 400);
        drop(server);
        let stops: Vec<_> = others
            .into_iter()
            .map(|c| std::thread::spawn(move || c.shutdown().unwrap()))
            .collect();
        cluster.shutdown().unwrap();
        stops.into_iter().for_each(|t| t.join().unwrap());
    }
}

//! Privacy regulations end to end, through `weft run`.
//!
//! * The equivalence test: run A (generated traffic, then a DELETE of one
//!   person) and run B (the same traffic without that person's events) end
//!   with identical net output in every sink, and A's sinks hold no record
//!   of the person: no identifier, trait or event.
//! * Suppression: events of a suppressed person that arrive after the
//!   suppression are dropped, flow again after an unsuppression, and a
//!   re-run on the same state directory applies the regulations at the same
//!   times.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use weft_bench::gen::{generate_to_path, GenConfig};
use weft_dataflows::event::{parse_event, ParseContext};
use weft_dataflows::identity::{id_hash, IdHash, IdentityRules};
use weft_dataflows::spec::IdentitySpec;
use weft_tests::{read_changes, run_job};

const OUTPUTS: [&str; 7] = [
    "events",
    "counts",
    "identities",
    "profile_traits",
    "profile_changes",
    "audiences",
    "computed_traits",
];

fn job(regulations: Option<&str>) -> String {
    let mut toml = String::from(
        r#"
[job]
name = "privacy"
[[sources]]
type = "file"
name = "events"
path = "events.jsonl"
chunk_bytes = 65536
[[traits]]
name = "views"
query = 'count(track "Product Viewed")'
[[traits]]
name = "last_page"
query = 'last(properties.path from page)'
[[audiences]]
name = "viewers"
query = 'count(track "Product Viewed") >= 2'
[[audiences]]
name = "recent"
query = 'count(page within 7d) >= 1 and not audience("viewers")'
"#,
    );
    if let Some(r) = regulations {
        toml.push_str(&format!("[regulations]\npath = \"{r}\"\n"));
    }
    for out in OUTPUTS {
        toml.push_str(&format!(
            "[[sinks]]\ntype = \"file\"\nname = \"{out}\"\noutput = \"{out}\"\npath = \"out/{out}.jsonl\"\n"
        ));
    }
    toml
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

/// The person's identifiers: every identifier of `user_id`'s profile, read
/// from a run without regulations (`identities` output).
fn profile_identifiers(dir: &Path, user: &str) -> BTreeSet<(String, String)> {
    let ids = net(&dir.join("out/identities.jsonl"));
    let rows: Vec<serde_json::Value> = ids
        .keys()
        .map(|k| serde_json::from_str(k).unwrap())
        .collect();
    let profile = rows
        .iter()
        .find(|r| r["identifier"]["kind"] == "user_id" && r["identifier"]["value"] == user)
        .map(|r| r["profile"].clone())
        .expect("the user has a profile");
    rows.iter()
        .filter(|r| r["profile"] == profile)
        .map(|r| {
            (
                r["identifier"]["kind"].as_str().unwrap().to_string(),
                r["identifier"]["value"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_deletion_equals_never_having_seen_the_person() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cfg = GenConfig {
        events: 4_000,
        seed: 11,
        duplicate_rate: 0.0,
        malformed_rate: 0.0,
        users: 120,
        ..GenConfig::with_events(4_000)
    };
    let all = root.join("all.jsonl");
    generate_to_path(&cfg, &all).unwrap();
    let text = std::fs::read_to_string(&all).unwrap();
    let cx = ParseContext::default();
    let events: Vec<(&str, weft_dataflows::event::Event)> = text
        .lines()
        .map(|l| (l, parse_event(l.as_bytes(), &cx).unwrap()))
        .collect();
    let last_received = events
        .iter()
        .map(|(_, e)| e.received_at_ms().unwrap_or(e.time_ms))
        .max()
        .unwrap();
    // The person: the user of the 5th identify call.
    let user = events
        .iter()
        .filter_map(|(_, e)| e.get(weft_dataflows::event::Field::UserId))
        .nth(40)
        .unwrap()
        .to_string();

    // STEP 1. Who the person is: their profile's identifiers, from a run without regulations.
    let c = root.join("c");
    std::fs::create_dir_all(&c).unwrap();
    std::fs::copy(&all, c.join("events.jsonl")).unwrap();
    let report = run_job(&c, &job(None), 2).unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let person = profile_identifiers(&c, &user);
    assert!(
        person.len() >= 2,
        "a profile with several identifiers: {person:?}"
    );
    let person_hashes: BTreeSet<IdHash> = person.iter().map(|(k, v)| id_hash(k, v)).collect();

    // STEP 2. B: the same traffic without the person's events (those anchored to their identifiers).
    let rules = IdentityRules::new(&IdentitySpec::default()).unwrap();
    let mut without = String::new();
    let mut removed = 0;
    for (line, e) in &events {
        let anchor = rules.observe(e).anchor();
        if anchor.is_some_and(|a| person_hashes.contains(&a)) {
            removed += 1;
        } else {
            without.push_str(line);
            without.push('\n');
        }
    }
    assert!(removed > 0);
    let b = root.join("b");
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(b.join("events.jsonl"), without).unwrap();
    let report = run_job(&b, &job(None), 1).unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);

    // STEP 3. A: all the traffic, then a DELETE addressed by the person's user id.
    let a = root.join("a");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::copy(&all, a.join("events.jsonl")).unwrap();
    let at = last_received + 60_000;
    std::fs::write(
        a.join("regulations.jsonl"),
        format!("{{\"type\":\"delete\",\"identifier\":\"user_id:{user}\",\"at\":{at},\"id\":\"req-1\"}}\n"),
    )
    .unwrap();
    let report = run_job(&a, &job(Some("regulations.jsonl")), 2).unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);

    // Identical net output, sink by sink.
    for out in OUTPUTS {
        let file = format!("out/{out}.jsonl");
        let (na, nb) = (net(&a.join(&file)), net(&b.join(&file)));
        assert!(!nb.is_empty() || out == "profile_changes", "{out} is empty");
        let only_a: Vec<_> = na
            .iter()
            .filter(|(k, v)| nb.get(*k) != Some(v))
            .take(3)
            .collect();
        let only_b: Vec<_> = nb
            .iter()
            .filter(|(k, v)| na.get(*k) != Some(v))
            .take(3)
            .collect();
        assert!(
            only_a.is_empty() && only_b.is_empty(),
            "net {out} output differs between A ({} records) and B ({}): A has {only_a:?}, B has {only_b:?}",
            na.len(),
            nb.len()
        );
    }
    // No record of the person anywhere in A's sinks, history included.
    for out in OUTPUTS {
        let text = std::fs::read_to_string(a.join(format!("out/{out}.jsonl"))).unwrap();
        for (kind, value) in &person {
            assert!(
                !text.contains(&format!("\"{value}\"")),
                "{out} still mentions {kind}:{value}"
            );
        }
    }
    // The audit log: applied once with every identifier, committed by every sink.
    let audit =
        std::fs::read_to_string(a.join(".weft-state/privacy/regulations-audit.jsonl")).unwrap();
    let entries: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let applied: Vec<_> = entries.iter().filter(|e| e["event"] == "applied").collect();
    assert_eq!(applied.len(), 1, "{audit}");
    assert_eq!(applied[0]["regulation"], "req-1");
    assert_eq!(applied[0]["effect_time"], at + 1);
    assert_eq!(applied[0]["identifiers"], person.len());
    let committed: BTreeSet<&str> = entries
        .iter()
        .filter(|e| e["event"] == "committed")
        .map(|e| e["sink"].as_str().unwrap())
        .collect();
    assert_eq!(committed, OUTPUTS.into_iter().collect(), "{audit}");
}

/// One event per 4 KiB chunk, so an event's arrival time is its `receivedAt`.
fn padded(json: &str) -> String {
    let pad = 4096 - json.len() - 20;
    let mut s = json.trim_end_matches('}').to_string();
    s.push_str(&format!(r#","pad":"{}"}}"#, "x".repeat(pad)));
    format!("{s:<4095}\n")
}

#[test]
fn suppression_drops_later_events_until_unsuppressed_and_survives_a_rerun() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let base = 1_767_225_600_000u64; // 2026-01-01T00:00:00Z
    let at = |minute: u64| base + minute * 60_000;
    let iso = |ms: u64| weft_dataflows::event::format_iso8601(ms as i64);
    let mut input = String::new();
    // Minute m: one event of the person (`u1`, later also on device `d9`) and one of someone else.
    for m in 0..10u64 {
        let t = iso(at(m));
        input += &padded(&format!(
            r#"{{"type":"track","event":"Clicked","userId":"u1","messageId":"p{m}","timestamp":"{t}","receivedAt":"{t}"}}"#
        ));
        input += &padded(&format!(
            r#"{{"type":"track","event":"Clicked","userId":"u2","messageId":"o{m}","timestamp":"{t}","receivedAt":"{t}"}}"#
        ));
        if m == 1 {
            // The person's anonymous id, linked before the suppression.
            input += &padded(&format!(
                r#"{{"type":"identify","userId":"u1","anonymousId":"anon-1","messageId":"i1","timestamp":"{t}","receivedAt":"{t}"}}"#
            ));
        }
        if m == 5 {
            // During the suppression, an event with only the anonymous id: still the person.
            input += &padded(&format!(
                r#"{{"type":"page","anonymousId":"anon-1","messageId":"a5","timestamp":"{t}","receivedAt":"{t}"}}"#
            ));
        }
    }
    std::fs::write(root.join("events.jsonl"), &input).unwrap();
    // Suppress at minute 3 (addressed by the anonymous id), unsuppress at minute 6.
    std::fs::write(
        root.join("regulations.jsonl"),
        format!(
            "{{\"type\":\"suppress\",\"identifier\":\"anonymous_id:anon-1\",\"at\":\"{}\"}}\n{{\"type\":\"unsuppress\",\"identifier\":\"user_id:u1\",\"at\":{}}}\n",
            iso(at(3)),
            at(6)
        ),
    )
    .unwrap();
    let toml = r#"
[job]
name = "suppress"
[[sources]]
type = "file"
name = "events"
path = "events.jsonl"
chunk_bytes = 4096
[regulations]
path = "regulations.jsonl"
[[sinks]]
type = "file"
name = "events"
output = "events"
path = "out/events.jsonl"
"#;
    let ids = |dir: &Path| -> BTreeSet<String> {
        net(&dir.join("out/events.jsonl"))
            .keys()
            .map(|k| {
                let v: serde_json::Value = serde_json::from_str(k).unwrap();
                v["messageId"].as_str().unwrap().to_string()
            })
            .collect()
    };
    let report = run_job(root, toml, 2).unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let first = ids(root);
    // Minutes 4, 5, 6 are after the suppression and not after the unsuppression.
    let mut want: BTreeSet<String> = (0..10).map(|m| format!("o{m}")).collect();
    want.extend([0, 1, 2, 3, 7, 8, 9].map(|m| format!("p{m}")));
    want.insert("i1".into());
    assert_eq!(first, want);
    // A re-run (a restart) on the same state applies the regulations at the same times.
    let rerun = run_job(root, toml, 1).unwrap();
    assert!(rerun.errors.is_empty(), "{:?}", rerun.errors);
    assert_eq!(ids(root), want);
}

#[test]
fn a_bad_regulation_line_is_reported_and_the_rest_apply() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let t = "2026-01-01T00:00:00.000Z";
    std::fs::write(
        root.join("events.jsonl"),
        format!(
            "{{\"type\":\"track\",\"event\":\"E\",\"userId\":\"u1\",\"messageId\":\"m1\",\"timestamp\":\"{t}\",\"receivedAt\":\"{t}\"}}\n{{\"type\":\"track\",\"event\":\"E\",\"userId\":\"u2\",\"messageId\":\"m2\",\"timestamp\":\"{t}\",\"receivedAt\":\"{t}\"}}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        root.join("regulations.jsonl"),
        "{\"type\":\"forget\",\"identifier\":\"user_id:u2\"}\n{\"type\":\"delete\",\"identifier\":\"user_id:u1\",\"at\":\"2026-01-02T00:00:00Z\"}\n",
    )
    .unwrap();
    let toml = r#"
[job]
name = "bad-regulation"
[[sources]]
type = "file"
name = "events"
path = "events.jsonl"
[regulations]
path = "regulations.jsonl"
[[sinks]]
type = "file"
name = "events"
output = "events"
path = "out/events.jsonl"
"#;
    let report = run_job(root, toml, 1).unwrap();
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    assert!(report.errors[0].contains("line 1"), "{:?}", report.errors);
    let left: Vec<String> = net(&root.join("out/events.jsonl")).into_keys().collect();
    assert_eq!(left.len(), 1);
    assert!(left[0].contains("\"m2\""));
}

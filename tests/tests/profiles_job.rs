//! Identity, computed traits and audiences inside a `weft run` job, end to
//! end: a scenario whose memberships are known exactly (entry on identify,
//! exit when the 30-day window runs out, with no event at that moment), and
//! worker-count independence on generated traffic.

use weft_bench::gen::{generate_to_path, GenConfig};
use weft_tests::{read_changes, run_job};

fn ms(s: &str) -> u64 {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap()
        .timestamp_millis() as u64
}

/// One event per chunk: each line is padded to 4 KiB, the smallest chunk.
fn line(json: &str) -> String {
    let pad = 4096 - json.len() - 20;
    let mut s = json.trim_end_matches('}').to_string();
    s.push_str(&format!(r#","pad":"{}"}}"#, "x".repeat(pad)));
    assert!(s.len() <= 4096);
    format!("{s:<4095}\n")
}

const JOB: &str = r#"
[job]
name = "profiles"
[[sources]]
type = "file"
name = "events"
path = "events.jsonl"
chunk_bytes = 4096
[[traits]]
name = "views_30d"
query = 'count(track "Product Viewed" within 30d)'
[[audiences]]
name = "shoe_lovers"
query = 'count(track "Product Viewed" where properties.category = "shoes" within 30d) >= 3 and trait.plan = "pro"'
[[audiences]]
name = "not_shoe_lovers"
key = "casual"
query = 'not audience("shoe_lovers")'
[[sinks]]
type = "file"
name = "audiences"
output = "audiences"
path = "out/audiences.jsonl"
[[sinks]]
type = "file"
name = "audiences-identify"
output = "audiences"
format = "segment_identify"
path = "out/audiences-identify.jsonl"
[[sinks]]
type = "file"
name = "audiences-track"
output = "audiences"
format = "segment_track"
path = "out/audiences-track.jsonl"
[[sinks]]
type = "file"
name = "computed"
output = "computed_traits"
path = "out/computed.jsonl"
[[sinks]]
type = "file"
name = "identities"
output = "identities"
path = "out/identities.jsonl"
[[sinks]]
type = "file"
name = "changes"
output = "profile_changes"
path = "out/changes.jsonl"
[[sinks]]
type = "file"
name = "traits"
output = "profile_traits"
path = "out/traits.jsonl"
"#;

#[test]
fn memberships_enter_on_identify_and_exit_when_the_window_runs_out() {
    let dir = tempfile::tempdir().unwrap();
    let ev = |ts: &str, body: &str| {
        line(&format!(
            r#"{{{body},"timestamp":"{ts}","receivedAt":"{ts}"}}"#
        ))
    };
    let mut input = String::new();
    input += &ev(
        "2026-01-01T10:00:00.000Z",
        r#""type":"page","anonymousId":"a1","messageId":"m0""#,
    );
    for (i, s) in ["00", "01", "02"].iter().enumerate() {
        input += &ev(
            &format!("2026-01-01T10:01:{s}.000Z"),
            &format!(
                r#""type":"track","event":"Product Viewed","anonymousId":"a1","messageId":"v{i}","properties":{{"category":"shoes"}}"#
            ),
        );
    }
    input += &ev(
        "2026-01-01T10:05:00.000Z",
        r#""type":"identify","anonymousId":"a1","userId":"u1","messageId":"id1","traits":{"plan":"pro","email":"u1@example.com"}"#,
    );
    // A second device browses, then logs in: its profile merges into a1's.
    input += &ev(
        "2026-01-01T11:00:00.000Z",
        r#""type":"page","anonymousId":"a2","messageId":"m2""#,
    );
    input += &ev(
        "2026-01-01T11:05:00.000Z",
        r#""type":"identify","anonymousId":"a2","userId":"u1","messageId":"id2""#,
    );
    input += &ev(
        "2026-01-20T00:00:00.000Z",
        r#""type":"page","userId":"u2","messageId":"p2""#,
    );
    input += &ev(
        "2026-02-05T00:00:00.000Z",
        r#""type":"page","userId":"u2","messageId":"p3""#,
    );
    std::fs::write(dir.path().join("events.jsonl"), input).unwrap();

    let report = run_job(dir.path(), JOB, 2).unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);

    let aud = read_changes(&dir.path().join("out/audiences.jsonl"));
    let shoe: Vec<(u64, i64, String)> = aud
        .iter()
        .filter(|c| c.data["audience"] == "shoe_lovers")
        .map(|c| {
            (
                c.time,
                c.diff,
                c.data["profile"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        shoe,
        vec![
            (ms("2026-01-01T10:05:00Z"), 1, "anonymous_id:a1".to_string()),
            (
                ms("2026-01-31T10:01:00Z"),
                -1,
                "anonymous_id:a1".to_string()
            ),
        ],
        "{aud:?}"
    );
    // The complement audience uses its key and sees every profile.
    let casual_a1: Vec<(u64, i64)> = aud
        .iter()
        .filter(|c| c.data["audience"] == "casual" && c.data["profile"] == "anonymous_id:a1")
        .map(|c| (c.time, c.diff))
        .collect();
    assert_eq!(
        casual_a1,
        vec![
            (ms("2026-01-01T10:00:00Z"), 1),
            (ms("2026-01-01T10:05:00Z"), -1),
            (ms("2026-01-31T10:01:00Z"), 1)
        ]
    );

    // The same changes in the two forms destinations expect, as valid Segment calls.
    let segment = |file: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.path().join(file))
            .unwrap()
            .lines()
            .map(|l| {
                weft_dataflows::event::parse_event(l.as_bytes(), &Default::default())
                    .unwrap_or_else(|e| panic!("{l}: {e}"));
                serde_json::from_str(l).unwrap()
            })
            .filter(|v: &serde_json::Value| v["anonymousId"] == "a1")
            .collect()
    };
    let identify = segment("out/audiences-identify.jsonl");
    let shoe: Vec<(&str, bool)> = identify
        .iter()
        .filter_map(|v| {
            v["traits"]["shoe_lovers"]
                .as_bool()
                .map(|b| (v["timestamp"].as_str().unwrap(), b))
        })
        .collect();
    assert_eq!(
        shoe,
        vec![
            ("2026-01-01T10:05:00.000Z", true),
            ("2026-01-31T10:01:00.000Z", false)
        ],
        "{identify:?}"
    );
    let track = segment("out/audiences-track.jsonl");
    let shoe: Vec<(&str, &str)> = track
        .iter()
        .filter(|v| v["properties"]["audience_key"] == "shoe_lovers")
        .map(|v| {
            (
                v["event"].as_str().unwrap(),
                v["timestamp"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        shoe,
        vec![
            ("Audience Entered", "2026-01-01T10:05:00.000Z"),
            ("Audience Exited", "2026-01-31T10:01:00.000Z")
        ]
    );

    // The computed trait counts down as views leave the window.
    let computed = read_changes(&dir.path().join("out/computed.jsonl"));
    let a1_views: Vec<(u64, i64, f64)> = computed
        .iter()
        .filter(|c| c.data["profile"] == "anonymous_id:a1")
        .map(|c| (c.time, c.diff, c.data["value"].as_f64().unwrap()))
        .collect();
    let last_value = a1_views
        .iter()
        .filter(|(_, d, _)| *d == 1)
        .last()
        .unwrap()
        .2;
    assert_eq!(last_value, 1.0, "{a1_views:?}"); // v2 expires last, at 10:01:02 + 30d
    assert!(
        a1_views.contains(&(ms("2026-01-01T10:01:02Z"), 1, 3.0)),
        "{a1_views:?}"
    );

    // a1 and u1 are one profile, named by the older identifier.
    let ids = read_changes(&dir.path().join("out/identities.jsonl"));
    let u1 = ids
        .iter()
        .find(|c| c.data["identifier"]["value"] == "u1")
        .unwrap();
    assert_eq!(u1.data["profile"]["value"], "a1");
    let a2 = ids
        .iter()
        .filter(|c| c.data["identifier"]["value"] == "a2")
        .map(|c| (c.diff, c.data["profile"]["value"].as_str().unwrap()))
        .collect::<Vec<_>>();
    assert_eq!(a2, vec![(1, "a2"), (1, "a1"), (-1, "a2")], "{ids:?}"); // within a time, records are sorted
    let changes = read_changes(&dir.path().join("out/changes.jsonl"));
    assert!(
        changes.iter().any(|c| c.time == ms("2026-01-01T11:05:00Z")
            && c.data["from"]["value"] == "a2"
            && c.data["into"]["value"] == "a1"),
        "{changes:?}"
    );
    let traits = read_changes(&dir.path().join("out/traits.jsonl"));
    assert!(
        traits
            .iter()
            .any(|c| c.data["key"] == "plan" && c.diff == 1),
        "{traits:?}"
    );
}

#[test]
fn profile_outputs_do_not_depend_on_worker_count() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = GenConfig {
        events: 8_000,
        seed: 11,
        ..GenConfig::default()
    };
    generate_to_path(&cfg, &dir.path().join("events.jsonl")).unwrap();
    let job = JOB.replace("chunk_bytes = 4096", "chunk_bytes = 65536");
    let mut outs = Vec::new();
    for workers in [1, 4] {
        let report = run_job(dir.path(), &job, workers).unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let files: Vec<Vec<u8>> = ["audiences", "computed", "identities", "changes", "traits"]
            .iter()
            .map(|f| std::fs::read(dir.path().join(format!("out/{f}.jsonl"))).unwrap())
            .collect();
        for (f, name) in
            files
                .iter()
                .zip(["audiences", "computed", "identities", "changes", "traits"])
        {
            assert!(name == "changes" || !f.is_empty(), "{name} is empty");
        }
        outs.push(files);
    }
    assert!(
        outs[0] == outs[1],
        "profile outputs differ between 1 and 4 workers"
    );
}

//! `weft run` with a Kafka source and Kafka sinks against the real broker:
//! the output of a run that is SIGKILLed several times and restarted equals
//! an uninterrupted run's (no loss, no duplicate), equals the oracle's counts
//! over the produced input, and malformed records land in the dead-letter
//! topic with their reason and original bytes.

#[path = "../../connectors/tests/kafka_support/mod.rs"]
mod kafka_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weft_bench::gen::{GenConfig, Generator};
use weft_tests::{final_counts, Change};

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

fn job(dir: &Path, name: &str, brokers: &str, input: &str, counts: &str, dead: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"
[job]
name = "{name}"
state_dir = "state-{name}"
[[sources]]
type = "kafka"
name = "events"
brokers = "{brokers}"
topics = ["{input}"]
tick = "20ms"
bounded = true
[dedupe]
window = "30d"
[[sinks]]
type = "kafka"
name = "counts"
output = "counts"
brokers = "{brokers}"
topic = "{counts}"
[[sinks]]
type = "kafka"
name = "dead-letter"
output = "errors"
brokers = "{brokers}"
topic = "{dead}"
"#
        ),
    )
    .unwrap();
    path
}

/// The committed records of a keyed topic, read back as changes: the topic is
/// an upsert stream (an insertion replaces the key's previous record, a
/// tombstone removes it), so each record becomes the retraction of the
/// key's previous value (if any) and the insertion of its new one.
fn changes(brokers: &str, topic: &str) -> Vec<Change> {
    let mut records = kafka_support::read_all(brokers, topic, "read_committed");
    let time_of = |r: &kafka_support::Read| -> u64 {
        String::from_utf8(r.headers["weft.time"].clone())
            .unwrap()
            .parse()
            .unwrap()
    };
    records.sort_by_key(|r| time_of(r));
    let mut current: std::collections::HashMap<Vec<u8>, serde_json::Value> = Default::default();
    let mut rows = Vec::new();
    for r in &records {
        let time = time_of(r);
        let key = r.key.clone().unwrap();
        if let Some(old) = current.remove(&key) {
            rows.push(Change {
                time,
                diff: -1,
                data: old,
            });
        }
        if !r.value.is_empty() {
            let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
            assert_eq!(v["diff"].as_i64(), Some(1));
            rows.push(Change {
                time,
                diff: 1,
                data: v["data"].clone(),
            });
            current.insert(key, v["data"].clone());
        }
    }
    rows.sort_by(|a, b| {
        a.time
            .cmp(&b.time)
            .then(a.data.to_string().cmp(&b.data.to_string()))
    });
    rows
}

#[test]
fn sigkilled_runs_resume_exactly_once() {
    let Some(brokers) = kafka_support::brokers() else {
        return;
    };
    let mut topics = kafka_support::Topics::new(&brokers);
    #[allow(clippy::needless_borrow)]
    let input = topics.create("weft-in", 3);
    let (counts_a, dead_a) = (
        topics.create("weft-counts-a", 1),
        topics.create("weft-dead-a", 1),
    );
    let (counts_b, dead_b) = (
        topics.create("weft-counts-b", 1),
        topics.create("weft-dead-b", 1),
    );
    let progress: Vec<String> = [&counts_a, &counts_b, &dead_a, &dead_b]
        .iter()
        .map(|t| format!("{t}.weft-progress"))
        .collect();

    // STEP 1. Produce generated traffic (with retries and malformed records) over 3 partitions.
    let cfg = GenConfig {
        events: 6_000,
        seed: 5,
        malformed_rate: 0.01,
        duplicate_rate: 0.03,
        ..GenConfig::default()
    };
    let mut gen = Generator::new(&cfg).unwrap();
    let mut lines = Vec::new();
    let mut buf = Vec::new();
    while gen.next_into(&mut buf).is_some() {
        let mut l = std::mem::take(&mut buf);
        l.pop();
        lines.push(l);
    }
    let records: Vec<(i32, Vec<u8>)> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| ((i % 3) as i32, l.clone()))
        .collect();
    kafka_support::produce(&brokers, &input, &records);
    // The oracle: counts computed straight from the produced lines (per partition order = file order per partition;
    // retries follow their original on every partition only within the 30-day window, which holds for generated data).
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("input.jsonl");
    let mut text = Vec::new();
    for l in &lines {
        text.extend_from_slice(l);
        text.push(b'\n');
    }
    std::fs::write(&plain, &text).unwrap();

    // STEP 2. Run A, uninterrupted.
    let a = job(dir.path(), "a", &brokers, &input, &counts_a, &dead_a);
    let out = Command::new(weft_bin())
        .args(["run", "--workers", "2", "--quiet"])
        .arg(&a)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "run a: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // STEP 3. Run B, SIGKILLed at several points, then run to the end.
    let b = job(dir.path(), "b", &brokers, &input, &counts_b, &dead_b);
    let mut kills = 0;
    for delay_ms in [700u64, 1200, 1700] {
        let mut child = Command::new(weft_bin())
            .args(["run", "--workers", "2", "--quiet"])
            .arg(&b)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(delay_ms) {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
    }
    let out = Command::new(weft_bin())
        .args(["run", "--workers", "2", "--quiet"])
        .arg(&b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "run b (final): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("run b was killed {kills} times");

    // STEP 4. Compare.
    let ca = changes(&brokers, &counts_a);
    let cb = changes(&brokers, &counts_b);
    assert!(!ca.is_empty());
    let fa = final_counts(&ca);
    let fb = final_counts(&cb);
    assert_eq!(
        fa, fb,
        "the interrupted run's net output differs from the uninterrupted run's"
    );
    // No duplicate: each (time, record, diff) at most once in B's committed output.
    let mut seen = BTreeSet::new();
    for c in &cb {
        assert!(
            seen.insert((c.time, c.data.to_string(), c.diff)),
            "duplicate change {c:?}"
        );
    }
    let expected = weft_tests::oracle_counts(&plain, true);
    assert_eq!(fa, expected, "counts differ from the oracle");

    // Dead letters: one per malformed record, with its reason and original bytes, in both runs.
    for dead in [&dead_a, &dead_b] {
        let rows = kafka_support::read_all(&brokers, dead, "read_committed");
        let mut by_reason: BTreeMap<String, i64> = BTreeMap::new();
        let mut raws = BTreeSet::new();
        for r in &rows {
            let reason = String::from_utf8(r.headers["weft.reason"].clone()).unwrap();
            *by_reason.entry(reason).or_default() += 1;
            raws.insert(r.value.clone());
        }
        let want: BTreeMap<String, i64> = expected
            .iter()
            .filter(|((m, _), _)| m == "rejected")
            .map(|((_, k), n)| (k.clone(), *n))
            .collect();
        assert_eq!(by_reason, want, "dead letters in {dead}");
        for r in &rows {
            assert!(
                lines.iter().any(|l| *l == r.value),
                "a dead letter is not an original record"
            );
        }
    }
    let names: Vec<&str> = progress.iter().map(String::as_str).collect();
    let _ = weft_connectors::kafka::admin::delete_topics(&brokers, &names);
}

//! The quickstart-shaped job end to end: generated events → `weft run` →
//! counts and dead-letter files, checked against counts computed directly
//! from the input by a naive oracle; and identical output at 1 and 4 workers.

use weft_bench::gen::{generate_to_path, GenConfig};
use weft_tests::{final_counts, naive_validate, oracle_counts, read_changes, run_job, Verdict};

fn job_toml(input: &str, chunk: u64) -> String {
    format!(
        r#"
[job]
name = "counts-test"
[[sources]]
type = "file"
name = "events"
path = "{input}"
chunk_bytes = {chunk}
# Generated retries come up to ~2 days after the original; a 30-day window
# makes "first occurrence of a messageId passes" the exact rule.
[dedupe]
window = "30d"
[[sinks]]
type = "file"
name = "counts"
output = "counts"
path = "out/counts.jsonl"
[[sinks]]
type = "file"
name = "dead-letter"
output = "errors"
path = "out/errors.jsonl"
[[sinks]]
type = "file"
name = "events"
output = "events"
path = "out/events.jsonl"
"#
    )
}

#[test]
fn counts_match_the_oracle_and_do_not_depend_on_worker_count() {
    for (input, seed) in [("events.jsonl", 7u64), ("events.jsonl.gz", 8)] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = GenConfig {
            events: 30_000,
            seed,
            malformed_rate: 0.01,
            duplicate_rate: 0.03,
            ..GenConfig::default()
        };
        let stats = generate_to_path(&cfg, &dir.path().join(input)).unwrap();
        assert!(
            stats.malformed > 100,
            "the generator should produce malformed lines"
        );

        let mut outputs = Vec::new();
        for workers in [1, 4] {
            let report = run_job(dir.path(), &job_toml(input, 64 * 1024), workers).unwrap();
            assert!(report.errors.is_empty(), "{:?}", report.errors);
            assert_eq!(report.records, stats.events);
            let files: Vec<Vec<u8>> = ["counts", "errors", "events"]
                .iter()
                .map(|f| std::fs::read(dir.path().join(format!("out/{f}.jsonl"))).unwrap())
                .collect();
            outputs.push(files);
        }
        assert!(
            outputs[0] == outputs[1],
            "{input}: output differs between 1 and 4 workers"
        );

        // Counts equal the oracle's, computed straight from the input file.
        let plain = if input.ends_with(".gz") {
            let p = dir.path().join("plain.jsonl");
            let mut d =
                flate2::read::GzDecoder::new(std::fs::File::open(dir.path().join(input)).unwrap());
            std::io::copy(&mut d, &mut std::fs::File::create(&p).unwrap()).unwrap();
            p
        } else {
            dir.path().join(input)
        };
        let expected = oracle_counts(&plain, true);
        let got = final_counts(&read_changes(&dir.path().join("out/counts.jsonl")));
        assert_eq!(got, expected, "{input}: counts differ from the oracle");
        // The summary the CLI prints comes from the same counts.
        let report = run_job(dir.path(), &job_toml(input, 64 * 1024), 2).unwrap();
        assert_eq!(report.counts.len(), expected.len());

        // Every bad line has one error record, every good line one event.
        let errors = read_changes(&dir.path().join("out/errors.jsonl"));
        let events = read_changes(&dir.path().join("out/events.jsonl"));
        let bad = expected
            .iter()
            .filter(|((m, _), _)| m == "rejected")
            .map(|(_, n)| n)
            .sum::<i64>();
        assert_eq!(errors.iter().map(|c| c.diff).sum::<i64>(), bad);
        let dropped = expected
            .get(&("dropped".to_string(), "duplicate".to_string()))
            .copied()
            .unwrap_or(0);
        assert!(dropped > 0, "the generator's retries should be dropped");
        assert_eq!(
            events.iter().map(|c| c.diff).sum::<i64>() + bad + dropped,
            stats.events as i64
        );
        // Events are faithful: spot-check message ids against the oracle.
        let text = std::fs::read(&plain).unwrap();
        let mut ids: Vec<String> = text
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty() || false)
            .filter_map(|l| match naive_validate(l) {
                Verdict::Valid { message_id, .. } => message_id,
                _ => None,
            })
            .collect();
        let mut got_ids: Vec<String> = events
            .iter()
            .map(|c| c.data["messageId"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids.dedup();
        got_ids.sort();
        assert_eq!(ids, got_ids);
    }
}

//! A corpus of malformed input: one error record per bad line, with the
//! expected reason and the original bytes, while every good line is processed.

use weft_tests::{read_changes, run_job};

fn good(i: usize) -> Vec<u8> {
    format!(
        r#"{{"type":"track","event":"Good","userId":"u{i}","messageId":"good-{i}","timestamp":"2026-01-01T00:00:00Z"}}"#
    )
    .into_bytes()
}

#[test]
fn every_bad_line_gets_one_error_with_its_reason() {
    let deep = format!(
        r#"{{"type":"page","userId":"u","timestamp":"2026-01-01T00:00:00Z","properties":{{"a":{}1{}}}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let ten_mb = format!(
        r#"{{"type":"track","event":"Big","userId":"u","timestamp":"2026-01-01T00:00:00Z","properties":{{"blob":"{}"}}}}"#,
        "x".repeat(10 << 20)
    );
    let oversize = format!(
        r#"{{"type":"track","event":"Big","userId":"u","timestamp":"2026-01-01T00:00:00Z","properties":{{"blob":"{}"}}}}"#,
        "y".repeat(40_000)
    );
    let bad: Vec<(Vec<u8>, &str)> = vec![
        (br#"{"type":"track","event":"Trunc","userId":"u","times"#.to_vec(), "malformed_json"),
        (br#"{"type":"track","event":"X","userId":{"a":1},"timestamp":"2026-01-01T00:00:00Z"}"#.to_vec(), "wrong_type"),
        (br#"{"type":"track","event":"X","userId":"u","properties":5,"timestamp":"2026-01-01T00:00:00Z"}"#.to_vec(), "wrong_type"),
        (br#"{"type":"track","event":"X","userId":12,"timestamp":"2026-01-01T00:00:00Z"}"#.to_vec(), "wrong_type"),
        (oversize.into_bytes(), "oversize"),
        (br#"{"type":"track","event":"X","timestamp":"2026-01-01T00:00:00Z"}"#.to_vec(), "missing_id"),
        (b"{\"type\":\"track\",\"event\":\"X\",\"userId\":\"\xff\xfe\",\"timestamp\":\"2026-01-01T00:00:00Z\"}".to_vec(), "invalid_utf8"),
        (deep.into_bytes(), "malformed_json"),
        (b"".to_vec(), "empty"),
        (b"   \t".to_vec(), "empty"),
        (ten_mb.into_bytes(), "oversize"),
        (b"[1,2,3]".to_vec(), "not_an_object"),
        (b"null".to_vec(), "not_an_object"),
        (br#"{"type":"track","userId":"u","timestamp":"2026-01-01T00:00:00Z"}"#.to_vec(), "missing_field"),
        (br#"{"type":"shout","userId":"u","timestamp":"2026-01-01T00:00:00Z"}"#.to_vec(), "unknown_type"),
        (br#"{"type":"page","userId":"u","timestamp":"tomorrow"}"#.to_vec(), "invalid_timestamp"),
        (br#"{"type":"page","userId":"u"}"#.to_vec(), "missing_timestamp"),
        (format!(r#"{{"type":"page","userId":"u","messageId":"{}","timestamp":"2026-01-01T00:00:00Z"}}"#, "m".repeat(101)).into_bytes(), "message_id_too_long"),
        (b"\x00\x01garbage".to_vec(), "malformed_json"),
    ];
    let mut input = Vec::new();
    let mut expected = Vec::new(); // (offset, reason, raw)
    let mut goods = 0;
    for (i, (line, reason)) in bad.iter().enumerate() {
        for _ in 0..3 {
            input.extend_from_slice(&good(goods));
            input.push(b'\n');
            goods += 1;
        }
        expected.push((input.len() as u64, *reason, line.clone(), i));
        input.extend_from_slice(line);
        input.push(b'\n');
    }
    input.extend_from_slice(&good(goods));
    goods += 1;
    input.extend_from_slice(b"\r\n");
    input.extend_from_slice(&good(goods));
    goods += 1; // last line without a newline

    for workers in [1, 3] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("corpus.jsonl"), &input).unwrap();
        let toml = r#"
[job]
name = "corpus"
[[sources]]
type = "file"
name = "corpus"
path = "corpus.jsonl"
chunk_bytes = 4096
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
"#;
        let report = run_job(dir.path(), toml, workers).unwrap();
        assert_eq!(report.records as usize, goods + bad.len());
        assert_eq!(report.rejected as usize, bad.len());

        let events = read_changes(&dir.path().join("out/events.jsonl"));
        let mut ids: Vec<&str> = events
            .iter()
            .map(|c| c.data["messageId"].as_str().unwrap())
            .collect();
        ids.sort();
        let mut want: Vec<String> = (0..goods).map(|i| format!("good-{i}")).collect();
        want.sort();
        assert_eq!(ids, want, "every good line is processed");

        let errors = read_changes(&dir.path().join("out/errors.jsonl"));
        assert_eq!(errors.len(), bad.len(), "one error record per bad line");
        let mut got: Vec<(u64, String)> = errors
            .iter()
            .map(|c| {
                (
                    c.data["offset"].as_u64().unwrap(),
                    c.data["reason"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        got.sort();
        for (offset, reason, raw, i) in &expected {
            let found = got
                .iter()
                .find(|(o, _)| o == offset)
                .unwrap_or_else(|| panic!("bad line {i} has no error record"));
            assert_eq!(&found.1, reason, "bad line {i}");
            let rec = errors
                .iter()
                .find(|c| c.data["offset"].as_u64() == Some(*offset))
                .unwrap();
            assert!(!rec.data["message"].as_str().unwrap().is_empty());
            // The original bytes travel with the error (hex when not UTF-8).
            let back = match rec.data.get("raw").and_then(|v| v.as_str()) {
                Some(s) => s.as_bytes().to_vec(),
                None => {
                    let hex = rec.data["raw_hex"].as_str().unwrap();
                    (0..hex.len())
                        .step_by(2)
                        .map(|k| u8::from_str_radix(&hex[k..k + 2], 16).unwrap())
                        .collect()
                }
            };
            assert_eq!(&back, raw, "bad line {i} keeps its bytes");
        }
    }
}

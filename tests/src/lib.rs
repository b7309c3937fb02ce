//! Shared helpers for Weft's end-to-end tests: running a job in-process,
//! reading sink output back, and a naive oracle for event validation.

#![forbid(missing_docs)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use serde_json::Value;
use weft_dataflows::spec::JobSpec;
use weft_engine::run::{run, RunOptions};
use weft_engine::runtime::JobReport;

/// Writes `toml` to `dir/job.toml`, loads it as `weft run` does and runs it to completion.
pub fn run_job(dir: &Path, toml: &str, workers: usize) -> anyhow::Result<JobReport> {
    let path = dir.join("job.toml");
    std::fs::write(&path, toml)?;
    let spec = JobSpec::load(&path)?;
    run(
        &spec,
        &RunOptions {
            workers,
            progress: false,
        },
        Arc::new(AtomicBool::new(false)),
    )
}

/// One line of a JSON-lines sink.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Logical time.
    pub time: u64,
    /// +n insert, -n retract.
    pub diff: i64,
    /// The record.
    pub data: Value,
}

/// Reads a JSON-lines sink file.
pub fn read_changes(path: &Path) -> Vec<Change> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad sink line {l:?}: {e}"));
            Change {
                time: v["time"].as_u64().expect("time"),
                diff: v["diff"].as_i64().expect("diff"),
                data: v["data"].clone(),
            }
        })
        .collect()
}

/// Accumulates a counts output into `(metric, key) → count`, checking that
/// every retraction matches an earlier insertion and times never go back.
pub fn final_counts(changes: &[Change]) -> BTreeMap<(String, String), i64> {
    let mut live: BTreeMap<(String, String, i64), i64> = BTreeMap::new();
    let mut last_time = 0;
    for c in changes {
        assert!(
            c.time >= last_time,
            "times go backwards: {} after {}",
            c.time,
            last_time
        );
        last_time = c.time;
        let key = (
            c.data["metric"].as_str().expect("metric").to_string(),
            c.data["key"].as_str().expect("key").to_string(),
            c.data["count"].as_i64().expect("count"),
        );
        let e = live.entry(key.clone()).or_default();
        *e += c.diff;
        assert!(*e >= 0, "retraction without insertion: {key:?}");
        if *e == 0 {
            live.remove(&key);
        }
    }
    let mut out = BTreeMap::new();
    for ((m, k, count), mult) in live {
        assert_eq!(mult, 1, "{m}/{k} has {mult} live counts");
        assert!(
            out.insert((m.clone(), k.clone()), count).is_none(),
            "{m}/{k} has two live counts"
        );
    }
    out
}

/// What the naive oracle decides for one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Valid: the call type and, for track, the event name.
    Valid {
        /// Call type.
        kind: String,
        /// Track event name.
        event: Option<String>,
        /// messageId, if present.
        message_id: Option<String>,
    },
    /// Rejected with this reason (snake_case, as in outputs).
    Rejected(&'static str),
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn is_str_or_null(v: Option<&Value>) -> bool {
    matches!(v, None | Some(Value::Null) | Some(Value::String(_)))
}

fn iso_ok(s: &str) -> bool {
    chrono::DateTime::parse_from_rfc3339(s).is_ok()
        || chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").is_ok()
        || chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z").is_ok()
        || chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok()
}

/// A from-scratch reimplementation of Weft's validation rules over
/// `serde_json::Value` (slow and obvious; used as the oracle).
pub fn naive_validate(line: &[u8]) -> Verdict {
    use Verdict::Rejected;
    if line.iter().all(|b| b.is_ascii_whitespace()) {
        return Rejected("empty");
    }
    if line.len() > 32 * 1024 {
        return Rejected("oversize");
    }
    let Ok(text) = std::str::from_utf8(line) else {
        return Rejected("invalid_utf8");
    };
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => return Rejected("malformed_json"),
    };
    let Value::Object(o) = &v else {
        return Rejected("not_an_object");
    };
    if depth(&v) > 64 {
        return Rejected("malformed_json");
    }
    let strings = [
        "type",
        "messageId",
        "anonymousId",
        "userId",
        "event",
        "name",
        "category",
        "groupId",
        "previousId",
        "timestamp",
        "originalTimestamp",
        "sentAt",
        "receivedAt",
    ];
    if strings.iter().any(|k| !is_str_or_null(o.get(*k))) {
        return Rejected("wrong_type");
    }
    let s = |k: &str| {
        o.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let kind = match o.get("type").and_then(Value::as_str) {
        Some(t @ ("track" | "identify" | "page" | "screen" | "group" | "alias")) => t.to_string(),
        _ => return Rejected("unknown_type"),
    };
    if kind == "alias" {
        if s("previousId").is_none() || s("userId").is_none() {
            return Rejected("missing_id");
        }
    } else if s("userId").is_none() && s("anonymousId").is_none() {
        return Rejected("missing_id");
    }
    if kind == "track" && s("event").is_none() {
        return Rejected("missing_field");
    }
    if kind == "group" && s("groupId").is_none() {
        return Rejected("missing_field");
    }
    for k in ["context", "integrations", "properties", "traits"] {
        if !matches!(o.get(k), None | Some(Value::Null) | Some(Value::Object(_))) {
            return Rejected("wrong_type");
        }
    }
    for k in ["timestamp", "originalTimestamp", "sentAt", "receivedAt"] {
        if let Some(t) = o.get(k).and_then(Value::as_str) {
            if !iso_ok(t) {
                return Rejected("invalid_timestamp");
            }
        }
    }
    if ["timestamp", "originalTimestamp", "receivedAt"]
        .iter()
        .all(|k| o.get(*k).and_then(Value::as_str).is_none())
    {
        return Rejected("missing_timestamp");
    }
    if let Some(m) = s("messageId") {
        if m.chars().count() > 100 {
            return Rejected("message_id_too_long");
        }
    }
    Verdict::Valid {
        event: if kind == "track" { s("event") } else { None },
        kind,
        message_id: s("messageId"),
    }
}

/// Counts the oracle expects for a JSON-lines file: `(metric, key) → count`,
/// in the same shape as [`final_counts`]. With `dedupe`, a valid event whose
/// messageId was seen before (in file order) is a dropped duplicate — exact
/// when retries arrive within the dedupe window, as generated ones do.
pub fn oracle_counts(path: &Path, dedupe: bool) -> BTreeMap<(String, String), i64> {
    let bytes = std::fs::read(path).expect("read input");
    let mut seen = std::collections::BTreeSet::new();
    let mut out: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match naive_validate(line) {
            Verdict::Valid {
                kind,
                event,
                message_id,
            } => {
                let key = message_id.unwrap_or_else(|| String::from_utf8_lossy(line).into_owned());
                if dedupe && !seen.insert(key) {
                    *out.entry(("dropped".into(), "duplicate".into()))
                        .or_default() += 1;
                    continue;
                }
                *out.entry(("type".into(), kind)).or_default() += 1;
                if let Some(e) = event {
                    *out.entry(("track_event".into(), e)).or_default() += 1;
                }
            }
            Verdict::Rejected(r) => *out.entry(("rejected".into(), r.into())).or_default() += 1,
        }
    }
    out
}

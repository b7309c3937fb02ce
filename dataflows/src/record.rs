//! Records that leave dataflows, and their JSON encodings for sinks.

use serde::{Deserialize, Serialize};

use crate::event::{write_json_string, Event, EventType, RejectReason, Rejection};

/// A record that could not be turned into an [`Event`]: where it came from,
/// why, and its original bytes (for the dead-letter output).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ErrorRecord {
    /// The source's name.
    pub source: Box<str>,
    /// Position of the record in the source (byte offset for files, offset for Kafka).
    pub offset: u64,
    /// Partition (Kafka) or file index; 0 for single-file sources.
    pub partition: u32,
    /// Machine-readable reason.
    pub reason: RejectReason,
    /// Human-readable explanation.
    pub message: Box<str>,
    /// The original bytes.
    pub raw: Box<[u8]>,
}

impl ErrorRecord {
    /// Builds an error record from a rejection.
    pub fn new(
        source: &str,
        partition: u32,
        offset: u64,
        rejection: Rejection,
        raw: &[u8],
    ) -> Self {
        ErrorRecord {
            source: source.into(),
            offset,
            partition,
            reason: rejection.reason,
            message: rejection.message.into_boxed_str(),
            raw: raw.into(),
        }
    }
}

/// What the counts output counts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum CountKey {
    /// Valid events of a call type.
    Type(EventType),
    /// Valid track events with this `event` name.
    TrackEvent(Box<str>),
    /// Rejected records with this reason.
    Rejected(RejectReason),
    /// Valid events dropped as retried duplicates.
    Duplicate,
}

impl CountKey {
    /// The `(metric, key)` pair outputs show.
    pub fn parts(&self) -> (&str, &str) {
        match self {
            CountKey::Type(t) => ("type", t.as_str()),
            CountKey::TrackEvent(e) => ("track_event", e),
            CountKey::Rejected(r) => ("rejected", r.as_str()),
            CountKey::Duplicate => ("dropped", "duplicate"),
        }
    }
}

/// Encodes a record as one JSON value for sinks.
pub trait WriteJson {
    /// Appends the JSON encoding of `self` to `out`.
    fn write_json(&self, out: &mut Vec<u8>);
}

impl WriteJson for Event {
    fn write_json(&self, out: &mut Vec<u8>) {
        Event::write_json(self, out)
    }
}

impl WriteJson for ErrorRecord {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"source\":");
        write_json_string(out, &self.source);
        out.extend_from_slice(
            format!(
                ",\"partition\":{},\"offset\":{},\"reason\":\"{}\",\"message\":",
                self.partition, self.offset, self.reason
            )
            .as_bytes(),
        );
        write_json_string(out, &self.message);
        match std::str::from_utf8(&self.raw) {
            Ok(s) => {
                out.extend_from_slice(b",\"raw\":");
                write_json_string(out, s);
            }
            Err(_) => {
                out.extend_from_slice(b",\"raw_hex\":\"");
                for b in self.raw.iter() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.push(b'"');
            }
        }
        out.push(b'}');
    }
}

impl WriteJson for (CountKey, isize) {
    fn write_json(&self, out: &mut Vec<u8>) {
        let (metric, key) = self.0.parts();
        out.extend_from_slice(b"{\"metric\":\"");
        out.extend_from_slice(metric.as_bytes());
        out.extend_from_slice(b"\",\"key\":");
        write_json_string(out, key);
        out.extend_from_slice(format!(",\"count\":{}}}", self.1).as_bytes());
    }
}

/// Writes one change line: `{"time":T,"diff":D,"data":<record>}` and a newline.
pub fn write_change_line<D: WriteJson>(out: &mut Vec<u8>, time: u64, diff: isize, data: &D) {
    out.extend_from_slice(b"{\"time\":");
    out.extend_from_slice(time.to_string().as_bytes());
    out.extend_from_slice(b",\"diff\":");
    out.extend_from_slice(diff.to_string().as_bytes());
    out.extend_from_slice(b",\"data\":");
    data.write_json(out);
    out.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_are_json() {
        let e = ErrorRecord::new(
            "s",
            0,
            7,
            Rejection {
                reason: RejectReason::InvalidUtf8,
                message: "bad".into(),
            },
            b"a\xffb",
        );
        let mut out = Vec::new();
        write_change_line(&mut out, 3, 1, &e);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["data"]["raw_hex"], "61ff62");
        assert_eq!(v["data"]["reason"], "invalid_utf8");
        assert_eq!(v["time"], 3);
        let mut out = Vec::new();
        write_change_line(
            &mut out,
            3,
            -1,
            &(CountKey::TrackEvent("Order \"X\"".into()), 12isize),
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["data"]["key"], "Order \"X\"");
        assert_eq!(v["data"]["count"], 12);
        assert_eq!(v["diff"], -1);
    }
}

//! The Segment event model: parsing and validation of `track`, `identify`,
//! `page`, `screen`, `group` and `alias` calls into a compact typed record.
//!
//! Parsing is on the hot path of every source. [`parse_event`] borrows from the
//! input line (serde_json borrowed deserialization, nested objects kept as raw
//! JSON slices) and then copies every string it keeps into **one** buffer:
//! an [`Event`] is a single heap allocation for its text plus fixed-size
//! fields, whatever the number of fields present.
//!
//! Validation follows the limits Segment documents:
//! - an event is at most [`MAX_EVENT_BYTES`] (32 KiB) of JSON;
//! - `messageId` is at most [`MAX_MESSAGE_ID_CHARS`] (100) characters;
//! - every call needs `userId` or `anonymousId`; `alias` needs `previousId`
//!   and `userId`; `group` needs `groupId`; `track` needs `event`;
//! - timestamps are ISO-8601 (RFC 3339, or a date-time without offset read as UTC);
//! - `properties`, `traits`, `context` and `integrations` are JSON objects.
//!
//! A record that fails gets a [`Rejection`] (reason enum + message) and travels
//! on the error output; it never stops the dataflow.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The largest accepted event, in bytes of JSON (Segment's limit: 32 KB).
pub const MAX_EVENT_BYTES: usize = 32 * 1024;
/// The longest accepted `messageId`, in characters.
pub const MAX_MESSAGE_ID_CHARS: usize = 100;

/// The six Segment call types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// A user action, named by `event`.
    Track,
    /// Who the user is, with `traits`.
    Identify,
    /// A web page view.
    Page,
    /// A mobile screen view.
    Screen,
    /// Associates a user with a group (account), with group `traits`.
    Group,
    /// Merges two user identities (`previousId` → `userId`).
    Alias,
}

impl EventType {
    /// All call types, in a fixed order.
    pub const ALL: [EventType; 6] = [
        EventType::Track,
        EventType::Identify,
        EventType::Page,
        EventType::Screen,
        EventType::Group,
        EventType::Alias,
    ];

    /// The wire name (`"track"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Track => "track",
            EventType::Identify => "identify",
            EventType::Page => "page",
            EventType::Screen => "screen",
            EventType::Group => "group",
            EventType::Alias => "alias",
        }
    }

    /// Parses a wire name; Segment's type names are lowercase.
    pub fn from_wire(s: &str) -> Option<EventType> {
        Some(match s {
            "track" => EventType::Track,
            "identify" => EventType::Identify,
            "page" => EventType::Page,
            "screen" => EventType::Screen,
            "group" => EventType::Group,
            "alias" => EventType::Alias,
            _ => return None,
        })
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a record was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// The line was empty or only whitespace.
    Empty,
    /// The bytes are not valid UTF-8.
    InvalidUtf8,
    /// Larger than [`MAX_EVENT_BYTES`].
    Oversize,
    /// Not parseable JSON (truncated, syntax error, nested too deeply).
    MalformedJson,
    /// Valid JSON, but not an object.
    NotAnObject,
    /// A known field has the wrong JSON type.
    WrongType,
    /// `type` is missing or not one of the six call types.
    UnknownType,
    /// Neither `userId` nor `anonymousId` (or, for alias, not both `previousId` and `userId`).
    MissingId,
    /// A field the call type requires is missing (`event` for track, `groupId` for group).
    MissingField,
    /// `messageId` is longer than [`MAX_MESSAGE_ID_CHARS`].
    MessageIdTooLong,
    /// A timestamp is not ISO-8601.
    InvalidTimestamp,
    /// No timestamp at all, and the source supplies no receive time.
    MissingTimestamp,
}

impl RejectReason {
    /// The snake_case name used in outputs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Empty => "empty",
            RejectReason::InvalidUtf8 => "invalid_utf8",
            RejectReason::Oversize => "oversize",
            RejectReason::MalformedJson => "malformed_json",
            RejectReason::NotAnObject => "not_an_object",
            RejectReason::WrongType => "wrong_type",
            RejectReason::UnknownType => "unknown_type",
            RejectReason::MissingId => "missing_id",
            RejectReason::MissingField => "missing_field",
            RejectReason::MessageIdTooLong => "message_id_too_long",
            RejectReason::InvalidTimestamp => "invalid_timestamp",
            RejectReason::MissingTimestamp => "missing_timestamp",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected record's reason and a one-sentence explanation.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Rejection {
    /// The machine-readable reason.
    pub reason: RejectReason,
    /// What was wrong, for a human.
    pub message: String,
}

impl Rejection {
    fn new(reason: RejectReason, message: impl Into<String>) -> Self {
        Rejection {
            reason,
            message: message.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

impl std::error::Error for Rejection {}

/// The string-valued fields an [`Event`] keeps, in its one text buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Field {
    /// `messageId` (filled in deterministically when absent).
    MessageId = 0,
    /// `anonymousId`.
    AnonymousId,
    /// `userId`.
    UserId,
    /// `event` (track).
    Event,
    /// `name` (page, screen).
    Name,
    /// `category` (page).
    Category,
    /// `groupId` (group).
    GroupId,
    /// `previousId` (alias).
    PreviousId,
    /// `context.traits.email`, else `traits.email`.
    Email,
    /// `context.device.id`.
    DeviceId,
    /// `context`, raw JSON object.
    Context,
    /// `integrations`, raw JSON object.
    Integrations,
    /// `properties`, raw JSON object.
    Properties,
    /// `traits`, raw JSON object.
    Traits,
}

/// The deepest accepted nesting of JSON objects and arrays.
pub const MAX_NESTING: usize = 64;

/// Returns the byte offset where nesting first exceeds `max`, if it does.
/// Skips string contents (including escaped quotes).
fn exceeds_depth(bytes: &[u8], max: usize) -> Option<usize> {
    // Fast path: with at most `max` opening brackets in total, nesting cannot
    // exceed `max`. This count is SIMD (memchr); the exact scan below does not.
    if memchr::memchr2_iter(b'{', b'[', bytes)
        .take(max + 1)
        .count()
        <= max
    {
        return None;
    }
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return Some(i);
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

const FIELD_COUNT: usize = 14;
const ABSENT: u32 = u32::MAX;

/// A validated Segment event: its time and type, and one shared record of
/// offsets and text.
///
/// String fields are spans into the text; nested objects (`context`,
/// `properties`, `traits`, `integrations`) are kept as their raw JSON text,
/// parsed again only by the operators that need a particular path.
///
/// An `Event` is 24 bytes: dataflows hand events to several operators and
/// arrangements, and each copy is a reference count, not a kilobyte of JSON
/// and a hundred bytes of offsets. Equality, order and hash are those of
/// `(time_ms, kind, record)`, field by field.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Event {
    /// Event time in milliseconds since the Unix epoch (Segment's resolved `timestamp`).
    pub time_ms: i64,
    /// The call type.
    pub kind: EventType,
    /// Everything else, shared by every copy.
    record: Arc<Record>,
}

/// The shared part of an [`Event`].
#[derive(PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Record {
    /// `receivedAt` in ms, if known.
    received_at_ms: Option<i64>,
    /// `sentAt` in ms, if present.
    sent_at_ms: Option<i64>,
    /// `originalTimestamp` in ms, if present.
    original_timestamp_ms: Option<i64>,
    /// Start offsets of the fields in `text`, `ABSENT` when missing.
    starts: [u32; FIELD_COUNT],
    /// End offsets of the fields in `text`.
    ends: [u32; FIELD_COUNT],
    /// `context.externalIds` as `(type, id)` pairs, offsets into `text`.
    external_ids: Box<[[u32; 4]]>,
    /// All kept text, concatenated.
    text: Box<str>,
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("kind", &self.kind)
            .field("message_id", &self.message_id())
            .field("user_id", &self.get(Field::UserId))
            .field("anonymous_id", &self.get(Field::AnonymousId))
            .field("time_ms", &self.time_ms)
            .finish_non_exhaustive()
    }
}

impl Event {
    /// A field's value, if present.
    #[inline]
    pub fn get(&self, field: Field) -> Option<&str> {
        let i = field as usize;
        let r = &*self.record;
        if r.starts[i] == ABSENT {
            None
        } else {
            Some(&r.text[r.starts[i] as usize..r.ends[i] as usize])
        }
    }

    /// `receivedAt` in ms, if known.
    pub fn received_at_ms(&self) -> Option<i64> {
        self.record.received_at_ms
    }

    /// `sentAt` in ms, if present.
    pub fn sent_at_ms(&self) -> Option<i64> {
        self.record.sent_at_ms
    }

    /// `originalTimestamp` in ms, if present.
    pub fn original_timestamp_ms(&self) -> Option<i64> {
        self.record.original_timestamp_ms
    }

    /// The `messageId` (always present after parsing).
    pub fn message_id(&self) -> &str {
        self.get(Field::MessageId).unwrap_or("")
    }

    /// `userId`, if present.
    pub fn user_id(&self) -> Option<&str> {
        self.get(Field::UserId)
    }

    /// `anonymousId`, if present.
    pub fn anonymous_id(&self) -> Option<&str> {
        self.get(Field::AnonymousId)
    }

    /// `context.externalIds` as `(type, id)` pairs.
    pub fn external_ids(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        let r = &*self.record;
        r.external_ids.iter().map(move |s| {
            (
                &r.text[s[0] as usize..s[1] as usize],
                &r.text[s[2] as usize..s[3] as usize],
            )
        })
    }

    /// The record (everything but time and type) as bytes, for
    /// [`crate::stored::StoredEvent`]: `from_record_bytes` rebuilds the same event.
    pub fn record_bytes(&self) -> Vec<u8> {
        let r = &*self.record;
        let mut out =
            Vec::with_capacity(27 + 8 * FIELD_COUNT + 4 + 16 * r.external_ids.len() + r.text.len());
        for t in [r.received_at_ms, r.sent_at_ms, r.original_timestamp_ms] {
            out.push(u8::from(t.is_some()));
            out.extend_from_slice(&t.unwrap_or(0).to_le_bytes());
        }
        for x in r.starts.iter().chain(r.ends.iter()) {
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.extend_from_slice(&(r.external_ids.len() as u32).to_le_bytes());
        for x in r.external_ids.iter().flatten() {
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.extend_from_slice(r.text.as_bytes());
        out
    }

    /// The event of `time_ms`, `kind` and a record from [`Event::record_bytes`].
    pub fn from_record_bytes(time_ms: i64, kind: EventType, bytes: &[u8]) -> Result<Event, String> {
        let mut at = 0usize;
        let mut take = |n: usize| -> Result<&[u8], String> {
            let s = bytes
                .get(at..at + n)
                .ok_or_else(|| format!("record truncated at byte {at}"))?;
            at += n;
            Ok(s)
        };
        let mut times = [None; 3];
        for t in &mut times {
            let flag = take(1)?[0];
            let v = i64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
            *t = (flag == 1).then_some(v);
        }
        let mut u32s = |n: usize| -> Result<Vec<u32>, String> {
            (0..n)
                .map(|_| take(4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes"))))
                .collect()
        };
        let offsets = u32s(2 * FIELD_COUNT)?;
        let n = u32s(1)?[0] as usize;
        let ids = u32s(4 * n)?;
        let text = std::str::from_utf8(&bytes[at..]).map_err(|e| format!("record text: {e}"))?;
        let mut starts = [ABSENT; FIELD_COUNT];
        let mut ends = [0; FIELD_COUNT];
        starts.copy_from_slice(&offsets[..FIELD_COUNT]);
        ends.copy_from_slice(&offsets[FIELD_COUNT..]);
        for i in 0..FIELD_COUNT {
            let in_text = |x: u32| x as usize <= text.len() && text.is_char_boundary(x as usize);
            if starts[i] != ABSENT
                && !(starts[i] <= ends[i] && in_text(starts[i]) && in_text(ends[i]))
            {
                return Err(format!("field {i} is out of the record's text"));
            }
        }
        let external_ids: Box<[[u32; 4]]> = ids
            .chunks_exact(4)
            .map(|c| [c[0], c[1], c[2], c[3]])
            .collect();
        if external_ids
            .iter()
            .flatten()
            .any(|&x| x as usize > text.len() || !text.is_char_boundary(x as usize))
        {
            return Err("an external id is out of the record's text".into());
        }
        Ok(Event {
            time_ms,
            kind,
            record: Arc::new(Record {
                received_at_ms: times[0],
                sent_at_ms: times[1],
                original_timestamp_ms: times[2],
                starts,
                ends,
                external_ids,
                text: text.into(),
            }),
        })
    }

    /// Writes the event as Segment JSON (the fields Weft keeps), to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"type\":\"");
        out.extend_from_slice(self.kind.as_str().as_bytes());
        out.push(b'"');
        let strings = [
            (Field::MessageId, "messageId"),
            (Field::AnonymousId, "anonymousId"),
            (Field::UserId, "userId"),
            (Field::Event, "event"),
            (Field::Name, "name"),
            (Field::Category, "category"),
            (Field::GroupId, "groupId"),
            (Field::PreviousId, "previousId"),
        ];
        for (field, key) in strings {
            if let Some(v) = self.get(field) {
                write_key(out, key);
                write_json_string(out, v);
            }
        }
        write_key(out, "timestamp");
        write_json_string(out, &format_iso8601(self.time_ms));
        for (v, key) in [
            (self.original_timestamp_ms(), "originalTimestamp"),
            (self.sent_at_ms(), "sentAt"),
            (self.received_at_ms(), "receivedAt"),
        ] {
            if let Some(ms) = v {
                write_key(out, key);
                write_json_string(out, &format_iso8601(ms));
            }
        }
        for (field, key) in [
            (Field::Context, "context"),
            (Field::Integrations, "integrations"),
            (Field::Properties, "properties"),
            (Field::Traits, "traits"),
        ] {
            if let Some(raw) = self.get(field) {
                write_key(out, key);
                out.extend_from_slice(raw.as_bytes());
            }
        }
        out.push(b'}');
    }
}

fn write_key(out: &mut Vec<u8>, key: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
}

/// Appends `s` as a JSON string literal.
pub fn write_json_string(out: &mut Vec<u8>, s: &str) {
    // serde_json's escaping into a Vec cannot fail.
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

/// Where a line came from and what the source knows about it.
#[derive(Clone, Copy, Debug, Default)]
pub struct ParseContext {
    /// The receive time to assume when the record has no `receivedAt` (live
    /// sources pass their ingestion time; replayed files pass `None`).
    pub default_received_at_ms: Option<i64>,
}

// ---------------------------------------------------------------------------
// Wire format: borrowed deserialization.

/// A string that borrows from the input unless it contains escapes. Also
/// used for identifiers: the Segment spec makes ids strings, and a number or
/// any other JSON type is rejected as `wrong_type` (so `1` and `"1"` never
/// silently become the same person).
#[derive(Debug)]
struct Str<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Str<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Str<'a>>,
    #[serde(rename = "messageId", borrow)]
    message_id: Option<Str<'a>>,
    #[serde(rename = "anonymousId", borrow)]
    anonymous_id: Option<Str<'a>>,
    #[serde(rename = "userId", borrow)]
    user_id: Option<Str<'a>>,
    #[serde(borrow)]
    event: Option<Str<'a>>,
    #[serde(borrow)]
    name: Option<Str<'a>>,
    #[serde(borrow)]
    category: Option<Str<'a>>,
    #[serde(rename = "groupId", borrow)]
    group_id: Option<Str<'a>>,
    #[serde(rename = "previousId", borrow)]
    previous_id: Option<Str<'a>>,
    #[serde(borrow)]
    timestamp: Option<Str<'a>>,
    #[serde(rename = "originalTimestamp", borrow)]
    original_timestamp: Option<Str<'a>>,
    #[serde(rename = "sentAt", borrow)]
    sent_at: Option<Str<'a>>,
    #[serde(rename = "receivedAt", borrow)]
    received_at: Option<Str<'a>>,
    #[serde(borrow)]
    context: Option<&'a RawValue>,
    #[serde(borrow)]
    integrations: Option<&'a RawValue>,
    #[serde(borrow)]
    properties: Option<&'a RawValue>,
    #[serde(borrow)]
    traits: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct WireContext<'a> {
    #[serde(borrow)]
    traits: Option<WireEmailHolder<'a>>,
    #[serde(borrow)]
    device: Option<WireDevice<'a>>,
    #[serde(rename = "externalIds", borrow)]
    external_ids: Option<Vec<WireExternalId<'a>>>,
}

#[derive(Deserialize, Default)]
struct WireEmailHolder<'a> {
    #[serde(borrow)]
    email: Option<Str<'a>>,
}

#[derive(Deserialize, Default)]
struct WireDevice<'a> {
    #[serde(borrow)]
    id: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct WireExternalId<'a> {
    #[serde(borrow)]
    id: Str<'a>,
    #[serde(rename = "type", borrow)]
    kind: Str<'a>,
}

fn nonempty<'b>(v: &'b Option<Str<'_>>) -> Option<&'b str> {
    v.as_ref().map(|s| s.0.as_ref()).filter(|s| !s.is_empty())
}

/// A null JSON value is treated as absent, as Segment's libraries do.
fn non_null(raw: Option<&RawValue>) -> Option<&RawValue> {
    raw.filter(|r| r.get() != "null")
}

fn require_object(raw: Option<&RawValue>, key: &str) -> Result<(), Rejection> {
    match raw {
        Some(r) if !r.get().starts_with('{') => Err(Rejection::new(
            RejectReason::WrongType,
            format!("`{key}` must be a JSON object"),
        )),
        _ => Ok(()),
    }
}

fn classify_json_error(e: &serde_json::Error) -> Rejection {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => Rejection::new(RejectReason::WrongType, e.to_string()),
        Category::Eof => {
            Rejection::new(RejectReason::MalformedJson, format!("truncated JSON: {e}"))
        }
        Category::Syntax | Category::Io => {
            Rejection::new(RejectReason::MalformedJson, e.to_string())
        }
    }
}

/// Parses an ISO-8601 timestamp into milliseconds since the epoch.
///
/// Accepts RFC 3339 (`2026-01-02T03:04:05.678Z`, `+01:00` offsets), an
/// offset without colon (`+0100`), a `T` date-time without offset (read as
/// UTC) and a bare date. A date and time separated by a space without an
/// offset is rejected as ambiguous.
pub fn parse_iso8601_ms(s: &str) -> Option<i64> {
    use chrono::{DateTime, NaiveDate, NaiveDateTime};
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Some(dt.timestamp_millis());
    }
    if let Ok(dt) = NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f") {
        return Some(dt.and_utc().timestamp_millis());
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
        if let Ok(dt) = DateTime::parse_from_str(s, fmt) {
            return Some(dt.timestamp_millis());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return d
            .and_hms_opt(0, 0, 0)
            .map(|dt| dt.and_utc().timestamp_millis());
    }
    None
}

/// Formats milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn format_iso8601(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(dt) => dt.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        None => ms.to_string(),
    }
}

fn parse_time(field: &str, v: &Option<Str<'_>>) -> Result<Option<i64>, Rejection> {
    match v {
        None => Ok(None),
        Some(s) => parse_iso8601_ms(&s.0).map(Some).ok_or_else(|| {
            Rejection::new(
                RejectReason::InvalidTimestamp,
                format!(
                    "`{field}` is not an ISO-8601 timestamp: {:?}",
                    truncate(&s.0, 64)
                ),
            )
        }),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A deterministic `messageId` for a record that has none: a hash of its bytes,
/// so that an exact re-send of the same line gets the same id.
pub fn synthetic_message_id(line: &[u8]) -> String {
    format!("weft-{:032x}", xxhash_rust::xxh3::xxh3_128(line))
}

/// Builds the one text buffer of an [`Event`].
struct TextBuilder {
    text: String,
    starts: [u32; FIELD_COUNT],
    ends: [u32; FIELD_COUNT],
}

impl TextBuilder {
    fn with_capacity(n: usize) -> Self {
        TextBuilder {
            text: String::with_capacity(n),
            starts: [ABSENT; FIELD_COUNT],
            ends: [0; FIELD_COUNT],
        }
    }
    fn push_str(&mut self, s: &str) -> [u32; 2] {
        let start = self.text.len() as u32;
        self.text.push_str(s);
        [start, self.text.len() as u32]
    }
    fn set(&mut self, field: Field, s: Option<&str>) {
        if let Some(s) = s {
            let [a, b] = self.push_str(s);
            self.starts[field as usize] = a;
            self.ends[field as usize] = b;
        }
    }
}

/// Parses and validates one JSON line into an [`Event`].
///
/// `line` is the raw record without its trailing newline.
pub fn parse_event(line: &[u8], cx: &ParseContext) -> Result<Event, Rejection> {
    // STEP 1. Cheap checks on the bytes.
    if line.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(Rejection::new(RejectReason::Empty, "empty line"));
    }
    if line.len() > MAX_EVENT_BYTES {
        return Err(Rejection::new(
            RejectReason::Oversize,
            format!(
                "event is {} bytes; the limit is {} bytes",
                line.len(),
                MAX_EVENT_BYTES
            ),
        ));
    }
    let text = std::str::from_utf8(line).map_err(|e| {
        Rejection::new(
            RejectReason::InvalidUtf8,
            format!("invalid UTF-8 at byte {}", e.valid_up_to()),
        )
    })?;
    let first = text.trim_start().as_bytes().first().copied();
    if first != Some(b'{') {
        // Distinguish "valid JSON but not an object" from garbage.
        return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => Rejection::new(RejectReason::NotAnObject, "a record must be a JSON object"),
            Err(e) => classify_json_error(&e),
        });
    }

    if let Some(depth) = exceeds_depth(text.as_bytes(), MAX_NESTING) {
        return Err(Rejection::new(
            RejectReason::MalformedJson,
            format!("JSON nested deeper than {MAX_NESTING} levels (at byte {depth})"),
        ));
    }

    // STEP 2. Borrowed deserialization.
    let wire: Wire<'_> = serde_json::from_str(text).map_err(|e| classify_json_error(&e))?;

    // STEP 3. Semantic validation.
    let kind = match &wire.kind {
        None => {
            return Err(Rejection::new(
                RejectReason::UnknownType,
                "`type` is missing",
            ))
        }
        Some(t) => EventType::from_wire(&t.0).ok_or_else(|| {
            Rejection::new(
                RejectReason::UnknownType,
                format!(
                    "`type` is {:?}; expected track, identify, page, screen, group or alias",
                    truncate(&t.0, 40)
                ),
            )
        })?,
    };
    let user_id = nonempty(&wire.user_id);
    let anonymous_id = nonempty(&wire.anonymous_id);
    let previous_id = nonempty(&wire.previous_id);
    let group_id = nonempty(&wire.group_id);
    if kind == EventType::Alias {
        if previous_id.is_none() || user_id.is_none() {
            return Err(Rejection::new(
                RejectReason::MissingId,
                "alias needs both `previousId` and `userId`",
            ));
        }
    } else if user_id.is_none() && anonymous_id.is_none() {
        return Err(Rejection::new(
            RejectReason::MissingId,
            "either `userId` or `anonymousId` is required",
        ));
    }
    let event_name = wire.event.as_ref().map(|s| s.0.as_ref());
    if kind == EventType::Track && event_name.is_none_or(str::is_empty) {
        return Err(Rejection::new(
            RejectReason::MissingField,
            "track needs a non-empty `event`",
        ));
    }
    if kind == EventType::Group && group_id.is_none() {
        return Err(Rejection::new(
            RejectReason::MissingField,
            "group needs a `groupId`",
        ));
    }
    let context = non_null(wire.context);
    let integrations = non_null(wire.integrations);
    let properties = non_null(wire.properties);
    let traits = non_null(wire.traits);
    require_object(context, "context")?;
    require_object(integrations, "integrations")?;
    require_object(properties, "properties")?;
    require_object(traits, "traits")?;

    let timestamp = parse_time("timestamp", &wire.timestamp)?;
    let original = parse_time("originalTimestamp", &wire.original_timestamp)?;
    let sent_at = parse_time("sentAt", &wire.sent_at)?;
    let received_at = parse_time("receivedAt", &wire.received_at)?.or(cx.default_received_at_ms);
    // Segment's resolution: an explicit timestamp wins; otherwise correct the
    // client clock by the sentAt/receivedAt skew.
    let time_ms = match (timestamp, original, sent_at, received_at) {
        (Some(t), ..) => t,
        (None, Some(o), Some(s), Some(r)) => r - (s - o),
        (None, Some(o), ..) => o,
        (None, None, _, Some(r)) => r,
        (None, None, _, None) => {
            return Err(Rejection::new(
                RejectReason::MissingTimestamp,
                "no `timestamp`, `originalTimestamp` or `receivedAt`",
            ))
        }
    };

    let synthetic;
    let message_id = match wire
        .message_id
        .as_ref()
        .map(|s| s.0.as_ref())
        .filter(|s| !s.is_empty())
    {
        Some(m) => {
            if m.chars().count() > MAX_MESSAGE_ID_CHARS {
                return Err(Rejection::new(
                    RejectReason::MessageIdTooLong,
                    format!(
                        "`messageId` has {} characters; the limit is {}",
                        m.chars().count(),
                        MAX_MESSAGE_ID_CHARS
                    ),
                ));
            }
            m
        }
        None => {
            synthetic = synthetic_message_id(line);
            &synthetic
        }
    };

    // STEP 4. Identifiers nested in context (and traits.email).
    let wire_cx: WireContext<'_> = match context {
        Some(raw) => serde_json::from_str(raw.get())
            .map_err(|e| Rejection::new(RejectReason::WrongType, format!("in `context`: {e}")))?,
        None => WireContext::default(),
    };
    let context_email = wire_cx.traits.as_ref().and_then(|t| t.email.as_ref());
    let traits_email: Option<WireEmailHolder<'_>> = match (traits, context_email) {
        (Some(raw), None) => serde_json::from_str(raw.get())
            .map_err(|e| Rejection::new(RejectReason::WrongType, format!("in `traits`: {e}")))?,
        _ => None,
    };
    let email = wire_cx
        .traits
        .as_ref()
        .and_then(|t| t.email.as_ref())
        .or_else(|| traits_email.as_ref().and_then(|t| t.email.as_ref()))
        .map(|s| s.0.as_ref())
        .filter(|s| !s.is_empty());
    let device_id = wire_cx
        .device
        .as_ref()
        .and_then(|d| d.id.as_ref())
        .map(|s| s.0.as_ref());

    // STEP 5. Copy into one buffer.
    let raw_len = context.map_or(0, |r| r.get().len())
        + integrations.map_or(0, |r| r.get().len())
        + properties.map_or(0, |r| r.get().len())
        + traits.map_or(0, |r| r.get().len());
    let mut b = TextBuilder::with_capacity(raw_len + 128);
    b.set(Field::MessageId, Some(message_id));
    b.set(Field::AnonymousId, anonymous_id);
    b.set(Field::UserId, user_id);
    b.set(Field::Event, event_name);
    b.set(Field::Name, wire.name.as_ref().map(|s| s.0.as_ref()));
    b.set(
        Field::Category,
        wire.category.as_ref().map(|s| s.0.as_ref()),
    );
    b.set(Field::GroupId, group_id);
    b.set(Field::PreviousId, previous_id);
    b.set(Field::Email, email);
    b.set(Field::DeviceId, device_id);
    b.set(Field::Context, context.map(RawValue::get));
    b.set(Field::Integrations, integrations.map(RawValue::get));
    b.set(Field::Properties, properties.map(RawValue::get));
    b.set(Field::Traits, traits.map(RawValue::get));
    let external_ids: Box<[[u32; 4]]> = match &wire_cx.external_ids {
        None => Box::new([]),
        Some(list) => list
            .iter()
            .map(|x| {
                let [a, b1] = b.push_str(&x.kind.0);
                let [c, d] = b.push_str(&x.id.0);
                [a, b1, c, d]
            })
            .collect(),
    };
    Ok(Event {
        time_ms,
        kind,
        record: Arc::new(Record {
            received_at_ms: received_at,
            sent_at_ms: sent_at,
            original_timestamp_ms: original,
            starts: b.starts,
            ends: b.ends,
            external_ids,
            text: b.text.into_boxed_str(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Event {
        parse_event(s.as_bytes(), &ParseContext::default()).unwrap_or_else(|e| panic!("{s}: {e}"))
    }
    fn err(s: &[u8]) -> RejectReason {
        parse_event(s, &ParseContext::default())
            .expect_err("should be rejected")
            .reason
    }

    #[test]
    fn parses_every_call_type() {
        let e = ok(
            r#"{"type":"track","event":"Order Completed","userId":"u1","messageId":"m1","timestamp":"2026-01-02T03:04:05.678Z","properties":{"revenue":12.5}}"#,
        );
        assert_eq!(e.kind, EventType::Track);
        assert_eq!(e.get(Field::Event), Some("Order Completed"));
        assert_eq!(e.get(Field::Properties), Some(r#"{"revenue":12.5}"#));
        assert_eq!(e.time_ms, 1_767_323_045_678);
        let e = ok(
            r#"{"type":"identify","anonymousId":"a1","traits":{"email":"x@y.z","plan":"pro"},"timestamp":"2026-01-02T03:04:05Z"}"#,
        );
        assert_eq!(e.get(Field::Email), Some("x@y.z"));
        assert!(e.message_id().starts_with("weft-"));
        let e = ok(
            r#"{"type":"page","name":"Home","category":"Docs","anonymousId":"a1","timestamp":"2026-01-02"}"#,
        );
        assert_eq!(e.get(Field::Name), Some("Home"));
        let e = ok(
            r#"{"type":"screen","name":"Cart","userId":"42","context":{"device":{"id":"d-1"},"externalIds":[{"id":"c9","type":"crm_id","collection":"users","encoding":"none"}]},"timestamp":"2026-01-02T03:04:05+02:00"}"#,
        );
        assert_eq!(e.user_id(), Some("42"));
        assert_eq!(e.get(Field::DeviceId), Some("d-1"));
        assert_eq!(e.external_ids().collect::<Vec<_>>(), vec![("crm_id", "c9")]);
        let e = ok(
            r#"{"type":"group","groupId":"acme","userId":"u1","traits":{"name":"Acme"},"timestamp":"2026-01-02T03:04:05Z"}"#,
        );
        assert_eq!(e.get(Field::GroupId), Some("acme"));
        let e = ok(
            r#"{"type":"alias","previousId":"a1","userId":"u1","timestamp":"2026-01-02T03:04:05Z"}"#,
        );
        assert_eq!(e.get(Field::PreviousId), Some("a1"));
    }

    #[test]
    fn json_round_trip_preserves_the_event() {
        let src = r#"{"type":"track","event":"A \"quoted\" name","userId":"u\u00e91","anonymousId":"a1","messageId":"m1","timestamp":"2026-01-02T03:04:05.678Z","originalTimestamp":"2026-01-02T03:04:05.000Z","sentAt":"2026-01-02T03:04:06.000Z","receivedAt":"2026-01-02T03:04:06.500Z","context":{"traits":{"email":"e@x.io"},"device":{"id":"d1"}},"integrations":{"All":true},"properties":{"a":[1,2,{"b":null}]},"traits":{"plan":"pro"}}"#;
        let e = ok(src);
        let mut out = Vec::new();
        e.write_json(&mut out);
        let again = parse_event(&out, &ParseContext::default()).unwrap();
        assert_eq!(e, again);
        assert_eq!(again.user_id(), Some("u\u{e9}1"));
        assert_eq!(again.get(Field::Event), Some("A \"quoted\" name"));
        // And through bincode-like serde (what timely uses between processes).
        let json = serde_json::to_string(&e).unwrap();
        let back: Event = serde_json::from_str(&json).unwrap();
        assert_eq!(e, back);
    }

    #[test]
    fn timestamp_resolution_corrects_client_skew() {
        let e = ok(
            r#"{"type":"page","anonymousId":"a","originalTimestamp":"2026-01-01T00:00:00Z","sentAt":"2026-01-01T00:00:10Z","receivedAt":"2026-01-01T00:00:05Z"}"#,
        );
        assert_eq!(e.time_ms, parse_iso8601_ms("2025-12-31T23:59:55Z").unwrap());
        let e = parse_event(
            br#"{"type":"page","anonymousId":"a"}"#,
            &ParseContext {
                default_received_at_ms: Some(7),
            },
        )
        .unwrap();
        assert_eq!(e.time_ms, 7);
    }

    #[test]
    fn rejections_carry_reasons() {
        assert_eq!(err(b""), RejectReason::Empty);
        assert_eq!(err(b"   "), RejectReason::Empty);
        assert_eq!(
            err(b"{\"type\":\"track\",\"us"),
            RejectReason::MalformedJson
        );
        assert_eq!(err(b"[1,2]"), RejectReason::NotAnObject);
        assert_eq!(err(b"nonsense"), RejectReason::MalformedJson);
        assert_eq!(
            err(b"{\"type\":\"page\",\"userId\":\"u\xff\"}"),
            RejectReason::InvalidUtf8
        );
        assert_eq!(
            err(br#"{"type":"page","userId":{"a":1},"timestamp":"2026-01-01"}"#),
            RejectReason::WrongType
        );
        assert_eq!(
            err(br#"{"type":"page","userId":"u","properties":5,"timestamp":"2026-01-01"}"#),
            RejectReason::WrongType
        );
        assert_eq!(
            err(br#"{"type":"page","userId":42,"timestamp":"2026-01-01"}"#),
            RejectReason::WrongType
        );
        assert_eq!(
            err(br#"{"type":"track","event":7,"userId":"u","timestamp":"2026-01-01"}"#),
            RejectReason::WrongType
        );
        assert_eq!(
            err(br#"{"type":"page","timestamp":"2026-01-01"}"#),
            RejectReason::MissingId
        );
        assert_eq!(
            err(br#"{"type":"alias","userId":"u","timestamp":"2026-01-01"}"#),
            RejectReason::MissingId
        );
        assert_eq!(
            err(br#"{"type":"track","userId":"u","timestamp":"2026-01-01"}"#),
            RejectReason::MissingField
        );
        assert_eq!(
            err(br#"{"type":"group","userId":"u","timestamp":"2026-01-01"}"#),
            RejectReason::MissingField
        );
        assert_eq!(
            err(br#"{"type":"bogus","userId":"u","timestamp":"2026-01-01"}"#),
            RejectReason::UnknownType
        );
        assert_eq!(
            err(br#"{"userId":"u","timestamp":"2026-01-01"}"#),
            RejectReason::UnknownType
        );
        assert_eq!(
            err(br#"{"type":"page","userId":"u","timestamp":"yesterday"}"#),
            RejectReason::InvalidTimestamp
        );
        assert_eq!(
            err(br#"{"type":"page","userId":"u"}"#),
            RejectReason::MissingTimestamp
        );
        let long = format!(
            r#"{{"type":"page","userId":"u","messageId":"{}","timestamp":"2026-01-01"}}"#,
            "m".repeat(101)
        );
        assert_eq!(err(long.as_bytes()), RejectReason::MessageIdTooLong);
        let big = format!(
            r#"{{"type":"page","userId":"u","properties":{{"x":"{}"}}}}"#,
            "x".repeat(MAX_EVENT_BYTES)
        );
        assert_eq!(err(big.as_bytes()), RejectReason::Oversize);
        let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        assert_eq!(err(deep.as_bytes()), RejectReason::NotAnObject);
        let deep_obj = format!(
            r#"{{"type":"page","userId":"u","timestamp":"2026-01-01","properties":{{"a":{}1{}}}}}"#,
            "[".repeat(3000),
            "]".repeat(3000)
        );
        assert!(deep_obj.len() < MAX_EVENT_BYTES);
        assert_eq!(err(deep_obj.as_bytes()), RejectReason::MalformedJson);
    }

    #[test]
    fn null_objects_are_absent_and_unknown_fields_ignored() {
        let e = ok(
            r#"{"type":"page","userId":"u","timestamp":"2026-01-01","properties":null,"version":2,"channel":"server"}"#,
        );
        assert_eq!(e.get(Field::Properties), None);
    }

    #[test]
    fn iso8601_forms() {
        let base = parse_iso8601_ms("2026-03-04T05:06:07Z").unwrap();
        assert_eq!(parse_iso8601_ms("2026-03-04T05:06:07"), Some(base));
        assert_eq!(parse_iso8601_ms("2026-03-04 05:06:07"), None);
        assert_eq!(parse_iso8601_ms("2026-03-04 05:06:07Z"), Some(base));
        assert_eq!(parse_iso8601_ms("2026-03-04T06:06:07+01:00"), Some(base));
        assert_eq!(parse_iso8601_ms("2026-03-04T06:06:07+0100"), Some(base));
        assert_eq!(
            parse_iso8601_ms("2026-03-04T05:06:07.250Z"),
            Some(base + 250)
        );
        assert_eq!(format_iso8601(base + 250), "2026-03-04T05:06:07.250Z");
        assert_eq!(parse_iso8601_ms("2026-13-04T05:06:07Z"), None);
        assert_eq!(parse_iso8601_ms("12345"), None);
    }
}

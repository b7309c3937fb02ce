//! Segment HTTP Tracking API requests: what is refused at the door, and how
//! an accepted message becomes one stored event.
//!
//! A request is checked in this order; the first failure refuses the whole
//! request (nothing of it is stored):
//!
//! 1. `Content-Encoding`: `gzip` or none/`identity` (else 415);
//! 2. the decoded body is at most [`MAX_REQUEST_BYTES`] (500 KiB) (else 400
//!    `request_too_large`); gzip is decoded with that limit, so a small
//!    compressed body cannot expand without bound;
//! 3. it is a JSON object (else 400 `invalid_json`, with serde's reason and
//!    position); for `/v1/batch`, `batch` is an array of at most
//!    [`MAX_BATCH_EVENTS`] (2,500) objects (else 400 `invalid_batch` /
//!    `too_many_events`);
//! 4. each stored event is at most [`MAX_EVENT_BYTES`] (32 KiB) (else 400
//!    `event_too_large`, naming the message).
//!
//! What Segment accepts and drops later (a missing `userId`, a track without
//! `event`, a bad timestamp) is accepted here too: the job's source validates
//! every stored event with the same code as file and Kafka sources, and
//! rejected ones go to the job's `errors` output.
//!
//! ## The stored event
//!
//! Each message is kept key by key, as the client sent it, except that:
//!
//! * `type` is the endpoint's (`/v1/track` stores `"track"`); in a batch each
//!   message keeps its own;
//! * `writeKey` is removed (a credential is not an event field);
//! * `messageId` is a new random UUID (version 4) when missing, null or empty;
//! * `receivedAt` is the API's receive time when missing or null;
//! * a batch's `sentAt` fills in messages without one; its `context` and
//!   `integrations` are merged into each message's, key by key, the
//!   message's own keys winning.
//!
//! The result is one line of JSON (newlines between tokens become spaces;
//! JSON strings cannot hold raw newlines). The size limit applies to that
//! line, fields added here included, so every accepted event also passes the
//! source's size check.

use std::borrow::Cow;
use std::fmt;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use weft_dataflows::event::{format_iso8601, write_json_string};

pub use weft_dataflows::event::MAX_EVENT_BYTES;

/// The largest request body, after gzip decoding (Segment: 500 KB per batch).
pub const MAX_REQUEST_BYTES: usize = 500 * 1024;

/// The most messages in one `/v1/batch` request.
pub const MAX_BATCH_EVENTS: usize = 2_500;

/// An endpoint of the collection API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    /// `POST /v1/track`.
    Track,
    /// `POST /v1/identify`.
    Identify,
    /// `POST /v1/page`.
    Page,
    /// `POST /v1/screen`.
    Screen,
    /// `POST /v1/group`.
    Group,
    /// `POST /v1/alias`.
    Alias,
    /// `POST /v1/batch`: several messages, each with its own `type`.
    Batch,
}

impl Call {
    /// Every endpoint.
    pub const ALL: [Call; 7] = [
        Call::Track,
        Call::Identify,
        Call::Page,
        Call::Screen,
        Call::Group,
        Call::Alias,
        Call::Batch,
    ];

    /// The last path segment (`"track"` for `/v1/track`), which is also the
    /// `type` a single call stores.
    pub fn as_str(self) -> &'static str {
        match self {
            Call::Track => "track",
            Call::Identify => "identify",
            Call::Page => "page",
            Call::Screen => "screen",
            Call::Group => "group",
            Call::Alias => "alias",
            Call::Batch => "batch",
        }
    }
}

/// Why a request was refused: the HTTP status, a machine-readable code and
/// one sentence for a human.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status (400, 401, 415, 503).
    pub status: u16,
    /// A stable code: `invalid_json`, `event_too_large`, ...
    pub code: &'static str,
    /// What was wrong and what to do.
    pub message: String,
}

impl Refusal {
    /// A 400 Bad Request.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            status: 400,
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for Refusal {}

/// One accepted message, ready to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectedEvent {
    /// The event as one line of JSON, without the newline.
    pub json: Vec<u8>,
    /// `userId`, else `anonymousId`, when a string: the Kafka record key, so
    /// that one person's events stay in one partition, in order.
    pub key: Option<String>,
}

/// An accepted request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collected {
    /// `writeKey` from the body, if there was one.
    pub write_key: Option<String>,
    /// The messages, in request order.
    pub events: Vec<CollectedEvent>,
}

/// Decodes a request body by its `Content-Encoding`, refusing a decoded body
/// over [`MAX_REQUEST_BYTES`].
pub fn decode_body<'b>(
    body: &'b [u8],
    content_encoding: Option<&str>,
) -> Result<Cow<'b, [u8]>, Refusal> {
    let encoding = content_encoding.map(|e| e.trim().to_ascii_lowercase());
    let decoded = match encoding.as_deref() {
        None | Some("") | Some("identity") => Cow::Borrowed(body),
        Some("gzip") | Some("x-gzip") => {
            let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(MAX_REQUEST_BYTES));
            flate2::read::MultiGzDecoder::new(body)
                .take(MAX_REQUEST_BYTES as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| {
                    Refusal::bad_request("invalid_gzip", format!("the gzip body is corrupt: {e}"))
                })?;
            Cow::Owned(out)
        }
        Some(other) => {
            return Err(Refusal {
                status: 415,
                code: "unsupported_encoding",
                message: format!(
                    "Content-Encoding {other:?} is not supported; send gzip or no encoding"
                ),
            })
        }
    };
    if decoded.len() > MAX_REQUEST_BYTES {
        let size = match &decoded {
            Cow::Borrowed(b) => format!("{} bytes", b.len()),
            Cow::Owned(_) => format!("more than {MAX_REQUEST_BYTES} bytes after gzip decoding"),
        };
        return Err(Refusal::bad_request(
            "request_too_large",
            format!(
                "the request body is {size}; the limit is {MAX_REQUEST_BYTES} bytes (500 KB): send fewer events per request"
            ),
        ));
    }
    Ok(decoded)
}

/// Parses a decoded request body of endpoint `call` into the events to
/// store; `received_ms` is the receive time filled in as `receivedAt`.
pub fn parse_request(call: Call, body: &[u8], received_ms: i64) -> Result<Collected, Refusal> {
    if body.len() > MAX_REQUEST_BYTES {
        return Err(Refusal::bad_request(
            "request_too_large",
            format!(
                "the request body is {} bytes; the limit is {MAX_REQUEST_BYTES} bytes (500 KB)",
                body.len()
            ),
        ));
    }
    let text = std::str::from_utf8(body).map_err(|e| {
        Refusal::bad_request(
            "invalid_json",
            format!("the body is not UTF-8 (at byte {})", e.valid_up_to()),
        )
    })?;
    let top: Object<'_> = serde_json::from_str(text).map_err(|e| {
        Refusal::bad_request(
            "invalid_json",
            format!("the body is not a JSON object: {e}"),
        )
    })?;
    let received_at = format_iso8601(received_ms);
    match call {
        Call::Batch => parse_batch(top, &received_at),
        single => {
            let write_key = string_field(&top, "writeKey");
            let envelope = Envelope::default();
            let event = store_message(top, Some(single.as_str()), &envelope, &received_at)
                .map_err(|m| Refusal::bad_request("event_too_large", m))?;
            Ok(Collected {
                write_key,
                events: vec![event],
            })
        }
    }
}

/// What a batch's envelope adds to each of its messages.
#[derive(Default)]
struct Envelope<'a> {
    context: Option<Object<'a>>,
    integrations: Option<Object<'a>>,
    sent_at: Option<&'a RawValue>,
}

fn parse_batch(top: Object<'_>, received_at: &str) -> Result<Collected, Refusal> {
    let write_key = string_field(&top, "writeKey");
    let mut batch = None;
    let mut envelope = Envelope::default();
    for (key, value) in &top.0 {
        match key.as_ref() {
            "batch" => batch = Some(*value),
            "context" => envelope.context = object_of(value),
            "integrations" => envelope.integrations = object_of(value),
            "sentAt" if value.get() != "null" => envelope.sent_at = Some(*value),
            _ => {}
        }
    }
    let Some(batch) = batch else {
        return Err(Refusal::bad_request(
            "invalid_batch",
            "the body has no `batch` array of messages",
        ));
    };
    let items: Vec<&RawValue> = serde_json::from_str(batch.get()).map_err(|_| {
        Refusal::bad_request("invalid_batch", "`batch` must be an array of messages")
    })?;
    if items.len() > MAX_BATCH_EVENTS {
        return Err(Refusal::bad_request(
            "too_many_events",
            format!(
                "the batch has {} messages; the limit is {MAX_BATCH_EVENTS}: split it",
                items.len()
            ),
        ));
    }
    let mut events = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let message: Object<'_> = serde_json::from_str(item.get()).map_err(|_| {
            Refusal::bad_request("invalid_batch", format!("batch[{i}] is not a JSON object"))
        })?;
        let event = store_message(message, None, &envelope, received_at)
            .map_err(|m| Refusal::bad_request("event_too_large", format!("batch[{i}]: {m}")))?;
        events.push(event);
    }
    Ok(Collected { write_key, events })
}

/// Builds the stored line of one message (see the module docs); the error
/// is the size refusal's message.
fn store_message(
    mut message: Object<'_>,
    call_type: Option<&str>,
    envelope: &Envelope<'_>,
    received_at: &str,
) -> Result<CollectedEvent, String> {
    message.remove("writeKey");
    let key = string_field(&message, "userId").or_else(|| string_field(&message, "anonymousId"));
    let mut out = Vec::with_capacity(512);
    out.push(b'{');
    let mut first = true;
    let mut field = |out: &mut Vec<u8>, k: &str| {
        if !first {
            out.push(b',');
        }
        first = false;
        write_json_string(out, k);
        out.push(b':');
    };
    if let Some(t) = call_type {
        message.remove("type");
        field(&mut out, "type");
        write_json_string(&mut out, t);
    }
    let mut has_message_id = false;
    let mut has_received_at = false;
    let mut has_sent_at = false;
    let mut has_context = false;
    let mut has_integrations = false;
    for (k, v) in &message.0 {
        let value = v.get();
        match k.as_ref() {
            "messageId" if value == "null" || value == "\"\"" => continue,
            "receivedAt" | "sentAt" if value == "null" => continue,
            "messageId" => has_message_id = true,
            "receivedAt" => has_received_at = true,
            "sentAt" => has_sent_at = true,
            "context" => {
                has_context = true;
                field(&mut out, k);
                merge_into(&mut out, v, envelope.context.as_ref());
                continue;
            }
            "integrations" => {
                has_integrations = true;
                field(&mut out, k);
                merge_into(&mut out, v, envelope.integrations.as_ref());
                continue;
            }
            _ => {}
        }
        field(&mut out, k);
        out.extend_from_slice(value.as_bytes());
    }
    if !has_message_id {
        field(&mut out, "messageId");
        write_json_string(&mut out, &new_message_id());
    }
    if !has_received_at {
        field(&mut out, "receivedAt");
        write_json_string(&mut out, received_at);
    }
    if let (false, Some(s)) = (has_sent_at, envelope.sent_at) {
        field(&mut out, "sentAt");
        out.extend_from_slice(s.get().as_bytes());
    }
    if let (false, Some(c)) = (has_context, &envelope.context) {
        field(&mut out, "context");
        c.write(&mut out);
    }
    if let (false, Some(i)) = (has_integrations, &envelope.integrations) {
        field(&mut out, "integrations");
        i.write(&mut out);
    }
    out.push(b'}');
    // Raw newlines in JSON text are whitespace between tokens (strings must
    // escape them): one event, one line.
    for b in out.iter_mut() {
        if *b == b'\n' || *b == b'\r' {
            *b = b' ';
        }
    }
    if out.len() > MAX_EVENT_BYTES {
        return Err(format!(
            "the event is {} bytes (with the fields the API adds: messageId, receivedAt, the batch's context); the limit is {MAX_EVENT_BYTES} bytes (32 KB)",
            out.len()
        ));
    }
    Ok(CollectedEvent { json: out, key })
}

/// Writes `own` (a message's `context` or `integrations`) merged over the
/// batch's `shared` object; a non-object is written unchanged.
fn merge_into(out: &mut Vec<u8>, own: &RawValue, shared: Option<&Object<'_>>) {
    match (shared, object_of(own)) {
        (Some(shared), Some(mine)) => {
            let mut merged = Object(
                shared
                    .0
                    .iter()
                    .filter(|(k, _)| !mine.contains(k))
                    .cloned()
                    .collect(),
            );
            merged.0.extend(mine.0);
            merged.write(out);
        }
        _ => out.extend_from_slice(own.get().as_bytes()),
    }
}

/// A JSON object's members in order, values kept as raw JSON text.
#[derive(Clone, Debug, Default)]
struct Object<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Object<'a> {
    fn remove(&mut self, key: &str) {
        self.0.retain(|(k, _)| k != key);
    }

    fn contains(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json_string(out, k);
            out.push(b':');
            out.extend_from_slice(v.get().as_bytes());
        }
        out.push(b'}');
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Object<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Members<'a> {
            type Value = Object<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(12));
                while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
                    let v: &'de RawValue = map.next_value()?;
                    members.push((k, v));
                }
                Ok(Object(members))
            }
        }
        d.deserialize_map(Members(std::marker::PhantomData))
    }
}

/// An object key that borrows from the input unless it has escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Key<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// The members of `raw` if it is a JSON object.
fn object_of<'a>(raw: &'a RawValue) -> Option<Object<'a>> {
    if raw.get().starts_with('{') {
        serde_json::from_str(raw.get()).ok()
    } else {
        None
    }
}

/// The value of `key` if it is a non-empty JSON string.
fn string_field(object: &Object<'_>, key: &str) -> Option<String> {
    let (_, v) = object.0.iter().rev().find(|(k, _)| k == key)?;
    let s: String = serde_json::from_str(v.get()).ok()?;
    (!s.is_empty()).then_some(s)
}

/// A new random `messageId`: a version-4 UUID (`8-4-4-4-12` hex digits).
///
/// 128 bits hashed from a per-process random seed (from `/dev/urandom`,
/// else the standard library's random hash keys) and a counter: unique
/// within a process, unpredictable across processes.
pub fn new_message_id() -> String {
    static SEED: OnceLock<[u8; 16]> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = SEED.get_or_init(random_seed);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut input = [0u8; 24];
    input[..16].copy_from_slice(seed);
    input[16..].copy_from_slice(&n.to_le_bytes());
    let mut b = xxhash_rust::xxh3::xxh3_128(&input).to_le_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex =
        |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!(
        "{}-{}-{}-{}-{}",
        hex(0..4),
        hex(4..6),
        hex(6..8),
        hex(8..10),
        hex(10..16)
    )
}

fn random_seed() -> [u8; 16] {
    let mut seed = [0u8; 16];
    let from_os = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut seed));
    if from_os.is_err() {
        use std::hash::{BuildHasher, Hasher};
        for (i, chunk) in seed.chunks_mut(8).enumerate() {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(i);
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0),
            );
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    seed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const NOW: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

    fn events(call: Call, body: &str) -> Vec<Value> {
        parse_request(call, body.as_bytes(), NOW)
            .unwrap()
            .events
            .iter()
            .map(|e| {
                assert!(!e.json.contains(&b'\n'));
                serde_json::from_slice(&e.json).unwrap()
            })
            .collect()
    }

    fn refusal(call: Call, body: &[u8]) -> Refusal {
        parse_request(call, body, NOW).unwrap_err()
    }

    #[test]
    fn single_calls_take_the_endpoint_type_and_get_ids_and_receive_time() {
        for call in Call::ALL.into_iter().filter(|c| *c != Call::Batch) {
            let got = events(
                call,
                r#"{"userId":"u1","type":"other","writeKey":"secret","sentAt":"2026-01-01T00:00:00Z"}"#,
            );
            let e = &got[0];
            assert_eq!(e["type"], call.as_str());
            assert_eq!(e["userId"], "u1");
            assert_eq!(e["receivedAt"], "2026-01-01T00:00:00.000Z");
            assert_eq!(e["sentAt"], "2026-01-01T00:00:00Z");
            assert!(e.get("writeKey").is_none(), "the write key is not stored");
            let id = e["messageId"].as_str().unwrap();
            assert_eq!(id.len(), 36, "{id}");
            assert_eq!(&id[14..15], "4", "version 4: {id}");
        }
        let r = parse_request(Call::Track, br#"{"writeKey":"k","event":"E"}"#, NOW).unwrap();
        assert_eq!(r.write_key.as_deref(), Some("k"));
    }

    #[test]
    fn given_message_id_and_received_at_are_kept() {
        let e = &events(
            Call::Track,
            r#"{"messageId":"m-1","receivedAt":"2025-01-01T00:00:00Z","event":"E","anonymousId":"a"}"#,
        )[0];
        assert_eq!(e["messageId"], "m-1");
        assert_eq!(e["receivedAt"], "2025-01-01T00:00:00Z");
        // Null and empty ids are filled in.
        let e = &events(Call::Track, r#"{"messageId":null,"receivedAt":null}"#)[0];
        assert_eq!(e["messageId"].as_str().unwrap().len(), 36);
        assert_eq!(e["receivedAt"], "2026-01-01T00:00:00.000Z");
        let e = &events(Call::Track, r#"{"messageId":""}"#)[0];
        assert_eq!(e["messageId"].as_str().unwrap().len(), 36);
    }

    #[test]
    fn batches_merge_the_envelope_into_each_message() {
        let got = events(
            Call::Batch,
            r#"{
              "batch": [
                {"type":"track","event":"A","userId":"u","context":{"ip":"1.2.3.4","library":{"name":"mine"}}},
                {"type":"identify","userId":"u","sentAt":"2026-01-01T00:00:01Z","integrations":{"All":false}},
                {"type":"page","anonymousId":"a","context":"not an object"}
              ],
              "context": {"library":{"name":"envelope"},"locale":"en"},
              "integrations": {"All":true,"Mixpanel":false},
              "sentAt": "2026-01-01T00:00:00Z",
              "writeKey": "k"
            }"#,
        );
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[0]["context"],
            json!({"locale":"en","ip":"1.2.3.4","library":{"name":"mine"}})
        );
        assert_eq!(got[0]["integrations"], json!({"All":true,"Mixpanel":false}));
        assert_eq!(got[0]["sentAt"], "2026-01-01T00:00:00Z");
        assert_eq!(got[1]["sentAt"], "2026-01-01T00:00:01Z");
        assert_eq!(
            got[1]["integrations"],
            json!({"Mixpanel":false,"All":false})
        );
        assert_eq!(
            got[1]["context"],
            json!({"library":{"name":"envelope"},"locale":"en"})
        );
        assert_eq!(
            got[2]["context"], "not an object",
            "left for the source to reject"
        );
        let ids: std::collections::BTreeSet<_> =
            got.iter().map(|e| e["messageId"].to_string()).collect();
        assert_eq!(ids.len(), 3, "distinct message ids");
        let r = parse_request(Call::Batch, br#"{"batch":[],"writeKey":"k"}"#, NOW).unwrap();
        assert_eq!((r.write_key.as_deref(), r.events.len()), (Some("k"), 0));
    }

    #[test]
    fn keys_route_one_person_to_one_partition() {
        let r = parse_request(
            Call::Batch,
            br#"{"batch":[{"userId":"u","anonymousId":"a"},{"anonymousId":"a"},{"userId":5}]}"#,
            NOW,
        )
        .unwrap();
        let keys: Vec<_> = r.events.iter().map(|e| e.key.as_deref()).collect();
        assert_eq!(keys, vec![Some("u"), Some("a"), None]);
    }

    #[test]
    fn pretty_json_becomes_one_line() {
        let e = &events(
            Call::Identify,
            "{\n  \"userId\": \"u\",\r\n  \"traits\": {\n    \"name\": \"a\\nb\"\n  }\n}",
        )[0];
        assert_eq!(e["traits"]["name"], "a\nb");
    }

    #[test]
    fn refusals_say_which_limit() {
        let r = refusal(Call::Track, b"{\"event\": ");
        assert_eq!((r.status, r.code), (400, "invalid_json"));
        assert!(r.message.contains("line 1"), "{r}");
        let r = refusal(Call::Track, b"[1,2]");
        assert_eq!(r.code, "invalid_json");
        let r = refusal(Call::Batch, br#"{"batch":{"type":"track"}}"#);
        assert_eq!(r.code, "invalid_batch");
        let r = refusal(Call::Batch, br#"{"batch":[{},1]}"#);
        assert_eq!(r.code, "invalid_batch");
        assert!(r.message.contains("batch[1]"), "{r}");
        let r = refusal(Call::Batch, br#"{"events":[]}"#);
        assert_eq!(r.code, "invalid_batch");

        let big = "x".repeat(MAX_EVENT_BYTES);
        let r = refusal(Call::Track, format!(r#"{{"event":"{big}"}}"#).as_bytes());
        assert_eq!(r.code, "event_too_large");
        let body = format!(r#"{{"batch":[{{}},{{"event":"{big}"}}]}}"#);
        let r = refusal(Call::Batch, body.as_bytes());
        assert_eq!(r.code, "event_too_large");
        assert!(r.message.starts_with("batch[1]: "), "{r}");
        // The limit counts the fields the API adds.
        let room = MAX_EVENT_BYTES - r#"{"type":"track","event":""}"#.len();
        let body = format!(r#"{{"event":"{}"}}"#, "x".repeat(room));
        let r = refusal(Call::Track, body.as_bytes());
        assert_eq!(r.code, "event_too_large");
        assert!(r.message.contains("messageId, receivedAt"), "{r}");

        let msgs = vec![r#"{"type":"track"}"#; MAX_BATCH_EVENTS + 1].join(",");
        let r = refusal(Call::Batch, format!(r#"{{"batch":[{msgs}]}}"#).as_bytes());
        assert_eq!(r.code, "too_many_events");
        assert!(r.message.contains("2501"), "{r}");
        let msgs = vec![r#"{"type":"track"}"#; MAX_BATCH_EVENTS].join(",");
        assert!(parse_request(
            Call::Batch,
            format!(r#"{{"batch":[{msgs}]}}"#).as_bytes(),
            NOW
        )
        .is_ok());

        let pad = " ".repeat(MAX_REQUEST_BYTES);
        let r = refusal(Call::Batch, format!(r#"{{"batch":[]}}{pad}"#).as_bytes());
        assert_eq!(r.code, "request_too_large");
    }

    #[test]
    fn gzip_bodies_are_decoded_with_a_limit() {
        use flate2::write::GzEncoder;
        use std::io::Write;
        let gz = |data: &[u8]| {
            let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(data).unwrap();
            enc.finish().unwrap()
        };
        let body = br#"{"batch":[{"type":"track","event":"E","userId":"u"}]}"#;
        let compressed = gz(body);
        let plain = decode_body(&compressed, Some("gzip")).unwrap();
        assert_eq!(&plain[..], &body[..]);
        assert_eq!(&decode_body(body, None).unwrap()[..], &body[..]);
        assert_eq!(&decode_body(body, Some("identity")).unwrap()[..], &body[..]);
        let bomb = gz(&vec![b' '; 4 * MAX_REQUEST_BYTES]);
        assert!(bomb.len() < 20_000);
        let r = decode_body(&bomb, Some("GZIP")).unwrap_err();
        assert_eq!(r.code, "request_too_large");
        assert!(r.message.contains("after gzip decoding"), "{r}");
        let r = decode_body(b"not gzip", Some("gzip")).unwrap_err();
        assert_eq!((r.status, r.code), (400, "invalid_gzip"));
        let r = decode_body(body, Some("br")).unwrap_err();
        assert_eq!((r.status, r.code), (415, "unsupported_encoding"));
        let r = decode_body(&vec![b' '; MAX_REQUEST_BYTES + 1], None).unwrap_err();
        assert!(
            r.message
                .contains(&format!("{} bytes", MAX_REQUEST_BYTES + 1)),
            "{r}"
        );
    }

    #[test]
    fn message_ids_are_unique_uuids() {
        let ids: std::collections::BTreeSet<String> =
            (0..10_000).map(|_| new_message_id()).collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(10) {
            let parts: Vec<_> = id.split('-').map(str::len).collect();
            assert_eq!(parts, vec![8, 4, 4, 4, 12], "{id}");
            assert!(
                matches!(&id[19..20], "8" | "9" | "a" | "b"),
                "variant: {id}"
            );
        }
    }
}

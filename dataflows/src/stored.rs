//! Events at rest: the compressed form the long-lived state keeps.
//!
//! Events pass through most operators and are gone; two pieces of state keep
//! them for as long as they exist: the events-by-anchor arrangement (which
//! runtime definitions backfill from) and the Profile API's index. There an
//! event's kept text, a kilobyte of JSON of which half is `context`, was the
//! largest part of a job's memory. A [`StoredEvent`] keeps it compressed
//! with zstd and a dictionary trained on this process's first events: about
//! 200 bytes instead of 1,000 for typical Segment events (see
//! `docs/benchmarks.md`, End to end).
//!
//! ```text
//!  Event ── StoredEvent::store ──► [time, type, fingerprint | messageId | zstd(record)]
//!    ▲                                             │
//!    └──────────────── StoredEvent::load ──────────┘   (exact: the same Event)
//! ```
//!
//! Invariants:
//! - `load(store(e)) == e`: the record (offsets, external ids, times, text)
//!   is serialized as it is, never re-parsed;
//! - equality, order and hash are those of `(time_ms, fingerprint, kind)`,
//!   where the fingerprint is the xxh3-128 of the record: two stores of one
//!   event are equal whichever codec compressed them, so a retraction always
//!   cancels its insertion (arrangements compare values often: the order
//!   never looks at the body);
//! - the dictionary is per process: between processes (timely's exchange
//!   serializes) an event travels uncompressed and the receiver compresses
//!   it with its own dictionary.
//!
//! Until the dictionary is trained (from [`TRAINING_SAMPLES`] records, on a
//! background thread) events are compressed without one.

use std::cmp::Ordering;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::event::{Event, EventType};

/// Records sampled to train the dictionary.
pub const TRAINING_SAMPLES: usize = 2000;
/// The dictionary's size in bytes.
const DICTIONARY_BYTES: usize = 64 * 1024;
/// zstd level (3: zstd's default; level 1 is 10% faster and 8% larger).
const LEVEL: i32 = 3;

/// Codec tags, the first byte of a body after the messageId.
const PLAIN: u8 = 0;
const ZSTD: u8 = 1;
const ZSTD_DICT: u8 = 2;

/// An event at rest (see the module docs).
#[derive(Clone)]
pub struct StoredEvent {
    /// Event time in ms (as [`Event::time_ms`]).
    pub time_ms: i64,
    /// The call type.
    pub kind: EventType,
    fingerprint: u128,
    /// `[messageId length: u16 LE][messageId][codec][length][payload]`.
    body: Arc<[u8]>,
}

impl StoredEvent {
    /// Compresses `e`.
    pub fn store(e: &Event) -> StoredEvent {
        let plain = e.record_bytes();
        let fingerprint = xxhash_rust::xxh3::xxh3_128(&plain);
        // A messageId is at most 100 characters (validated), 400 bytes.
        let id = e.message_id().as_bytes();
        let mut body = Vec::with_capacity(id.len() + 2 + plain.len() / 3 + 16);
        body.extend_from_slice(&(id.len() as u16).to_le_bytes());
        body.extend_from_slice(id);
        compress(&plain, &mut body);
        StoredEvent {
            time_ms: e.time_ms,
            kind: e.kind,
            fingerprint,
            body: body.into(),
        }
    }

    /// The event, exactly as stored.
    pub fn load(&self) -> Event {
        let plain = decompress(&self.body[2 + self.id_len()..]);
        Event::from_record_bytes(self.time_ms, self.kind, &plain)
            .expect("a stored record decodes (it was encoded by this build)")
    }

    /// The `messageId`.
    pub fn message_id(&self) -> &str {
        std::str::from_utf8(&self.body[2..2 + self.id_len()]).expect("stored from a str")
    }

    fn id_len(&self) -> usize {
        u16::from_le_bytes([self.body[0], self.body[1]]) as usize
    }

    /// The xxh3-128 of the record: with the time, what tells events apart.
    pub fn fingerprint(&self) -> u128 {
        self.fingerprint
    }
}

impl PartialEq for StoredEvent {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
            && self.time_ms == other.time_ms
            && self.kind == other.kind
    }
}

impl Eq for StoredEvent {}

impl PartialOrd for StoredEvent {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for StoredEvent {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.time_ms, self.fingerprint, self.kind).cmp(&(
            other.time_ms,
            other.fingerprint,
            other.kind,
        ))
    }
}

impl Hash for StoredEvent {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.time_ms.hash(state);
        self.fingerprint.hash(state);
    }
}

impl std::fmt::Debug for StoredEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredEvent")
            .field("time_ms", &self.time_ms)
            .field("kind", &self.kind)
            .field("message_id", &self.message_id())
            .field("bytes", &self.body.len())
            .finish()
    }
}

/// Between processes an event travels as its [`Event`] (uncompressed).
impl Serialize for StoredEvent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.load().serialize(s)
    }
}

impl<'de> Deserialize<'de> for StoredEvent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Event::deserialize(d).map(|e| StoredEvent::store(&e))
    }
}

// ---------------------------------------------------------------------------
// The process's codec.

/// The trained dictionary, prepared for both directions.
struct Dictionary {
    encoder: zstd::dict::EncoderDictionary<'static>,
    decoder: zstd::dict::DecoderDictionary<'static>,
}

/// `Some` once trained; `None` if training failed (compress without one).
static DICTIONARY: OnceLock<Option<Dictionary>> = OnceLock::new();
/// Samples collected for training (until `TRAINING_SAMPLES`).
static SAMPLES: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
/// Set once the samples are complete (training started).
static SAMPLED: AtomicBool = AtomicBool::new(false);

fn dictionary() -> Option<&'static Dictionary> {
    DICTIONARY.get().and_then(Option::as_ref)
}

/// Offers `plain` as a training sample; starts training when there are enough.
fn sample(plain: &[u8]) {
    if SAMPLED.load(AtomicOrdering::Relaxed) {
        return;
    }
    let mut samples = SAMPLES.lock().expect("dictionary samples lock");
    if samples.len() >= TRAINING_SAMPLES {
        return;
    }
    samples.push(plain.to_vec());
    if samples.len() == TRAINING_SAMPLES {
        SAMPLED.store(true, AtomicOrdering::Relaxed);
        let taken = std::mem::take(&mut *samples);
        drop(samples);
        let train = move || {
            let trained = zstd::dict::from_samples(&taken, DICTIONARY_BYTES)
                .map_err(|e| {
                    tracing::warn!(
                        "event dictionary not trained ({e}); events are compressed without one"
                    )
                })
                .ok()
                .map(|bytes| Dictionary {
                    encoder: zstd::dict::EncoderDictionary::copy(&bytes, LEVEL),
                    decoder: zstd::dict::DecoderDictionary::copy(&bytes),
                });
            let _ = DICTIONARY.set(trained);
        };
        if std::thread::Builder::new()
            .name("weft-event-dictionary".into())
            .spawn(train)
            .is_err()
        {
            let _ = DICTIONARY.set(None);
        }
    }
}

thread_local! {
    /// This thread's compressors: with the dictionary, and without.
    static COMPRESSORS: std::cell::RefCell<(Option<zstd::bulk::Compressor<'static>>, Option<zstd::bulk::Compressor<'static>>)> =
        const { std::cell::RefCell::new((None, None)) };
    static DECOMPRESSORS: std::cell::RefCell<(Option<zstd::bulk::Decompressor<'static>>, Option<zstd::bulk::Decompressor<'static>>)> =
        const { std::cell::RefCell::new((None, None)) };
}

/// Appends `[codec][length][payload]` for `plain` to `out`.
fn compress(plain: &[u8], out: &mut Vec<u8>) {
    let dict = dictionary();
    if dict.is_none() {
        sample(plain);
    }
    let done = COMPRESSORS.with(|c| {
        let mut c = c.borrow_mut();
        let (codec, slot) = match dict {
            Some(d) => {
                if c.0.is_none() {
                    c.0 = zstd::bulk::Compressor::with_prepared_dictionary(&d.encoder).ok();
                }
                (ZSTD_DICT, c.0.as_mut())
            }
            None => {
                if c.1.is_none() {
                    c.1 = zstd::bulk::Compressor::new(LEVEL).ok();
                }
                (ZSTD, c.1.as_mut())
            }
        };
        let packed = slot?.compress(plain).ok()?;
        out.push(codec);
        out.extend_from_slice(&(plain.len() as u32).to_le_bytes());
        out.extend_from_slice(&packed);
        Some(())
    });
    if done.is_none() {
        out.push(PLAIN);
        out.extend_from_slice(&(plain.len() as u32).to_le_bytes());
        out.extend_from_slice(plain);
    }
}

/// The plain bytes of `[codec][length][payload]`.
fn decompress(body: &[u8]) -> Vec<u8> {
    let codec = body[0];
    let len = u32::from_le_bytes(body[1..5].try_into().expect("4 bytes")) as usize;
    let payload = &body[5..];
    match codec {
        PLAIN => payload.to_vec(),
        ZSTD | ZSTD_DICT => DECOMPRESSORS.with(|d| {
            let mut d = d.borrow_mut();
            let slot = if codec == ZSTD_DICT {
                let dict =
                    dictionary().expect("a dictionary-compressed event implies the dictionary");
                if d.0.is_none() {
                    d.0 = Some(
                        zstd::bulk::Decompressor::with_prepared_dictionary(&dict.decoder)
                            .expect("a zstd decompression context"),
                    );
                }
                d.0.as_mut()
            } else {
                if d.1.is_none() {
                    d.1 = Some(
                        zstd::bulk::Decompressor::new().expect("a zstd decompression context"),
                    );
                }
                d.1.as_mut()
            };
            slot.expect("set above")
                .decompress(payload, len)
                .expect("a stored event decompresses")
        }),
        other => panic!("unknown stored-event codec {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{parse_event, ParseContext};

    fn ev(i: usize) -> Event {
        let line = format!(
            r#"{{"type":"track","event":"Order Completed","messageId":"m{i}","userId":"u{}","anonymousId":"a{i}","timestamp":"2026-01-02T03:04:05.{:03}Z","receivedAt":"2026-01-02T03:04:06Z","context":{{"ip":"10.0.{}.1","device":{{"id":"d{i}"}},"externalIds":[{{"id":"c{i}","type":"crm_id","collection":"users","encoding":"none"}}],"userAgent":"Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X)"}},"properties":{{"revenue":{},"path":"/p/{i}"}}}}"#,
            i % 37,
            i % 1000,
            i % 200,
            i as f64 * 1.5
        );
        parse_event(line.as_bytes(), &ParseContext::default()).expect("valid")
    }

    /// Round trips are exact before and after the dictionary, and equality
    /// does not depend on the codec.
    #[test]
    fn stores_and_loads_exactly_with_and_without_the_dictionary() {
        let early: Vec<(Event, StoredEvent)> = (0..50)
            .map(|i| (ev(i), StoredEvent::store(&ev(i))))
            .collect();
        for (e, s) in &early {
            assert_eq!(&s.load(), e);
            assert_eq!(s.message_id(), e.message_id());
        }
        // Enough samples to train, then wait (bounded) for the dictionary.
        for i in 0..TRAINING_SAMPLES + 10 {
            StoredEvent::store(&ev(i));
        }
        for _ in 0..500 {
            if DICTIONARY.get().is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(dictionary().is_some(), "the dictionary is trained");
        for (e, early) in &early {
            let late = StoredEvent::store(e);
            assert_eq!(late.body[2 + late.id_len()], ZSTD_DICT);
            assert_eq!(&late.load(), e);
            assert_eq!(&late, early, "equal whichever codec stored them");
            assert_eq!(late.cmp(early), Ordering::Equal);
            assert!(
                late.body.len() < early.body.len(),
                "the dictionary compresses better"
            );
        }
        // Different events differ and order by time first.
        let (a, b) = (StoredEvent::store(&ev(1)), StoredEvent::store(&ev(2)));
        assert_ne!(a, b);
        assert_eq!(a.cmp(&b), std::cmp::Ordering::Less);
        // Through serde (what timely uses between processes).
        let json = serde_json::to_string(&a).unwrap();
        let back: StoredEvent = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
        assert_eq!(back.load(), ev(1));
    }
}

//! Events at rest: the compressed form the long-lived state keeps, on disk.
//!
//! Events pass through most operators and are gone; two pieces of state keep
//! them for as long as they exist: events by anchor (which runtime
//! definitions backfill from) and the Profile API's index. There an
//! event's kept text, a kilobyte of JSON of which half is `context`, was the
//! largest part of a job's memory. A [`StoredEvent`] keeps it compressed
//! with zstd and a dictionary trained on this process's first events (about
//! 200 bytes instead of 1,000 for typical Segment events), in the process's
//! [`EventLog`] on disk; memory keeps a 40-byte handle (time, type,
//! fingerprint, a shared pointer to the extent) and 32 bytes for the shared
//! extent (see `docs/benchmarks.md`, End to end).
//!
//! ```text
//!  Event ── StoredEvent::store ──► handle [time, type, fingerprint, Arc(extent)]
//!    ▲                                          │
//!    │                          event log file: [messageId | zstd(record)] ...
//!    └──────────────── StoredEvent::load ───────┘   (exact: the same Event)
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
//! **Chains.** In a job without regulations, events by anchor keep one
//! handle per anchor, not per event: [`StoredEvent::store_linked`] writes
//! each event's record with a header linking it to its anchor's previous
//! record, and [`StoredEvent::chain`] walks back from the latest (see
//! `crate::chain`). Linked records are never erased.
//!
//! Until the dictionary is trained (from [`TRAINING_SAMPLES`] records, on a
//! background thread) events are compressed without one.

use std::cmp::Ordering;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
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
    /// Events in the chain ending here (1 for an event not linked; in the
    /// handle's padding, not compared).
    chain_len: u32,
    /// The fingerprint's high and low halves (two `u64`s rather than a
    /// `u128`: 8-byte alignment keeps the handle at 40 bytes, not 48).
    fingerprint: [u64; 2],
    /// Where `[messageId length: u16 LE][messageId][codec][length][payload]` is.
    body: Arc<Body>,
}

/// A stored body: in the process's event log on disk (erased when the last
/// handle drops), or on the heap (transient values, or without a log).
/// 16 bytes, so that with the `Arc`'s counts it takes 32.
enum Body {
    /// `offset << 24 | length` in the log (offsets below 2^40, lengths below 2^24).
    Disk(u64),
    #[allow(clippy::box_collection)]
    Heap(Box<Box<[u8]>>),
    /// `offset << 24 | length` of a linked record (`[LINK_HEADER][body]`)
    /// in the chain log ([`chain_log`]); never erased (see
    /// [`StoredEvent::store_linked`]).
    Linked(u64),
}

/// A linked record's header: the previous record's packed extent
/// (`NO_LINK` for none), time, fingerprint, type and chain length (37 bytes).
const LINK_HEADER: usize = 8 + 8 + 16 + 1 + 4;
/// The packed extent of no record (every record has a length).
const NO_LINK: u64 = 0;

const LEN_BITS: u32 = 24;

impl Body {
    fn disk(offset: u64, len: usize) -> Option<Body> {
        Body::pack(offset, len).map(Body::Disk)
    }

    /// `offset << 24 | length`, if both fit.
    fn pack(offset: u64, len: usize) -> Option<u64> {
        (offset < 1 << 40 && len < 1 << LEN_BITS).then(|| offset << LEN_BITS | len as u64)
    }

    fn heap(bytes: Vec<u8>) -> Body {
        Body::Heap(Box::new(bytes.into_boxed_slice()))
    }

    /// `(offset, length)` in the log.
    fn extent(packed: u64) -> (u64, u32) {
        (packed >> LEN_BITS, (packed & ((1 << LEN_BITS) - 1)) as u32)
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        if let Body::Disk(packed) = *self {
            if let Some(log) = log() {
                let (offset, len) = Body::extent(packed);
                log.erase(offset, len);
            }
        }
    }
}

impl StoredEvent {
    /// Compresses `e` into the process's event log (see [`EventLog`]), or
    /// onto the heap when there is no log.
    pub fn store(e: &Event) -> StoredEvent {
        let (fingerprint, bytes) = encode(e);
        let body = log()
            .and_then(|log| log.append(&bytes))
            .and_then(|offset| Body::disk(offset, bytes.len()))
            .unwrap_or_else(|| Body::heap(bytes));
        StoredEvent {
            time_ms: e.time_ms,
            kind: e.kind,
            chain_len: 1,
            fingerprint,
            body: Arc::new(body),
        }
    }

    /// Compresses `e` onto the heap, never the log: for values that are
    /// about to cancel (retractions), which should not write to disk what
    /// is being deleted. Equal to [`StoredEvent::store`] of the same event.
    pub fn transient(e: &Event) -> StoredEvent {
        let (fingerprint, bytes) = encode(e);
        StoredEvent {
            time_ms: e.time_ms,
            kind: e.kind,
            chain_len: 1,
            fingerprint,
            body: Arc::new(Body::heap(bytes)),
        }
    }

    /// Stores `e` in the process's chain log linked to `prev`, the previous
    /// event of the same chain (an anchor's history, for instance): from the
    /// new handle, [`StoredEvent::chain`] walks back through `prev` and its
    /// own links, reading them from the log, so the chain's earlier handles
    /// need not be kept. Linked records are never erased: chains are for
    /// histories that only grow (jobs without regulations). `prev` that is
    /// not linked (or `None`) starts a new chain. The chain log is the event
    /// log, or memory with `WEFT_EVENT_LOG=memory` (see [`chain_log`]).
    pub fn store_linked(e: &Event, prev: Option<&StoredEvent>) -> StoredEvent {
        let (fingerprint, bytes) = encode(e);
        let link = prev.and_then(StoredEvent::link);
        let chain_len = link.and(prev).map_or(1, |p| p.chain_len.saturating_add(1));
        let link = link.unwrap_or(NO_LINK);
        let mut record = Vec::with_capacity(LINK_HEADER + bytes.len());
        record.extend_from_slice(&link.to_le_bytes());
        record.extend_from_slice(&e.time_ms.to_le_bytes());
        record.extend_from_slice(&fingerprint[0].to_le_bytes());
        record.extend_from_slice(&fingerprint[1].to_le_bytes());
        record.push(kind_tag(e.kind));
        record.extend_from_slice(&chain_len.to_le_bytes());
        record.extend_from_slice(&bytes);
        // (Not through `Body::disk`: a dropped `Body::Disk` erases its extent.)
        let body = match chain_log()
            .append(&record)
            .and_then(|offset| Body::pack(offset, record.len()))
        {
            Some(packed) => Body::Linked(packed),
            None => {
                // Only a full log (2^40 bytes) gets here: events are at
                // most 32 KiB. The chain restarts at this event.
                tracing::error!("chain log full: an event chain restarts (runtime definitions will not see its earlier events)");
                return StoredEvent {
                    time_ms: e.time_ms,
                    kind: e.kind,
                    chain_len: 1,
                    fingerprint,
                    body: Arc::new(Body::heap(bytes)),
                };
            }
        };
        StoredEvent {
            time_ms: e.time_ms,
            kind: e.kind,
            chain_len,
            fingerprint,
            body: Arc::new(body),
        }
    }

    /// How many events [`StoredEvent::chain`] walks (1 for an event not linked).
    pub fn chain_len(&self) -> usize {
        self.chain_len as usize
    }

    /// The packed extent of a linked record.
    fn link(&self) -> Option<u64> {
        match *self.body {
            Body::Linked(packed) => Some(packed),
            _ => None,
        }
    }

    /// The chain ending at this event, newest first: this event, then (for a
    /// linked one, see [`StoredEvent::store_linked`]) the events linked
    /// before it, each read from the log (its header only). An event not
    /// linked is a chain of one.
    pub fn chain(&self) -> Chain {
        Chain {
            next: Some(self.clone()),
            link: self.link().and_then(read_link),
        }
    }

    /// The events of `self`'s chain that are not in `older`'s, newest first,
    /// if `older` is in `self`'s chain (an earlier head of the same chain);
    /// `None` if it is not.
    pub fn chain_since(&self, older: &StoredEvent) -> Option<Vec<StoredEvent>> {
        let stop = older.link()?;
        let mut since = Vec::new();
        for e in self.chain() {
            let at = e.link()?;
            if at == stop {
                return Some(since);
            }
            // Records are appended in chain order: an ancestor has a lower offset.
            if at < stop {
                return None;
            }
            since.push(e);
        }
        None
    }

    /// The event, exactly as stored.
    pub fn load(&self) -> Event {
        self.with_body(|body| {
            let plain = decompress(&body[2 + id_len(body)..]);
            Event::from_record_bytes(self.time_ms, self.kind, &plain)
                .expect("a stored record decodes (it was encoded by this build)")
        })
    }

    /// The `messageId` (reads the body: from disk when it is in the log).
    pub fn message_id(&self) -> String {
        self.with_body(|body| {
            std::str::from_utf8(&body[2..2 + id_len(body)])
                .expect("stored from a str")
                .to_string()
        })
    }

    /// Whether the body is in the event log (not on the heap).
    pub fn on_disk(&self) -> bool {
        match *self.body {
            Body::Disk(_) => true,
            Body::Linked(_) => log().is_some(),
            Body::Heap(_) => false,
        }
    }

    fn with_body<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        match &*self.body {
            Body::Heap(bytes) => f(bytes),
            Body::Disk(packed) => {
                let (offset, len) = Body::extent(*packed);
                let log = log().expect("an event in the log implies the log");
                f(&log.read(offset, len))
            }
            Body::Linked(packed) => {
                let (offset, len) = Body::extent(*packed);
                f(&chain_log().read(offset, len)[LINK_HEADER..])
            }
        }
    }

    /// The xxh3-128 of the record: with the time, what tells events apart.
    pub fn fingerprint(&self) -> u128 {
        u128::from(self.fingerprint[0]) << 64 | u128::from(self.fingerprint[1])
    }
}

/// `(fingerprint, [messageId length][messageId][codec][length][payload])`.
fn encode(e: &Event) -> ([u64; 2], Vec<u8>) {
    let plain = e.record_bytes();
    let h = xxhash_rust::xxh3::xxh3_128(&plain);
    let fingerprint = [(h >> 64) as u64, h as u64];
    // A messageId is at most 100 characters (validated), 400 bytes.
    let id = e.message_id().as_bytes();
    let mut body = Vec::with_capacity(id.len() + 2 + plain.len() / 3 + 16);
    body.extend_from_slice(&(id.len() as u16).to_le_bytes());
    body.extend_from_slice(id);
    compress(&plain, &mut body);
    (fingerprint, body)
}

/// An iterator over a chain of linked events, newest first (see
/// [`StoredEvent::chain`]).
pub struct Chain {
    next: Option<StoredEvent>,
    /// The link of `next`'s record (read with its header).
    link: Option<u64>,
}

impl Iterator for Chain {
    type Item = StoredEvent;

    fn next(&mut self) -> Option<StoredEvent> {
        let current = self.next.take()?;
        if let Some(prev) = self.link.take() {
            let (e, link) = read_linked(prev);
            self.next = Some(e);
            self.link = link;
        }
        Some(current)
    }
}

/// The link (previous record's packed extent) of the linked record at `packed`.
fn read_link(packed: u64) -> Option<u64> {
    let (offset, _) = Body::extent(packed);
    let header = chain_log().read(offset, 8);
    link_of(&header)
}

fn link_of(header: &[u8]) -> Option<u64> {
    let link = u64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
    (link != NO_LINK).then_some(link)
}

/// A handle to the linked record at `packed`, and its link, from its header.
fn read_linked(packed: u64) -> (StoredEvent, Option<u64>) {
    let (offset, _) = Body::extent(packed);
    let h = chain_log().read(offset, LINK_HEADER as u32);
    let word = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
    let e = StoredEvent {
        time_ms: word(8) as i64,
        kind: kind_of_tag(h[32]),
        chain_len: u32::from_le_bytes(h[33..37].try_into().expect("4 bytes")),
        fingerprint: [word(16), word(24)],
        body: Arc::new(Body::Linked(packed)),
    };
    (e, link_of(&h))
}

fn kind_tag(kind: EventType) -> u8 {
    EventType::ALL
        .iter()
        .position(|k| *k == kind)
        .expect("every type is in ALL") as u8
}

fn kind_of_tag(tag: u8) -> EventType {
    EventType::ALL[tag as usize]
}

fn id_len(body: &[u8]) -> usize {
    u16::from_le_bytes([body[0], body[1]]) as usize
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
        let (place, bytes) = match &*self.body {
            Body::Heap(b) => ("heap", b.len()),
            Body::Disk(packed) => ("log", Body::extent(*packed).1 as usize),
            Body::Linked(packed) => ("linked", Body::extent(*packed).1 as usize),
        };
        f.debug_struct("StoredEvent")
            .field("time_ms", &self.time_ms)
            .field("kind", &self.kind)
            .field("fingerprint", &format_args!("{:032x}", self.fingerprint()))
            .field(place, &bytes)
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
// The process's event log.

/// Bytes buffered in memory before they are written to the log file.
const TAIL_BYTES: usize = 1 << 20;
/// Erased extents collected before they are punched out of the file together.
const ERASE_BATCH: usize = 1024;

/// The process's event log: one unnamed file (unlinked at creation, so the
/// system reclaims it when the process ends, however it ends) to which
/// stored bodies are appended. A body is erased when its last handle
/// drops (`fallocate(PUNCH_HOLE)`: the range reads back as zeros and its
/// blocks are freed; zeros are written where that is not supported), in
/// batches of [`ERASE_BATCH`] extents and at every write of the tail. So an
/// event that every arrangement has retracted and compacted away (a
/// deletion) leaves the disk as it leaves the heap.
///
/// Writes are buffered ([`TAIL_BYTES`]); reads of the buffered tail are
/// served from memory. If the file cannot be written the tail stays in
/// memory (nothing is lost: the process uses memory as before) and the
/// write is retried when the tail has doubled.
pub struct EventLog {
    /// `None`: a log in memory (the tail is never written).
    file: Option<std::fs::File>,
    state: Mutex<LogState>,
    written: AtomicU64,
    erased: AtomicU64,
    write_failures: AtomicU64,
}

struct LogState {
    /// Bytes of the file written so far; the tail starts here.
    flushed: u64,
    tail: Vec<u8>,
    /// Try to write the tail once it is this long.
    flush_at: usize,
    /// Extents to erase from the written part of the file.
    erase: Vec<(u64, u32)>,
}

/// Sizes of the event log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventLogStats {
    /// Bytes appended since the process started.
    pub written_bytes: u64,
    /// Bytes erased (their handles dropped).
    pub erased_bytes: u64,
    /// Bytes still referenced.
    pub live_bytes: u64,
    /// Bytes buffered in memory (the tail, not yet in the file).
    pub buffered_bytes: u64,
    /// Failed writes of the tail (each retried later).
    pub write_failures: u64,
}

impl EventLog {
    /// An event log in a new unnamed file under `dir`.
    pub fn create(dir: &std::path::Path) -> std::io::Result<EventLog> {
        Ok(EventLog::with_file(Some(tempfile::tempfile_in(dir)?)))
    }

    /// An event log in memory: everything stays in the tail.
    pub fn in_memory() -> EventLog {
        EventLog::with_file(None)
    }

    fn with_file(file: Option<std::fs::File>) -> EventLog {
        EventLog {
            state: Mutex::new(LogState {
                flushed: 0,
                tail: Vec::new(),
                flush_at: if file.is_some() {
                    TAIL_BYTES
                } else {
                    usize::MAX
                },
                erase: Vec::new(),
            }),
            file,
            written: AtomicU64::new(0),
            erased: AtomicU64::new(0),
            write_failures: AtomicU64::new(0),
        }
    }

    /// Appends `bytes`; returns their offset (`None` if the log is full,
    /// 2^40 bytes, or the record is 2^24 bytes or longer).
    fn append(&self, bytes: &[u8]) -> Option<u64> {
        let mut st = self.state.lock().expect("event log lock");
        let offset = st.flushed + st.tail.len() as u64;
        if offset + bytes.len() as u64 >= 1 << 40 || bytes.len() >= 1 << LEN_BITS {
            return None;
        }
        st.tail.extend_from_slice(bytes);
        self.written
            .fetch_add(bytes.len() as u64, AtomicOrdering::Relaxed);
        if st.tail.len() >= st.flush_at {
            self.write_tail(&mut st);
        }
        Some(offset)
    }

    /// Writes the tail to the file (under the lock), then punches the
    /// pending erasures.
    fn write_tail(&self, st: &mut LogState) {
        use std::os::unix::fs::FileExt;
        let Some(file) = &self.file else {
            return; // in memory: the tail is the log
        };
        match file.write_all_at(&st.tail, st.flushed) {
            Ok(()) => {
                st.flushed += st.tail.len() as u64;
                st.tail.clear();
                if st.tail.capacity() > 2 * TAIL_BYTES {
                    st.tail.shrink_to(TAIL_BYTES);
                }
                st.flush_at = TAIL_BYTES;
            }
            Err(e) => {
                let n = self.write_failures.fetch_add(1, AtomicOrdering::Relaxed);
                if n == 0 {
                    tracing::warn!("event log: cannot write ({e}); events stay in memory");
                }
                st.flush_at = st.tail.len() * 2;
            }
        }
        let erase = std::mem::take(&mut st.erase);
        self.punch(erase);
    }

    /// The `len` bytes at `offset`.
    fn read(&self, offset: u64, len: u32) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len as usize];
        {
            let st = self.state.lock().expect("event log lock");
            if offset >= st.flushed {
                let at = (offset - st.flushed) as usize;
                buf.copy_from_slice(&st.tail[at..at + len as usize]);
                return buf;
            }
        }
        // Written, and immutable while a handle to it lives.
        self.file
            .as_ref()
            .expect("only a log with a file writes its tail")
            .read_exact_at(&mut buf, offset)
            .expect("the event log reads back what it wrote");
        buf
    }

    /// Forgets the extent: zeroes it in the tail, or queues it to be
    /// punched out of the file.
    fn erase(&self, offset: u64, len: u32) {
        self.erased
            .fetch_add(u64::from(len), AtomicOrdering::Relaxed);
        let mut st = self.state.lock().expect("event log lock");
        if offset >= st.flushed {
            let at = (offset - st.flushed) as usize;
            st.tail[at..at + len as usize].fill(0);
            return;
        }
        st.erase.push((offset, len));
        if st.erase.len() >= ERASE_BATCH {
            let erase = std::mem::take(&mut st.erase);
            drop(st);
            self.punch(erase);
        }
    }

    /// Punches the extents (merged where adjacent) out of the file.
    fn punch(&self, mut extents: Vec<(u64, u32)>) {
        let Some(file) = &self.file else {
            return; // in memory: erased in the tail
        };
        extents.sort_unstable();
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for (o, l) in extents {
            match ranges.last_mut() {
                Some((_, end)) if *end >= o => *end = (*end).max(o + u64::from(l)),
                _ => ranges.push((o, o + u64::from(l))),
            }
        }
        for (start, end) in ranges {
            if !weft_operators::scratch::punch_hole(file, start, end - start) {
                use std::os::unix::fs::FileExt;
                let zeros = vec![0u8; (end - start) as usize];
                if file.write_all_at(&zeros, start).is_err() {
                    self.write_failures.fetch_add(1, AtomicOrdering::Relaxed);
                }
            }
        }
    }

    /// Erases now what is queued (normally erased in batches).
    pub fn sync_erasures(&self) {
        let erase = std::mem::take(&mut self.state.lock().expect("event log lock").erase);
        self.punch(erase);
    }

    /// Sizes (see [`EventLogStats`]).
    pub fn stats(&self) -> EventLogStats {
        let buffered = self.state.lock().expect("event log lock").tail.len() as u64;
        let written = self.written.load(AtomicOrdering::Relaxed);
        let erased = self.erased.load(AtomicOrdering::Relaxed);
        EventLogStats {
            written_bytes: written,
            erased_bytes: erased,
            live_bytes: written - erased.min(written),
            buffered_bytes: buffered,
            write_failures: self.write_failures.load(AtomicOrdering::Relaxed),
        }
    }

    /// The bytes at `offset` as the file holds them (tests: erasure).
    #[doc(hidden)]
    pub fn raw(&self, offset: u64, len: usize) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len];
        if let Some(file) = &self.file {
            let _ = file.read_at(&mut buf, offset);
        }
        buf
    }
}

/// Where the process's event log lives: `WEFT_EVENT_LOG_DIR`, else the
/// system's temporary directory; `WEFT_EVENT_LOG=memory` keeps events on
/// the heap.
static LOG: OnceLock<Option<EventLog>> = OnceLock::new();

/// The process's scratch directory for state kept on disk (the event log,
/// held window expiries): `WEFT_EVENT_LOG_DIR`, else the system's temporary
/// directory; `None` with `WEFT_EVENT_LOG=memory` (everything on the heap).
pub fn scratch_dir() -> Option<std::path::PathBuf> {
    if std::env::var("WEFT_EVENT_LOG").is_ok_and(|v| v == "memory") {
        return None;
    }
    Some(
        std::env::var_os("WEFT_EVENT_LOG_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(std::env::temp_dir),
    )
}

/// Where linked records go ([`StoredEvent::store_linked`]): the process's
/// event log, or with none (`WEFT_EVENT_LOG=memory`, or no file could be
/// created) a log in memory.
pub fn chain_log() -> &'static EventLog {
    static MEMORY: OnceLock<EventLog> = OnceLock::new();
    log().unwrap_or_else(|| MEMORY.get_or_init(EventLog::in_memory))
}

/// The process's event log (created on first use), if any.
pub fn log() -> Option<&'static EventLog> {
    LOG.get_or_init(|| {
        let dir = scratch_dir()?;
        EventLog::create(&dir)
            .map_err(|e| {
                tracing::warn!(
                    "event log: cannot create a file in {} ({e}); events stay in memory",
                    dir.display()
                )
            })
            .ok()
    })
    .as_ref()
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
            let (late_body, early_body) = (
                late.with_body(<[u8]>::to_vec),
                early.with_body(<[u8]>::to_vec),
            );
            assert_eq!(late_body[2 + id_len(&late_body)], ZSTD_DICT);
            assert_eq!(&late.load(), e);
            assert_eq!(&late, early, "equal whichever codec stored them");
            assert_eq!(late.cmp(early), Ordering::Equal);
            assert!(
                late_body.len() < early_body.len(),
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
        // A transient copy is equal, on the heap, and loads the same.
        let t = StoredEvent::transient(&ev(1));
        assert_eq!(t, a);
        assert!(!t.on_disk());
        assert_eq!(t.load(), ev(1));
    }

    /// Chains: interleaved appends to three chains walk back newest first,
    /// load exactly, and `chain_since` is the part after an earlier head.
    #[test]
    fn linked_events_walk_back_their_chain() {
        let mut heads: Vec<Option<StoredEvent>> = vec![None, None, None];
        let mut expected: Vec<Vec<Event>> = vec![Vec::new(); 3];
        let mut earlier: Vec<Option<(StoredEvent, usize)>> = vec![None, None, None];
        // (Few events: the dictionary test needs its first events stored untrained.)
        for i in 0..300 {
            let c = i * 7 % 3;
            let e = ev(i);
            let h = StoredEvent::store_linked(&e, heads[c].as_ref());
            assert_eq!(h, StoredEvent::transient(&e), "equal to any store of it");
            heads[c] = Some(h);
            expected[c].push(e);
            if i == 150 + c {
                earlier[c] = Some((heads[c].clone().unwrap(), expected[c].len()));
            }
        }
        for c in 0..3 {
            let head = heads[c].as_ref().unwrap();
            let walked: Vec<Event> = head.chain().map(|s| s.load()).collect();
            let mut want = expected[c].clone();
            want.reverse();
            assert_eq!(walked, want, "chain {c}");
            // Walked handles equal the stored ones (time, fingerprint, type).
            let handles: Vec<StoredEvent> = head.chain().collect();
            assert_eq!(head.chain_len(), want.len());
            assert!(handles
                .iter()
                .enumerate()
                .all(|(i, h)| h.chain_len() == want.len() - i));
            assert!(handles
                .iter()
                .zip(&want)
                .all(|(h, e)| *h == StoredEvent::transient(e)));
            if let Some((old, n)) = &earlier[c] {
                let since: Vec<Event> = head
                    .chain_since(old)
                    .unwrap()
                    .iter()
                    .map(|s| s.load())
                    .collect();
                let mut want: Vec<Event> = expected[c][*n..].to_vec();
                want.reverse();
                assert_eq!(since, want, "chain {c} since an earlier head");
                assert_eq!(head.chain_since(head).unwrap().len(), 0);
            }
        }
        // Another chain's head is not an ancestor; an unlinked event is a chain of one.
        let (a, b) = (heads[0].as_ref().unwrap(), heads[1].as_ref().unwrap());
        assert!(a.chain_since(b).is_none() || b.chain_since(a).is_none());
        assert!(a.chain_since(b).is_none());
        let lone = StoredEvent::store(&ev(9));
        assert_eq!(lone.chain().collect::<Vec<_>>(), vec![lone.clone()]);
        assert!(a.chain_since(&lone).is_none());
        // A chain continued from an unlinked event starts afresh.
        let after = StoredEvent::store_linked(&ev(10), Some(&lone));
        assert_eq!(after.chain().count(), 1);
    }

    /// A log in memory reads back what it holds.
    #[test]
    fn a_log_in_memory_reads_back() {
        let log = EventLog::in_memory();
        let at: Vec<(u64, Vec<u8>)> = (0..5000u32)
            .map(|i| {
                let r: Vec<u8> = (0..200 + i % 50).map(|j| (i ^ j) as u8).collect();
                (log.append(&r).unwrap(), r)
            })
            .collect();
        assert_eq!(log.stats().buffered_bytes, log.stats().written_bytes);
        for (o, r) in at.iter().step_by(11) {
            assert_eq!(&log.read(*o, r.len() as u32), r);
        }
    }

    #[test]
    fn a_handle_is_small() {
        assert_eq!(std::mem::size_of::<StoredEvent>(), 40);
        assert_eq!(std::mem::size_of::<Body>(), 16);
    }

    /// The process's log holds the bodies (unless turned off), and they
    /// load back exactly after the tail has been written to the file.
    #[test]
    fn stored_bodies_live_in_the_log() {
        if log().is_none() {
            return; // WEFT_EVENT_LOG=memory
        }
        let stored: Vec<(Event, StoredEvent)> = (0..6000)
            .map(|i| (ev(i), StoredEvent::store(&ev(i))))
            .collect();
        assert!(stored.iter().all(|(_, s)| s.on_disk()));
        assert!(
            log().unwrap().stats().written_bytes >= TAIL_BYTES as u64,
            "past one tail"
        );
        for (e, s) in stored.iter().step_by(7) {
            assert_eq!(&s.load(), e);
            assert_eq!(s.message_id(), e.message_id());
        }
        // The last handle of a body drops: its bytes are gone from the file.
        let extents: Vec<(u64, u32)> = stored
            .iter()
            .take(100)
            .map(|(_, s)| match *s.body {
                Body::Disk(packed) => Body::extent(packed),
                _ => unreachable!("on disk, not linked"),
            })
            .collect();
        let log = log().unwrap();
        assert!(extents
            .iter()
            .all(|(o, l)| log.raw(*o, *l as usize).iter().any(|b| *b != 0)));
        let clones: Vec<StoredEvent> = stored.iter().take(100).map(|(_, s)| s.clone()).collect();
        drop(stored);
        log.sync_erasures();
        assert!(
            extents
                .iter()
                .all(|(o, l)| log.raw(*o, *l as usize).iter().any(|b| *b != 0)),
            "a clone still holds them"
        );
        drop(clones);
        log.sync_erasures();
        assert!(extents
            .iter()
            .all(|(o, l)| log.raw(*o, *l as usize).iter().all(|b| *b == 0)));
    }

    /// Appends read back from the tail and from the file; an erased extent
    /// reads back as zeros in either place, and its neighbours are intact.
    #[test]
    fn the_log_reads_back_and_erases() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::create(dir.path()).unwrap();
        let record = |i: u32| -> Vec<u8> {
            (0..100 + i % 300)
                .map(|j| (i.wrapping_mul(31) ^ j) as u8 | 1)
                .collect()
        };
        let n = 20_000u32; // about 5 MB: several tails
        let at: Vec<(u64, u32)> = (0..n)
            .map(|i| {
                let r = record(i);
                (log.append(&r).unwrap(), r.len() as u32)
            })
            .collect();
        let st = log.stats();
        assert!(
            st.buffered_bytes < st.written_bytes,
            "some of it is in the file"
        );
        for i in (0..n).step_by(13) {
            let (o, l) = at[i as usize];
            assert_eq!(log.read(o, l), record(i), "record {i}");
        }
        // Erase every third record, in the file and in the tail.
        for i in (0..n).step_by(3) {
            let (o, l) = at[i as usize];
            log.erase(o, l);
        }
        log.sync_erasures();
        for i in 0..n {
            let (o, l) = at[i as usize];
            let raw = if o >= log.state.lock().unwrap().flushed {
                log.read(o, l)
            } else {
                log.raw(o, l as usize)
            };
            if i % 3 == 0 {
                assert!(raw.iter().all(|b| *b == 0), "record {i} erased");
            } else {
                assert_eq!(raw, record(i), "record {i} intact");
            }
        }
        let st = log.stats();
        assert_eq!(st.live_bytes + st.erased_bytes, st.written_bytes);
        assert_eq!(st.write_failures, 0);
    }
}

//! The Profile API's read index: each job's profiles, kept by the dataflow in
//! a process-shared, read-locked structure that HTTP handlers read directly.
//!
//! ```text
//!  identifiers (profile_of ⋈ names) ─┐
//!  profile traits ───────────────────┤
//!  computed traits (spec + runtime) ─┼─ concat ─► sink_by_time(worker 0) ─► ProfileIndex (RwLock)
//!  audiences (spec + runtime) ───────┤   one consolidated batch per         ▲
//!  events by profile ────────────────┘   completed logical time              └─ GET /v1/jobs/{id}/profiles/...
//! ```
//!
//! **Consistency.** Every change of every collection above is routed to worker
//! 0 (of process 0, where the HTTP API runs) and applied there one completed
//! logical time at a time, under one write lock, once the frontier has passed
//! that time. `as_of` is the latest time `t` such that all changes at times
//! `≤ t` have been applied and none after: a reader sees exactly the
//! accumulated collections at `as_of` — a peek at a time the frontier has
//! passed, answered without a round trip through the workers. (Before the
//! first time completes there is no `as_of`, and the index is empty.)
//!
//! **Cost.** The index is a second copy of what it serves, kept on one
//! worker: per profile a hash-map entry; per identifier, trait, computed
//! value and membership a small map entry (a numeric computed value is 12
//! bytes, its name an id in the index). Events: in a job without
//! regulations in one process, per anchor identifier one handle, the head
//! of the anchor's chain of events in the event log
//! (`weft_dataflows::chain`); a lookup walks the profile's chains (reading
//! each event's 37-byte header from the log, its body only for the events
//! shown), so it costs in proportion to the profile's events. Otherwise
//! per event a 48-byte handle in a sorted vector (its time, fingerprint and
//! type, and a shared pointer to its compressed body in the process's event
//! log on disk). Applying a time costs worker 0 one hash lookup per change;
//! readers hold the read lock only while they render one profile.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::Arc;
use std::sync::RwLock;

use serde::{Deserialize, Serialize};
use weft_dataflows::audience::AggValue;
use weft_dataflows::event::write_json_string;
use weft_dataflows::identity::{id_hash, IdHash, Identifier, ProfileId};
use weft_dataflows::record::WriteJson;
use weft_dataflows::stored::StoredEvent;

/// One change to the index, keyed by the profile it belongs to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum IndexUpdate {
    /// An identifier of the profile.
    Identifier(ProfileId, Identifier),
    /// A profile trait: key, value JSON text.
    Trait(ProfileId, Box<str>, Box<str>),
    /// A computed trait's value: name, value.
    Computed(ProfileId, String, AggValue),
    /// Membership of an audience (by name).
    Audience(ProfileId, String),
    /// One of the profile's events.
    Event(ProfileId, StoredEvent),
    /// The latest event of one of the profile's anchors, standing for the
    /// anchor's chain of events (a job without regulations, in one
    /// process: `weft_dataflows::chain`).
    Head(ProfileId, IdHash, StoredEvent),
}

/// Hashes of identifiers and profiles are already uniform: use their low bits.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, i: u128) {
        self.0 = i as u64;
    }
}

type IdMap<V> = HashMap<IdHash, V, BuildHasherDefault<IdHasher>>;

/// An event's place in a profile's history: event time, then the
/// fingerprint of the whole record (two different events may share a
/// messageId; an identical copy, possible only without dedupe, is listed
/// once). Both are in memory: the event's body may be on disk.
type EventKey = (i64, u128);

fn event_key(e: &StoredEvent) -> EventKey {
    (e.time_ms, e.fingerprint())
}

/// One profile. Its parts are sorted vectors (a profile has a handful of
/// each; a B-tree node is 11 slots), with definition names interned.
#[derive(Default)]
struct ProfileEntry {
    identifiers: Sorted<Identifier, ()>,
    traits: Sorted<Box<str>, Box<str>>,
    computed: Computed,
    audiences: Sorted<Arc<str>, ()>,
    events: Events,
    /// Per anchor, the head of its chain of events (read at lookup).
    heads: Sorted<IdHash, StoredEvent>,
}

/// A profile's computed trait values: numbers (most of them) packed, 12
/// bytes each (the name's id in the index and the number's bits), anything
/// else boxed by name. A name has at most one value in either. Twenty
/// counters take 240 bytes instead of 640 as `(name, value)` pairs.
#[derive(Default)]
struct Computed {
    /// Sorted by name id.
    nums: Vec<PackedNum>,
    others: Sorted<Arc<str>, Box<AggValue>>,
}

/// A number and its name's id, without padding.
#[repr(C, packed(4))]
#[derive(Clone, Copy)]
struct PackedNum {
    name: u32,
    bits: u64,
}

impl Computed {
    fn is_empty(&self) -> bool {
        self.nums.is_empty() && self.others.is_empty()
    }

    fn num_position(&self, id: u32) -> Result<usize, usize> {
        self.nums.binary_search_by_key(&id, |n| n.name)
    }

    fn remove_num(&mut self, id: u32) {
        if let Ok(i) = self.num_position(id) {
            self.nums.remove(i);
            if self.nums.capacity() > 2 * self.nums.len() + 2 {
                self.nums.shrink_to_fit();
            }
        }
    }

    /// Sets `name`'s value (`id` is its id).
    fn insert(&mut self, id: u32, name: &Arc<str>, value: &AggValue) {
        match value {
            AggValue::Num(x) => {
                self.others.remove(&**name);
                let packed = PackedNum {
                    name: id,
                    bits: x.to_bits(),
                };
                match self.num_position(id) {
                    Ok(i) => self.nums[i] = packed,
                    Err(i) => {
                        self.nums.reserve_exact(1);
                        self.nums.insert(i, packed);
                    }
                }
            }
            other => {
                self.remove_num(id);
                self.others.insert(name.clone(), Box::new(other.clone()));
            }
        }
    }

    /// Removes `name`'s value if it is `value` (`id` is its id, if it has one).
    fn remove(&mut self, id: Option<u32>, name: &str, value: &AggValue) {
        if let (Some(id), AggValue::Num(_)) = (id, value) {
            let held = self
                .num_position(id)
                .ok()
                .map(|i| AggValue::Num(f64::from_bits(self.nums[i].bits)));
            if held.as_ref() == Some(value) {
                self.remove_num(id);
            }
        } else if self.others.get(name).is_some_and(|v| **v == *value) {
            self.others.remove(name);
        }
    }

    /// `(name, value)` by name.
    fn sorted<'a>(&'a self, names: &'a [Arc<str>]) -> Vec<(&'a str, AggValue)> {
        let mut out: Vec<(&str, AggValue)> = self
            .nums
            .iter()
            .map(|n| {
                let (id, bits) = (n.name, n.bits);
                (&*names[id as usize], AggValue::Num(f64::from_bits(bits)))
            })
            .chain(self.others.iter().map(|(k, v)| (&**k, (**v).clone())))
            .collect();
        out.sort_by(|a, b| a.0.cmp(b.0));
        out
    }
}

/// A small map as a vector sorted by key.
struct Sorted<K, V>(Vec<(K, V)>);

impl<K, V> Default for Sorted<K, V> {
    fn default() -> Self {
        Sorted(Vec::new())
    }
}

impl<K: Ord, V> Sorted<K, V> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn position<Q: Ord + ?Sized>(&self, key: &Q) -> Result<usize, usize>
    where
        K: std::borrow::Borrow<Q>,
    {
        self.0.binary_search_by(|(k, _)| k.borrow().cmp(key))
    }

    fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
    {
        self.position(key).ok().map(|i| &self.0[i].1)
    }

    fn insert(&mut self, key: K, value: V) {
        match self.position(&key) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => {
                // Grow by one: most profiles keep a few entries.
                self.0.reserve_exact(1);
                self.0.insert(i, (key, value));
            }
        }
    }

    fn remove<Q: Ord + ?Sized>(&mut self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
    {
        if let Ok(i) = self.position(key) {
            self.0.remove(i);
            if self.0.capacity() > 2 * self.0.len() + 2 {
                self.0.shrink_to_fit();
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = &(K, V)> {
        self.0.iter()
    }
}

/// A profile's events in [`StoredEvent`] order (event time, fingerprint,
/// type): a sorted vector of handles shared with the dataflow's
/// events-by-anchor arrangement (whose bodies are in the event log), not a
/// tree of boxed keys.
/// Insertion moves the later entries; a profile's history is at most
/// thousands of events.
#[derive(Default)]
struct Events(Vec<(StoredEvent, isize)>);

impl Events {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    /// Adds `diff` copies of `e` (removing it at a count of 0 or less).
    fn change(&mut self, e: &StoredEvent, diff: isize) {
        match self.0.binary_search_by(|x| x.0.cmp(e)) {
            Ok(i) => {
                self.0[i].1 += diff;
                if self.0[i].1 <= 0 {
                    self.0.remove(i);
                }
            }
            Err(i) if diff > 0 => {
                if self.0.len() == self.0.capacity() {
                    // Grow by a quarter: a profile's history is long-lived.
                    self.0.reserve_exact(self.0.len() / 4 + 1);
                }
                self.0.insert(i, (e.clone(), diff))
            }
            Err(_) => {}
        }
        if self.0.capacity() > 2 * self.0.len() + 4 {
            self.0.shrink_to_fit();
        }
    }

    /// The events before `before` (all without one), oldest first.
    fn older(&self, before: Option<&EventKey>) -> &[(StoredEvent, isize)] {
        match before {
            None => &self.0,
            Some(b) => &self.0[..self.0.partition_point(|(e, _)| event_key(e) < *b)],
        }
    }
}

impl ProfileEntry {
    fn is_empty(&self) -> bool {
        self.identifiers.is_empty()
            && self.traits.is_empty()
            && self.computed.is_empty()
            && self.audiences.is_empty()
            && self.events.is_empty()
            && self.heads.is_empty()
    }

    /// Events listed or chained.
    fn events_total(&self) -> usize {
        self.events.len() + self.heads.iter().map(|(_, h)| h.chain_len()).sum::<usize>()
    }
}

#[derive(Default)]
struct IndexState {
    as_of: Option<u64>,
    /// Time spent applying changes (under the write lock).
    apply_nanos: u64,
    complete: bool,
    by_identifier: IdMap<ProfileId>,
    profiles: IdMap<ProfileEntry>,
    events: usize,
    /// Computed trait and audience names, interned.
    names: HashSet<Arc<str>>,
    /// Computed trait names by id (the packed numbers' names), and their ids.
    name_list: Vec<Arc<str>>,
    name_ids: HashMap<Arc<str>, u32>,
}

impl IndexState {
    fn name(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.names.get(name) {
            return n.clone();
        }
        let n: Arc<str> = name.into();
        self.names.insert(n.clone());
        n
    }

    /// `name` interned, with its id.
    fn name_id(&mut self, name: &str) -> (u32, Arc<str>) {
        if let Some((n, id)) = self.name_ids.get_key_value(name) {
            return (*id, n.clone());
        }
        let n = self.name(name);
        let id = u32::try_from(self.name_list.len()).expect("fewer than 2^32 trait names");
        self.name_list.push(n.clone());
        self.name_ids.insert(n.clone(), id);
        (id, n)
    }
}

/// A job's profile index (see the module docs).
#[derive(Default)]
pub struct ProfileIndex {
    state: RwLock<IndexState>,
}

impl std::fmt::Debug for ProfileIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProfileIndex")
            .field("stats", &self.stats())
            .finish()
    }
}

/// Sizes of an index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct IndexStats {
    /// The time the index reflects.
    pub as_of: Option<u64>,
    /// Whether the job's output is complete (nothing will change any more).
    pub complete: bool,
    /// Profiles.
    pub profiles: usize,
    /// Identifiers.
    pub identifiers: usize,
    /// Events.
    pub events: usize,
    /// Seconds worker 0 has spent applying changes (holding the write lock).
    pub apply_seconds: f64,
}

/// Which of a profile's events to return: newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventPage {
    /// At most this many.
    pub limit: usize,
    /// Only events older than this cursor (an `events_next` of an earlier answer).
    pub before: Option<String>,
}

/// The answer to a lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The profile, as JSON (see docs/profile-api.md).
    Found(Vec<u8>),
    /// No profile has this identifier at `as_of`.
    NotFound {
        /// The time the index reflects.
        as_of: Option<u64>,
    },
    /// `before` is not a cursor this index gave out.
    BadCursor,
}

fn cursor(e: &StoredEvent) -> String {
    format!("{}:{:x}", e.time_ms, e.fingerprint())
}

/// `time:fingerprint` (what [`cursor`] gives out; an older cursor's third
/// part, a messageId, is ignored).
fn parse_cursor(s: &str) -> Option<EventKey> {
    let mut parts = s.splitn(3, ':');
    let time = parts.next()?.parse().ok()?;
    let hash = u128::from_str_radix(parts.next()?, 16).ok()?;
    Some((time, hash))
}

impl ProfileIndex {
    /// Applies the consolidated changes of one completed time (retractions
    /// first, so a value that changes at `time` is replaced).
    pub fn apply(&self, time: u64, updates: &[(IndexUpdate, isize)]) {
        let mut state = self.state.write().expect("profile index lock");
        let started = std::time::Instant::now();
        let retractions = updates.iter().filter(|(_, d)| *d < 0);
        let insertions = updates.iter().filter(|(_, d)| *d > 0);
        for (u, d) in retractions.chain(insertions) {
            state.change(u, *d);
        }
        state.as_of = Some(state.as_of.map_or(time, |t| t.max(time)));
        state.apply_nanos += started.elapsed().as_nanos() as u64;
    }

    /// Records that every time before `frontier` has been applied (empty: the output is complete).
    pub fn advance(&self, frontier: &[u64]) {
        let mut state = self.state.write().expect("profile index lock");
        match frontier.first() {
            None => state.complete = true,
            Some(0) => {}
            Some(f) => state.as_of = Some(state.as_of.map_or(f - 1, |t| t.max(f - 1))),
        }
    }

    /// Sizes and time.
    pub fn stats(&self) -> IndexStats {
        let state = self.state.read().expect("profile index lock");
        IndexStats {
            as_of: state.as_of,
            complete: state.complete,
            profiles: state.profiles.len(),
            identifiers: state.by_identifier.len(),
            events: state.events,
            apply_seconds: state.apply_nanos as f64 / 1e9,
        }
    }

    /// The profile holding identifier `kind:value`, rendered as JSON.
    pub fn lookup(&self, kind: &str, value: &str, page: &EventPage) -> Lookup {
        let before = match page.before.as_deref().map(parse_cursor) {
            Some(None) => return Lookup::BadCursor,
            Some(Some(k)) => Some(k),
            None => None,
        };
        let state = self.state.read().expect("profile index lock");
        let found = state
            .by_identifier
            .get(&id_hash(kind, value))
            .and_then(|p| state.profiles.get(p).map(|e| (*p, e)));
        match found {
            None => Lookup::NotFound { as_of: state.as_of },
            Some((p, entry)) => Lookup::Found(render(&state, p, entry, page.limit, before)),
        }
    }
}

impl IndexState {
    fn entry(&mut self, p: ProfileId) -> &mut ProfileEntry {
        self.profiles.entry(p).or_default()
    }

    /// Applies one change; removes profiles left with nothing.
    fn change(&mut self, update: &IndexUpdate, diff: isize) {
        let insert = diff > 0;
        let p = match update {
            IndexUpdate::Identifier(p, ident) => {
                let h = ident.hash();
                if insert {
                    self.by_identifier.insert(h, *p);
                    self.entry(*p).identifiers.insert(ident.clone(), ());
                } else {
                    if self.by_identifier.get(&h) == Some(p) {
                        self.by_identifier.remove(&h);
                    }
                    self.entry(*p).identifiers.remove(ident);
                }
                p
            }
            IndexUpdate::Trait(p, key, value) => {
                let traits = &mut self.entry(*p).traits;
                if insert {
                    traits.insert(key.clone(), value.clone());
                } else if traits.get(key) == Some(value) {
                    traits.remove(key);
                }
                p
            }
            IndexUpdate::Computed(p, name, value) => {
                if insert {
                    let (id, name) = self.name_id(name);
                    self.entry(*p).computed.insert(id, &name, value);
                } else {
                    let id = self.name_ids.get(name.as_str()).copied();
                    self.entry(*p).computed.remove(id, name, value);
                }
                p
            }
            IndexUpdate::Audience(p, name) => {
                if insert {
                    let name = self.name(name);
                    self.entry(*p).audiences.insert(name, ());
                } else {
                    self.entry(*p).audiences.remove(name.as_str());
                }
                p
            }
            IndexUpdate::Event(p, e) => {
                let events = &mut self.entry(*p).events;
                let before = events.len();
                events.change(e, diff);
                let after = events.len();
                self.events = (self.events + after).saturating_sub(before);
                p
            }
            IndexUpdate::Head(p, anchor, head) => {
                let heads = &mut self.entry(*p).heads;
                // One head per anchor: a new one replaces the old (whichever
                // of the two updates comes first), a retraction removes only itself.
                let (added, removed) = if insert {
                    let old = heads.get(anchor).map_or(0, StoredEvent::chain_len);
                    heads.insert(*anchor, head.clone());
                    (head.chain_len(), old)
                } else if heads.get(anchor) == Some(head) {
                    heads.remove(anchor);
                    (0, head.chain_len())
                } else {
                    (0, 0)
                };
                self.events = (self.events + added).saturating_sub(removed);
                p
            }
        };
        if self.profiles.get(p).is_some_and(ProfileEntry::is_empty) {
            self.profiles.remove(p);
        }
    }
}

/// Renders a profile (see docs/profile-api.md for the shape).
fn render(
    state: &IndexState,
    p: ProfileId,
    entry: &ProfileEntry,
    limit: usize,
    before: Option<EventKey>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    out.extend_from_slice(b"{\"as_of\":");
    match state.as_of {
        Some(t) => out.extend_from_slice(t.to_string().as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(if state.complete {
        b",\"complete\":true"
    } else {
        b",\"complete\":false"
    });
    out.extend_from_slice(b",\"profile\":");
    match entry
        .identifiers
        .iter()
        .find(|(i, _)| Identifier::hash(i) == p)
    {
        Some((name, _)) => write_json_string(&mut out, &format!("{}:{}", name.kind, name.value)),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"identifiers\":[");
    for (i, (ident, _)) in entry.identifiers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        ident.write_json(&mut out);
    }
    out.extend_from_slice(b"],\"traits\":{");
    for (i, (k, v)) in entry.traits.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json_string(&mut out, k);
        out.push(b':');
        out.extend_from_slice(v.as_bytes());
    }
    out.extend_from_slice(b"},\"computed_traits\":{");
    for (i, (k, v)) in entry.computed.sorted(&state.name_list).iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json_string(&mut out, k);
        out.push(b':');
        v.write_json(&mut out);
    }
    out.extend_from_slice(b"},\"audiences\":[");
    for (i, (a, _)) in entry.audiences.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json_string(&mut out, a);
    }
    out.extend_from_slice(b"],\"events\":[");
    // Chained events are read from the log (headers only) and merged in.
    let chained: Vec<(StoredEvent, isize)>;
    let older = if entry.heads.is_empty() {
        entry.events.older(before.as_ref())
    } else {
        let mut all: Vec<(StoredEvent, isize)> = entry.events.0.clone();
        for (_, head) in entry.heads.iter() {
            all.extend(head.chain().map(|e| (e, 1)));
        }
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if let Some(b) = &before {
            all.truncate(all.partition_point(|(e, _)| event_key(e) < *b));
        }
        chained = all;
        &chained[..]
    };
    let shown = older.len().min(limit);
    for (i, (e, _)) in older.iter().rev().take(shown).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        e.load().write_json(&mut out);
    }
    // More remain when the page stopped before the oldest event.
    let last = (shown > 0 && shown < older.len()).then(|| &older[older.len() - shown]);
    out.extend_from_slice(b"],\"events_total\":");
    out.extend_from_slice(entry.events_total().to_string().as_bytes());
    out.extend_from_slice(b",\"events_next\":");
    match last {
        Some((e, _)) => write_json_string(&mut out, &cursor(e)),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_dataflows::event::{parse_event, Event, ParseContext};

    fn ev(id: &str, ts: &str) -> Event {
        let line =
            format!(r#"{{"type":"page","userId":"u1","messageId":"{id}","timestamp":"{ts}"}}"#);
        parse_event(line.as_bytes(), &ParseContext::default()).unwrap()
    }

    #[test]
    fn computed_values_are_one_per_name_in_either_form() {
        let mut names: Vec<Arc<str>> = Vec::new();
        let (a, b): (Arc<str>, Arc<str>) = ("b_count".into(), "a_label".into());
        names.push(a.clone());
        names.push(b.clone());
        let mut c = Computed::default();
        assert_eq!(std::mem::size_of::<PackedNum>(), 12);
        c.insert(0, &a, &AggValue::Num(3.0));
        c.insert(1, &b, &AggValue::Num(-0.5));
        c.insert(0, &a, &AggValue::Num(4.0)); // replaces
        let got = c.sorted(&names);
        assert_eq!(
            got,
            vec![
                ("a_label", AggValue::Num(-0.5)),
                ("b_count", AggValue::Num(4.0))
            ]
        );
        // A number becomes a string and back: never both.
        c.insert(1, &b, &AggValue::Str("x".into()));
        assert_eq!(c.nums.len(), 1);
        assert_eq!(c.sorted(&names)[0], ("a_label", AggValue::Str("x".into())));
        c.insert(1, &b, &AggValue::Num(1.0));
        assert!(c.others.is_empty());
        // A retraction of another value keeps the current one.
        c.remove(Some(0), "b_count", &AggValue::Num(3.0));
        assert_eq!(c.sorted(&names).len(), 2);
        c.remove(Some(0), "b_count", &AggValue::Num(4.0));
        c.remove(Some(1), "a_label", &AggValue::Num(1.0));
        assert!(c.is_empty());
        c.insert(1, &b, &AggValue::Str("y".into()));
        c.remove(Some(1), "a_label", &AggValue::Str("z".into()));
        assert!(!c.is_empty());
        c.remove(Some(1), "a_label", &AggValue::Str("y".into()));
        assert!(c.is_empty());
    }

    fn json(l: Lookup) -> serde_json::Value {
        match l {
            Lookup::Found(b) => serde_json::from_slice(&b).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    /// Chained events (heads of two anchors, in any update order) page like
    /// listed ones, newest first across both chains; a moved anchor's
    /// events leave with its head.
    #[test]
    fn pages_events_of_chains() {
        let index = ProfileIndex::default();
        let u1 = Identifier::new("user_id", "u1");
        let p = u1.hash();
        let (a, b) = (id_hash("anonymous_id", "a"), id_hash("anonymous_id", "b"));
        let events: Vec<Event> = (0..7)
            .map(|i| ev(&format!("m{i}"), &format!("2026-01-0{}T00:00:00Z", i + 1)))
            .collect();
        // Anchor a: m0, m2, m4, m6; anchor b: m1, m3, m5.
        let (mut ha, mut hb): (Option<StoredEvent>, Option<StoredEvent>) = (None, None);
        let mut time = 0;
        for (i, e) in events.iter().enumerate() {
            let (anchor, head) = if i % 2 == 0 {
                (a, &mut ha)
            } else {
                (b, &mut hb)
            };
            let new = StoredEvent::store_linked(e, head.as_ref());
            // The retraction of the old head after the new head's insertion.
            let mut updates = vec![(IndexUpdate::Head(p, anchor, new.clone()), 1)];
            if let Some(old) = head.replace(new) {
                updates.push((IndexUpdate::Head(p, anchor, old), -1));
            }
            if i == 0 {
                updates.push((IndexUpdate::Identifier(p, u1.clone()), 1));
            }
            time += 1;
            index.apply(time, &updates);
        }
        let mut all = Vec::new();
        let mut before = None;
        loop {
            let v = json(index.lookup("user_id", "u1", &EventPage { limit: 3, before }));
            assert_eq!(v["events_total"], 7);
            all.extend(
                v["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["messageId"].as_str().unwrap().to_string()),
            );
            before = v["events_next"].as_str().map(str::to_string);
            if before.is_none() {
                break;
            }
        }
        assert_eq!(all, ["m6", "m5", "m4", "m3", "m2", "m1", "m0"]);
        assert_eq!(index.stats().events, 7);
        // Anchor b moves to another profile.
        index.apply(
            time + 1,
            &[(IndexUpdate::Head(p, b, hb.clone().unwrap()), -1)],
        );
        let v = json(index.lookup(
            "user_id",
            "u1",
            &EventPage {
                limit: 10,
                before: None,
            },
        ));
        assert_eq!(v["events_total"], 4);
        assert_eq!(v["events"].as_array().unwrap().len(), 4);
        assert_eq!(index.stats().events, 4);
    }

    #[test]
    fn applies_times_and_pages_events() {
        let index = ProfileIndex::default();
        let u1 = Identifier::new("user_id", "u1");
        let a1 = Identifier::new("anonymous_id", "a1");
        let p = a1.hash();
        let page = EventPage {
            limit: 2,
            before: None,
        };
        assert_eq!(
            index.lookup("user_id", "u1", &page),
            Lookup::NotFound { as_of: None }
        );
        let events: Vec<Event> = (0..5)
            .map(|i| ev(&format!("m{i}"), &format!("2026-01-0{}T00:00:00Z", i + 1)))
            .collect();
        let mut updates = vec![
            (IndexUpdate::Identifier(p, u1.clone()), 1),
            (IndexUpdate::Identifier(p, a1.clone()), 1),
            (IndexUpdate::Trait(p, "plan".into(), "\"pro\"".into()), 1),
            (IndexUpdate::Audience(p, "fans".into()), 1),
            (IndexUpdate::Computed(p, "n".into(), AggValue::Num(5.0)), 1),
        ];
        updates.extend(
            events
                .iter()
                .map(|e| (IndexUpdate::Event(p, StoredEvent::store(e)), 1)),
        );
        index.apply(10, &updates);
        let v = json(index.lookup("user_id", "u1", &page));
        assert_eq!(v["as_of"], 10);
        assert_eq!(v["profile"], "anonymous_id:a1");
        assert_eq!(v["traits"]["plan"], "pro");
        assert_eq!(v["computed_traits"]["n"], 5.0);
        assert_eq!(v["audiences"], serde_json::json!(["fans"]));
        assert_eq!(v["events_total"], 5);
        let ids: Vec<&str> = v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["messageId"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["m4", "m3"]);
        let next = v["events_next"].as_str().unwrap().to_string();
        let mut all = ids.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut before = Some(next);
        while let Some(b) = before {
            let v = json(index.lookup(
                "anonymous_id",
                "a1",
                &EventPage {
                    limit: 2,
                    before: Some(b),
                },
            ));
            all.extend(
                v["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["messageId"].as_str().unwrap().to_string()),
            );
            before = v["events_next"].as_str().map(str::to_string);
        }
        assert_eq!(all, ["m4", "m3", "m2", "m1", "m0"]);
        // A trait changes and the audience is left in one time; the frontier moves on.
        index.apply(
            20,
            &[
                (IndexUpdate::Trait(p, "plan".into(), "\"free\"".into()), 1),
                (IndexUpdate::Trait(p, "plan".into(), "\"pro\"".into()), -1),
                (IndexUpdate::Audience(p, "fans".into()), -1),
            ],
        );
        index.advance(&[31]);
        let v = json(index.lookup("user_id", "u1", &page));
        assert_eq!(
            (v["as_of"].as_u64(), v["complete"].as_bool()),
            (Some(30), Some(false))
        );
        assert_eq!(v["traits"]["plan"], "free");
        assert_eq!(v["audiences"], serde_json::json!([]));
        assert_eq!(
            index.lookup(
                "user_id",
                "u1",
                &EventPage {
                    limit: 1,
                    before: Some("x".into())
                }
            ),
            Lookup::BadCursor
        );
        // Everything retracted: the profile is gone.
        let mut gone: Vec<(IndexUpdate, isize)> = vec![
            (IndexUpdate::Identifier(p, u1), -1),
            (IndexUpdate::Identifier(p, a1), -1),
            (IndexUpdate::Trait(p, "plan".into(), "\"free\"".into()), -1),
            (IndexUpdate::Computed(p, "n".into(), AggValue::Num(5.0)), -1),
        ];
        gone.extend(
            events
                .iter()
                .map(|e| (IndexUpdate::Event(p, StoredEvent::transient(e)), -1)),
        );
        index.apply(40, &gone);
        index.advance(&[]);
        assert_eq!(
            index.lookup("user_id", "u1", &page),
            Lookup::NotFound { as_of: Some(40) }
        );
        let stats = index.stats();
        assert_eq!(
            (
                stats.profiles,
                stats.identifiers,
                stats.events,
                stats.complete
            ),
            (0, 0, 0, true)
        );
    }
}

//! Identity resolution: identifiers seen together on events are stitched into
//! profiles by an incremental identity graph with rules, and profiles merge
//! and split as edges come and go.
//!
//! ```text
//!  events ──flat_map(observe)──► facts ──partition──┬─ sightings ─ reduce(min time) ─► nodes (id → first seen, kind)
//!                                                   ├─ names ───── reduce ──────────► identifiers (id → (kind, value))
//!                                                   ├─ edges ─┐
//!                                                   ├─ aliases ┴ join names ─ reduce(min time) ─► edges (first seen)
//!                                                   │            │ per-identifier limits (reduce), both ends agree
//!                                                   │            ▼
//!                                                   │          candidates + identifiers ─ cluster_reduce (worker 0):
//!                                                   │            │ per cluster (component of the candidates), over its identifiers and candidates:
//!                                                   │            │ greedy per-profile limits, union-find, oldest names
//!                                                   │            ▼
//!                                                   │          accepted edges; id → profile (an id without candidates: itself)
//!                                                   │            │ component_changes
//!                                                   │            ▼
//!                                                   │          merges / splits
//!                                                   ├─ traits ── join profiles ─ reduce(last write) ─► profile traits
//!                                                   ├─ members ─ join profiles ─ distinct ──────────► accounts
//!                                                   └─ group traits ─ reduce(last write) ───────────► account traits
//! ```
//!
//! # Identifiers
//!
//! An identifier is `(kind, value)`; inside dataflows it is the 128-bit
//! [`id_hash`] (xxh3-128 of `kind`, a `0x00` byte, `value`), and
//! [`IdentityOutputs::identifiers`] maps hashes back to `(kind, value)`.
//! An event contributes, when present and not blocked:
//!
//! | kind | from |
//! |---|---|
//! | `user_id` | `userId` |
//! | `anonymous_id` | `anonymousId` |
//! | `email` | `context.traits.email`, else `traits.email` (for `group` calls only `context.traits.email`: a group's traits describe the account) |
//! | `device_id` | `context.device.id` |
//! | the entry's `type` | every `context.externalIds[]` entry, except type `group_id`; a custom kind with path `external_id:<type>` renames the type |
//! | a custom kind | its `traits.…`, `properties.…` or `context.…` path (strings; numbers and booleans as their JSON text) |
//!
//! Values are compared exactly (no case folding or trimming).
//! **Blocked values**: an identifier whose value matches one of
//! `IdentitySpec::blocked_values` (each a regular expression matched against
//! the whole value, case-sensitively) is ignored entirely.
//!
//! # Edges
//!
//! - **Star per event.** The event's identifiers are ordered by (kind
//!   priority, hash); the first is the event's *anchor*, and the event gives
//!   one edge from the anchor to each other identifier. An edge's time is the
//!   earliest event time of the events that give it (while they exist).
//! - **Alias.** `alias` (`previousId` → `userId`) gives an *explicit* edge
//!   from the `userId` to every identifier of kind `user_id` or
//!   `anonymous_id` whose value is `previousId` and that some event (other
//!   than as a `previousId`) has shown. (`previousId` is untyped in Segment's
//!   spec; an alias whose `previousId` has not been seen links nothing until it
//!   is.) Explicit edges are the customer saying "same person": they are
//!   exempt from limits, so `user_id` alias chains merge.
//! - **Group.** `group` does not add edges: it makes the profile of the
//!   event's anchor a member of the account `(group_id, groupId)`
//!   ([`IdentityOutputs::accounts`]). Two users of one account stay two
//!   profiles. `group_id` is never a node of the identity graph, so `limits`
//!   and `priority` entries for it have no effect.
//!
//! # Rules
//!
//! Kinds are ranked by `IdentitySpec::priority`, then the built-in kinds not
//! listed (`user_id`, `email`, `device_id`, `anonymous_id`), then custom kinds
//! in spec order, then every other kind (unlisted external id types, equal
//! rank). A kind is *limited* if `IdentitySpec::limits` names it (default:
//! `user_id` 1, `anonymous_id`, `email`, `device_id` 5); other kinds are
//! unlimited. The accepted edges are defined from the current edges alone
//! (so every retraction re-decides, and the next candidate takes a retracted
//! edge's place):
//!
//! 1. **Per-identifier limits.** Each identifier keeps, for every limited
//!    kind `K`, its earliest `limit(K)` non-explicit edges to identifiers of
//!    kind `K`, by (edge time, other hash). An edge is a *candidate* when both
//!    ends keep it. This bounds the degree of hubs (a shared device, a
//!    support email) before any global work. Insert-only
//!    ([`identity_insert_only`]), edge times only move down and no edge
//!    leaves, so each identifier keeps only the edges it keeps, in the same
//!    structure as the clusters of step 2 (`graph`: each identifier and edge
//!    stored once); otherwise a `reduce` over every identifier's edges and a
//!    threshold per edge decide.
//! 2. **Per-profile limits, greedy by time.** Candidates are considered in
//!    order of (edge time, better kind rank of its ends, worse kind rank,
//!    hashes). An edge is accepted when its ends are already in one profile,
//!    when it is explicit, or when joining the two profiles would not raise
//!    the count of any limited kind `K` in one profile above `limit(K)`;
//!    otherwise it is rejected. This is Segment's "the first identity wins":
//!    a device shared by two users stays with the one it was seen with first.
//!    It is computed per *cluster* (connected component of the candidates,
//!    by `weft_operators::clusters::cluster_reduce`, insert-only by
//!    `graph`), which holds everything
//!    a decision can depend on: per cluster, one call sorts its candidates,
//!    runs the greedy union-find, and names the resulting profiles. A change
//!    anywhere in a cluster recomputes that cluster only. The clusters live
//!    in one graph structure on worker 0 (components are global); what
//!    reaches it is first-seen identifiers and candidate edges, a graph's
//!    changes rather than per-event traffic.
//!
//! # Profiles
//!
//! Profiles are the connected components of the accepted edges plus every
//! identifier (an identifier without accepted edges is a profile of one).
//! Accepted edges never cross clusters, so the union-find of step 2 gives
//! them directly.
//! A profile is named by its oldest identifier: least (first-seen event time,
//! kind rank, hash), so among identifiers first seen on the same event the
//! highest-priority one (the `user_id`) names the profile. A merge therefore
//! keeps the older id, and after a split the part holding the oldest
//! identifier keeps it while the other part is named by its own oldest
//! identifier.
//!
//! **Merges and splits** ([`IdentityOutputs::changes`]) follow
//! `weft_operators::components` exactly: at a logical time, a profile whose
//! identifiers come from two or more earlier profiles is a merge (one record
//! per absorbed profile); an earlier profile whose identifiers are in two or
//! more profiles is a split (one record per new part). A profile that only
//! changes name produces no record (see the id → profile map).
//!
//! # Traits
//!
//! The top-level keys of `identify` traits are attributed to the event's
//! anchor and so to its profile; per (profile, key), the value of the latest
//! event wins (event time, then messageId, then the value's JSON text, largest
//! wins). `group` traits do the same per account. Values are JSON text as sent.
//! When profiles merge or split, traits are recomputed from the events of the
//! identifiers they hold, so a split takes its own traits with it.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
use differential_dataflow::{AsCollection, VecCollection};
use regex::RegexSet;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::core::Partition;
use weft_operators::clusters::ClusterReduce;
use weft_operators::components::{ChangeKind, ComponentChange, ComponentChanges};
use weft_operators::monotone::{MonotoneFirst, MonotoneMin};

use crate::event::{write_json_string, Event, EventType, Field};
use crate::record::WriteJson;
use crate::spec::{CustomKind, IdentitySpec};

mod graph;

/// An identifier inside dataflows: xxh3-128 of `kind`, `0x00`, `value`.
pub type IdHash = u128;
/// A profile, named by its oldest identifier.
pub type ProfileId = IdHash;
/// An account: the hash of a `group_id` identifier.
pub type AccountId = IdHash;
/// The priority rank of an identifier kind (smaller is higher priority).
pub type KindRank = u16;
/// The rank of kinds the rules do not name (external id types not configured).
pub const OTHER_KIND: KindRank = KindRank::MAX;

/// The hash that stands for `(kind, value)` inside dataflows.
pub fn id_hash(kind: &str, value: &str) -> IdHash {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(kind.as_bytes());
    hasher.update(&[0]);
    hasher.update(value.as_bytes());
    hasher.digest128()
}

/// A readable identifier: `(kind, value)`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Identifier {
    /// `user_id`, `anonymous_id`, `email`, `device_id`, `group_id`, an external id type or a custom kind.
    pub kind: Box<str>,
    /// The value as sent.
    pub value: Box<str>,
}

impl Identifier {
    /// Builds an identifier.
    pub fn new(kind: &str, value: &str) -> Self {
        Identifier {
            kind: kind.into(),
            value: value.into(),
        }
    }
    /// Its [`id_hash`].
    pub fn hash(&self) -> IdHash {
        id_hash(&self.kind, &self.value)
    }
}

impl WriteJson for Identifier {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"kind\":");
        write_json_string(out, &self.kind);
        out.extend_from_slice(b",\"value\":");
        write_json_string(out, &self.value);
        out.push(b'}');
    }
}

/// A last-write-wins candidate: `(event time ms, messageId, value JSON)`; the largest wins.
pub type Lww = (i64, Box<str>, Box<str>);

/// An edge as the rules see it: `(lo, hi, rank of lo, rank of hi, explicit)`, `lo < hi`.
pub type EdgeKey = (IdHash, IdHash, KindRank, KindRank, bool);

// ---------------------------------------------------------------------------
// Rules.

/// Where a custom kind reads its value: a dotted path inside one of the event's JSON objects.
#[derive(Clone, Debug)]
struct CustomPath {
    field: Field,
    keys: Vec<String>,
}

/// A kind the rules know.
#[derive(Clone, Debug)]
struct KindRule {
    name: String,
    limit: Option<u32>,
}

/// `IdentitySpec` compiled: blocked-value regexes, kind ranks and limits,
/// custom kind sources.
#[derive(Clone, Debug)]
pub struct IdentityRules {
    blocked: RegexSet,
    /// Indexed by [`KindRank`].
    kinds: Vec<KindRule>,
    by_name: HashMap<String, KindRank>,
    /// `(rank, source)` for custom kinds read from paths.
    custom_paths: Vec<(KindRank, CustomPath)>,
    /// External id type → kind name, for custom kinds `external_id:<type>`.
    external_renames: HashMap<String, String>,
}

/// What one event says about identity (see [`IdentityRules::observe`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observation {
    /// The event's identifiers, not blocked, without repeats, ordered by
    /// (kind rank, hash); the first is the anchor.
    pub ids: Vec<(KindRank, IdHash, Identifier)>,
    /// For `alias`: the identifiers `previousId` may name, `(rank, hash)`, user_id then anonymous_id.
    pub previous: Vec<(KindRank, IdHash)>,
    /// For `group`: the account.
    pub group: Option<(AccountId, Identifier)>,
}

impl Observation {
    /// The anchor: the event's highest-priority identifier.
    pub fn anchor(&self) -> Option<IdHash> {
        self.ids.first().map(|(_, h, _)| *h)
    }
    /// The event's star edges (anchor to every other identifier), as [`EdgeKey`]s.
    pub fn edges(&self) -> impl Iterator<Item = EdgeKey> + '_ {
        let anchor = self.ids.first();
        self.ids
            .iter()
            .skip(1)
            .filter_map(move |(k, h, _)| anchor.map(|(ka, a, _)| edge_key(*a, *ka, *h, *k, false)))
    }
}

/// An edge key with its ends ordered.
pub fn edge_key(a: IdHash, ka: KindRank, b: IdHash, kb: KindRank, explicit: bool) -> EdgeKey {
    if a <= b {
        (a, b, ka, kb, explicit)
    } else {
        (b, a, kb, ka, explicit)
    }
}

const BUILTIN_GRAPH_KINDS: [&str; 4] = ["user_id", "email", "device_id", "anonymous_id"];

impl IdentityRules {
    /// Compiles the rules; fails with a one-sentence reason when a blocked value is not a valid regex.
    pub fn new(spec: &IdentitySpec) -> Result<IdentityRules, String> {
        let IdentitySpec {
            blocked_values,
            limits,
            priority,
            custom_kinds,
        } = spec;
        let patterns: Vec<String> = blocked_values
            .iter()
            .map(|v| format!("^(?:{v})$"))
            .collect();
        let blocked = RegexSet::new(&patterns)
            .map_err(|e| format!("identity.blocked_values: not a valid regular expression: {e}"))?;
        let mut kinds: Vec<KindRule> = Vec::new();
        let mut by_name: HashMap<String, KindRank> = HashMap::new();
        let mut add = |name: &str| {
            if name == "group_id" || by_name.contains_key(name) {
                return;
            }
            by_name.insert(name.to_string(), kinds.len() as KindRank);
            kinds.push(KindRule {
                name: name.to_string(),
                limit: limits.get(name).copied(),
            });
        };
        for name in priority {
            add(name);
        }
        for name in BUILTIN_GRAPH_KINDS {
            add(name);
        }
        for CustomKind { name, .. } in custom_kinds {
            add(name);
        }
        let mut custom_paths = Vec::new();
        let mut external_renames = HashMap::new();
        for CustomKind { name, path } in custom_kinds {
            let rank = by_name.get(name.as_str()).copied().unwrap_or(OTHER_KIND);
            if let Some(t) = path.strip_prefix("external_id:") {
                external_renames.insert(t.to_string(), name.clone());
                continue;
            }
            let (section, rest) = path.split_once('.').ok_or_else(|| {
                format!("identity.custom_kinds: path {path:?} of kind {name:?} needs a section and a key, like \"traits.crm_id\"")
            })?;
            let field = match section {
                "traits" => Field::Traits,
                "properties" => Field::Properties,
                "context" => Field::Context,
                _ => {
                    return Err(format!(
                        "identity.custom_kinds: path {path:?} of kind {name:?} must start with traits., properties., context. or external_id:"
                    ))
                }
            };
            custom_paths.push((
                rank,
                CustomPath {
                    field,
                    keys: rest.split('.').map(str::to_string).collect(),
                },
            ));
        }
        Ok(IdentityRules {
            blocked,
            kinds,
            by_name,
            custom_paths,
            external_renames,
        })
    }

    /// The rank of a kind ([`OTHER_KIND`] when the rules do not name it).
    pub fn rank(&self, kind: &str) -> KindRank {
        self.by_name.get(kind).copied().unwrap_or(OTHER_KIND)
    }

    /// The per-profile limit of the kind of this rank, if it is limited.
    pub fn limit(&self, rank: KindRank) -> Option<u32> {
        self.kinds.get(rank as usize).and_then(|k| k.limit)
    }

    /// Whether `value` is blocked.
    pub fn is_blocked(&self, value: &str) -> bool {
        self.blocked.is_match(value)
    }

    /// Extracts what `event` says about identity, applying blocked values.
    pub fn observe(&self, event: &Event) -> Observation {
        let mut obs = Observation::default();
        let mut push = |kind: &str, value: &str| {
            if self.is_blocked(value) {
                return;
            }
            let rank = self.rank(kind);
            obs.ids
                .push((rank, id_hash(kind, value), Identifier::new(kind, value)));
        };
        if let Some(v) = event.get(Field::UserId) {
            push("user_id", v);
        }
        if let Some(v) = event.get(Field::AnonymousId) {
            push("anonymous_id", v);
        }
        if event.kind == EventType::Group {
            // A group's `traits.email` is the account's; only the context's is the user's.
            if let Some(v) = event.get(Field::Context).and_then(context_traits_email) {
                push("email", &v);
            }
        } else if let Some(v) = event.get(Field::Email) {
            push("email", v);
        }
        if let Some(v) = event.get(Field::DeviceId) {
            push("device_id", v);
        }
        for (t, v) in event.external_ids() {
            if t == "group_id" {
                continue;
            }
            let kind = self.external_renames.get(t).map_or(t, String::as_str);
            push(kind, v);
        }
        if !self.custom_paths.is_empty() {
            let mut parsed: Vec<(Field, Option<serde_json::Value>)> = Vec::new();
            for (rank, CustomPath { field, keys }) in &self.custom_paths {
                let doc = match parsed.iter().position(|(f, _)| f == field) {
                    Some(i) => &parsed[i].1,
                    None => {
                        let v = event
                            .get(*field)
                            .and_then(|raw| serde_json::from_str(raw).ok());
                        parsed.push((*field, v));
                        &parsed.last().expect("just pushed").1
                    }
                };
                let mut at = doc.as_ref();
                for k in keys {
                    at = at.and_then(|v| v.get(k));
                }
                let value = match at {
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                        Some(v.to_string())
                    }
                    _ => None,
                };
                if let Some(v) = value {
                    push(&self.kinds[*rank as usize].name, &v);
                }
            }
        }
        obs.ids.sort_by_key(|a| (a.0, a.1));
        obs.ids.dedup_by_key(|x| x.1);
        if event.kind == EventType::Alias {
            if let Some(prev) = event.get(Field::PreviousId).filter(|v| !self.is_blocked(v)) {
                for kind in ["user_id", "anonymous_id"] {
                    obs.previous.push((self.rank(kind), id_hash(kind, prev)));
                }
            }
        }
        if event.kind == EventType::Group {
            if let Some(g) = event.get(Field::GroupId).filter(|v| !self.is_blocked(v)) {
                obs.group = Some((id_hash("group_id", g), Identifier::new("group_id", g)));
            }
        }
        obs
    }

    /// Everything the dataflow needs from one event.
    fn facts(&self, event: &Event) -> Vec<Fact> {
        let obs = self.observe(event);
        let t = event.time_ms;
        let mut facts = Vec::with_capacity(3 * obs.ids.len() + 2);
        for (k, h, _) in &obs.ids {
            facts.push(Fact::Seen(*h, t, *k));
        }
        facts.extend(obs.edges().map(|e| Fact::Edge(e, t)));
        let anchor = obs.ids.first().map(|(k, h, _)| (*k, *h));
        if let Some((ku, u)) = obs
            .ids
            .iter()
            .find(|(_, _, i)| &*i.kind == "user_id")
            .map(|(k, h, _)| (*k, *h))
        {
            for (_, p) in &obs.previous {
                facts.push(Fact::Alias(*p, u, ku, t));
            }
        }
        match (event.kind, anchor) {
            (EventType::Identify, Some((_, a))) => {
                for (key, lww) in traits_of(event) {
                    facts.push(Fact::Trait(a, key, lww));
                }
            }
            (EventType::Group, _) => {
                if let Some((g, _)) = &obs.group {
                    if let Some((_, a)) = anchor {
                        facts.push(Fact::Member(a, *g));
                    }
                    for (key, lww) in traits_of(event) {
                        facts.push(Fact::GroupTrait(*g, key, lww));
                    }
                }
            }
            _ => {}
        }
        if let Some((g, ident)) = obs.group {
            facts.push(Fact::Name(g, ident));
        }
        if let Some((_, a)) = anchor {
            facts.push(Fact::Anchored(a, event.clone()));
        }
        for (_, h, ident) in obs.ids {
            facts.push(Fact::Name(h, ident));
        }
        facts
    }
}

/// `context.traits.email`, if it is a string.
fn context_traits_email(context: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(context).ok()?;
    v.get("traits")?
        .get("email")?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The top-level keys of an event's `traits`, as last-write-wins candidates.
fn traits_of(event: &Event) -> Vec<(Box<str>, Lww)> {
    let Some(raw) = event.get(Field::Traits) else {
        return Vec::new();
    };
    let Ok(map) = serde_json::from_str::<BTreeMap<String, &RawValue>>(raw) else {
        return Vec::new();
    };
    map.into_iter()
        .map(|(k, v)| {
            (
                k.into_boxed_str(),
                (
                    event.time_ms,
                    event.message_id().into(),
                    v.get().trim().into(),
                ),
            )
        })
        .collect()
}

/// One fact from one event; partitioned by [`Fact::part`].
#[derive(Clone, Debug)]
enum Fact {
    Seen(IdHash, i64, KindRank),
    Name(IdHash, Identifier),
    Edge(EdgeKey, i64),
    Alias(IdHash, IdHash, KindRank, i64),
    Trait(IdHash, Box<str>, Lww),
    Member(IdHash, AccountId),
    GroupTrait(AccountId, Box<str>, Lww),
    Anchored(IdHash, Event),
}

impl Fact {
    const PARTS: u64 = 8;
    fn part(&self) -> u64 {
        match self {
            Fact::Seen(..) => 0,
            Fact::Name(..) => 1,
            Fact::Edge(..) => 2,
            Fact::Alias(..) => 3,
            Fact::Trait(..) => 4,
            Fact::Member(..) => 5,
            Fact::GroupTrait(..) => 6,
            Fact::Anchored(..) => 7,
        }
    }
}

// ---------------------------------------------------------------------------
// The dataflow.

/// `((profile or account, key), value JSON)`: one trait's current value.
pub type KeyedTrait = ((IdHash, Box<str>), Box<str>);

/// An arrangement keyed by a 128-bit hash.
pub type HashTrace<V> = TraceAgent<ValSpine<IdHash, V, u64, isize>>;
/// A shared arrangement keyed by a 128-bit hash (identifier, profile or account).
pub type ByHash<'s, V> = Arranged<'s, HashTrace<V>>;

/// The collections and arrangements identity resolution maintains.
///
/// Hash-level collections are consolidated per time unless noted. The
/// `*_records` methods join them with [`IdentityOutputs::identifiers`] into
/// readable records for sinks (they build the joins when called).
pub struct IdentityOutputs<'s> {
    /// The reverse map: identifier (and account) hash → `(kind, value)`.
    pub identifiers: ByHash<'s, Identifier>,
    /// Identifier → (first-seen event time ms, kind rank), for every identifier of a live event.
    pub nodes: VecCollection<'s, u64, (IdHash, (i64, KindRank)), isize>,
    /// Edges between identifiers (with their first-seen time), before the limits.
    pub edges: VecCollection<'s, u64, (EdgeKey, i64), isize>,
    /// Edges accepted by the rules, `(lo, hi)`.
    pub accepted: VecCollection<'s, u64, (IdHash, IdHash), isize>,
    /// Identifier → profile, for every identifier.
    pub profiles: VecCollection<'s, u64, (IdHash, ProfileId), isize>,
    /// The same, arranged by identifier (Profile API lookups, audiences).
    pub profile_of: ByHash<'s, ProfileId>,
    /// Profile → its identifiers.
    pub members: ByHash<'s, IdHash>,
    /// Merges and splits of profiles, inserted at the time they happen.
    pub changes: VecCollection<'s, u64, ComponentChange<ProfileId>, isize>,
    /// `((profile, key), value JSON)`: identify traits, last write wins.
    pub traits: VecCollection<'s, u64, KeyedTrait, isize>,
    /// Profile → `(key, value JSON)`.
    pub traits_by_profile: ByHash<'s, (Box<str>, Box<str>)>,
    /// `(profile, account)`: profiles whose identifiers made group calls for the account.
    pub accounts: VecCollection<'s, u64, (ProfileId, AccountId), isize>,
    /// `((account, key), value JSON)`: group traits, last write wins.
    pub account_traits: VecCollection<'s, u64, KeyedTrait, isize>,
    /// Every event with its anchor identifier (its highest-priority
    /// identifier): join with `profile_of` to key events by profile.
    pub anchored: VecCollection<'s, u64, (IdHash, Event), isize>,
}

/// Builds identity resolution over validated events.
///
/// `events` may carry retractions (deletions, replays); every output is a
/// function of the accumulated events at each time, except
/// [`IdentityOutputs::changes`], which records transitions. Fails (before
/// building anything) when the rules do not compile.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use differential_dataflow::input::Input;
/// use weft_dataflows::event::{parse_event, ParseContext};
/// use weft_dataflows::identity::{identity, id_hash};
/// use weft_dataflows::spec::IdentitySpec;
///
/// let out = Arc::new(Mutex::new(Vec::new()));
/// let log = out.clone();
/// timely::execute_directly(move |worker| {
///     let mut events = worker.dataflow::<u64, _, _>(|scope| {
///         let (input, events) = scope.new_collection();
///         let outputs = identity(events, &IdentitySpec::default()).unwrap();
///         outputs.profiles.inspect(move |x| log.lock().unwrap().push(x.clone()));
///         input
///     });
///     let cx = ParseContext::default();
///     events.insert(parse_event(br#"{"type":"page","anonymousId":"a1","timestamp":"2026-01-01T00:00:00Z"}"#, &cx).unwrap());
///     events.insert(parse_event(br#"{"type":"identify","anonymousId":"a1","userId":"u1","timestamp":"2026-01-02T00:00:00Z"}"#, &cx).unwrap());
/// });
/// // a1 was seen first, so it names the profile u1 joined.
/// let a1 = id_hash("anonymous_id", "a1");
/// let mut got: Vec<_> = out.lock().unwrap().iter().map(|(d, _, _)| *d).collect();
/// got.sort();
/// let mut want = vec![(a1, a1), (id_hash("user_id", "u1"), a1)];
/// want.sort();
/// assert_eq!(got, want);
/// ```
pub fn identity<'s>(
    events: VecCollection<'s, u64, Event, isize>,
    rules: &IdentitySpec,
) -> Result<IdentityOutputs<'s>, String> {
    build(events, rules, false)
}

/// [`identity`] over events that are never retracted (a job without
/// regulations: its sources only insert). The same outputs; first-seen
/// times of identifiers and edges, and each identifier's latest observation
/// of each trait, keep one value each ([`weft_operators::monotone`])
/// instead of arranging every sighting in case one is retracted. A
/// retraction in `events` panics.
pub fn identity_insert_only<'s>(
    events: VecCollection<'s, u64, Event, isize>,
    rules: &IdentitySpec,
) -> Result<IdentityOutputs<'s>, String> {
    build(events, rules, true)
}

fn build<'s>(
    events: VecCollection<'s, u64, Event, isize>,
    rules: &IdentitySpec,
    insert_only: bool,
) -> Result<IdentityOutputs<'s>, String> {
    let rules = Rc::new(IdentityRules::new(rules)?);

    // STEP 1. Facts, one pass over the events, partitioned by kind.
    let observe = Rc::clone(&rules);
    let facts = events.flat_map(move |e| observe.facts(&e));
    let mut parts = facts
        .inner
        .partition::<CapacityContainerBuilder<Vec<_>>, _, _>(Fact::PARTS, |(f, t, r)| {
            (f.part(), (f, t, r))
        })
        .into_iter()
        .map(|s| s.as_collection());
    let mut next = || parts.next().expect("Fact::PARTS streams");
    let seen = next().flat_map(|f| {
        if let Fact::Seen(h, t, k) = f {
            Some((h, (t, k)))
        } else {
            None
        }
    });
    let names = next().flat_map(|f| {
        if let Fact::Name(h, i) = f {
            Some((h, i))
        } else {
            None
        }
    });
    let edge_obs = next().flat_map(|f| {
        if let Fact::Edge(e, t) = f {
            Some((e, t))
        } else {
            None
        }
    });
    let aliases = next().flat_map(|f| {
        if let Fact::Alias(p, u, k, t) = f {
            Some((p, (u, k, t)))
        } else {
            None
        }
    });
    let trait_obs = next().flat_map(|f| {
        if let Fact::Trait(h, k, v) = f {
            Some((h, (k, v)))
        } else {
            None
        }
    });
    let member_obs = next().flat_map(|f| {
        if let Fact::Member(h, g) = f {
            Some((h, g))
        } else {
            None
        }
    });
    let group_trait_obs = next().flat_map(|f| {
        if let Fact::GroupTrait(g, k, v) = f {
            Some(((g, k), v))
        } else {
            None
        }
    });
    let anchored = next().flat_map(|f| {
        if let Fact::Anchored(a, e) = f {
            Some((a, e))
        } else {
            None
        }
    });

    // STEP 2. Identifiers: first-seen time and kind; the reverse map.
    // (Read as a collection only, by the cluster graph: not arranged
    // insert-only.)
    let nodes = if insert_only {
        seen.monotone_min("IdentityFirstSeen")
    } else {
        seen.reduce_abelian::<_, ValBuilder<_, _, _, _>, ValSpine<IdHash, (i64, KindRank), u64, isize>>(
            "IdentityFirstSeen",
            |_h, input, output| {
                if let Some((v, _)) = input.iter().find(|(_, r)| *r > 0) {
                    output.push((**v, 1));
                }
            },
        )
        .as_collection(|h, v| (*h, *v))
    };
    // (Insert-only: a hash names one identifier, which is never retracted:
    // one value per hash, without arranging every observation.)
    let identifiers = if insert_only {
        names
            .monotone_first("IdentityNamesFirst")
            .arrange_by_key_named("IdentityNames")
    } else {
        names.reduce_abelian::<_, ValBuilder<_, _, _, _>, ValSpine<IdHash, Identifier, u64, isize>>(
            "IdentityNames",
            |_h, input, output| {
                if let Some((v, _)) = input.iter().find(|(_, r)| *r > 0) {
                    output.push(((*v).clone(), 1));
                }
            },
        )
    };

    // STEP 3. Edges with their first-seen time; alias edges to identifiers
    // that exist (an identifier is named while it is seen: the names tell
    // existence and kind, so the first-seen times need no arrangement).
    let ranks = Rc::clone(&rules);
    let alias_edges = aliases.arrange_by_key_named("IdentityAliases").join_core(
        identifiers.clone(),
        move |prev, &(user, ku, t), ident| {
            let kp = ranks.rank(&ident.kind);
            (*prev != user).then(|| (edge_key(user, ku, *prev, kp, true), t))
        },
    );
    let sightings = edge_obs.concat(alias_edges);
    let edges = if insert_only {
        sightings.monotone_min("IdentityEdgeFirstSeen")
    } else {
        sightings.reduce_named("IdentityEdgeFirstSeen", |_e, input, output| {
            if let Some((t, _)) = input.iter().find(|(_, r)| *r > 0) {
                output.push((**t, 1isize));
            }
        })
    };

    // STEPS 4 and 5. Per-identifier limits: each end keeps its earliest
    // `limit(K)` edges to kind K; an edge is a candidate when both ends keep
    // it. Per cluster (connected component of the candidates, every
    // identifier a node of its own): the greedy limits decide the accepted
    // edges, whose components (a union-find inside the cluster) are the
    // profiles, named by their oldest identifier. An identifier without
    // candidates is a cluster, and a profile, of one.
    // (Insert-only: an edge's first-seen time only moves down, so each end
    // keeps only the edges it keeps, and one structure holds the limits and
    // the clusters: `graph`.)
    let resolved = if insert_only {
        graph::resolve_insert_only(nodes.clone(), edges.clone(), &rules, "IdentityGraph")
    } else {
        let candidates = limited_candidates(edges.clone(), &rules);
        let pairs = candidates.clone().map(|((lo, hi, ..), _)| (lo, hi));
        let items = nodes
            .clone()
            .map(|(h, (t, k))| (h, ClusterItem::Node(h, t, k)))
            .concat(candidates.map(|(e, t)| (e.0, ClusterItem::Edge(e, t))));
        let resolve = Rc::clone(&rules);
        pairs.cluster_reduce(items, "IdentityResolve", move |items, out| {
            out.extend(resolve_cluster(&resolve, items.iter().copied()))
        })
    };
    let accepted = resolved.clone().flat_map(|x| {
        if let Resolved::Accepted(lo, hi) = x {
            Some((lo, hi))
        } else {
            None
        }
    });
    let profile_of = resolved
        .flat_map(|x| {
            if let Resolved::Member(h, p) = x {
                Some((h, p))
            } else {
                None
            }
        })
        .arrange_by_key_named("IdentityProfileOf");
    let profiles = profile_of.clone().as_collection(|h, p| (*h, *p));
    let members = profiles
        .clone()
        .map(|(h, p)| (p, h))
        .arrange_by_key_named("IdentityMembers");
    let changes = profiles.clone().component_changes("IdentityProfileChanges");

    // STEP 6. Traits, last write wins per (profile, key) and per (account, key).
    // Insert-only, an identifier's earlier observation of a key can never
    // win again (the latest only moves forward): keep one per (identifier, key).
    let trait_obs = if insert_only {
        trait_obs
            .map(|(h, (k, lww))| ((h, k), std::cmp::Reverse(lww)))
            .monotone_min("IdentityLatestTraits")
            .map(|((h, k), std::cmp::Reverse(lww))| (h, (k, lww)))
    } else {
        trait_obs
    };
    let traits_by_profile = trait_obs
        .arrange_by_key_named("IdentityTraitObservations")
        .join_core(profile_of.clone(), |_h, (key, lww), p| Some((*p, (key.clone(), lww.clone()))))
        .arrange_by_key_named("IdentityTraitsByProfileIn")
        .reduce_abelian::<_, ValBuilder<_, _, _, _>, ValSpine<ProfileId, (Box<str>, Box<str>), u64, isize>, _, _>(
            "IdentityTraits",
            |_p, input, output| {
                // Sorted by (key, time, messageId, value): the last of each key wins.
                let live = input.iter().filter(|(_, r)| *r > 0).map(|((k, lww), _)| (k, lww));
                let mut last: Option<(&Box<str>, &Lww)> = None;
                for (k, lww) in live {
                    if let Some((lk, llww)) = last.filter(|(lk, _)| *lk != k) {
                        output.push(((lk.clone(), llww.2.clone()), 1));
                    }
                    last = Some((k, lww));
                }
                if let Some((lk, llww)) = last {
                    output.push(((lk.clone(), llww.2.clone()), 1));
                }
            },
            |vec, key, upds| {
                vec.clear();
                vec.extend(upds.drain(..).map(|(v, t, r)| ((*key, v), t, r)));
            },
        );
    let traits = traits_by_profile
        .clone()
        .as_collection(|p, (k, v)| ((*p, k.clone()), v.clone()));
    let accounts = member_obs
        .arrange_by_key_named("IdentityMemberships")
        .join_core(profile_of.clone(), |_h, g, p| Some((*p, *g)))
        .distinct();
    let account_traits = group_trait_obs.reduce_named("IdentityAccountTraits", last_write_wins);

    Ok(IdentityOutputs {
        identifiers,
        nodes,
        edges,
        accepted,
        profiles,
        profile_of,
        members,
        changes,
        traits,
        traits_by_profile,
        accounts,
        account_traits,
        anchored,
    })
}

/// Per-identifier limits in general (edges may retract): every identifier's
/// sides arranged and reduced to the earliest `limit(K)` per kind, then a
/// threshold keeps the edges both ends keep.
fn limited_candidates<'s>(
    edges: VecCollection<'s, u64, (EdgeKey, i64), isize>,
    rules: &Rc<IdentityRules>,
) -> VecCollection<'s, u64, (EdgeKey, i64), isize> {
    type Side = (KindRank, i64, IdHash, KindRank, bool);
    let limits = Rc::clone(rules);
    let sides = edges.flat_map(move |((lo, hi, klo, khi, x), t)| {
        let key = (lo, hi, klo, khi, x);
        let lo_side: (IdHash, Side) = (lo, (khi, t, hi, klo, x));
        let hi_side: (IdHash, Side) = (hi, (klo, t, lo, khi, x));
        [lo_side, hi_side].map(|side| {
            let checked = !x && limits.limit(side.1 .0).is_some();
            (checked, side, (key, t))
        })
    });
    let unchecked = sides
        .clone()
        .flat_map(|(checked, _, edge)| (!checked).then_some(edge));
    let limits = Rc::clone(rules);
    let kept = sides
        .flat_map(|(checked, side, _)| checked.then_some(side))
        .reduce_named("IdentityIdentifierLimits", move |_node, input, output| {
            // Sorted by (other kind, edge time, other hash): keep a prefix of each kind.
            let mut kind = None;
            let mut count = 0u32;
            for (side, r) in input {
                if *r <= 0 {
                    continue;
                }
                if kind != Some(side.0) {
                    kind = Some(side.0);
                    count = 0;
                }
                if count < limits.limit(side.0).unwrap_or(u32::MAX) {
                    count += 1;
                    output.push((**side, 1isize));
                }
            }
        })
        .map(|(node, (k_other, t, other, k_node, x))| {
            (edge_key(node, k_node, other, k_other, x), t)
        });
    kept.concat(unchecked)
        .threshold_named("IdentityCandidates", |_, c| isize::from(*c == 2))
}

/// Keeps the largest `(time, messageId, value)` of a key's candidates.
fn last_write_wins<K>(_key: &K, input: &[(&Lww, isize)], output: &mut Vec<(Box<str>, isize)>) {
    if let Some((lww, _)) = input.iter().rev().find(|(_, r)| *r > 0) {
        output.push((lww.2.clone(), 1));
    }
}

/// A cluster's items for `cluster_reduce`: its identifiers and its candidate edges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum ClusterItem {
    /// An identifier: hash, first-seen time, kind rank.
    Node(IdHash, i64, KindRank),
    /// A candidate edge and its time.
    Edge(EdgeKey, i64),
}

/// What `resolve_cluster` decides for a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Resolved {
    /// An identifier and its profile.
    Member(IdHash, ProfileId),
    /// An accepted edge `(lo, hi)`.
    Accepted(IdHash, IdHash),
}

/// Union-find over one cluster, with per-root counts of limited kinds.
struct ClusterUnionFind {
    index: HashMap<IdHash, usize>,
    parent: Vec<usize>,
    counts: Vec<Vec<(KindRank, u32)>>,
}

impl ClusterUnionFind {
    fn new() -> Self {
        ClusterUnionFind {
            index: HashMap::new(),
            parent: Vec::new(),
            counts: Vec::new(),
        }
    }
    fn node(&mut self, rules: &IdentityRules, h: IdHash, k: KindRank) -> usize {
        let (parent, counts) = (&mut self.parent, &mut self.counts);
        *self.index.entry(h).or_insert_with(|| {
            parent.push(parent.len());
            counts.push(if rules.limit(k).is_some() {
                vec![(k, 1)]
            } else {
                Vec::new()
            });
            parent.len() - 1
        })
    }
    fn find(&mut self, mut x: usize) -> usize {
        while self.parent[x] != x {
            self.parent[x] = self.parent[self.parent[x]];
            x = self.parent[x];
        }
        x
    }
    /// Considers one edge in greedy order; returns whether it is accepted.
    fn offer(&mut self, rules: &IdentityRules, e: &EdgeKey) -> bool {
        let &(lo, hi, klo, khi, explicit) = e;
        let a = self.node(rules, lo, klo);
        let b = self.node(rules, hi, khi);
        let (ra, rb) = (self.find(a), self.find(b));
        if ra == rb {
            return true;
        }
        let fits = explicit
            || self.counts[ra].iter().all(|(k, ca)| {
                let cb = self.counts[rb]
                    .iter()
                    .find(|(kb, _)| kb == k)
                    .map_or(0, |(_, c)| *c);
                cb == 0 || ca + cb <= rules.limit(*k).unwrap_or(u32::MAX)
            });
        if fits {
            self.parent[rb] = ra;
            for (k, c) in std::mem::take(&mut self.counts[rb]) {
                match self.counts[ra].iter_mut().find(|(ka, _)| *ka == k) {
                    Some((_, ca)) => *ca += c,
                    None => self.counts[ra].push((k, c)),
                }
            }
        }
        fits
    }
}

/// The greedy order of candidate edges: (time, better kind rank, worse kind rank, hashes, explicit).
fn greedy_order((e, t): &(EdgeKey, i64)) -> (i64, KindRank, KindRank, IdHash, IdHash, bool) {
    (*t, e.2.min(e.3), e.2.max(e.3), e.0, e.1, e.4)
}

/// The greedy per-profile limits over one cluster's candidate edges (see the module docs).
#[cfg(test)]
fn accept_greedy(
    rules: &IdentityRules,
    edges: impl Iterator<Item = (EdgeKey, i64)>,
) -> Vec<(EdgeKey, i64)> {
    let mut edges: Vec<(EdgeKey, i64)> = edges.collect();
    edges.sort_by_key(greedy_order);
    let mut uf = ClusterUnionFind::new();
    edges
        .into_iter()
        .filter(|(e, _)| uf.offer(rules, e))
        .collect()
}

/// One cluster: the accepted edges and every identifier's profile.
fn resolve_cluster(
    rules: &IdentityRules,
    items: impl Iterator<Item = ClusterItem>,
) -> Vec<Resolved> {
    let mut nodes = Vec::new();
    let mut edges = Vec::new();
    for item in items {
        match item {
            ClusterItem::Node(h, t, k) => nodes.push((h, t, k)),
            ClusterItem::Edge(e, t) => edges.push((e, t)),
        }
    }
    edges.sort_by_key(greedy_order);
    let mut uf = ClusterUnionFind::new();
    let mut out = Vec::with_capacity(nodes.len() + edges.len());
    for (e, _) in &edges {
        if uf.offer(rules, e) {
            out.push(Resolved::Accepted(e.0, e.1));
        }
    }
    // Name each profile by its least (first seen, kind rank, hash).
    let mut oldest: HashMap<usize, (i64, KindRank, IdHash)> = HashMap::new();
    let mut roots = Vec::with_capacity(nodes.len());
    for &(h, t, k) in &nodes {
        let x = uf.node(rules, h, k);
        let root = uf.find(x);
        let o = oldest.entry(root).or_insert((t, k, h));
        *o = (*o).min((t, k, h));
        roots.push(root);
    }
    for (&(h, _, _), root) in nodes.iter().zip(roots) {
        out.push(Resolved::Member(h, oldest[&root].2));
    }
    // An explicit and an ordinary edge between the same two identifiers are one accepted edge.
    out.sort_unstable();
    out.dedup();
    out
}

// ---------------------------------------------------------------------------
// Readable records for sinks.

/// An identifier's profile: one line per identifier.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProfileRecord {
    /// The identifier.
    pub identifier: Identifier,
    /// The profile's name (its oldest identifier).
    pub profile: Identifier,
}

impl WriteJson for ProfileRecord {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"identifier\":");
        self.identifier.write_json(out);
        out.extend_from_slice(b",\"profile\":");
        self.profile.write_json(out);
        out.push(b'}');
    }
}

/// A `profile_merged` or `profile_split` record.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProfileChangeRecord {
    /// Merged or split.
    pub kind: ChangeKind,
    /// Merged: the absorbed profile. Split: the divided profile.
    pub from: Identifier,
    /// Merged: the absorbing profile. Split: the new part.
    pub into: Identifier,
    /// How many identifiers moved.
    pub identifiers: u64,
}

impl WriteJson for ProfileChangeRecord {
    fn write_json(&self, out: &mut Vec<u8>) {
        let kind: &[u8] = match self.kind {
            ChangeKind::Merged => b"profile_merged",
            ChangeKind::Split => b"profile_split",
        };
        out.extend_from_slice(b"{\"type\":\"");
        out.extend_from_slice(kind);
        out.extend_from_slice(b"\",\"from\":");
        self.from.write_json(out);
        out.extend_from_slice(b",\"into\":");
        self.into.write_json(out);
        out.extend_from_slice(format!(",\"identifiers\":{}}}", self.identifiers).as_bytes());
    }
}

/// One trait of a profile (or, for account traits, of an account: `profile` is its `group_id`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TraitRecord {
    /// The profile (or account).
    pub profile: Identifier,
    /// The trait's key.
    pub key: Box<str>,
    /// Its value, JSON text.
    pub value: Box<str>,
}

impl WriteJson for TraitRecord {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"profile\":");
        self.profile.write_json(out);
        out.extend_from_slice(b",\"key\":");
        write_json_string(out, &self.key);
        out.extend_from_slice(b",\"value\":");
        out.extend_from_slice(self.value.as_bytes());
        out.push(b'}');
    }
}

/// A profile's membership of an account.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AccountRecord {
    /// The profile.
    pub profile: Identifier,
    /// The account (`group_id`).
    pub account: Identifier,
}

impl WriteJson for AccountRecord {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"profile\":");
        self.profile.write_json(out);
        out.extend_from_slice(b",\"account\":");
        self.account.write_json(out);
        out.push(b'}');
    }
}

impl<'s> IdentityOutputs<'s> {
    /// Replaces a hash key with its identifier: `(h, v)` → `(identifier, v)`.
    fn name<V: differential_dataflow::ExchangeData>(
        &self,
        keyed: VecCollection<'s, u64, (IdHash, V), isize>,
        name: &str,
    ) -> VecCollection<'s, u64, (Identifier, V), isize> {
        keyed
            .arrange_by_key_named(name)
            .join_core(self.identifiers.clone(), |_h, v, ident| {
                Some((ident.clone(), v.clone()))
            })
    }

    /// Identifier → profile, readable.
    pub fn profile_records(&self) -> VecCollection<'s, u64, ProfileRecord, isize> {
        let by_profile = self
            .profile_of
            .clone()
            .join_core(self.identifiers.clone(), |_h, p, ident| {
                Some((*p, ident.clone()))
            });
        self.name(by_profile, "IdentityNameProfiles")
            .map(|(profile, identifier)| ProfileRecord {
                identifier,
                profile,
            })
    }

    /// Merges and splits, readable.
    ///
    /// A record names its profiles through [`IdentityOutputs::identifiers`],
    /// so it exists only while both identifiers do: when one disappears
    /// entirely (every event showing it was retracted, as a deletion does),
    /// the records naming it are retracted, and sinks keep no deleted name.
    pub fn change_records(&self) -> VecCollection<'s, u64, ProfileChangeRecord, isize> {
        let by_from = self
            .changes
            .clone()
            .map(|c| (c.from, (c.kind, c.into, c.nodes)));
        let by_into = self
            .name(by_from, "IdentityNameChangeFrom")
            .map(|(from, (kind, into, n))| (into, (kind, from, n)));
        self.name(by_into, "IdentityNameChangeInto")
            .map(|(into, (kind, from, identifiers))| ProfileChangeRecord {
                kind,
                from,
                into,
                identifiers,
            })
    }

    /// Profile traits, readable.
    ///
    /// Joins the traits' own arrangement by profile with the identifiers
    /// (no second arrangement of the traits).
    pub fn trait_records(&self) -> VecCollection<'s, u64, TraitRecord, isize> {
        self.traits_by_profile.clone().join_core(
            self.identifiers.clone(),
            |_p, (key, value), ident| {
                Some(TraitRecord {
                    profile: ident.clone(),
                    key: key.clone(),
                    value: value.clone(),
                })
            },
        )
    }

    /// Audience memberships, readable: `(profile, audience key)` with the
    /// profile named by its naming identifier (`kind:value`).
    pub fn membership_records(
        &self,
        members: VecCollection<'s, u64, (ProfileId, String), isize>,
    ) -> VecCollection<'s, u64, crate::audience::Membership, isize> {
        members.arrange_by_key_named("NameMembers").join_core(
            self.identifiers.clone(),
            |_p, audience: &String, ident: &Identifier| {
                Some(crate::audience::Membership {
                    audience: audience.clone(),
                    profile: format!("{}:{}", ident.kind, ident.value),
                })
            },
        )
    }

    /// Computed trait values, readable: `(profile, (trait name, value))`
    /// with the profile named as in [`IdentityOutputs::membership_records`].
    pub fn computed_records(
        &self,
        values: VecCollection<'s, u64, (ProfileId, (String, crate::audience::AggValue)), isize>,
    ) -> VecCollection<'s, u64, crate::audience::TraitValue, isize> {
        values.arrange_by_key_named("NameComputed").join_core(
            self.identifiers.clone(),
            |_p, (name, value): &(String, crate::audience::AggValue), ident: &Identifier| {
                Some(crate::audience::TraitValue {
                    name: name.clone(),
                    profile: format!("{}:{}", ident.kind, ident.value),
                    value: value.clone(),
                })
            },
        )
    }

    /// One audience's memberships, readable (as
    /// [`IdentityOutputs::membership_records`]), from the audience's own
    /// arrangement by profile: no second arrangement of its members.
    pub fn audience_records(
        &self,
        key: &str,
        members: &Arranged<'s, crate::audience::MembersTrace<ProfileId>>,
    ) -> VecCollection<'s, u64, crate::audience::Membership, isize> {
        let key = key.to_string();
        members.clone().join_core(
            self.identifiers.clone(),
            move |_p, (), ident: &Identifier| {
                Some(crate::audience::Membership {
                    audience: key.clone(),
                    profile: format!("{}:{}", ident.kind, ident.value),
                })
            },
        )
    }

    /// One computed trait's values, readable (as
    /// [`IdentityOutputs::computed_records`]), from the trait's own
    /// arrangement by profile: no second arrangement of its values.
    pub fn trait_value_records(
        &self,
        name: &str,
        values: &Arranged<'s, crate::audience::ValuesTrace<ProfileId>>,
    ) -> VecCollection<'s, u64, crate::audience::TraitValue, isize> {
        let name = name.to_string();
        values.clone().join_core(
            self.identifiers.clone(),
            move |_p, value: &crate::audience::AggValue, ident: &Identifier| {
                Some(crate::audience::TraitValue {
                    name: name.clone(),
                    profile: format!("{}:{}", ident.kind, ident.value),
                    value: value.clone(),
                })
            },
        )
    }

    /// The computed traits that are slots of a job's count rows, readable
    /// (as [`IdentityOutputs::trait_value_records`]): `names` are the trait
    /// names of each slot. One join of the rows with the identifiers for all
    /// of them, and per named identifier only the slots whose count changed
    /// ([`weft_operators::counters::SlotChanges::slot_changes`]).
    pub fn slot_value_records(
        &self,
        rows: &Arranged<'s, crate::audience::RowsTrace<ProfileId>>,
        names: BTreeMap<u32, Vec<String>>,
    ) -> VecCollection<'s, u64, crate::audience::TraitValue, isize> {
        use weft_operators::counters::SlotChanges as _;
        rows.clone()
            .join_core(self.identifiers.clone(), |_p, row, ident: &Identifier| {
                Some((format!("{}:{}", ident.kind, ident.value), row.clone()))
            })
            .slot_changes("IdentityNameCountSlots")
            .flat_map(move |(slot, (profile, total))| {
                names
                    .get(&slot)
                    .into_iter()
                    .flatten()
                    .map(|name| crate::audience::TraitValue {
                        name: name.clone(),
                        profile: profile.clone(),
                        value: crate::audience::AggValue::Num(total as f64),
                    })
                    .collect::<Vec<_>>()
            })
    }

    /// Account traits, readable (`profile` is the account's `group_id`).
    pub fn account_trait_records(&self) -> VecCollection<'s, u64, TraitRecord, isize> {
        let keyed = self
            .account_traits
            .clone()
            .map(|((g, key), value)| (g, (key, value)));
        self.name(keyed, "IdentityNameAccountTraits")
            .map(|(profile, (key, value))| TraitRecord {
                profile,
                key,
                value,
            })
    }

    /// Account memberships, readable.
    pub fn account_records(&self) -> VecCollection<'s, u64, AccountRecord, isize> {
        let by_account = self.accounts.clone().map(|(p, g)| (g, p));
        let by_profile = self
            .name(by_account, "IdentityNameAccounts")
            .map(|(account, p)| (p, account));
        self.name(by_profile, "IdentityNameAccountProfiles")
            .map(|(profile, account)| AccountRecord { profile, account })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{parse_event, ParseContext};

    fn ev(s: &str) -> Event {
        parse_event(s.as_bytes(), &ParseContext::default()).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn observe_extracts_ranks_and_blocks() {
        let mut spec = IdentitySpec::default();
        spec.custom_kinds.push(CustomKind {
            name: "crm_id".into(),
            path: "traits.crm.id".into(),
        });
        spec.custom_kinds.push(CustomKind {
            name: "ios_idfa".into(),
            path: "external_id:idfa".into(),
        });
        let rules = IdentityRules::new(&spec).unwrap();
        let e = ev(
            r#"{"type":"identify","userId":"u1","anonymousId":"anonymous","traits":{"email":"e@x","crm":{"id":42}},"context":{"device":{"id":"d1"},"externalIds":[{"id":"I","type":"idfa"},{"id":"z","type":"zendesk"},{"id":"g","type":"group_id"}]},"timestamp":"2026-01-01T00:00:00Z"}"#,
        );
        let obs = rules.observe(&e);
        let kinds: Vec<&str> = obs.ids.iter().map(|(_, _, i)| &*i.kind).collect();
        assert_eq!(
            kinds,
            [
                "user_id",
                "email",
                "device_id",
                "crm_id",
                "ios_idfa",
                "zendesk"
            ]
        );
        assert_eq!(obs.ids[3].2.value.as_ref(), "42");
        assert_eq!(obs.ids[5].0, OTHER_KIND);
        assert_eq!(obs.anchor(), Some(id_hash("user_id", "u1")));
        assert_eq!(obs.edges().count(), 5);
        for blocked in [
            "",
            "null",
            "undefined",
            "anonymous",
            "0",
            "-1",
            "000",
            "0-0",
        ] {
            assert!(rules.is_blocked(blocked), "{blocked:?}");
        }
        for ok in ["u0", "anonymous1", "10", "null "] {
            assert!(!rules.is_blocked(ok), "{ok:?}");
        }
    }

    #[test]
    fn group_email_comes_from_context_only() {
        let rules = IdentityRules::new(&IdentitySpec::default()).unwrap();
        let e = ev(
            r#"{"type":"group","groupId":"acme","userId":"u1","traits":{"email":"billing@acme"},"timestamp":"2026-01-01T00:00:00Z"}"#,
        );
        let obs = rules.observe(&e);
        assert_eq!(obs.ids.len(), 1);
        assert_eq!(obs.group.as_ref().map(|g| g.1.value.as_ref()), Some("acme"));
    }

    #[test]
    fn greedy_keeps_the_first_user() {
        let rules = IdentityRules::new(&IdentitySpec::default()).unwrap();
        let (u, d) = (rules.rank("user_id"), rules.rank("device_id"));
        let e1 = (edge_key(1, u, 10, d, false), 5);
        let e2 = (edge_key(2, u, 10, d, false), 6);
        let got = accept_greedy(&rules, [e2, e1].into_iter());
        assert_eq!(got, vec![e1]);
        // An explicit edge ignores the limit.
        let e3 = (edge_key(1, u, 2, u, true), 7);
        let got = accept_greedy(&rules, [e1, e2, e3].into_iter());
        assert_eq!(got, vec![e1, e3]);
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        let spec = IdentitySpec {
            blocked_values: vec!["(".into()],
            ..IdentitySpec::default()
        };
        assert!(IdentityRules::new(&spec)
            .unwrap_err()
            .contains("blocked_values"));
    }
}

//! Audiences and computed traits, compiled into differential dataflows.
//!
//! ```text
//!  profile_events (P, Event) ──► per aggregate: select + extract ──► window ──► reduce ─► (P, AggValue)
//!                                                                     (temporal filter)        │
//!  profile_traits (P, key, json) ──► per trait leaf: extract ─────────────────────────────────┤
//!  computed traits (P, AggValue) / other audiences (P) ───────────────────────────────────────┤
//!  profiles (P) ──────────────────────────────────────────────────────────────────────────────┤
//!                                                             concat ─► reduce per P: evaluate ─► members (P)
//! ```
//!
//! **Windows are temporal filters.** An event with event time `e` that
//! arrives at logical time `t` (ms) counts for a window `w` from `max(t, e)`
//! until `e + w`: it is inserted at `max(t, e)` and retracted at `e + w`, so a
//! membership exits exactly when its window runs out, whether or not other
//! events arrive. A retraction of the event (a deletion, or the event moving
//! to another profile on a merge/split) at time `t'` cancels what is left.
//!
//! **Values.** Paths read the event's raw JSON. Comparisons: numbers
//! numerically, strings lexicographically (ISO dates order correctly),
//! booleans by value; a missing or null value fails every test except `!=`
//! (a missing value differs from any literal) and `= null`.
//!
//! **Aggregates** over the events in the window, per profile: `count`;
//! `sum`, `avg`, `min`, `max` of numeric values (others ignored); `first` and
//! `last` by (event time, messageId); `most_frequent` (ties: the smallest
//! value); `unique` (sorted distinct values) and `unique_count`. A profile
//! with no matching events has `count = 0`, `sum = 0`, `unique_count = 0`,
//! `unique = []`, and null for the rest.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hash;

use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::trace::implementations::{KeyBuilder, KeySpine, ValBuilder, ValSpine};
use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use timely::dataflow::operators::vec::Map as _;

use weft_operators::counters::{Counts, RowTotals, SlotChanges};
use weft_operators::future::{HoldConfig, HoldFuture};

use crate::event::{write_json_string, Event, Field};
use crate::query::{
    AggFunc, Aggregate, CmpOp, Condition, EventPath, EventSelector, Filter, Literal, Test, ValueRef,
};
use crate::record::WriteJson;

/// A value of an aggregate, a trait or a computed trait. Totally ordered so it
/// can live in collections (numbers by `total_cmp`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum AggValue {
    /// Absent / null.
    Null,
    /// A boolean.
    Bool(bool),
    /// A number.
    Num(f64),
    /// A string.
    Str(String),
    /// A list (from `unique`, or a JSON array).
    List(Vec<AggValue>),
    /// Any other JSON (an object), as text.
    Json(String),
}

impl AggValue {
    fn rank(&self) -> u8 {
        match self {
            AggValue::Null => 0,
            AggValue::Bool(_) => 1,
            AggValue::Num(_) => 2,
            AggValue::Str(_) => 3,
            AggValue::List(_) => 4,
            AggValue::Json(_) => 5,
        }
    }

    /// Converts a JSON value.
    pub fn from_json(v: &Json) -> AggValue {
        match v {
            Json::Null => AggValue::Null,
            Json::Bool(b) => AggValue::Bool(*b),
            Json::Number(n) => AggValue::Num(n.as_f64().unwrap_or(f64::NAN)),
            Json::String(s) => AggValue::Str(s.clone()),
            Json::Array(a) => AggValue::List(a.iter().map(AggValue::from_json).collect()),
            Json::Object(_) => AggValue::Json(v.to_string()),
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            AggValue::Null => out.extend_from_slice(b"null"),
            AggValue::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            AggValue::Num(n) => {
                if n.is_finite() {
                    out.extend_from_slice(
                        serde_json::Number::from_f64(*n)
                            .map(|x| x.to_string())
                            .unwrap_or_default()
                            .as_bytes(),
                    )
                } else {
                    out.extend_from_slice(b"null")
                }
            }
            AggValue::Str(s) => write_json_string(out, s),
            AggValue::List(l) => {
                out.push(b'[');
                for (i, v) in l.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    v.write(out);
                }
                out.push(b']');
            }
            AggValue::Json(j) => out.extend_from_slice(j.as_bytes()),
        }
    }
}

impl WriteJson for AggValue {
    fn write_json(&self, out: &mut Vec<u8>) {
        self.write(out)
    }
}

impl PartialEq for AggValue {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for AggValue {}
impl PartialOrd for AggValue {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for AggValue {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (AggValue::Bool(a), AggValue::Bool(b)) => a.cmp(b),
            (AggValue::Num(a), AggValue::Num(b)) => (a + 0.0).total_cmp(&(b + 0.0)), // -0 = 0
            (AggValue::Str(a), AggValue::Str(b)) => a.cmp(b),
            (AggValue::List(a), AggValue::List(b)) => a.cmp(b),
            (AggValue::Json(a), AggValue::Json(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}
impl Hash for AggValue {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.rank().hash(state);
        match self {
            AggValue::Null => {}
            AggValue::Bool(b) => b.hash(state),
            AggValue::Num(n) => (n + 0.0).to_bits().hash(state),
            AggValue::Str(s) | AggValue::Json(s) => s.hash(state),
            AggValue::List(l) => l.hash(state),
        }
    }
}

fn literal_value(l: &Literal) -> AggValue {
    match l {
        Literal::Str(s) => AggValue::Str(s.clone()),
        Literal::Num(n) => AggValue::Num(*n),
        Literal::Bool(b) => AggValue::Bool(*b),
        Literal::Null => AggValue::Null,
    }
}

/// Applies a test to a value (see the module docs for the rules).
pub fn apply_test(value: &AggValue, test: &Test) -> bool {
    match test {
        Test::Exists => !matches!(value, AggValue::Null),
        Test::Contains(s) => match value {
            AggValue::Str(v) => v.contains(s.as_str()),
            AggValue::List(items) => items
                .iter()
                .any(|i| matches!(i, AggValue::Str(v) if v == s)),
            _ => false,
        },
        Test::In(items) => items
            .iter()
            .any(|l| apply_test(value, &Test::Cmp(CmpOp::Eq, l.clone()))),
        Test::Cmp(op, lit) => {
            let lit = literal_value(lit);
            if matches!(value, AggValue::Null) {
                return match op {
                    CmpOp::Eq => matches!(lit, AggValue::Null),
                    CmpOp::Ne => !matches!(lit, AggValue::Null),
                    _ => false,
                };
            }
            if value.rank() != lit.rank() {
                return *op == CmpOp::Ne;
            }
            let ord = value.cmp(&lit);
            match op {
                CmpOp::Eq => ord == Ordering::Equal,
                CmpOp::Ne => ord != Ordering::Equal,
                CmpOp::Lt => ord == Ordering::Less,
                CmpOp::Le => ord != Ordering::Greater,
                CmpOp::Gt => ord == Ordering::Greater,
                CmpOp::Ge => ord != Ordering::Less,
            }
        }
    }
}

fn lookup<'a>(mut v: &'a Json, path: &[String]) -> Option<&'a Json> {
    for p in path {
        v = v.get(p)?;
    }
    Some(v)
}

/// Reads an event path.
pub fn event_value(e: &Event, path: &EventPath) -> AggValue {
    let (field, sub) = match path {
        EventPath::Event => {
            return e
                .get(Field::Event)
                .map_or(AggValue::Null, |s| AggValue::Str(s.into()))
        }
        EventPath::Name => {
            return e
                .get(Field::Name)
                .map_or(AggValue::Null, |s| AggValue::Str(s.into()))
        }
        EventPath::Properties(p) => (Field::Properties, p),
        EventPath::Context(p) => (Field::Context, p),
        EventPath::Traits(p) => (Field::Traits, p),
    };
    let Some(raw) = e.get(field) else {
        return AggValue::Null;
    };
    if sub.is_empty() {
        return serde_json::from_str::<Json>(raw)
            .map_or(AggValue::Null, |v| AggValue::from_json(&v));
    }
    // Walk the raw text to the path; only the value found is materialized.
    let mut de = serde_json::Deserializer::from_str(raw);
    match serde::de::DeserializeSeed::deserialize(raw_path::PathSeed(sub), &mut de) {
        Ok(Some(v)) => AggValue::from_json(&v),
        _ => AggValue::Null,
    }
}

/// Finding one path in raw JSON text without building the whole tree.
///
/// Same answers as parsing the text into a `serde_json::Value` and following
/// the keys with `Value::get`: a key that repeats takes its last value, and a
/// path through anything but an object finds nothing.
mod raw_path {
    use std::fmt;

    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
    use serde_json::Value as Json;

    /// Finds `self.0` (non-empty) in the value being deserialized.
    pub struct PathSeed<'p>(pub &'p [String]);

    impl<'de> DeserializeSeed<'de> for PathSeed<'_> {
        type Value = Option<Json>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<Json>, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for PathSeed<'_> {
        type Value = Option<Json>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Json>, A::Error> {
            let (first, rest) = self.0.split_first().expect("a non-empty path");
            let mut found = None;
            while let Some(hit) = map.next_key_seed(KeyIs(first))? {
                if !hit {
                    map.next_value::<IgnoredAny>()?;
                } else if rest.is_empty() {
                    found = Some(map.next_value::<Json>()?);
                } else {
                    found = map.next_value_seed(PathSeed(rest))?;
                }
            }
            Ok(found)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<Json>, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_bool<E>(self, _: bool) -> Result<Option<Json>, E> {
            Ok(None)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Option<Json>, E> {
            Ok(None)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Option<Json>, E> {
            Ok(None)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Option<Json>, E> {
            Ok(None)
        }
        fn visit_str<E>(self, _: &str) -> Result<Option<Json>, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Option<Json>, E> {
            Ok(None)
        }
    }

    /// Deserializes a map key into whether it equals `self.0`.
    struct KeyIs<'k>(&'k str);

    impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
        type Value = bool;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
            d.deserialize_str(self)
        }
    }

    impl<'de> Visitor<'de> for KeyIs<'_> {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a key")
        }
        fn visit_str<E>(self, v: &str) -> Result<bool, E> {
            Ok(v == self.0)
        }
    }
}

fn filter_matches(e: &Event, f: &Filter) -> bool {
    match f {
        Filter::And(v) => v.iter().all(|f| filter_matches(e, f)),
        Filter::Or(v) => v.iter().any(|f| filter_matches(e, f)),
        Filter::Not(f) => !filter_matches(e, f),
        Filter::Test(path, test) => apply_test(&event_value(e, path), test),
    }
}

/// Whether an event is selected (type, name, `where`), ignoring the window.
pub fn selects(sel: &EventSelector, e: &Event) -> bool {
    if let Some(k) = sel.kind {
        if e.kind != k {
            return false;
        }
    }
    if let Some(n) = &sel.name {
        let name = e.get(Field::Event).or_else(|| e.get(Field::Name));
        if name != Some(n.as_str()) {
            return false;
        }
    }
    sel.filter.as_ref().is_none_or(|f| filter_matches(e, f))
}

/// One event's contribution to an aggregate: the extracted value (`Null`
/// for `count`), and for `first` and `last` the (event time, messageId)
/// that orders it.
///
/// Every other function depends on the multiset of values alone, so its
/// contribution is the value and nothing else: equal values of one key
/// consolidate into one record with a multiplicity (a `count` is one record
/// per key), and the contribution takes the 32 bytes of an [`AggValue`] in
/// the arrangements that hold it (the ordered form is boxed, and is kept
/// once per anchor in insert-only jobs). One aggregate's contributions are
/// all of one form ([`contribution`] picks it from the function).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Contribution {
    /// The value alone.
    Value(AggValue),
    /// `(event time, messageId, value)`, ordered in that order.
    Ordered(Box<(i64, Box<str>, AggValue)>),
}

impl Contribution {
    /// The contributed value.
    pub fn value(&self) -> &AggValue {
        match self {
            Contribution::Value(v) => v,
            Contribution::Ordered(o) => &o.2,
        }
    }

    /// The (event time, messageId) that orders `first` and `last`
    /// (`(0, "")` for a value alone).
    pub fn order(&self) -> (i64, &str) {
        match self {
            Contribution::Value(_) => (0, ""),
            Contribution::Ordered(o) => (o.0, &o.1),
        }
    }

    /// `e`'s contribution of `v` to an aggregate of `func`.
    fn of(func: AggFunc, e: &Event, v: AggValue) -> Contribution {
        if matches!(func, AggFunc::First | AggFunc::Last) {
            Contribution::Ordered(Box::new((e.time_ms, e.message_id().into(), v)))
        } else {
            Contribution::Value(v)
        }
    }
}

/// The contribution of an event to an aggregate, if it is selected and has the value.
pub fn contribution(agg: &Aggregate, e: &Event) -> Option<Contribution> {
    contributed_value(agg, e).map(|v| Contribution::of(agg.func, e, v))
}

/// The value an event contributes to an aggregate, if it is selected and has it.
fn contributed_value(agg: &Aggregate, e: &Event) -> Option<AggValue> {
    if !selects(&agg.events, e) {
        return None;
    }
    match &agg.field {
        None => Some(AggValue::Null),
        Some(p) => Some(event_value(e, p)).filter(|v| !matches!(v, AggValue::Null)),
    }
}

/// The aggregate of a profile's contributions (with multiplicities).
pub fn aggregate(func: AggFunc, items: &[(&Contribution, isize)]) -> AggValue {
    let nums = || {
        items.iter().filter_map(|(c, n)| {
            if let AggValue::Num(x) = c.value() {
                Some((*x, *n))
            } else {
                None
            }
        })
    };
    match func {
        AggFunc::Count => AggValue::Num(items.iter().map(|(_, n)| *n as f64).sum()),
        AggFunc::Sum => AggValue::Num(nums().map(|(x, n)| x * n as f64).sum()),
        AggFunc::Avg => {
            let (s, c) = nums().fold((0.0, 0.0), |(s, c), (x, n)| {
                (s + x * n as f64, c + n as f64)
            });
            if c > 0.0 {
                AggValue::Num(s / c)
            } else {
                AggValue::Null
            }
        }
        AggFunc::Min => nums()
            .map(|(x, _)| x)
            .min_by(f64::total_cmp)
            .map_or(AggValue::Null, AggValue::Num),
        AggFunc::Max => nums()
            .map(|(x, _)| x)
            .max_by(f64::total_cmp)
            .map_or(AggValue::Null, AggValue::Num),
        AggFunc::First => items
            .iter()
            .map(|(c, _)| *c)
            .min_by(|a, b| a.order().cmp(&b.order()))
            .map_or(AggValue::Null, |c| c.value().clone()),
        AggFunc::Last => items
            .iter()
            .map(|(c, _)| *c)
            .max_by(|a, b| a.order().cmp(&b.order()))
            .map_or(AggValue::Null, |c| c.value().clone()),
        AggFunc::MostFrequent => {
            let mut freq: BTreeMap<&AggValue, isize> = BTreeMap::new();
            for (c, n) in items {
                *freq.entry(c.value()).or_default() += n;
            }
            // Highest count; ties: the smallest value (BTreeMap order, first wins).
            let mut best: Option<(&AggValue, isize)> = None;
            for (v, n) in freq {
                if best.is_none_or(|(_, b)| n > b) {
                    best = Some((v, n));
                }
            }
            best.map_or(AggValue::Null, |(v, _)| v.clone())
        }
        AggFunc::Unique => AggValue::List(
            items
                .iter()
                .map(|(c, _)| c.value().clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
        ),
        AggFunc::UniqueCount => AggValue::Num(
            items
                .iter()
                .map(|(c, _)| c.value())
                .collect::<BTreeSet<_>>()
                .len() as f64,
        ),
    }
}

/// The value of an aggregate for a profile without matching events.
pub fn empty_aggregate(func: AggFunc) -> AggValue {
    aggregate(func, &[])
}

/// A leaf of a condition: what each slot of the per-profile evaluation holds.
#[derive(Clone, Debug)]
enum Leaf {
    Value(ValueRef, Test),
    Audience(String),
}

fn leaves(c: &Condition, out: &mut Vec<Leaf>) {
    match c {
        Condition::And(v) | Condition::Or(v) => v.iter().for_each(|c| leaves(c, out)),
        Condition::Not(c) => leaves(c, out),
        Condition::Test(v, t) => out.push(Leaf::Value(v.clone(), t.clone())),
        Condition::Audience(a) => out.push(Leaf::Audience(a.clone())),
    }
}

/// Evaluates a condition given each leaf's truth (in `leaves` order).
fn evaluate(c: &Condition, truths: &[bool], next: &mut usize) -> bool {
    match c {
        Condition::And(v) => v
            .iter()
            .map(|c| evaluate(c, truths, next))
            .fold(true, |a, b| a & b),
        Condition::Or(v) => v
            .iter()
            .map(|c| evaluate(c, truths, next))
            .fold(false, |a, b| a | b),
        Condition::Not(c) => !evaluate(c, truths, next),
        Condition::Test(..) | Condition::Audience(_) => {
            let t = truths[*next];
            *next += 1;
            t
        }
    }
}

/// Evaluates a condition for one profile given its leaf values (`None`: no
/// value — the defaults of the module docs apply).
pub fn evaluate_condition(c: &Condition, values: &[Option<AggValue>]) -> bool {
    let mut ls = Vec::new();
    leaves(c, &mut ls);
    let truths: Vec<bool> = ls
        .iter()
        .zip(values)
        .map(|(leaf, v)| match leaf {
            Leaf::Audience(_) => v.is_some(),
            Leaf::Value(vr, test) => {
                let default = match vr {
                    ValueRef::Agg(a) => empty_aggregate(a.func),
                    _ => AggValue::Null,
                };
                apply_test(v.as_ref().unwrap_or(&default), test)
            }
        })
        .collect();
    evaluate(c, &truths, &mut 0)
}

/// Applies a window as a temporal filter: `(d, t, r)` becomes `(d, max(t, e), r)`
/// and `(d, e + w, -r)`, or nothing when `e + w <= max(t, e)`.
///
/// The retractions are held (see `weft_operators::future`) until the
/// frontier reaches them, so downstream arrangements never hold days of
/// future updates in their batchers.
pub fn temporal_window<'s, D>(
    coll: VecCollection<'s, u64, D, isize>,
    window_ms: u64,
    event_time: impl Fn(&D) -> i64 + 'static,
) -> VecCollection<'s, u64, D, isize>
where
    D: Ord + Clone + serde::Serialize + serde::de::DeserializeOwned + 'static,
{
    coll.inner
        .flat_map(move |(d, t, r)| {
            let e = event_time(&d);
            window_updates(d, t, r, e, window_ms)
        })
        .as_collection()
        .hold_future_with("HoldWindowExpiries", hold_config())
}

/// Window expiries wait in `hold_future`, their sealed runs on disk in the
/// process's scratch directory (see [`crate::stored::scratch_dir`]).
fn hold_config() -> HoldConfig {
    HoldConfig::spilling(crate::stored::scratch_dir())
}

/// A windowed update's insertion at `max(t, e)` and retraction at `e + w`
/// (neither when the window has run out on arrival).
fn window_updates<D: Clone>(
    d: D,
    t: u64,
    r: isize,
    event_time: i64,
    window_ms: u64,
) -> impl Iterator<Item = (D, u64, isize)> {
    let e = event_time.max(0) as u64;
    let start = t.max(e);
    let end = e.saturating_add(window_ms);
    let pair = (end > start).then(|| [(d.clone(), start, r), (d, end, -r)]);
    pair.into_iter().flatten()
}

/// Each profile's contributions to an aggregate, windowed.
///
/// Only `first` and `last` need an event's time and messageId; the other
/// functions' contributions are their values alone (see [`Contribution`]).
fn windowed_contributions<'s, P>(
    events: VecCollection<'s, u64, (P, Event), isize>,
    agg: &Aggregate,
) -> VecCollection<'s, u64, (P, Contribution), isize>
where
    P: timely::ExchangeData + Ord + Clone,
{
    let a = agg.clone();
    let window = agg.events.window.map(|w| w.0);
    let updates = events
        .inner
        .flat_map(move |((p, e), t, r)| {
            let c = contribution(&a, &e).map(|c| (p, c));
            let (now, windowed) = match (c, window) {
                (None, _) => (None, None),
                (Some(c), None) => (Some((c, t, r)), None),
                (Some(c), Some(w)) => (None, Some(window_updates(c, t, r, e.time_ms, w))),
            };
            now.into_iter().chain(windowed.into_iter().flatten())
        })
        .as_collection();
    match window {
        Some(_) => updates.hold_future_with("HoldWindowExpiries", hold_config()),
        None => updates,
    }
}

/// The aggregates of a condition (in leaf order, repeats included).
pub fn condition_aggregates(c: &Condition) -> Vec<Aggregate> {
    let mut ls = Vec::new();
    leaves(c, &mut ls);
    ls.into_iter()
        .filter_map(|l| match l {
            Leaf::Value(ValueRef::Agg(a), _) => Some(a),
            _ => None,
        })
        .collect()
}

/// One event's contributions to each of `aggs` it is selected by:
/// `(aggregate index, contribution, event time)`. What a join of events
/// with their profiles emits for [`SharedAggregates::build`], so that the
/// event itself is never copied for the aggregates.
pub fn event_contributions(aggs: &[Aggregate], e: &Event) -> Vec<(usize, Contribution, i64)> {
    let mut out = Vec::new();
    for (i, a) in aggs.iter().enumerate() {
        if let Some(c) = contribution(a, e) {
            out.push((i, c, e.time_ms));
        }
    }
    out
}

/// Which contribution of a key an insert-only aggregate keeps
/// ([`SharedAggregates::prune_insert_only`]).
#[derive(Clone, Copy, Debug)]
enum Pick {
    /// The least (event time, messageId, value): `first`.
    Earliest,
    /// The greatest: `last`.
    Latest,
}

impl Pick {
    fn wrap(self, c: Contribution, e: i64) -> Picked {
        match self {
            Pick::Earliest => Picked::Earliest(c, e),
            Pick::Latest => Picked::Latest(std::cmp::Reverse((c, e))),
        }
    }
}

/// A contribution ordered so that the one to keep is the least (the
/// monotone minimum keeps it); one aggregate's contributions are all of one
/// variant.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum Picked {
    Earliest(Contribution, i64),
    Latest(std::cmp::Reverse<(Contribution, i64)>),
}

impl Picked {
    fn into_inner(self) -> (Contribution, i64) {
        match self {
            Picked::Earliest(c, e) | Picked::Latest(std::cmp::Reverse((c, e))) => (c, e),
        }
    }
}

/// Many aggregates over the same events, computed in one pass.
///
/// Compiling each aggregate on its own reads every event once per
/// aggregate: the event stream is copied to each (a deep copy of every
/// event per aggregate, most of a job's time with 25 aggregates), and equal
/// aggregates of different definitions are kept twice. Here the join of
/// events with their profiles emits, per event, only its small
/// contributions tagged with the aggregate's index ([`event_contributions`]);
/// one operator applies each aggregate's window and routes the contributions
/// to that aggregate's arrangement and reduce; equal aggregates (of any
/// definitions) are one.
pub struct SharedAggregates<'s, P: timely::ExchangeData + Ord + Clone + 'static> {
    entries: Vec<(Aggregate, AggregateValues<'s, P>)>,
}

impl<'s, P> SharedAggregates<'s, P>
where
    P: timely::ExchangeData + Ord + Hash + Clone + std::fmt::Debug,
{
    /// The distinct aggregates of `aggs`, in first-seen order: the `aggs`
    /// to give [`event_contributions`] and [`SharedAggregates::build`].
    pub fn distinct(aggs: impl IntoIterator<Item = Aggregate>) -> Vec<Aggregate> {
        let mut out: Vec<Aggregate> = Vec::new();
        for a in aggs {
            if !out.contains(&a) {
                out.push(a);
            }
        }
        out
    }

    /// Builds every aggregate of `aggs` from `contributions`:
    /// `(aggregate index, (profile, contribution, event time))`.
    /// [`SharedAggregates::window`], then [`SharedAggregates::from_windowed`].
    pub fn build(
        contributions: VecCollection<'s, u64, (usize, (P, Contribution, i64)), isize>,
        aggs: &[Aggregate],
    ) -> Self {
        let keyed = contributions.map(|(i, (p, c, e))| (p, (i, c, e)));
        Self::from_windowed(Self::window(keyed, aggs), aggs)
    }

    /// Drops, for an insert-only input (a job without regulations: no event
    /// is ever retracted), the contributions no evaluation can pick again:
    /// per key and aggregate, `last` keeps only its latest contribution
    /// (with a window too: a later event also expires later), an
    /// unwindowed `first` only its earliest, and `max` (`min`) only the
    /// numbers that no other number at least as large (small) and at least
    /// as late dominates: within a window, the decreasing (increasing)
    /// sequence of maxima still to come, of which the first is the maximum;
    /// without one, the maximum. Everything else passes as is.
    ///
    /// Runs before [`SharedAggregates::window`] on the same
    /// `(key, (aggregate index, contribution, event time))`: a replaced
    /// contribution is retracted when its successor arrives, and windows
    /// commute with that retraction (a dominated contribution expires no
    /// later than the one that dominates it). A contribution whose event
    /// time is ahead of its logical time (which a window would insert only
    /// later) passes unpruned and never replaces another, so nothing is
    /// dropped before its successor counts. The per-key state is one
    /// contribution (`weft_operators::monotone`), or for `max`/`min` the
    /// undominated ones; both panic on a retraction: call this only where
    /// the input cannot retract.
    pub fn prune_insert_only<K>(
        contributions: VecCollection<'s, u64, (K, (usize, Contribution, i64)), isize>,
        aggs: &[Aggregate],
    ) -> VecCollection<'s, u64, (K, (usize, Contribution, i64)), isize>
    where
        K: timely::ExchangeData + Ord + Hash + Clone,
    {
        use timely::dataflow::operators::vec::Partition as _;
        use weft_operators::monotone::{MonotoneMin as _, MonotoneUndominated as _};
        let rules: Vec<Option<Pick>> = aggs
            .iter()
            .map(|a| match (a.func, a.events.window) {
                (AggFunc::Last, _) => Some(Pick::Latest),
                (AggFunc::First, None) => Some(Pick::Earliest),
                _ => None,
            })
            .collect();
        // `max`/`min`: (larger is better?, windowed?)
        let extremes: Vec<Option<(bool, bool)>> = aggs
            .iter()
            .map(|a| match a.func {
                AggFunc::Max => Some((true, a.events.window.is_some())),
                AggFunc::Min => Some((false, a.events.window.is_some())),
                _ => None,
            })
            .collect();
        if rules.iter().all(Option::is_none) && extremes.iter().all(Option::is_none) {
            return contributions;
        }
        let keep = rules.clone();
        let ext = extremes.clone();
        let parts = contributions
            .inner
            .partition(3, move |((k, (i, c, e)), t, r)| {
                let settled = e.max(0) as u64 <= t;
                let part = if keep[i].is_some() && settled {
                    1
                } else if ext[i].is_some() && settled && matches!(c.value(), AggValue::Num(_)) {
                    2
                } else {
                    0
                };
                (part, ((k, (i, c, e)), t, r))
            });
        let passed = parts[0].clone().as_collection();
        let pruned = parts[1]
            .clone()
            .as_collection()
            .map(move |(k, (i, c, e))| ((k, i), rules[i].expect("prunable").wrap(c, e)))
            .monotone_min("PruneFirstLast")
            .map(|((k, i), p)| {
                let (c, e) = p.into_inner();
                (k, (i, c, e))
            });
        // (better, later, contribution, event time): `better` orders numbers
        // by `f64::total_cmp`, negated for `min`; `later` is 0 without a window.
        let undominated = parts[2]
            .clone()
            .as_collection()
            .map(move |(k, (i, c, e))| {
                let (larger, windowed) = extremes[i].expect("an extreme");
                let AggValue::Num(x) = *c.value() else {
                    unreachable!("partitioned on numbers")
                };
                let bits = x.to_bits() as i64;
                let key = bits ^ (((bits >> 63) as u64) >> 1) as i64;
                let better = if larger { key } else { !key };
                ((k, i), (better, if windowed { e } else { 0 }, c, e))
            })
            .monotone_undominated(
                "PruneMaxMin",
                |u: &(i64, i64, Contribution, i64), v: &(i64, i64, Contribution, i64)| {
                    u.0 >= v.0 && u.1 >= v.1
                },
            )
            .map(|((k, i), (_, _, c, e))| (k, (i, c, e)));
        passed.concat(pruned).concat(undominated)
    }

    /// Applies each aggregate's window to contributions keyed by anything
    /// (a profile, or the anchor identifier an event belongs to before it is
    /// joined with its profile: windows commute with that join).
    ///
    /// `(key, (aggregate index, contribution, event time))` becomes
    /// `(key, (aggregate index, contribution))` from `max(t, e)`, retracted at
    /// `e + w` for an aggregate with window `w` (held until then, see
    /// `weft_operators::future`).
    pub fn window<K>(
        contributions: VecCollection<'s, u64, (K, (usize, Contribution, i64)), isize>,
        aggs: &[Aggregate],
    ) -> VecCollection<'s, u64, (K, (usize, Contribution)), isize>
    where
        K: timely::ExchangeData + Ord + Clone,
    {
        let windows: Vec<Option<u64>> = aggs.iter().map(|a| a.events.window.map(|w| w.0)).collect();
        let any_window = windows.iter().any(Option::is_some);
        let updates = contributions
            .inner
            .flat_map(move |((k, (i, c, e)), t, r)| {
                let (now, windowed) = match windows[i] {
                    None => (Some(((k, (i, c)), t, r)), None),
                    Some(w) => (None, Some(window_updates((k, (i, c)), t, r, e, w))),
                };
                now.into_iter().chain(windowed.into_iter().flatten())
            })
            .as_collection();
        if any_window {
            updates.hold_future_with("HoldWindowExpiries", hold_config())
        } else {
            updates
        }
    }

    /// Arranges and reduces each aggregate of `aggs` from windowed
    /// contributions `(profile, (aggregate index, contribution))`.
    ///
    /// The `count` aggregates are one record per profile whatever their
    /// number ([`split_counts`]), and [`SlotTotals::slot_totals`]
    /// accumulates them to every count's value, arranged per aggregate. The
    /// other aggregates are arranged and reduced one by one
    /// ([`arrange_contributions`]).
    pub fn from_windowed(
        contributions: VecCollection<'s, u64, (P, (usize, Contribution)), isize>,
        aggs: &[Aggregate],
    ) -> Self {
        let (counts, others) = split_counts(contributions, aggs);
        Self::assemble(counts, others, aggs)
    }

    /// [`SharedAggregates::from_windowed`] for contributions keyed by the
    /// anchor identifier they belong to, `(anchor, (aggregate index,
    /// contribution))`, joined here with `profile_of` (anchor → profile).
    ///
    /// Both are arranged by anchor, so that a profile merge or split re-keys
    /// the consolidated contributions of the anchors involved: the `count`s
    /// as one record per anchor with all its counts as the difference
    /// ("CountsByAnchor"), the other aggregates one record per anchor,
    /// aggregate and distinct contribution ("ContributionsByAnchor").
    pub fn from_windowed_by<K>(
        contributions: VecCollection<'s, u64, (K, (usize, Contribution)), isize>,
        profile_of: Arranged<'s, TraceAgent<ValSpine<K, P, u64, isize>>>,
        aggs: &[Aggregate],
    ) -> Self
    where
        K: timely::ExchangeData + Ord + Hash + Clone + std::fmt::Debug,
    {
        let (counts, others) = split_counts(contributions, aggs);
        let counts = counts
            .arrange_by_self_named("CountsByAnchor")
            .join_core(profile_of.clone(), |_a, (), p| Some(p.clone()));
        let others = others
            .arrange_by_key_named("ContributionsByAnchor")
            .join_core(profile_of, |_a, (i, c), p| {
                Some((p.clone(), (*i, c.clone())))
            });
        Self::assemble(counts, others, aggs)
    }

    /// Every aggregate's values: the `count`s from `counts` (profiles with
    /// their counts as the difference), the others from `others`.
    ///
    /// The `count`s are one row per profile ([`RowTotals::row_totals`]),
    /// arranged once ("CountRows") for every consumer that joins or exports
    /// them; each `count`'s own changes come from the rows
    /// ([`SlotChanges::slot_changes`]), never arranged per aggregate.
    fn assemble(
        counts: differential_dataflow::Collection<'s, u64, Vec<(P, u64, Counts)>>,
        others: VecCollection<'s, u64, (P, (usize, Contribution)), isize>,
        aggs: &[Aggregate],
    ) -> Self {
        use timely::dataflow::operators::vec::Partition as _;
        let n = aggs.len() as u64;
        let rows = counts.row_totals("CountRows");
        let arranged_rows: Arranged<'s, RowsTrace<P>> =
            rows.clone().arrange_by_key_named("CountRows");
        let mut totals = rows
            .slot_changes("CountSlots")
            .inner
            .partition(n, |((i, (p, total)), t, r)| {
                (i as u64, ((p, AggValue::Num(total as f64)), t, r))
            })
            .into_iter();
        let mut contributions = others
            .inner
            .partition(n, |((p, (i, c)), t, r)| (i as u64, ((p, c), t, r)))
            .into_iter();
        let entries = aggs
            .iter()
            .enumerate()
            .map(|(i, agg)| {
                let (values, part) = (totals.next(), contributions.next());
                let values = if agg.func == AggFunc::Count {
                    AggregateValues::Slot {
                        rows: arranged_rows.clone(),
                        slot: i as u32,
                        values: values.expect("one part per aggregate").as_collection(),
                    }
                } else {
                    AggregateValues::Arranged(arrange_contributions(
                        part.expect("one part per aggregate").as_collection(),
                        agg.func,
                    ))
                };
                (agg.clone(), values)
            })
            .collect();
        SharedAggregates { entries }
    }

    /// The values of `agg`, if it is one of these.
    pub fn get(&self, agg: &Aggregate) -> Option<AggregateValues<'s, P>> {
        self.entries
            .iter()
            .find(|(a, _)| a == agg)
            .map(|(_, values)| values.clone())
    }
}

/// An aggregate's (or computed trait's) values, as compiled.
#[derive(Clone)]
pub enum AggregateValues<'s, P: timely::ExchangeData + Ord + Clone + 'static> {
    /// Arranged by profile (the reduce's own output arrangement).
    Arranged(Arranged<'s, ValuesTrace<P>>),
    /// One slot of a job's count rows (see [`SharedAggregates`]): the
    /// profile's value is its row's count in `slot`, and `values` are
    /// exactly that value's changes.
    Slot {
        /// Every profile with a non-zero count, with its row.
        rows: Arranged<'s, RowsTrace<P>>,
        /// This aggregate's slot in the rows.
        slot: u32,
        /// `(profile, count)` for every profile whose count is not zero.
        values: TraitValues<'s, P>,
    },
}

impl<'s, P> AggregateValues<'s, P>
where
    P: timely::ExchangeData + Ord + Clone + std::fmt::Debug + 'static,
{
    /// `(profile, value)`.
    pub fn values(&self) -> TraitValues<'s, P> {
        match self {
            AggregateValues::Arranged(a) => a.clone().as_collection(|p, v| (p.clone(), v.clone())),
            AggregateValues::Slot { values, .. } => values.clone(),
        }
    }

    /// The trace to export to other dataflows (runtime definitions).
    pub fn export(&self) -> ExportedValues<P> {
        match self {
            AggregateValues::Arranged(a) => ExportedValues::Arranged(a.trace.clone()),
            AggregateValues::Slot { rows, slot, .. } => {
                ExportedValues::Slot(rows.trace.clone(), *slot)
            }
        }
    }
}

/// A computed trait's values, exported from the dataflow that computes
/// them: its own arrangement by profile, or one slot of the count rows.
#[derive(Clone)]
pub enum ExportedValues<P: timely::ExchangeData + Ord + Clone + 'static> {
    /// Arranged by profile.
    Arranged(ValuesTrace<P>),
    /// The count rows, and the trait's slot in them.
    Slot(RowsTrace<P>, u32),
}

impl<P> ExportedValues<P>
where
    P: timely::ExchangeData + Ord + Clone + std::fmt::Debug + 'static,
{
    /// `(profile, value)` in another dataflow. From the rows, a profile's
    /// change of any count retracts and inserts this slot's value too: the
    /// two cancel wherever the values are consolidated (every audience
    /// arranges them).
    pub fn import<'s>(
        &mut self,
        scope: timely::dataflow::Scope<'s, u64>,
        name: &str,
    ) -> TraitValues<'s, P> {
        match self {
            ExportedValues::Arranged(t) => {
                let (arr, _) = t.import_frontier(scope, name);
                arr.as_collection(|p, v| (p.clone(), v.clone()))
            }
            ExportedValues::Slot(t, slot) => {
                let slot = *slot;
                let (arr, _) = t.import_frontier(scope, name);
                arr.flat_map_ref(move |p, row| {
                    let n = row.get(slot);
                    (n != 0).then(|| (p.clone(), AggValue::Num(n as f64)))
                })
            }
        }
    }

    /// Allows the trace to forget distinctions between times before `frontier`.
    pub fn compact_to(&mut self, frontier: timely::progress::frontier::AntichainRef<'_, u64>) {
        use differential_dataflow::trace::TraceReader;
        fn both<T: TraceReader<Time = u64>>(
            t: &mut T,
            f: timely::progress::frontier::AntichainRef<'_, u64>,
        ) {
            t.set_logical_compaction(f);
            t.set_physical_compaction(f);
        }
        match self {
            ExportedValues::Arranged(t) => both(t, frontier),
            ExportedValues::Slot(t, _) => both(t, frontier),
        }
    }
}

/// Splits contributions keyed by anything (a profile or an anchor) into
/// the `count`s', each the key with a one-slot [`Counts`] difference (the
/// slot is the aggregate's index), and the other aggregates'.
#[allow(clippy::type_complexity)]
fn split_counts<'s, K: timely::ExchangeData + Clone>(
    contributions: VecCollection<'s, u64, (K, (usize, Contribution)), isize>,
    aggs: &[Aggregate],
) -> (
    differential_dataflow::Collection<'s, u64, Vec<(K, u64, Counts)>>,
    VecCollection<'s, u64, (K, (usize, Contribution)), isize>,
) {
    let counted: std::rc::Rc<Vec<bool>> =
        std::rc::Rc::new(aggs.iter().map(|a| a.func == AggFunc::Count).collect());
    let slots = counted.clone();
    let counts = contributions
        .inner
        .clone()
        .flat_map(move |((k, (i, _c)), t, r)| {
            slots[i].then(|| (k, t, Counts::one(i as u32, r as i64)))
        })
        .as_collection();
    let others = contributions.filter(move |(_, (i, _))| !counted[*i]);
    (counts, others)
}

/// The collections an audience compilation reads.
pub struct ProfileInputs<'s, P: timely::ExchangeData + Ord + Clone + 'static> {
    /// Every profile (each once).
    pub profiles: VecCollection<'s, u64, P, isize>,
    /// Events by the profile they belong to.
    pub events: VecCollection<'s, u64, (P, Event), isize>,
    /// Profile traits: `(profile, (key, JSON value text))`, one value per key.
    pub traits: VecCollection<'s, u64, (P, (String, String)), isize>,
    /// Aggregates already computed in one pass over the events (see
    /// [`SharedAggregates`]); an aggregate found here is not recomputed from
    /// `events`.
    pub shared: Option<std::rc::Rc<SharedAggregates<'s, P>>>,
}

/// A computed trait's values: `(profile, value)`.
pub type TraitValues<'s, P> = VecCollection<'s, u64, (P, AggValue), isize>;
/// An audience's members.
pub type Members<'s, P> = VecCollection<'s, u64, P, isize>;

/// One leaf's values, tagged with its slot: `(profile, (slot, value))`.
type LeafValues<'s, P> = VecCollection<'s, u64, (P, (usize, AggValue)), isize>;

/// A computed trait's values, arranged by profile (the reduce's own output
/// arrangement: exporting it costs no extra copy).
pub type ValuesTrace<P> = TraceAgent<ValSpine<P, AggValue, u64, isize>>;
/// A job's count rows by profile: every non-zero count of a profile, by
/// slot (the aggregate's index), in one record.
pub type RowsTrace<P> = TraceAgent<ValSpine<P, Counts, u64, isize>>;
/// An audience's members, arranged (the reduce's own output arrangement).
pub type MembersTrace<P> = TraceAgent<KeySpine<P, u64, isize>>;

/// Builds the aggregate's per-profile values (profiles with matching events only).
pub fn compile_aggregate<'s, P>(
    inputs: &ProfileInputs<'s, P>,
    agg: &Aggregate,
) -> TraitValues<'s, P>
where
    P: timely::ExchangeData + Ord + Hash + Clone + std::fmt::Debug,
{
    arrange_aggregate(inputs, agg).values()
}

/// [`compile_aggregate`], returning the values arranged (by profile, or as
/// a slot of the job's count rows), whose trace can be exported to other
/// dataflows (runtime audiences import the computed traits they refer to).
pub fn arrange_aggregate<'s, P>(
    inputs: &ProfileInputs<'s, P>,
    agg: &Aggregate,
) -> AggregateValues<'s, P>
where
    P: timely::ExchangeData + Ord + Hash + Clone + std::fmt::Debug,
{
    if let Some(found) = inputs.shared.as_ref().and_then(|s| s.get(agg)) {
        return found;
    }
    AggregateValues::Arranged(arrange_contributions(
        windowed_contributions(inputs.events.clone(), agg),
        agg.func,
    ))
}

/// Arranges an aggregate's (windowed) contributions by profile and reduces
/// them to its value.
///
/// A `count` is the accumulated multiplicity of its contributions, whatever
/// their values: it arranges the profiles alone (a key and its count, with
/// no 32-byte value per profile), and reduces them to the same values.
fn arrange_contributions<'s, P>(
    contributions: VecCollection<'s, u64, (P, Contribution), isize>,
    func: AggFunc,
) -> Arranged<'s, ValuesTrace<P>>
where
    P: timely::ExchangeData + Ord + Hash + Clone + std::fmt::Debug,
{
    if func == AggFunc::Count {
        return contributions
            .map(|(p, _)| p)
            .arrange_by_self_named("Arrange: Aggregate (count)")
            .reduce_abelian::<_, ValBuilder<_, _, _, _>, ValSpine<P, AggValue, u64, isize>, _, _>(
                "Aggregate",
                |_p, input, output| {
                    let n: isize = input.iter().map(|(_, n)| *n).sum();
                    output.push((AggValue::Num(n as f64), 1));
                },
                |vec, key, upds| {
                    vec.clear();
                    vec.extend(upds.drain(..).map(|(v, t, r)| ((key.clone(), v), t, r)));
                },
            );
    }
    contributions
        .arrange_by_key_named("Arrange: Aggregate")
        .reduce_abelian::<_, ValBuilder<_, _, _, _>, ValSpine<P, AggValue, u64, isize>, _, _>(
            "Aggregate",
            move |_p, input, output| {
                let v = aggregate(func, input);
                output.push((v, 1));
            },
            |vec, key, upds| {
                vec.clear();
                vec.extend(upds.drain(..).map(|(v, t, r)| ((key.clone(), v), t, r)));
            },
        )
}

/// Builds an audience's members.
///
/// `computed` and `audiences` hold the already-compiled computed traits and
/// audiences this one may refer to.
pub fn compile_audience<'s, P>(
    inputs: &ProfileInputs<'s, P>,
    condition: &Condition,
    computed: &BTreeMap<String, TraitValues<'s, P>>,
    audiences: &BTreeMap<String, Members<'s, P>>,
) -> Result<Members<'s, P>, String>
where
    P: timely::ExchangeData + Ord + Hash + Clone + std::fmt::Debug,
{
    Ok(arrange_audience(inputs, condition, computed, audiences)?.as_collection(|p, ()| p.clone()))
}

/// [`compile_audience`], returning the arrangement of the members, whose
/// trace can be exported to other dataflows (runtime audiences import the
/// audiences they refer to).
pub fn arrange_audience<'s, P>(
    inputs: &ProfileInputs<'s, P>,
    condition: &Condition,
    computed: &BTreeMap<String, TraitValues<'s, P>>,
    audiences: &BTreeMap<String, Members<'s, P>>,
) -> Result<Arranged<'s, MembersTrace<P>>, String>
where
    P: timely::ExchangeData + Ord + Hash + Clone + std::fmt::Debug,
{
    let mut ls = Vec::new();
    leaves(condition, &mut ls);
    // STEP 1. One (P, (slot, value)) collection per leaf.
    let mut slots: Vec<LeafValues<'s, P>> = Vec::new();
    for (i, leaf) in ls.iter().enumerate() {
        let coll = match leaf {
            Leaf::Value(ValueRef::Agg(a), _) => {
                compile_aggregate(inputs, a).map(move |(p, v)| (p, (i, v)))
            }
            Leaf::Value(ValueRef::Trait(path), _) => {
                let path = path.clone();
                inputs.traits.clone().flat_map(move |(p, (k, json))| {
                    if k != path[0] {
                        return None;
                    }
                    let v: Json = serde_json::from_str(&json).ok()?;
                    lookup(&v, &path[1..]).map(|x| (p, (i, AggValue::from_json(x))))
                })
            }
            Leaf::Value(ValueRef::Computed(name), _) => computed
                .get(name)
                .ok_or_else(|| format!("computed trait {name:?} is not defined"))?
                .clone()
                .map(move |(p, v)| (p, (i, v))),
            Leaf::Audience(name) => audiences
                .get(name)
                .ok_or_else(|| {
                    format!("audience {name:?} is not defined (or is defined after this one)")
                })?
                .clone()
                .map(move |p| (p, (i, AggValue::Bool(true)))),
        };
        slots.push(coll);
    }
    // STEP 2. Every profile that can be a member gets evaluated, with
    // defaults for missing slots. A condition false when every slot is
    // missing (most: `count(...) >= 1 and ...`) holds only for profiles
    // with a leaf value, and those are profiles at every time (aggregates,
    // traits and memberships are all keyed by the current profile ids):
    // only a condition true of an empty profile needs every profile in its
    // input (one update per profile per such audience).
    let n = ls.len();
    let universal = evaluate_condition(condition, &vec![None; n]);
    let mut all = differential_dataflow::collection::concatenate(inputs.profiles.scope(), slots);
    if universal {
        let universe = inputs
            .profiles
            .clone()
            .map(|p| (p, (usize::MAX, AggValue::Null)));
        all = all.concat(universe);
    }
    let cond = condition.clone();
    let members = all
        .arrange_by_key_named("Arrange: Audience")
        .reduce_abelian::<_, KeyBuilder<P, u64, isize>, KeySpine<P, u64, isize>, _, _>(
            "Audience",
            move |_p, input, output| {
                if universal && !input.iter().any(|((slot, _), _)| *slot == usize::MAX) {
                    return; // not a profile (any more)
                }
                let mut values: Vec<Option<AggValue>> = vec![None; n];
                for ((slot, v), _) in input {
                    if *slot < n {
                        values[*slot] = Some(v.clone());
                    }
                }
                if evaluate_condition(&cond, &values) {
                    output.push(((), 1));
                }
            },
            |vec, key, upds| {
                vec.clear();
                vec.extend(upds.drain(..).map(|(v, t, r)| ((key.clone(), v), t, r)));
            },
        );
    Ok(members)
}

/// An audience membership change, for sinks: `diff` +1 entered, -1 exited.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Membership {
    /// The audience's key (its name unless `key` is set).
    pub audience: String,
    /// The profile id, as text.
    pub profile: String,
}

impl WriteJson for Membership {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"audience\":");
        write_json_string(out, &self.audience);
        out.extend_from_slice(b",\"profile\":");
        write_json_string(out, &self.profile);
        out.push(b'}');
    }
}

/// A computed-trait value, for sinks.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TraitValue {
    /// The computed trait's name.
    pub name: String,
    /// The profile id, as text.
    pub profile: String,
    /// The value.
    pub value: AggValue,
}

impl WriteJson for TraitValue {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"trait\":");
        write_json_string(out, &self.name);
        out.extend_from_slice(b",\"profile\":");
        write_json_string(out, &self.profile);
        out.extend_from_slice(b",\"value\":");
        self.value.write(out);
        out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{parse_event, ParseContext};
    use crate::query::{parse_audience, parse_computed_trait};

    fn ev(s: &str) -> Event {
        parse_event(s.as_bytes(), &ParseContext::default()).unwrap()
    }

    #[test]
    fn a_contribution_takes_the_size_of_a_value() {
        // The arrangements of contributions hold one per key and distinct
        // value: the ordered form is boxed so that the common one stays small.
        assert_eq!(
            std::mem::size_of::<Contribution>(),
            std::mem::size_of::<AggValue>()
        );
        let e = ev(
            r#"{"type":"track","event":"X","userId":"u","messageId":"m1","timestamp":"2026-01-01T00:00:00Z","properties":{"n":2}}"#,
        );
        let last = parse_computed_trait("last(properties.n from track)").unwrap();
        let sum = parse_computed_trait("sum(properties.n from track)").unwrap();
        let c = contribution(&last, &e).unwrap();
        assert_eq!(c.order(), (e.time_ms, "m1"));
        assert_eq!(c.value(), &AggValue::Num(2.0));
        assert_eq!(
            contribution(&sum, &e),
            Some(Contribution::Value(AggValue::Num(2.0)))
        );
    }

    #[test]
    fn tests_follow_the_documented_rules() {
        let n = AggValue::Num(3.0);
        assert!(apply_test(&n, &Test::Cmp(CmpOp::Ge, Literal::Num(3.0))));
        assert!(!apply_test(
            &n,
            &Test::Cmp(CmpOp::Eq, Literal::Str("3".into()))
        ));
        assert!(apply_test(
            &n,
            &Test::Cmp(CmpOp::Ne, Literal::Str("3".into()))
        ));
        assert!(!apply_test(
            &AggValue::Null,
            &Test::Cmp(CmpOp::Lt, Literal::Num(1.0))
        ));
        assert!(apply_test(
            &AggValue::Null,
            &Test::Cmp(CmpOp::Ne, Literal::Num(1.0))
        ));
        assert!(apply_test(
            &AggValue::Null,
            &Test::Cmp(CmpOp::Eq, Literal::Null)
        ));
        assert!(apply_test(
            &AggValue::Str("2026-01-02".into()),
            &Test::Cmp(CmpOp::Gt, Literal::Str("2026-01-01".into()))
        ));
        assert!(apply_test(
            &AggValue::Str("running shoes".into()),
            &Test::Contains("shoes".into())
        ));
        assert!(apply_test(
            &AggValue::List(vec![AggValue::Str("a".into())]),
            &Test::Contains("a".into())
        ));
        assert!(apply_test(
            &AggValue::Str("b".into()),
            &Test::In(vec![Literal::Str("a".into()), Literal::Str("b".into())])
        ));
        assert!(!apply_test(&AggValue::Null, &Test::Exists));
    }

    #[test]
    fn aggregates() {
        let e1 = ev(
            r#"{"type":"track","event":"Order Completed","userId":"u","messageId":"1","timestamp":"2026-01-01T00:00:00Z","properties":{"revenue":10,"cat":"b"}}"#,
        );
        let e2 = ev(
            r#"{"type":"track","event":"Order Completed","userId":"u","messageId":"2","timestamp":"2026-01-02T00:00:00Z","properties":{"revenue":30,"cat":"a"}}"#,
        );
        let e3 = ev(
            r#"{"type":"track","event":"Order Completed","userId":"u","messageId":"3","timestamp":"2026-01-03T00:00:00Z","properties":{"cat":"b"}}"#,
        );
        let get = |q: &str| {
            let a = parse_computed_trait(q).unwrap();
            let cs: Vec<Contribution> = [&e1, &e2, &e3]
                .iter()
                .filter_map(|e| contribution(&a, e))
                .collect();
            let items: Vec<(&Contribution, isize)> = cs.iter().map(|c| (c, 1)).collect();
            aggregate(a.func, &items)
        };
        assert_eq!(get(r#"count(track "Order Completed")"#), AggValue::Num(3.0));
        assert_eq!(
            get(r#"sum(properties.revenue from track)"#),
            AggValue::Num(40.0)
        );
        assert_eq!(
            get(r#"avg(properties.revenue from track)"#),
            AggValue::Num(20.0)
        );
        assert_eq!(
            get(r#"min(properties.revenue from track)"#),
            AggValue::Num(10.0)
        );
        assert_eq!(
            get(r#"max(properties.revenue from track)"#),
            AggValue::Num(30.0)
        );
        assert_eq!(
            get(r#"first(properties.cat from track)"#),
            AggValue::Str("b".into())
        );
        assert_eq!(
            get(r#"last(properties.revenue from track)"#),
            AggValue::Num(30.0)
        );
        assert_eq!(
            get(r#"most_frequent(properties.cat from track)"#),
            AggValue::Str("b".into())
        );
        assert_eq!(
            get(r#"unique(properties.cat from track)"#),
            AggValue::List(vec![AggValue::Str("a".into()), AggValue::Str("b".into())])
        );
        assert_eq!(
            get(r#"unique_count(properties.cat from track)"#),
            AggValue::Num(2.0)
        );
        assert_eq!(get(r#"count(page)"#), AggValue::Num(0.0));
        assert_eq!(get(r#"avg(properties.revenue from page)"#), AggValue::Null);
        // Ties in most_frequent: the smallest value.
        let a = parse_computed_trait(
            r#"most_frequent(properties.cat from track where properties.revenue exists)"#,
        )
        .unwrap();
        let cs: Vec<Contribution> = [&e1, &e2]
            .iter()
            .filter_map(|e| contribution(&a, e))
            .collect();
        let items: Vec<(&Contribution, isize)> = cs.iter().map(|c| (c, 1)).collect();
        assert_eq!(aggregate(a.func, &items), AggValue::Str("a".into()));
    }

    #[test]
    fn conditions_use_defaults_for_missing_values() {
        let c = parse_audience(r#"count(track "X") < 1 and not trait.plan = "pro""#).unwrap();
        assert!(evaluate_condition(&c, &[None, None]));
        assert!(!evaluate_condition(&c, &[Some(AggValue::Num(2.0)), None]));
        assert!(!evaluate_condition(
            &c,
            &[None, Some(AggValue::Str("pro".into()))]
        ));
    }
}

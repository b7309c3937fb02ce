//! The end-to-end workload of `bench-e2e` and its COST baseline: a
//! hand-written, single-threaded program that computes the same outputs as
//! Weft's job on insert-only data.
//!
//! [`TRAITS`] and [`AUDIENCES`] are the job's definitions (the bench writes
//! them into the job spec); [`Cost`] is the same computation written by hand
//! for exactly these definitions, the way a programmer would without a
//! dataflow engine ("Scalability! But at what COST?", McSherry et al. 2015):
//!
//! 1. **decode** each record into a borrowed, typed struct holding only the
//!    fields the definitions read, rejecting what Weft rejects for the
//!    generated data (malformed JSON, wrong types, unknown types, missing ids
//!    or event names, invalid timestamps, over-long `messageId`s, oversize or
//!    empty records);
//! 2. **dedupe** by `messageId` (a hash set of 128-bit fingerprints; the
//!    generator's retries repeat the event time, so Weft's event-time window
//!    makes the same decisions whenever no record is late);
//! 3. **identity** by union-find over the identifiers of each event (its
//!    anchor to every other identifier, alias `previousId`s to known user or
//!    anonymous ids), with Weft's kinds, ranks and blocked values. Weft's
//!    limits are not applied, but every union that would break one is counted
//!    ([`CostStats::limit_conflicts`]): when that count is 0 no limit binds
//!    and the profiles are exactly Weft's. A profile is named by its least
//!    (first-seen event time, kind rank, identifier hash), as in Weft;
//! 4. **aggregates**: per anchor identifier, the counters, sums, maxima,
//!    category counts and last-write-wins candidates the definitions need,
//!    evaluated at the evaluation time `now_ms` (an event counts for a window
//!    `w` when `time + w > now_ms`), then merged per profile;
//! 5. **evaluation** of every audience and computed trait per profile.
//!
//! The result ([`CostOutput`]) is the set of memberships and the computed
//! trait values at `now_ms`: what Weft's sinks hold at that logical time.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use weft_dataflows::identity::id_hash;

use crate::gen::parse_iso8601_ms;

/// The computed traits of the benchmark job: `(name, query)`.
pub const TRAITS: [(&str, &str); 5] = [
    ("orders_90d", r#"count(track "Order Completed" within 90d)"#),
    (
        "revenue_90d",
        r#"sum(properties.revenue from track "Order Completed" within 90d)"#,
    ),
    (
        "favourite_category",
        r#"most_frequent(properties.category from track "Product Viewed" within 30d)"#,
    ),
    ("last_page", r#"last(properties.path from page)"#),
    (
        "max_cart_price_30d",
        r#"max(properties.price from track "Product Added" within 30d)"#,
    ),
];

/// The audiences of the benchmark job: `(name, query)`, in definition order
/// (an audience may refer to earlier ones).
pub const AUDIENCES: [(&str, &str); 10] = [
    (
        "shoe_lovers",
        r#"count(track "Product Viewed" where properties.category = "shoes" within 30d) >= 3 and trait.plan in ["pro", "enterprise"]"#,
    ),
    (
        "cart_abandoners",
        r#"count(track "Checkout Started" within 7d) >= 1 and count(track "Order Completed" within 7d) = 0"#,
    ),
    (
        "high_value",
        r#"computed.revenue_90d > 500 or count(track "Order Completed" within 30d) >= 3"#,
    ),
    (
        "lapsed_customers",
        r#"count(track "Order Completed") >= 1 and count(any within 7d) = 0 and not audience("high_value")"#,
    ),
    (
        "anonymous_readers",
        r#"count(page where properties.path contains "/blog" within 14d) >= 1 and not trait.email exists"#,
    ),
    (
        "explorers",
        r#"unique_count(properties.category from track "Product Viewed" within 30d) >= 4"#,
    ),
    (
        "mobile_on_cellular",
        r#"count(screen "Product Detail" where context.network.wifi = false within 7d) >= 2"#,
    ),
    (
        "promo_responders",
        r#"(count(track "Coupon Applied" within 30d) >= 1 or count(track "Promotion Viewed" where properties.position = "home_banner" within 30d) >= 2) and trait.plan in ["pro", "enterprise"]"#,
    ),
    (
        "premium_browsers",
        r#"max(properties.price from track "Product Viewed" where properties.currency != "USD" within 30d) >= 150 or avg(properties.price from track "Product Added" within 30d) > 100"#,
    ),
    (
        "engaged_buyers",
        r#"computed.orders_90d >= 2 and count(track "Email Opened" within 14d) >= 1"#,
    ),
];

const DAY_MS: i64 = 86_400_000;
const MAX_EVENT_BYTES: usize = 32 * 1024;
const MAX_MESSAGE_ID_CHARS: usize = 100;

// ---------------------------------------------------------------------------
// Decoding.

/// A JSON value the definitions test: scalars kept, anything else `Other`.
#[derive(Debug, Clone, PartialEq)]
enum Scalar<'a> {
    Str(Cow<'a, str>),
    Num(f64),
    Bool(bool),
    Null,
    Other,
}

impl<'a> Scalar<'a> {
    fn as_str(&self) -> Option<&str> {
        match self {
            Scalar::Str(s) => Some(s),
            _ => None,
        }
    }
    fn as_num(&self) -> Option<f64> {
        match self {
            Scalar::Num(x) => Some(*x),
            _ => None,
        }
    }
    fn is_null(&self) -> bool {
        matches!(self, Scalar::Null)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Scalar<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Scalar::Num(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Scalar::Num(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Scalar::Num(v as f64))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(rename = "messageId", borrow)]
    message_id: Option<Cow<'a, str>>,
    #[serde(rename = "userId", borrow)]
    user_id: Option<Cow<'a, str>>,
    #[serde(rename = "anonymousId", borrow)]
    anonymous_id: Option<Cow<'a, str>>,
    #[serde(rename = "previousId", borrow)]
    previous_id: Option<Cow<'a, str>>,
    #[serde(rename = "groupId", borrow)]
    group_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event: Option<Cow<'a, str>>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    /// Read only to reject a non-string `category`, as Weft does.
    #[serde(rename = "category", borrow)]
    _category: Option<Cow<'a, str>>,
    #[serde(borrow)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(rename = "originalTimestamp", borrow)]
    original_timestamp: Option<Cow<'a, str>>,
    #[serde(rename = "sentAt", borrow)]
    sent_at: Option<Cow<'a, str>>,
    #[serde(rename = "receivedAt", borrow)]
    received_at: Option<Cow<'a, str>>,
    #[serde(borrow)]
    properties: Option<Properties<'a>>,
    #[serde(borrow)]
    context: Option<Context<'a>>,
    #[serde(borrow)]
    traits: Option<Traits<'a>>,
    /// Read only to reject non-object `integrations`, as Weft does.
    #[serde(rename = "integrations")]
    _integrations: Option<Object>,
}

/// Any JSON object (contents ignored); anything else is a type error.
struct Object;

impl<'de> Deserialize<'de> for Object {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Object;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Object, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Object)
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Deserialize)]
struct Properties<'a> {
    #[serde(borrow)]
    category: Option<Scalar<'a>>,
    #[serde(borrow)]
    revenue: Option<Scalar<'a>>,
    #[serde(borrow)]
    price: Option<Scalar<'a>>,
    #[serde(borrow)]
    path: Option<Scalar<'a>>,
    #[serde(borrow)]
    currency: Option<Scalar<'a>>,
    #[serde(borrow)]
    position: Option<Scalar<'a>>,
}

#[derive(Deserialize)]
struct Context<'a> {
    #[serde(borrow)]
    traits: Option<EmailHolder<'a>>,
    #[serde(borrow)]
    device: Option<Device<'a>>,
    #[serde(borrow)]
    network: Option<Network<'a>>,
    #[serde(rename = "externalIds", borrow)]
    external_ids: Option<Vec<ExternalId<'a>>>,
}

#[derive(Deserialize)]
struct EmailHolder<'a> {
    #[serde(borrow)]
    email: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Device<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Network<'a> {
    #[serde(borrow)]
    wifi: Option<Scalar<'a>>,
}

#[derive(Deserialize)]
struct ExternalId<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
}

#[derive(Deserialize)]
struct Traits<'a> {
    #[serde(borrow)]
    email: Option<Cow<'a, str>>,
    #[serde(borrow)]
    plan: Option<Scalar<'a>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Track,
    Identify,
    Page,
    Screen,
    Group,
    Alias,
}

/// A decoded, valid event: what the definitions and identity read.
struct Decoded<'a> {
    kind: Kind,
    time_ms: i64,
    wire: Wire<'a>,
}

/// A property that is present and not null.
fn present<'b, 'c>(v: &'b Option<Scalar<'c>>) -> Option<&'b Scalar<'c>> {
    v.as_ref().filter(|s| !s.is_null())
}

fn nonempty<'b>(v: &'b Option<Cow<'_, str>>) -> Option<&'b str> {
    v.as_deref().filter(|s| !s.is_empty())
}

fn time(v: &Option<Cow<'_, str>>) -> Result<Option<i64>, ()> {
    match v {
        None => Ok(None),
        Some(s) => parse_iso8601_ms(s).map(Some).ok_or(()),
    }
}

/// Decodes and validates one record (see the module docs); `None` if rejected.
fn decode(line: &[u8]) -> Option<Decoded<'_>> {
    if line.len() > MAX_EVENT_BYTES || line.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    let wire: Wire<'_> = serde_json::from_slice(line).ok()?;
    let kind = match wire.kind.as_deref()? {
        "track" => Kind::Track,
        "identify" => Kind::Identify,
        "page" => Kind::Page,
        "screen" => Kind::Screen,
        "group" => Kind::Group,
        "alias" => Kind::Alias,
        _ => return None,
    };
    let (user, anon) = (nonempty(&wire.user_id), nonempty(&wire.anonymous_id));
    let ids_ok = match kind {
        Kind::Alias => user.is_some() && nonempty(&wire.previous_id).is_some(),
        _ => user.is_some() || anon.is_some(),
    };
    let fields_ok = match kind {
        Kind::Track => nonempty(&wire.event).is_some(),
        Kind::Group => nonempty(&wire.group_id).is_some(),
        _ => true,
    };
    if !ids_ok || !fields_ok {
        return None;
    }
    if wire
        .message_id
        .as_deref()
        .is_some_and(|m| m.chars().count() > MAX_MESSAGE_ID_CHARS)
    {
        return None;
    }
    let t = time(&wire.timestamp).ok()?;
    let o = time(&wire.original_timestamp).ok()?;
    let s = time(&wire.sent_at).ok()?;
    let r = time(&wire.received_at).ok()?;
    let time_ms = match (t, o, s, r) {
        (Some(t), ..) => t,
        (None, Some(o), Some(s), Some(r)) => r - (s - o),
        (None, Some(o), ..) => o,
        (None, None, _, Some(r)) => r,
        (None, None, _, None) => return None,
    };
    Some(Decoded {
        kind,
        time_ms,
        wire,
    })
}

// ---------------------------------------------------------------------------
// Identity.

/// Kind ranks of Weft's default identity rules (`user_id`, `email`,
/// `device_id`, `anonymous_id`; other kinds rank last).
fn rank(kind: &str) -> u16 {
    match kind {
        "user_id" => 0,
        "email" => 1,
        "device_id" => 2,
        "anonymous_id" => 3,
        _ => u16::MAX,
    }
}

/// Weft's default limits per profile, by rank (`None`: unlimited).
fn limit(rank: u16) -> Option<u8> {
    match rank {
        0 => Some(1),
        1..=3 => Some(5),
        _ => None,
    }
}

/// Weft's default blocked values: `""`, `null`, `undefined`, `anonymous`,
/// `0`, `-1` and anything made of `0` and `-` only.
fn blocked(v: &str) -> bool {
    matches!(v, "null" | "undefined" | "anonymous") || v.bytes().all(|b| b == b'0' || b == b'-')
}

/// A hasher for keys that are already uniform 128-bit hashes.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64 ^ (v >> 64) as u64;
    }
}

type HashMap128<V> = HashMap<u128, V, BuildHasherDefault<PassThrough>>;
type HashSet128 = HashSet<u128, BuildHasherDefault<PassThrough>>;

/// One identifier of the graph.
struct Node {
    parent: u32,
    first_seen: i64,
    rank: u16,
    hash: u128,
    /// `kind:value`, the name of a profile this identifier names.
    name: Box<str>,
    /// Index into `Cost::partials` if events are anchored here.
    partial: u32,
    /// Limited kinds in this identifier's set (meaningful at roots):
    /// user_id, email, device_id, anonymous_id.
    limited: [u16; 4],
}

const NO_PARTIAL: u32 = u32::MAX;

// ---------------------------------------------------------------------------
// Aggregates.

/// Last-write-wins candidate: (event time, messageId, value).
type Lww = Option<(i64, Box<str>, LwwValue)>;

/// A value held by a last-write-wins candidate.
#[derive(Clone, Debug, PartialEq)]
pub enum LwwValue {
    /// A string.
    Str(Box<str>),
    /// A number.
    Num(f64),
    /// A boolean.
    Bool(bool),
    /// JSON null.
    Null,
    /// An object or array.
    Other,
}

impl LwwValue {
    fn of(s: &Scalar<'_>) -> LwwValue {
        match s {
            Scalar::Str(v) => LwwValue::Str(v.as_ref().into()),
            Scalar::Num(x) => LwwValue::Num(*x),
            Scalar::Bool(b) => LwwValue::Bool(*b),
            Scalar::Null => LwwValue::Null,
            Scalar::Other => LwwValue::Other,
        }
    }
}

fn offer(slot: &mut Lww, time: i64, message_id: &str, value: LwwValue) {
    let newer = slot
        .as_ref()
        .is_none_or(|(t, m, _)| (time, message_id) > (*t, m.as_ref()));
    if newer {
        *slot = Some((time, message_id.into(), value));
    }
}

fn merge_lww(into: &mut Lww, from: Lww) {
    if let Some((t, m, v)) = from {
        offer(into, t, &m, v);
    }
}

/// Everything the definitions need from a set of events (one anchor's, then one profile's).
#[derive(Default)]
struct Partial {
    shoes_viewed_30d: u32,
    checkouts_7d: u32,
    orders_7d: u32,
    orders_30d: u32,
    orders_ever: u32,
    orders_90d: u32,
    revenue_90d: f64,
    revenue_values_90d: u32,
    any_7d: u32,
    blog_pages_14d: u32,
    /// (interned category, Product Viewed events within 30 days).
    categories_30d: Vec<(u32, u32)>,
    detail_screens_cellular_7d: u32,
    coupons_30d: u32,
    home_promos_30d: u32,
    max_foreign_view_price_30d: Option<f64>,
    added_price_sum_30d: f64,
    added_prices_30d: u32,
    added_price_values_30d: u32,
    max_added_price_30d: Option<f64>,
    emails_opened_14d: u32,
    last_page: Lww,
    plan: Lww,
    email: Lww,
}

fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

impl Partial {
    fn merge(&mut self, o: Partial) {
        self.shoes_viewed_30d += o.shoes_viewed_30d;
        self.checkouts_7d += o.checkouts_7d;
        self.orders_7d += o.orders_7d;
        self.orders_30d += o.orders_30d;
        self.orders_ever += o.orders_ever;
        self.orders_90d += o.orders_90d;
        self.revenue_90d += o.revenue_90d;
        self.revenue_values_90d += o.revenue_values_90d;
        self.any_7d += o.any_7d;
        self.blog_pages_14d += o.blog_pages_14d;
        for (c, n) in o.categories_30d {
            add_count(&mut self.categories_30d, c, n);
        }
        self.detail_screens_cellular_7d += o.detail_screens_cellular_7d;
        self.coupons_30d += o.coupons_30d;
        self.home_promos_30d += o.home_promos_30d;
        self.max_foreign_view_price_30d = max_opt(
            self.max_foreign_view_price_30d,
            o.max_foreign_view_price_30d,
        );
        self.added_price_sum_30d += o.added_price_sum_30d;
        self.added_prices_30d += o.added_prices_30d;
        self.added_price_values_30d += o.added_price_values_30d;
        self.max_added_price_30d = max_opt(self.max_added_price_30d, o.max_added_price_30d);
        self.emails_opened_14d += o.emails_opened_14d;
        merge_lww(&mut self.last_page, o.last_page);
        merge_lww(&mut self.plan, o.plan);
        merge_lww(&mut self.email, o.email);
    }
}

/// Adds `n` to `c`'s count in a short `(key, count)` list.
fn add_count(list: &mut Vec<(u32, u32)>, c: u32, n: u32) {
    match list.iter_mut().find(|(k, _)| *k == c) {
        Some((_, m)) => *m += n,
        None => list.push((c, n)),
    }
}

// ---------------------------------------------------------------------------
// The program.

/// Counters of a [`Cost`] run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CostStats {
    /// Records offered.
    pub records: u64,
    /// Records rejected by validation.
    pub rejected: u64,
    /// Valid records dropped as duplicates.
    pub duplicates: u64,
    /// Identifiers in the graph.
    pub identifiers: u64,
    /// Profiles (connected components).
    pub profiles: u64,
    /// Unions that Weft's limits would have refused (0: no limit binds).
    pub limit_conflicts: u64,
}

/// A computed trait's value, as Weft's sink writes it.
#[derive(Clone, Debug, PartialEq)]
pub enum CostValue {
    /// A number.
    Num(f64),
    /// A string.
    Str(String),
    /// A boolean.
    Bool(bool),
    /// Null.
    Null,
}

/// What the COST program computes at its evaluation time.
#[derive(Debug, Default)]
pub struct CostOutput {
    /// `(audience, profile)`, profile as `kind:value`.
    pub memberships: BTreeSet<(String, String)>,
    /// `(trait, profile) → value`.
    pub traits: BTreeMap<(String, String), CostValue>,
    /// Counters.
    pub stats: CostStats,
}

/// The COST program: feed it every record with [`Cost::push`], then [`Cost::finish`].
pub struct Cost {
    now_ms: i64,
    seen: HashSet128,
    index: HashMap128<u32>,
    nodes: Vec<Node>,
    partials: Vec<Partial>,
    /// `(previousId, user node)` of alias calls, linked at the end.
    aliases: Vec<(Box<str>, u32)>,
    categories: HashMap<Box<str>, u32>,
    category_names: Vec<Box<str>>,
    /// Counting mode (see [`Cost::counting`]), instead of the standard job.
    counting: Option<Counting>,
    stats: CostStats,
}

/// Counting mode's definitions and state: a count per (node, event name),
/// as `(slot, count)` rows indexed like `Cost::partials`.
struct Counting {
    slots: HashMap<Box<str>, u32>,
    traits: Vec<String>,
    rows: Vec<Vec<(u32, u32)>>,
}

impl Cost {
    /// A program evaluating windows at `now_ms` (ms since the epoch).
    pub fn new(now_ms: i64) -> Cost {
        Cost {
            now_ms,
            seen: HashSet128::default(),
            index: HashMap128::default(),
            nodes: Vec::new(),
            partials: Vec::new(),
            aliases: Vec::new(),
            categories: HashMap::new(),
            category_names: Vec::new(),
            counting: None,
            stats: CostStats::default(),
        }
    }

    /// A program computing, instead of the standard job, unwindowed counts
    /// of `track` events by name (bench-e2e's `profiles` workload): per
    /// `(trait, event)` of `counters`, the trait is the profile's count of
    /// `track` events named `event`, present when not zero. Identity is the
    /// same as [`Cost::new`]'s.
    pub fn counting(now_ms: i64, counters: &[(String, String)]) -> Cost {
        let mut cost = Cost::new(now_ms);
        cost.counting = Some(Counting {
            slots: counters
                .iter()
                .enumerate()
                .map(|(i, (_, event))| (event.as_str().into(), i as u32))
                .collect(),
            traits: counters.iter().map(|(t, _)| t.clone()).collect(),
            rows: Vec::new(),
        });
        cost
    }

    /// Processes one record (one JSON event, without its newline).
    pub fn push(&mut self, line: &[u8]) {
        self.stats.records += 1;
        let Some(ev) = decode(line) else {
            self.stats.rejected += 1;
            return;
        };
        let fingerprint = match ev.wire.message_id.as_deref().filter(|m| !m.is_empty()) {
            Some(m) => xxhash_rust::xxh3::xxh3_128(m.as_bytes()),
            // Weft derives a messageId from the bytes; a re-sent line gets the same one.
            None => xxhash_rust::xxh3::xxh3_128(line) ^ 1,
        };
        if !self.seen.insert(fingerprint) {
            self.stats.duplicates += 1;
            return;
        }
        let Some(anchor) = self.identify(&ev) else {
            return;
        };
        self.aggregate(anchor, &ev);
    }

    /// The event's identifiers: unions them and returns the anchor's node.
    fn identify(&mut self, ev: &Decoded<'_>) -> Option<u32> {
        let w = &ev.wire;
        let mut list: Vec<(u16, u128, String, String)> = Vec::with_capacity(6);
        let mut add = |kind: &str, value: &str| {
            if !blocked(value) {
                list.push((rank(kind), id_hash(kind, value), kind.into(), value.into()));
            }
        };
        if let Some(u) = nonempty(&w.user_id) {
            add("user_id", u);
        }
        if let Some(a) = nonempty(&w.anonymous_id) {
            add("anonymous_id", a);
        }
        let context_email = w
            .context
            .as_ref()
            .and_then(|c| c.traits.as_ref())
            .and_then(|t| nonempty(&t.email));
        let email = match ev.kind {
            Kind::Group => context_email,
            _ => context_email.or_else(|| w.traits.as_ref().and_then(|t| nonempty(&t.email))),
        };
        if let Some(e) = email {
            add("email", e);
        }
        if let Some(d) = w
            .context
            .as_ref()
            .and_then(|c| c.device.as_ref())
            .and_then(|d| d.id.as_deref())
        {
            add("device_id", d);
        }
        for x in w
            .context
            .as_ref()
            .and_then(|c| c.external_ids.as_ref())
            .into_iter()
            .flatten()
        {
            if x.kind != "group_id" {
                add(&x.kind, &x.id);
            }
        }
        list.sort_by_key(|a| (a.0, a.1));
        list.dedup_by_key(|a| a.1);
        let mut nodes = Vec::with_capacity(list.len());
        for (r, h, kind, value) in &list {
            nodes.push(self.node(*h, *r, kind, value, ev.time_ms));
        }
        let anchor = *nodes.first()?;
        for &n in &nodes[1..] {
            self.union(anchor, n, false);
        }
        if ev.kind == Kind::Alias {
            let user = list.iter().position(|x| x.2 == "user_id").map(|i| nodes[i]);
            if let (Some(u), Some(p)) = (user, nonempty(&w.previous_id).filter(|p| !blocked(p))) {
                self.aliases.push((p.into(), u));
            }
        }
        Some(anchor)
    }

    fn node(&mut self, hash: u128, rank: u16, kind: &str, value: &str, t: i64) -> u32 {
        let next = self.nodes.len() as u32;
        let i = *self.index.entry(hash).or_insert(next);
        if i == next {
            let mut limited = [0u16; 4];
            if (rank as usize) < 4 {
                limited[rank as usize] = 1;
            }
            self.nodes.push(Node {
                parent: i,
                first_seen: t,
                rank,
                hash,
                name: format!("{kind}:{value}").into(),
                partial: NO_PARTIAL,
                limited,
            });
        } else {
            let n = &mut self.nodes[i as usize];
            n.first_seen = n.first_seen.min(t);
        }
        i
    }

    fn find(&mut self, mut x: u32) -> u32 {
        while self.nodes[x as usize].parent != x {
            let grand = self.nodes[self.nodes[x as usize].parent as usize].parent;
            self.nodes[x as usize].parent = grand;
            x = grand;
        }
        x
    }

    fn union(&mut self, a: u32, b: u32, explicit: bool) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra == rb {
            return;
        }
        let (la, lb) = (
            self.nodes[ra as usize].limited,
            self.nodes[rb as usize].limited,
        );
        let mut sum = [0u16; 4];
        for k in 0..4 {
            sum[k] = la[k] + lb[k];
            let over = limit(k as u16).is_some_and(|l| sum[k] > u16::from(l));
            if over && !explicit && la[k] > 0 && lb[k] > 0 {
                self.stats.limit_conflicts += 1;
            }
        }
        self.nodes[rb as usize].parent = ra;
        self.nodes[ra as usize].limited = sum;
    }

    fn category(&mut self, name: &str) -> u32 {
        if let Some(&c) = self.categories.get(name) {
            return c;
        }
        let c = self.category_names.len() as u32;
        self.categories.insert(name.into(), c);
        self.category_names.push(name.into());
        c
    }

    /// Adds the event's contributions to its anchor's partial aggregates.
    fn aggregate(&mut self, anchor: u32, ev: &Decoded<'_>) {
        let w = &ev.wire;
        if let Some(c) = &mut self.counting {
            let name = w.event.as_deref();
            let Some(&slot) = name
                .and_then(|n| c.slots.get(n))
                .filter(|_| ev.kind == Kind::Track)
            else {
                return;
            };
            let node = &mut self.nodes[anchor as usize];
            if node.partial == NO_PARTIAL {
                c.rows.push(Vec::new());
                node.partial = c.rows.len() as u32 - 1;
            }
            add_count(&mut c.rows[node.partial as usize], slot, 1);
            return;
        }
        let now_ms = self.now_ms;
        let within = |days: i64| ev.time_ms + days * DAY_MS > now_ms;
        let props = w.properties.as_ref();
        let name = w.event.as_deref().or(w.name.as_deref());
        let message_id = w.message_id.as_deref().unwrap_or("");
        let category = match (ev.kind, name) {
            (Kind::Track, Some("Product Viewed")) if within(30) => props
                .and_then(|p| present(&p.category))
                .and_then(Scalar::as_str)
                .map(str::to_string),
            _ => None,
        };
        let category = category.map(|c| self.category(c.as_str()));
        let slot = self.nodes[anchor as usize].partial;
        let slot = if slot == NO_PARTIAL {
            self.partials.push(Partial::default());
            let s = self.partials.len() as u32 - 1;
            self.nodes[anchor as usize].partial = s;
            s
        } else {
            slot
        };
        let p = &mut self.partials[slot as usize];
        if within(7) {
            p.any_7d += 1;
        }
        match (ev.kind, name) {
            (Kind::Track, Some("Product Viewed")) if within(30) => {
                let cat = props.and_then(|p| present(&p.category));
                if cat.and_then(Scalar::as_str) == Some("shoes") {
                    p.shoes_viewed_30d += 1;
                }
                if let Some(c) = category {
                    add_count(&mut p.categories_30d, c, 1);
                }
                if props
                    .and_then(|p| present(&p.currency))
                    .and_then(Scalar::as_str)
                    != Some("USD")
                {
                    let price = props
                        .and_then(|p| present(&p.price))
                        .and_then(Scalar::as_num);
                    p.max_foreign_view_price_30d = max_opt(p.max_foreign_view_price_30d, price);
                }
            }
            (Kind::Track, Some("Product Added")) if within(30) => {
                if let Some(price) = props.and_then(|p| present(&p.price)) {
                    p.added_price_values_30d += 1;
                    if let Some(x) = price.as_num() {
                        p.added_price_sum_30d += x;
                        p.added_prices_30d += 1;
                        p.max_added_price_30d = max_opt(p.max_added_price_30d, Some(x));
                    }
                }
            }
            (Kind::Track, Some("Checkout Started")) if within(7) => p.checkouts_7d += 1,
            (Kind::Track, Some("Order Completed")) => {
                p.orders_ever += 1;
                p.orders_7d += u32::from(within(7));
                p.orders_30d += u32::from(within(30));
                if within(90) {
                    p.orders_90d += 1;
                    if let Some(rev) = props.and_then(|p| present(&p.revenue)) {
                        p.revenue_values_90d += 1;
                        p.revenue_90d += rev.as_num().unwrap_or(0.0);
                    }
                }
            }
            (Kind::Track, Some("Coupon Applied")) if within(30) => p.coupons_30d += 1,
            (Kind::Track, Some("Promotion Viewed")) if within(30) => {
                if props
                    .and_then(|p| present(&p.position))
                    .and_then(Scalar::as_str)
                    == Some("home_banner")
                {
                    p.home_promos_30d += 1;
                }
            }
            (Kind::Track, Some("Email Opened")) if within(14) => p.emails_opened_14d += 1,
            (Kind::Page, _) => {
                if let Some(path) = props.and_then(|p| present(&p.path)) {
                    if within(14) && path.as_str().is_some_and(|s| s.contains("/blog")) {
                        p.blog_pages_14d += 1;
                    }
                    offer(&mut p.last_page, ev.time_ms, message_id, LwwValue::of(path));
                }
            }
            (Kind::Screen, Some("Product Detail")) if within(7) => {
                let wifi = w
                    .context
                    .as_ref()
                    .and_then(|c| c.network.as_ref())
                    .and_then(|n| n.wifi.as_ref());
                if wifi == Some(&Scalar::Bool(false)) {
                    p.detail_screens_cellular_7d += 1;
                }
            }
            (Kind::Identify, _) => {
                if let Some(t) = &w.traits {
                    if let Some(plan) = &t.plan {
                        offer(&mut p.plan, ev.time_ms, message_id, LwwValue::of(plan));
                    }
                    if let Some(e) = &t.email {
                        let v = LwwValue::Str(e.as_ref().into());
                        offer(&mut p.email, ev.time_ms, message_id, v);
                    }
                }
            }
            _ => {}
        }
    }

    /// Links aliases, merges partial aggregates per profile, and evaluates
    /// every audience and computed trait.
    pub fn finish(mut self) -> CostOutput {
        // STEP 1. Alias edges to user or anonymous ids that some event showed.
        for (prev, user) in std::mem::take(&mut self.aliases) {
            for kind in ["user_id", "anonymous_id"] {
                if let Some(&n) = self.index.get(&id_hash(kind, &prev)) {
                    if n != user {
                        self.union(user, n, true);
                    }
                }
            }
        }
        // STEP 2. Per profile: its name and its merged partials.
        let n = self.nodes.len();
        let mut name_of: Vec<Option<(i64, u16, u128, u32)>> = vec![None; n];
        let mut merged: Vec<Option<Partial>> = (0..n).map(|_| None).collect();
        let mut partials: Vec<Option<Partial>> = std::mem::take(&mut self.partials)
            .into_iter()
            .map(Some)
            .collect();
        // Counting mode: per profile, its identifiers' rows summed.
        let counting = self.counting.take();
        let mut totals: Vec<Vec<(u32, u32)>> = vec![Vec::new(); counting.as_ref().map_or(0, |_| n)];
        for i in 0..n as u32 {
            let root = self.find(i) as usize;
            let node = &self.nodes[i as usize];
            let key = (node.first_seen, node.rank, node.hash, i);
            let best = &mut name_of[root];
            if best.is_none_or(|b| key < b) {
                *best = Some(key);
            }
            if node.partial == NO_PARTIAL {
                continue;
            }
            match &counting {
                Some(c) => {
                    for &(slot, k) in &c.rows[node.partial as usize] {
                        add_count(&mut totals[root], slot, k);
                    }
                }
                None => {
                    let p = partials[node.partial as usize]
                        .take()
                        .expect("one partial per node");
                    match &mut merged[root] {
                        Some(m) => m.merge(p),
                        slot @ None => *slot = Some(p),
                    }
                }
            }
        }
        // STEP 3. Evaluate per profile.
        let mut out = CostOutput::default();
        for root in 0..n {
            let Some((_, _, _, namer)) = name_of[root] else {
                continue;
            };
            self.stats.profiles += 1;
            let profile = self.nodes[namer as usize].name.to_string();
            if let Some(c) = &counting {
                for &(slot, k) in &totals[root] {
                    out.traits.insert(
                        (c.traits[slot as usize].clone(), profile.clone()),
                        CostValue::Num(f64::from(k)),
                    );
                }
                continue;
            }
            let p = merged[root].take().unwrap_or_default();
            for (name, value) in self.traits_of(&p) {
                out.traits
                    .insert((name.to_string(), profile.clone()), value);
            }
            for audience in self.audiences_of(&p) {
                out.memberships
                    .insert((audience.to_string(), profile.clone()));
            }
        }
        self.stats.identifiers = n as u64;
        out.stats = self.stats;
        out
    }

    /// The computed traits a profile has (those with contributing events).
    fn traits_of(&self, p: &Partial) -> Vec<(&'static str, CostValue)> {
        let mut out = Vec::new();
        if p.orders_90d > 0 {
            out.push(("orders_90d", CostValue::Num(p.orders_90d as f64)));
        }
        if p.revenue_values_90d > 0 {
            out.push(("revenue_90d", CostValue::Num(p.revenue_90d)));
        }
        if let Some(c) = self.favourite_category(p) {
            out.push(("favourite_category", CostValue::Str(c.to_string())));
        }
        if let Some((_, _, v)) = &p.last_page {
            out.push(("last_page", cost_value(v)));
        }
        if p.added_price_values_30d > 0 {
            let v = p
                .max_added_price_30d
                .map_or(CostValue::Null, CostValue::Num);
            out.push(("max_cart_price_30d", v));
        }
        out
    }

    /// Most frequent category; ties: the smallest name.
    fn favourite_category(&self, p: &Partial) -> Option<&str> {
        p.categories_30d
            .iter()
            .map(|&(c, n)| (n, &self.category_names[c as usize]))
            .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)))
            .map(|(_, name)| name.as_ref())
    }

    /// The audiences a profile belongs to.
    fn audiences_of(&self, p: &Partial) -> Vec<&'static str> {
        let plan_paid = matches!(
            &p.plan,
            Some((_, _, LwwValue::Str(s))) if matches!(s.as_ref(), "pro" | "enterprise")
        );
        let has_email = matches!(&p.email, Some((_, _, v)) if *v != LwwValue::Null);
        let high_value = (p.revenue_values_90d > 0 && p.revenue_90d > 500.0) || p.orders_30d >= 3;
        let avg_added =
            (p.added_prices_30d > 0).then(|| p.added_price_sum_30d / f64::from(p.added_prices_30d));
        let checks = [
            ("shoe_lovers", p.shoes_viewed_30d >= 3 && plan_paid),
            ("cart_abandoners", p.checkouts_7d >= 1 && p.orders_7d == 0),
            ("high_value", high_value),
            (
                "lapsed_customers",
                p.orders_ever >= 1 && p.any_7d == 0 && !high_value,
            ),
            ("anonymous_readers", p.blog_pages_14d >= 1 && !has_email),
            ("explorers", p.categories_30d.len() >= 4),
            ("mobile_on_cellular", p.detail_screens_cellular_7d >= 2),
            (
                "promo_responders",
                (p.coupons_30d >= 1 || p.home_promos_30d >= 2) && plan_paid,
            ),
            (
                "premium_browsers",
                p.max_foreign_view_price_30d.is_some_and(|x| x >= 150.0)
                    || avg_added.is_some_and(|x| x > 100.0),
            ),
            (
                "engaged_buyers",
                p.orders_90d >= 2 && p.emails_opened_14d >= 1,
            ),
        ];
        checks
            .into_iter()
            .filter(|(_, member)| *member)
            .map(|(name, _)| name)
            .collect()
    }
}

fn cost_value(v: &LwwValue) -> CostValue {
    match v {
        LwwValue::Str(s) => CostValue::Str(s.to_string()),
        LwwValue::Num(x) => CostValue::Num(*x),
        LwwValue::Bool(b) => CostValue::Bool(*b),
        LwwValue::Null | LwwValue::Other => CostValue::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    const NOW: i64 = 1_800_000_000_000;

    fn ts(ms: i64) -> String {
        crate::gen::format_iso8601_ms(ms)
    }

    #[test]
    fn stitches_and_evaluates() {
        let mut c = Cost::new(NOW);
        let day = DAY_MS;
        // An anonymous visitor reads the blog, then identifies on another device.
        c.push(&line(&format!(
            r#"{{"type":"page","messageId":"m1","anonymousId":"a1","timestamp":"{}","properties":{{"path":"/blog/x"}}}}"#,
            ts(NOW - 3 * day)
        )));
        c.push(&line(&format!(
            r#"{{"type":"identify","messageId":"m2","anonymousId":"a1","userId":"u1","timestamp":"{}","traits":{{"plan":"pro","email":"x@y"}}}}"#,
            ts(NOW - 2 * day)
        )));
        for (i, cat) in ["shoes", "shoes", "shoes", "hats"].iter().enumerate() {
            c.push(&line(&format!(
                r#"{{"type":"track","event":"Product Viewed","messageId":"v{i}","userId":"u1","timestamp":"{}","properties":{{"category":"{cat}","price":10,"currency":"USD"}}}}"#,
                ts(NOW - day)
            )));
        }
        // A retry, a malformed line and a second, anonymous profile.
        c.push(&line(&format!(
            r#"{{"type":"track","event":"Product Viewed","messageId":"v0","userId":"u1","timestamp":"{}","properties":{{"category":"shoes"}}}}"#,
            ts(NOW - day)
        )));
        c.push(b"{\"type\":\"track\"");
        c.push(&line(&format!(
            r#"{{"type":"page","messageId":"m9","anonymousId":"a2","timestamp":"{}","properties":{{"path":"/blog/y"}}}}"#,
            ts(NOW - 40 * day)
        )));
        let out = c.finish();
        assert_eq!(out.stats.duplicates, 1);
        assert_eq!(out.stats.rejected, 1);
        assert_eq!(out.stats.profiles, 2);
        assert_eq!(out.stats.limit_conflicts, 0);
        let members: Vec<_> = out.memberships.iter().cloned().collect();
        // a1 was seen first: it names the profile.
        assert_eq!(
            members,
            vec![("shoe_lovers".to_string(), "anonymous_id:a1".to_string())],
            "anonymous_readers needs no email; a2's blog visit is outside 14 days"
        );
        assert_eq!(
            out.traits[&("favourite_category".into(), "anonymous_id:a1".into())],
            CostValue::Str("shoes".into())
        );
        assert_eq!(
            out.traits[&("last_page".into(), "anonymous_id:a2".into())],
            CostValue::Str("/blog/y".into())
        );
    }

    #[test]
    fn counts_limit_conflicts() {
        let mut c = Cost::new(NOW);
        for (m, u) in [("1", "u1"), ("2", "u2")] {
            c.push(&line(&format!(
                r#"{{"type":"identify","messageId":"{m}","anonymousId":"shared","userId":"{u}","timestamp":"{}"}}"#,
                ts(NOW)
            )));
        }
        assert_eq!(c.finish().stats.limit_conflicts, 1);
    }
}

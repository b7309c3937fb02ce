//! `identity` against a from-scratch model: after every logical time, the
//! accumulated id → profile map, the accepted edges, the merges and splits, the profile traits,
//! the account memberships and the account traits equal what a naive
//! reimplementation of the rules (extraction, blocked values, star edges,
//! aliases, per-identifier limits, greedy per-profile limits, union-find,
//! oldest-identifier naming, last write wins) computes from the accumulated
//! events.
//!
//! Event streams are random (seeded; the seed is printed on failure and
//! `IDENTITY_SEED=n` reruns one seed) with shared devices and emails, blocked
//! values, aliases, external ids, custom kinds, groups, tied timestamps,
//! duplicates and retractions (splits), under random limits and priorities,
//! at 1 and 4 workers. The insert-only variant (`identity_insert_only`, for
//! jobs without regulations) is checked the same way on streams without
//! retractions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use differential_dataflow::input::Input;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use weft_dataflows::event::{parse_event, Event, ParseContext};
use weft_dataflows::identity::{id_hash, identity, identity_insert_only, IdHash, KeyedTrait};
use weft_dataflows::spec::{CustomKind, IdentitySpec};
use weft_operators::components::{ChangeKind, ComponentChange};

/// A generated event, kept as plain fields so the model reads them directly.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Gen {
    kind: &'static str,
    user: Option<String>,
    anon: Option<String>,
    ctx_email: Option<String>,
    traits_email: Option<String>,
    device: Option<String>,
    external: Vec<(String, String)>,
    crm: Option<String>,
    previous: Option<String>,
    group: Option<String>,
    /// Other traits: (key, JSON value).
    traits: Vec<(String, String)>,
    time_ms: i64,
    message_id: String,
}

fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

impl Gen {
    /// The traits object as sent: `email` and `crm` first, then the rest.
    fn trait_pairs(&self) -> Vec<(String, String)> {
        let mut t = Vec::new();
        if let Some(e) = &self.traits_email {
            t.push(("email".to_string(), js(e)));
        }
        if let Some(c) = &self.crm {
            t.push(("crm".to_string(), js(c)));
        }
        t.extend(self.traits.iter().cloned());
        t
    }

    fn json(&self) -> String {
        let mut f = vec![
            format!("\"type\":{}", js(self.kind)),
            format!("\"messageId\":{}", js(&self.message_id)),
        ];
        let iso = chrono::DateTime::from_timestamp_millis(self.time_ms)
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string();
        f.push(format!("\"timestamp\":{}", js(&iso)));
        for (k, v) in [
            ("userId", &self.user),
            ("anonymousId", &self.anon),
            ("previousId", &self.previous),
            ("groupId", &self.group),
        ] {
            if let Some(v) = v {
                f.push(format!("{}:{}", js(k), js(v)));
            }
        }
        if self.kind == "track" {
            f.push("\"event\":\"Clicked\"".to_string());
        }
        let mut cx = Vec::new();
        if let Some(e) = &self.ctx_email {
            cx.push(format!("\"traits\":{{\"email\":{}}}", js(e)));
        }
        if let Some(d) = &self.device {
            cx.push(format!("\"device\":{{\"id\":{}}}", js(d)));
        }
        if !self.external.is_empty() {
            let xs: Vec<String> = self
                .external
                .iter()
                .map(|(t, id)| format!("{{\"id\":{},\"type\":{}}}", js(id), js(t)))
                .collect();
            cx.push(format!("\"externalIds\":[{}]", xs.join(",")));
        }
        if !cx.is_empty() {
            f.push(format!("\"context\":{{{}}}", cx.join(",")));
        }
        let traits = self.trait_pairs();
        if !traits.is_empty() {
            let ts: Vec<String> = traits
                .iter()
                .map(|(k, v)| format!("{}:{}", js(k), v))
                .collect();
            f.push(format!("\"traits\":{{{}}}", ts.join(",")));
        }
        format!("{{{}}}", f.join(","))
    }

    fn event(&self) -> Event {
        let json = self.json();
        parse_event(json.as_bytes(), &ParseContext::default())
            .unwrap_or_else(|e| panic!("{json}: {e}"))
    }
}

#[derive(Clone, Debug)]
struct Case {
    spec: IdentitySpec,
    /// Updates per logical time, in increasing time order.
    times: Vec<(u64, Vec<(Gen, isize)>)>,
}

fn pick(rng: &mut SmallRng, prefix: &str, n: usize, p: f64) -> Option<String> {
    if !rng.gen_bool(p) {
        return None;
    }
    if rng.gen_bool(0.06) {
        // Blocked values.
        return Some(
            ["anonymous", "0", "null", "-1", "undefined", "000"][rng.gen_range(0..6)].to_string(),
        );
    }
    Some(format!("{prefix}{}", rng.gen_range(0..n)))
}

fn generate(seed: u64, insert_only: bool) -> Case {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut spec = IdentitySpec::default();
    spec.limits.insert("user_id".into(), rng.gen_range(1..=2));
    spec.limits
        .insert("email".into(), [1, 2, 5][rng.gen_range(0..3)]);
    spec.limits.insert("device_id".into(), rng.gen_range(1..=3));
    spec.limits
        .insert("anonymous_id".into(), [1, 3, 5][rng.gen_range(0..3)]);
    spec.custom_kinds.push(CustomKind {
        name: "crm_id".into(),
        path: "traits.crm".into(),
    });
    spec.custom_kinds.push(CustomKind {
        name: "ios_idfa".into(),
        path: "external_id:idfa".into(),
    });
    if rng.gen_bool(0.5) {
        spec.limits.insert("crm_id".into(), 1);
    }
    if rng.gen_bool(0.3) {
        spec.limits.remove("anonymous_id");
    }
    if rng.gen_bool(0.4) {
        let mut p: Vec<String> = ["user_id", "email", "device_id", "anonymous_id", "crm_id"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        p.shuffle(&mut rng);
        p.truncate(rng.gen_range(0..=5));
        spec.priority = p;
    }
    let users = rng.gen_range(1..6);
    let anons = rng.gen_range(1..9);
    let emails = rng.gen_range(1..4);
    let devices = rng.gen_range(1..4);
    let base = 1_767_225_600_000i64;
    let spread = [1i64, 5, 30][rng.gen_range(0..3)];
    let mut live: Vec<Gen> = Vec::new();
    let mut times = Vec::new();
    let mut time = rng.gen_range(0..3u64);
    let mut msg = 0;
    for _ in 0..rng.gen_range(1..14) {
        let mut updates = Vec::new();
        for _ in 0..rng.gen_range(0..10) {
            let roll = rng.gen_range(0..100);
            if roll < 22 && !live.is_empty() && !insert_only {
                let g = live.swap_remove(rng.gen_range(0..live.len()));
                updates.push((g, -1));
                continue;
            }
            if roll < 27 && !live.is_empty() {
                // An exact duplicate of a live event.
                let g = live[rng.gen_range(0..live.len())].clone();
                live.push(g.clone());
                updates.push((g, 1));
                continue;
            }
            msg += 1;
            let kind =
                ["track", "identify", "identify", "alias", "group", "page"][rng.gen_range(0..6)];
            let mut g = Gen {
                kind,
                user: pick(&mut rng, "u", users, 0.5),
                anon: pick(&mut rng, "a", anons, 0.7),
                ctx_email: pick(&mut rng, "c", emails, 0.15).map(|e| format!("{e}@x")),
                traits_email: pick(&mut rng, "e", emails, 0.25).map(|e| format!("{e}@x")),
                device: pick(&mut rng, "d", devices, 0.35),
                external: Vec::new(),
                crm: if kind == "identify" {
                    pick(&mut rng, "crm", 3, 0.2)
                } else {
                    None
                },
                previous: None,
                group: None,
                traits: Vec::new(),
                time_ms: base + 1000 * rng.gen_range(0..spread),
                message_id: format!("m{msg}"),
            };
            for _ in 0..rng.gen_range(0..3) {
                let t = ["idfa", "zendesk", "email", "group_id"][rng.gen_range(0..4)];
                g.external
                    .push((t.to_string(), format!("x{}", rng.gen_range(0..3))));
            }
            if kind == "identify" || kind == "group" {
                for _ in 0..rng.gen_range(0..3) {
                    let k = ["plan", "name", "n"][rng.gen_range(0..3)];
                    if g.traits.iter().all(|(key, _)| key != k) {
                        g.traits
                            .push((k.to_string(), rng.gen_range(0..4).to_string()));
                    }
                }
            }
            if kind == "alias" {
                let prefix = ["u", "a"][rng.gen_range(0..2)];
                g.previous = pick(&mut rng, prefix, users.max(anons), 1.0);
                if g.user.is_none() {
                    g.user = Some(format!("u{}", rng.gen_range(0..users)));
                }
            }
            if kind == "group" {
                g.group = pick(&mut rng, "g", 3, 1.0);
            }
            if g.user.is_none() && g.anon.is_none() {
                g.anon = Some(format!("a{}", rng.gen_range(0..anons)));
            }
            live.push(g.clone());
            updates.push((g, 1));
        }
        times.push((time, updates));
        time += rng.gen_range(1..3);
    }
    Case { spec, times }
}

// ---------------------------------------------------------------------------
// The model.

type Map = BTreeMap<IdHash, IdHash>;

#[derive(Debug, Default, PartialEq)]
struct Model {
    profiles: Map,
    accepted: BTreeSet<(IdHash, IdHash)>,
    traits: BTreeMap<(IdHash, String), String>,
    accounts: BTreeSet<(IdHash, IdHash)>,
    account_traits: BTreeMap<(IdHash, String), String>,
}

struct Rules {
    blocked: Vec<regex::Regex>,
    order: Vec<String>,
    limits: BTreeMap<String, u32>,
}

impl Rules {
    fn new(spec: &IdentitySpec) -> Rules {
        let blocked = spec
            .blocked_values
            .iter()
            .map(|b| regex::Regex::new(&format!("^(?:{b})$")).unwrap())
            .collect();
        let mut order: Vec<String> = Vec::new();
        let builtin = ["user_id", "email", "device_id", "anonymous_id"].map(String::from);
        let custom: Vec<String> = spec.custom_kinds.iter().map(|c| c.name.clone()).collect();
        for k in spec
            .priority
            .iter()
            .chain(builtin.iter())
            .chain(custom.iter())
        {
            if !order.contains(k) {
                order.push(k.clone());
            }
        }
        Rules {
            blocked,
            order,
            limits: spec.limits.clone(),
        }
    }
    fn ok(&self, v: &str) -> bool {
        !self.blocked.iter().any(|r| r.is_match(v))
    }
    fn rank(&self, kind: &str) -> usize {
        self.order
            .iter()
            .position(|k| k == kind)
            .unwrap_or(usize::MAX)
    }
    fn limit(&self, kind: &str) -> Option<u32> {
        self.limits.get(kind).copied()
    }
    /// The event's identifiers `(rank, hash, kind)`, ordered, the anchor first.
    fn ids(&self, g: &Gen) -> Vec<(usize, IdHash, String)> {
        let mut raw: Vec<(String, String)> = Vec::new();
        let email = if g.kind == "group" {
            g.ctx_email.clone()
        } else {
            g.ctx_email.clone().or(g.traits_email.clone())
        };
        for (k, v) in [
            ("user_id", &g.user),
            ("anonymous_id", &g.anon),
            ("email", &email),
            ("device_id", &g.device),
        ] {
            if let Some(v) = v {
                raw.push((k.to_string(), v.clone()));
            }
        }
        for (t, v) in &g.external {
            match t.as_str() {
                "group_id" => {}
                "idfa" => raw.push(("ios_idfa".to_string(), v.clone())),
                _ => raw.push((t.clone(), v.clone())),
            }
        }
        if let Some(c) = &g.crm {
            raw.push(("crm_id".to_string(), c.clone()));
        }
        let mut ids: Vec<(usize, IdHash, String)> = raw
            .into_iter()
            .filter(|(_, v)| self.ok(v))
            .map(|(k, v)| (self.rank(&k), id_hash(&k, &v), k))
            .collect();
        ids.sort();
        ids.dedup_by_key(|x| x.1);
        ids
    }
}

struct Uf(BTreeMap<IdHash, IdHash>);
impl Uf {
    fn find(&mut self, x: IdHash) -> IdHash {
        let p = *self.0.entry(x).or_insert(x);
        if p == x {
            x
        } else {
            let r = self.find(p);
            self.0.insert(x, r);
            r
        }
    }
}

/// (lo, hi, kind of lo, kind of hi, explicit).
type Edge = (IdHash, IdHash, String, String, bool);
/// An edge seen from one end: (edge time, other end, edge).
type Incident = (i64, IdHash, Edge);

fn model(rules: &Rules, events: &[Gen]) -> Model {
    let mut first_seen: BTreeMap<IdHash, (i64, String)> = BTreeMap::new();
    let mut edges: BTreeMap<Edge, i64> = BTreeMap::new();
    let add_edge =
        |edges: &mut BTreeMap<Edge, i64>, a: (IdHash, &str), b: (IdHash, &str), x: bool, t: i64| {
            let e = if a.0 <= b.0 {
                (a.0, b.0, a.1.to_string(), b.1.to_string(), x)
            } else {
                (b.0, a.0, b.1.to_string(), a.1.to_string(), x)
            };
            let m = edges.entry(e).or_insert(t);
            *m = (*m).min(t);
        };
    for g in events {
        let ids = rules.ids(g);
        for (_, h, k) in &ids {
            let f = first_seen.entry(*h).or_insert((g.time_ms, k.clone()));
            f.0 = f.0.min(g.time_ms);
        }
        for (_, h, k) in ids.iter().skip(1) {
            add_edge(&mut edges, (ids[0].1, &ids[0].2), (*h, k), false, g.time_ms);
        }
    }
    // Aliases, to identifiers that exist.
    for g in events.iter().filter(|g| g.kind == "alias") {
        let (Some(prev), Some(user)) = (&g.previous, &g.user) else {
            continue;
        };
        if !rules.ok(prev) || !rules.ok(user) {
            continue;
        }
        let u = id_hash("user_id", user);
        for kind in ["user_id", "anonymous_id"] {
            let p = id_hash(kind, prev);
            if p != u && first_seen.contains_key(&p) {
                add_edge(&mut edges, (u, "user_id"), (p, kind), true, g.time_ms);
            }
        }
    }
    // Per-identifier limits.
    let mut incident: BTreeMap<(IdHash, String), Vec<Incident>> = BTreeMap::new();
    for (e, t) in &edges {
        if e.4 {
            continue;
        }
        if rules.limit(&e.3).is_some() {
            incident
                .entry((e.0, e.3.clone()))
                .or_default()
                .push((*t, e.1, e.clone()));
        }
        if rules.limit(&e.2).is_some() {
            incident
                .entry((e.1, e.2.clone()))
                .or_default()
                .push((*t, e.0, e.clone()));
        }
    }
    let mut rejected_by_end: BTreeSet<Edge> = BTreeSet::new();
    for ((_, kind), mut list) in incident {
        list.sort();
        for (_, _, e) in list.into_iter().skip(rules.limit(&kind).unwrap() as usize) {
            rejected_by_end.insert(e);
        }
    }
    let mut candidates: Vec<(i64, usize, usize, IdHash, IdHash, bool, Edge)> = edges
        .iter()
        .filter(|(e, _)| !rejected_by_end.contains(*e))
        .map(|(e, t)| {
            let (r2, r3) = (rules.rank(&e.2), rules.rank(&e.3));
            (*t, r2.min(r3), r2.max(r3), e.0, e.1, e.4, e.clone())
        })
        .collect();
    // Ranks above u16 are all "other"; the engine stores them as u16::MAX.
    for c in candidates.iter_mut() {
        c.1 = c.1.min(u16::MAX as usize);
        c.2 = c.2.min(u16::MAX as usize);
    }
    candidates.sort();
    // Greedy per-profile limits.
    let mut accepted: BTreeSet<(IdHash, IdHash)> = BTreeSet::new();
    let mut uf = Uf(BTreeMap::new());
    let mut members: BTreeMap<IdHash, Vec<(IdHash, String)>> = first_seen
        .iter()
        .map(|(h, (_, k))| (*h, vec![(*h, k.clone())]))
        .collect();
    for (_, _, _, lo, hi, explicit, (_, _, _, _, _)) in candidates {
        let (ra, rb) = (uf.find(lo), uf.find(hi));
        if ra == rb {
            accepted.insert((lo, hi));
            continue;
        }
        let count =
            |m: &Vec<(IdHash, String)>, k: &str| m.iter().filter(|(_, kk)| kk == k).count() as u32;
        let fits = explicit
            || rules.limits.iter().all(|(k, lim)| {
                let (ca, cb) = (count(&members[&ra], k), count(&members[&rb], k));
                ca == 0 || cb == 0 || ca + cb <= *lim
            });
        if fits {
            accepted.insert((lo, hi));
            uf.0.insert(rb, ra);
            let moved = members.remove(&rb).unwrap();
            members.get_mut(&ra).unwrap().extend(moved);
        }
    }
    // Profiles named by the oldest identifier.
    let mut oldest: BTreeMap<IdHash, (i64, usize, IdHash)> = BTreeMap::new();
    for (h, (t, k)) in &first_seen {
        let r = uf.find(*h);
        let me = (*t, rules.rank(k).min(u16::MAX as usize), *h);
        let o = oldest.entry(r).or_insert(me);
        *o = (*o).min(me);
    }
    let mut m = Model {
        accepted,
        ..Model::default()
    };
    for h in first_seen.keys() {
        let r = uf.find(*h);
        m.profiles.insert(*h, oldest[&r].2);
    }
    // Traits and accounts.
    let mut lww: BTreeMap<(IdHash, String), (i64, String, String)> = BTreeMap::new();
    let mut account_lww: BTreeMap<(IdHash, String), (i64, String, String)> = BTreeMap::new();
    for g in events {
        let ids = rules.ids(g);
        let anchor = ids.first().map(|x| m.profiles[&x.1]);
        let cands = g
            .trait_pairs()
            .into_iter()
            .map(|(k, v)| (k, (g.time_ms, g.message_id.clone(), v)));
        if g.kind == "identify" {
            if let Some(p) = anchor {
                for (k, c) in cands {
                    let e = lww.entry((p, k)).or_insert(c.clone());
                    *e = e.clone().max(c);
                }
            }
        } else if g.kind == "group" {
            let Some(gid) = g.group.as_ref().filter(|v| rules.ok(v)) else {
                continue;
            };
            let gh = id_hash("group_id", gid);
            if let Some(p) = anchor {
                m.accounts.insert((p, gh));
            }
            for (k, c) in cands {
                let e = account_lww.entry((gh, k)).or_insert(c.clone());
                *e = e.clone().max(c);
            }
        }
    }
    m.traits = lww.into_iter().map(|(k, v)| (k, v.2)).collect();
    m.account_traits = account_lww.into_iter().map(|(k, v)| (k, v.2)).collect();
    m
}

/// Merges and splits between two maps (the definition in `weft_operators::components`).
fn changes(before: &Map, after: &Map) -> Vec<ComponentChange<IdHash>> {
    let mut flow: BTreeMap<(IdHash, IdHash), u64> = BTreeMap::new();
    for (v, b) in before {
        if let Some(a) = after.get(v) {
            *flow.entry((*b, *a)).or_default() += 1;
        }
    }
    let mut out = Vec::new();
    let labels: BTreeSet<IdHash> = before.values().chain(after.values()).copied().collect();
    for x in labels {
        let sources: Vec<_> = flow.iter().filter(|((_, a), _)| *a == x).collect();
        if sources.len() >= 2 {
            for ((q, _), n) in &sources {
                if *q != x {
                    out.push(ComponentChange {
                        kind: ChangeKind::Merged,
                        from: *q,
                        into: x,
                        nodes: **n,
                    });
                }
            }
        }
        let targets: Vec<_> = flow.iter().filter(|((b, _), _)| *b == x).collect();
        if targets.len() >= 2 {
            for ((_, r), n) in &targets {
                if *r != x {
                    out.push(ComponentChange {
                        kind: ChangeKind::Split,
                        from: x,
                        into: *r,
                        nodes: **n,
                    });
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Running the dataflow.

type Out<D> = Arc<Mutex<Vec<(D, u64, isize)>>>;

#[derive(Clone, Default)]
struct Outputs {
    profiles: Out<(IdHash, IdHash)>,
    accepted: Out<(IdHash, IdHash)>,
    changes: Out<ComponentChange<IdHash>>,
    traits: Out<KeyedTrait>,
    accounts: Out<(IdHash, IdHash)>,
    account_traits: Out<KeyedTrait>,
}

fn run(case: &Case, workers: usize, all_feed: bool, insert_only: bool) -> Outputs {
    let outs = Outputs::default();
    let o = outs.clone();
    type Steps = Vec<(u64, Vec<(Event, isize)>)>;
    let times: Arc<Steps> = Arc::new(
        case.times
            .iter()
            .map(|(t, u)| (*t, u.iter().map(|(g, r)| (g.event(), *r)).collect()))
            .collect(),
    );
    let spec = case.spec.clone();
    timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let (o, spec) = (o.clone(), spec.clone());
        let mut input = worker.dataflow::<u64, _, _>(move |scope| {
            let (input, events) = scope.new_collection::<Event, isize>();
            let out = if insert_only {
                identity_insert_only(events, &spec)
            } else {
                identity(events, &spec)
            }
            .expect("rules compile");
            let p = o.profiles.clone();
            out.profiles.inspect(move |x| p.lock().unwrap().push(*x));
            let a = o.accepted.clone();
            out.accepted.inspect(move |x| a.lock().unwrap().push(*x));
            let c = o.changes.clone();
            out.changes
                .inspect(move |x| c.lock().unwrap().push(x.clone()));
            let t = o.traits.clone();
            out.traits
                .inspect(move |x| t.lock().unwrap().push(x.clone()));
            let a = o.accounts.clone();
            out.accounts.inspect(move |x| a.lock().unwrap().push(*x));
            let at = o.account_traits.clone();
            out.account_traits
                .inspect(move |x| at.lock().unwrap().push(x.clone()));
            input
        });
        for (time, updates) in times.iter() {
            input.advance_to(*time);
            for (i, (e, r)) in updates.iter().enumerate() {
                if (all_feed && i % peers == index) || (!all_feed && index == 0) {
                    input.update(e.clone(), *r);
                }
            }
            worker.step();
        }
    })
    .expect("timely runs");
    outs
}

fn accumulate<D: Ord + Clone>(updates: &[(D, u64, isize)], upto: u64) -> BTreeMap<D, isize> {
    let mut acc = BTreeMap::new();
    for (d, t, r) in updates {
        if *t <= upto {
            *acc.entry(d.clone()).or_default() += r;
        }
    }
    acc.retain(|_, r| *r != 0);
    acc
}

fn ones<D: Ord + Clone>(it: impl IntoIterator<Item = D>) -> BTreeMap<D, isize> {
    it.into_iter().map(|d| (d, 1)).collect()
}

fn check(seed: u64, workers: usize, all_feed: bool) -> Result<(), String> {
    check_mode(seed, workers, all_feed, false)
}

fn check_mode(seed: u64, workers: usize, all_feed: bool, insert_only: bool) -> Result<(), String> {
    let case = generate(seed, insert_only);
    let rules = Rules::new(&case.spec);
    let outs = run(&case, workers, all_feed, insert_only);
    let profiles = outs.profiles.lock().unwrap().clone();
    let traits = outs.traits.lock().unwrap().clone();
    let accepted = outs.accepted.lock().unwrap().clone();
    let accounts = outs.accounts.lock().unwrap().clone();
    let account_traits = outs.account_traits.lock().unwrap().clone();
    let mut got_changes = outs.changes.lock().unwrap().clone();
    got_changes.sort();
    let mut want_changes = Vec::new();
    let mut live: BTreeMap<Gen, isize> = BTreeMap::new();
    let mut before = Map::new();
    for (time, updates) in &case.times {
        for (g, r) in updates {
            *live.entry(g.clone()).or_default() += r;
        }
        let events: Vec<Gen> = live
            .iter()
            .filter(|(_, c)| **c > 0)
            .map(|(g, _)| g.clone())
            .collect();
        let want = model(&rules, &events);
        let got = accumulate(&profiles, *time);
        if got != ones(want.profiles.iter().map(|(a, b)| (*a, *b))) {
            return Err(format!(
                "profiles differ at time {time}:\n got  {got:?}\n want {:?}\n events {events:#?}",
                want.profiles
            ));
        }
        let got = accumulate(&accepted, *time);
        if got != ones(want.accepted.iter().copied()) {
            return Err(format!(
                "accepted edges differ at time {time}:\n got  {got:?}\n want {:?}",
                want.accepted
            ));
        }
        let got = accumulate(&traits, *time);
        let want_traits = ones(
            want.traits
                .iter()
                .map(|((p, k), v)| ((*p, k.as_str().into()), v.as_str().into())),
        );
        if got != want_traits {
            return Err(format!(
                "traits differ at time {time}:\n got  {got:?}\n want {want_traits:?}"
            ));
        }
        let got = accumulate(&accounts, *time);
        if got != ones(want.accounts.iter().copied()) {
            return Err(format!(
                "accounts differ at time {time}:\n got  {got:?}\n want {:?}",
                want.accounts
            ));
        }
        let got = accumulate(&account_traits, *time);
        let want_at = ones(
            want.account_traits
                .iter()
                .map(|((p, k), v)| ((*p, k.as_str().into()), v.as_str().into())),
        );
        if got != want_at {
            return Err(format!(
                "account traits differ at time {time}:\n got  {got:?}\n want {want_at:?}"
            ));
        }
        want_changes.extend(
            changes(&before, &want.profiles)
                .into_iter()
                .map(|c| (c, *time, 1)),
        );
        before = want.profiles;
    }
    want_changes.sort();
    if got_changes != want_changes {
        return Err(format!(
            "merges/splits differ:\n got  {got_changes:?}\n want {want_changes:?}"
        ));
    }
    Ok(())
}

fn seeds(default: std::ops::Range<u64>) -> Vec<u64> {
    match std::env::var("IDENTITY_SEED") {
        Ok(s) => vec![s.parse().expect("IDENTITY_SEED is a number")],
        Err(_) => default.collect(),
    }
}

#[test]
fn identity_matches_the_model_one_worker() {
    for seed in seeds(0..300) {
        if let Err(e) = check(seed, 1, false) {
            panic!("seed {seed} (rerun with IDENTITY_SEED={seed}), 1 worker: {e}");
        }
    }
}

#[test]
fn identity_matches_the_model_four_workers() {
    for seed in seeds(5000..5100) {
        for all_feed in [false, true] {
            if let Err(e) = check(seed, 4, all_feed) {
                panic!(
                    "seed {seed} (rerun with IDENTITY_SEED={seed}), 4 workers, fed from {}: {e}",
                    if all_feed { "all" } else { "one" }
                );
            }
        }
    }
}

#[test]
fn insert_only_identity_matches_the_model_one_worker() {
    for seed in seeds(0..200) {
        if let Err(e) = check_mode(seed, 1, false, true) {
            panic!("seed {seed} (rerun with IDENTITY_SEED={seed}), insert-only, 1 worker: {e}");
        }
    }
}

#[test]
fn insert_only_identity_matches_the_model_four_workers() {
    for seed in seeds(7000..7060) {
        for all_feed in [false, true] {
            if let Err(e) = check_mode(seed, 4, all_feed, true) {
                panic!(
                    "seed {seed} (rerun with IDENTITY_SEED={seed}), insert-only, 4 workers, fed from {}: {e}",
                    if all_feed { "all" } else { "one" }
                );
            }
        }
    }
}

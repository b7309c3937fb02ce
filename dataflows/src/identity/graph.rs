//! The insert-only identity graph: per-identifier limits, clusters and their
//! resolution in one structure, each identifier and each edge stored once.
//!
//! ```text
//!  first-seen identifiers (h, (t, k)) ─┐                        per completed time:
//!                                      ├─► [ all to worker 0 ] ─► clusters touched: − resolve(old items)
//!  first-seen edges (e, t) ────────────┘                          apply: rank moves, kept lists, links, splits
//!                                                                 clusters touched: + resolve(new items)
//! ```
//!
//! From the two monotone rankings it computes what the general path's
//! per-identifier limits (a `reduce` and a threshold) followed by
//! `cluster_reduce` compute (steps 4 and 5 of the [module docs](super)),
//! and gives the same output: per cluster
//! (connected component of the candidate edges, every identifier a node),
//! `resolve_cluster` of its sorted items. Both inputs only move down and
//! never leave (the output of `monotone_min`), which is what lets an end keep
//! only the edges it keeps: an edge an end dropped can come back only by a
//! better time of its own, which arrives as a move.
//!
//! **State.** One slab of identifiers (hash, first-seen time, kind, cluster,
//! the ids of its stored edges: 48 bytes and a small boxed slice), one slab of
//! edges (both ends' slab ids, time, kinds, flags: 24 bytes), two hash tables
//! of 4-byte slab ids into them (the hashes are read from the slabs), and per
//! cluster its identifiers' ids. An edge is stored while one of its limited
//! ends keeps it (it holds one of that end's `limit(K)` places even when the
//! other end does not keep it), or always when no end limits it. The two
//! operators it replaces held each identifier and edge in a hash map of
//! 128-bit keys per end and per node, plus a copy of every candidate as an
//! item of its cluster.
//!
//! **Cost.** A move costs a sort of the kept edges of its ends (at most
//! `limit(K)` of each kind), and per cluster it touches two calls of
//! `resolve_cluster` (before and after), plus a walk of the cluster for every
//! candidate it loses. Merges move the smaller cluster's identifiers.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use differential_dataflow::{AsCollection, VecCollection};
use hashbrown::HashTable;
use serde::{Deserialize, Serialize};
use weft_operators::by_time::apply_completed_times;

use super::{resolve_cluster, ClusterItem, EdgeKey, IdHash, IdentityRules, KindRank, Resolved};

/// One input update: an identifier's or an edge's first-seen time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Move {
    Node(IdHash, (i64, KindRank)),
    Edge(EdgeKey, i64),
}

impl Move {
    fn same_item(&self, other: &Move) -> bool {
        match (self, other) {
            (Move::Node(a, _), Move::Node(b, _)) => a == b,
            (Move::Edge(a, _), Move::Edge(b, _)) => a == b,
            _ => false,
        }
    }
}

/// The accepted edges and every identifier's profile, per cluster of the
/// candidates (see the [module docs](self)). `nodes` and `edges` are
/// monotone rankings (`monotone_min` outputs): a change is a new, lesser
/// time with the retraction of the old one; nothing else is retracted.
pub(super) fn resolve_insert_only<'s>(
    nodes: VecCollection<'s, u64, (IdHash, (i64, KindRank)), isize>,
    edges: VecCollection<'s, u64, (EdgeKey, i64), isize>,
    rules: &Rc<IdentityRules>,
    name: &str,
) -> VecCollection<'s, u64, Resolved, isize> {
    let moves = nodes
        .map(|(h, r)| Move::Node(h, r))
        .concat(edges.map(|(e, t)| Move::Edge(e, t)));
    let operator = name.to_string();
    let mut graph = Graph::new(Rc::clone(rules));
    apply_completed_times(
        moves.inner,
        name,
        |_| 0,
        move |time, updates, out| graph.apply(&operator, time, updates, out),
    )
    .as_collection()
}

/// No slab id (a free slot's link, a free cluster).
const NONE: u32 = u32::MAX;

/// Edge flags.
const EXPLICIT: u8 = 1;
/// The lower end limits the edge (`!explicit` and the upper end's kind is limited).
const LIMITED_LO: u8 = 2;
const LIMITED_HI: u8 = 4;
/// The end keeps the edge (always set for an end that does not limit it).
const KEPT_LO: u8 = 8;
const KEPT_HI: u8 = 16;

/// An identifier. (The hash as two words: 8-byte alignment, 48 bytes.)
struct Node {
    hash: [u64; 2],
    /// First-seen time, if the identifier has been seen (an edge's end may
    /// arrive before its own first sighting).
    time: i64,
    /// Slab ids of the stored edges with an end here.
    edges: Box<[u32]>,
    cluster: u32,
    kind: KindRank,
    seen: bool,
}

impl Node {
    fn hash(&self) -> IdHash {
        (u128::from(self.hash[0]) << 64) | u128::from(self.hash[1])
    }
}

/// An edge between two slab ids, `lo`'s hash below `hi`'s (or equal: a self-loop).
#[derive(Clone, Copy)]
struct Edge {
    lo: u32,
    hi: u32,
    time: i64,
    klo: KindRank,
    khi: KindRank,
    flags: u8,
}

impl Edge {
    fn candidate(&self) -> bool {
        self.flags & (KEPT_LO | KEPT_HI) == KEPT_LO | KEPT_HI
    }
    /// Kept by none of the ends that limit it (and limited by one): it holds
    /// no place and can come back only by a move of its own.
    fn dead(&self) -> bool {
        let limited = self.flags & (LIMITED_LO | LIMITED_HI);
        limited != 0
            && (self.flags & LIMITED_LO == 0 || self.flags & KEPT_LO == 0)
            && (self.flags & LIMITED_HI == 0 || self.flags & KEPT_HI == 0)
    }
}

fn mix(mut x: u64) -> u64 {
    // splitmix64's finalizer.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn node_hash(h: IdHash) -> u64 {
    // Identifier hashes are uniform already.
    h as u64
}

fn edge_hash(lo: u32, hi: u32, explicit: bool) -> u64 {
    mix((u64::from(lo) << 32 | u64::from(hi)) ^ u64::from(explicit).rotate_right(1))
}

/// Which end of an edge.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Lo,
    Hi,
}

impl End {
    fn kept(self) -> u8 {
        match self {
            End::Lo => KEPT_LO,
            End::Hi => KEPT_HI,
        }
    }
}

struct Graph {
    rules: Rc<IdentityRules>,
    nodes: Vec<Node>,
    free_nodes: Vec<u32>,
    /// Slab ids of `nodes`, by hash.
    node_index: HashTable<u32>,
    edges: Vec<Edge>,
    free_edges: Vec<u32>,
    /// Slab ids of `edges`, by (lo, hi, explicit).
    edge_index: HashTable<u32>,
    /// Each cluster's identifiers; an empty slot is free.
    clusters: Vec<Vec<u32>>,
    free_clusters: Vec<u32>,
}

/// Puts `value` in a free slot of `slab`, or a new one, and returns its id.
/// A full slab grows by half its length (not doubling: the slabs are most
/// of the state).
fn put<T>(slab: &mut Vec<T>, free: &mut Vec<u32>, value: T) -> u32 {
    if let Some(id) = free.pop() {
        slab[id as usize] = value;
        return id;
    }
    if slab.len() == slab.capacity() {
        slab.reserve_exact((slab.len() / 2).max(1024));
    }
    slab.push(value);
    u32::try_from(slab.len() - 1)
        .ok()
        .filter(|&i| i != NONE)
        .expect("the identity graph holds fewer than 2^32 - 1 identifiers, edges and clusters")
}

impl Graph {
    fn new(rules: Rc<IdentityRules>) -> Self {
        Graph {
            rules,
            nodes: Vec::new(),
            free_nodes: Vec::new(),
            node_index: HashTable::new(),
            edges: Vec::new(),
            free_edges: Vec::new(),
            edge_index: HashTable::new(),
            clusters: Vec::new(),
            free_clusters: Vec::new(),
        }
    }

    fn find_node(&self, h: IdHash) -> Option<u32> {
        let nodes = &self.nodes;
        self.node_index
            .find(node_hash(h), |&id| nodes[id as usize].hash() == h)
            .copied()
    }

    /// The identifier's slab id, created (unseen, a cluster of one) if absent.
    fn node(&mut self, h: IdHash, kind: KindRank) -> u32 {
        if let Some(id) = self.find_node(h) {
            return id;
        }
        let node = Node {
            hash: [(h >> 64) as u64, h as u64],
            time: 0,
            edges: Box::new([]),
            cluster: NONE,
            kind,
            seen: false,
        };
        let id = put(&mut self.nodes, &mut self.free_nodes, node);
        let cluster = self.allocate(vec![id]);
        self.nodes[id as usize].cluster = cluster;
        let nodes = &self.nodes;
        self.node_index
            .insert_unique(node_hash(h), id, |&i| node_hash(nodes[i as usize].hash()));
        id
    }

    fn find_edge(&self, lo: u32, hi: u32, explicit: bool) -> Option<u32> {
        let edges = &self.edges;
        let x = if explicit { EXPLICIT } else { 0 };
        self.edge_index
            .find(edge_hash(lo, hi, explicit), |&id| {
                let e = &edges[id as usize];
                e.lo == lo && e.hi == hi && e.flags & EXPLICIT == x
            })
            .copied()
    }

    fn key(&self, e: &Edge) -> EdgeKey {
        (
            self.nodes[e.lo as usize].hash(),
            self.nodes[e.hi as usize].hash(),
            e.klo,
            e.khi,
            e.flags & EXPLICIT != 0,
        )
    }

    fn allocate(&mut self, nodes: Vec<u32>) -> u32 {
        put(&mut self.clusters, &mut self.free_clusters, nodes)
    }

    fn release(&mut self, c: u32) {
        self.clusters[c as usize] = Vec::new();
        self.free_clusters.push(c);
    }

    /// The edges end `(n, kind of the other end)` keeps, other than
    /// `except`: (time, key, edge, which end `n` is), sorted.
    fn kept_at(&self, n: u32, group: KindRank, except: u32) -> Vec<(i64, EdgeKey, u32, End)> {
        let mut list = Vec::new();
        for &id in self.nodes[n as usize].edges.iter() {
            if id == except {
                continue;
            }
            let e = &self.edges[id as usize];
            if e.lo == n
                && e.flags & (LIMITED_LO | KEPT_LO) == LIMITED_LO | KEPT_LO
                && e.khi == group
            {
                list.push((e.time, self.key(e), id, End::Lo));
            }
            if e.hi == n
                && e.flags & (LIMITED_HI | KEPT_HI) == LIMITED_HI | KEPT_HI
                && e.klo == group
            {
                list.push((e.time, self.key(e), id, End::Hi));
            }
        }
        list.sort_unstable_by_key(|&(t, key, ..)| (t, key));
        list
    }

    /// `resolve_cluster` over cluster `c`'s items, pushed with `sign`.
    fn emit(&self, c: u32, sign: isize, out: &mut Vec<(Resolved, isize)>) {
        let mut items = Vec::new();
        for &n in &self.clusters[c as usize] {
            let node = &self.nodes[n as usize];
            if node.seen {
                items.push(ClusterItem::Node(node.hash(), node.time, node.kind));
            }
            for &id in node.edges.iter() {
                let e = &self.edges[id as usize];
                if e.lo == n && e.candidate() {
                    items.push(ClusterItem::Edge(self.key(e), e.time));
                }
            }
        }
        if items.is_empty() {
            return;
        }
        items.sort_unstable();
        out.extend(
            resolve_cluster(&self.rules, items.into_iter())
                .into_iter()
                .map(|o| (o, sign)),
        );
    }

    fn apply(
        &mut self,
        operator: &str,
        time: u64,
        updates: Vec<(Move, isize)>,
        out: &mut Vec<(Resolved, isize)>,
    ) {
        // 1. One move per item: consolidated, so sorted by (item, rank), a
        // move's new (lesser) rank first.
        let mut moves = Vec::new();
        let mut updates = updates.into_iter().peekable();
        while let Some((m, d)) = updates.next() {
            let repeated = updates.peek().is_some_and(|(m2, _)| m2.same_item(&m));
            if repeated {
                let (_, od) = updates.next().expect("peeked");
                assert!(
                    d == 1 && od == -1 && updates.peek().is_none_or(|(m3, _)| !m3.same_item(&m)),
                    "{operator}: an identifier's or edge's first-seen time moved other than down (time {time})"
                );
            } else {
                assert!(
                    d == 1,
                    "{operator}: an identifier or edge was retracted or repeated (time {time})"
                );
            }
            moves.push(m);
        }
        // 2. Retract the outputs of every cluster a move touches.
        let mut before = HashSet::new();
        for m in &moves {
            let ends = match m {
                Move::Node(h, _) => [Some(*h), None],
                Move::Edge(e, _) => [Some(e.0), Some(e.1)],
            };
            for h in ends.into_iter().flatten() {
                if let Some(id) = self.find_node(h) {
                    let c = self.nodes[id as usize].cluster;
                    if before.insert(c) {
                        self.emit(c, -1, out);
                    }
                }
            }
        }
        // 3. Apply the moves. `prior`: whether each edge whose flags change was
        // a candidate before this time.
        let mut touched: Vec<u32> = Vec::new();
        let mut prior: HashMap<u32, bool> = HashMap::new();
        for m in moves {
            match m {
                Move::Node(h, (t, k)) => {
                    let id = self.node(h, k);
                    let node = &mut self.nodes[id as usize];
                    node.time = t;
                    node.kind = k;
                    node.seen = true;
                    touched.push(id);
                }
                Move::Edge(key, t) => self.move_edge(key, t, &mut touched, &mut prior),
            }
        }
        // 4. Candidates gained join clusters; candidates lost split them
        // (below); edges no end keeps leave, and identifiers with neither a
        // sighting nor an edge.
        // (An edge pushed out of one end's places that was no candidate
        // stays none: its ends' clusters do not change.)
        let mut lost = Vec::new();
        let mut dead = Vec::new();
        for (&id, &was) in &prior {
            let e = self.edges[id as usize];
            let now = e.candidate();
            if now != was {
                touched.push(e.lo);
                touched.push(e.hi);
            }
            if now && !was {
                self.link(e.lo, e.hi);
            } else if was && !now {
                lost.push(e.lo);
            }
            if e.dead() {
                dead.push(id);
            }
        }
        dead.sort_unstable();
        let mut emptied = Vec::new();
        for id in dead {
            let e = self.edges[id as usize];
            emptied.extend([e.lo, e.hi]);
            self.remove_edge(id);
        }
        touched.sort_unstable();
        touched.dedup();
        emptied.extend(touched.iter().copied());
        emptied.sort_unstable();
        emptied.dedup();
        for n in emptied {
            let node = &self.nodes[n as usize];
            if node.cluster != NONE && !node.seen && node.edges.is_empty() {
                self.remove_node(n);
            }
        }
        let mut split: Vec<u32> = lost
            .iter()
            .filter(|&&n| self.nodes[n as usize].cluster != NONE)
            .map(|&n| self.nodes[n as usize].cluster)
            .collect();
        split.sort_unstable();
        split.dedup();
        for c in split {
            self.split(c);
        }
        // 5. The outputs of every cluster holding a touched identifier.
        let mut after = HashSet::new();
        for &n in &touched {
            let c = self.nodes[n as usize].cluster;
            if c != NONE && after.insert(c) {
                self.emit(c, 1, out);
                self.clusters[c as usize].shrink_to_fit();
            }
        }
        #[cfg(debug_assertions)]
        self.check_invariants(operator, time);
    }

    /// Every identifier in its cluster once, every candidate inside one
    /// cluster, every stored edge in both ends' lists (debug builds: tests).
    #[cfg(debug_assertions)]
    fn check_invariants(&self, operator: &str, time: u64) {
        let mut count = vec![0u32; self.nodes.len()];
        for (c, members) in self.clusters.iter().enumerate() {
            for &n in members {
                count[n as usize] += 1;
                assert_eq!(
                    self.nodes[n as usize].cluster as usize, c,
                    "{operator}: cluster of {n} (time {time})"
                );
            }
        }
        for (n, node) in self.nodes.iter().enumerate() {
            let live = node.cluster != NONE;
            assert_eq!(
                count[n],
                u32::from(live),
                "{operator}: {n} in {} clusters (time {time})",
                count[n]
            );
            for &id in node.edges.iter() {
                let e = &self.edges[id as usize];
                assert!(
                    e.lo as usize == n || e.hi as usize == n,
                    "{operator}: edge {id} listed at {n}"
                );
                if e.candidate() {
                    assert_eq!(
                        self.nodes[e.lo as usize].cluster, self.nodes[e.hi as usize].cluster,
                        "{operator}: candidate {id} across clusters (time {time})"
                    );
                }
            }
        }
    }

    /// An edge's new first-seen time: its ends re-decide whether they keep it
    /// (each end keeps its `limit(K)` least (time, key) edges to kind K), and
    /// an edge it pushes out of an end's places loses that end.
    fn move_edge(
        &mut self,
        key: EdgeKey,
        t: i64,
        touched: &mut Vec<u32>,
        prior: &mut HashMap<u32, bool>,
    ) {
        let (lo_h, hi_h, klo, khi, explicit) = key;
        let lo = self.node(lo_h, klo);
        let hi = self.node(hi_h, khi);
        touched.push(lo);
        touched.push(hi);
        let rules = Rc::clone(&self.rules);
        let limit_lo = (!explicit).then(|| rules.limit(khi)).flatten();
        let limit_hi = (!explicit && lo != hi).then(|| rules.limit(klo)).flatten();
        let id = match self.find_edge(lo, hi, explicit) {
            Some(id) => id,
            None => {
                let mut flags = if explicit { EXPLICIT } else { 0 };
                flags |= if limit_lo.is_some() {
                    LIMITED_LO
                } else {
                    KEPT_LO
                };
                flags |= if limit_hi.is_some() {
                    LIMITED_HI
                } else {
                    KEPT_HI
                };
                let edge = Edge {
                    lo,
                    hi,
                    time: t,
                    klo,
                    khi,
                    flags,
                };
                let id = put(&mut self.edges, &mut self.free_edges, edge);
                let edges = &self.edges;
                self.edge_index
                    .insert_unique(edge_hash(lo, hi, explicit), id, |&i| {
                        let e = &edges[i as usize];
                        edge_hash(e.lo, e.hi, e.flags & EXPLICIT != 0)
                    });
                for n in std::iter::once(lo).chain((lo != hi).then_some(hi)) {
                    let node = &mut self.nodes[n as usize];
                    let mut list = std::mem::take(&mut node.edges).into_vec();
                    list.push(id);
                    node.edges = list.into_boxed_slice();
                }
                // New: not a candidate before this time.
                prior.entry(id).or_insert(false);
                id
            }
        };
        prior
            .entry(id)
            .or_insert_with(|| self.edges[id as usize].candidate());
        self.edges[id as usize].time = t;
        for (end, n, group, limit) in [(End::Lo, lo, khi, limit_lo), (End::Hi, hi, klo, limit_hi)] {
            let Some(room) = limit.map(|l| l as usize) else {
                continue;
            };
            let others = self.kept_at(n, group, id);
            let at = others.partition_point(|(ot, okey, ..)| (*ot, *okey) < (t, key));
            if at < room {
                self.edges[id as usize].flags |= end.kept();
                if others.len() >= room {
                    let (_, _, out_id, out_end) = others[room - 1];
                    prior
                        .entry(out_id)
                        .or_insert_with(|| self.edges[out_id as usize].candidate());
                    self.edges[out_id as usize].flags &= !out_end.kept();
                }
            } else {
                self.edges[id as usize].flags &= !end.kept();
            }
        }
    }

    fn remove_edge(&mut self, id: u32) {
        let e = self.edges[id as usize];
        for n in [e.lo, e.hi] {
            let node = &mut self.nodes[n as usize];
            if node.edges.contains(&id) {
                let list: Vec<u32> = node.edges.iter().copied().filter(|&x| x != id).collect();
                node.edges = list.into_boxed_slice();
            }
        }
        if let Ok(entry) = self
            .edge_index
            .find_entry(edge_hash(e.lo, e.hi, e.flags & EXPLICIT != 0), |&x| x == id)
        {
            entry.remove();
        }
        self.edges[id as usize] = Edge {
            lo: NONE,
            hi: NONE,
            time: 0,
            klo: 0,
            khi: 0,
            flags: 0,
        };
        self.free_edges.push(id);
    }

    fn remove_node(&mut self, n: u32) {
        let node = &self.nodes[n as usize];
        let (h, c) = (node.hash(), node.cluster);
        if let Ok(entry) = self.node_index.find_entry(node_hash(h), |&x| x == n) {
            entry.remove();
        }
        let members = &mut self.clusters[c as usize];
        let i = members
            .iter()
            .position(|&m| m == n)
            .expect("an identifier is in its cluster");
        members.swap_remove(i);
        if members.is_empty() {
            self.release(c);
        }
        self.nodes[n as usize] = Node {
            hash: [0, 0],
            time: 0,
            edges: Box::new([]),
            cluster: NONE,
            kind: 0,
            seen: false,
        };
        self.free_nodes.push(n);
    }

    /// A new candidate: the smaller cluster joins the larger.
    fn link(&mut self, a: u32, b: u32) {
        let (ca, cb) = (
            self.nodes[a as usize].cluster,
            self.nodes[b as usize].cluster,
        );
        if ca == cb {
            return;
        }
        let (big, small) = if self.clusters[ca as usize].len() >= self.clusters[cb as usize].len() {
            (ca, cb)
        } else {
            (cb, ca)
        };
        let moved = std::mem::take(&mut self.clusters[small as usize]);
        for &m in &moved {
            self.nodes[m as usize].cluster = big;
        }
        self.clusters[big as usize].extend(moved);
        self.release(small);
    }

    /// Splits cluster `c` into the connected parts of its candidates (the first keeps `c`).
    fn split(&mut self, c: u32) {
        let members = std::mem::take(&mut self.clusters[c as usize]);
        let mut seen: HashSet<u32> = HashSet::with_capacity(members.len());
        let mut parts: Vec<Vec<u32>> = Vec::new();
        for &start in &members {
            if !seen.insert(start) {
                continue;
            }
            let mut part = vec![start];
            let mut i = 0;
            while i < part.len() {
                let n = part[i];
                for &id in self.nodes[n as usize].edges.iter() {
                    let e = &self.edges[id as usize];
                    if e.candidate() {
                        let m = if e.lo == n { e.hi } else { e.lo };
                        if seen.insert(m) {
                            part.push(m);
                        }
                    }
                }
                i += 1;
            }
            parts.push(part);
        }
        let mut parts = parts.into_iter();
        self.clusters[c as usize] = parts.next().unwrap_or_default();
        for part in parts {
            let id = self.allocate(Vec::new());
            for &m in &part {
                self.nodes[m as usize].cluster = id;
            }
            self.clusters[id as usize] = part;
        }
        if self.clusters[c as usize].is_empty() {
            self.release(c);
        }
    }
}

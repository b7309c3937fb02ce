//! A function of every connected component of a changing graph, recomputed
//! only for the components a time touches.
//!
//! [`ClusterReduce::cluster_reduce`] takes undirected edges `(a, b)` and
//! *items* `(node, value)`, and keeps `logic(items of C)` for every connected
//! component `C` of the graph whose nodes are the edges' endpoints and the
//! items' nodes. It is the shape of "connected components, then a reduce per
//! component" (identity resolution: components of the candidate edges, then a
//! greedy union-find per cluster), without arranging either step: the
//! components live in one compact graph structure (per node its items and
//! neighbours, per component its nodes), not in the rounds of an iterative
//! label propagation and the input and output traces of a `reduce`.
//!
//! ```text
//!  edges (a, b) ─┐                        per completed time, in time order:
//!                ├─► [ all to worker 0 ] ─► components touched: − logic(old items)
//!  items (n, v) ─┘                          apply: link (merge smaller into larger),
//!                                           unlink (split by a walk of the component)
//!                                           components touched: + logic(new items)
//! ```
//!
//! **Invariant.** At every time `t`, the accumulated output at `t` is the
//! multiset union, over the components `C` at `t` that hold at least one item,
//! of `logic(items(C))`, where `items(C)` is the sorted list of distinct values
//! `v` with a positive accumulated count of `(n, v)` for some `n ∈ C`. An edge
//! is present while its accumulated multiplicity (of `(a, b)` and `(b, a)`
//! together) is positive; self-loops connect nothing. The output is
//! consolidated within each time.
//!
//! **Preconditions.** `logic` is a function of its input (the same items give
//! the same outputs); accumulated multiplicities of edges and items never go
//! negative (the operator panics with its name if one does).
//!
//! **Cost.** A time costs, per component it touches, two calls of `logic`
//! (before and after) over the component's items, plus a walk of the
//! component for every edge it loses. A merge moves the smaller component's
//! nodes, so building a component of `n` nodes moves O(n log n) nodes in all.
//! State: per node its items and neighbours (one hash-map entry; both lists
//! shrunk to their length after each time that touches the node), per present
//! edge one entry, per component its node list; nothing per time or per round.
//!
//! **One worker.** Components are global, so every update goes to worker 0,
//! which holds the graph and produces the whole output (for any number of
//! workers the output is the same). What reaches this operator is expected to
//! be a graph's changes (identity's first-seen edges and identifiers), not
//! per-event traffic.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use differential_dataflow::consolidation::consolidate;
use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::ExchangeData;

use crate::by_time::TimeStash;

/// One input update, edges and items in one stream.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Change<N, V> {
    Edge(N, N),
    Item(N, V),
}

/// Adds [`ClusterReduce::cluster_reduce`] to collections of undirected edges.
pub trait ClusterReduce<'scope, N> {
    /// `logic(items)` for every connected component holding items, kept up
    /// to date (see the [module docs](self)). `logic` receives the
    /// component's distinct items, sorted, and pushes its outputs.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use differential_dataflow::input::Input;
    /// use weft_operators::clusters::ClusterReduce;
    ///
    /// let out = Arc::new(Mutex::new(Vec::new()));
    /// let log = out.clone();
    /// timely::execute_directly(move |worker| {
    ///     let (mut edges, mut items) = worker.dataflow::<u64, _, _>(|scope| {
    ///         let (edge_input, edges) = scope.new_collection::<(u32, u32), isize>();
    ///         let (item_input, items) = scope.new_collection::<(u32, char), isize>();
    ///         // Per component: its least item and how many items it has.
    ///         edges
    ///             .cluster_reduce(items, "Summary", |items: &[char], out: &mut Vec<(char, usize)>| {
    ///                 out.push((items[0], items.len()))
    ///             })
    ///             .inspect(move |x| log.lock().unwrap().push(*x));
    ///         (edge_input, item_input)
    ///     });
    ///     items.insert((1, 'b'));
    ///     items.insert((2, 'a'));
    ///     items.insert((3, 'c'));
    ///     edges.insert((1, 2));
    ///     edges.advance_to(1);
    ///     items.advance_to(1);
    ///     edges.remove((1, 2)); // {1, 2} splits
    /// });
    /// let mut out = out.lock().unwrap().clone();
    /// out.sort_by_key(|(d, t, r)| (*t, *d, *r));
    /// assert_eq!(out, vec![
    ///     (('a', 2), 0, 1), (('c', 1), 0, 1),
    ///     (('a', 1), 1, 1), (('a', 2), 1, -1), (('b', 1), 1, 1),
    /// ]);
    /// ```
    fn cluster_reduce<V, O, L>(
        self,
        items: VecCollection<'scope, u64, (N, V), isize>,
        name: &str,
        logic: L,
    ) -> VecCollection<'scope, u64, O, isize>
    where
        V: ExchangeData + Clone + Ord,
        O: ExchangeData + Clone + Ord,
        L: FnMut(&[V], &mut Vec<O>) + 'static;
}

impl<'scope, N> ClusterReduce<'scope, N> for VecCollection<'scope, u64, (N, N), isize>
where
    N: ExchangeData + Clone + Ord + Hash,
{
    fn cluster_reduce<V, O, L>(
        self,
        items: VecCollection<'scope, u64, (N, V), isize>,
        name: &str,
        mut logic: L,
    ) -> VecCollection<'scope, u64, O, isize>
    where
        V: ExchangeData + Clone + Ord,
        O: ExchangeData + Clone + Ord,
        L: FnMut(&[V], &mut Vec<O>) + 'static,
    {
        let changes = self
            // Self-loops connect nothing; one orientation per edge, so that
            // (a, b) and (b, a) consolidate.
            .filter(|(a, b)| a != b)
            .map(|(a, b)| {
                if a <= b {
                    Change::Edge(a, b)
                } else {
                    Change::Edge(b, a)
                }
            })
            .concat(items.map(|(n, v)| Change::Item(n, v)));
        let operator = name.to_string();
        let mut graph: Graph<N, V> = Graph::default();
        let mut pending: TimeStash<Change<N, V>> = TimeStash::default();
        let to_zero = Exchange::new(|_: &(Change<N, V>, u64, isize)| 0u64);
        changes
            .inner
            .unary_frontier::<CapacityContainerBuilder<Vec<(O, u64, isize)>>, _, _, _>(
                to_zero,
                name,
                move |_, _| {
                    move |(input, frontier), output| {
                        input.for_each(|cap, data| pending.stash(data, |t| cap.delayed(t, 0)));
                        while let Some((time, cap, mut updates)) = pending.next_complete(frontier) {
                            consolidate(&mut updates);
                            let mut out = graph.apply(&operator, time, updates, &mut logic);
                            consolidate(&mut out);
                            let mut session = output.session(&cap);
                            session.give_iterator(out.into_iter().map(|(o, r)| (o, time, r)));
                        }
                    }
                },
            )
            .as_collection()
    }
}

/// One node: its items (distinct, positive counts) and its neighbours.
struct NodeState<N, V> {
    cluster: usize,
    items: Vec<(V, isize)>,
    neighbours: Vec<N>,
}

/// The graph: nodes, present edges with their multiplicities, components.
struct Graph<N, V> {
    nodes: HashMap<N, NodeState<N, V>>,
    /// `(lo, hi)` with `lo < hi`, present (positive multiplicity) only.
    edges: HashMap<(N, N), isize>,
    /// Each component's nodes; an empty slot is free.
    clusters: Vec<Vec<N>>,
    free: Vec<usize>,
}

impl<N, V> Default for Graph<N, V> {
    fn default() -> Self {
        Graph {
            nodes: HashMap::new(),
            edges: HashMap::new(),
            clusters: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<N, V> Graph<N, V>
where
    N: Clone + Ord + Hash,
    V: Clone + Ord,
{
    /// Applies one time's consolidated updates; returns the output's changes.
    fn apply<O, L>(
        &mut self,
        operator: &str,
        time: u64,
        updates: Vec<(Change<N, V>, isize)>,
        logic: &mut L,
    ) -> Vec<(O, isize)>
    where
        L: FnMut(&[V], &mut Vec<O>),
    {
        let mut out = Vec::new();
        // 1. Retract the outputs of every component an update touches.
        let mut before = HashSet::new();
        for (change, _) in &updates {
            let (a, b) = match change {
                Change::Edge(a, b) => (a, Some(b)),
                Change::Item(n, _) => (n, None),
            };
            for n in std::iter::once(a).chain(b) {
                if let Some(state) = self.nodes.get(n) {
                    if before.insert(state.cluster) {
                        self.emit(state.cluster, -1, logic, &mut out);
                    }
                }
            }
        }
        // 2. Apply the updates.
        let mut touched = Vec::new();
        let mut lost_edges = Vec::new();
        for (change, r) in updates {
            match change {
                Change::Edge(a, b) => {
                    let key = (a, b);
                    let count = self.edges.get(&key).copied().unwrap_or(0);
                    let now = count + r;
                    assert!(
                        now >= 0,
                        "{operator}: an edge's multiplicity went negative (time {time})"
                    );
                    touched.push(key.0.clone());
                    touched.push(key.1.clone());
                    if now == 0 {
                        self.edges.remove(&key);
                    } else {
                        self.edges.insert(key.clone(), now);
                    }
                    if count == 0 && now > 0 {
                        self.link(&key.0, &key.1);
                    } else if count > 0 && now == 0 {
                        self.unlink(&key.0, &key.1);
                        lost_edges.push(key.0);
                        lost_edges.push(key.1);
                    }
                }
                Change::Item(n, v) => {
                    let state = self.node(&n);
                    match state.items.iter().position(|(w, _)| *w == v) {
                        Some(i) => {
                            state.items[i].1 += r;
                            let c = state.items[i].1;
                            assert!(
                                c >= 0,
                                "{operator}: an item's multiplicity went negative (time {time})"
                            );
                            if c == 0 {
                                state.items.swap_remove(i);
                            }
                        }
                        None => {
                            assert!(
                                r > 0,
                                "{operator}: an item's multiplicity went negative (time {time})"
                            );
                            state.items.push((v, r));
                        }
                    }
                    touched.push(n);
                }
            }
        }
        // 3. Nodes with neither items nor edges leave; components that lost
        // an edge split along what is left.
        touched.sort();
        touched.dedup();
        for n in &touched {
            let gone = self
                .nodes
                .get(n)
                .is_some_and(|s| s.items.is_empty() && s.neighbours.is_empty());
            if !gone {
                // Exactly sized: most nodes hold one or two items and neighbours.
                if let Some(state) = self.nodes.get_mut(n) {
                    state.items.shrink_to_fit();
                    state.neighbours.shrink_to_fit();
                }
            } else {
                let state = self.nodes.remove(n).expect("present");
                let nodes = &mut self.clusters[state.cluster];
                let i = nodes
                    .iter()
                    .position(|m| m == n)
                    .expect("a node is in its component");
                nodes.swap_remove(i);
                if nodes.is_empty() {
                    self.release(state.cluster);
                }
            }
        }
        let mut split: Vec<usize> = lost_edges
            .iter()
            .filter_map(|n| self.nodes.get(n).map(|s| s.cluster))
            .collect();
        split.sort_unstable();
        split.dedup();
        for c in split {
            self.split(c);
        }
        // 4. The outputs of every component holding a touched node.
        let mut after = HashSet::new();
        for n in &touched {
            if let Some(state) = self.nodes.get(n) {
                if after.insert(state.cluster) {
                    self.emit(state.cluster, 1, logic, &mut out);
                }
            }
        }
        for c in after {
            self.clusters[c].shrink_to_fit();
        }
        out
    }

    /// `logic` over component `c`'s items, pushed with `sign`.
    fn emit<O, L>(&self, c: usize, sign: isize, logic: &mut L, out: &mut Vec<(O, isize)>)
    where
        L: FnMut(&[V], &mut Vec<O>),
    {
        let mut items: Vec<V> = self.clusters[c]
            .iter()
            .flat_map(|n| self.nodes[n].items.iter().map(|(v, _)| v.clone()))
            .collect();
        if items.is_empty() {
            return;
        }
        items.sort();
        items.dedup();
        let mut outputs = Vec::new();
        logic(&items, &mut outputs);
        out.extend(outputs.into_iter().map(|o| (o, sign)));
    }

    /// The node's state, created as a component of one if absent.
    fn node(&mut self, n: &N) -> &mut NodeState<N, V> {
        if !self.nodes.contains_key(n) {
            let cluster = self.allocate(vec![n.clone()]);
            self.nodes.insert(
                n.clone(),
                NodeState {
                    cluster,
                    items: Vec::new(),
                    neighbours: Vec::new(),
                },
            );
        }
        self.nodes.get_mut(n).expect("present")
    }

    fn allocate(&mut self, nodes: Vec<N>) -> usize {
        match self.free.pop() {
            Some(c) => {
                self.clusters[c] = nodes;
                c
            }
            None => {
                self.clusters.push(nodes);
                self.clusters.len() - 1
            }
        }
    }

    fn release(&mut self, c: usize) {
        self.clusters[c] = Vec::new();
        self.free.push(c);
    }

    /// A new edge: neighbours both ways; the smaller component joins the larger.
    fn link(&mut self, a: &N, b: &N) {
        self.node(a).neighbours.push(b.clone());
        self.node(b).neighbours.push(a.clone());
        let (ca, cb) = (self.nodes[a].cluster, self.nodes[b].cluster);
        if ca == cb {
            return;
        }
        let (big, small) = if self.clusters[ca].len() >= self.clusters[cb].len() {
            (ca, cb)
        } else {
            (cb, ca)
        };
        let moved = std::mem::take(&mut self.clusters[small]);
        for m in &moved {
            self.nodes.get_mut(m).expect("present").cluster = big;
        }
        self.clusters[big].extend(moved);
        self.release(small);
    }

    /// A lost edge: neighbours both ways (the component is split later).
    fn unlink(&mut self, a: &N, b: &N) {
        for (x, y) in [(a, b), (b, a)] {
            let neighbours = &mut self
                .nodes
                .get_mut(x)
                .expect("an edge's end is a node")
                .neighbours;
            let i = neighbours.iter().position(|m| m == y).expect("a neighbour");
            neighbours.swap_remove(i);
        }
    }

    /// Splits component `c` into its connected parts (the first keeps `c`).
    fn split(&mut self, c: usize) {
        let nodes = std::mem::take(&mut self.clusters[c]);
        let mut seen: HashSet<&N> = HashSet::with_capacity(nodes.len());
        let mut parts: Vec<Vec<N>> = Vec::new();
        for start in &nodes {
            if !seen.insert(start) {
                continue;
            }
            let mut part = vec![start.clone()];
            let mut i = 0;
            while i < part.len() {
                let state = &self.nodes[&part[i]];
                for m in &state.neighbours {
                    let m = self
                        .nodes
                        .get_key_value(m)
                        .expect("a neighbour is a node")
                        .0;
                    if seen.insert(m) {
                        part.push(m.clone());
                    }
                }
                i += 1;
            }
            parts.push(part);
        }
        drop(seen);
        let mut parts = parts.into_iter();
        self.clusters[c] = parts.next().unwrap_or_default();
        for part in parts {
            let id = self.allocate(Vec::new());
            for m in &part {
                self.nodes.get_mut(m).expect("present").cluster = id;
            }
            self.clusters[id] = part;
        }
        if self.clusters[c].is_empty() {
            self.release(c);
        }
    }
}

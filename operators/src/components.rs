//! Incremental connected components of an undirected graph, and the merges
//! and splits of components over time.
//!
//! # Connected components
//!
//! [`ConnectedComponents::connected_components`] maps every node to a
//! *label*: the least node of its component. The graph is a collection of
//! undirected edges `(a, b)` plus, optionally, a collection of nodes (so that
//! nodes without edges are their own component). Insertions and retractions
//! are both handled exactly: retracting an edge that was a component's only
//! link splits it, and each part is labelled by its own least node.
//!
//! [`ConnectedComponents::connected_components_ranked`] generalises the label
//! to the node with the least `(rank, node)`, where ranks are a separate
//! collection `(node, rank)`. Changing a node's rank (retract `(n, old)`,
//! insert `(n, new)`) moves labels without touching the edges. This is how a
//! caller says "the oldest node names the component" when age can change.
//!
//! **Invariant.** At every time `t`, the accumulated output at `t` contains
//! exactly one `(n, l)` for every node `n` that is connected (by edges present
//! at `t`) to at least one ranked node, and `l` is the ranked node of `n`'s
//! component with the least `(rank, node)`. (In the unranked form every node
//! is ranked with `()`.) Nodes connected to no ranked node have no output.
//!
//! The output is not consolidated: within one time it may carry updates
//! that cancel (from the rounds of the iteration). Arrange or `consolidate`
//! it before looking at individual updates.
//!
//! **Preconditions.** Accumulated multiplicities of edges and ranks are never
//! negative; a multiplicity above one means the same as one. A node with
//! several ranks ranks by the least of them.
//!
//! **How.** Label propagation in an iterative scope, as differential's
//! `algorithms::graphs::propagate`: in round `i` every node holds the least
//! label within `i` hops (a `reduce` keeping the minimum, over its own label
//! and its neighbours' labels of round `i - 1`). Differential maintains every
//! round incrementally, so a retraction changes only the labels whose round
//! values change; a component of diameter `d` costs `d + 1` rounds. State: the
//! edges arranged by source (twice per undirected edge) and, per node, the
//! rounds at which its label changed.
//!
//! # Merges and splits
//!
//! [`ComponentChanges::component_changes`] turns the changes of a node → label
//! map (such as the output above) into [`ComponentChange`] records, one
//! logical time at a time. For a time `t`, let `before(X)` be the nodes whose
//! label was `X` just before `t` and `after(X)` those whose label is `X` at `t`.
//! A node *moves* when its label changes (or it appears or disappears).
//! For every label `X` that has moves at `t`:
//!
//! - `stays(X)` ⇔ some node of `before(X)` still has label `X` at `t`;
//! - `sources(X)` = the labels before `t` of the nodes of `after(X)` that
//!   existed before `t` (so `X` itself iff `stays(X)`). When there are two or
//!   more, every `Q ∈ sources(X)`, `Q ≠ X`, gives
//!   `Merged { from: Q, into: X, nodes: |before(Q) ∩ after(X)| }`;
//! - `targets(X)` = the labels at `t` of the nodes of `before(X)` that still
//!   exist at `t` (so `X` itself iff `stays(X)`). When there are two or more,
//!   every `R ∈ targets(X)`, `R ≠ X`, gives
//!   `Split { from: X, into: R, nodes: |before(X) ∩ after(R)| }`.
//!
//! So a merge is two or more earlier components that are one at `t`, and a
//! split is one earlier component that is two or more at `t`; both can happen
//! at the same time. A component whose label changes without either (its
//! least node was removed, or a new least node joined) produces no record:
//! that change is visible in the node → label map itself. Records are
//! inserted at `t` with multiplicity `+1` and never retracted; they are the
//! same for any number of workers.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use differential_dataflow::hashable::Hashable;
use differential_dataflow::lattice::Lattice;
use differential_dataflow::operators::iterate::Variable;
use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
use differential_dataflow::ExchangeData;
use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::order::Product;
use timely::progress::Timestamp;

/// Adds connected components to a collection of undirected edges `(a, b)`.
pub trait ConnectedComponents<'scope, T: Timestamp, N> {
    /// Labels every node with the least node of its component.
    ///
    /// The nodes are the endpoints of the edges plus the records of `nodes`
    /// (pass an empty collection when every node of interest has an edge).
    /// See the [module docs](self) for the invariant and preconditions.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use differential_dataflow::input::Input;
    /// use weft_operators::components::ConnectedComponents;
    ///
    /// let out = Arc::new(Mutex::new(Vec::new()));
    /// let log = out.clone();
    /// timely::execute_directly(move |worker| {
    ///     let (mut edges, mut nodes) = worker.dataflow::<u64, _, _>(|scope| {
    ///         let (edge_input, edges) = scope.new_collection::<(u32, u32), isize>();
    ///         let (node_input, nodes) = scope.new_collection::<u32, isize>();
    ///         edges
    ///             .connected_components(nodes)
    ///             .consolidate()
    ///             .inspect(move |x| log.lock().unwrap().push(x.clone()));
    ///         (edge_input, node_input)
    ///     });
    ///     edges.insert((1, 2));
    ///     edges.insert((2, 3));
    ///     nodes.insert(7);
    ///     edges.advance_to(1);
    ///     nodes.advance_to(1);
    ///     // Splits {1, 2, 3}: {2, 3} is now named 2, and 1, with no edge
    ///     // left and not in `nodes`, is no longer a node.
    ///     edges.remove((1, 2));
    /// });
    /// let mut out = out.lock().unwrap().clone();
    /// out.sort_by_key(|(d, t, r)| (*t, *d, *r));
    /// assert_eq!(out, vec![
    ///     ((1, 1), 0, 1), ((2, 1), 0, 1), ((3, 1), 0, 1), ((7, 7), 0, 1),
    ///     ((1, 1), 1, -1), ((2, 1), 1, -1), ((2, 2), 1, 1), ((3, 1), 1, -1), ((3, 2), 1, 1),
    /// ]);
    /// ```
    fn connected_components(
        self,
        nodes: VecCollection<'scope, T, N, isize>,
    ) -> VecCollection<'scope, T, (N, N), isize>;

    /// Labels every node connected to a ranked node with the ranked node of
    /// its component that has the least `(rank, node)`.
    ///
    /// `ranks` holds `(node, rank)`; ranked nodes without edges are their own
    /// component. See the [module docs](self) for the invariant.
    ///
    /// ```
    /// use differential_dataflow::input::Input;
    /// use weft_operators::components::ConnectedComponents;
    ///
    /// timely::example(|scope| {
    ///     // Node 9 is the oldest (rank 1), so it names the component.
    ///     let (_e, edges) = scope.new_collection_from(vec![(1u32, 2u32), (2, 9)]);
    ///     let (_r, ranks) = scope.new_collection_from(vec![(1u32, 5i64), (2, 7), (9, 1)]);
    ///     edges
    ///         .connected_components_ranked(ranks)
    ///         .consolidate()
    ///         .inspect(|((_, label), _, _)| assert_eq!(*label, 9));
    /// });
    /// ```
    fn connected_components_ranked<K>(
        self,
        ranks: VecCollection<'scope, T, (N, K), isize>,
    ) -> VecCollection<'scope, T, (N, N), isize>
    where
        K: ExchangeData + Ord + Hash;
}

impl<'scope, T, N> ConnectedComponents<'scope, T, N> for VecCollection<'scope, T, (N, N), isize>
where
    T: Timestamp + Lattice + Ord,
    N: ExchangeData + Ord + Hash,
{
    fn connected_components(
        self,
        nodes: VecCollection<'scope, T, N, isize>,
    ) -> VecCollection<'scope, T, (N, N), isize> {
        let endpoints = self.clone().flat_map(|(a, b)| [a, b]);
        let ranks = nodes.concat(endpoints).map(|n| (n, ()));
        self.connected_components_ranked(ranks)
    }

    fn connected_components_ranked<K>(
        self,
        ranks: VecCollection<'scope, T, (N, K), isize>,
    ) -> VecCollection<'scope, T, (N, N), isize>
    where
        K: ExchangeData + Ord + Hash,
    {
        // STEP 1. Both directions of every edge, arranged by source.
        let reversed = self.clone().map(|(a, b)| (b, a));
        let edges = self
            .concat(reversed)
            .arrange_by_key_named("ComponentsEdges");
        // STEP 2. Every ranked node proposes itself: label (rank, node).
        let own = ranks.map(|(n, k)| (n.clone(), (k, n)));

        // STEP 3. Rounds of "least label within i hops", until nothing changes.
        let outer = own.scope();
        outer.scoped::<Product<T, u32>, _, _>("Components", |inner| {
            let edges = edges.enter(inner);
            let own = own.enter(inner);
            let (proposals_var, proposals) =
                Variable::new(inner, Product::new(Default::default(), 1u32));
            let labels = proposals
                .concat(own)
                .reduce_abelian::<_, ValBuilder<_, _, _, _>, ValSpine<N, (K, N), _, isize>>(
                    "ComponentsLeast",
                    |_node, input, output| {
                        // Values arrive sorted: the first with a positive count is the least label.
                        if let Some((label, _)) = input.iter().find(|(_, r)| *r > 0) {
                            output.push(((*label).clone(), 1));
                        }
                    },
                );
            let proposed = labels
                .clone()
                .join_core(edges, |_node, label: &(K, N), neighbour: &N| {
                    Some((neighbour.clone(), label.clone()))
                });
            proposals_var.set(proposed);
            labels
                .as_collection(|node: &N, label: &(K, N)| (node.clone(), label.1.clone()))
                .leave(outer)
        })
    }
}

/// What happened between components at one time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ChangeKind {
    /// Component `from` became part of component `into`.
    Merged,
    /// Part of component `from` became component `into`.
    Split,
}

/// A merge or split of components, as defined in the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ComponentChange<N> {
    /// Merge or split.
    pub kind: ChangeKind,
    /// The label before (the absorbed component of a merge, the divided component of a split).
    pub from: N,
    /// The label after (the absorbing component of a merge, the new part of a split).
    pub into: N,
    /// How many nodes moved from `from` to `into`.
    pub nodes: u64,
}

/// Adds [`ComponentChanges::component_changes`] to a node → label collection.
pub trait ComponentChanges<'scope, N> {
    /// Derives merge and split records from the changes of a node → label map.
    ///
    /// The input must hold at most one label per node at every time (as the
    /// output of [`ConnectedComponents`] does), with multiplicity one. Each
    /// time is processed once complete, in time order. State: one count per
    /// label, at the worker owning the label.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use differential_dataflow::input::Input;
    /// use weft_operators::components::{ChangeKind, ComponentChange, ComponentChanges, ConnectedComponents};
    ///
    /// let out = Arc::new(Mutex::new(Vec::new()));
    /// let log = out.clone();
    /// timely::execute_directly(move |worker| {
    ///     let mut edges = worker.dataflow::<u64, _, _>(|scope| {
    ///         let (input, edges) = scope.new_collection::<(u32, u32), isize>();
    ///         let (_, nodes) = scope.new_collection::<u32, isize>();
    ///         edges
    ///             .connected_components(nodes)
    ///             .component_changes("Changes")
    ///             .inspect(move |(c, t, _)| log.lock().unwrap().push((c.clone(), *t)));
    ///         input
    ///     });
    ///     edges.insert((1, 2));
    ///     edges.insert((3, 4));
    ///     edges.advance_to(1);
    ///     edges.insert((2, 3)); // {1,2} and {3,4} merge into 1
    ///     edges.advance_to(2);
    ///     edges.remove((2, 3)); // and split again
    /// });
    /// let out = out.lock().unwrap().clone();
    /// assert_eq!(out, vec![
    ///     (ComponentChange { kind: ChangeKind::Merged, from: 3, into: 1, nodes: 2 }, 1),
    ///     (ComponentChange { kind: ChangeKind::Split, from: 1, into: 3, nodes: 2 }, 2),
    /// ]);
    /// ```
    fn component_changes(self, name: &str)
        -> VecCollection<'scope, u64, ComponentChange<N>, isize>;
}

/// Updates of one logical time waiting for it to complete, with a capability to send at it.
type Pending<D> = (Capability<u64>, Vec<(D, isize)>);

/// One node's label change at one time: `(from, to)`; `None` = absent.
type Move<N> = (Option<N>, Option<N>);

/// A move as seen by the worker owning one of its labels: `(label, outgoing?, other label)`.
type Flow<N> = (N, bool, Option<N>);

impl<'scope, N> ComponentChanges<'scope, N> for VecCollection<'scope, u64, (N, N), isize>
where
    N: ExchangeData + Ord + Hash,
{
    fn component_changes(
        self,
        name: &str,
    ) -> VecCollection<'scope, u64, ComponentChange<N>, isize> {
        // STEP 1. At the worker owning each node: consolidate its label changes
        // per completed time into a move, and send it to both labels' workers.
        let by_node = Exchange::new(|((n, _), _t, _r): &((N, N), u64, isize)| n.hashed());
        let flows = self
            .inner
            .unary_frontier::<CapacityContainerBuilder<Vec<(Flow<N>, u64, isize)>>, _, _, _>(
                by_node,
                &format!("{name}Moves"),
                |_cap, _info| {
                    let mut stash: BTreeMap<u64, Pending<(N, N)>> = BTreeMap::new();
                    move |(input, frontier), output| {
                        let port = output.output_index();
                        input.for_each(|cap, data| {
                            for (d, t, r) in data.drain(..) {
                                stash
                                    .entry(t)
                                    .or_insert_with(|| (cap.delayed(&t, port), Vec::new()))
                                    .1
                                    .push((d, r));
                            }
                        });
                        while let Some(entry) = stash.first_entry() {
                            if frontier.less_equal(entry.key()) {
                                break;
                            }
                            let (t, (cap, mut updates)) = entry.remove_entry();
                            differential_dataflow::consolidation::consolidate(&mut updates);
                            let mut moves: BTreeMap<N, Move<N>> = BTreeMap::new();
                            for ((node, label), r) in updates {
                                let m = moves.entry(node).or_insert((None, None));
                                if r < 0 {
                                    m.0 = Some(label);
                                } else {
                                    m.1 = Some(label);
                                }
                            }
                            let mut session = output.session(&cap);
                            for (_node, (from, to)) in moves {
                                if let Some(f) = &from {
                                    session.give(((f.clone(), true, to.clone()), t, 1));
                                }
                                if let Some(x) = to {
                                    session.give(((x, false, from), t, 1));
                                }
                            }
                        }
                    }
                },
            );

        // STEP 2. At the worker owning each label: compare the label's flows
        // with its size before the time; emit merges and splits.
        let by_label = Exchange::new(|((x, _, _), _t, _r): &(Flow<N>, u64, isize)| x.hashed());
        flows
            .unary_frontier::<CapacityContainerBuilder<Vec<(ComponentChange<N>, u64, isize)>>, _, _, _>(
                by_label,
                name,
                |_cap, _info| {
                    let mut stash: BTreeMap<u64, (Capability<u64>, Vec<Flow<N>>)> = BTreeMap::new();
                    let mut sizes: HashMap<N, u64> = HashMap::new();
                    move |(input, frontier), output| {
                        let port = output.output_index();
                        input.for_each(|cap, data| {
                            for (f, t, _r) in data.drain(..) {
                                stash.entry(t).or_insert_with(|| (cap.delayed(&t, port), Vec::new())).1.push(f);
                            }
                        });
                        while let Some(entry) = stash.first_entry() {
                            if frontier.less_equal(entry.key()) {
                                break;
                            }
                            let (t, (cap, flows)) = entry.remove_entry();
                            // label → (other label → count), separately for outgoing and incoming.
                            let mut outgoing: BTreeMap<N, BTreeMap<Option<N>, u64>> = BTreeMap::new();
                            let mut incoming: BTreeMap<N, BTreeMap<Option<N>, u64>> = BTreeMap::new();
                            for (x, out, other) in flows {
                                let side = if out { &mut outgoing } else { &mut incoming };
                                *side.entry(x).or_default().entry(other).or_default() += 1;
                            }
                            let mut labels: Vec<&N> = outgoing.keys().chain(incoming.keys()).collect();
                            labels.sort();
                            labels.dedup();
                            let mut session = output.session(&cap);
                            let empty = BTreeMap::new();
                            for x in labels {
                                let outs = outgoing.get(x).unwrap_or(&empty);
                                let ins = incoming.get(x).unwrap_or(&empty);
                                let before = sizes.get(x).copied().unwrap_or(0);
                                let left: u64 = outs.values().sum();
                                let stays = before > left;
                                let targets = outs.keys().filter(|k| k.is_some()).count() + usize::from(stays);
                                if targets >= 2 {
                                    for (to, n) in outs {
                                        if let Some(to) = to {
                                            let c = ComponentChange { kind: ChangeKind::Split, from: x.clone(), into: to.clone(), nodes: *n };
                                            session.give((c, t, 1));
                                        }
                                    }
                                }
                                let sources = ins.keys().filter(|k| k.is_some()).count() + usize::from(stays);
                                if sources >= 2 {
                                    for (from, n) in ins {
                                        if let Some(from) = from {
                                            let c = ComponentChange { kind: ChangeKind::Merged, from: from.clone(), into: x.clone(), nodes: *n };
                                            session.give((c, t, 1));
                                        }
                                    }
                                }
                                let after = before.saturating_sub(left) + ins.values().sum::<u64>();
                                if after == 0 {
                                    sizes.remove(x);
                                } else {
                                    sizes.insert(x.clone(), after);
                                }
                            }
                        }
                    }
                },
            )
            .as_collection()
    }
}

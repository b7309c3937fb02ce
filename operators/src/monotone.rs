//! The least value per key of an insert-only collection, in O(1) state per key.
//!
//! A differential `reduce` that keeps the minimum must arrange its whole
//! input: a retraction of the minimum has to reveal the next value. When the
//! input is known to be insert-only (a *monotone* collection: every update,
//! consolidated per time, has a positive diff), the minimum only ever moves
//! down and one value per key is enough. Materialize plans insert-only
//! inputs the same way (its monotonic top-k and reductions).
//!
//! ```text
//!  (k, v) +1 at t ──► [ exchange by k ] ──► min(k) so far ──► (k, old) -1, (k, v) +1 at t   (when v < old)
//! ```
//!
//! Invariants:
//! - the output is the collection `{(k, min v) : k seen}` at every time: the
//!   same as a `reduce` that keeps the least value with a positive count,
//!   as long as the input is insert-only;
//! - updates are applied one completed time at a time, in time order (held
//!   with a capability until the frontier has passed their time), so the
//!   output does not depend on batching or on the number of workers;
//! - memory: one `(K, V)` per key (a hash map), plus the updates of
//!   times the frontier has not passed yet;
//! - a retraction (a negative diff after consolidating a time) breaks the
//!   contract: the operator panics with the operator's name, since the
//!   minimum it would have to reveal is gone. Callers choose this operator
//!   only for inputs that cannot retract.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use differential_dataflow::consolidation::consolidate;
use differential_dataflow::hashable::Hashable;
use differential_dataflow::{AsCollection, VecCollection};

use crate::by_time::{apply_completed_times, TimeStash};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::ExchangeData;

/// Adds [`MonotoneMin::monotone_min`] to collections of `(key, value)`.
pub trait MonotoneMin<'scope, K, V> {
    /// `(key, least value)` for each key of an insert-only collection
    /// (see the module docs).
    ///
    /// ```
    /// use differential_dataflow::input::Input;
    /// use weft_operators::monotone::MonotoneMin;
    /// use std::sync::{Arc, Mutex};
    ///
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let log = seen.clone();
    /// timely::execute_directly(move |worker| {
    ///     let mut input = worker.dataflow::<u64, _, _>(|scope| {
    ///         let (input, coll) = scope.new_collection::<(char, i64), isize>();
    ///         coll.monotone_min("Min")
    ///             .inspect(move |x| log.lock().unwrap().push(*x));
    ///         input
    ///     });
    ///     input.insert(('a', 5));
    ///     input.advance_to(1);
    ///     input.insert(('a', 7)); // not less: no change
    ///     input.insert(('a', 3));
    /// });
    /// let mut seen = seen.lock().unwrap().clone();
    /// seen.sort();
    /// assert_eq!(seen, vec![(('a', 3), 1, 1), (('a', 5), 0, 1), (('a', 5), 1, -1)]);
    /// ```
    fn monotone_min(self, name: &str) -> VecCollection<'scope, u64, (K, V), isize>;
}

impl<'scope, K, V> MonotoneMin<'scope, K, V> for VecCollection<'scope, u64, (K, V), isize>
where
    K: ExchangeData + Clone + Hash + Eq + Ord,
    V: ExchangeData + Clone + Ord,
{
    fn monotone_min(self, name: &str) -> VecCollection<'scope, u64, (K, V), isize> {
        let operator = name.to_string();
        let mut least: HashMap<K, V> = HashMap::new();
        let route = |(k, _): &(K, V)| k.hashed();
        apply_completed_times(self.inner, name, route, move |time, updates, out| {
            for ((k, v), r) in updates {
                assert!(
                    r > 0,
                    "{operator}: a retraction reached an insert-only minimum (time {time})"
                );
                match least.get_mut(&k) {
                    None => {
                        out.push(((k.clone(), v.clone()), 1));
                        least.insert(k, v);
                    }
                    Some(old) if v < *old => {
                        let was = std::mem::replace(old, v.clone());
                        out.push(((k.clone(), was), -1));
                        out.push(((k, v), 1));
                    }
                    Some(_) => {}
                }
            }
        })
        .as_collection()
    }
}

/// Adds [`MonotoneFirst::monotone_first`] to collections of `(key, value)`.
pub trait MonotoneFirst<'scope, K, V> {
    /// `(key, value)` for each key of an insert-only collection, the value
    /// being the least of the key's first time; later values of the key are
    /// dropped. For keys whose values are all equal (a hash and what it
    /// hashes) this is [`MonotoneMin::monotone_min`] in a set of keys, not a
    /// map: the value is never kept, only passed on (to an arrangement that
    /// holds it anyway). Applied one completed time at a time, in time
    /// order, as in the module docs; panics on a retraction.
    ///
    /// ```
    /// use differential_dataflow::input::Input;
    /// use weft_operators::monotone::MonotoneFirst;
    /// use std::sync::{Arc, Mutex};
    ///
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let log = seen.clone();
    /// timely::execute_directly(move |worker| {
    ///     let mut input = worker.dataflow::<u64, _, _>(|scope| {
    ///         let (input, coll) = scope.new_collection::<(char, i64), isize>();
    ///         coll.monotone_first("First")
    ///             .inspect(move |x| log.lock().unwrap().push(*x));
    ///         input
    ///     });
    ///     input.insert(('a', 5));
    ///     input.insert(('a', 4));
    ///     input.advance_to(1);
    ///     input.insert(('a', 3)); // a later time: dropped
    /// });
    /// assert_eq!(*seen.lock().unwrap(), vec![(('a', 4), 0, 1)]);
    /// ```
    fn monotone_first(self, name: &str) -> VecCollection<'scope, u64, (K, V), isize>;
}

impl<'scope, K, V> MonotoneFirst<'scope, K, V> for VecCollection<'scope, u64, (K, V), isize>
where
    K: ExchangeData + Clone + Hash + Eq + Ord,
    V: ExchangeData + Clone + Ord,
{
    fn monotone_first(self, name: &str) -> VecCollection<'scope, u64, (K, V), isize> {
        let operator = name.to_string();
        let mut seen: HashSet<K> = HashSet::new();
        let route = |(k, _): &(K, V)| k.hashed();
        // Consolidated, so sorted by (key, value): a key's first is its least.
        apply_completed_times(self.inner, name, route, move |time, updates, out| {
            for ((k, v), r) in updates {
                assert!(
                    r > 0,
                    "{operator}: a retraction reached an insert-only first value (time {time})"
                );
                if !seen.contains(&k) {
                    seen.insert(k.clone());
                    out.push(((k, v), 1));
                }
            }
        })
        .as_collection()
    }
}

/// Adds [`MonotoneUndominated::monotone_undominated`] to collections of
/// `(key, value)`.
pub trait MonotoneUndominated<'scope, K, V> {
    /// `(key, value)` for each value of an insert-only collection that no
    /// other value of its key dominates: the generalisation of
    /// [`MonotoneMin`] to a partial order. `dominates(u, v)` says that `v`
    /// is never needed while `u` is present; it must be a preorder
    /// (reflexive: of equal values one is kept, once). Per key the state is
    /// the undominated values (the Pareto frontier), applied one completed
    /// time at a time as in the module docs; a new value that an earlier one
    /// dominates is dropped, and the values a new one dominates are
    /// retracted at its time. Panics on a retraction.
    ///
    /// ```
    /// use differential_dataflow::input::Input;
    /// use weft_operators::monotone::MonotoneUndominated;
    /// use std::sync::{Arc, Mutex};
    ///
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let log = seen.clone();
    /// timely::execute_directly(move |worker| {
    ///     let mut input = worker.dataflow::<u64, _, _>(|scope| {
    ///         // (expires, value): a larger value that expires later dominates.
    ///         let (input, coll) = scope.new_collection::<(char, (u64, i64)), isize>();
    ///         coll.monotone_undominated("Max", |u: &(u64, i64), v: &(u64, i64)| u.0 >= v.0 && u.1 >= v.1)
    ///             .inspect(move |x| log.lock().unwrap().push(*x));
    ///         input
    ///     });
    ///     input.insert(('a', (10, 5)));
    ///     input.insert(('a', (5, 3))); // dominated by (10, 5): dropped
    ///     input.advance_to(1);
    ///     input.insert(('a', (20, 1))); // expires later: kept
    ///     input.insert(('a', (15, 7))); // dominates (10, 5)
    /// });
    /// let mut seen = seen.lock().unwrap().clone();
    /// seen.sort();
    /// assert_eq!(seen, vec![
    ///     (('a', (10, 5)), 0, 1), (('a', (10, 5)), 1, -1),
    ///     (('a', (15, 7)), 1, 1), (('a', (20, 1)), 1, 1),
    /// ]);
    /// ```
    fn monotone_undominated<D>(
        self,
        name: &str,
        dominates: D,
    ) -> VecCollection<'scope, u64, (K, V), isize>
    where
        D: Fn(&V, &V) -> bool + 'static;
}

impl<'scope, K, V> MonotoneUndominated<'scope, K, V> for VecCollection<'scope, u64, (K, V), isize>
where
    K: ExchangeData + Clone + Hash + Eq + Ord,
    V: ExchangeData + Clone + Ord,
{
    fn monotone_undominated<D>(
        self,
        name: &str,
        dominates: D,
    ) -> VecCollection<'scope, u64, (K, V), isize>
    where
        D: Fn(&V, &V) -> bool + 'static,
    {
        let operator = name.to_string();
        let mut kept: HashMap<K, Vec<V>> = HashMap::new();
        let mut pending: TimeStash<(K, V)> = TimeStash::default();
        let by_key = Exchange::new(|((k, _), _t, _r): &((K, V), u64, isize)| k.hashed());
        self.inner
            .unary_frontier::<CapacityContainerBuilder<Vec<((K, V), u64, isize)>>, _, _, _>(
                by_key,
                name,
                move |_, _| {
                    move |(input, frontier), output| {
                        input.for_each(|cap, data| pending.stash(data, |t| cap.delayed(t, 0)));
                        while let Some((time, cap, mut updates)) = pending.next_complete(frontier) {
                            consolidate(&mut updates);
                            // Net changes of this time, per key, consolidated before sending.
                            let mut changes: Vec<((K, V), isize)> = Vec::new();
                            for ((k, v), r) in updates {
                                assert!(
                                    r > 0,
                                    "{operator}: a retraction reached an insert-only frontier (time {time})"
                                );
                                let frontier_of = kept.entry(k.clone()).or_default();
                                if frontier_of.iter().any(|u| dominates(u, &v)) {
                                    continue;
                                }
                                frontier_of.retain(|u| {
                                    let gone = dominates(&v, u);
                                    if gone {
                                        changes.push(((k.clone(), u.clone()), -1));
                                    }
                                    !gone
                                });
                                frontier_of.push(v.clone());
                                changes.push(((k, v), 1));
                            }
                            // A value added and dominated within one time cancels.
                            consolidate(&mut changes);
                            let mut session = output.session(&cap);
                            for (d, r) in changes {
                                session.give((d, time, r));
                            }
                        }
                    }
                },
            )
            .as_collection()
    }
}

/// Per end `(node, group)`, the items it keeps, sorted by `(rank, item)`.
type KeptByEnd<N, G, R, E> = HashMap<(N, G), Box<[(R, E)]>>;

/// Adds [`MonotoneLimits::monotone_limits`] to collections of `(item, rank)`.
pub trait MonotoneLimits<'scope, E, R> {
    /// The items that every one of their *ends* keeps, with their rank.
    ///
    /// Each item has up to two ends, `ends(item)`: a node and a group, or
    /// `None` for an end that keeps everything. The items sharing an end
    /// `(n, g)` compete for `limit(g)` places: the end keeps its `limit(g)`
    /// least items by `(rank, item)`. An item is in the output, with its
    /// rank, while each of its ends keeps it. (Identity's per-identifier
    /// limits: an edge is a candidate while both its identifiers keep it
    /// among their earliest edges to the other's kind.)
    ///
    /// The input is a *monotone* ranking, as [`MonotoneMin::monotone_min`]
    /// produces: an item, once present, stays, with one rank at a time, and
    /// its rank only moves down (consolidated per time, `+(e, r)` for a new
    /// item, `-(e, old) +(e, new)` with `new < old` for a move). Then an
    /// item an end does not keep can only return by a move of its own, and
    /// each end's state is the items it keeps, at most `limit(g)` of them:
    /// a `reduce` per end and a threshold per item would arrange every
    /// item and end instead. Applied one completed time at a time, in time
    /// order, on worker 0 (an item's two ends are decided together); panics
    /// with the operator's name when the input breaks the contract.
    ///
    /// ```
    /// use differential_dataflow::input::Input;
    /// use weft_operators::monotone::MonotoneLimits;
    /// use std::sync::{Arc, Mutex};
    ///
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let log = seen.clone();
    /// timely::execute_directly(move |worker| {
    ///     let mut input = worker.dataflow::<u64, _, _>(|scope| {
    ///         // Items (a, b): an edge between nodes a and b, each keeping one.
    ///         let (input, coll) = scope.new_collection::<((char, char), i64), isize>();
    ///         coll.monotone_limits("Limits", |&(a, b): &(char, char)| [Some((a, ())), Some((b, ()))], |_| 1)
    ///             .inspect(move |x| log.lock().unwrap().push(*x));
    ///         input
    ///     });
    ///     input.insert((('a', 'b'), 5));
    ///     input.insert((('a', 'c'), 7)); // a keeps (a, b)
    ///     input.advance_to(1);
    ///     input.remove((('a', 'c'), 7));
    ///     input.insert((('a', 'c'), 3)); // now (a, c) ranks first at a
    /// });
    /// let mut seen = seen.lock().unwrap().clone();
    /// seen.sort();
    /// assert_eq!(seen, vec![
    ///     ((('a', 'b'), 5), 0, 1), ((('a', 'b'), 5), 1, -1), ((('a', 'c'), 3), 1, 1),
    /// ]);
    /// ```
    fn monotone_limits<N, G, F, L>(
        self,
        name: &str,
        ends: F,
        limit: L,
    ) -> VecCollection<'scope, u64, (E, R), isize>
    where
        N: Clone + Hash + Eq + 'static,
        G: Clone + Hash + Eq + 'static,
        F: Fn(&E) -> [Option<(N, G)>; 2] + 'static,
        L: Fn(&G) -> usize + 'static;
}

impl<'scope, E, R> MonotoneLimits<'scope, E, R> for VecCollection<'scope, u64, (E, R), isize>
where
    E: ExchangeData + Clone + Ord,
    R: ExchangeData + Clone + Ord,
{
    fn monotone_limits<N, G, F, L>(
        self,
        name: &str,
        ends: F,
        limit: L,
    ) -> VecCollection<'scope, u64, (E, R), isize>
    where
        N: Clone + Hash + Eq + 'static,
        G: Clone + Hash + Eq + 'static,
        F: Fn(&E) -> [Option<(N, G)>; 2] + 'static,
        L: Fn(&G) -> usize + 'static,
    {
        let operator = name.to_string();
        // Per end, the items it keeps, sorted by (rank, item).
        // (Boxed slices, exactly sized: a hash-map entry 8 bytes smaller than
        // with a vector, and most ends keep one or two items.)
        let mut kept: KeptByEnd<N, G, R, E> = HashMap::new();
        // The distinct ends of an item that limit it.
        let ends_of = move |e: &E| {
            let [a, b] = ends(e);
            let b = b.filter(|b| a.as_ref() != Some(b));
            a.into_iter().chain(b)
        };
        let keeps = |kept: &KeptByEnd<N, G, R, E>, end: &(N, G), r: &R, e: &E| {
            kept.get(end).is_some_and(|list| {
                list.binary_search_by(|(lr, le)| (lr, le).cmp(&(r, e)))
                    .is_ok()
            })
        };
        apply_completed_times(
            self.inner,
            name,
            |_| 0,
            move |time, updates, out| {
                // One move per item: consolidated, so sorted by (item, rank),
                // a move's new (lesser) rank first.
                let mut moves: Vec<(E, Option<R>, R)> = Vec::new();
                let mut updates = updates.into_iter().peekable();
                while let Some(((e, r), d)) = updates.next() {
                    let (old, new) = match updates.peek() {
                        Some(((e2, r2), d2)) if *e2 == e => {
                            let (old, od) = (r2.clone(), *d2);
                            updates.next();
                            assert!(
                                d == 1
                                    && od == -1
                                    && updates.peek().is_none_or(|((e3, _), _)| *e3 != e),
                                "{operator}: an item's rank moved other than down (time {time})"
                            );
                            (Some(old), r)
                        }
                        _ => {
                            assert!(
                                d == 1,
                                "{operator}: an item was retracted or repeated (time {time})"
                            );
                            (None, r)
                        }
                    };
                    if ends_of(&e).next().is_none() {
                        // Kept by every end: passed on as it comes.
                        if let Some(old) = old {
                            out.push(((e.clone(), old), -1));
                        }
                        out.push(((e, new), 1));
                    } else {
                        moves.push((e, old, new));
                    }
                }
                if moves.is_empty() {
                    return;
                }
                // Only items of the ends a move touches can change status.
                let touched: HashSet<(N, G)> =
                    moves.iter().flat_map(|(e, ..)| ends_of(e)).collect();
                let status = |kept: &KeptByEnd<N, G, R, E>, sign: isize, out: &mut Vec<_>| {
                    for end in &touched {
                        for (r, e) in kept.get(end).into_iter().flatten() {
                            if ends_of(e).all(|end| keeps(kept, &end, r, e)) {
                                out.push(((e.clone(), r.clone()), sign));
                            }
                        }
                    }
                };
                let mut before = Vec::new();
                status(&kept, -1, &mut before);
                for (e, old, new) in moves {
                    for end in ends_of(&e) {
                        let room = limit(&end.1);
                        let held = kept.entry(end).or_default();
                        let mut list = std::mem::take(held).into_vec();
                        if let Some(old) = &old {
                            if let Ok(i) =
                                list.binary_search_by(|(lr, le)| (lr, le).cmp(&(old, &e)))
                            {
                                list.remove(i);
                            }
                        }
                        let at = list
                            .binary_search_by(|(lr, le)| (lr, le).cmp(&(&new, &e)))
                            .unwrap_or_else(|i| i);
                        if at < room {
                            list.insert(at, (new.clone(), e.clone()));
                            list.truncate(room);
                        }
                        *held = list.into_boxed_slice();
                    }
                }
                let mut after = Vec::new();
                status(&kept, 1, &mut after);
                // An item with two touched ends was seen twice: once each way.
                before.sort();
                before.dedup();
                after.sort();
                after.dedup();
                for end in &touched {
                    if kept.get(end).is_some_and(|l| l.is_empty()) {
                        kept.remove(end);
                    }
                }
                // Kept before and after: no change. (Items kept by every end
                // are not among these.)
                before.extend(after);
                consolidate(&mut before);
                out.extend(before);
            },
        )
        .as_collection()
    }
}

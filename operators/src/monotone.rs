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

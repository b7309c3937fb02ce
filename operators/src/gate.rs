//! A gate: drops records that a time-varying set of rules bars *at the
//! record's own time*, and never revisits a decision.
//!
//! `records.gate(name, rules, keys, barred)` passes a record `d` inserted at
//! time `t` unless some key `k` in `keys(&d)` has a rule `v` in the
//! accumulated `rules` collection **as of `t`** (every rule update at a time
//! `≤ t`) with `barred(&v, t)`. Retractions of records are judged the same
//! way at their own time, so a record passed at `t` and retracted at `t'`
//! passes its retraction only if the rules at `t'` do not bar it.
//!
//! This is *not* a differential semijoin: a rule that appears later does not
//! reach back to records already judged (a semijoin would retract them). That
//! is what suppression needs — "drop the identity's events from now on" — and
//! it makes the gate cheap: the records are never stored, only the rules.
//!
//! Rules are broadcast to every worker (the rule set is meant to be small);
//! records stay on the worker that holds them. Each worker judges times in
//! increasing order, once both inputs have passed them.
//!
//! ```
//! use differential_dataflow::input::Input;
//! use differential_dataflow::AsCollection;
//! use timely::dataflow::operators::Capture;
//! use timely::dataflow::operators::capture::Extract;
//! use weft_operators::gate::Gate;
//!
//! let out = timely::execute_directly(|worker| {
//!     let (mut records, mut rules, captured) = worker.dataflow::<u64, _, _>(|scope| {
//!         // Records (person, n); a rule (person, from) bars the person's records after `from`.
//!         let (records_in, records) = scope.new_collection::<(char, u32), isize>();
//!         let (rules_in, rules) = scope.new_collection::<(char, u64), isize>();
//!         let passed = records.gate("Gate", rules, |d: &(char, u32)| [d.0], |from: &u64, t| t > *from);
//!         (records_in, rules_in, passed.inner.capture())
//!     });
//!     records.insert(('a', 1));
//!     rules.insert(('a', 1));
//!     records.advance_to(1); rules.advance_to(1);
//!     records.insert(('a', 2));   // t = 1: not after `from`, passes
//!     records.advance_to(2); rules.advance_to(2);
//!     records.insert(('a', 3));   // t = 2: barred
//!     records.insert(('b', 4));   // no rule for bob
//!     records.close(); rules.close();
//!     while worker.step() {}
//!     captured
//! });
//! let mut got: Vec<_> = out.extract().into_iter().flat_map(|(_, v)| v).map(|(d, _, _)| d.1).collect();
//! got.sort();
//! assert_eq!(got, vec![1, 2, 4]);
//! ```

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use differential_dataflow::consolidation::consolidate;
use differential_dataflow::{AsCollection, VecCollection};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::Capability;
use timely::ExchangeData;

/// Rule changes of one time.
type RuleUpdates<K, V> = Vec<((K, V), isize)>;
/// Adds [`Gate::gate`] to collections.
pub trait Gate<'s, D> {
    /// Passes the records no rule bars at their own time (see the module docs).
    ///
    /// `keys` lists a record's keys; `barred(rule, t)` says whether `rule`
    /// bars a record of its key at time `t`.
    fn gate<K, V, I, F, P>(
        self,
        name: &str,
        rules: VecCollection<'s, u64, (K, V), isize>,
        keys: F,
        barred: P,
    ) -> VecCollection<'s, u64, D, isize>
    where
        K: ExchangeData + Clone + Hash + Eq,
        V: ExchangeData + Clone + Ord,
        I: IntoIterator<Item = K>,
        F: Fn(&D) -> I + 'static,
        P: Fn(&V, u64) -> bool + 'static;
}

/// Records of one time waiting for it to complete, with a capability to send at it.
type Pending<D> = (Capability<u64>, Vec<(D, isize)>);

impl<'s, D: ExchangeData + Clone> Gate<'s, D> for VecCollection<'s, u64, D, isize> {
    fn gate<K, V, I, F, P>(
        self,
        name: &str,
        rules: VecCollection<'s, u64, (K, V), isize>,
        keys: F,
        barred: P,
    ) -> VecCollection<'s, u64, D, isize>
    where
        K: ExchangeData + Clone + Hash + Eq,
        V: ExchangeData + Clone + Ord,
        I: IntoIterator<Item = K>,
        F: Fn(&D) -> I + 'static,
        P: Fn(&V, u64) -> bool + 'static,
    {
        let rules = rules.inner.broadcast();
        self.inner
            .binary_frontier::<_, CapacityContainerBuilder<Vec<(D, u64, isize)>>, _, _, _, _>(
                rules,
                Pipeline,
                Pipeline,
                name,
                move |_cap, _info| {
                    let mut state: HashMap<K, Vec<(V, isize)>> = HashMap::new();
                    let mut stash: BTreeMap<u64, Pending<D>> = BTreeMap::new();
                    let mut updates: BTreeMap<u64, RuleUpdates<K, V>> = BTreeMap::new();
                    move |(data, data_frontier), (rule_in, rule_frontier), output| {
                        let port = output.output_index();
                        data.for_each(|cap, batch| {
                            for (d, t, r) in batch.drain(..) {
                                stash
                                    .entry(t)
                                    .or_insert_with(|| (cap.delayed(&t, port), Vec::new()))
                                    .1
                                    .push((d, r));
                            }
                        });
                        rule_in.for_each(|_cap, batch| {
                            for (kv, t, r) in batch.drain(..) {
                                updates.entry(t).or_default().push((kv, r));
                            }
                        });
                        // Judge each time both inputs have passed, in order; rule
                        // updates at `t` apply before the records at `t`.
                        loop {
                            let next = match (stash.keys().next(), updates.keys().next()) {
                                (Some(a), Some(b)) => *a.min(b),
                                (Some(a), None) => *a,
                                (None, Some(b)) => *b,
                                (None, None) => break,
                            };
                            if data_frontier.less_equal(&next) || rule_frontier.less_equal(&next) {
                                break;
                            }
                            if let Some(changes) = updates.remove(&next) {
                                apply(&mut state, changes);
                            }
                            if let Some((cap, records)) = stash.remove(&next) {
                                let mut session = output.session(&cap);
                                for (d, r) in records {
                                    let stopped = !state.is_empty()
                                        && keys(&d).into_iter().any(|k| {
                                            state.get(&k).is_some_and(|vs| {
                                                vs.iter().any(|(v, _)| barred(v, next))
                                            })
                                        });
                                    if !stopped {
                                        session.give((d, next, r));
                                    }
                                }
                            }
                        }
                    }
                },
            )
            .as_collection()
    }
}

/// Adds rule changes to the accumulated rules, keeping only rules with a positive count.
fn apply<K: Hash + Eq + Clone, V: Ord>(
    state: &mut HashMap<K, Vec<(V, isize)>>,
    changes: Vec<((K, V), isize)>,
) {
    let mut touched = Vec::with_capacity(changes.len());
    for ((k, v), r) in changes {
        state.entry(k.clone()).or_default().push((v, r));
        touched.push(k);
    }
    for k in touched {
        if let Some(vs) = state.get_mut(&k) {
            consolidate(vs);
            vs.retain(|(_, r)| *r > 0);
            if vs.is_empty() {
                state.remove(&k);
            }
        }
    }
}

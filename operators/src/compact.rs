//! A reduce that keeps each key's accumulated input in one compact vector
//! and nothing else: no input trace, no output trace.
//!
//! [`CompactReduce::compact_reduce`] has the contract of differential's
//! `reduce` for totally ordered (`u64`) times: the output at every time is
//! `logic(key, accumulated input of key)` for every key with input. It differs
//! in what it keeps. Differential's `reduce` arranges its input (a trace of
//! every update with its time, in batches merged by the spine) and its output
//! (so that it can diff a new output against the old one). This operator
//! keeps, per key, only the accumulated `(value, count)` pairs, sorted by
//! value, in one exactly sized vector; the old output is recomputed from the
//! old input when a key changes (so `logic` runs twice per changed key and
//! time), and nothing is kept per time.
//!
//! ```text
//!  (key, value) ─► [ exchange by key ] ─► per completed time, in time order, per changed key:
//!                                          − logic(key, old input)  (if it had input)
//!                                          apply the updates
//!                                          + logic(key, new input)  (if it has input)
//! ```
//!
//! **Invariant.** At every time `t`, the accumulated output at `t` is the
//! union over keys `k` with a non-empty accumulated input at `t` of
//! `(k, o) × r` for every `(o, r)` that `logic` pushes for `k` and that input.
//! `logic` receives the input sorted by value, consolidated, without zero
//! counts (negative counts are passed on, as differential does). The output
//! is consolidated within each time.
//!
//! **Preconditions.** Times are totally ordered (`u64`); `logic` is a function
//! of its arguments (recomputing the old output relies on it).
//!
//! **When to use it.** For a reduce whose input is used by nothing else and
//! whose output is read as a collection (or arranged once downstream): it
//! replaces two arrangements by one vector entry per accumulated value. What
//! it gives up: the input is not an arrangement others can share, and `logic`
//! runs twice per changed key.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use differential_dataflow::consolidation::consolidate;
use differential_dataflow::{AsCollection, VecCollection};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::ExchangeData;

use crate::by_time::TimeStash;

/// Adds [`CompactReduce::compact_reduce`] to collections of `(key, value)` pairs.
pub trait CompactReduce<'scope, K, V> {
    /// `logic(key, input, output)` per key, kept up to date (see the
    /// [module docs](self)); `input` is the key's accumulated values with
    /// their counts, sorted by value; `logic` pushes `(output, diff)` pairs.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use differential_dataflow::input::Input;
    /// use weft_operators::compact::CompactReduce;
    ///
    /// let out = Arc::new(Mutex::new(Vec::new()));
    /// let log = out.clone();
    /// timely::execute_directly(move |worker| {
    ///     let mut input = worker.dataflow::<u64, _, _>(|scope| {
    ///         let (input, pairs) = scope.new_collection::<(char, u32), isize>();
    ///         // Per key: its least value.
    ///         pairs
    ///             .compact_reduce("Least", |_k, input: &[(&u32, isize)], output: &mut Vec<(u32, isize)>| {
    ///                 output.push((*input[0].0, 1))
    ///             })
    ///             .inspect(move |x| log.lock().unwrap().push(*x));
    ///         input
    ///     });
    ///     input.insert(('a', 5));
    ///     input.insert(('a', 3));
    ///     input.advance_to(1);
    ///     input.remove(('a', 3));
    ///     input.remove(('a', 5));
    /// });
    /// let mut out = out.lock().unwrap().clone();
    /// out.sort_by_key(|(d, t, r)| (*t, *d, *r));
    /// assert_eq!(out, vec![(('a', 3), 0, 1), (('a', 3), 1, -1)]);
    /// ```
    fn compact_reduce<O, L>(
        self,
        name: &str,
        logic: L,
    ) -> VecCollection<'scope, u64, (K, O), isize>
    where
        O: ExchangeData + Clone + Ord,
        L: FnMut(&K, &[(&V, isize)], &mut Vec<(O, isize)>) + 'static;
}

impl<'scope, K, V> CompactReduce<'scope, K, V> for VecCollection<'scope, u64, (K, V), isize>
where
    K: ExchangeData + Clone + Ord + Hash,
    V: ExchangeData + Clone + Ord,
{
    fn compact_reduce<O, L>(
        self,
        name: &str,
        mut logic: L,
    ) -> VecCollection<'scope, u64, (K, O), isize>
    where
        O: ExchangeData + Clone + Ord,
        L: FnMut(&K, &[(&V, isize)], &mut Vec<(O, isize)>) + 'static,
    {
        let mut state: HashMap<K, Vec<(V, isize)>> = HashMap::new();
        let mut pending: TimeStash<(K, V)> = TimeStash::default();
        let by_key = Exchange::new(|((k, _), _, _): &((K, V), u64, isize)| {
            let mut h = DefaultHasher::new();
            k.hash(&mut h);
            h.finish()
        });
        self.inner
            .unary_frontier::<CapacityContainerBuilder<Vec<((K, O), u64, isize)>>, _, _, _>(
                by_key,
                name,
                move |_, _| {
                    move |(input, frontier), output| {
                        input.for_each(|cap, data| pending.stash(data, |t| cap.delayed(t, 0)));
                        while let Some((time, cap, mut updates)) = pending.next_complete(frontier) {
                            consolidate(&mut updates);
                            let mut out = apply(&mut state, updates, &mut logic);
                            consolidate(&mut out);
                            let mut session = output.session(&cap);
                            session.give_iterator(out.into_iter().map(|(d, r)| (d, time, r)));
                        }
                    }
                },
            )
            .as_collection()
    }
}

/// Applies one time's consolidated updates (sorted by key, then value);
/// returns the output's changes.
fn apply<K, V, O, L>(
    state: &mut HashMap<K, Vec<(V, isize)>>,
    updates: Vec<((K, V), isize)>,
    logic: &mut L,
) -> Vec<((K, O), isize)>
where
    K: Clone + Eq + Hash,
    V: Clone + Ord,
    O: Clone,
    L: FnMut(&K, &[(&V, isize)], &mut Vec<(O, isize)>),
{
    let mut out = Vec::new();
    let mut pushed = Vec::new();
    let mut updates = updates.into_iter().peekable();
    while let Some(((key, v), r)) = updates.next() {
        // This key's updates, sorted by value.
        let mut changes = vec![(v, r)];
        while let Some(((k, _), _)) = updates.peek() {
            if *k != key {
                break;
            }
            let ((_, v), r) = updates.next().expect("peeked");
            changes.push((v, r));
        }
        let old = state.remove(&key).unwrap_or_default();
        if !old.is_empty() {
            let view: Vec<(&V, isize)> = old.iter().map(|(v, r)| (v, *r)).collect();
            logic(&key, &view, &mut pushed);
            out.extend(pushed.drain(..).map(|(o, r)| ((key.clone(), o), -r)));
        }
        let merged = merge(old, changes);
        if !merged.is_empty() {
            let view: Vec<(&V, isize)> = merged.iter().map(|(v, r)| (v, *r)).collect();
            logic(&key, &view, &mut pushed);
            out.extend(pushed.drain(..).map(|(o, r)| ((key.clone(), o), r)));
            state.insert(key, merged);
        }
    }
    out
}

/// Two sorted, consolidated lists merged into one exactly sized list, zero
/// counts dropped.
fn merge<V: Ord>(old: Vec<(V, isize)>, changes: Vec<(V, isize)>) -> Vec<(V, isize)> {
    let mut merged = Vec::with_capacity(old.len() + changes.len());
    let mut old = old.into_iter().peekable();
    let mut changes = changes.into_iter().peekable();
    loop {
        let next = match (old.peek(), changes.peek()) {
            (None, None) => break,
            (Some(_), None) => old.next(),
            (None, Some(_)) => changes.next(),
            (Some((a, _)), Some((b, _))) => match a.cmp(b) {
                std::cmp::Ordering::Less => old.next(),
                std::cmp::Ordering::Greater => changes.next(),
                std::cmp::Ordering::Equal => {
                    let (v, r) = old.next().expect("peeked");
                    let (_, s) = changes.next().expect("peeked");
                    Some((v, r + s))
                }
            },
        };
        if let Some((v, r)) = next {
            if r != 0 {
                merged.push((v, r));
            }
        }
    }
    merged.shrink_to_fit();
    merged
}

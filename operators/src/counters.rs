//! Many counts per key as one row: a vector-valued difference, and the
//! per-slot totals it accumulates to.
//!
//! A job with twenty `count` aggregates keeps, arranged per aggregate, one
//! record per key and aggregate: twenty keys, twenty values and twenty
//! update entries per profile in each arrangement the counts pass through.
//! Counts are linear, so they need no records at all: a count is the
//! accumulated *difference* of a key. [`Counts`] is that difference for many
//! counts at once (a sparse vector of `(slot, count)`), so that a collection
//! of keys with `Counts` diffs holds one record per key whatever the number
//! of aggregates, and arrangements and joins consolidate it like any other
//! difference. Materialize plans its accumulable reductions (`count`, `sum`)
//! the same way, with arrays of accumulators as the difference.
//!
//! ```text
//!  k with Counts {s: +1} at t ──► [ exchange by k ] ──► row(k) += diff ──► (k, old row) -1, (k, new row) +1 at t
//!                                      row_totals                                 │
//!                          (arrange: one record per key) ◄────────────────────────┤
//!                                                       slot_changes ─► (s, (k, old)) -1, (s, (k, new)) +1 at t
//! ```
//!
//! [`RowTotals::row_totals`] turns such a collection into ordinary records,
//! `(key, row)` for every key whose counts are not all zero, the row being
//! the key's accumulated `Counts`: arranged, one record per key holds every
//! count of the key, for consumers that join or export them.
//! [`SlotChanges::slot_changes`] spreads rows back into `(slot, (key,
//! total))` records, per key and time only the slots whose total changed;
//! [`SlotTotals::slot_totals`] is the two in a row. Invariants:
//! - the output at every time is exactly the set of non-zero totals: the
//!   same as a `reduce` per slot that sums its input's multiplicities
//!   (retractions included);
//! - updates are applied one completed time at a time, in time order (held
//!   with a capability until the frontier has passed their time), so the
//!   output does not depend on batching or on the number of workers;
//! - memory: `row_totals` keeps per key with a non-zero total its `Counts`
//!   (8 bytes per non-zero slot, exactly sized) in a hash map, and removes
//!   a key whose totals all return to zero; `slot_changes` keeps nothing.
//!   Both hold the updates of times the frontier has not passed yet.

use std::collections::HashMap;
use std::hash::Hash;

use differential_dataflow::consolidation::consolidate;
use differential_dataflow::difference::{Abelian, IsZero, Monoid, Multiply, Semigroup};
use differential_dataflow::hashable::Hashable;
use differential_dataflow::{AsCollection, Collection, VecCollection};
use serde::{Deserialize, Serialize};

use crate::by_time::apply_completed_times;
use timely::ExchangeData;

/// Counts by slot: a sparse vector, sorted by slot, without zero entries.
/// As a difference it adds slot-wise; it is zero when it has no entries.
///
/// Each entry is one `u64`: the slot in the high 16 bits, the count in the
/// low 48 (two's complement), 8 bytes per non-zero count instead of a
/// `(u32, i64)`'s 16. Slots are below 65,536 (aggregates of one job) and
/// counts within ±2^47 (140 trillion events); beyond either it panics
/// rather than wrap.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Counts(Vec<u64>);

/// The largest count an entry holds (and, negated, the smallest).
const COUNT_MAX: i64 = (1 << 47) - 1;

fn entry(slot: u32, n: i64) -> u64 {
    assert!(slot < 1 << 16, "Counts: slot {slot} is beyond 65535");
    assert!(
        (-COUNT_MAX..=COUNT_MAX).contains(&n),
        "Counts: count {n} of slot {slot} is beyond ±2^47"
    );
    (u64::from(slot) << 48) | (n as u64 & ((1 << 48) - 1))
}

fn slot_of(e: u64) -> u32 {
    (e >> 48) as u32
}

fn count_of(e: u64) -> i64 {
    ((e << 16) as i64) >> 16
}

impl Counts {
    /// `n` in `slot` and zero elsewhere.
    pub fn one(slot: u32, n: i64) -> Counts {
        if n == 0 {
            Counts(Vec::new())
        } else {
            Counts(vec![entry(slot, n)])
        }
    }

    fn position(&self, slot: u32) -> Result<usize, usize> {
        self.0.binary_search_by_key(&slot, |e| slot_of(*e))
    }

    /// The count of `slot`.
    pub fn get(&self, slot: u32) -> i64 {
        match self.position(slot) {
            Ok(i) => count_of(self.0[i]),
            Err(_) => 0,
        }
    }

    /// Adds `n` to `slot`'s count in place; returns its count before and after.
    pub fn add(&mut self, slot: u32, n: i64) -> (i64, i64) {
        match self.position(slot) {
            Ok(i) => {
                let was = count_of(self.0[i]);
                let now = was.checked_add(n).expect("Counts: a count overflows");
                if now == 0 {
                    self.0.remove(i);
                } else {
                    self.0[i] = entry(slot, now);
                }
                (was, now)
            }
            Err(i) => {
                if n != 0 {
                    // Rows live long and gain a slot at a time: exactly
                    // sized, not at a doubled capacity.
                    self.0.reserve_exact(1);
                    self.0.insert(i, entry(slot, n));
                }
                (0, n)
            }
        }
    }

    /// The non-zero counts, by slot.
    pub fn iter(&self) -> impl Iterator<Item = (u32, i64)> + '_ {
        self.0.iter().map(|e| (slot_of(*e), count_of(*e)))
    }
}

impl IsZero for Counts {
    fn is_zero(&self) -> bool {
        self.0.is_empty()
    }
}

impl Semigroup for Counts {
    /// Slot by slot, in place: a row holds at most one slot per count
    /// aggregate of a job (tens), and most differences have one.
    fn plus_equals(&mut self, rhs: &Self) {
        for (slot, n) in rhs.iter() {
            self.add(slot, n);
        }
    }
}

impl Monoid for Counts {
    fn zero() -> Self {
        Counts(Vec::new())
    }
}

impl Abelian for Counts {
    fn negate(&mut self) {
        for e in &mut self.0 {
            *e = entry(slot_of(*e), -count_of(*e));
        }
    }
}

impl Multiply<isize> for Counts {
    type Output = Counts;
    fn multiply(mut self, rhs: &isize) -> Counts {
        if *rhs == 0 {
            return Counts::zero();
        }
        for e in &mut self.0 {
            let n = count_of(*e).checked_mul(*rhs as i64);
            *e = entry(
                slot_of(*e),
                n.expect("Counts: a count times a diff overflows"),
            );
        }
        self
    }
}

/// Adds [`RowTotals::row_totals`] to collections of keys with [`Counts`] diffs.
pub trait RowTotals<'scope, K> {
    /// `(key, row)` for every key whose accumulated counts are not all zero:
    /// the row is the key's accumulated [`Counts`] (its non-zero totals by
    /// slot), as a record with an `isize` diff. A key's change at a time is
    /// its old row retracted and its new one inserted, both at that time and
    /// on the key's worker; arranged by key, the rows hold one record per
    /// key whatever the number of slots.
    fn row_totals(self, name: &str) -> VecCollection<'scope, u64, (K, Counts), isize>;
}

impl<'scope, K> RowTotals<'scope, K> for Collection<'scope, u64, Vec<(K, u64, Counts)>>
where
    K: ExchangeData + Clone + Hash + Eq + Ord,
{
    fn row_totals(self, name: &str) -> VecCollection<'scope, u64, (K, Counts), isize> {
        let mut totals: HashMap<K, Counts> = HashMap::new();
        apply_completed_times(
            self.inner,
            name,
            |k: &K| k.hashed(),
            move |_time, updates, out| {
                for (k, delta) in updates {
                    let row = totals.entry(k.clone()).or_default();
                    if !row.is_zero() {
                        out.push(((k.clone(), row.clone()), -1));
                    }
                    row.plus_equals(&delta);
                    if row.is_zero() {
                        totals.remove(&k);
                    } else {
                        out.push(((k, row.clone()), 1));
                    }
                }
            },
        )
        .as_collection()
    }
}

/// Adds [`SlotChanges::slot_changes`] to collections of rows.
pub trait SlotChanges<'scope, K> {
    /// The changes of `(slot, (key, total))` records that a collection of
    /// `(key, row)` records amounts to: at each time, a key's rows (each
    /// with its diff) are spread into their slots' totals and consolidated,
    /// so a slot whose total did not change between a key's old and new row
    /// has no change at all. Stateless but for the updates of times the
    /// frontier has not passed yet (a key's old and new row may arrive apart).
    fn slot_changes(self, name: &str) -> VecCollection<'scope, u64, (u32, (K, i64)), isize>;
}

impl<'scope, K> SlotChanges<'scope, K> for VecCollection<'scope, u64, (K, Counts), isize>
where
    K: ExchangeData + Clone + Hash + Eq + Ord,
{
    fn slot_changes(self, name: &str) -> VecCollection<'scope, u64, (u32, (K, i64)), isize> {
        let mut slots: Vec<((u32, i64), isize)> = Vec::new();
        let route = |(k, _): &(K, Counts)| k.hashed();
        apply_completed_times(self.inner, name, route, move |_time, updates, out| {
            // Consolidated, so sorted by key.
            for group in updates.chunk_by(|((a, _), _), ((b, _), _)| a == b) {
                slots.clear();
                for ((_, row), r) in group {
                    slots.extend(row.iter().map(|s| (s, *r)));
                }
                consolidate(&mut slots);
                let k = &group[0].0 .0;
                out.extend(
                    slots
                        .iter()
                        .map(|&((slot, total), r)| ((slot, (k.clone(), total)), r)),
                );
            }
        })
        .as_collection()
    }
}

/// Adds [`SlotTotals::slot_totals`] to collections of keys with [`Counts`] diffs.
pub trait SlotTotals<'scope, K> {
    /// `(slot, (key, total))` for every key and slot whose accumulated count
    /// is not zero (see the module docs): [`RowTotals::row_totals`], then
    /// [`SlotChanges::slot_changes`].
    ///
    /// ```
    /// use differential_dataflow::input::Input;
    /// use weft_operators::counters::{Counts, SlotTotals};
    /// use std::sync::{Arc, Mutex};
    ///
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let log = seen.clone();
    /// timely::execute_directly(move |worker| {
    ///     let mut input = worker.dataflow::<u64, _, _>(|scope| {
    ///         let (input, keys) = scope.new_collection::<char, Counts>();
    ///         keys.slot_totals("Counts")
    ///             .inspect(move |x| log.lock().unwrap().push(*x));
    ///         input
    ///     });
    ///     input.update('a', Counts::one(0, 1));
    ///     input.update('a', Counts::one(3, 2));
    ///     input.advance_to(1);
    ///     input.update('a', Counts::one(0, -1)); // slot 0 back to zero: no record
    /// });
    /// let mut seen = seen.lock().unwrap().clone();
    /// seen.sort();
    /// assert_eq!(seen, vec![((0, ('a', 1)), 0, 1), ((0, ('a', 1)), 1, -1), ((3, ('a', 2)), 0, 1)]);
    /// ```
    fn slot_totals(self, name: &str) -> VecCollection<'scope, u64, (u32, (K, i64)), isize>;
}

impl<'scope, K> SlotTotals<'scope, K> for Collection<'scope, u64, Vec<(K, u64, Counts)>>
where
    K: ExchangeData + Clone + Hash + Eq + Ord,
{
    fn slot_totals(self, name: &str) -> VecCollection<'scope, u64, (u32, (K, i64)), isize> {
        self.row_totals(name).slot_changes(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(v: &[(u32, i64)]) -> Counts {
        let mut out = Counts::zero();
        for &(s, n) in v {
            out.plus_equals(&Counts::one(s, n));
        }
        out
    }

    #[test]
    fn counts_add_slot_wise_and_drop_zeros() {
        let mut a = c(&[(1, 2), (4, 1)]);
        a.plus_equals(&c(&[(0, 1), (1, -2), (9, 3)]));
        assert_eq!(a.iter().collect::<Vec<_>>(), [(0, 1), (4, 1), (9, 3)]);
        let mut b = a.clone();
        b.negate();
        a.plus_equals(&b);
        assert!(a.is_zero());
        assert_eq!(c(&[(2, 1)]).multiply(&-3), Counts::one(2, -3));
        // Negative counts and the largest slot survive the packing.
        let mut big = c(&[(65535, -COUNT_MAX), (0, COUNT_MAX)]);
        assert_eq!(big.get(65535), -COUNT_MAX);
        assert_eq!(big.get(0), COUNT_MAX);
        assert_eq!(
            big.iter().collect::<Vec<_>>(),
            [(0, COUNT_MAX), (65535, -COUNT_MAX)]
        );
        big.negate();
        assert_eq!(big.get(65535), COUNT_MAX);
        assert_eq!(big.add(7, -5), (0, -5));
        assert_eq!(big.add(7, 2), (-5, -3));
        assert!(c(&[(2, 1)]).multiply(&0).is_zero());
        assert!(Counts::one(5, 0).is_zero());
        assert_eq!(c(&[(3, 1), (3, 1)]).get(3), 2);
    }

    #[test]
    #[should_panic(expected = "beyond ±2^47")]
    fn counts_refuse_to_wrap() {
        let mut a = Counts::one(1, COUNT_MAX);
        a.add(1, 1);
    }
}

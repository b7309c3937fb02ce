//! Holding updates for future times until the frontier reaches them.
//!
//! A temporal filter (an event that counts for a window until `e + w`)
//! produces retractions at times days ahead of the frontier. Sent straight to
//! an arrangement, they wait in its merge batcher, and differential's batcher
//! re-sorts *every* pending update each time the frontier advances to split
//! off the ready ones: with millions of expiries pending, that is a cost per
//! logical time proportional to the history. [`HoldFuture::hold_future`]
//! keeps such updates in a time-ordered heap instead and sends each one when
//! the input frontier reaches its time, so downstream operators only ever see
//! updates that are about to complete.
//!
//! Invariants:
//! - the output is the input collection: the same `(data, time, diff)`
//!   multiset (equal `(data, time)` pairs of one release consolidated);
//! - an update at time `t` is sent once the input frontier is not less than
//!   `t` (updates at the frontier's own time go out at once), with a
//!   capability for `t`; the operator holds one capability, at its least
//!   pending time, so the output frontier never passes a held update;
//! - memory: one `(time, data, diff)` per held update (a binary heap), no
//!   per-time allocation.
//!
//! Totally ordered timestamps only (the release order is the time order).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicI64, Ordering};

use differential_dataflow::difference::Semigroup;
use differential_dataflow::{AsCollection, VecCollection};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::order::TotalOrder;
use timely::progress::Timestamp;

/// Updates held by every `hold_future` operator of the process, and the
/// bytes their heaps take (capacity × element size; the data's own heap
/// allocations are not counted).
static HELD: [AtomicI64; 2] = [AtomicI64::new(0), AtomicI64::new(0)];

/// One operator's share of [`HELD`], given back when the operator is dropped.
struct Gauge(i64, i64);

impl Drop for Gauge {
    fn drop(&mut self) {
        HELD[0].fetch_sub(self.0, Ordering::Relaxed);
        HELD[1].fetch_sub(self.1, Ordering::Relaxed);
    }
}

/// `(updates, bytes)` held now by every `hold_future` operator of the process.
pub fn held() -> (i64, i64) {
    (
        HELD[0].load(Ordering::Relaxed),
        HELD[1].load(Ordering::Relaxed),
    )
}

/// Adds [`HoldFuture::hold_future`] to collections.
pub trait HoldFuture<'scope, T: Timestamp, D, R> {
    /// The same collection, with updates at times beyond the input frontier
    /// held in this operator until the frontier reaches them.
    ///
    /// ```
    /// use differential_dataflow::input::Input;
    /// use differential_dataflow::AsCollection;
    /// use timely::dataflow::operators::vec::Map;
    /// use weft_operators::by_time::{SinkByTime, SinkEvent, SinkTarget};
    /// use weft_operators::future::HoldFuture;
    /// use std::{cell::RefCell, rc::Rc};
    ///
    /// let seen = timely::execute_directly(|worker| {
    ///     let seen = Rc::new(RefCell::new(Vec::new()));
    ///     let log = seen.clone();
    ///     let mut input = worker.dataflow::<u64, _, _>(|scope| {
    ///         let (input, coll) = scope.new_collection::<char, isize>();
    ///         // Each record counts from its arrival until 10 later.
    ///         let windowed = coll.inner.flat_map(|(d, t, r)| [(d, t, r), (d, t + 10, -r)]).as_collection();
    ///         windowed.hold_future("Hold").sink_by_time("Collect", SinkTarget::Worker(0), move |ev| {
    ///             if let SinkEvent::Updates { time, updates } = ev {
    ///                 log.borrow_mut().push((*time, updates.to_vec()));
    ///             }
    ///         });
    ///         input
    ///     });
    ///     input.insert('a');
    ///     input.advance_to(5);
    ///     input.insert('b');
    ///     input.close();
    ///     while worker.step() {}
    ///     let v = seen.borrow().clone();
    ///     v
    /// });
    /// assert_eq!(seen, vec![(0, vec![('a', 1)]), (5, vec![('b', 1)]), (10, vec![('a', -1)]), (15, vec![('b', -1)])]);
    /// ```
    fn hold_future(self, name: &str) -> VecCollection<'scope, T, D, R>;
}

impl<'scope, T, D, R> HoldFuture<'scope, T, D, R> for VecCollection<'scope, T, D, R>
where
    T: Timestamp + TotalOrder,
    D: Ord + Clone + 'static,
    R: Semigroup + Ord + Clone + 'static,
{
    fn hold_future(self, name: &str) -> VecCollection<'scope, T, D, R> {
        let mut held: BinaryHeap<Reverse<(T, D, R)>> = BinaryHeap::new();
        // A capability at the least held time (if anything is held).
        let mut cap: Option<Capability<T>> = None;
        let mut batch: Vec<(D, T, R)> = Vec::new();
        let mut counted = Gauge(0, 0);
        self.inner
            .unary_frontier::<CapacityContainerBuilder<Vec<(D, T, R)>>, _, _, _>(
                Pipeline,
                name,
                move |_, _| {
                    move |(input, frontier), output| {
                        // STEP 1. Send what is not in the future; hold the rest, with a
                        // capability at the least held time.
                        input.for_each(|message_cap, data| {
                            batch.clear();
                            for (d, t, r) in data.drain(..) {
                                if frontier.less_than(&t) {
                                    if cap.as_ref().is_none_or(|c| t < *c.time()) {
                                        cap = Some(message_cap.delayed(&t, 0));
                                    }
                                    held.push(Reverse((t, d, r)));
                                } else {
                                    batch.push((d, t, r));
                                }
                            }
                            batch.sort_by(|a, b| a.1.cmp(&b.1));
                            while let Some((_, time, _)) = batch.last() {
                                let time = time.clone();
                                let at = message_cap.delayed(&time, 0);
                                let split = batch.partition_point(|(_, t, _)| *t < time);
                                output.session(&at).give_iterator(batch.drain(split..));
                            }
                        });
                        // STEP 2. Release every time the frontier has reached, in time order.
                        while let Some(Reverse((t, _, _))) = held.peek() {
                            if frontier.less_than(t) {
                                break;
                            }
                            let time = t.clone();
                            batch.clear();
                            while let Some(Reverse((t, _, _))) = held.peek() {
                                if *t != time {
                                    break;
                                }
                                let Reverse((t, d, r)) = held.pop().expect("peeked");
                                batch.push((d, t, r));
                            }
                            consolidate_release(&mut batch);
                            let c = cap.as_ref().expect("a capability while updates are held");
                            let at = c.delayed(&time);
                            output.session(&at).give_iterator(batch.drain(..));
                        }
                        let now = (
                            held.len() as i64,
                            (held.capacity() * std::mem::size_of::<Reverse<(T, D, R)>>()) as i64,
                        );
                        HELD[0].fetch_add(now.0 - counted.0, Ordering::Relaxed);
                        HELD[1].fetch_add(now.1 - counted.1, Ordering::Relaxed);
                        (counted.0, counted.1) = now;
                        // STEP 3. Hold a capability at the least remaining time only.
                        cap = match (cap.take(), held.peek()) {
                            (Some(mut c), Some(Reverse((t, _, _)))) => {
                                c.downgrade(t);
                                Some(c)
                            }
                            _ => None,
                        };
                    }
                },
            )
            .as_collection()
    }
}

/// Sums the diffs of equal data in a batch of one time (sorted by the heap order already).
fn consolidate_release<D: Ord, T, R: Semigroup>(batch: &mut Vec<(D, T, R)>) {
    let mut out = 0;
    for i in 0..batch.len() {
        if out > 0 && batch[out - 1].0 == batch[i].0 {
            let r = batch[i].2.clone();
            batch[out - 1].2.plus_equals(&r);
        } else {
            batch.swap(out, i);
            out += 1;
        }
    }
    batch.truncate(out);
    batch.retain(|(_, _, r)| !r.is_zero());
}

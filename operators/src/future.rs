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
//! - memory: held updates are a small binary heap of recent ones (at most
//!   `seal_at`, default [`SEAL_AT`]) plus sealed *runs*: the heap's content
//!   encoded in time order with bincode's variable-length integers (a
//!   window expiry of a count, `(anchor, (aggregate, contribution))`, takes
//!   about 40 bytes instead of a 104-byte heap slot). Releasing reads the
//!   runs in time order (a heap of runs by their next time); a run gives
//!   its memory back as it is consumed (its consumed prefix is dropped
//!   once it is half the run).
//!
//! Totally ordered timestamps only (the release order is the time order).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicI64, Ordering};

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;

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

    /// [`HoldFuture::hold_future`], sealing the recent updates into an
    /// encoded run whenever `seal_at` (at least 1) are held unsealed.
    fn hold_future_sealing(self, name: &str, seal_at: usize) -> VecCollection<'scope, T, D, R>;
}

/// Recent held updates kept decoded before they are sealed into a run.
pub const SEAL_AT: usize = 4096;

fn codec() -> impl Options {
    bincode::DefaultOptions::new()
}

/// Held updates: recent ones in a heap, older ones in encoded runs.
struct Held<T, D, R> {
    recent: BinaryHeap<Reverse<(T, D, R)>>,
    seal_at: usize,
    /// Sealed runs by the time of their next update (an index into `runs`).
    next: BinaryHeap<Reverse<(T, usize)>>,
    runs: Vec<Option<Run<T, D, R>>>,
    free: Vec<usize>,
    len: usize,
}

/// Updates encoded in time order; `head` is the next one, decoded.
struct Run<T, D, R> {
    bytes: Vec<u8>,
    pos: usize,
    head: Option<(T, D, R)>,
}

impl<T, D, R> Run<T, D, R>
where
    T: DeserializeOwned,
    D: DeserializeOwned,
    R: DeserializeOwned,
{
    /// Takes the head and decodes the next update (`head` is `None` after
    /// the last). Drops the consumed prefix once it is half the run.
    fn take(&mut self) -> (T, D, R) {
        let out = self.head.take().expect("a run has a head until exhausted");
        if self.pos < self.bytes.len() {
            let mut rest = &self.bytes[self.pos..];
            self.head = Some(
                codec()
                    .deserialize_from(&mut rest)
                    .expect("a held run decodes (encoded by this operator)"),
            );
            self.pos = self.bytes.len() - rest.len();
            if self.pos > 4096 && self.pos * 2 > self.bytes.len() {
                self.bytes.drain(..self.pos);
                self.bytes.shrink_to_fit();
                self.pos = 0;
            }
        }
        out
    }
}

impl<T, D, R> Held<T, D, R>
where
    T: Ord + Clone + Serialize + DeserializeOwned,
    D: Ord + Serialize + DeserializeOwned,
    R: Ord + Serialize + DeserializeOwned,
{
    fn new(seal_at: usize) -> Self {
        Held {
            recent: BinaryHeap::new(),
            seal_at: seal_at.max(1),
            next: BinaryHeap::new(),
            runs: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    fn push(&mut self, t: T, d: D, r: R) {
        self.recent.push(Reverse((t, d, r)));
        self.len += 1;
        if self.recent.len() >= self.seal_at {
            self.seal();
        }
    }

    /// Encodes the recent updates, in time order, into a new run.
    fn seal(&mut self) {
        let mut sorted = std::mem::take(&mut self.recent).into_sorted_vec();
        // `into_sorted_vec` of `Reverse` is descending in the inner order.
        sorted.reverse();
        let mut updates = sorted.into_iter().map(|Reverse(u)| u);
        let Some(head) = updates.next() else {
            return;
        };
        let mut bytes = Vec::new();
        for u in updates {
            codec()
                .serialize_into(&mut bytes, &u)
                .expect("held updates encode");
        }
        bytes.shrink_to_fit();
        let time = head.0.clone();
        let run = Run {
            bytes,
            pos: 0,
            head: Some(head),
        };
        let slot = match self.free.pop() {
            Some(i) => {
                self.runs[i] = Some(run);
                i
            }
            None => {
                self.runs.push(Some(run));
                self.runs.len() - 1
            }
        };
        self.next.push(Reverse((time, slot)));
    }

    /// The least held time.
    fn min_time(&self) -> Option<&T> {
        let a = self.recent.peek().map(|Reverse((t, _, _))| t);
        let b = self.next.peek().map(|Reverse((t, _))| t);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Removes and returns an update at the least held time.
    fn pop(&mut self) -> Option<(T, D, R)> {
        let from_recent = match (self.recent.peek(), self.next.peek()) {
            (None, None) => return None,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(Reverse((a, _, _))), Some(Reverse((b, _)))) => a <= b,
        };
        self.len -= 1;
        if from_recent {
            return self.recent.pop().map(|Reverse(u)| u);
        }
        let Reverse((_, slot)) = self.next.pop().expect("peeked");
        let run = self.runs[slot].as_mut().expect("a live run");
        let out = run.take();
        match &run.head {
            Some((t, _, _)) => self.next.push(Reverse((t.clone(), slot))),
            None => {
                self.runs[slot] = None;
                self.free.push(slot);
            }
        }
        Some(out)
    }

    /// Bytes held: the heap's slots and the runs' encodings.
    fn bytes(&self) -> usize {
        self.recent.capacity() * std::mem::size_of::<Reverse<(T, D, R)>>()
            + self.runs.capacity() * std::mem::size_of::<Option<Run<T, D, R>>>()
            + self
                .runs
                .iter()
                .flatten()
                .map(|r| r.bytes.capacity())
                .sum::<usize>()
    }
}

impl<'scope, T, D, R> HoldFuture<'scope, T, D, R> for VecCollection<'scope, T, D, R>
where
    T: Timestamp + TotalOrder + Serialize + DeserializeOwned,
    D: Ord + Clone + Serialize + DeserializeOwned + 'static,
    R: Semigroup + Ord + Clone + Serialize + DeserializeOwned + 'static,
{
    fn hold_future(self, name: &str) -> VecCollection<'scope, T, D, R> {
        self.hold_future_sealing(name, SEAL_AT)
    }

    fn hold_future_sealing(self, name: &str, seal_at: usize) -> VecCollection<'scope, T, D, R> {
        let mut held: Held<T, D, R> = Held::new(seal_at);
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
                                    held.push(t, d, r);
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
                        while let Some(t) = held.min_time() {
                            if frontier.less_than(t) {
                                break;
                            }
                            let time = t.clone();
                            batch.clear();
                            while held.min_time() == Some(&time) {
                                let (t, d, r) = held.pop().expect("a least time");
                                batch.push((d, t, r));
                            }
                            batch.sort_by(|a, b| a.0.cmp(&b.0));
                            consolidate_release(&mut batch);
                            let c = cap.as_ref().expect("a capability while updates are held");
                            let at = c.delayed(&time);
                            output.session(&at).give_iterator(batch.drain(..));
                        }
                        let now = (held.len as i64, held.bytes() as i64);
                        HELD[0].fetch_add(now.0 - counted.0, Ordering::Relaxed);
                        HELD[1].fetch_add(now.1 - counted.1, Ordering::Relaxed);
                        (counted.0, counted.1) = now;
                        // STEP 3. Hold a capability at the least remaining time only.
                        cap = match (cap.take(), held.min_time()) {
                            (Some(mut c), Some(t)) => {
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

/// Sums the diffs of equal data in a batch of one time (sorted by data).
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

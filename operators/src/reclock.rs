//! Reclocking a replayed input from position time to a watermark clock.
//!
//! A replayed source (a file) binds its records to *position* times: chunk
//! `k` of the input is at time `k`. Windows and temporal filters, however,
//! need a clock in milliseconds. This operator moves every record of chunk `k`
//! to the time
//!
//! ```text
//!   W(k) = max( W(k-1), max{ clock(d) : d in chunk k } ),   W(-1) = 0
//! ```
//!
//! the watermark of everything read up to and including chunk `k`. `W` is a
//! function of the input alone (not of which worker read which chunk), so the
//! reclocked collection — and all that is computed from it — is the same for
//! any number of workers, and the replay clock follows the input's own clock
//! (for Segment events, `receivedAt`: what the ingestion clock of a live run
//! would have read).
//!
//! Invariants: output times are non-decreasing in `k`; a chunk's records are
//! emitted only once every worker has finished the chunk (the frontier of both
//! the records and the per-chunk maxima has passed `k`); records with no clock
//! value (`None`) do not move the watermark.

use std::collections::BTreeMap;

use differential_dataflow::{AsCollection, VecCollection};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Broadcast;
use timely::ExchangeData;

/// Adds [`Reclock::reclock_to_watermark`] to collections at position times.
pub trait Reclock<'scope, D> {
    /// Moves records from position time `k` to the watermark time `W(k)`.
    ///
    /// ```
    /// use differential_dataflow::input::Input;
    /// use weft_operators::reclock::Reclock;
    /// use weft_operators::by_time::{SinkByTime, SinkEvent, SinkTarget};
    /// use std::{rc::Rc, cell::RefCell};
    ///
    /// let out = timely::execute_directly(|worker| {
    ///     let seen = Rc::new(RefCell::new(Vec::new()));
    ///     let log = seen.clone();
    ///     let mut input = worker.dataflow::<u64, _, _>(|scope| {
    ///         let (input, coll) = scope.new_collection::<(char, Option<u64>), isize>();
    ///         coll.reclock_to_watermark("Reclock", |d| d.1)
    ///             .sink_by_time("Collect", SinkTarget::Worker(0), move |ev| {
    ///                 if let SinkEvent::Updates { time, updates } = ev {
    ///                     log.borrow_mut().push((*time, updates.iter().map(|u| u.0.0).collect::<Vec<_>>()));
    ///                 }
    ///             });
    ///         input
    ///     });
    ///     input.insert(('a', Some(1000)));
    ///     input.insert(('b', Some(900)));
    ///     input.advance_to(1);
    ///     input.insert(('c', Some(500)));   // late: the watermark stays at 1000
    ///     input.insert(('e', None));
    ///     input.advance_to(2);
    ///     input.insert(('d', Some(2000)));
    ///     input.close();
    ///     while worker.step() {}
    ///     let v = seen.borrow().clone();
    ///     v
    /// });
    /// assert_eq!(out, vec![(1000, vec!['a', 'b', 'c', 'e']), (2000, vec!['d'])]);
    /// ```
    fn reclock_to_watermark<F>(self, name: &str, clock: F) -> VecCollection<'scope, u64, D, isize>
    where
        F: Fn(&D) -> Option<u64> + 'static;
}

impl<'scope, D> Reclock<'scope, D> for VecCollection<'scope, u64, D, isize>
where
    D: ExchangeData + Clone,
{
    fn reclock_to_watermark<F>(self, name: &str, clock: F) -> VecCollection<'scope, u64, D, isize>
    where
        F: Fn(&D) -> Option<u64> + 'static,
    {
        // STEP 1. Per position time, this worker's maximum clock value; shared with everyone.
        let marks = self
            .inner
            .clone()
            .unary::<timely::container::CapacityContainerBuilder<Vec<(u64, u64)>>, _, _, _>(
                Pipeline,
                &format!("{name}:Marks"),
                move |_cap, _info| {
                    let mut maxima: BTreeMap<u64, u64> = BTreeMap::new();
                    move |input, output| {
                        input.for_each(|cap, data| {
                            maxima.clear();
                            for (d, k, _r) in data.iter() {
                                let m = maxima.entry(*k).or_insert(0);
                                if let Some(c) = clock(d) {
                                    *m = (*m).max(c);
                                }
                            }
                            let mut session = output.session(&cap);
                            for (k, m) in maxima.iter() {
                                session.give((*k, *m));
                            }
                        });
                    }
                },
            )
            .broadcast();

        // STEP 2. Release each position time's records at the watermark, in position order.
        self.inner
            .binary_frontier::<_, timely::container::CapacityContainerBuilder<Vec<(D, u64, isize)>>, _, _, _, _>(
                marks,
                Pipeline,
                Pipeline,
                name,
                |cap, _info| {
                    let mut cap = Some(cap);
                    let mut records: BTreeMap<u64, Vec<(D, isize)>> = BTreeMap::new();
                    let mut maxima: BTreeMap<u64, u64> = BTreeMap::new();
                    let mut watermark = 0u64;
                    move |(input, frontier), (marks, marks_frontier), output| {
                        input.for_each(|_cap, data| {
                            for (d, k, r) in data.drain(..) {
                                records.entry(k).or_default().push((d, r));
                            }
                        });
                        marks.for_each(|_cap, data| {
                            for (k, m) in data.drain(..) {
                                let e = maxima.entry(k).or_insert(0);
                                *e = (*e).max(m);
                            }
                        });
                        // Position times every worker has finished.
                        let complete = |k: &u64| !frontier.less_equal(k) && !marks_frontier.less_equal(k);
                        let Some(c) = cap.as_mut() else { return };
                        loop {
                            let next = match (records.keys().next(), maxima.keys().next()) {
                                (Some(a), Some(b)) => *a.min(b),
                                (Some(a), None) => *a,
                                (None, Some(b)) => *b,
                                (None, None) => break,
                            };
                            if !complete(&next) {
                                break;
                            }
                            if let Some(m) = maxima.remove(&next) {
                                watermark = watermark.max(m);
                            }
                            if let Some(batch) = records.remove(&next) {
                                c.downgrade(&watermark);
                                let mut session = output.session(&*c);
                                for (d, r) in batch {
                                    session.give((d, watermark, r));
                                }
                            }
                        }
                        if frontier.is_empty() && marks_frontier.is_empty() && records.is_empty() {
                            cap = None;
                        } else {
                            c.downgrade(&watermark);
                        }
                    }
                },
            )
            .as_collection()
    }
}

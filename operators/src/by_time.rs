//! Delivering a collection's changes to the outside world, one completed time
//! at a time, in time order.
//!
//! This is the seam every sink builds on: updates are held until the input
//! frontier has passed their time, then consolidated (equal records' diffs
//! summed, zeros dropped), sorted by record and handed over as one batch per
//! time. After the batches of a frontier advance, the logic hears the new
//! frontier: that is the moment a sink commits ("everything before this
//! frontier is written"). An empty frontier means the input is complete.
//!
//! Invariants:
//! - `Updates` calls arrive in strictly increasing time order, at most one per time;
//! - every `Updates { time }` precedes the `Progress` whose frontier is beyond `time`;
//! - with [`SinkTarget::Worker`], one worker sees every update, so the output is
//!   identical for any number of workers.

use std::collections::BTreeMap;

use differential_dataflow::consolidation::consolidate;
use differential_dataflow::difference::Semigroup;
use differential_dataflow::VecCollection;
use timely::dataflow::channels::pact::{Exchange, ParallelizationContract, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::progress::Timestamp;
use timely::ExchangeData;

/// What a sink's logic is told.
#[derive(Debug)]
pub enum SinkEvent<'a, T, D, R> {
    /// All updates at `time`, consolidated and sorted by record; never empty.
    Updates {
        /// The logical time of the updates.
        time: &'a T,
        /// `(record, diff)` pairs.
        updates: &'a [(D, R)],
    },
    /// The input frontier advanced: every update at a time not beyond it has
    /// been delivered. An empty frontier means the input is complete.
    Progress {
        /// The new frontier.
        frontier: &'a [T],
    },
}

/// Which worker(s) deliver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkTarget {
    /// Each worker delivers the updates it holds (for partitioned sinks).
    Local,
    /// All updates are routed to one worker (for single-writer sinks).
    Worker(usize),
}

/// Adds [`SinkByTime::sink_by_time`] to collections.
pub trait SinkByTime<T, D, R> {
    /// Hands consolidated updates to `logic`, one completed time at a time.
    ///
    /// ```
    /// use std::rc::Rc;
    /// use std::cell::RefCell;
    /// use differential_dataflow::input::Input;
    /// use weft_operators::by_time::{SinkByTime, SinkEvent, SinkTarget};
    ///
    /// let seen = timely::execute_directly(|worker| {
    ///     let seen = Rc::new(RefCell::new(Vec::new()));
    ///     let log = seen.clone();
    ///     let mut input = worker.dataflow::<u64, _, _>(|scope| {
    ///         let (input, coll) = scope.new_collection::<char, isize>();
    ///         coll.sink_by_time("Collect", SinkTarget::Worker(0), move |ev| match ev {
    ///             SinkEvent::Updates { time, updates } => log.borrow_mut().push((*time, updates.to_vec())),
    ///             SinkEvent::Progress { .. } => {}
    ///         });
    ///         input
    ///     });
    ///     input.insert('b'); input.insert('a'); input.insert('a');
    ///     input.advance_to(2);
    ///     input.remove('b');
    ///     input.insert('c');
    ///     input.remove('c');
    ///     input.close();
    ///     while worker.step() {}
    ///     let v = seen.borrow().clone();
    ///     v
    /// });
    /// assert_eq!(seen, vec![(0, vec![('a', 2), ('b', 1)]), (2, vec![('b', -1)])]);
    /// ```
    fn sink_by_time<L>(self, name: &str, target: SinkTarget, logic: L)
    where
        L: FnMut(SinkEvent<'_, T, D, R>) + 'static;
}

impl<'scope, T, D, R> SinkByTime<T, D, R> for VecCollection<'scope, T, D, R>
where
    T: Timestamp + Ord + ExchangeData,
    D: ExchangeData + Ord + Clone,
    R: ExchangeData + Semigroup + Clone,
{
    fn sink_by_time<L>(self, name: &str, target: SinkTarget, logic: L)
    where
        L: FnMut(SinkEvent<'_, T, D, R>) + 'static,
    {
        match target {
            SinkTarget::Local => build(self, Pipeline, name, logic),
            SinkTarget::Worker(w) => {
                let w = w as u64;
                build(self, Exchange::new(move |_: &(D, T, R)| w), name, logic)
            }
        }
    }
}

fn build<'scope, T, D, R, P, L>(
    collection: VecCollection<'scope, T, D, R>,
    pact: P,
    name: &str,
    mut logic: L,
) where
    T: Timestamp + Ord,
    D: Ord + Clone + 'static,
    R: Semigroup + Clone + 'static,
    P: ParallelizationContract<T, Vec<(D, T, R)>>,
    L: FnMut(SinkEvent<'_, T, D, R>) + 'static,
{
    let mut pending: BTreeMap<T, Vec<(D, R)>> = BTreeMap::new();
    let mut last_frontier: Vec<T> = vec![T::minimum()];
    collection.inner.sink(pact, name, move |(input, frontier)| {
        // STEP 1. Stash arriving updates by time.
        input.for_each(|_cap, data| {
            for (d, t, r) in data.drain(..) {
                pending.entry(t).or_default().push((d, r));
            }
        });
        // STEP 2. Deliver every time the frontier has passed, in order.
        while let Some(entry) = pending.first_entry() {
            if frontier.less_equal(entry.key()) {
                break;
            }
            let (time, mut updates) = entry.remove_entry();
            consolidate(&mut updates);
            if !updates.is_empty() {
                logic(SinkEvent::Updates {
                    time: &time,
                    updates: &updates,
                });
            }
        }
        // STEP 3. Report frontier progress (the commit point).
        let current = frontier.frontier();
        if current.iter().ne(last_frontier.iter()) {
            last_frontier = current.to_vec();
            logic(SinkEvent::Progress {
                frontier: &last_frontier,
            });
        }
    });
}

/// Updates held until their time completes, each time with a capability to
/// send at it: the state of operators that apply completed times one at a
/// time, in time order (`monotone`, `weft_dataflows::chain`).
pub struct TimeStash<D, R = isize> {
    pending: BTreeMap<u64, (timely::dataflow::operators::Capability<u64>, Vec<(D, R)>)>,
}

impl<D, R> Default for TimeStash<D, R> {
    fn default() -> Self {
        TimeStash {
            pending: BTreeMap::new(),
        }
    }
}

impl<D, R> TimeStash<D, R> {
    /// Holds `data`'s updates by time; `delayed(t)` is a capability for `t`
    /// (asked once per new time).
    pub fn stash(
        &mut self,
        data: &mut Vec<(D, u64, R)>,
        delayed: impl Fn(&u64) -> timely::dataflow::operators::Capability<u64>,
    ) {
        for (d, t, r) in data.drain(..) {
            self.pending
                .entry(t)
                .or_insert_with(|| (delayed(&t), Vec::new()))
                .1
                .push((d, r));
        }
    }

    /// The earliest held time the frontier has passed, with its capability
    /// and updates (not consolidated).
    pub fn next_complete(
        &mut self,
        frontier: &timely::progress::frontier::MutableAntichain<u64>,
    ) -> Option<(
        u64,
        timely::dataflow::operators::Capability<u64>,
        Vec<(D, R)>,
    )> {
        let entry = self.pending.first_entry()?;
        if frontier.less_equal(entry.key()) {
            return None;
        }
        let (time, (cap, updates)) = entry.remove_entry();
        Some((time, cap, updates))
    }
}

/// Output buffer entries [`apply_completed_times`] keeps between times.
const OUT_KEEP: usize = 1024;

/// Applies `logic` to one completed time at a time, in time order: the
/// shape of the operators whose state is updated by completed times
/// (`counters`, `monotone`). Updates are exchanged by `route`, held in a
/// [`TimeStash`] until the frontier has passed their time, consolidated, and
/// handed to `logic(time, updates, out)`; what it pushes to `out` is sent at
/// that time.
pub fn apply_completed_times<'scope, D, R, O, H, L>(
    input: timely::dataflow::StreamVec<'scope, u64, (D, u64, R)>,
    name: &str,
    route: H,
    mut logic: L,
) -> timely::dataflow::StreamVec<'scope, u64, (O, u64, isize)>
where
    D: ExchangeData + Ord,
    R: ExchangeData + Semigroup,
    O: Clone + 'static,
    H: Fn(&D) -> u64 + 'static,
    L: FnMut(u64, Vec<(D, R)>, &mut Vec<(O, isize)>) + 'static,
{
    let mut pending: TimeStash<D, R> = TimeStash::default();
    let pact = Exchange::new(move |(d, _t, _r): &(D, u64, R)| route(d));
    let mut out = Vec::new();
    input.unary_frontier::<timely::container::CapacityContainerBuilder<Vec<(O, u64, isize)>>, _, _, _>(
        pact,
        name,
        move |_, _| {
            move |(input, frontier), output| {
                input.for_each(|cap, data| pending.stash(data, |t| cap.delayed(t, 0)));
                while let Some((time, cap, mut updates)) = pending.next_complete(frontier) {
                    consolidate(&mut updates);
                    logic(time, updates, &mut out);
                    let mut session = output.session(&cap);
                    session.give_iterator(out.drain(..).map(|(o, r)| (o, time, r)));
                    // A time of a catch-up can be large: between times keep a
                    // small buffer, not the largest time's (at idle it is
                    // nobody's state).
                    out.shrink_to(OUT_KEEP);
                }
            }
        },
    )
}

//! Events by anchor as chains in the event log: per anchor, one arranged
//! handle instead of one per event.
//!
//! A job without regulations never retracts an event, so an anchor's
//! history only grows. [`anchor_heads`] stores each event linked to its
//! anchor's previous one ([`StoredEvent::store_linked`]) and keeps, per
//! anchor, only the latest: the *head*. The collection of heads, arranged by
//! anchor, stands for the collection of every event by anchor, because a
//! head's chain ([`StoredEvent::chain`]) is exactly its anchor's events.
//! [`expand_chains`] turns changes of heads back into changes of events:
//!
//! ```text
//!  (anchor, event) ── anchor_heads ──► (anchor, head)  ── arrange ─► heads by anchor
//!   insert-only        (time order;      at t: -old head,               │ join profile of
//!                       link, store)           +new head                 ▼
//!                                                              (profile, (anchor, head))
//!                                                                        │ expand_chains
//!                                                                        ▼
//!  (profile, event): +the events after the old head; on a move, -all from the old profile, +all to the new
//! ```
//!
//! `expand_chains` is the linear map "a head stands for its chain's
//! events": its output accumulates, at every time, to the events of the
//! heads accumulated at that time (an event not linked is a chain of one, so
//! a collection of plain events expands to itself). Where a key's updates at
//! one time are an old head leaving and a later head of the same chain
//! arriving, it emits only the difference, reading the new records' headers
//! from the log; otherwise it walks each head's whole chain.
//!
//! Memory: per anchor one head (40 bytes) in `anchor_heads`' map and one
//! arranged update; the events are on disk. Both operators hold the updates
//! of a time until it completes.

use std::collections::HashMap;
use std::hash::Hash;

use differential_dataflow::consolidation::consolidate;
use differential_dataflow::hashable::Hashable;
use differential_dataflow::{AsCollection, ExchangeData, VecCollection};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;

use weft_operators::by_time::TimeStash;

use crate::event::Event;
use crate::identity::IdHash;
use crate::stored::StoredEvent;

/// Stores every event linked to its anchor's previous one and emits the
/// changes of each anchor's head: at a time `t` with events for anchor `a`,
/// `(a, old head, t, -1)` (if `a` had one) and `(a, new head, t, +1)`.
/// Times are applied in order, once complete; the output is at the worker
/// owning the anchor (exchanged by its hash, as `arrange_by_key` does).
///
/// **Precondition:** `anchored` only inserts (a job without regulations). A
/// retraction panics.
pub fn anchor_heads<'s>(
    anchored: VecCollection<'s, u64, (IdHash, Event), isize>,
) -> VecCollection<'s, u64, (IdHash, StoredEvent), isize> {
    let mut pending: TimeStash<(IdHash, Event)> = TimeStash::default();
    let mut heads: HashMap<IdHash, StoredEvent> = HashMap::new();
    anchored
        .inner
        .unary_frontier::<CapacityContainerBuilder<Vec<((IdHash, StoredEvent), u64, isize)>>, _, _, _>(
            Exchange::new(|((a, _), _, _): &((IdHash, Event), u64, isize)| a.hashed().into()),
            "AnchorHeads",
            move |_, _| {
                move |(input, frontier), output| {
                    input.for_each(|cap, data| pending.stash(data, |t| cap.delayed(t, 0)));
                    while let Some((time, cap, updates)) = pending.next_complete(frontier) {
                        // The head each anchor had before this time.
                        let mut before: HashMap<IdHash, Option<StoredEvent>> = HashMap::new();
                        for ((a, e), r) in updates {
                            assert!(
                                r >= 0,
                                "AnchorHeads: a retraction reached an insert-only job (time {time})"
                            );
                            for _ in 0..r {
                                let prev = heads.get(&a);
                                before.entry(a).or_insert_with(|| prev.cloned());
                                let head = StoredEvent::store_linked(&e, prev);
                                heads.insert(a, head);
                            }
                        }
                        let mut session = output.session(&cap);
                        for (a, old) in before {
                            if let Some(old) = old {
                                session.give(((a, old), time, -1));
                            }
                            session.give(((a, heads[&a].clone()), time, 1));
                        }
                    }
                }
            },
        )
        .as_collection()
}

/// The events of a collection of heads: `(key, (anchor, head))` becomes
/// `(key, event)` for every event of the head's chain, with the head's
/// multiplicity (see the module docs). Stays on the worker that holds the
/// input (a chain is read from this process's log).
pub fn expand_chains<'s, K>(
    heads: VecCollection<'s, u64, (K, (IdHash, StoredEvent)), isize>,
) -> VecCollection<'s, u64, (K, StoredEvent), isize>
where
    K: ExchangeData + Hash + Ord,
{
    let mut pending: TimeStash<(K, (IdHash, StoredEvent))> = TimeStash::default();
    heads
        .inner
        .unary_frontier::<CapacityContainerBuilder<Vec<((K, StoredEvent), u64, isize)>>, _, _, _>(
            Pipeline,
            "ExpandChains",
            move |_, _| {
                move |(input, frontier), output| {
                    input.for_each(|cap, data| pending.stash(data, |t| cap.delayed(t, 0)));
                    while let Some((time, cap, mut updates)) = pending.next_complete(frontier) {
                        consolidate(&mut updates);
                        let mut session = output.session(&cap);
                        // Updates are sorted: each (key, anchor)'s are adjacent.
                        let mut i = 0;
                        while i < updates.len() {
                            let mut j = i + 1;
                            while j < updates.len()
                                && updates[j].0 .0 == updates[i].0 .0
                                && updates[j].0 .1 .0 == updates[i].0 .1 .0
                            {
                                j += 1;
                            }
                            let group = &updates[i..j];
                            let key = &group[0].0 .0;
                            let delta = match group {
                                [(x, rx), (y, ry)] if *rx == -*ry && rx.abs() == 1 => {
                                    let (old, new) = if *rx < 0 { (x, y) } else { (y, x) };
                                    new.1 .1.chain_since(&old.1 .1)
                                }
                                _ => None,
                            };
                            match delta {
                                Some(events) => {
                                    for e in events {
                                        session.give(((key.clone(), e), time, 1));
                                    }
                                }
                                None => {
                                    for ((_, (_, head)), r) in group {
                                        for e in head.chain() {
                                            session.give(((key.clone(), e), time, *r));
                                        }
                                    }
                                }
                            }
                            i = j;
                        }
                    }
                }
            },
        )
        .as_collection()
}

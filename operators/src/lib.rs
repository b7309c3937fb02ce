//! Generic timely / differential operators used by Weft.
//!
//! Nothing here knows about customers, events or I/O: operators take
//! collections and closures. Customer-data semantics live in `weft-dataflows`,
//! sources and sinks in `weft-connectors`.
//!
//! | module | operator | state |
//! |---|---|---|
//! | [`split`] | [`split::SplitResults::split_results`]: one collection of `Result`s into two | none |
//! | [`dedupe`] | [`dedupe::DedupeByKey::dedupe_by_key`]: drop records whose key was seen within an event-time window | 128-bit key fingerprints by event-time bucket (14.4 B/key at 10M keys), optionally spilled to disk |
//! | [`reclock`] | [`reclock::Reclock::reclock_to_watermark`]: position time → watermark clock (replays) | records of incomplete positions |
//! | [`components`] | [`components::ConnectedComponents::connected_components`]: node → least node (or least-ranked node) of its component, under insertions and retractions; [`components::ComponentChanges::component_changes`]: merges and splits per time | edges twice, per node its label by round; one count per label |
//! | [`clusters`] | [`clusters::ClusterReduce::cluster_reduce`]: a function of every connected component's items, recomputed for the components each time touches (on worker 0) | per node its items and neighbours, per edge a count, per component its nodes |
//! | [`counters`] | [`counters::RowTotals::row_totals`]: one row of totals per key whose diffs are [`counters::Counts`] (many counts as one vector-valued difference); [`counters::SlotChanges::slot_changes`]: the per-slot changes of rows; [`counters::SlotTotals::slot_totals`]: both | per key its non-zero counts (8 B per slot); none |
//! | [`future`] | [`future::HoldFuture::hold_future`]: updates for future times (window expiries) held in a time-ordered heap until the frontier reaches them | one `(time, data, diff)` per held update |
//! | [`by_time`] | [`by_time::SinkByTime::sink_by_time`]: consolidated updates per completed time, in time order; [`by_time::apply_completed_times`]: the same for operators whose state is updated one completed time at a time | updates of incomplete times |

#![forbid(missing_docs)]

pub mod by_time;
pub mod clusters;
pub mod components;
pub mod counters;
pub mod dedupe;
pub mod future;
pub mod gate;
pub mod monotone;
pub mod reclock;
pub mod scratch;
pub mod split;

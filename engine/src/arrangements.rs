//! Arrangement sizes: how many updates each arranged operator holds.
//!
//! Memory in a differential dataflow is mostly its arrangements (the traces
//! of `arrange`, `reduce`, `join` inputs) and their batchers (updates not yet
//! sealed into a batch). Differential reports both on its
//! `differential/arrange` log: batches created, merged and dropped (with
//! their update counts) and batcher size changes (with bytes). This module
//! keeps a running total per operator, named from timely's `timely` log, so
//! that a benchmark or an operator can see *which* arrangement holds the
//! memory (Materialize's `mz_arrangement_sizes` answers the same question).
//!
//! Recording is opt-in, per process: [`record`] before [`Cluster::start`]
//! (or `WEFT_ARRANGEMENT_SIZES=1` in the environment of `weft`). Timely's
//! own log then carries every scheduling event, which costs a few percent of
//! throughput, so it is off by default.
//!
//! Invariants: for each operator, `records` = Σ batch lengths − Σ dropped
//! batch lengths + Σ (merged length − merged inputs' lengths) over completed
//! merges, i.e. the updates its trace holds (differential documents that its
//! batch, merge and drop events balance). Updates are counted, not bytes:
//! the size of an update depends on its types (see `docs/benchmarks.md`).
//!
//! [`Cluster::start`]: crate::runtime::Cluster::start

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use differential_dataflow::logging::{DifferentialEvent, DifferentialEventBuilder};
use timely::logging::{TimelyEvent, TimelyEventBuilder};
use timely::worker::Worker;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Records arrangement sizes in clusters started after this call.
pub fn record() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether sizes are recorded (by [`record`] or `WEFT_ARRANGEMENT_SIZES`).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
        || std::env::var("WEFT_ARRANGEMENT_SIZES").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// One operator's running totals.
#[derive(Clone, Debug, Default)]
struct Totals {
    name: String,
    records: i64,
    batcher_records: i64,
    batcher_bytes: i64,
}

/// Per (worker, operator id) totals of this process.
static SIZES: Mutex<BTreeMap<(usize, usize), Totals>> = Mutex::new(BTreeMap::new());

/// The sizes of the arrangements of one operator name, summed over workers
/// and over the operators sharing the name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArrangementSize {
    /// The operator's name (e.g. `IdentityFirstSeen`, `Arrange: Aggregate`).
    pub name: String,
    /// Operators (over all workers) with this name.
    pub operators: usize,
    /// Updates held in their traces.
    pub records: i64,
    /// Updates waiting in their batchers.
    pub batcher_records: i64,
    /// Bytes of those batchers (differential's own estimate).
    pub batcher_bytes: i64,
}

/// This process's arrangements, largest first (empty unless recording).
pub fn snapshot() -> Vec<ArrangementSize> {
    let guard = SIZES.lock().expect("arrangement sizes lock");
    let mut by_name: BTreeMap<&str, ArrangementSize> = BTreeMap::new();
    for t in guard.values() {
        if t.records == 0 && t.batcher_records == 0 {
            continue;
        }
        let name = if t.name.is_empty() {
            "(unnamed)"
        } else {
            &t.name
        };
        let e = by_name.entry(name).or_insert_with(|| ArrangementSize {
            name: name.to_string(),
            ..Default::default()
        });
        e.operators += 1;
        e.records += t.records;
        e.batcher_records += t.batcher_records;
        e.batcher_bytes += t.batcher_bytes;
    }
    let mut out: Vec<ArrangementSize> = by_name.into_values().collect();
    out.sort_by(|a, b| b.records.cmp(&a.records).then(a.name.cmp(&b.name)));
    out
}

/// Installs the loggers on `worker` when recording (call before any dataflow).
pub fn install(worker: &mut Worker) {
    if !enabled() {
        return;
    }
    let index = worker.index();
    let Some(mut registry) = worker.log_register() else {
        return;
    };
    registry.insert::<TimelyEventBuilder, _>(
        "timely",
        move |_time: &Duration, data: &mut Option<Vec<(Duration, TimelyEvent)>>| {
            let Some(events) = data else { return };
            let mut names = Vec::new();
            for (_, e) in events.iter() {
                if let TimelyEvent::Operates(op) = e {
                    names.push((op.id, op.name.clone()));
                }
            }
            if names.is_empty() {
                return;
            }
            let mut map = SIZES.lock().expect("arrangement sizes lock");
            for (id, name) in names {
                map.entry((index, id)).or_default().name = name;
            }
        },
    );
    registry.insert::<DifferentialEventBuilder, _>(
        "differential/arrange",
        move |_time: &Duration, data: &mut Option<Vec<(Duration, DifferentialEvent)>>| {
            let Some(events) = data else { return };
            let mut map = SIZES.lock().expect("arrangement sizes lock");
            for (_, e) in events.iter() {
                apply(&mut map, index, e);
            }
        },
    );
}

/// Applies one differential event to the totals.
fn apply(map: &mut BTreeMap<(usize, usize), Totals>, worker: usize, e: &DifferentialEvent) {
    let (op, records, batcher_records, batcher_bytes) = match e {
        DifferentialEvent::Batch(b) => (b.operator, b.length as i64, 0, 0),
        DifferentialEvent::Drop(d) => (d.operator, -(d.length as i64), 0, 0),
        DifferentialEvent::Merge(m) => match m.complete {
            Some(n) => (
                m.operator,
                n as i64 - m.length1 as i64 - m.length2 as i64,
                0,
                0,
            ),
            None => return,
        },
        DifferentialEvent::Batcher(b) => (b.operator, 0, b.records_diff as i64, b.size_diff as i64),
        _ => return,
    };
    let t = map.entry((worker, op)).or_default();
    t.records += records;
    t.batcher_records += batcher_records;
    t.batcher_bytes += batcher_bytes;
}

#[cfg(test)]
mod tests {
    use super::*;
    use differential_dataflow::input::Input;
    use timely::dataflow::operators::Probe;

    /// Records are counted per named arrangement and consolidate with compaction.
    #[test]
    fn counts_the_updates_an_arrangement_holds() {
        record();
        let sizes = timely::execute(timely::Config::thread(), |worker| {
            install(worker);
            // The trace is held (a dropped trace keeps nothing and logs nothing).
            let (mut input, probe, trace) = worker.dataflow::<u64, _, _>(|scope| {
                let (input, coll) = scope.new_collection::<u64, isize>();
                let arranged = coll.arrange_by_self_named("TestArrangeSizes");
                (input, arranged.stream.probe().0, arranged.trace)
            });
            for round in 0..10u64 {
                for x in 0..100u64 {
                    input.insert(x + round * 1000);
                }
                // Half of the previous round's records go again.
                if round > 0 {
                    for x in 0..50u64 {
                        input.remove(x + (round - 1) * 1000);
                    }
                }
                input.advance_to(round + 1);
                input.flush();
                worker.step_while(|| probe.less_than(input.time()));
            }
            if let Some(mut r) = worker.log_register() {
                r.flush();
            }
            let held = snapshot();
            drop(trace);
            drop(input);
            while worker.step() {}
            if let Some(mut r) = worker.log_register() {
                r.flush();
            }
            (held, snapshot())
        })
        .expect("timely runs")
        .join()
        .into_iter()
        .map(|r| r.expect("the worker completes"))
        .next()
        .expect("one worker");
        let find = |all: &[ArrangementSize]| {
            all.iter()
                .find(|s| s.name == "TestArrangeSizes")
                .cloned()
                .unwrap_or_default()
        };
        let held = find(&sizes.0);
        assert_eq!(held.operators, 1, "{held:?}");
        // 1,000 inserted and 450 retracted, at distinct times: the held
        // trace does not allow compaction, so each is a record.
        assert_eq!(held.records, 1450, "{held:?}");
        // Dropped with its trace: nothing held.
        assert_eq!(find(&sizes.1).records, 0, "{:?}", sizes.1);
    }
}

//! Oracle test for `hold_future`: random updates at the current time and at
//! random future times (with retractions, repeated data and equal times);
//! the held collection, delivered per completed time, equals the
//! consolidated input at every time, at 1 and 4 workers, with the recent
//! updates kept decoded (the default for such small inputs) and sealed into
//! encoded runs after every 1, 3, 5 or 16 updates, in memory and in a
//! scratch file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use differential_dataflow::input::Input;
use differential_dataflow::AsCollection;
use rand::{Rng, SeedableRng};
use timely::dataflow::operators::vec::Map;
use weft_operators::by_time::{SinkByTime, SinkEvent, SinkTarget};
use weft_operators::future::{HoldConfig, HoldFuture, SEAL_AT};

/// `(data, delay, diff)` inserted at each round's time.
type Round = Vec<(u32, u64, isize)>;

fn rounds(seed: u64) -> Vec<Round> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..30)
        .map(|_| {
            (0..rng.gen_range(0..12))
                .map(|_| {
                    let delay = if rng.gen_bool(0.4) {
                        0
                    } else {
                        rng.gen_range(1..40)
                    };
                    let diff = if rng.gen_bool(0.2) { -1 } else { 1 };
                    (rng.gen_range(0..6), delay, diff)
                })
                .collect()
        })
        .collect()
}

/// What the output must be: per time, the consolidated, sorted updates.
fn expected(rounds: &[Round], step: u64) -> BTreeMap<u64, Vec<(u32, isize)>> {
    let mut acc: BTreeMap<(u64, u32), isize> = BTreeMap::new();
    for (i, round) in rounds.iter().enumerate() {
        for &(d, delay, r) in round {
            *acc.entry((i as u64 * step + delay, d)).or_default() += r;
        }
    }
    let mut out: BTreeMap<u64, Vec<(u32, isize)>> = BTreeMap::new();
    for ((t, d), r) in acc {
        if r != 0 {
            out.entry(t).or_default().push((d, r));
        }
    }
    out
}

/// `seal_at`: `None` for `hold_future` (the default), else how many recent
/// updates are sealed into an encoded run (1: every update is in a run).
fn run(seed: u64, workers: usize, seal_at: Option<usize>) {
    run_in(seed, workers, seal_at, None)
}

/// [`run`], with sealed runs written to a scratch file in `spill`.
fn run_in(seed: u64, workers: usize, seal_at: Option<usize>, spill: Option<PathBuf>) {
    let step = 3u64;
    let input_rounds = rounds(seed);
    let got: Arc<Mutex<BTreeMap<u64, Vec<(u32, isize)>>>> = Arc::default();
    let (sink, all) = (got.clone(), input_rounds.clone());
    // Each worker's input time, stored before it advances: a released update's
    // time must not be beyond any of them (it was held until the frontier reached it).
    let clocks: Arc<Vec<AtomicU64>> = Arc::new((0..workers).map(|_| AtomicU64::new(0)).collect());
    let spill_dir = spill.clone();
    timely::execute(timely::Config::process(workers), move |worker| {
        let sink = sink.clone();
        let spill = spill_dir.clone();
        let (clocks, watch) = (clocks.clone(), clocks.clone());
        let mut input = worker.dataflow::<u64, _, _>(|scope| {
            let (input, coll) = scope.new_collection::<(u32, u64), isize>();
            let coll = coll
                .inner
                .map(|((d, delay), t, r)| (d, t + delay, r))
                .as_collection();
            let held = match (seal_at, spill.clone()) {
                (None, None) => coll.hold_future("Hold"),
                (Some(n), None) => coll.hold_future_sealing("Hold", n),
                (n, dir) => coll.hold_future_with(
                    "Hold",
                    HoldConfig {
                        seal_at: n.unwrap_or(SEAL_AT),
                        spill_dir: dir,
                    },
                ),
            };
            held.inspect(move |(_, t, _)| {
                let now = watch
                    .iter()
                    .map(|c| c.load(Ordering::SeqCst))
                    .min()
                    .unwrap();
                assert!(*t <= now, "released {t} while an input was at {now}");
            })
            .sink_by_time("Collect", SinkTarget::Worker(0), move |ev| {
                if let SinkEvent::Updates { time, updates } = ev {
                    let mut s = sink.lock().unwrap();
                    assert!(
                        s.insert(*time, updates.to_vec()).is_none(),
                        "one batch per time"
                    );
                }
            });
            input
        });
        let me = worker.index();
        for (i, round) in all.iter().enumerate() {
            clocks[me].store(i as u64 * step, Ordering::SeqCst);
            input.advance_to(i as u64 * step);
            // Spread each round over the workers.
            for (k, &(d, delay, r)) in round.iter().enumerate() {
                if k % worker.peers() == worker.index() {
                    input.update((d, delay), r);
                }
            }
            input.flush();
            worker.step();
        }
        clocks[me].store(u64::MAX, Ordering::SeqCst);
        input.close();
        while worker.step() {}
    })
    .unwrap();
    let got = got.lock().unwrap().clone();
    assert_eq!(
        got,
        expected(&input_rounds, step),
        "seed {seed}, {workers} workers, seal at {seal_at:?}, spill {spill:?}"
    );
}

#[test]
fn equals_the_input_one_worker() {
    for seed in 0..20 {
        for seal_at in [None, Some(1), Some(3), Some(16)] {
            run(seed, 1, seal_at);
        }
    }
}

#[test]
fn equals_the_input_four_workers() {
    for seed in 0..20 {
        for seal_at in [None, Some(1), Some(5)] {
            run(seed, 4, seal_at);
        }
    }
}

#[test]
fn equals_the_input_with_runs_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    for seed in 0..20 {
        for seal_at in [Some(1), Some(3), Some(16)] {
            run_in(seed, 1, seal_at, Some(dir.path().to_path_buf()));
        }
        for seal_at in [Some(1), Some(5)] {
            run_in(seed, 4, seal_at, Some(dir.path().to_path_buf()));
        }
    }
    // Where no file can be made, the runs stay in memory.
    run_in(0, 2, Some(2), Some(dir.path().join("missing")));
}

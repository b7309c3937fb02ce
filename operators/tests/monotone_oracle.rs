//! Oracle test for `monotone_min`: random insert-only `(key, value)` updates
//! spread over times and workers (repeats, equal values, times that arrive
//! out of order across workers); the accumulated output at every time equals
//! a naive minimum over everything inserted up to that time, at 1 and 4
//! workers, and equals differential's general `reduce` keeping the least
//! value.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use differential_dataflow::input::Input;
use rand::{Rng, SeedableRng};
use weft_operators::by_time::{SinkByTime, SinkEvent, SinkTarget};
use weft_operators::monotone::{MonotoneFirst, MonotoneMin};

/// `(key, value)` inserted at each round's time.
type Round = Vec<(u8, i32)>;

fn rounds(seed: u64) -> Vec<Round> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..25)
        .map(|_| {
            (0..rng.gen_range(0..15))
                .map(|_| (rng.gen_range(0..8), rng.gen_range(-50..50)))
                .collect()
        })
        .collect()
}

/// The accumulated `(key, min)` after each round, from the naive model.
fn naive(rounds: &[Round]) -> Vec<BTreeMap<u8, i32>> {
    let mut least: BTreeMap<u8, i32> = BTreeMap::new();
    rounds
        .iter()
        .map(|round| {
            for &(k, v) in round {
                let m = least.entry(k).or_insert(v);
                *m = (*m).min(v);
            }
            least.clone()
        })
        .collect()
}

type Changes = Arc<Mutex<BTreeMap<u64, Vec<((u8, i32), isize)>>>>;

/// Runs both operators; returns their changes per time.
fn run(
    seed: u64,
    workers: usize,
) -> (
    BTreeMap<u64, Vec<((u8, i32), isize)>>,
    BTreeMap<u64, Vec<((u8, i32), isize)>>,
) {
    let all = rounds(seed);
    let (mono, general): (Changes, Changes) = (Arc::default(), Arc::default());
    let (m, g) = (mono.clone(), general.clone());
    timely::execute(timely::Config::process(workers), move |worker| {
        let (m, g) = (m.clone(), g.clone());
        let mut input = worker.dataflow::<u64, _, _>(|scope| {
            let (input, coll) = scope.new_collection::<(u8, i32), isize>();
            coll.clone().monotone_min("Min").sink_by_time(
                "Mono",
                SinkTarget::Worker(0),
                move |ev| {
                    if let SinkEvent::Updates { time, updates } = ev {
                        m.lock().unwrap().insert(*time, updates.to_vec());
                    }
                },
            );
            coll.reduce(|_k, input, output| output.push((*input[0].0, 1)))
                .sink_by_time("General", SinkTarget::Worker(0), move |ev| {
                    if let SinkEvent::Updates { time, updates } = ev {
                        g.lock().unwrap().insert(*time, updates.to_vec());
                    }
                });
            input
        });
        // Each worker inserts its share of every round; worker 0 runs ahead
        // by a round so that times arrive out of order at the key's owner.
        for (i, round) in all.iter().enumerate() {
            input.advance_to(i as u64);
            for (j, &(k, v)) in round.iter().enumerate() {
                if j % worker.peers() == worker.index() {
                    input.insert((k, v));
                }
            }
            if worker.index() != 0 {
                worker.step();
            }
        }
        input.close();
        while worker.step() {}
    })
    .unwrap();
    let m = mono.lock().unwrap().clone();
    let g = general.lock().unwrap().clone();
    (m, g)
}

fn check(seed: u64, workers: usize) {
    let rounds = rounds(seed);
    let want = naive(&rounds);
    let (mono, general) = run(seed, workers);
    assert_eq!(
        mono, general,
        "seed {seed}, {workers} workers: as a general reduce"
    );
    let mut acc: BTreeMap<(u8, i32), isize> = BTreeMap::new();
    for (t, w) in want.iter().enumerate() {
        for (d, r) in mono.get(&(t as u64)).into_iter().flatten() {
            *acc.entry(*d).or_default() += r;
        }
        acc.retain(|_, r| *r != 0);
        let got: BTreeMap<u8, i32> = acc
            .iter()
            .map(|(&(k, v), &r)| {
                assert_eq!(r, 1, "one value per key");
                (k, v)
            })
            .collect();
        assert_eq!(&got, w, "seed {seed}, {workers} workers, time {t}");
    }
}

#[test]
fn equals_the_naive_minimum_one_worker() {
    for seed in 0..30 {
        check(seed, 1);
    }
}

#[test]
fn equals_the_naive_minimum_four_workers() {
    for seed in 0..30 {
        check(seed, 4);
    }
}

#[test]
#[should_panic(expected = "a retraction reached an insert-only minimum")]
fn a_retraction_is_refused() {
    timely::execute_directly(|worker| {
        let mut input = worker.dataflow::<u64, _, _>(|scope| {
            let (input, coll) = scope.new_collection::<(u8, i32), isize>();
            coll.monotone_min("Min");
            input
        });
        input.insert((1, 5));
        input.advance_to(1);
        input.remove((1, 5));
    });
}

/// `monotone_first`: per key, the least value of the first round the key
/// appears in, whatever later rounds bring; with values equal per key, the
/// same as the minimum. At 1 and 4 workers.
fn check_first(seed: u64, workers: usize, equal_per_key: bool) {
    let mut all = rounds(seed);
    if equal_per_key {
        for round in &mut all {
            for (k, v) in round.iter_mut() {
                *v = 3 * *k as i32 - 7;
            }
        }
    }
    let mut first: BTreeMap<u8, i32> = BTreeMap::new();
    let want: Vec<BTreeMap<u8, i32>> = all
        .iter()
        .map(|round| {
            let mut this: BTreeMap<u8, i32> = BTreeMap::new();
            for &(k, v) in round {
                let m = this.entry(k).or_insert(v);
                *m = (*m).min(v);
            }
            for (k, v) in this {
                first.entry(k).or_insert(v);
            }
            first.clone()
        })
        .collect();
    if equal_per_key {
        assert_eq!(want, naive(&all), "seed {seed}: equal values, first = min");
    }
    let changes: Changes = Arc::default();
    let c = changes.clone();
    let rounds = Arc::new(all);
    timely::execute(timely::Config::process(workers), move |worker| {
        let c = c.clone();
        let mut input = worker.dataflow::<u64, _, _>(|scope| {
            let (input, coll) = scope.new_collection::<(u8, i32), isize>();
            coll.monotone_first("First")
                .sink_by_time("First", SinkTarget::Worker(0), move |ev| {
                    if let SinkEvent::Updates { time, updates } = ev {
                        c.lock().unwrap().insert(*time, updates.to_vec());
                    }
                });
            input
        });
        for (i, round) in rounds.iter().enumerate() {
            input.advance_to(i as u64);
            for (j, &(k, v)) in round.iter().enumerate() {
                if j % worker.peers() == worker.index() {
                    input.insert((k, v));
                }
            }
            if worker.index() != 0 {
                worker.step();
            }
        }
        input.close();
        while worker.step() {}
    })
    .unwrap();
    let changes = changes.lock().unwrap().clone();
    let mut acc: BTreeMap<(u8, i32), isize> = BTreeMap::new();
    for (t, w) in want.iter().enumerate() {
        for (d, r) in changes.get(&(t as u64)).into_iter().flatten() {
            *acc.entry(*d).or_default() += r;
        }
        acc.retain(|_, r| *r != 0);
        let got: BTreeMap<u8, i32> = acc
            .iter()
            .map(|(&(k, v), &r)| {
                assert_eq!(r, 1, "one value per key");
                (k, v)
            })
            .collect();
        assert_eq!(&got, w, "seed {seed}, {workers} workers, time {t}");
    }
}

#[test]
fn first_equals_the_naive_first_value() {
    for seed in 0..20 {
        for workers in [1, 4] {
            check_first(seed, workers, true);
            check_first(seed, workers, false);
        }
    }
}

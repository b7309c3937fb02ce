//! Oracle test for `monotone_min`: random insert-only `(key, value)` updates
//! spread over times and workers (repeats, equal values, times that arrive
//! out of order across workers); the accumulated output at every time equals
//! a naive minimum over everything inserted up to that time, at 1 and 4
//! workers, and equals differential's general `reduce` keeping the least
//! value.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use differential_dataflow::input::Input;
use differential_dataflow::{ExchangeData, VecCollection};
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
fn naive<K: Ord + Copy>(rounds: &[Vec<(K, i32)>]) -> Vec<BTreeMap<K, i32>> {
    let mut least: BTreeMap<K, i32> = BTreeMap::new();
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

/// An output's changes, per time.
type Changes<O> = BTreeMap<u64, Vec<(O, isize)>>;

/// An operator under test, applied to the input collection.
type Build<I, O> = for<'s> fn(VecCollection<'s, u64, I, isize>) -> VecCollection<'s, u64, O, isize>;

/// Feeds round `i` of `rounds` at time `i` through `build` on `workers`
/// workers, each inserting its share of every round; worker 0 runs ahead by
/// a round so that times arrive out of order at a key's owner. Returns the
/// output's changes per time.
fn run_rounds<I, O>(
    rounds: &[Vec<I>],
    workers: usize,
    build: Build<I, O>,
) -> Changes<O>
where
    I: ExchangeData + Send + Sync,
    O: ExchangeData,
{
    let changes: Arc<Mutex<Changes<O>>> = Arc::default();
    let c = changes.clone();
    let rounds = Arc::new(rounds.to_vec());
    timely::execute(timely::Config::process(workers), move |worker| {
        let c = c.clone();
        let mut input = worker.dataflow::<u64, _, _>(|scope| {
            let (input, coll) = scope.new_collection::<I, isize>();
            build(coll).sink_by_time("Out", SinkTarget::Worker(0), move |ev| {
                if let SinkEvent::Updates { time, updates } = ev {
                    c.lock().unwrap().insert(*time, updates.to_vec());
                }
            });
            input
        });
        for (i, round) in rounds.iter().enumerate() {
            input.advance_to(i as u64);
            for (j, d) in round.iter().enumerate() {
                if j % worker.peers() == worker.index() {
                    input.insert(d.clone());
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
    changes
}

/// The accumulated output after each of `times` times, as a map: every
/// `(key, value)` must be present exactly once.
fn accumulated<K: Ord + Copy, V: Copy>(
    changes: &Changes<(K, V)>,
    times: usize,
) -> Vec<BTreeMap<K, V>>
where
    (K, V): Ord,
{
    let mut acc: BTreeMap<(K, V), isize> = BTreeMap::new();
    (0..times as u64)
        .map(|t| {
            for (d, r) in changes.get(&t).into_iter().flatten() {
                *acc.entry(*d).or_default() += r;
            }
            acc.retain(|_, r| *r != 0);
            acc.iter()
                .map(|(&(k, v), &r)| {
                    assert_eq!(r, 1, "one value per key (time {t})");
                    (k, v)
                })
                .collect()
        })
        .collect()
}

fn check(seed: u64, workers: usize) {
    let rounds = rounds(seed);
    let want = naive(&rounds);
    let mono = run_rounds(&rounds, workers, |c| c.monotone_min("Min"));
    let general = run_rounds(&rounds, workers, |c| {
        c.reduce(|_k, input, output| output.push((*input[0].0, 1)))
    });
    assert_eq!(
        mono, general,
        "seed {seed}, {workers} workers: as a general reduce"
    );
    for (t, (got, w)) in accumulated(&mono, want.len()).iter().zip(&want).enumerate() {
        assert_eq!(got, w, "seed {seed}, {workers} workers, time {t}");
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
    let changes = run_rounds(&all, workers, |c| c.monotone_first("First"));
    for (t, (got, w)) in accumulated(&changes, want.len())
        .iter()
        .zip(&want)
        .enumerate()
    {
        assert_eq!(got, w, "seed {seed}, {workers} workers, time {t}");
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

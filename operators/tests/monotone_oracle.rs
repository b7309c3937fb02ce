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
use weft_operators::monotone::{MonotoneFirst, MonotoneLimits, MonotoneMin};

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
) -> BTreeMap<u64, Vec<(O, isize)>>
where
    I: ExchangeData + Send + Sync,
    O: ExchangeData,
{
    let changes: Arc<Mutex<BTreeMap<u64, Vec<(O, isize)>>>> = Arc::default();
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
    changes: &BTreeMap<u64, Vec<((K, V), isize)>>,
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

/// `monotone_limits`: items `(a, b, explicit)` are edges between nodes
/// `a` and `b`; an explicit edge has no limits; otherwise the end at `a`
/// is in group `b % 3` (the other node's "kind") and the end at `b` in
/// group `a % 3`; groups 0 and 1 keep 1 and 2 items, group 2 keeps all
/// (no end). Ranks are random and only move down (through
/// `monotone_min`, as identity feeds it). After every round, the
/// accumulated output equals a naive recomputation: per end, the least
/// `limit` items by `(rank, item)`; the items every end keeps. At 1 and 4
/// workers; nodes may repeat (`a == b`: one end, twice).
type Edge = (u8, u8, bool);

fn edge_ends(&(a, b, x): &Edge) -> [Option<(u8, u8)>; 2] {
    let end = |n: u8, other: u8| (!x && other % 3 != 2).then_some((n, other % 3));
    [end(a, b), end(b, a)]
}

fn group_limit(g: &u8) -> usize {
    usize::from(*g) + 1
}

fn limit_rounds(seed: u64) -> Vec<Vec<(Edge, i32)>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..20)
        .map(|_| {
            (0..rng.gen_range(0..12))
                .map(|_| {
                    let e = (rng.gen_range(0..6), rng.gen_range(0..6), rng.gen_bool(0.15));
                    (e, rng.gen_range(0..40))
                })
                .collect()
        })
        .collect()
}

fn naive_limits(rounds: &[Vec<(Edge, i32)>]) -> Vec<BTreeMap<Edge, i32>> {
    naive(rounds)
        .into_iter()
        .map(|rank| {
            let mut at: BTreeMap<(u8, u8), Vec<(i32, Edge)>> = BTreeMap::new();
            for (e, r) in &rank {
                let [a, b] = edge_ends(e);
                let b = b.filter(|b| a != Some(*b));
                for end in a.into_iter().chain(b) {
                    at.entry(end).or_default().push((*r, *e));
                }
            }
            for (end, list) in at.iter_mut() {
                list.sort();
                list.truncate(group_limit(&end.1));
            }
            rank.iter()
                .filter(|(e, r)| {
                    edge_ends(e)
                        .into_iter()
                        .flatten()
                        .all(|end| at[&end].contains(&(**r, **e)))
                })
                .map(|(e, r)| (*e, *r))
                .collect()
        })
        .collect()
}

fn check_limits(seed: u64, workers: usize) {
    let all = limit_rounds(seed);
    let want = naive_limits(&all);
    let changes = run_rounds(&all, workers, |c| {
        c.monotone_min("Rank")
            .monotone_limits("Limits", edge_ends, group_limit)
    });
    for (t, (got, w)) in accumulated(&changes, want.len())
        .iter()
        .zip(&want)
        .enumerate()
    {
        assert_eq!(got, w, "seed {seed}, {workers} workers, time {t}");
    }
}

#[test]
fn limits_equal_the_naive_limits_one_worker() {
    for seed in 0..40 {
        check_limits(seed, 1);
    }
}

#[test]
fn limits_equal_the_naive_limits_four_workers() {
    for seed in 0..40 {
        check_limits(seed, 4);
    }
}

#[test]
#[should_panic(expected = "an item's rank moved other than down")]
fn limits_refuse_a_rank_that_moves_up() {
    timely::execute_directly(|worker| {
        let mut input = worker.dataflow::<u64, _, _>(|scope| {
            let (input, coll) = scope.new_collection::<(Edge, i32), isize>();
            coll.monotone_limits("Limits", edge_ends, group_limit);
            input
        });
        input.insert(((1, 2, false), 5));
        input.advance_to(1);
        input.remove(((1, 2, false), 5));
        input.insert(((1, 2, false), 7));
    });
}

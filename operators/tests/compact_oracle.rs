//! `compact_reduce` against a from-scratch model: after every logical time,
//! the accumulated input per key is recomputed from all updates so far, and
//! the expected output is `logic` over each key's sorted, non-zero values.
//! The logic is order-sensitive (a rolling hash of values and counts), gives
//! several outputs per key with diffs other than 1, and sees negative counts,
//! so a wrong value set, order, count or stale output shows.
//!
//! Inputs are random (seeded; the seed is printed on failure and
//! `COMPACT_SEED=n` reruns one seed): insertions, retractions (also below
//! zero), updates cancelling within one time, keys that empty and come back,
//! over many logical times, at 1 and 4 workers, fed from one worker or all.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use differential_dataflow::input::Input;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use weft_operators::compact::CompactReduce;

type Key = u16;
type Value = u32;
type Output = (u64, isize);

#[derive(Clone, Debug)]
struct Case {
    times: Vec<(u64, Vec<((Key, Value), isize)>)>,
}

fn generate(seed: u64) -> Case {
    let mut rng = SmallRng::seed_from_u64(seed);
    let keys: Key = rng.gen_range(1..30);
    let values: Value = rng.gen_range(1..12);
    let mut present: Vec<(Key, Value)> = Vec::new();
    let mut times = Vec::new();
    let mut time = rng.gen_range(0..3u64);
    for _ in 0..rng.gen_range(1..30) {
        let mut updates = Vec::new();
        for _ in 0..rng.gen_range(0..12) {
            match rng.gen_range(0..100) {
                0..=49 => {
                    let x = (rng.gen_range(0..keys), rng.gen_range(0..values));
                    let r = rng.gen_range(1..3);
                    present.push(x);
                    updates.push((x, r));
                }
                50..=79 if !present.is_empty() => {
                    let x = present.swap_remove(rng.gen_range(0..present.len()));
                    updates.push((x, -1));
                }
                80..=89 => {
                    // A retraction that may take a count below zero.
                    let x = (rng.gen_range(0..keys), rng.gen_range(0..values));
                    updates.push((x, -1));
                }
                _ => {
                    let x = (rng.gen_range(0..keys), rng.gen_range(0..values));
                    updates.push((x, 1));
                    updates.push((x, -1));
                }
            }
        }
        times.push((time, updates));
        time += rng.gen_range(1..3);
    }
    Case { times }
}

fn logic(key: &Key, input: &[(&Value, isize)], out: &mut Vec<(Output, isize)>) {
    let mut h = u64::from(*key);
    for (v, r) in input {
        h = h
            .wrapping_mul(31)
            .wrapping_add(u64::from(**v) * 7)
            .wrapping_add(*r as u64);
    }
    out.push(((h, 0), 1));
    let total: isize = input.iter().map(|(_, r)| r).sum();
    if total != 0 {
        out.push(((u64::from(*input[0].0), total), 2));
    }
}

fn oracle(case: &Case) -> Vec<(u64, BTreeMap<(Key, Output), isize>)> {
    let mut acc: BTreeMap<(Key, Value), isize> = BTreeMap::new();
    let mut out = Vec::new();
    for (time, updates) in &case.times {
        for (x, r) in updates {
            *acc.entry(*x).or_default() += r;
        }
        let mut per: BTreeMap<Key, Vec<(&Value, isize)>> = BTreeMap::new();
        for ((k, v), r) in acc.iter().filter(|(_, r)| **r != 0) {
            per.entry(*k).or_default().push((v, *r));
        }
        let mut want: BTreeMap<(Key, Output), isize> = BTreeMap::new();
        for (k, input) in &per {
            let mut o = Vec::new();
            logic(k, input, &mut o);
            for (x, r) in o {
                *want.entry((*k, x)).or_default() += r;
            }
        }
        want.retain(|_, r| *r != 0);
        out.push((*time, want));
    }
    out
}

type Out = Arc<Mutex<Vec<((Key, Output), u64, isize)>>>;

fn run(case: &Case, workers: usize, all_feed: bool) -> Out {
    let out: Out = Default::default();
    let log = out.clone();
    let case = Arc::new(case.clone());
    timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let log = log.clone();
        let mut input = worker.dataflow::<u64, _, _>(move |scope| {
            let (input, pairs) = scope.new_collection::<(Key, Value), isize>();
            pairs
                .compact_reduce("Compact", logic)
                .inspect(move |x| log.lock().unwrap().push(*x));
            input
        });
        for (time, updates) in case.times.iter() {
            input.advance_to(*time);
            for (i, (x, r)) in updates.iter().enumerate() {
                let mine = if all_feed {
                    i % peers == index
                } else {
                    index == 0
                };
                if mine {
                    input.update(*x, *r);
                }
            }
            worker.step();
        }
    })
    .expect("timely runs");
    out
}

fn check(seed: u64, workers: usize, all_feed: bool) -> Result<(), String> {
    let case = generate(seed);
    let model = oracle(&case);
    let got = run(&case, workers, all_feed).lock().unwrap().clone();
    let mut per_time: BTreeMap<(u64, (Key, Output)), usize> = BTreeMap::new();
    for (o, t, r) in &got {
        if *r == 0 {
            return Err(format!("a zero diff at time {t}: {o:?}"));
        }
        *per_time.entry((*t, *o)).or_default() += 1;
    }
    if let Some(((t, o), _)) = per_time.iter().find(|(_, n)| **n > 1) {
        return Err(format!("not consolidated at time {t}: {o:?}"));
    }
    for (time, want) in &model {
        let mut acc: BTreeMap<(Key, Output), isize> = BTreeMap::new();
        for (o, t, r) in &got {
            if t <= time {
                *acc.entry(*o).or_default() += r;
            }
        }
        acc.retain(|_, r| *r != 0);
        if acc != *want {
            return Err(format!(
                "output differs at time {time}:\n got  {acc:?}\n want {want:?}"
            ));
        }
    }
    Ok(())
}

fn seeds(default: std::ops::Range<u64>) -> Vec<u64> {
    match std::env::var("COMPACT_SEED") {
        Ok(s) => vec![s.parse().expect("COMPACT_SEED is a number")],
        Err(_) => default.collect(),
    }
}

#[test]
fn compact_reduce_matches_recomputation_one_worker() {
    for seed in seeds(0..1500) {
        if let Err(e) = check(seed, 1, false) {
            panic!("seed {seed} (rerun with COMPACT_SEED={seed}), 1 worker: {e}");
        }
    }
}

#[test]
fn compact_reduce_matches_recomputation_four_workers() {
    for seed in seeds(1000..1200) {
        for all_feed in [false, true] {
            if let Err(e) = check(seed, 4, all_feed) {
                panic!(
                    "seed {seed} (rerun with COMPACT_SEED={seed}), 4 workers, fed from {}: {e}",
                    if all_feed { "all" } else { "one" }
                );
            }
        }
    }
}

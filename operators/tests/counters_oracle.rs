//! Oracle test for `Counts` differences and `slot_totals`: random updates
//! of `(key, slot)` counts (insertions and retractions, totals that return
//! to zero or go below it) spread over times and workers, first directly and
//! then through an arrangement joined with a `key → group` mapping that
//! changes over time (so counts move between groups, as a profile merge or
//! split moves an anchor's counts). The accumulated output at every time
//! equals a naive recomputation of every non-zero total, at 1 and 3 workers.
//! Third, as a job names its count rows: `row_totals` arranged, joined with a
//! changing one-to-many `key → tag` mapping and spread back into slots
//! (`slot_changes`), which must give every current tag of a key the key's
//! totals.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use differential_dataflow::input::Input;
use differential_dataflow::AsCollection;
use rand::{Rng, SeedableRng};
use timely::dataflow::operators::vec::Map as _;
use weft_operators::by_time::{SinkByTime, SinkEvent, SinkTarget};
use weft_operators::counters::{Counts, RowTotals, SlotChanges, SlotTotals};

const ROUNDS: usize = 20;

/// One round: count updates `(key, slot, diff)` and mapping changes
/// `(key, new group)`.
struct Round {
    counts: Vec<(u8, u32, i64)>,
    moves: Vec<(u8, u8)>,
}

fn rounds(seed: u64) -> Vec<Round> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..ROUNDS)
        .map(|_| Round {
            counts: (0..rng.gen_range(0..14))
                .map(|_| {
                    let d = if rng.gen_bool(0.3) {
                        -rng.gen_range(1..3)
                    } else {
                        rng.gen_range(1..3)
                    };
                    (rng.gen_range(0..8), rng.gen_range(0..5), d)
                })
                .collect(),
            moves: (0..rng.gen_range(0..3))
                .map(|_| (rng.gen_range(0..8), rng.gen_range(0..4)))
                .collect(),
        })
        .collect()
}

type Totals = BTreeMap<(u32, u8), i64>;

/// The name of `key`'s tag `tag` (a key has any number of tags; a move
/// `(key, g)` toggles its tag `g`).
fn tagged(key: u8, tag: u8) -> u8 {
    key * 4 + tag
}

/// After each round: the non-zero totals per `(slot, key)`, per
/// `(slot, group)` (a key without a group yet counts nowhere), and per
/// `(slot, tagged(key, tag))` for every current tag of the key.
fn naive(rounds: &[Round]) -> Vec<(Totals, Totals, Totals)> {
    let mut by_key: BTreeMap<(u32, u8), i64> = BTreeMap::new();
    let mut group: BTreeMap<u8, u8> = BTreeMap::new();
    let mut tags: std::collections::BTreeSet<(u8, u8)> = Default::default();
    rounds
        .iter()
        .map(|r| {
            for &(k, s, d) in &r.counts {
                *by_key.entry((s, k)).or_default() += d;
            }
            for &(k, g) in &r.moves {
                group.insert(k, g);
                if !tags.remove(&(k, g)) {
                    tags.insert((k, g));
                }
            }
            by_key.retain(|_, n| *n != 0);
            let mut by_group: Totals = BTreeMap::new();
            for (&(s, k), &n) in &by_key {
                if let Some(&g) = group.get(&k) {
                    *by_group.entry((s, g)).or_default() += n;
                }
            }
            by_group.retain(|_, n| *n != 0);
            let mut by_tag: Totals = BTreeMap::new();
            for (&(s, k), &n) in &by_key {
                for &(_, g) in tags.range((k, 0)..=(k, u8::MAX)) {
                    by_tag.insert((s, tagged(k, g)), n);
                }
            }
            (by_key.clone(), by_group, by_tag)
        })
        .collect()
}

type Changes = Arc<Mutex<BTreeMap<u64, Vec<((u32, (u8, i64)), isize)>>>>;

fn sink(changes: Changes) -> impl FnMut(SinkEvent<'_, u64, (u32, (u8, i64)), isize>) {
    move |ev| {
        if let SinkEvent::Updates { time, updates } = ev {
            changes.lock().unwrap().insert(*time, updates.to_vec());
        }
    }
}

type Outputs = BTreeMap<u64, Vec<((u32, (u8, i64)), isize)>>;

fn run(seed: u64, workers: usize) -> (Outputs, Outputs, Outputs) {
    let all = Arc::new(rounds(seed));
    let (direct, joined, named): (Changes, Changes, Changes) =
        (Arc::default(), Arc::default(), Arc::default());
    let (d, j, n) = (direct.clone(), joined.clone(), named.clone());
    timely::execute(timely::Config::process(workers), move |worker| {
        let (d, j, n) = (d.clone(), j.clone(), n.clone());
        let (mut counts, mut groups, mut tags) = worker.dataflow::<u64, _, _>(|scope| {
            let (counts, keys) = scope.new_collection::<(u8, u32), isize>();
            let (groups, group_of) = scope.new_collection::<(u8, u8), isize>();
            let (tags, tags_of) = scope.new_collection::<(u8, u8), isize>();
            // Each `(key, slot)` record becomes the key with a one-slot count.
            let keys = keys
                .inner
                .map(|((k, s), t, r)| (k, t, Counts::one(s, r as i64)))
                .as_collection();
            keys.clone().slot_totals("Direct").sink_by_time(
                "Direct",
                SinkTarget::Worker(0),
                sink(d),
            );
            keys.clone()
                .arrange_by_self()
                .join_core(group_of.arrange_by_key(), |_k, (), g| Some(*g))
                .slot_totals("Joined")
                .sink_by_time("Joined", SinkTarget::Worker(0), sink(j));
            keys.row_totals("Rows")
                .arrange_by_key()
                .join_core(tags_of.arrange_by_key(), |k, row, g| {
                    Some((tagged(*k, *g), row.clone()))
                })
                .slot_changes("Named")
                .sink_by_time("Named", SinkTarget::Worker(0), sink(n));
            (counts, groups, tags)
        });
        // Each worker applies its share of every round; worker 0 runs ahead
        // by a round so that times arrive out of order at a key's owner.
        let mut group: BTreeMap<u8, u8> = BTreeMap::new();
        let mut tag: std::collections::BTreeSet<(u8, u8)> = Default::default();
        for (i, round) in all.iter().enumerate() {
            counts.advance_to(i as u64);
            groups.advance_to(i as u64);
            tags.advance_to(i as u64);
            for (n, &(k, s, r)) in round.counts.iter().enumerate() {
                if n % worker.peers() == worker.index() {
                    counts.update((k, s), r as isize);
                }
            }
            // Every worker tracks the mapping; worker 0 applies its changes.
            for &(k, g) in &round.moves {
                if worker.index() == 0 {
                    if let Some(old) = group.get(&k) {
                        groups.remove((k, *old));
                    }
                    groups.insert((k, g));
                    if tag.contains(&(k, g)) {
                        tags.remove((k, g));
                    } else {
                        tags.insert((k, g));
                    }
                }
                group.insert(k, g);
                if !tag.remove(&(k, g)) {
                    tag.insert((k, g));
                }
            }
            if worker.index() != 0 {
                worker.step();
            }
        }
        counts.close();
        groups.close();
        tags.close();
        while worker.step() {}
    })
    .unwrap();
    let d = direct.lock().unwrap().clone();
    let j = joined.lock().unwrap().clone();
    let n = named.lock().unwrap().clone();
    (d, j, n)
}

/// The accumulated `(slot, key)` totals after each round.
fn accumulate(changes: &BTreeMap<u64, Vec<((u32, (u8, i64)), isize)>>, what: &str) -> Vec<Totals> {
    let mut acc: BTreeMap<(u32, u8, i64), isize> = BTreeMap::new();
    (0..ROUNDS as u64)
        .map(|t| {
            for (&(s, (k, n)), &r) in changes.get(&t).into_iter().flatten().map(|(d, r)| (d, r)) {
                *acc.entry((s, k, n)).or_default() += r;
            }
            acc.retain(|_, r| *r != 0);
            acc.iter()
                .map(|(&(s, k, n), &r)| {
                    assert_eq!(r, 1, "{what}: one total per slot and key at time {t}");
                    assert_ne!(n, 0, "{what}: a zero total is no record");
                    ((s, k), n)
                })
                .collect()
        })
        .collect()
}

fn check(seed: u64, workers: usize) {
    let want = naive(&rounds(seed));
    let (direct, joined, named) = run(seed, workers);
    let direct = accumulate(&direct, "direct");
    let joined = accumulate(&joined, "joined");
    let named = accumulate(&named, "named");
    for (t, (by_key, by_group, by_tag)) in want.iter().enumerate() {
        assert_eq!(
            &direct[t], by_key,
            "seed {seed}, {workers} workers, time {t}: per key"
        );
        assert_eq!(
            &joined[t], by_group,
            "seed {seed}, {workers} workers, time {t}: per group"
        );
        assert_eq!(
            &named[t], by_tag,
            "seed {seed}, {workers} workers, time {t}: per tag"
        );
    }
}

#[test]
fn equals_the_naive_totals_one_worker() {
    for seed in common::seeds("COUNTERS_SEED", 0..30) {
        check(seed, 1);
    }
}

#[test]
fn equals_the_naive_totals_three_workers() {
    for seed in common::seeds("COUNTERS_SEED", 0..30) {
        check(seed, 3);
    }
}

//! `cluster_reduce` against a from-scratch model: after every logical time, a
//! union-find over the accumulated edges and item nodes gives the components,
//! and the expected output is `logic` over each component's sorted distinct
//! items. The logic is order-sensitive (it folds the items in order) and gives
//! several outputs per component, so a wrong item set, order or component
//! shows.
//!
//! Graphs are random (seeded; the seed is printed on failure and
//! `CLUSTERS_SEED=n` reruns one seed): edges inserted, duplicated (both
//! directions), retracted (splits, also of long paths), self-loops, items
//! coming and going (nodes that leave the graph), several updates cancelling
//! within one time, over many logical times, at 1 and 4 workers, fed from one
//! worker or from all.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use differential_dataflow::input::Input;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use weft_operators::clusters::ClusterReduce;

type Node = u32;
type Item = (u8, u16);
type Output = (u64, Item, usize);

#[derive(Clone, Debug)]
enum Update {
    Edge((Node, Node), isize),
    Item((Node, Item), isize),
}

#[derive(Clone, Debug)]
struct Case {
    times: Vec<(u64, Vec<Update>)>,
}

/// One of the present keys (positive count), at random, with its count lowered.
fn take_one<K: Copy + Ord>(rng: &mut SmallRng, counts: &mut BTreeMap<K, isize>) -> Option<K> {
    let present: Vec<K> = counts
        .iter()
        .filter(|(_, c)| **c > 0)
        .map(|(k, _)| *k)
        .collect();
    let k = *present.get(rng.gen_range(0..present.len().max(1)))?;
    *counts.get_mut(&k).expect("present") -= 1;
    Some(k)
}

fn generate(seed: u64) -> Case {
    let mut rng = SmallRng::seed_from_u64(seed);
    let n: Node = rng.gen_range(2..40);
    let mut edges: BTreeMap<(Node, Node), isize> = BTreeMap::new();
    let mut items: BTreeMap<(Node, Item), isize> = BTreeMap::new();
    let mut times = Vec::new();
    let mut time = rng.gen_range(0..3u64);
    let density = rng.gen_range(1..6);
    for _ in 0..rng.gen_range(1..25) {
        let mut updates = Vec::new();
        for _ in 0..rng.gen_range(0..3 * density) {
            match rng.gen_range(0..100) {
                0..=39 => {
                    let e = (rng.gen_range(0..n), rng.gen_range(0..n));
                    *edges.entry(e).or_default() += 1;
                    updates.push(Update::Edge(e, 1));
                }
                40..=59 => {
                    if let Some(e) = take_one(&mut rng, &mut edges) {
                        updates.push(Update::Edge(e, -1));
                    }
                }
                60..=84 => {
                    // Items mostly come from a small set, so components share values.
                    let x = (
                        rng.gen_range(0..n),
                        (rng.gen_range(0..4u8), rng.gen_range(0..6u16)),
                    );
                    *items.entry(x).or_default() += 1;
                    updates.push(Update::Item(x, 1));
                }
                85..=94 => {
                    if let Some(x) = take_one(&mut rng, &mut items) {
                        updates.push(Update::Item(x, -1));
                    }
                }
                _ => {
                    // An insertion and its retraction within one time.
                    let e = (rng.gen_range(0..n), rng.gen_range(0..n));
                    updates.push(Update::Edge(e, 1));
                    updates.push(Update::Edge(e, -1));
                }
            }
        }
        times.push((time, updates));
        time += rng.gen_range(1..3);
    }
    Case { times }
}

/// An order-sensitive summary of a component: a rolling hash of its items in
/// order, its least item and its size; plus one output per distinct kind.
fn logic(items: &[Item], out: &mut Vec<Output>) {
    let mut h = 17u64;
    for (a, b) in items {
        h = h
            .wrapping_mul(31)
            .wrapping_add(u64::from(*a) * 1000 + u64::from(*b));
    }
    out.push((h, items[0], items.len()));
    let kinds: BTreeSet<u8> = items.iter().map(|(a, _)| *a).collect();
    for k in kinds {
        out.push((u64::from(k), (k, 0), 0));
    }
}

struct UnionFind(BTreeMap<Node, Node>);

impl UnionFind {
    fn find(&mut self, x: Node) -> Node {
        let p = *self.0.entry(x).or_insert(x);
        if p == x {
            return x;
        }
        let r = self.find(p);
        self.0.insert(x, r);
        r
    }
    fn union(&mut self, a: Node, b: Node) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            self.0.insert(ra.max(rb), ra.min(rb));
        }
    }
}

fn oracle(case: &Case) -> Vec<(u64, BTreeMap<Output, isize>)> {
    let mut edges: BTreeMap<(Node, Node), isize> = BTreeMap::new();
    let mut items: BTreeMap<(Node, Item), isize> = BTreeMap::new();
    let mut out = Vec::new();
    for (time, updates) in &case.times {
        for u in updates {
            match u {
                Update::Edge(e, r) => *edges.entry(*e).or_default() += r,
                Update::Item(x, r) => *items.entry(*x).or_default() += r,
            }
        }
        // Edges (a, b) and (b, a) are one edge; its multiplicity is their sum.
        let mut undirected: BTreeMap<(Node, Node), isize> = BTreeMap::new();
        for (&(a, b), &c) in &edges {
            *undirected.entry((a.min(b), a.max(b))).or_default() += c;
        }
        let mut uf = UnionFind(BTreeMap::new());
        for (&(a, b), _) in undirected.iter().filter(|(_, c)| **c > 0) {
            uf.union(a, b);
        }
        let mut per: BTreeMap<Node, BTreeSet<Item>> = BTreeMap::new();
        for (&(n, v), _) in items.iter().filter(|(_, c)| **c > 0) {
            per.entry(uf.find(n)).or_default().insert(v);
        }
        let mut want: BTreeMap<Output, isize> = BTreeMap::new();
        for set in per.values() {
            let items: Vec<Item> = set.iter().copied().collect();
            let mut o = Vec::new();
            logic(&items, &mut o);
            for x in o {
                *want.entry(x).or_default() += 1;
            }
        }
        out.push((*time, want));
    }
    out
}

type Out = Arc<Mutex<Vec<(Output, u64, isize)>>>;

fn run(case: &Case, workers: usize, all_feed: bool) -> Out {
    let out: Out = Default::default();
    let log = out.clone();
    let case = Arc::new(case.clone());
    timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let log = log.clone();
        let (mut edges, mut items) = worker.dataflow::<u64, _, _>(move |scope| {
            let (ei, edges) = scope.new_collection::<(Node, Node), isize>();
            let (ii, items) = scope.new_collection::<(Node, Item), isize>();
            edges
                .cluster_reduce(items, "Clusters", logic)
                .inspect(move |x| log.lock().unwrap().push(*x));
            (ei, ii)
        });
        for (time, updates) in case.times.iter() {
            edges.advance_to(*time);
            items.advance_to(*time);
            for (i, u) in updates.iter().enumerate() {
                let mine = if all_feed {
                    i % peers == index
                } else {
                    index == 0
                };
                if !mine {
                    continue;
                }
                match u {
                    Update::Edge(e, r) => edges.update(*e, *r),
                    Update::Item(x, r) => items.update(*x, *r),
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
    // Consolidated within each time: no two updates of one record at one time.
    let mut per_time: BTreeMap<(u64, Output), usize> = BTreeMap::new();
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
        let mut acc: BTreeMap<Output, isize> = BTreeMap::new();
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

#[test]
fn cluster_reduce_matches_recomputation_one_worker() {
    for seed in common::seeds("CLUSTERS_SEED", 0..1500) {
        if let Err(e) = check(seed, 1, false) {
            panic!("seed {seed} (rerun with CLUSTERS_SEED={seed}), 1 worker: {e}");
        }
    }
}

#[test]
fn cluster_reduce_matches_recomputation_four_workers() {
    for seed in common::seeds("CLUSTERS_SEED", 1000..1200) {
        for all_feed in [false, true] {
            if let Err(e) = check(seed, 4, all_feed) {
                panic!(
                    "seed {seed} (rerun with CLUSTERS_SEED={seed}), 4 workers, fed from {}: {e}",
                    if all_feed { "all" } else { "one" }
                );
            }
        }
    }
}

#[test]
fn a_path_split_in_the_middle_gives_two_components() {
    // 0-1-2-3-4-5 with an item on each node, then remove (2, 3).
    let mut first: Vec<Update> = (0..5).map(|i| Update::Edge((i, i + 1), 1)).collect();
    first.extend((0..6).map(|i| Update::Item((i, (0, i as u16)), 1)));
    let case = Case {
        times: vec![
            (0, first),
            (1, vec![Update::Edge((3, 2), -1), Update::Edge((2, 3), 1)]),
        ],
    };
    // (3, 2) retracted and (2, 3) inserted: the same undirected edge, no change.
    let model = oracle(&case);
    assert_eq!(model[0].1, model[1].1);
    let case2 = Case {
        times: vec![case.times[0].clone(), (1, vec![Update::Edge((2, 3), -1)])],
    };
    for workers in [1, 4] {
        let got = run(&case2, workers, false).lock().unwrap().clone();
        let at1: BTreeSet<Output> = {
            let mut acc: BTreeMap<Output, isize> = BTreeMap::new();
            for (o, _, r) in &got {
                *acc.entry(*o).or_default() += r;
            }
            acc.into_iter()
                .filter(|(_, r)| *r != 0)
                .map(|(o, _)| o)
                .collect()
        };
        let sizes: Vec<usize> = at1.iter().filter(|o| o.2 > 0).map(|o| o.2).collect();
        assert_eq!(sizes, vec![3, 3], "two halves of three items: {at1:?}");
    }
}

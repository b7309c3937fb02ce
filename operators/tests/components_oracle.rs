//! `connected_components`, `connected_components_ranked` and
//! `component_changes` against a from-scratch model: after every logical time,
//! a union-find over the accumulated edges gives each node's component, the
//! expected labels follow the module's definition, and merges and splits are
//! derived from the model's maps before and after the time.
//!
//! Graphs are random (seeded; the seed is printed on failure and
//! `COMPONENTS_SEED=n` reruns one seed): edges inserted, duplicated and
//! retracted (splits), self-loops, isolated nodes coming and going, and ranks
//! changing, over many logical times, at 1 and 4 workers, fed from one worker
//! or from all.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use differential_dataflow::input::Input;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use weft_operators::components::{
    ChangeKind, ComponentChange, ComponentChanges, ConnectedComponents,
};

type Node = u32;

/// One input update at a logical time.
#[derive(Clone, Debug)]
enum Update {
    Edge((Node, Node), isize),
    Node(Node, isize),
    Rank((Node, i64), isize),
}

#[derive(Clone, Debug)]
struct Case {
    /// Updates per logical time, in increasing time order.
    times: Vec<(u64, Vec<Update>)>,
}

fn generate(seed: u64) -> Case {
    let mut rng = SmallRng::seed_from_u64(seed);
    let n: Node = rng.gen_range(2..40);
    let mut edges: BTreeMap<(Node, Node), isize> = BTreeMap::new();
    let mut nodes: BTreeMap<Node, isize> = BTreeMap::new();
    let mut ranks: BTreeMap<Node, i64> = BTreeMap::new();
    let mut times = Vec::new();
    let mut time = rng.gen_range(0..3u64);
    let steps = rng.gen_range(1..25);
    let density = rng.gen_range(1..6);
    for _ in 0..steps {
        let mut updates = Vec::new();
        for _ in 0..rng.gen_range(0..3 * density) {
            let roll = rng.gen_range(0..100);
            match roll {
                0..=44 => {
                    let e = (rng.gen_range(0..n), rng.gen_range(0..n));
                    *edges.entry(e).or_default() += 1;
                    updates.push(Update::Edge(e, 1));
                }
                45..=74 => {
                    // Retract an edge present now (never below zero).
                    let present: Vec<_> = edges
                        .iter()
                        .filter(|(_, c)| **c > 0)
                        .map(|(e, _)| *e)
                        .collect();
                    if let Some(e) = present.get(rng.gen_range(0..present.len().max(1))) {
                        *edges.get_mut(e).unwrap() -= 1;
                        updates.push(Update::Edge(*e, -1));
                    }
                }
                75..=84 => {
                    let v = rng.gen_range(0..n);
                    let c = nodes.entry(v).or_default();
                    let r = if *c > 0 && rng.gen_bool(0.5) { -1 } else { 1 };
                    *c += r;
                    updates.push(Update::Node(v, r));
                }
                _ => {
                    let v = rng.gen_range(0..n);
                    let new = rng.gen_range(0..20);
                    if let Some(old) = ranks.insert(v, new) {
                        updates.push(Update::Rank((v, old), -1));
                    }
                    updates.push(Update::Rank((v, new), 1));
                }
            }
        }
        times.push((time, updates));
        time += rng.gen_range(1..3);
    }
    Case { times }
}

/// Union-find with path halving.
struct UnionFind(BTreeMap<Node, Node>);

impl UnionFind {
    fn find(&mut self, x: Node) -> Node {
        let mut x = *self.0.entry(x).or_insert(x);
        loop {
            let p = self.0[&x];
            if p == x {
                return x;
            }
            let gp = self.0[&p];
            self.0.insert(x, gp);
            x = gp;
        }
    }
    fn union(&mut self, a: Node, b: Node) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            self.0.insert(ra.max(rb), ra.min(rb));
        }
    }
}

type Map = BTreeMap<Node, Node>;

/// The model after each time: (plain labels, ranked labels).
fn oracle(case: &Case) -> Vec<(u64, Map, Map)> {
    let mut edges: BTreeMap<(Node, Node), isize> = BTreeMap::new();
    let mut nodes: BTreeMap<Node, isize> = BTreeMap::new();
    let mut ranks: BTreeMap<(Node, i64), isize> = BTreeMap::new();
    let mut out = Vec::new();
    for (time, updates) in &case.times {
        for u in updates {
            match u {
                Update::Edge(e, r) => *edges.entry(*e).or_default() += r,
                Update::Node(v, r) => *nodes.entry(*v).or_default() += r,
                Update::Rank(x, r) => *ranks.entry(*x).or_default() += r,
            }
        }
        let mut uf = UnionFind(BTreeMap::new());
        let mut all = BTreeSet::new();
        for (&(a, b), _) in edges.iter().filter(|(_, c)| **c > 0) {
            uf.union(a, b);
            all.insert(a);
            all.insert(b);
        }
        all.extend(nodes.iter().filter(|(_, c)| **c > 0).map(|(v, _)| *v));
        // Plain: the union-find root is the least node (union keeps the smaller root).
        let plain: Map = all.iter().map(|&v| (v, uf.find(v))).collect();
        // Ranked: per component, the ranked node with the least (rank, node).
        let mut best: BTreeMap<Node, (i64, Node)> = BTreeMap::new();
        for (&(v, k), _) in ranks.iter().filter(|(_, c)| **c > 0) {
            let root = uf.find(v);
            let e = best.entry(root).or_insert((k, v));
            *e = (*e).min((k, v));
        }
        let mut ranked_nodes: BTreeSet<Node> = all.clone();
        ranked_nodes.extend(ranks.iter().filter(|(_, c)| **c > 0).map(|((v, _), _)| *v));
        let ranked: Map = ranked_nodes
            .iter()
            .filter_map(|&v| best.get(&uf.find(v)).map(|&(_, l)| (v, l)))
            .collect();
        out.push((*time, plain, ranked));
    }
    out
}

/// Merges and splits between two maps, by the module's definition.
fn changes(before: &Map, after: &Map) -> Vec<ComponentChange<Node>> {
    let mut flow: BTreeMap<(Node, Node), u64> = BTreeMap::new();
    for (v, b) in before {
        if let Some(a) = after.get(v) {
            *flow.entry((*b, *a)).or_default() += 1;
        }
    }
    let mut out = Vec::new();
    let labels: BTreeSet<Node> = before.values().chain(after.values()).copied().collect();
    for x in labels {
        let sources: Vec<_> = flow.iter().filter(|((_, a), _)| *a == x).collect();
        if sources.len() >= 2 {
            for ((q, _), n) in &sources {
                if *q != x {
                    out.push(ComponentChange {
                        kind: ChangeKind::Merged,
                        from: *q,
                        into: x,
                        nodes: **n,
                    });
                }
            }
        }
        let targets: Vec<_> = flow.iter().filter(|((b, _), _)| *b == x).collect();
        if targets.len() >= 2 {
            for ((_, r), n) in &targets {
                if *r != x {
                    out.push(ComponentChange {
                        kind: ChangeKind::Split,
                        from: x,
                        into: *r,
                        nodes: **n,
                    });
                }
            }
        }
    }
    out.sort();
    out
}

type Out<D> = Arc<Mutex<Vec<(D, u64, isize)>>>;

struct Outputs {
    plain: Out<(Node, Node)>,
    ranked: Out<(Node, Node)>,
    changes: Out<ComponentChange<Node>>,
}

fn run(case: &Case, workers: usize, all_feed: bool) -> Outputs {
    let outs = Outputs {
        plain: Default::default(),
        ranked: Default::default(),
        changes: Default::default(),
    };
    let (p, k, c) = (
        outs.plain.clone(),
        outs.ranked.clone(),
        outs.changes.clone(),
    );
    let case = Arc::new(case.clone());
    timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let (p, k, c) = (p.clone(), k.clone(), c.clone());
        let (mut edges, mut nodes, mut ranks) = worker.dataflow::<u64, _, _>(move |scope| {
            let (ei, edges) = scope.new_collection::<(Node, Node), isize>();
            let (ni, nodes) = scope.new_collection::<Node, isize>();
            let (ri, ranks) = scope.new_collection::<(Node, i64), isize>();
            let plain = edges.clone().connected_components(nodes);
            plain.clone().inspect(move |x| p.lock().unwrap().push(*x));
            plain
                .component_changes("Changes")
                .inspect(move |x| c.lock().unwrap().push(x.clone()));
            edges
                .connected_components_ranked(ranks)
                .inspect(move |x| k.lock().unwrap().push(*x));
            (ei, ni, ri)
        });
        for (time, updates) in case.times.iter() {
            edges.advance_to(*time);
            nodes.advance_to(*time);
            ranks.advance_to(*time);
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
                    Update::Node(v, r) => nodes.update(*v, *r),
                    Update::Rank(x, r) => ranks.update(*x, *r),
                }
            }
            // Let some times complete while later ones are still open.
            worker.step();
        }
    })
    .expect("timely runs");
    outs
}

fn accumulate<D: Ord + Clone>(updates: &[(D, u64, isize)], upto: u64) -> BTreeMap<D, isize> {
    let mut acc = BTreeMap::new();
    for (d, t, r) in updates {
        if *t <= upto {
            *acc.entry(d.clone()).or_default() += r;
        }
    }
    acc.retain(|_, r| *r != 0);
    acc
}

fn as_counts(m: &Map) -> BTreeMap<(Node, Node), isize> {
    m.iter().map(|(a, b)| ((*a, *b), 1)).collect()
}

fn check(seed: u64, workers: usize, all_feed: bool) -> Result<(), String> {
    let case = generate(seed);
    let model = oracle(&case);
    let outs = run(&case, workers, all_feed);
    let plain = outs.plain.lock().unwrap().clone();
    let ranked = outs.ranked.lock().unwrap().clone();
    let mut got_changes = outs.changes.lock().unwrap().clone();
    got_changes.sort();
    let mut want_changes = Vec::new();
    let mut previous = Map::new();
    for (time, want_plain, want_ranked) in &model {
        let got = accumulate(&plain, *time);
        if got != as_counts(want_plain) {
            return Err(format!(
                "plain labels differ at time {time}:\n got  {got:?}\n want {want_plain:?}"
            ));
        }
        let got = accumulate(&ranked, *time);
        if got != as_counts(want_ranked) {
            return Err(format!(
                "ranked labels differ at time {time}:\n got  {got:?}\n want {want_ranked:?}"
            ));
        }
        for c in changes(&previous, want_plain) {
            want_changes.push((c, *time, 1));
        }
        previous = want_plain.clone();
    }
    want_changes.sort();
    if got_changes != want_changes {
        return Err(format!(
            "merges/splits differ:\n got  {got_changes:?}\n want {want_changes:?}"
        ));
    }
    Ok(())
}

#[test]
fn components_match_union_find_one_worker() {
    for seed in common::seeds("COMPONENTS_SEED", 0..300) {
        if let Err(e) = check(seed, 1, false) {
            panic!("seed {seed} (rerun with COMPONENTS_SEED={seed}), 1 worker: {e}");
        }
    }
}

#[test]
fn components_match_union_find_four_workers() {
    for seed in common::seeds("COMPONENTS_SEED", 1000..1100) {
        for all_feed in [false, true] {
            if let Err(e) = check(seed, 4, all_feed) {
                panic!(
                    "seed {seed} (rerun with COMPONENTS_SEED={seed}), 4 workers, fed from {}: {e}",
                    if all_feed { "all" } else { "one" }
                );
            }
        }
    }
}

#[test]
fn a_chain_splits_in_the_middle_and_each_half_keeps_its_least_node() {
    // 0-1-2-3-4-5, then remove (2, 3): {0,1,2} keeps 0, {3,4,5} becomes 3.
    let mut times = vec![(
        0,
        (0..5)
            .map(|i| Update::Edge((i, i + 1), 1))
            .collect::<Vec<_>>(),
    )];
    times.push((1, vec![Update::Edge((2, 3), -1)]));
    let case = Case { times };
    for workers in [1, 4] {
        let outs = run(&case, workers, false);
        let plain = outs.plain.lock().unwrap().clone();
        let at1 = accumulate(&plain, 1);
        let want: BTreeMap<_, _> = [(0, 0), (1, 0), (2, 0), (3, 3), (4, 3), (5, 3)]
            .into_iter()
            .map(|x| (x, 1))
            .collect();
        assert_eq!(at1, want);
        let changes = outs.changes.lock().unwrap().clone();
        assert_eq!(
            changes,
            vec![(
                ComponentChange {
                    kind: ChangeKind::Split,
                    from: 0,
                    into: 3,
                    nodes: 3
                },
                1,
                1
            )]
        );
    }
}

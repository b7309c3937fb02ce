//! `bench-identity`: identity resolution throughput and merge latency, against
//! hand-written single-thread union-finds on the same input (the COST baseline).
//!
//! ```text
//! cargo run --release -p weft-bench --bin bench-identity -- --profiles 1000000
//! ```
//!
//! Input: `--profiles` people, 70% known users (one `identify` with userId,
//! anonymousId, email and device id: 3 edges) and 30% anonymous visitors (one
//! `page` with anonymousId and device id: 1 edge), at increasing event times.
//! Phases, in one run:
//!
//! 1. **load** (insert-only): every event through `identity` with the default
//!    rules, `--batch` events per logical time; edge updates/s counts the
//!    events' edges.
//! 2. **merge latency**: `--merges` times, one `identify` linking a known user
//!    to an anonymous visitor's profile, alone at a new logical time; the
//!    latency is from insertion until the probe (on every output) passes it.
//! 3. **mixed**: `--rounds` logical times, each inserting `--mixed` new
//!    one-edge events (a user on a new device) and retracting as many earlier
//!    one-edge events (visitors, then earlier inserts): splits and merges.
//! 4. **components**: the load's edges alone through
//!    `weft_operators::components::connected_components`.
//! 5. **COST**: the load's edges (extracted beforehand, as for 4) through a
//!    union-find with path halving and union by size (no rules; a hash map
//!    from 128-bit identifier hashes to dense ids), and through the same
//!    union-find applying the per-profile limits greedily in edge order (the
//!    rules' second step, single-threaded).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use differential_dataflow::input::Input;
use differential_dataflow::VecCollection;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use timely::dataflow::operators::Probe;
use timely::dataflow::ProbeHandle;
use weft_dataflows::event::{format_iso8601, parse_event, Event, ParseContext};
use weft_dataflows::identity::{identity, IdHash, IdentityRules, KindRank};
use weft_dataflows::spec::IdentitySpec;
use weft_operators::components::ConnectedComponents;

/// Benchmark identity resolution against a union-find baseline.
#[derive(Debug, Parser)]
#[command(name = "bench-identity")]
struct Args {
    /// People (profiles before any merge).
    #[arg(long, default_value_t = 1_000_000)]
    profiles: usize,
    /// Timely worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Events per logical time during the load.
    #[arg(long, default_value_t = 100_000)]
    batch: usize,
    /// Single-merge latency samples.
    #[arg(long, default_value_t = 200)]
    merges: usize,
    /// Mixed insert/retract rounds.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Inserts (and as many retractions) per mixed round.
    #[arg(long, default_value_t = 10_000)]
    mixed: usize,
    /// Random seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

const BASE_MS: i64 = 1_767_225_600_000;

fn event(json: &str) -> Event {
    parse_event(json.as_bytes(), &ParseContext::default()).expect("generated events are valid")
}

fn is_user(p: usize) -> bool {
    p % 10 < 7
}

/// Person `p`'s one event.
fn person(p: usize) -> Event {
    let ts = format_iso8601(BASE_MS + 10 * p as i64);
    if is_user(p) {
        event(&format!(
            r#"{{"type":"identify","userId":"u{p}","anonymousId":"a{p}","traits":{{"email":"e{p}@example.com","plan":"p{}"}},"context":{{"device":{{"id":"d{p}"}}}},"timestamp":"{ts}"}}"#,
            p % 3
        ))
    } else {
        event(&format!(
            r#"{{"type":"page","anonymousId":"a{p}","context":{{"device":{{"id":"d{p}"}}}},"timestamp":"{ts}"}}"#
        ))
    }
}

/// Links user `u` and visitor `v` (one edge; a merge of two profiles).
fn merge_event(u: usize, v: usize, k: usize) -> Event {
    let ts = format_iso8601(BASE_MS + 20_000_000_000 + k as i64);
    event(&format!(
        r#"{{"type":"identify","userId":"u{u}","anonymousId":"a{v}","messageId":"merge-{k}","timestamp":"{ts}"}}"#
    ))
}

/// User `u` on a new device (one edge).
fn device_event(u: usize, k: usize) -> Event {
    let ts = format_iso8601(BASE_MS + 30_000_000_000 + k as i64);
    event(&format!(
        r#"{{"type":"track","event":"Opened","userId":"u{u}","context":{{"device":{{"id":"dx{k}"}}}},"messageId":"dev-{k}","timestamp":"{ts}"}}"#
    ))
}

/// The work of the dataflow phases, measured on worker 0.
#[derive(Debug, Default, Clone)]
struct Report {
    load: Duration,
    latencies: Vec<Duration>,
    mixed: Duration,
    mixed_updates: usize,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Phases 1–3.
fn run_identity(args: &Args, events: Arc<Vec<Event>>) -> Report {
    let report = Arc::new(Mutex::new(Report::default()));
    let out = Arc::clone(&report);
    let (batch, merges, rounds, mixed, seed, people) = (
        args.batch,
        args.merges,
        args.rounds,
        args.mixed,
        args.seed,
        args.profiles,
    );
    timely::execute(timely::Config::process(args.workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let probe = ProbeHandle::new();
        let mut input = worker.dataflow::<u64, _, _>(|scope| {
            let (input, events) = scope.new_collection::<Event, isize>();
            let out = identity(events, &IdentitySpec::default()).expect("default rules compile");
            out.profiles.probe_with(&probe);
            out.changes.probe_with(&probe);
            out.traits.probe_with(&probe);
            out.accounts.probe_with(&probe);
            out.account_traits.probe_with(&probe);
            out.members.stream.probe_with(&probe);
            out.traits_by_profile.stream.probe_with(&probe);
            input
        });
        let mut time = 0u64;
        let settle = |input: &mut differential_dataflow::input::InputSession<u64, Event, isize>,
                      worker: &mut timely::worker::Worker,
                      time: &mut u64| {
            *time += 1;
            input.advance_to(*time);
            input.flush();
            while probe.less_than(input.time()) {
                worker.step();
            }
        };

        // PHASE 1. Load, insert-only.
        let start = Instant::now();
        for chunk in events.chunks(batch) {
            for (i, e) in chunk.iter().enumerate() {
                if i % peers == index {
                    input.insert(e.clone());
                }
            }
            settle(&mut input, worker, &mut time);
        }
        let load = start.elapsed();

        // PHASE 2. Single merges, each alone at its own time.
        let mut rng = SmallRng::seed_from_u64(seed);
        let users: Vec<usize> = (0..people).filter(|p| is_user(*p)).collect();
        let visitors: Vec<usize> = (0..people).filter(|p| !is_user(*p)).collect();
        let mut latencies = Vec::with_capacity(merges);
        for (k, &visitor) in visitors
            .iter()
            .take(merges.min(visitors.len() / 2))
            .enumerate()
        {
            let e = merge_event(users[rng.gen_range(0..users.len())], visitor, k);
            let start = Instant::now();
            if index == 0 {
                input.insert(e);
            }
            settle(&mut input, worker, &mut time);
            latencies.push(start.elapsed());
        }

        // PHASE 3. Mixed: new one-edge events in, earlier one-edge events out.
        let mut retractable: std::collections::VecDeque<Event> = visitors
            .iter()
            .rev()
            .take(rounds * mixed)
            .map(|v| events[*v].clone())
            .collect();
        let start = Instant::now();
        let mut updates = 0;
        let mut k = 0;
        for _ in 0..rounds {
            for i in 0..mixed {
                let inserted = device_event(users[rng.gen_range(0..users.len())], k);
                k += 1;
                let retracted = retractable.pop_front();
                if i % peers == index {
                    input.insert(inserted.clone());
                    if let Some(r) = &retracted {
                        input.remove(r.clone());
                    }
                }
                updates += 1 + usize::from(retracted.is_some());
                retractable.push_back(inserted);
            }
            settle(&mut input, worker, &mut time);
        }
        let mixed_time = start.elapsed();

        if index == 0 {
            *out.lock().unwrap() = Report {
                load,
                latencies,
                mixed: mixed_time,
                mixed_updates: updates,
            };
        }
    })
    .expect("timely runs");
    let r = report.lock().unwrap().clone();
    r
}

/// Phase 4: the edges alone through `connected_components`.
fn run_components(args: &Args, edges: Arc<Vec<(IdHash, IdHash)>>, batch_edges: usize) -> Duration {
    let took = Arc::new(Mutex::new(Duration::ZERO));
    let out = Arc::clone(&took);
    timely::execute(timely::Config::process(args.workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let probe = ProbeHandle::new();
        let mut input = worker.dataflow::<u64, _, _>(|scope| {
            let (input, edges) = scope.new_collection::<(IdHash, IdHash), isize>();
            let none: VecCollection<'_, u64, IdHash, isize> =
                edges.clone().filter(|_| false).map(|(a, _)| a);
            edges.connected_components(none).probe_with(&probe);
            input
        });
        let start = Instant::now();
        let mut time = 0;
        for chunk in edges.chunks(batch_edges) {
            for (i, e) in chunk.iter().enumerate() {
                if i % peers == index {
                    input.insert(*e);
                }
            }
            time += 1;
            input.advance_to(time);
            input.flush();
            while probe.less_than(input.time()) {
                worker.step();
            }
        }
        if index == 0 {
            *out.lock().unwrap() = start.elapsed();
        }
    })
    .expect("timely runs");
    let d = *took.lock().unwrap();
    d
}

/// The keys are already 128-bit hashes: a hasher that just folds them.
#[derive(Default, Clone, Copy)]
struct FoldHasher(u64);

impl std::hash::Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, x: u128) {
        self.0 = (x as u64) ^ ((x >> 64) as u64);
    }
}

/// Dense ids for 128-bit hashes.
type DenseIds = std::collections::HashMap<IdHash, u32, std::hash::BuildHasherDefault<FoldHasher>>;

/// Union-find over dense ids, path halving, union by size.
struct UnionFind {
    parent: Vec<u32>,
    size: Vec<u32>,
}

impl UnionFind {
    fn find(&mut self, mut x: u32) -> u32 {
        while self.parent[x as usize] != x {
            let p = self.parent[x as usize];
            self.parent[x as usize] = self.parent[p as usize];
            x = p;
        }
        x
    }
    fn push(&mut self) -> u32 {
        self.parent.push(self.parent.len() as u32);
        self.size.push(1);
        self.parent.len() as u32 - 1
    }
    fn union(&mut self, a: u32, b: u32) -> (u32, u32) {
        let (mut ra, mut rb) = (self.find(a), self.find(b));
        if ra != rb {
            if self.size[ra as usize] < self.size[rb as usize] {
                std::mem::swap(&mut ra, &mut rb);
            }
            self.parent[rb as usize] = ra;
            self.size[ra as usize] += self.size[rb as usize];
        }
        (ra, rb)
    }
}

/// Phase 5a: plain union-find; returns (time, components).
fn run_union_find(edges: &[(IdHash, IdHash)]) -> (Duration, usize) {
    let start = Instant::now();
    let mut ids = DenseIds::with_capacity_and_hasher(edges.len() * 2, Default::default());
    let mut uf = UnionFind {
        parent: Vec::new(),
        size: Vec::new(),
    };
    for (a, b) in edges {
        let a = *ids.entry(*a).or_insert_with(|| uf.push());
        let b = *ids.entry(*b).or_insert_with(|| uf.push());
        uf.union(a, b);
    }
    let roots = (0..uf.parent.len() as u32)
        .filter(|x| uf.find(*x) == *x)
        .count();
    (start.elapsed(), roots)
}

/// Phase 5b: union-find applying per-profile limits greedily in edge order; returns (time, accepted).
fn run_greedy(
    edges: &[(IdHash, IdHash, KindRank, KindRank)],
    rules: &IdentityRules,
) -> (Duration, usize) {
    let start = Instant::now();
    let mut ids = DenseIds::with_capacity_and_hasher(edges.len() * 2, Default::default());
    let mut uf = UnionFind {
        parent: Vec::new(),
        size: Vec::new(),
    };
    // Per root: counts of the limited kinds (at most 4 built-in limited kinds here).
    let mut counts: Vec<[u16; 4]> = Vec::new();
    let limits: Vec<u16> = (0..4)
        .map(|k| {
            rules
                .limit(k)
                .map_or(u16::MAX, |l| l.min(u16::MAX as u32) as u16)
        })
        .collect();
    let mut accepted = 0;
    for &(a, b, ka, kb) in edges {
        let mut node = |h: IdHash, k: KindRank, uf: &mut UnionFind, counts: &mut Vec<[u16; 4]>| {
            *ids.entry(h).or_insert_with(|| {
                let mut c = [0u16; 4];
                if (k as usize) < 4 {
                    c[k as usize] = 1;
                }
                counts.push(c);
                uf.push()
            })
        };
        let a = node(a, ka, &mut uf, &mut counts);
        let b = node(b, kb, &mut uf, &mut counts);
        let (ra, rb) = (uf.find(a), uf.find(b));
        if ra != rb {
            let (ca, cb) = (counts[ra as usize], counts[rb as usize]);
            if (0..4).any(|k| ca[k] > 0 && cb[k] > 0 && ca[k] + cb[k] > limits[k]) {
                continue;
            }
            let (root, child) = uf.union(ra, rb);
            let moved = counts[child as usize];
            for k in 0..4 {
                counts[root as usize][k] += moved[k];
            }
        }
        accepted += 1;
    }
    (start.elapsed(), accepted)
}

fn main() {
    let args = Args::parse();
    let rules = IdentityRules::new(&IdentitySpec::default()).expect("default rules compile");

    // The input, built before any clock starts.
    let t = Instant::now();
    let events: Vec<Event> = (0..args.profiles).map(person).collect();
    let mut edges4: Vec<(IdHash, IdHash, KindRank, KindRank)> = Vec::new();
    for e in &events {
        for (a, b, ka, kb, _) in rules.observe(e).edges() {
            edges4.push((a, b, ka, kb));
        }
    }
    let edges: Vec<(IdHash, IdHash)> = edges4.iter().map(|e| (e.0, e.1)).collect();
    let identifiers: usize = events.iter().map(|e| rules.observe(e).ids.len()).sum();
    println!(
        "bench-identity: {} profiles ({} events, {} identifiers, {} edges), {} workers, {} events per logical time; input built in {:.1}s",
        args.profiles,
        events.len(),
        identifiers,
        edges.len(),
        args.workers,
        args.batch,
        t.elapsed().as_secs_f64()
    );
    let edges_per_event = edges.len() as f64 / events.len().max(1) as f64;
    let events = Arc::new(events);

    let r = run_identity(&args, Arc::clone(&events));
    let secs = |d: Duration| d.as_secs_f64();
    let load_rate = edges.len() as f64 / secs(r.load);
    println!(
        "identity load (insert-only): {:>8.2} s  {:>10.0} edge updates/s  {:>10.0} events/s",
        secs(r.load),
        load_rate,
        events.len() as f64 / secs(r.load)
    );
    let mut lat = r.latencies.clone();
    lat.sort();
    println!(
        "identity single merge:       p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  ({} merges on {} profiles)",
        secs(percentile(&lat, 0.5)) * 1e3,
        secs(percentile(&lat, 0.99)) * 1e3,
        secs(lat.last().copied().unwrap_or_default()) * 1e3,
        lat.len(),
        args.profiles
    );
    println!(
        "identity mixed insert/retract: {:>6.2} s  {:>10.0} edge updates/s  ({} rounds of {} inserts + {} retractions)",
        secs(r.mixed),
        r.mixed_updates as f64 / secs(r.mixed),
        args.rounds,
        args.mixed,
        args.mixed
    );

    let edges = Arc::new(edges);
    let batch_edges = ((args.batch as f64) * edges_per_event).ceil().max(1.0) as usize;
    let cc = run_components(&args, Arc::clone(&edges), batch_edges);
    let cc_rate = edges.len() as f64 / secs(cc);
    println!(
        "components operator (load):  {:>8.2} s  {:>10.0} edge updates/s",
        secs(cc),
        cc_rate
    );

    let (uf, roots) = run_union_find(&edges);
    let uf_rate = edges.len() as f64 / secs(uf);
    println!(
        "union-find, 1 thread (COST): {:>8.3} s  {:>10.0} edges/s  ({roots} components)",
        secs(uf),
        uf_rate
    );
    let (greedy, accepted) = run_greedy(&edges4, &rules);
    let greedy_rate = edges.len() as f64 / secs(greedy);
    println!(
        "union-find + limits, 1 thread: {:>6.3} s  {:>10.0} edges/s  ({accepted} accepted)",
        secs(greedy),
        greedy_rate
    );
    println!(
        "COST ratios (time / union-find time): identity load {:.0}x, identity load vs union-find + limits {:.0}x, components operator {:.0}x ({} workers)",
        secs(r.load) / secs(uf),
        secs(r.load) / secs(greedy),
        secs(cc) / secs(uf),
        args.workers
    );
}

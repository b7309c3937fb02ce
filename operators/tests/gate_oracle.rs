//! Oracle test for `gate`: every record update passes exactly when no rule
//! accumulated up to its own time bars one of its keys, for 1 and 4 workers,
//! with rules inserted and retracted at random times.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use differential_dataflow::input::Input;
use rand::{Rng, SeedableRng};
use weft_operators::by_time::{SinkByTime, SinkEvent, SinkTarget};
use weft_operators::gate::Gate;

/// A record: (id, two keys).
type Rec = (u32, [u8; 2]);
/// A rule: (key, (from, until)) bars times in `(from, until]`.
type Rule = (u8, (u64, u64));

/// One step: record updates and rule updates at time `t`.
#[derive(Clone, Debug, Default)]
struct Step {
    records: Vec<(Rec, isize)>,
    rules: Vec<(Rule, isize)>,
}

fn barred(&(from, until): &(u64, u64), t: u64) -> bool {
    from < t && t <= until
}

fn naive(steps: &[Step]) -> Vec<(u64, Rec, isize)> {
    let mut rules: BTreeMap<Rule, isize> = BTreeMap::new();
    let mut out = Vec::new();
    for (t, step) in steps.iter().enumerate() {
        let t = t as u64;
        for (r, d) in &step.rules {
            *rules.entry(*r).or_default() += d;
        }
        for (rec, d) in &step.records {
            let stopped = rec.1.iter().any(|k| {
                rules
                    .iter()
                    .any(|((rk, v), n)| rk == k && *n > 0 && barred(v, t))
            });
            if !stopped {
                out.push((t, *rec, *d));
            }
        }
    }
    consolidate(out)
}

fn consolidate(mut v: Vec<(u64, Rec, isize)>) -> Vec<(u64, Rec, isize)> {
    let mut m: BTreeMap<(u64, Rec), isize> = BTreeMap::new();
    for (t, r, d) in v.drain(..) {
        *m.entry((t, r)).or_default() += d;
    }
    m.into_iter()
        .filter(|(_, d)| *d != 0)
        .map(|((t, r), d)| (t, r, d))
        .collect()
}

fn run(steps: Vec<Step>, workers: usize) -> Vec<(u64, Rec, isize)> {
    let result = Arc::new(Mutex::new(Vec::new()));
    let sink = result.clone();
    let steps = Arc::new(steps);
    timely::execute(timely::Config::process(workers), move |worker| {
        let index = worker.index();
        let peers = worker.peers();
        let sink = sink.clone();
        let (mut records, mut rules) = worker.dataflow::<u64, _, _>(|scope| {
            let (records_in, records) = scope.new_collection::<Rec, isize>();
            let (rules_in, rules) = scope.new_collection::<Rule, isize>();
            records
                .gate("Gate", rules, |r: &Rec| r.1, barred)
                .sink_by_time("Collect", SinkTarget::Worker(0), move |ev| {
                    if let SinkEvent::Updates { time, updates } = ev {
                        let mut s = sink.lock().unwrap();
                        for (r, d) in updates {
                            s.push((*time, *r, *d));
                        }
                    }
                });
            (records_in, rules_in)
        });
        for (t, step) in steps.iter().enumerate() {
            records.advance_to(t as u64);
            rules.advance_to(t as u64);
            // Records and rules are spread over workers; rules are broadcast inside.
            for (i, (r, d)) in step.records.iter().enumerate() {
                if (i + t) % peers == index {
                    records.update(*r, *d);
                }
            }
            for (i, (r, d)) in step.rules.iter().enumerate() {
                if (i * 7 + t) % peers == index {
                    rules.update(*r, *d);
                }
            }
            if t % 2 == 0 {
                records.flush();
                rules.flush();
                worker.step();
            }
        }
        records.close();
        rules.close();
        while worker.step() {}
    })
    .unwrap();
    let out = result.lock().unwrap().clone();
    consolidate(out)
}

fn random_steps(seed: u64) -> Vec<Step> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut live_rules: Vec<Rule> = Vec::new();
    let mut live_records: Vec<Rec> = Vec::new();
    let mut id = 0;
    (0..rng.gen_range(5..40))
        .map(|t| {
            let mut step = Step::default();
            for _ in 0..rng.gen_range(0..6) {
                id += 1;
                let rec = (id, [rng.gen_range(0..6), rng.gen_range(0..6)]);
                live_records.push(rec);
                step.records.push((rec, 1));
            }
            if !live_records.is_empty() && rng.gen_bool(0.3) {
                let rec = live_records.swap_remove(rng.gen_range(0..live_records.len()));
                step.records.push((rec, -1));
            }
            if rng.gen_bool(0.3) {
                // `from` may lie before `t`: the rule then bars records of its own time.
                let from = (t as u64).saturating_sub(rng.gen_range(0..3));
                let until = if rng.gen_bool(0.5) {
                    u64::MAX
                } else {
                    from + rng.gen_range(0..10)
                };
                let rule = (rng.gen_range(0..6), (from, until));
                live_rules.push(rule);
                step.rules.push((rule, 1));
            }
            if !live_rules.is_empty() && rng.gen_bool(0.15) {
                let rule = live_rules.swap_remove(rng.gen_range(0..live_rules.len()));
                step.rules.push((rule, -1));
            }
            step
        })
        .collect()
}

#[test]
fn gate_matches_the_naive_judgement() {
    for seed in 0..30u64 {
        let steps = random_steps(seed);
        let want = naive(&steps);
        for workers in [1, 4] {
            assert_eq!(
                run(steps.clone(), workers),
                want,
                "seed {seed}, {workers} workers"
            );
        }
    }
}

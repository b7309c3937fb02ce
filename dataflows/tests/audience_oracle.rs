//! Oracle test for audiences: random event streams (with retractions and
//! events that arrive late or ahead of the clock) and random audience
//! definitions; at every logical time the incremental membership equals a
//! naive evaluation over the accumulated events — including window expiry
//! after the last event — at 1 and 4 workers, with every aggregate compiled
//! on its own and with the aggregates shared in one pass (`SharedAggregates`,
//! as jobs compile their spec's definitions), and, on insert-only streams,
//! with `first`/`last` contributions pruned to one per profile
//! (`SharedAggregates::prune_insert_only`, as jobs without regulations do).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use differential_dataflow::input::Input;
use rand::{Rng, SeedableRng};
use weft_dataflows::audience::{
    aggregate, compile_audience, condition_aggregates, contribution, evaluate_condition,
    event_contributions, Contribution, Members, ProfileInputs, SharedAggregates,
};
use weft_dataflows::event::{parse_event, Event, ParseContext};
use weft_dataflows::query::{parse_audience, Condition, ValueRef};
use weft_operators::by_time::{SinkByTime, SinkEvent, SinkTarget};

#[derive(Clone, Debug)]
struct Ev {
    profile: u32,
    event: Event,
    arrive: u64,
    retract: Option<u64>,
}

fn make_event(rng: &mut impl Rng, id: usize, e_ms: i64) -> Event {
    let (kind, name) = match rng.gen_range(0..3) {
        0 => ("track", "A"),
        1 => ("track", "B"),
        _ => ("page", "Home"),
    };
    let ts = chrono::DateTime::from_timestamp_millis(e_ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let name_field = if kind == "track" {
        format!(r#""event":"{name}""#)
    } else {
        format!(r#""name":"{name}""#)
    };
    let line = format!(
        r#"{{"type":"{kind}",{name_field},"userId":"u","messageId":"m{id}","timestamp":"{ts}","properties":{{"v":{},"c":"{}"}}}}"#,
        rng.gen_range(0..10),
        ["x", "y"][rng.gen_range(0..2)]
    );
    parse_event(line.as_bytes(), &ParseContext::default()).unwrap()
}

fn random_audiences(rng: &mut impl Rng) -> Vec<(String, Condition)> {
    let w = |rng: &mut dyn rand::RngCore| rng.gen_range(1..6) * 1000;
    let qs = vec![
        format!(
            r#"count(track "A" within {}ms) >= {}"#,
            w(rng),
            rng.gen_range(1..3)
        ),
        format!(
            r#"count(track "B") >= {} or trait.plan = "pro""#,
            rng.gen_range(1..4)
        ),
        format!(
            r#"sum(properties.v from track within {}ms) > {} and not audience("a0")"#,
            w(rng),
            rng.gen_range(0..12)
        ),
        format!(
            r#"max(properties.v from any within {}ms) >= {}"#,
            w(rng),
            rng.gen_range(3..9)
        ),
        format!(
            r#"count(page where properties.c = "x" within {}ms) = 0 and trait.plan exists"#,
            w(rng)
        ),
        format!(
            r#"most_frequent(properties.c from any within {}ms) = "y" or audience("a1")"#,
            w(rng)
        ),
        format!(
            r#"unique_count(properties.v from track "A") >= {}"#,
            rng.gen_range(1..4)
        ),
        format!(r#"last(properties.c from any within {}ms) = "x""#, w(rng)),
        format!(r#"last(properties.v from page) >= {}"#, rng.gen_range(2..8)),
        format!(
            r#"first(properties.v from track) >= {} and first(properties.c from track "B" within {}ms) = "y""#,
            rng.gen_range(2..8),
            w(rng)
        ),
        // True of a profile without events: evaluated for every profile.
        format!(
            r#"count(track "B" within {}ms) = 0 and not audience("a0")"#,
            w(rng)
        ),
    ];
    qs.into_iter()
        .enumerate()
        .map(|(i, q)| (format!("a{i}"), parse_audience(&q).unwrap()))
        .collect()
}

/// Leaf values of a condition for one profile, computed naively.
fn naive_leaf_values(
    c: &Condition,
    present: &[(&Ev, bool)], // (event, counts for windowed leaves)
    window_present: &dyn Fn(&Ev, u64) -> bool,
    plan: Option<&str>,
    members: &BTreeMap<String, BTreeSet<u32>>,
    profile: u32,
) -> Vec<Option<weft_dataflows::audience::AggValue>> {
    use weft_dataflows::audience::AggValue;
    fn walk<'a>(c: &'a Condition, out: &mut Vec<&'a Condition>) {
        match c {
            Condition::And(v) | Condition::Or(v) => v.iter().for_each(|c| walk(c, out)),
            Condition::Not(c) => walk(c, out),
            leaf => out.push(leaf),
        }
    }
    let mut ls = Vec::new();
    walk(c, &mut ls);
    ls.iter()
        .map(|leaf| match leaf {
            Condition::Audience(a) => members
                .get(a)
                .and_then(|m| m.contains(&profile).then_some(AggValue::Bool(true))),
            Condition::Test(ValueRef::Trait(_), _) => plan.map(|p| AggValue::Str(p.to_string())),
            Condition::Test(ValueRef::Agg(a), _) => {
                let cs: Vec<Contribution> = present
                    .iter()
                    .filter(|(ev, _)| match a.events.window {
                        Some(w) => window_present(ev, w.0),
                        None => true,
                    })
                    .filter_map(|(ev, _)| contribution(a, &ev.event))
                    .collect();
                if cs.is_empty() {
                    None
                } else {
                    let items: Vec<(&Contribution, isize)> = cs.iter().map(|c| (c, 1)).collect();
                    Some(aggregate(a.func, &items))
                }
            }
            other => panic!("unexpected leaf {other:?}"),
        })
        .collect()
}

/// `insert_only`: no event is retracted, and the shared aggregates prune
/// `first`/`last` contributions (requires `shared`).
fn run_case(seed: u64, workers: usize, shared: bool, insert_only: bool) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let profiles = 8u32;
    let audiences = random_audiences(&mut rng);
    // Events arrive at times 1000, 2000, ...; event times jitter around arrival.
    let mut evs: Vec<Ev> = Vec::new();
    let steps = 12u64;
    for step in 1..=steps {
        let t = step * 1000;
        for _ in 0..rng.gen_range(0..5) {
            let e = t as i64 + rng.gen_range(-4000..1500);
            let id = evs.len();
            evs.push(Ev {
                profile: rng.gen_range(0..profiles),
                event: make_event(&mut rng, id, e.max(0)),
                arrive: t,
                retract: None,
            });
        }
        // Occasionally retract an earlier event.
        if !insert_only && !evs.is_empty() && rng.gen_bool(0.3) {
            let i = rng.gen_range(0..evs.len());
            if evs[i].retract.is_none() && evs[i].arrive < t {
                evs[i].retract = Some(t);
            }
        }
    }
    // Traits: plan = "pro" for some profiles from some time, possibly removed.
    let mut plans: Vec<(u32, u64, Option<u64>)> = Vec::new();
    for p in 0..profiles {
        if rng.gen_bool(0.4) {
            let from = rng.gen_range(0..steps) * 1000;
            let until = rng.gen_bool(0.3).then(|| from + 3000);
            plans.push((p, from, until));
        }
    }

    // STEP 1. The incremental computation.
    let changes: Arc<Mutex<Vec<(u64, String, u32, isize)>>> = Arc::default();
    let sink = changes.clone();
    let (evs2, plans2, auds2) = (evs.clone(), plans.clone(), audiences.clone());
    timely::execute(timely::Config::process(workers), move |worker| {
        let index = worker.index();
        let sink = sink.clone();
        let auds = auds2.clone();
        let (mut p_in, mut e_in, mut t_in) = worker.dataflow::<u64, _, _>(|scope| {
            let (p_in, profiles) = scope.new_collection::<u32, isize>();
            let (e_in, events) = scope.new_collection::<(u32, Event), isize>();
            let (t_in, traits) = scope.new_collection::<(u32, (String, String)), isize>();
            let shared = shared.then(|| {
                let aggs = SharedAggregates::<u32>::distinct(
                    auds.iter().flat_map(|(_, c)| condition_aggregates(c)),
                );
                let list = aggs.clone();
                let mut contributions = events.clone().flat_map(move |(p, e)| {
                    event_contributions(&list, &e)
                        .into_iter()
                        .map(move |(i, c, time)| (i, (p, c, time)))
                });
                if insert_only {
                    let keyed = contributions.map(|(i, (p, c, e))| (p, (i, c, e)));
                    contributions = SharedAggregates::<u32>::prune_insert_only(keyed, &aggs)
                        .map(|(p, (i, c, e))| (i, (p, c, e)));
                }
                std::rc::Rc::new(SharedAggregates::build(contributions, &aggs))
            });
            let inputs = ProfileInputs {
                profiles,
                events,
                traits,
                shared,
            };
            let mut compiled: BTreeMap<String, Members<'_, u32>> = BTreeMap::new();
            for (name, cond) in &auds {
                let m = compile_audience(&inputs, cond, &BTreeMap::new(), &compiled).unwrap();
                let (n, s) = (name.clone(), sink.clone());
                m.clone()
                    .sink_by_time(&format!("Sink:{name}"), SinkTarget::Worker(0), move |ev| {
                        if let SinkEvent::Updates { time, updates } = ev {
                            let mut s = s.lock().unwrap();
                            for (p, d) in updates {
                                s.push((*time, n.clone(), *p, *d));
                            }
                        }
                    });
                compiled.insert(name.clone(), m);
            }
            (p_in, e_in, t_in)
        });
        if index == 0 {
            for p in 0..profiles {
                p_in.insert(p);
            }
        }
        let mut times: BTreeSet<u64> = evs2
            .iter()
            .flat_map(|e| [Some(e.arrive), e.retract])
            .flatten()
            .collect();
        times.extend(plans2.iter().flat_map(|(_, a, b)| [Some(*a), *b]).flatten());
        for t in times {
            p_in.advance_to(t);
            e_in.advance_to(t);
            t_in.advance_to(t);
            if index == 0 {
                for e in evs2.iter().filter(|e| e.arrive == t) {
                    e_in.insert((e.profile, e.event.clone()));
                }
                for e in evs2.iter().filter(|e| e.retract == Some(t)) {
                    e_in.remove((e.profile, e.event.clone()));
                }
                for (p, from, until) in &plans2 {
                    if *from == t {
                        t_in.insert((*p, ("plan".into(), "\"pro\"".into())));
                    }
                    if *until == Some(t) {
                        t_in.remove((*p, ("plan".into(), "\"pro\"".into())));
                    }
                }
            }
            p_in.flush();
            e_in.flush();
            t_in.flush();
            worker.step();
        }
    })
    .unwrap();

    // STEP 2. Compare at every time where anything can change.
    let changes = changes.lock().unwrap().clone();
    let mut check_times: BTreeSet<u64> = changes.iter().map(|c| c.0).collect();
    for e in &evs {
        check_times.insert(e.arrive);
        if let Some(r) = e.retract {
            check_times.insert(r);
        }
        for w in 1..6u64 {
            check_times.insert((e.event.time_ms.max(0) as u64) + w * 1000);
        }
    }
    check_times.insert(0);
    for &t in &check_times {
        let mut live: BTreeMap<(String, u32), isize> = BTreeMap::new();
        for (ct, a, p, d) in &changes {
            if *ct <= t {
                *live.entry((a.clone(), *p)).or_default() += d;
            }
        }
        live.retain(|_, d| *d != 0);
        assert!(
            live.values().all(|d| *d == 1),
            "seed {seed}: multiplicities {live:?}"
        );
        let got: BTreeSet<(String, u32)> = live.into_keys().collect();

        let window_present = |ev: &Ev, w: u64| {
            let e = ev.event.time_ms.max(0) as u64;
            let start = ev.arrive.max(e);
            let stop = match ev.retract {
                Some(r) => (e + w).min(r.max(e)),
                None => e + w,
            };
            start <= t && t < stop
        };
        let mut members: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
        let mut expected = BTreeSet::new();
        for (name, cond) in &audiences {
            let mut m = BTreeSet::new();
            for p in 0..profiles {
                let present: Vec<(&Ev, bool)> = evs
                    .iter()
                    .filter(|e| e.profile == p && e.arrive <= t)
                    .map(|e| (e, e.retract.is_none_or(|r| t < r)))
                    .collect();
                // Non-windowed leaves see only unretracted events; windowed ones use window_present.
                let unretracted: Vec<(&Ev, bool)> =
                    present.iter().filter(|(_, live)| *live).cloned().collect();
                let plan = plans
                    .iter()
                    .find(|(q, from, until)| *q == p && *from <= t && until.is_none_or(|u| t < u))
                    .map(|_| "pro");
                let wp = |ev: &Ev, w: u64| window_present(ev, w);
                // Windowed leaves consider every arrived event (retraction handled in window_present).
                let values_windowed = naive_leaf_values(cond, &present, &wp, plan, &members, p);
                let values_plain = naive_leaf_values(cond, &unretracted, &wp, plan, &members, p);
                // Merge: windowed aggregate leaves from the first, others from the second.
                let mut leaves = Vec::new();
                fn walk<'a>(c: &'a Condition, out: &mut Vec<&'a Condition>) {
                    match c {
                        Condition::And(v) | Condition::Or(v) => v.iter().for_each(|c| walk(c, out)),
                        Condition::Not(c) => walk(c, out),
                        leaf => out.push(leaf),
                    }
                }
                walk(cond, &mut leaves);
                let values: Vec<_> = leaves
                    .iter()
                    .enumerate()
                    .map(|(i, l)| match l {
                        Condition::Test(ValueRef::Agg(a), _) if a.events.window.is_some() => {
                            values_windowed[i].clone()
                        }
                        _ => values_plain[i].clone(),
                    })
                    .collect();
                if evaluate_condition(cond, &values) {
                    m.insert(p);
                    expected.insert((name.clone(), p));
                }
            }
            members.insert(name.clone(), m);
        }
        assert_eq!(got, expected, "seed {seed}, {workers} workers, time {t}");
    }
}

#[test]
fn audiences_match_naive_evaluation_at_every_time() {
    for seed in 0..10 {
        for workers in [1, 4] {
            run_case(seed, workers, seed % 2 == 1, false);
        }
    }
}

#[test]
fn insert_only_pruned_first_and_last_match_naive_evaluation() {
    for seed in 0..10 {
        for workers in [1, 4] {
            run_case(seed, workers, true, true);
        }
    }
}

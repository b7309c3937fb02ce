//! Oracle test for events by anchor as chains (`weft_dataflows::chain`):
//! random insert-only events for a few anchors, arriving at random times,
//! and an anchor → profile map that changes (merges and moves); at every
//! logical time the expanded heads, joined with the map, accumulate to
//! exactly the naive `(profile, event)` set: every event arrived so far,
//! under its anchor's profile at that time. At 1 and 4 workers; and plain
//! (unlinked) events expand to themselves.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use differential_dataflow::input::Input;
use rand::{Rng, SeedableRng};
use weft_dataflows::chain::{anchor_heads, expand_chains};
use weft_dataflows::event::{parse_event, Event, ParseContext};
use weft_dataflows::identity::IdHash;
use weft_dataflows::stored::StoredEvent;

const TIMES: u64 = 12;

fn make_event(id: usize, anchor: u32) -> Event {
    let line = format!(
        r#"{{"type":"track","event":"E","userId":"u{anchor}","messageId":"m{id}","timestamp":"2026-01-01T00:00:{:02}.000Z","properties":{{"n":{id}}}}}"#,
        id % 60
    );
    parse_event(line.as_bytes(), &ParseContext::default()).unwrap()
}

struct Case {
    /// (arrival time, anchor, event)
    events: Vec<(u64, u32, Event)>,
    /// profile of each anchor from each time on: (time, anchor, profile)
    moves: Vec<(u64, u32, u32)>,
}

fn random_case(seed: u64) -> Case {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let anchors = rng.gen_range(2..7u32);
    let events = (0..rng.gen_range(10..80))
        .map(|i| {
            let a = rng.gen_range(0..anchors);
            // Several events of one anchor often share a time.
            (rng.gen_range(0..TIMES), a, make_event(i, a))
        })
        .collect();
    let mut moves: Vec<(u64, u32, u32)> = (0..anchors).map(|a| (0, a, a)).collect();
    for _ in 0..rng.gen_range(0..8) {
        moves.push((
            rng.gen_range(1..TIMES),
            rng.gen_range(0..anchors),
            rng.gen_range(0..anchors),
        ));
    }
    Case { events, moves }
}

fn profile_at(moves: &[(u64, u32, u32)], anchor: u32, t: u64) -> u32 {
    // The latest move at or before t (moves at one time: the last listed wins).
    moves
        .iter()
        .filter(|(mt, a, _)| *a == anchor && *mt <= t)
        .max_by_key(|(mt, ..)| *mt)
        .map(|m| m.2)
        .expect("every anchor has a profile from time 0")
}

fn hash(a: u32) -> IdHash {
    IdHash::from(a) * 0x9e37_79b9_7f4a_7c15
}

/// Runs the dataflow; returns the accumulated `(profile, messageId)` counts at every time.
fn run(case: &Case, workers: usize, linked: bool) -> Vec<BTreeMap<(u32, String), isize>> {
    let events = case.events.clone();
    // The map changes once per (time, anchor): the last listed move wins.
    let mut map_at: BTreeMap<(u64, u32), u32> = BTreeMap::new();
    for (t, a, p) in &case.moves {
        map_at.insert((*t, *a), *p);
    }
    let out = Arc::new(Mutex::new(Vec::new()));
    let log = out.clone();
    timely::execute(timely::Config::process(workers), move |worker| {
        let index = worker.index();
        let peers = worker.peers();
        let log = log.clone();
        let (mut ev_in, mut map_in) = worker.dataflow::<u64, _, _>(|scope| {
            let (ev_in, anchored) = scope.new_collection::<(IdHash, Event), isize>();
            let (map_in, profile_of) = scope.new_collection::<(IdHash, u32), isize>();
            let by_anchor = if linked {
                anchor_heads(anchored).arrange_by_key()
            } else {
                anchored
                    .map(|(a, e)| (a, StoredEvent::store(&e)))
                    .arrange_by_key()
            };
            let keyed = by_anchor.join_core(profile_of.arrange_by_key(), |a, h, p| {
                Some((*p, (*a, h.clone())))
            });
            expand_chains(keyed)
                .map(|(p, e)| (p, e.load().message_id().to_string()))
                .inspect(move |x| log.lock().unwrap().push(x.clone()));
            (ev_in, map_in)
        });
        let mut current: BTreeMap<u32, u32> = BTreeMap::new();
        for t in 0..TIMES {
            ev_in.advance_to(t);
            map_in.advance_to(t);
            for (i, (at, a, e)) in events.iter().enumerate() {
                if *at == t && i % peers == index {
                    ev_in.insert((hash(*a), e.clone()));
                }
            }
            if index == 0 {
                for ((mt, a), p) in map_at.range((t, 0)..=(t, u32::MAX)) {
                    debug_assert_eq!(*mt, t);
                    if let Some(old) = current.insert(*a, *p) {
                        map_in.remove((hash(*a), old));
                    }
                    map_in.insert((hash(*a), *p));
                }
            }
            ev_in.flush();
            map_in.flush();
            worker.step_while(|| false);
        }
    })
    .unwrap();
    let updates = out.lock().unwrap().clone();
    (0..TIMES)
        .map(|t| {
            let mut acc: BTreeMap<(u32, String), isize> = BTreeMap::new();
            for (d, time, r) in &updates {
                if *time <= t {
                    *acc.entry(d.clone()).or_default() += r;
                }
            }
            acc.retain(|_, r| *r != 0);
            acc
        })
        .collect()
}

fn naive(case: &Case) -> Vec<BTreeMap<(u32, String), isize>> {
    (0..TIMES)
        .map(|t| {
            let mut acc = BTreeMap::new();
            for (at, a, e) in &case.events {
                if *at <= t {
                    let p = profile_at(&case.moves, *a, t);
                    *acc.entry((p, e.message_id().to_string())).or_default() += 1;
                }
            }
            acc
        })
        .collect()
}

#[test]
fn expanded_heads_are_the_events_of_each_profile() {
    for seed in 0..30 {
        let case = random_case(seed);
        let expected = naive(&case);
        for workers in [1, 4] {
            let got = run(&case, workers, true);
            for t in 0..TIMES as usize {
                assert_eq!(
                    got[t], expected[t],
                    "seed {seed}, {workers} workers, time {t}"
                );
            }
        }
    }
}

#[test]
fn plain_events_expand_to_themselves() {
    for seed in 100..110 {
        let case = random_case(seed);
        let expected = naive(&case);
        for workers in [1, 4] {
            let got = run(&case, workers, false);
            for t in 0..TIMES as usize {
                assert_eq!(
                    got[t], expected[t],
                    "seed {seed}, {workers} workers, time {t}"
                );
            }
        }
    }
}

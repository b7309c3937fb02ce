//! Reclocking across restarts: a restarted source re-emits every record it
//! had bound at exactly the recorded time, loses nothing, and gives new
//! records later times.

mod kafka_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use weft_connectors::kafka::reclock;
use weft_connectors::kafka::{KafkaPart, KafkaSourceConfig};
use weft_connectors::source::{Poll, SourcePart};

/// Polls until `stop` says so or the part is done; sleeps a tick between
/// polls so that records spread over several times.
fn read(part: &mut KafkaPart, budget: usize, stop: impl Fn(usize) -> bool) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut lower = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop(out.len()) {
        assert!(Instant::now() < deadline, "part did not deliver: {part:?}");
        let mut batch = Vec::new();
        let p = part.poll(&mut batch, budget);
        for (d, t) in batch {
            assert!(t >= lower, "record at {t} below the lower bound {lower}");
            out.push((d.expect("valid event").message_id().to_string(), t));
        }
        match p {
            Poll::Done => break,
            Poll::Pending { lower: l, .. } => {
                assert!(l >= lower);
                lower = l;
            }
        }
        std::thread::sleep(Duration::from_millis(7));
    }
    out
}

/// The time recorded for offset `offset` of `partition`, if it is bound.
fn recorded(
    state: &std::path::Path,
    source: &str,
    topic: &str,
    partition: i32,
    offset: u64,
) -> Option<u64> {
    let log =
        reclock::BindingLog::open(reclock::log_path(state, source, topic, partition)).unwrap();
    log.bindings()
        .iter()
        .find(|b| b.lo <= offset && offset < b.hi)
        .map(|b| b.time)
}

#[test]
fn restart_reemits_bound_records_at_their_times() {
    let brokers = brokers_or_skip!();
    let mut topics = kafka_support::Topics::new(&brokers);
    let t = topics.create("resume", 3);
    // Record i goes to partition i % 3 at offset i / 3.
    let wave = |from: usize, to: usize| {
        kafka_support::produce(
            &brokers,
            &t,
            &(from..to)
                .map(|i| ((i % 3) as i32, kafka_support::event(i)))
                .collect::<Vec<_>>(),
        );
    };
    for peers in [1, 3] {
        let state = tempfile::tempdir().unwrap();
        let mut cfg = KafkaSourceConfig::new(
            "resume",
            &brokers,
            vec![t.clone()],
            state.path().to_path_buf(),
        );
        cfg.tick_ms = 5;
        // With 3 workers the topic already holds the 1-worker run's records.
        let base = if peers == 1 { 0 } else { 600 };
        // STEP 1. A live run: three waves of records, each read at a later
        // tick; then a fourth wave, partly read; then a "crash".
        let mut parts: Vec<KafkaPart> = (0..peers).map(|w| cfg.part(w, peers).unwrap()).collect();
        let mut first = BTreeMap::new();
        let mut expected = base;
        for w in 0..3 {
            wave(base + w * 100, base + (w + 1) * 100);
            expected += 100;
            let deadline = Instant::now() + Duration::from_secs(30);
            while first.len() < expected {
                assert!(
                    Instant::now() < deadline,
                    "{peers} workers: read {} of {expected}",
                    first.len()
                );
                for part in &mut parts {
                    let mut out = Vec::new();
                    part.poll(&mut out, 1000);
                    for (d, time) in out {
                        first.insert(d.unwrap().message_id().to_string(), time);
                    }
                }
                std::thread::sleep(Duration::from_millis(3));
            }
            std::thread::sleep(Duration::from_millis(12));
        }
        wave(base + 300, base + 600);
        let deadline = Instant::now() + Duration::from_secs(30);
        let before = first.len();
        while first.len() == before {
            assert!(Instant::now() < deadline, "the fourth wave never arrived");
            for part in &mut parts {
                let mut out = Vec::new();
                part.poll(&mut out, 7);
                for (d, time) in out {
                    first.insert(d.unwrap().message_id().to_string(), time);
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(parts);
        let distinct: std::collections::BTreeSet<u64> = first.values().copied().collect();
        assert!(
            distinct.len() >= 3,
            "records should span several times: {distinct:?}"
        );
        let max_recorded = (0..3)
            .filter_map(|p| {
                reclock::BindingLog::open(reclock::log_path(state.path(), "resume", &t, p))
                    .unwrap()
                    .max_time()
            })
            .max()
            .unwrap();
        let bound: BTreeMap<String, Option<u64>> = (0..base + 600)
            .map(|i| {
                (
                    format!("m{i}"),
                    recorded(state.path(), "resume", &t, (i % 3) as i32, (i / 3) as u64),
                )
            })
            .collect();
        // STEP 2. Restart (bounded) and read everything.
        cfg.bounded = true;
        let mut second = Vec::new();
        for w in 0..peers {
            second.extend(read(&mut cfg.part(w, peers).unwrap(), 50, |_| false));
        }
        assert_eq!(
            second.len(),
            base + 600,
            "{peers} workers: every record exactly once"
        );
        let second: BTreeMap<String, u64> = second.into_iter().collect();
        assert_eq!(
            second.len(),
            base + 600,
            "{peers} workers: no duplicate ids"
        );
        let emitted = first.len();
        let bound_only = bound
            .iter()
            .filter(|(id, b)| b.is_some() && !first.contains_key(*id))
            .count();
        eprintln!(
            "{peers} workers: {emitted} emitted, {bound_only} bound but not emitted, {} new",
            base + 600 - emitted - bound_only
        );
        assert!(
            bound_only > 0,
            "the crash should leave bound records that were not handed out"
        );
        for (id, time) in &second {
            match (first.get(id), bound[id]) {
                (Some(t0), _) => assert_eq!(time, t0, "{peers} workers: emitted record {id} moved"),
                (None, Some(t0)) => {
                    assert_eq!(*time, t0, "{peers} workers: bound record {id} moved")
                }
                (None, None) => assert!(
                    *time >= max_recorded + cfg.tick_ms,
                    "{peers} workers: new record {id} at {time}"
                ),
            }
        }
        // STEP 3. A third run, everything bound now: identical to the second.
        let mut third = Vec::new();
        for w in 0..peers {
            third.extend(read(&mut cfg.part(w, peers).unwrap(), 1000, |_| false));
        }
        let third: BTreeMap<String, u64> = third.into_iter().collect();
        assert!(
            third == second,
            "{peers} workers: a full replay changed times"
        );
        for p in 0..3 {
            let log = reclock::BindingLog::open(reclock::log_path(state.path(), "resume", &t, p))
                .unwrap();
            assert_eq!(
                (log.lower(), log.upper()),
                (Some(0), Some((base as u64 + 600) / 3)),
                "partition {p}"
            );
        }
    }
}

#[test]
fn records_produced_after_a_restart_are_new() {
    let brokers = brokers_or_skip!();
    let mut topics = kafka_support::Topics::new(&brokers);
    let t = topics.create("resume-more", 2);
    kafka_support::produce(
        &brokers,
        &t,
        &(0..100)
            .map(|i| ((i % 2) as i32, kafka_support::event(i)))
            .collect::<Vec<_>>(),
    );
    let state = tempfile::tempdir().unwrap();
    let mut cfg = KafkaSourceConfig::new(
        "more",
        &brokers,
        vec![t.clone()],
        state.path().to_path_buf(),
    );
    cfg.tick_ms = 5;
    cfg.bounded = true;
    let first: BTreeMap<String, u64> = read(&mut cfg.part(0, 1).unwrap(), 30, |_| false)
        .into_iter()
        .collect();
    assert_eq!(first.len(), 100);
    kafka_support::produce(
        &brokers,
        &t,
        &(100..160)
            .map(|i| ((i % 2) as i32, kafka_support::event(i)))
            .collect::<Vec<_>>(),
    );
    let second: BTreeMap<String, u64> = read(&mut cfg.part(0, 1).unwrap(), 30, |_| false)
        .into_iter()
        .collect();
    assert_eq!(second.len(), 160);
    let max_first = *first.values().max().unwrap();
    for (id, t) in &second {
        match first.get(id) {
            Some(t0) => assert_eq!(t, t0),
            None => assert!(*t > max_first),
        }
    }
}

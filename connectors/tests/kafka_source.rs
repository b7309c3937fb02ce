//! The Kafka source against a real broker: every record exactly once for any
//! number of workers, errors with their partition and offset, idle
//! partitions that do not hold back the frontier.

mod kafka_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use weft_connectors::kafka::source::owner;
use weft_connectors::kafka::{KafkaPart, KafkaSourceConfig};
use weft_connectors::source::{Decoded, Poll, SourcePart};

/// What a record became: an event id, or an error with its position.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Got {
    Event(String),
    Error {
        partition: u32,
        offset: u64,
        reason: String,
        raw: Vec<u8>,
    },
}

fn got(d: &Decoded) -> Got {
    match d {
        Ok(e) => Got::Event(e.message_id().to_string()),
        Err(r) => Got::Error {
            partition: r.partition,
            offset: r.offset,
            reason: r.reason.to_string(),
            raw: r.raw.to_vec(),
        },
    }
}

/// Polls a bounded part to the end, checking that no record comes before
/// the lower bound last returned and that the bound never goes back.
fn drain(part: &mut KafkaPart, budget: usize) -> Vec<(Got, u64)> {
    let mut out = Vec::new();
    let mut lower = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "bounded part did not finish: {part:?}"
        );
        let mut batch = Vec::new();
        let p = part.poll(&mut batch, budget);
        assert!(batch.len() <= budget);
        for (d, t) in batch {
            assert!(t >= lower, "record at {t} below the lower bound {lower}");
            out.push((got(&d), t));
        }
        match p {
            Poll::Done => return out,
            Poll::Pending { lower: l, idle } => {
                assert!(l >= lower, "lower bound went back from {lower} to {l}");
                lower = l;
                if idle {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
}

fn config(name: &str, brokers: &str, topics: &[&str], state: &Path) -> KafkaSourceConfig {
    let mut cfg = KafkaSourceConfig::new(
        name,
        brokers,
        topics.iter().map(|t| t.to_string()).collect(),
        state.to_path_buf(),
    );
    cfg.bounded = true;
    cfg.tick_ms = 10;
    cfg
}

/// Produces `n` records round-robin over `partitions`; every 97th is
/// malformed. Returns what each should become.
fn produce_mixed(brokers: &str, topic: &str, partitions: i32, n: usize) -> Vec<Got> {
    let mut records = Vec::new();
    let mut expected = Vec::new();
    let mut next_offset = vec![0u64; partitions as usize];
    for i in 0..n {
        let p = (i % partitions as usize) as i32;
        let offset = next_offset[p as usize];
        next_offset[p as usize] += 1;
        let (value, reason) = match i % 97 {
            13 => (
                b"{\"type\":\"track\",broken".to_vec(),
                Some("malformed_json"),
            ),
            41 => (b"not json \xff".to_vec(), Some("invalid_utf8")),
            71 => (Vec::new(), Some("empty")),
            _ => (kafka_support::event(i), None),
        };
        expected.push(match reason {
            Some(r) => Got::Error {
                partition: p as u32,
                offset,
                reason: r.to_string(),
                raw: value.clone(),
            },
            None => Got::Event(format!("m{i}")),
        });
        records.push((p, value));
    }
    kafka_support::produce(brokers, topic, &records);
    expected.sort();
    expected
}

#[test]
fn every_record_once_for_one_and_three_workers() {
    let brokers = brokers_or_skip!();
    let mut topics = kafka_support::Topics::new(&brokers);
    let a = topics.create("source-once", 4);
    let expected = produce_mixed(&brokers, &a, 4, 2000);
    assert!(
        expected
            .iter()
            .filter(|g| matches!(g, Got::Error { .. }))
            .count()
            >= 60
    );
    for peers in [1, 3] {
        let state = tempfile::tempdir().unwrap();
        let cfg = config("events", &brokers, &[&a], state.path());
        let mut all = Vec::new();
        let mut assigned = Vec::new();
        for w in 0..peers {
            let mut part = cfg.part(w, peers).unwrap();
            for (t, p) in part.assigned() {
                assert_eq!(owner(&t, p, 0, peers), w);
                assigned.push((t, p));
            }
            all.extend(drain(&mut part, 97).into_iter().map(|(g, _)| g));
        }
        assigned.sort();
        assert_eq!(
            assigned,
            (0..4).map(|p| (a.clone(), p)).collect::<Vec<_>>(),
            "{peers} workers"
        );
        all.sort();
        assert_eq!(all.len(), expected.len(), "{peers} workers");
        assert!(all == expected, "{peers} workers: records differ");
    }
}

#[test]
fn several_topics_in_one_source() {
    let brokers = brokers_or_skip!();
    let mut topics = kafka_support::Topics::new(&brokers);
    let a = topics.create("source-multi-a", 2);
    let b = topics.create("source-multi-b", 3);
    kafka_support::produce(
        &brokers,
        &a,
        &(0..100)
            .map(|i| ((i % 2) as i32, kafka_support::event(i)))
            .collect::<Vec<_>>(),
    );
    kafka_support::produce(
        &brokers,
        &b,
        &(100..250)
            .map(|i| ((i % 3) as i32, kafka_support::event(i)))
            .collect::<Vec<_>>(),
    );
    let state = tempfile::tempdir().unwrap();
    let cfg = config("multi", &brokers, &[&a, &b], state.path());
    let mut ids = Vec::new();
    for w in 0..2 {
        ids.extend(
            drain(&mut cfg.part(w, 2).unwrap(), 64)
                .into_iter()
                .map(|(g, _)| g),
        );
    }
    ids.sort();
    let mut expected: Vec<Got> = (0..250).map(|i| Got::Event(format!("m{i}"))).collect();
    expected.sort();
    assert_eq!(ids, expected);
}

#[test]
fn empty_partitions_do_not_hold_back_the_frontier() {
    let brokers = brokers_or_skip!();
    let mut topics = kafka_support::Topics::new(&brokers);
    let t = topics.create("source-idle", 3);
    kafka_support::produce(
        &brokers,
        &t,
        &(0..50)
            .map(|i| (0, kafka_support::event(i)))
            .collect::<Vec<_>>(),
    );
    // Bounded: the empty partitions end at once.
    let state = tempfile::tempdir().unwrap();
    let cfg = config("idle", &brokers, &[&t], state.path());
    assert_eq!(drain(&mut cfg.part(0, 1).unwrap(), 1000).len(), 50);
    // Unbounded, one worker per partition: every part's lower bound follows
    // the clock, whether its partition has records or not.
    let state = tempfile::tempdir().unwrap();
    let mut cfg = config("idle-live", &brokers, &[&t], state.path());
    cfg.bounded = false;
    let mut parts: Vec<KafkaPart> = (0..3).map(|w| cfg.part(w, 3).unwrap()).collect();
    let mut first: Vec<Option<u64>> = vec![None; 3];
    let mut last = [0u64; 3];
    let mut records = [0usize; 3];
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) || records.iter().sum::<usize>() < 50 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "only {records:?} of 50 records"
        );
        for (w, part) in parts.iter_mut().enumerate() {
            let mut out = Vec::new();
            match part.poll(&mut out, 1000) {
                Poll::Done => panic!("an unbounded part finished"),
                Poll::Pending { lower, .. } => {
                    assert!(lower >= last[w]);
                    assert!(out.iter().all(|(_, t)| *t >= last[w]));
                    last[w] = lower;
                    first[w].get_or_insert(lower);
                }
            }
            records[w] += out.len();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(records.iter().sum::<usize>(), 50);
    for w in 0..3 {
        let advanced = last[w] - first[w].unwrap();
        assert!(
            advanced >= 1000,
            "worker {w} ({:?}) advanced only {advanced} ms",
            parts[w].assigned()
        );
        assert_eq!(last[w] % 10, 0, "times are whole ticks");
    }
}

#[test]
fn owned_options_are_refused_with_a_clear_message() {
    let brokers = brokers_or_skip!();
    let state = tempfile::tempdir().unwrap();
    let mut cfg = config("opts", &brokers, &["whatever"], state.path());
    cfg.options = BTreeMap::from([("enable.auto.commit".to_string(), "true".to_string())]);
    let err = cfg.part(0, 1).unwrap_err().to_string();
    assert!(err.contains("`enable.auto.commit`"), "{err}");
    cfg.options.clear();
    let err = cfg.part(0, 1).unwrap_err().to_string();
    assert!(
        err.contains("does not exist") && err.contains("whatever"),
        "{err}"
    );
}

//! The Kafka sinks against a real broker: each time's changes become visible
//! exactly once to `read_committed` readers across crashes after and before
//! a commit; zombies are fenced; dead letters keep the reason and the
//! original bytes.

mod kafka_support;

use std::collections::BTreeMap;

use weft_connectors::kafka::{DeadLetterSink, KafkaSink, KafkaSinkConfig, KafkaSourceConfig};
use weft_connectors::sink::Sink;
use weft_connectors::source::{Poll, SourcePart};
use weft_dataflows::event::{parse_event, Event, ParseContext};
use weft_dataflows::record::{CountKey, ErrorRecord};

/// `(time, op, key)` of a record in an output topic.
type Row = (u64, String, String);

/// The changes of one time: events, and counts.
type Changes = (Vec<(Event, isize)>, Vec<((CountKey, isize), isize)>);

fn ev(i: usize) -> Event {
    parse_event(&kafka_support::event(i), &ParseContext::default()).unwrap()
}

/// The changes at time `t` of a made-up output: events and counts.
fn changes(t: u64) -> Changes {
    let events = (0..5).map(|i| (ev(t as usize * 100 + i), 1)).collect();
    let counts = vec![
        (
            (CountKey::TrackEvent(format!("E{t}").into()), t as isize),
            1,
        ),
        (
            (
                CountKey::TrackEvent(format!("E{}", t.saturating_sub(1)).into()),
                t as isize - 1,
            ),
            -1,
        ),
    ];
    (events, counts)
}

fn write_time(events: &mut KafkaSink, counts: &mut KafkaSink, t: u64) {
    let (e, c) = changes(t);
    events.write(t, &e).unwrap();
    counts.write(t, &c).unwrap();
}

/// `(time, op, key)` of every record read back, sorted.
fn read_back(brokers: &str, topic: &str) -> Vec<Row> {
    let mut out: Vec<Row> = kafka_support::read_all(brokers, topic, "read_committed")
        .into_iter()
        .map(|r| {
            let header = |h: &str| {
                r.headers
                    .get(h)
                    .map(|v| String::from_utf8(v.clone()).unwrap())
            };
            let time: u64 = header("weft.time").unwrap().parse().unwrap();
            let key = String::from_utf8(r.key.clone().unwrap()).unwrap();
            if r.value.is_empty() {
                // A tombstone: the retraction of a key not inserted again at that time.
                assert_eq!(header("weft.op").as_deref(), Some("delete"));
                assert!(header("weft.diff").unwrap().parse::<i64>().unwrap() < 0);
                return (time, "delete".to_string(), key);
            }
            let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
            assert_eq!(v["time"].as_u64(), Some(time));
            assert_eq!(v["op"], "insert");
            assert!(v["diff"].as_i64().unwrap() > 0);
            (time, "insert".to_string(), key)
        })
        .collect();
    out.sort();
    out
}

fn expected(times: std::ops::RangeInclusive<u64>) -> (Vec<Row>, Vec<Row>) {
    let mut ev_out = Vec::new();
    let mut ct_out = Vec::new();
    for t in times {
        let (e, c) = changes(t);
        for (e, _) in e {
            ev_out.push((t, "insert".to_string(), e.message_id().to_string()));
        }
        for ((k, _), d) in c {
            let key = match k {
                CountKey::TrackEvent(e) => format!("track_event:{e}"),
                _ => unreachable!(),
            };
            ct_out.push((t, if d > 0 { "insert" } else { "delete" }.to_string(), key));
        }
    }
    ev_out.sort();
    ct_out.sort();
    (ev_out, ct_out)
}

#[test]
fn each_time_is_committed_once_across_crashes() {
    let brokers = brokers_or_skip!();
    let mut topics = kafka_support::Topics::new(&brokers);
    let ev_topic = topics.create("sink-events", 3);
    let ct_topic = topics.create("sink-counts", 2);
    let ev_cfg = KafkaSinkConfig::new(
        "events",
        &brokers,
        &ev_topic,
        kafka_support::unique("txn-events"),
    );
    let ct_cfg = KafkaSinkConfig::new(
        "counts",
        &brokers,
        &ct_topic,
        kafka_support::unique("txn-counts"),
    );
    let open = || {
        (
            KafkaSink::open(&ev_cfg).unwrap(),
            KafkaSink::open(&ct_cfg).unwrap(),
        )
    };

    // Run 1: times 1..=4 committed, then a crash after the commit.
    let (mut e, mut c) = open();
    assert_eq!(e.committed_frontier(), vec![0]);
    for t in 1..=3 {
        write_time(&mut e, &mut c, t);
    }
    e.commit(&[4]).unwrap();
    c.commit(&[4]).unwrap();
    write_time(&mut e, &mut c, 4);
    e.commit(&[5]).unwrap();
    c.commit(&[5]).unwrap();
    drop((e, c));

    // Run 2: the replay rewrites 1..=4 (skipped), adds 5 and 6, commits 5
    // only, and crashes before committing 6 (the sinks are leaked, not
    // dropped: like a killed process, they do not clean up).
    let (mut e, mut c) = open();
    assert_eq!(e.committed_frontier(), vec![5]);
    for t in 1..=5 {
        write_time(&mut e, &mut c, t);
        if t == 5 {
            e.commit(&[6]).unwrap();
            c.commit(&[6]).unwrap();
        }
    }
    assert_eq!(e.counts(), (5, 4 * 5));
    write_time(&mut e, &mut c, 6);
    std::mem::forget((e, c));

    // Run 3: resumes at 6 and finishes.
    let (mut e, mut c) = open();
    assert_eq!(e.committed_frontier(), vec![6]);
    assert_eq!(c.committed_frontier(), vec![6]);
    for t in 1..=7 {
        write_time(&mut e, &mut c, t);
        e.commit(&[t + 1]).unwrap();
        c.commit(&[t + 1]).unwrap();
    }
    e.commit(&[]).unwrap();
    c.commit(&[]).unwrap();
    drop((e, c));

    let (ev_expected, ct_expected) = expected(1..=7);
    assert_eq!(read_back(&brokers, &ev_topic), ev_expected);
    assert_eq!(read_back(&brokers, &ct_topic), ct_expected);

    // Run 4: the output is complete; nothing is written again.
    let (mut e, _c) = open();
    assert_eq!(e.committed_frontier(), Vec::<u64>::new());
    let (ev8, _) = changes(8);
    e.write(8, &ev8).unwrap();
    e.commit(&[]).unwrap();
    assert_eq!(e.counts(), (0, 5));
    drop(e);
    assert_eq!(read_back(&brokers, &ev_topic), ev_expected);
    // The progress topic holds one record per commit that carried data, plus the final ones.
    let progress: Vec<serde_json::Value> =
        kafka_support::read_all(&brokers, &ev_cfg.progress_topic(), "read_committed")
            .into_iter()
            .map(|r| serde_json::from_slice(&r.value).unwrap())
            .collect();
    assert_eq!(
        progress.last().unwrap(),
        &serde_json::json!({"sink": "events", "frontier": []})
    );
}

#[test]
fn a_fenced_sink_cannot_commit() {
    let brokers = brokers_or_skip!();
    let mut topics = kafka_support::Topics::new(&brokers);
    let topic = topics.create("sink-fence", 1);
    let cfg = KafkaSinkConfig::new(
        "fence",
        &brokers,
        &topic,
        kafka_support::unique("txn-fence"),
    );
    let mut zombie = KafkaSink::open(&cfg).unwrap();
    zombie.write(1, &[(ev(1), 1)]).unwrap();
    zombie.commit(&[2]).unwrap();
    // A new incarnation fences the old one.
    let mut live = KafkaSink::open(&cfg).unwrap();
    assert_eq!(live.committed_frontier(), vec![2]);
    zombie.write(2, &[(ev(2), 1)]).unwrap();
    let err = zombie.commit(&[3]).unwrap_err().to_string();
    assert!(err.contains("restart the job"), "{err}");
    live.write(2, &[(ev(3), 1)]).unwrap();
    live.commit(&[3]).unwrap();
    let keys: Vec<String> = read_back(&brokers, &topic)
        .into_iter()
        .map(|(_, _, k)| k)
        .collect();
    assert_eq!(keys, ["m1", "m3"]);
}

#[test]
fn dead_letters_keep_the_reason_and_the_original_bytes() {
    let brokers = brokers_or_skip!();
    let mut topics = kafka_support::Topics::new(&brokers);
    let input = topics.create("dlq-in", 2);
    let dlq = topics.create("dlq-out", 1);
    let bad: Vec<(i32, Vec<u8>)> = vec![
        (0, b"{\"type\":\"track\"".to_vec()),
        (1, b"\xff\xfe not utf-8".to_vec()),
        (0, b"{\"type\":\"track\",\"event\":\"x\"}".to_vec()),
        (1, b"[1,2]".to_vec()),
    ];
    let mut records = bad.clone();
    records.insert(1, (0, kafka_support::event(1)));
    kafka_support::produce(&brokers, &input, &records);
    // Read them with the source, as a job would.
    let state = tempfile::tempdir().unwrap();
    let mut cfg = KafkaSourceConfig::new(
        "in",
        &brokers,
        vec![input.clone()],
        state.path().to_path_buf(),
    );
    cfg.bounded = true;
    let mut part = cfg.part(0, 1).unwrap();
    let mut errors: Vec<(ErrorRecord, u64)> = Vec::new();
    let mut valid = 0;
    loop {
        let mut out = Vec::new();
        let p = part.poll(&mut out, 100);
        for (d, t) in out {
            match d {
                Ok(_) => valid += 1,
                Err(r) => errors.push((r, t)),
            }
        }
        if p == Poll::Done {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!((valid, errors.len()), (1, 4));
    let mut sink = DeadLetterSink::open(&KafkaSinkConfig::new(
        "dlq",
        &brokers,
        &dlq,
        kafka_support::unique("txn-dlq"),
    ))
    .unwrap();
    errors.sort_by_key(|(_, t)| *t);
    let mut by_time: BTreeMap<u64, Vec<(ErrorRecord, isize)>> = BTreeMap::new();
    for (r, t) in &errors {
        by_time.entry(*t).or_default().push((r.clone(), 1));
    }
    for (t, recs) in &by_time {
        sink.write(*t, recs).unwrap();
    }
    sink.commit(&[]).unwrap();
    let read = kafka_support::read_all(&brokers, &dlq, "read_committed");
    assert_eq!(read.len(), 4);
    let mut got: Vec<(Vec<u8>, String, String, String)> = read
        .iter()
        .map(|r| {
            let h = |k: &str| String::from_utf8(r.headers[k].clone()).unwrap();
            assert_eq!(h("weft.source"), "in");
            assert!(!h("weft.message").is_empty());
            assert_eq!(
                String::from_utf8(r.key.clone().unwrap()).unwrap(),
                format!("in:{}:{}", h("weft.partition"), h("weft.offset"))
            );
            (
                r.value.clone(),
                h("weft.reason"),
                h("weft.partition"),
                h("weft.offset"),
            )
        })
        .collect();
    got.sort();
    let mut want = vec![
        (
            bad[0].1.clone(),
            "malformed_json".to_string(),
            "0".to_string(),
            "0".to_string(),
        ),
        (
            bad[1].1.clone(),
            "invalid_utf8".to_string(),
            "1".to_string(),
            "0".to_string(),
        ),
        (
            bad[2].1.clone(),
            "missing_id".to_string(),
            "0".to_string(),
            "2".to_string(),
        ),
        (
            bad[3].1.clone(),
            "not_an_object".to_string(),
            "1".to_string(),
            "1".to_string(),
        ),
    ];
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn progress_is_found_behind_other_sinks_records() {
    let brokers = brokers_or_skip!();
    let mut topics = kafka_support::Topics::new(&brokers);
    let topic = topics.create("sink-scan", 1);
    let cfg = KafkaSinkConfig::new("scan", &brokers, &topic, kafka_support::unique("txn-scan"));
    let mut sink = KafkaSink::open(&cfg).unwrap();
    let started = std::time::Instant::now();
    for t in 1..=5u64 {
        sink.write(t, &[(ev(t as usize), 1)]).unwrap();
        sink.commit(&[t + 1]).unwrap();
    }
    eprintln!("5 commits took {:?}", started.elapsed());
    drop(sink);
    // Another sink writing to the same topic commits 1,500 times after us:
    // our last progress record is far behind the end of the progress topic.
    let other: Vec<(i32, Vec<u8>)> = (0..1500)
        .map(|i| {
            (
                0,
                format!(r#"{{"sink":"other","frontier":[{i}]}}"#).into_bytes(),
            )
        })
        .collect();
    let p = kafka_support::producer(&brokers);
    for (_, v) in &other {
        p.send(
            rdkafka::producer::BaseRecord::to(&cfg.progress_topic())
                .key("other")
                .payload(&v[..]),
        )
        .unwrap();
        p.poll(std::time::Duration::ZERO);
    }
    rdkafka::producer::Producer::flush(&p, std::time::Duration::from_secs(30)).unwrap();
    let sink = KafkaSink::open(&cfg).unwrap();
    assert_eq!(sink.committed_frontier(), vec![6]);
    // A sink that never committed starts from the beginning.
    let fresh = KafkaSink::open(&KafkaSinkConfig::new(
        "fresh",
        &brokers,
        &topic,
        kafka_support::unique("txn-fresh"),
    ))
    .unwrap();
    assert_eq!(fresh.committed_frontier(), vec![0]);
}

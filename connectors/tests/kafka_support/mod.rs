//! Shared helpers of the Kafka integration tests: the broker, unique topics
//! that delete themselves, producing and reading back.
//!
//! The broker's address comes from `KAFKA_BROKERS`; without it the tests start
//! one with `scripts/kafka.sh start` (tansu on 127.0.0.1, installed if missing).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;
use weft_connectors::kafka::admin;

/// The brokers to test against, starting tansu if `KAFKA_BROKERS` is unset.
/// `None` (after a loud message) only if the broker cannot be installed and
/// this is not CI; under CI that is a failure.
pub fn brokers() -> Option<String> {
    static BROKERS: OnceLock<Option<String>> = OnceLock::new();
    BROKERS
        .get_or_init(|| {
            if let Ok(b) = std::env::var("KAFKA_BROKERS") {
                if !b.trim().is_empty() {
                    return Some(b);
                }
            }
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/kafka.sh");
            let out = Command::new("bash").arg(script).arg("start").output();
            let failure = match out {
                Ok(o) if o.status.success() => {
                    let stdout = String::from_utf8_lossy(&o.stdout);
                    if let Some(b) = stdout
                        .lines()
                        .find_map(|l| l.strip_prefix("KAFKA_BROKERS="))
                    {
                        return Some(b.trim().to_string());
                    }
                    format!("scripts/kafka.sh start printed no KAFKA_BROKERS line: {stdout}")
                }
                Ok(o) => format!(
                    "scripts/kafka.sh start failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => format!("cannot run scripts/kafka.sh: {e}"),
            };
            if std::env::var_os("CI").is_some() {
                panic!("no Kafka broker under CI: {failure}");
            }
            eprintln!("\n!!!!!!!!!! SKIPPING Kafka tests: no broker. {failure}\n");
            None
        })
        .clone()
}

/// Gets the brokers or returns from the test (after the loud message).
#[macro_export]
macro_rules! brokers_or_skip {
    () => {
        match kafka_support::brokers() {
            Some(b) => b,
            None => return,
        }
    };
}

/// A unique name for this test run.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "weft-test-{prefix}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Topics created for one test, deleted (with their progress topics) on drop.
pub struct Topics {
    pub brokers: String,
    pub names: Vec<String>,
}

impl Topics {
    pub fn new(brokers: &str) -> Self {
        Topics {
            brokers: brokers.to_string(),
            names: Vec::new(),
        }
    }

    /// Creates a uniquely named topic and returns its name.
    pub fn create(&mut self, prefix: &str, partitions: i32) -> String {
        let name = unique(prefix);
        assert!(
            admin::create_topic(&self.brokers, &name, partitions, &[]).unwrap(),
            "{name} existed"
        );
        self.names.push(name.clone());
        // The sink's progress topic, if a test makes one.
        self.names.push(format!("{name}.weft-progress"));
        name
    }
}

impl Drop for Topics {
    fn drop(&mut self) {
        let names: Vec<&str> = self.names.iter().map(|s| s.as_str()).collect();
        if let Err(e) = admin::delete_topics(&self.brokers, &names) {
            eprintln!("cannot delete test topics {names:?}: {e}");
        }
    }
}

/// A plain (idempotent, non-transactional) producer.
pub fn producer(brokers: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

/// Produces `(partition, value)` records and waits until all are delivered.
pub fn produce(brokers: &str, topic: &str, records: &[(i32, Vec<u8>)]) {
    let p = producer(brokers);
    for (partition, value) in records {
        let mut rec = BaseRecord::<(), [u8]>::to(topic)
            .partition(*partition)
            .payload(&value[..]);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    p.poll(Duration::from_millis(10));
                }
            }
        }
    }
    p.flush(Duration::from_secs(30)).expect("flush");
}

/// A Segment track event with a unique `messageId`.
pub fn event(i: usize) -> Vec<u8> {
    format!(
        r#"{{"type":"track","event":"E{}","userId":"u{}","messageId":"m{i}","timestamp":"2026-01-01T00:00:00Z","properties":{{"i":{i}}}}}"#,
        i % 5,
        i % 17
    )
    .into_bytes()
}

/// One record read back.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Read {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: BTreeMap<String, Vec<u8>>,
}

/// Reads every partition of `topic` to its end with the given isolation level.
pub fn read_all(brokers: &str, topic: &str, isolation: &str) -> Vec<Read> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    let n = admin::partition_count(brokers, topic)
        .unwrap()
        .expect("topic exists");
    let mut tpl = TopicPartitionList::new();
    for p in 0..n as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut eof = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while eof.len() < n {
        assert!(
            Instant::now() < deadline,
            "reading {topic} did not reach the end of {n} partitions"
        );
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                eof.insert(p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            Some(Ok(m)) => {
                eof.remove(&m.partition());
                let mut headers = BTreeMap::new();
                if let Some(h) = m.headers() {
                    for i in 0..h.count() {
                        let hd = h.get(i);
                        headers.insert(hd.key.to_string(), hd.value.unwrap_or_default().to_vec());
                    }
                }
                out.push(Read {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(|k| k.to_vec()),
                    value: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
        }
    }
    out
}

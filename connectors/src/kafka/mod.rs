//! Kafka source and sinks (librdkafka through `rdkafka`), exactly once across restarts.
//!
//! ```text
//!   input topics                 Weft workers                        output topics
//!  ┌────────────┐   assign   ┌──────────────────┐              ┌──────────────────────┐
//!  │ t0 p0 p1 … │ ─────────► │ KafkaPart (w0)   │   changes    │ <topic>              │
//!  │ t1 p0 …    │ ─────────► │ KafkaPart (w1)   │ ──► dataflow │   op/diff/time/data  │
//!  └────────────┘            └──────┬───────────┘   ──► sinks  │ <topic>.weft-progress│
//!                                   │ fsync before emit        │   {sink, frontier}   │
//!                          STATE_DIR/kafka-reclock/…           └──────────────────────┘
//!                          time ⇒ [lo, hi) per partition          one transaction per commit
//! ```
//!
//! * [`source`]: [`KafkaSourceConfig::part`] gives each worker a
//!   [`KafkaPart`] that reads its share of the partitions, decodes each
//!   record into an [`Event`](weft_dataflows::event::Event) or an
//!   [`ErrorRecord`](weft_dataflows::record::ErrorRecord), and binds it to a
//!   logical time.
//! * [`reclock`]: the durable `time ⇒ [lo, hi)` bindings and their invariants.
//! * [`sink`]: [`KafkaSink`] (JSON changes) and [`DeadLetterSink`] (rejected
//!   records with their original bytes), both transactional with a progress
//!   record, so a restarted job writes exactly what was not committed.
//! * [`admin`]: topic creation and deletion (tests, benchmarks, progress topics).
//!
//! librdkafka options pass through from the job spec unchanged, except the
//! few Weft owns; [`validate_options`] names them.

pub mod admin;
mod keys;
pub mod reclock;
pub mod sink;
pub mod source;

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake};
use std::thread::{self, Thread};

use rdkafka::ClientConfig;

pub use sink::{DeadLetterSink, KafkaKey, KafkaSink, KafkaSinkConfig};
pub use source::{KafkaPart, KafkaSourceConfig};

/// What can go wrong while setting up or running a Kafka connector.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// The configuration is unusable; the message says what to change.
    #[error("{0}")]
    Config(String),
    /// librdkafka or the broker refused an operation.
    #[error("{context}: {source}")]
    Client {
        /// What Weft was doing.
        context: String,
        /// The client's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The reclock state could not be read or written.
    #[error("{context}: {source}")]
    State {
        /// What Weft was doing.
        context: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

impl KafkaError {
    pub(crate) fn client(context: impl Into<String>, source: rdkafka::error::KafkaError) -> Self {
        KafkaError::Client {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn state(context: impl Into<String>, source: io::Error) -> Self {
        KafkaError::State {
            context: context.into(),
            source,
        }
    }
}

impl From<KafkaError> for io::Error {
    fn from(e: KafkaError) -> io::Error {
        let kind = match &e {
            KafkaError::Config(_) => io::ErrorKind::InvalidInput,
            KafkaError::State { source, .. } => source.kind(),
            KafkaError::Client { .. } => io::ErrorKind::Other,
        };
        io::Error::new(kind, e.to_string())
    }
}

/// Options Weft sets itself, and why a job may not.
const OWNED_OPTIONS: &[(&str, &str)] = &[
    ("bootstrap.servers", "Weft sets it from the connector's `brokers` field"),
    ("metadata.broker.list", "Weft sets the brokers from the connector's `brokers` field"),
    ("group.id", "Weft assigns partitions to workers itself and keeps offsets in its reclock state, not in a consumer group"),
    ("group.instance.id", "Weft assigns partitions to workers itself and never joins a consumer group"),
    ("enable.auto.commit", "Weft keeps offsets in its reclock state and never commits them to the broker"),
    ("enable.auto.offset.store", "Weft keeps offsets in its reclock state and never stores them in the client"),
    ("auto.offset.reset", "Weft starts each partition at its recorded bindings, or at the earliest offset when there are none"),
    ("isolation.level", "Weft always reads with read_committed so that records of aborted transactions never become events"),
    ("enable.partition.eof", "Weft relies on end-of-partition events to know when a bounded read is complete"),
    ("transactional.id", "Weft sets it from the sink's `transactional_id` field"),
    ("enable.idempotence", "Weft's Kafka sinks are transactional, which requires idempotence"),
];

/// Checks job-spec librdkafka options, rejecting those Weft owns.
///
/// The error is one sentence naming the offending key and what to do.
pub fn validate_options(options: &BTreeMap<String, String>) -> Result<(), String> {
    for key in options.keys() {
        let k = key.trim();
        if let Some((_, why)) = OWNED_OPTIONS.iter().find(|(owned, _)| *owned == k) {
            return Err(format!(
                "librdkafka option `{k}` cannot be set in a job: {why}; remove it."
            ));
        }
    }
    Ok(())
}

/// A client configuration: brokers, then the job's options (already
/// validated), then nothing Weft-owned (callers add those last).
pub(crate) fn client_config(
    brokers: &str,
    options: &BTreeMap<String, String>,
    client_id: &str,
) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers);
    cfg.set("client.id", client_id);
    for (k, v) in options {
        cfg.set(k.trim(), v);
    }
    cfg
}

/// Milliseconds since the Unix epoch, by the wall clock.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs a future to completion on this thread (for rdkafka's admin futures,
/// which are completed by the admin client's own thread).
pub(crate) fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    loop {
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => thread::park(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_options_are_rejected_by_name() {
        let mut o = BTreeMap::new();
        o.insert("fetch.min.bytes".to_string(), "1".to_string());
        o.insert("security.protocol".to_string(), "plaintext".to_string());
        assert_eq!(validate_options(&o), Ok(()));
        for (key, _) in OWNED_OPTIONS {
            let mut bad = o.clone();
            bad.insert(key.to_string(), "x".to_string());
            let msg = validate_options(&bad).unwrap_err();
            assert!(msg.contains(&format!("`{key}`")), "{msg}");
            assert!(msg.ends_with("remove it."), "{msg}");
        }
    }
}

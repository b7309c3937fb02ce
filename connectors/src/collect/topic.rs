//! The collection API's Kafka producer: accepted events go to the job's
//! topic, and a request is answered `200` only once the brokers have
//! acknowledged every one of its events (`acks=all`, idempotent producer).
//!
//! Each record's value is the stored event (see [`super::envelope`]), its key
//! the event's `userId` (else `anonymousId`) so that one person's events keep
//! their order in one partition, and its timestamp the API's receive time.
//! A request whose events are not all acknowledged within the delivery
//! timeout (`message.timeout.ms`, 10 s unless the job sets it) fails; the
//! client retries it, and the retry's events, which carry the same
//! `messageId`s, are dropped by the job's dedupe if some had been delivered.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use tokio::sync::oneshot;

use super::envelope::CollectedEvent;
use crate::kafka::{client_config, validate_options, KafkaError};

/// Delivery timeout of one record unless the job's options set `message.timeout.ms`.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Produces accepted events to one topic.
#[derive(Clone)]
pub struct TopicWriter {
    producer: ThreadedProducer<Acks>,
    topic: String,
}

/// Hands each record's delivery report to the request waiting for it (the
/// producer's own thread calls `delivery`; no async runtime is involved).
pub struct Acks;

type Ack = oneshot::Sender<Result<(), String>>;

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = Box<Ack>;

    fn delivery(&self, result: &DeliveryResult<'_>, ack: Box<Ack>) {
        let _ = ack.send(result.as_ref().map(|_| ()).map_err(|(e, _)| e.to_string()));
    }
}

impl std::fmt::Debug for TopicWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicWriter")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl TopicWriter {
    /// A producer for `topic` on `brokers` (librdkafka `options` pass through,
    /// except those Weft owns).
    pub fn open(
        brokers: &str,
        topic: &str,
        options: &BTreeMap<String, String>,
        client_id: &str,
    ) -> Result<TopicWriter, KafkaError> {
        validate_options(options).map_err(KafkaError::Config)?;
        let mut cfg = client_config(brokers, options, client_id);
        if !options.keys().any(|k| k.trim() == "message.timeout.ms") {
            cfg.set(
                "message.timeout.ms",
                DELIVERY_TIMEOUT.as_millis().to_string(),
            );
        }
        if !options.keys().any(|k| k.trim() == "linger.ms") {
            // Requests wait for their acknowledgement: do not add to that wait.
            cfg.set("linger.ms", "1");
        }
        cfg.set("enable.idempotence", "true").set("acks", "all");
        let producer: ThreadedProducer<Acks> = cfg.create_with_context(Acks).map_err(|e| {
            KafkaError::client(
                format!("cannot create a Kafka producer for topic {topic:?}"),
                e,
            )
        })?;
        Ok(TopicWriter {
            producer,
            topic: topic.to_string(),
        })
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Produces `events` with timestamp `received_ms` and resolves once all
    /// are acknowledged, or with the first error.
    pub async fn send_all(
        &self,
        events: &[CollectedEvent],
        received_ms: i64,
    ) -> Result<(), String> {
        let mut acks = Vec::with_capacity(events.len());
        for e in events {
            let (ack, acked) = oneshot::channel();
            let mut record =
                BaseRecord::<str, [u8], Box<Ack>>::with_opaque_to(&self.topic, Box::new(ack))
                    .payload(&e.json)
                    .timestamp(received_ms);
            if let Some(k) = &e.key {
                record = record.key(k.as_str());
            }
            if let Err((err, _)) = self.producer.send(record) {
                return Err(format!(
                    "cannot queue an event for topic {}: {err}",
                    self.topic
                ));
            }
            acks.push(acked);
        }
        for acked in acks {
            match acked.await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    return Err(format!("topic {} did not take an event: {err}", self.topic))
                }
                Err(_) => return Err(format!("the producer for topic {} stopped", self.topic)),
            }
        }
        Ok(())
    }

    /// Waits up to `timeout` for queued events to be delivered.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout).map_err(|e| {
            KafkaError::client(format!("cannot flush the producer for {}", self.topic), e)
        })
    }
}

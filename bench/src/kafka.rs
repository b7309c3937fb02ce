//! Producing benchmark input: what every Kafka benchmark shares.

use std::time::Duration;

use anyhow::{bail, Result};
use rdkafka::producer::{BaseProducer, BaseRecord};

/// Sends one record to `topic`/`partition`, waiting (polling the producer)
/// while its queue is full.
pub fn send(p: &BaseProducer, topic: &str, partition: i32, payload: &[u8]) -> Result<()> {
    let mut record = BaseRecord::<(), [u8]>::to(topic)
        .partition(partition)
        .payload(payload);
    loop {
        match p.send(record) {
            Ok(()) => return Ok(()),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                r,
            )) => {
                record = r;
                p.poll(Duration::from_millis(5));
            }
            Err((e, _)) => bail!("cannot produce: {e}"),
        }
    }
}

//! Topic administration: create, grow and delete topics.
//!
//! Used by sinks (their progress topics), tests and benchmarks. Every call
//! opens a short-lived admin client and waits for the broker's answer.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use super::{block_on, KafkaError};

/// How long an admin operation may take.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

fn admin(brokers: &str) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("client.id", "weft-admin")
        .create()
        .map_err(|e| KafkaError::client(format!("cannot create an admin client for {brokers}"), e))
}

fn options() -> AdminOptions {
    AdminOptions::new()
        .operation_timeout(Some(ADMIN_TIMEOUT))
        .request_timeout(Some(ADMIN_TIMEOUT))
}

/// Creates `topic` with `partitions` partitions (replication factor 1) and the
/// given topic configs. Returns `false` if it already existed.
pub fn create_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
    config: &[(&str, &str)],
) -> Result<bool, KafkaError> {
    let admin = admin(brokers)?;
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (k, v) in config {
        new = new.set(k, v);
    }
    let results = block_on(admin.create_topics([&new], &options()))
        .map_err(|e| KafkaError::client(format!("cannot create topic {topic}"), e))?;
    for r in results {
        match r {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => return Ok(false),
            Err((t, code)) => {
                return Err(KafkaError::client(
                    format!("cannot create topic {t}"),
                    rdkafka::error::KafkaError::AdminOp(code),
                ))
            }
        }
    }
    Ok(true)
}

/// Grows `topic` to `total` partitions.
pub fn add_partitions(brokers: &str, topic: &str, total: usize) -> Result<(), KafkaError> {
    let admin = admin(brokers)?;
    let results =
        block_on(admin.create_partitions([&NewPartitions::new(topic, total)], &options()))
            .map_err(|e| KafkaError::client(format!("cannot add partitions to {topic}"), e))?;
    for r in results {
        if let Err((t, code)) = r {
            return Err(KafkaError::client(
                format!("cannot grow topic {t} to {total} partitions"),
                rdkafka::error::KafkaError::AdminOp(code),
            ));
        }
    }
    Ok(())
}

/// Deletes topics; topics that do not exist are ignored.
pub fn delete_topics(brokers: &str, topics: &[&str]) -> Result<(), KafkaError> {
    if topics.is_empty() {
        return Ok(());
    }
    let admin = admin(brokers)?;
    let results = block_on(admin.delete_topics(topics, &options()))
        .map_err(|e| KafkaError::client(format!("cannot delete topics {topics:?}"), e))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((t, code)) => {
                return Err(KafkaError::client(
                    format!("cannot delete topic {t}"),
                    rdkafka::error::KafkaError::AdminOp(code),
                ))
            }
        }
    }
    Ok(())
}

/// The number of partitions of `topic`, or `None` if the broker does not know it.
pub fn partition_count(brokers: &str, topic: &str) -> Result<Option<usize>, KafkaError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("client.id", "weft-admin")
        .create()
        .map_err(|e| KafkaError::client(format!("cannot create a client for {brokers}"), e))?;
    let md = consumer
        .fetch_metadata(Some(topic), ADMIN_TIMEOUT)
        .map_err(|e| KafkaError::client(format!("cannot read metadata of {topic}"), e))?;
    Ok(md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .and_then(|t| {
            if t.error().is_some() || t.partitions().is_empty() {
                None
            } else {
                Some(t.partitions().len())
            }
        }))
}

//! Kafka sinks: changes as keyed JSON records, written in transactions
//! together with a progress record, so that a restarted job writes exactly
//! what it had not committed.
//!
//! ## Records
//!
//! [`KafkaSink`] writes one record per change `(data, time, diff)`:
//!
//! * key: [`KafkaKey::kafka_key`] of the data (e.g. the `messageId` of an
//!   event, `metric:key` of a count);
//! * value: `{"op":"insert","diff":D,"time":T,"data":{…}}` for an insertion
//!   (positive diff);
//! * a retraction (negative diff) whose key is not also inserted at the same
//!   time is a **tombstone**: a null value, with headers `weft.op: delete`
//!   and `weft.diff`. Log compaction then forgets the key, and a retracted
//!   record's data (say, a deleted person's) is never written again. A
//!   retraction whose key is inserted at the same time (an update, such as
//!   a count going from 5 to 6) is not written: the insertion supersedes it;
//! * header `weft.time`: the logical time `T` in decimal.
//!
//! [`DeadLetterSink`] writes each rejected record's **original bytes** as the
//! value, keyed `source:partition:offset`, with headers `weft.reason`,
//! `weft.message`, `weft.source`, `weft.partition`, `weft.offset` and
//! `weft.time`. Dead letters are an append-only log: a retraction (negative
//! diff) of an error record is not written.
//!
//! ## Progress and exactly-once
//!
//! Every record of a sink goes through one transactional producer
//! (`transactional.id` from the config). The engine calls `write` for each
//! completed time in increasing order and `commit(frontier)` when the
//! frontier advances; `commit` adds a progress record
//! `{"sink":NAME,"frontier":[F]}` (keyed by the sink's name) to
//! `<topic>.weft-progress` and commits the transaction. So the data of every
//! time `< F` becomes visible to `read_committed` readers in the same
//! transaction as the progress record that says so. `frontier: []` means
//! the output is complete.
//!
//! When a sink opens it first calls `init_transactions`, which fences any
//! older producer with the same `transactional.id` (a zombie from before a
//! crash) and aborts its open transaction; then it reads its last committed
//! progress record with a `read_committed` consumer. Writes at times below
//! that frontier were committed before and are skipped; the rest is written
//! again. Because a restarted source re-emits every record at its recorded
//! time (see [`super::reclock`]) and the dataflow is deterministic, the
//! times it rewrites carry the same changes: the committed output equals an
//! uninterrupted run's.
//!
//! Commits without new data are skipped (there is nothing to make visible),
//! except the final one (`frontier: []`).
//!
//! `write` only encodes: the records wait in memory and are produced inside
//! `commit`, in the transaction it closes (or earlier, in that same
//! transaction, once more than [`MAX_BUFFERED_BYTES`] wait). So a
//! transaction stays open only while a commit runs, which keeps
//! `read_committed` readers from being held back between commits, and a
//! crash between commits leaves nothing on the broker. This matters on
//! brokers that do not hide aborted transactions from `read_committed`
//! readers (tansu, see `scripts/kafka.sh`): there, only a crash in the middle
//! of a commit can leave visible aborted records. Until a crashed sink is
//! reopened (or `transaction.timeout.ms` passes), a transaction it left open
//! holds back `read_committed` readers of the topic.
//!
//! ## Errors
//!
//! A full local queue is waited out (up to [`SEND_TIMEOUT`]); retriable
//! commit errors are retried (up to [`COMMIT_ATTEMPTS`] times). Anything
//! else aborts the open transaction and surfaces as an `io::Error`: the sink
//! must then be dropped and the job restarted, which resumes exactly.

use std::collections::BTreeMap;
use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use weft_dataflows::event::Event;
use weft_dataflows::record::{CountKey, ErrorRecord, WriteJson};

use super::{admin, client_config, validate_options, KafkaError};
use crate::sink::Sink;

/// How long a send may wait for room in the producer's queue.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// Timeout of transactional operations (init, commit, abort).
pub const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// Records are held in memory until the next commit; past this many bytes
/// they are sent early, in the transaction the commit will close.
pub const MAX_BUFFERED_BYTES: usize = 64 << 20;

/// Attempts at committing a transaction when the error is retriable.
pub const COMMIT_ATTEMPTS: u32 = 5;

/// The key of a record written to Kafka.
pub trait KafkaKey {
    /// Appends the key's bytes to `out`.
    fn kafka_key(&self, out: &mut Vec<u8>);
}

impl KafkaKey for Event {
    fn kafka_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.message_id().as_bytes());
    }
}

impl KafkaKey for (CountKey, isize) {
    fn kafka_key(&self, out: &mut Vec<u8>) {
        let (metric, key) = self.0.parts();
        out.extend_from_slice(metric.as_bytes());
        out.push(b':');
        out.extend_from_slice(key.as_bytes());
    }
}

impl KafkaKey for ErrorRecord {
    fn kafka_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(
            format!("{}:{}:{}", self.source, self.partition, self.offset).as_bytes(),
        );
    }
}

/// Settings of one Kafka sink.
#[derive(Clone, Debug)]
pub struct KafkaSinkConfig {
    /// The sink's name: the key of its progress records.
    pub name: String,
    /// `host:port[,host:port…]` of the brokers.
    pub brokers: String,
    /// The topic written to (must exist).
    pub topic: String,
    /// librdkafka options passed through (see [`validate_options`]).
    pub options: BTreeMap<String, String>,
    /// The producer's `transactional.id`: stable across restarts of the same
    /// job, unique among running sinks.
    pub transactional_id: String,
}

impl KafkaSinkConfig {
    /// A configuration without extra options.
    pub fn new(
        name: impl Into<String>,
        brokers: impl Into<String>,
        topic: impl Into<String>,
        transactional_id: impl Into<String>,
    ) -> Self {
        KafkaSinkConfig {
            name: name.into(),
            brokers: brokers.into(),
            topic: topic.into(),
            options: BTreeMap::new(),
            transactional_id: transactional_id.into(),
        }
    }

    /// The topic holding this sink's progress records.
    pub fn progress_topic(&self) -> String {
        format!("{}.weft-progress", self.topic)
    }

    /// Checks the settings without contacting the brokers.
    pub fn validate(&self) -> Result<(), KafkaError> {
        let KafkaSinkConfig {
            name,
            brokers,
            topic,
            options,
            transactional_id,
        } = self;
        if brokers.trim().is_empty() {
            return Err(KafkaError::Config(format!(
                "Kafka sink {name:?} has no brokers; set `brokers` to host:port."
            )));
        }
        if topic.is_empty() {
            return Err(KafkaError::Config(format!(
                "Kafka sink {name:?} has no topic; set `topic`."
            )));
        }
        if transactional_id.is_empty() {
            return Err(KafkaError::Config(format!(
                "Kafka sink {name:?} has no transactional id; set one that stays the same across restarts."
            )));
        }
        validate_options(options).map_err(KafkaError::Config)
    }
}

/// Remembers the first failed delivery (the transaction will fail to commit).
#[derive(Default)]
struct SinkContext {
    first_failure: Mutex<Option<String>>,
}

impl ClientContext for SinkContext {}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            let mut first = self.first_failure.lock().unwrap_or_else(|p| p.into_inner());
            if first.is_none() {
                *first = Some(e.to_string());
            }
        }
    }
}

/// A frontier of `u64` times: `Some(t)` = `[t]`, `None` = `[]` (complete).
type Frontier = Option<u64>;

fn frontier_of(f: &[u64]) -> Frontier {
    f.iter().copied().min()
}

/// `a` is strictly beyond `b`.
fn beyond(a: Frontier, b: Frontier) -> bool {
    match (a, b) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(x), Some(y)) => x > y,
    }
}

/// One record waiting for the next commit.
struct Pending {
    key: Vec<u8>,
    /// `None`: a tombstone.
    value: Option<Vec<u8>>,
    headers: Vec<(&'static str, Vec<u8>)>,
}

/// The transactional producer shared by [`KafkaSink`] and [`DeadLetterSink`].
struct TxnWriter {
    config: KafkaSinkConfig,
    progress_topic: String,
    producer: BaseProducer<SinkContext>,
    /// The frontier found at open: writes before it are skipped.
    restored: Frontier,
    /// The last frontier committed (by this run or an earlier one).
    committed: Frontier,
    in_txn: bool,
    /// Records written since the last commit, not yet sent.
    buffer: Vec<Pending>,
    buffered_bytes: usize,
    /// Records written by this run.
    written: u64,
    /// Records skipped because an earlier run committed them.
    skipped: u64,
}

impl TxnWriter {
    fn open(config: &KafkaSinkConfig) -> Result<Self, KafkaError> {
        config.validate()?;
        let progress_topic = config.progress_topic();
        // STEP 1. Topics: the data topic must exist; the progress topic is ours.
        if admin::partition_count(&config.brokers, &config.topic)?.is_none() {
            return Err(KafkaError::Config(format!(
                "Kafka sink {:?}: topic {:?} does not exist on {}; create it first.",
                config.name, config.topic, config.brokers
            )));
        }
        if admin::partition_count(&config.brokers, &progress_topic)?.is_none() {
            admin::create_topic(&config.brokers, &progress_topic, 1, &[])?;
        }
        // STEP 2. Fence zombies and abort their open transaction.
        let mut cfg = client_config(
            &config.brokers,
            &config.options,
            &format!("weft-sink-{}", config.name),
        );
        cfg.set("transactional.id", &config.transactional_id)
            .set("enable.idempotence", "true");
        let producer: BaseProducer<SinkContext> = cfg
            .create_with_context(SinkContext::default())
            .map_err(|e| {
            KafkaError::client(
                format!("cannot create a producer for sink {:?}", config.name),
                e,
            )
        })?;
        producer.init_transactions(TXN_TIMEOUT).map_err(|e| {
            KafkaError::client(
                format!(
                    "sink {:?} cannot initialize transactions (transactional.id {:?})",
                    config.name, config.transactional_id
                ),
                e,
            )
        })?;
        // STEP 3. What did the last run commit?
        let restored = read_progress(config, &progress_topic)?;
        match restored {
            Some(Some(f)) => {
                tracing::info!(sink = %config.name, topic = %config.topic, "resuming: times before {f} were committed")
            }
            Some(None) => {
                tracing::info!(sink = %config.name, topic = %config.topic, "output was already complete")
            }
            None => {}
        }
        let restored = restored.unwrap_or(Some(0));
        Ok(TxnWriter {
            config: config.clone(),
            progress_topic,
            producer,
            restored,
            committed: restored,
            in_txn: false,
            buffer: Vec::new(),
            buffered_bytes: 0,
            written: 0,
            skipped: 0,
        })
    }

    /// Whether changes at `time` were committed by an earlier run.
    fn skips(&self, time: u64) -> bool {
        match self.restored {
            Some(f) => time < f,
            None => true,
        }
    }

    /// Queues a record for the next commit; sends the queue early (in the
    /// open transaction) once it holds more than [`MAX_BUFFERED_BYTES`].
    fn queue(
        &mut self,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        headers: Vec<(&'static str, Vec<u8>)>,
    ) -> io::Result<()> {
        self.buffered_bytes += key.len() + value.as_ref().map_or(0, Vec::len) + 64;
        self.buffer.push(Pending {
            key,
            value,
            headers,
        });
        self.written += 1;
        if self.buffered_bytes > MAX_BUFFERED_BYTES {
            self.send_buffer()?;
        }
        Ok(())
    }

    fn begin(&mut self) -> io::Result<()> {
        if !self.in_txn {
            self.producer.begin_transaction().map_err(|e| {
                io::Error::other(format!(
                    "Kafka sink {:?}: cannot begin a transaction: {e}",
                    self.config.name
                ))
            })?;
            self.in_txn = true;
        }
        Ok(())
    }

    fn send_buffer(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.begin()?;
        let topic = self.config.topic.clone();
        for p in std::mem::take(&mut self.buffer) {
            let mut headers = OwnedHeaders::new_with_capacity(p.headers.len());
            for (k, v) in &p.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(&v[..]),
                });
            }
            self.send(&topic, &p.key, p.value.as_deref(), headers)?;
        }
        self.buffered_bytes = 0;
        self.producer.poll(Duration::ZERO);
        Ok(())
    }

    /// Sends one record in the open transaction, waiting out a full queue.
    fn send(
        &mut self,
        topic: &str,
        key: &[u8],
        value: Option<&[u8]>,
        headers: OwnedHeaders,
    ) -> io::Result<()> {
        let mut record = BaseRecord::to(topic).key(key).headers(headers);
        if let Some(v) = value {
            record = record.payload(v);
        }
        let started = Instant::now();
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((RdError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                    if started.elapsed() < SEND_TIMEOUT =>
                {
                    record = r;
                    self.producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => {
                    let context = format!("cannot send a record to {topic}");
                    return Err(self.abort_and_fail(&context, e));
                }
            }
        }
    }

    fn commit(&mut self, frontier: &[u64]) -> io::Result<()> {
        let new = frontier_of(frontier);
        if !beyond(new, self.committed) {
            return Ok(());
        }
        if self.buffer.is_empty() && !self.in_txn && new.is_some() {
            // Nothing written since the last commit: nothing to make visible.
            return Ok(());
        }
        // STEP 1. The data and the progress record, in one transaction.
        self.send_buffer()?;
        self.begin()?;
        let key = self.config.name.clone().into_bytes();
        let value = serde_json::to_vec(
            &serde_json::json!({ "sink": self.config.name, "frontier": frontier }),
        )
        .expect("json");
        let topic = self.progress_topic.clone();
        self.send(&topic, &key, Some(&value), OwnedHeaders::new())?;
        // STEP 2. Commit, retrying what librdkafka says is retriable.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.producer.commit_transaction(TXN_TIMEOUT) {
                Ok(()) => break,
                Err(RdError::Transaction(e)) if e.is_retriable() && attempt < COMMIT_ATTEMPTS => {
                    tracing::warn!(sink = %self.config.name, attempt, "retrying commit: {e}");
                    std::thread::sleep(Duration::from_millis(100 << attempt));
                }
                Err(e) => {
                    let failure = self
                        .producer
                        .context()
                        .first_failure
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .take();
                    let context = match failure {
                        Some(f) => format!("cannot commit (a record was not delivered: {f})"),
                        None => "cannot commit".to_string(),
                    };
                    return Err(self.abort_and_fail(&context, e));
                }
            }
        }
        self.in_txn = false;
        self.committed = new;
        Ok(())
    }

    /// Aborts the open transaction (best effort), drops the queue and builds the error.
    fn abort_and_fail(&mut self, context: &str, e: RdError) -> io::Error {
        if self.in_txn {
            if let Err(a) = self.producer.abort_transaction(TXN_TIMEOUT) {
                tracing::warn!(sink = %self.config.name, "cannot abort the transaction: {a}");
            }
            self.in_txn = false;
        }
        self.buffer.clear();
        self.buffered_bytes = 0;
        io::Error::other(format!(
            "Kafka sink {:?}: {context}: {e}; restart the job to resume from the last commit",
            self.config.name
        ))
    }
}

impl Drop for TxnWriter {
    fn drop(&mut self) {
        if self.in_txn {
            // Do not leave the transaction open: it would hold back readers.
            let _ = self.producer.abort_transaction(Duration::from_secs(5));
        }
        tracing::debug!(sink = %self.config.name, written = self.written, skipped = self.skipped, "closing");
    }
}

/// Reads the sink's last committed progress record: `None` if there is none,
/// `Some(frontier)` otherwise.
///
/// Scans backwards from the end of the progress topic in growing windows, so
/// the cost does not grow with the topic's length.
fn read_progress(
    config: &KafkaSinkConfig,
    progress_topic: &str,
) -> Result<Option<Frontier>, KafkaError> {
    let mut cfg = client_config(
        &config.brokers,
        &config.options,
        &format!("weft-sink-{}-progress", config.name),
    );
    cfg.set("group.id", format!("weft-sink-{}", config.name))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    let consumer: BaseConsumer = cfg.create().map_err(|e| {
        KafkaError::client(format!("cannot create a consumer for {progress_topic}"), e)
    })?;
    let context = || {
        format!(
            "sink {:?} cannot read its progress from {progress_topic}",
            config.name
        )
    };
    // The watermarks only place the first window: the first window is read
    // to the end of the partition, because some brokers (tansu) under-report
    // the high watermark in ListOffsets.
    let (low, high) = consumer
        .fetch_watermarks(progress_topic, 0, TXN_TIMEOUT)
        .map_err(|e| KafkaError::client(context(), e))?;
    let (low, high) = (low.max(0) as u64, high.max(0) as u64);
    let mut end: Option<u64> = None;
    let mut window = 256u64;
    loop {
        let start = end.unwrap_or(high).saturating_sub(window).max(low);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(progress_topic, 0, Offset::Offset(start as i64))
            .map_err(|e| KafkaError::client(context(), e))?;
        consumer
            .assign(&tpl)
            .map_err(|e| KafkaError::client(context(), e))?;
        let deadline = Instant::now() + TXN_TIMEOUT;
        let mut found = None;
        loop {
            if Instant::now() > deadline {
                return Err(KafkaError::Config(format!(
                    "{}: no end of the topic within {TXN_TIMEOUT:?} (an open transaction of another producer?)",
                    context()
                )));
            }
            match consumer.poll(Duration::from_millis(100)) {
                None => continue,
                Some(Err(RdError::PartitionEOF(_))) => break,
                Some(Err(e)) => return Err(KafkaError::client(context(), e)),
                Some(Ok(m)) => {
                    if end.is_some_and(|end| m.offset() as u64 >= end) {
                        break;
                    }
                    if m.key() == Some(config.name.as_bytes()) {
                        found = Some(parse_progress(m.payload().unwrap_or_default()).ok_or_else(|| {
                            KafkaError::Config(format!(
                                "{}: the record at offset {} is not a progress record; was the topic written by something else?",
                                context(),
                                m.offset()
                            ))
                        })?);
                    }
                }
            }
        }
        if found.is_some() {
            return Ok(found);
        }
        if start <= low {
            return Ok(None);
        }
        end = Some(start);
        window = window.saturating_mul(4);
    }
}

fn parse_progress(value: &[u8]) -> Option<Frontier> {
    let v: serde_json::Value = serde_json::from_slice(value).ok()?;
    let f = v.get("frontier")?.as_array()?;
    let times: Option<Vec<u64>> = f.iter().map(|t| t.as_u64()).collect();
    Some(frontier_of(&times?))
}

/// A Kafka sink for changes of records that encode to JSON.
pub struct KafkaSink {
    writer: TxnWriter,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("config", &self.writer.config)
            .field("committed", &self.writer.committed)
            .finish()
    }
}

impl KafkaSink {
    /// Opens the sink: fences older producers with the same transactional id
    /// and reads the last committed progress.
    pub fn open(config: &KafkaSinkConfig) -> Result<Self, KafkaError> {
        Ok(KafkaSink {
            writer: TxnWriter::open(config)?,
        })
    }

    /// The frontier committed so far (by this run or an earlier one):
    /// `[]` if the output is complete.
    pub fn committed_frontier(&self) -> Vec<u64> {
        self.writer.committed.into_iter().collect()
    }

    /// Records written by this run, and records skipped because an earlier
    /// run had committed them.
    pub fn counts(&self) -> (u64, u64) {
        (self.writer.written, self.writer.skipped)
    }

    /// [`Sink::commit`], callable without naming the record type.
    pub fn commit(&mut self, frontier: &[u64]) -> io::Result<()> {
        self.writer.commit(frontier)
    }
}

/// Appends `{"op":…,"diff":D,"time":T,"data":…}`.
fn encode_change<D: WriteJson>(out: &mut Vec<u8>, time: u64, diff: isize, data: &D) {
    out.extend_from_slice(if diff > 0 {
        b"{\"op\":\"insert\",\"diff\":"
    } else {
        b"{\"op\":\"delete\",\"diff\":"
    });
    out.extend_from_slice(diff.to_string().as_bytes());
    out.extend_from_slice(b",\"time\":");
    out.extend_from_slice(time.to_string().as_bytes());
    out.extend_from_slice(b",\"data\":");
    data.write_json(out);
    out.push(b'}');
}

impl<D: WriteJson + KafkaKey> Sink<D> for KafkaSink {
    fn write(&mut self, time: u64, updates: &[(D, isize)]) -> io::Result<()> {
        let w = &mut self.writer;
        if w.skips(time) {
            w.skipped += updates.len() as u64;
            return Ok(());
        }
        let time_s = time.to_string().into_bytes();
        let keyed: Vec<(Vec<u8>, &D, isize)> = updates
            .iter()
            .map(|(data, diff)| {
                let mut key = Vec::new();
                data.kafka_key(&mut key);
                (key, data, *diff)
            })
            .collect();
        let inserted: std::collections::HashSet<&[u8]> = keyed
            .iter()
            .filter(|(_, _, d)| *d > 0)
            .map(|(k, _, _)| &k[..])
            .collect();
        for (key, data, diff) in &keyed {
            if *diff > 0 {
                let mut value = Vec::with_capacity(256);
                encode_change(&mut value, time, *diff, *data);
                w.queue(
                    key.clone(),
                    Some(value),
                    vec![("weft.time", time_s.clone())],
                )?;
            } else if !inserted.contains(&key[..]) {
                // A tombstone: compaction forgets the key, and the retracted
                // record's data (a deleted person's, say) is not written again.
                let headers = vec![
                    ("weft.time", time_s.clone()),
                    ("weft.op", b"delete".to_vec()),
                    ("weft.diff", diff.to_string().into_bytes()),
                ];
                w.queue(key.clone(), None, headers)?;
            }
        }
        Ok(())
    }

    fn commit(&mut self, frontier: &[u64]) -> io::Result<()> {
        self.writer.commit(frontier)
    }
}

/// A Kafka sink for rejected records: original bytes plus the reason in headers.
pub struct DeadLetterSink {
    writer: TxnWriter,
}

impl std::fmt::Debug for DeadLetterSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetterSink")
            .field("config", &self.writer.config)
            .field("committed", &self.writer.committed)
            .finish()
    }
}

impl DeadLetterSink {
    /// Opens the sink (see [`KafkaSink::open`]).
    pub fn open(config: &KafkaSinkConfig) -> Result<Self, KafkaError> {
        Ok(DeadLetterSink {
            writer: TxnWriter::open(config)?,
        })
    }

    /// The frontier committed so far: `[]` if the output is complete.
    pub fn committed_frontier(&self) -> Vec<u64> {
        self.writer.committed.into_iter().collect()
    }
}

impl Sink<ErrorRecord> for DeadLetterSink {
    fn write(&mut self, time: u64, updates: &[(ErrorRecord, isize)]) -> io::Result<()> {
        let w = &mut self.writer;
        if w.skips(time) {
            w.skipped += updates.len() as u64;
            return Ok(());
        }
        for (rec, diff) in updates {
            for _ in 0..(*diff).max(0) {
                let mut key = Vec::new();
                rec.kafka_key(&mut key);
                let headers = vec![
                    ("weft.reason", rec.reason.as_str().as_bytes().to_vec()),
                    ("weft.message", rec.message.as_bytes().to_vec()),
                    ("weft.source", rec.source.as_bytes().to_vec()),
                    ("weft.partition", rec.partition.to_string().into_bytes()),
                    ("weft.offset", rec.offset.to_string().into_bytes()),
                    ("weft.time", time.to_string().into_bytes()),
                ];
                w.queue(key, Some(rec.raw.to_vec()), headers)?;
            }
        }
        Ok(())
    }

    fn commit(&mut self, frontier: &[u64]) -> io::Result<()> {
        self.writer.commit(frontier)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_dataflows::event::{EventType, RejectReason};

    #[test]
    fn keys_and_values() {
        let mut k = Vec::new();
        (CountKey::Type(EventType::Track), 3isize).kafka_key(&mut k);
        assert_eq!(k, b"type:track");
        let mut v = Vec::new();
        encode_change(
            &mut v,
            7,
            -2,
            &(CountKey::Rejected(RejectReason::Empty), 3isize),
        );
        let j: serde_json::Value = serde_json::from_slice(&v).unwrap();
        assert_eq!(j["op"], "delete");
        assert_eq!(j["diff"], -2);
        assert_eq!(j["time"], 7);
        assert_eq!(j["data"]["key"], "empty");
        assert_eq!(
            parse_progress(br#"{"sink":"s","frontier":[12]}"#),
            Some(Some(12))
        );
        assert_eq!(parse_progress(br#"{"sink":"s","frontier":[]}"#), Some(None));
        assert_eq!(parse_progress(b"{}"), None);
        assert!(
            beyond(Some(3), Some(2))
                && beyond(None, Some(9))
                && !beyond(Some(2), Some(2))
                && !beyond(Some(1), None)
        );
    }
}

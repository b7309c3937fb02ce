//! Kafka source: each worker reads its share of the partitions of the
//! configured topics, decodes records into events, and binds them to
//! logical times that survive restarts.
//!
//! ## Who reads what
//!
//! Every partition of every topic has exactly one owning worker, computed
//! from the topic's name, the partition number, the source's index and the
//! number of workers ([`owner`]): consecutive partitions of a topic go to
//! consecutive workers, and each topic starts at a worker chosen by a hash
//! of its name. A partition added later keeps every existing partition where
//! it was. Each worker's [`KafkaPart`] owns one `BaseConsumer` with a manual
//! assignment: no consumer group, no rebalancing, no offsets committed to the
//! broker. (One consumer per topic, in fact, because librdkafka's
//! end-of-partition event names only the partition number.) Partitions
//! added to a topic are found by re-reading its metadata every
//! [`METADATA_REFRESH`] (unbounded sources only).
//!
//! ## Time
//!
//! Live mode uses ingestion time: a record read at wall-clock `now` gets the
//! logical time `now` rounded down to `tick_ms` (and never less than a time
//! already used). When nothing arrives the part still reports the current
//! tick as its lower bound, so an idle partition never holds back the
//! frontier. Records are bound durably before they are handed out: a part
//! reads into a staging batch and syncs the bindings of the batch (one
//! `fdatasync` per partition log, all at once) when the batch holds
//! [`BIND_BATCH`] records, when the consumers have nothing more to give
//! right now, or when the tick changes; a caught-up source therefore hands
//! records out at once, and a source catching up pays for a sync only every
//! few thousand records. See [`super::reclock`] for the binding, its
//! invariants and the restart rule (replay from the first binding at the
//! recorded times, then new times `>= max recorded + tick`).
//!
//! Records are read with `isolation.level=read_committed`.
//!
//! ## Decoding
//!
//! A record's value is one Segment event in JSON. A value that does not
//! parse becomes an [`ErrorRecord`] with the partition, offset, reason and
//! the original bytes. An event without `receivedAt` gets the Kafka record's
//! timestamp (or, without one, its logical time) — both are fixed by the log
//! and the bindings, so a replay decodes the same event.
//!
//! ## Bounded mode
//!
//! With `bounded`, a partition is complete at its first end-of-partition
//! event: the end of the log (the last stable offset, as we read
//! `read_committed`) that the broker reports once the consumer has caught up.
//! Records produced after that are not read. The part returns
//! [`Poll::Done`] once all its partitions are complete. Used by tests and
//! replays, of topics that are not being written to.
//!
//! The end is taken from fetch responses, not from a ListOffsets request,
//! because some Kafka-compatible brokers (tansu) answer ListOffsets(latest)
//! with the last batch's base offset plus one. The watermarks read at start
//! only feed [`PartProgress::total`], an estimate.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use weft_dataflows::event::{parse_event, ParseContext};
use weft_dataflows::record::ErrorRecord;

use super::reclock::{self, BindingLog, ReplayCursor};
use super::{client_config, now_ms, validate_options, KafkaError};
use crate::source::{Decoded, PartProgress, Poll, SourcePart};

/// How often an unbounded part looks for partitions added to its topics.
pub const METADATA_REFRESH: Duration = Duration::from_secs(5);

/// How long a metadata or watermark request may take when a part is created.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the periodic look for new partitions may block a poll.
pub const REFRESH_TIMEOUT: Duration = Duration::from_secs(1);

/// Most records read before their bindings are synced and they are handed
/// out. Bindings are also synced when the consumer has nothing more to
/// give right now and when the tick changes, so a caught-up source hands
/// records out at once; the batch only amortizes `fdatasync` during catch-up.
pub const BIND_BATCH: usize = 16 * 1024;

/// Settings of one Kafka source.
#[derive(Clone, Debug)]
pub struct KafkaSourceConfig {
    /// The source's name (used in error records and state paths).
    pub name: String,
    /// `host:port[,host:port…]` of the brokers.
    pub brokers: String,
    /// Topics to read; every partition of each.
    pub topics: Vec<String>,
    /// librdkafka options passed through (see [`validate_options`]).
    pub options: BTreeMap<String, String>,
    /// The job's state directory; bindings live under `kafka-reclock/`.
    pub state_dir: PathBuf,
    /// Granularity of the ingestion-time clock, in milliseconds.
    pub tick_ms: u64,
    /// Stop at the end of each partition as first reached (see the module docs).
    pub bounded: bool,
    /// Index of this source among the job's sources (spreads partitions of
    /// different sources over different workers).
    pub source_index: usize,
}

impl KafkaSourceConfig {
    /// A configuration with the defaults: no options, 100 ms ticks, unbounded.
    pub fn new(
        name: impl Into<String>,
        brokers: impl Into<String>,
        topics: Vec<String>,
        state_dir: PathBuf,
    ) -> Self {
        KafkaSourceConfig {
            name: name.into(),
            brokers: brokers.into(),
            topics,
            options: BTreeMap::new(),
            state_dir,
            tick_ms: 100,
            bounded: false,
            source_index: 0,
        }
    }

    /// Checks the settings without contacting the brokers.
    pub fn validate(&self) -> Result<(), KafkaError> {
        let KafkaSourceConfig {
            name,
            brokers,
            topics,
            options,
            state_dir: _,
            tick_ms,
            bounded: _,
            source_index: _,
        } = self;
        if brokers.trim().is_empty() {
            return Err(KafkaError::Config(format!(
                "Kafka source {name:?} has no brokers; set `brokers` to host:port."
            )));
        }
        if topics.is_empty() {
            return Err(KafkaError::Config(format!(
                "Kafka source {name:?} has no topics; list at least one."
            )));
        }
        let mut sorted = topics.clone();
        sorted.sort();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(KafkaError::Config(format!(
                "Kafka source {name:?} lists topic {:?} twice; list it once.",
                w[0]
            )));
        }
        if *tick_ms == 0 {
            return Err(KafkaError::Config(format!(
                "Kafka source {name:?} has tick_ms = 0; use a positive tick."
            )));
        }
        validate_options(options).map_err(KafkaError::Config)
    }

    /// The part that worker `worker` of `peers` reads.
    ///
    /// Fails if the options are invalid, a topic does not exist, the broker
    /// cannot be reached, or the reclock state cannot be read.
    pub fn part(&self, worker: usize, peers: usize) -> Result<KafkaPart, KafkaError> {
        assert!(worker < peers, "worker {worker} of {peers}");
        self.validate()?;
        let mut part = KafkaPart {
            config: self.clone(),
            worker,
            peers,
            topics: Vec::new(),
            parts: Vec::new(),
            live_time: 0,
            floor: 0,
            last_lower: 0,
            next_refresh: Instant::now() + METADATA_REFRESH,
            next_topic: 0,
            staged: Vec::new(),
            ready: std::collections::VecDeque::new(),
            ready_min: None,
            records: 0,
            total: self.bounded.then_some(0),
        };
        for (t, topic) in self.topics.iter().enumerate() {
            // STEP 1. One consumer per topic, manually assigned.
            let mut cfg = client_config(
                &self.brokers,
                &self.options,
                &format!("weft-{}-{worker}-{t}", self.name),
            );
            cfg.set("group.id", format!("weft-{}", self.name))
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "earliest")
                .set("isolation.level", "read_committed")
                .set("enable.partition.eof", "true");
            let consumer: BaseConsumer = cfg.create().map_err(|e| {
                KafkaError::client(
                    format!("cannot create a Kafka consumer for source {:?}", self.name),
                    e,
                )
            })?;
            let count = partition_count(&consumer, topic, &self.brokers, METADATA_TIMEOUT)?
                .ok_or_else(|| {
                    KafkaError::Config(format!(
                        "Kafka source {:?}: topic {topic:?} does not exist on {}; create it first.",
                        self.name, self.brokers
                    ))
                })?;
            part.topics.push(TopicReader {
                topic: topic.clone(),
                consumer,
                known: 0,
                index: Vec::new(),
            });
            // STEP 2. Partitions: those the brokers know, plus those we hold bindings for.
            let mut partitions: Vec<i32> = (0..count as i32).collect();
            let recorded = reclock::recorded_partitions(&self.state_dir, &self.name, topic)
                .map_err(|e| {
                    KafkaError::state(
                        format!("cannot list reclock state of source {:?}", self.name),
                        e,
                    )
                })?;
            partitions.extend(recorded);
            partitions.sort_unstable();
            partitions.dedup();
            let known = partitions.last().map_or(0, |p| *p as usize + 1);
            part.add_partitions(
                t,
                partitions
                    .into_iter()
                    .filter(|&p| owner(topic, p, self.source_index, peers) == worker)
                    .collect(),
            )?;
            part.topics[t].known = known;
        }
        part.floor = part
            .parts
            .iter()
            .filter_map(|p| p.log.max_time())
            .max()
            .map_or(0, |t| t + self.tick_ms);
        Ok(part)
    }
}

/// The worker that reads `partition` of `topic` for the source with index
/// `source_index`, among `peers` workers.
pub fn owner(topic: &str, partition: i32, source_index: usize, peers: usize) -> usize {
    // FNV-1a: stable across processes, builds and platforms.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in topic.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let start = (h % peers as u64) as usize;
    (start + source_index + partition as usize) % peers
}

fn partition_count(
    consumer: &BaseConsumer,
    topic: &str,
    brokers: &str,
    timeout: Duration,
) -> Result<Option<usize>, KafkaError> {
    let md = consumer.fetch_metadata(Some(topic), timeout).map_err(|e| {
        KafkaError::client(
            format!("cannot read metadata of topic {topic:?} from {brokers}"),
            e,
        )
    })?;
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

/// The consumer of one topic.
struct TopicReader {
    topic: String,
    consumer: BaseConsumer,
    /// Partitions below this number were considered for assignment.
    known: usize,
    /// Partition number → index in `KafkaPart::parts`.
    index: Vec<Option<usize>>,
}

/// One partition read by a part.
struct PartitionState {
    topic: String,
    partition: i32,
    log: BindingLog,
    replay: ReplayCursor,
    /// Start of the next binding: the end of the last one, once there is one.
    next_lo: Option<u64>,
    /// Live records read but not bound yet: `time ⇒ [lo, hi)`.
    batch: Option<(u64, u64, u64)>,
    /// An entry was appended to the log but not synced yet.
    unsynced: bool,
    /// Bounded mode: the end of the partition was reached.
    done: bool,
    /// The first offset this run reads (the recorded bindings' start, else
    /// the low watermark at assignment).
    start: u64,
    /// The next offset to read: one past the last record read.
    position: u64,
    /// The high watermark, as last fetched (at assignment; live sources
    /// every [`METADATA_REFRESH`]).
    high: u64,
}

/// One worker's share of a Kafka source.
pub struct KafkaPart {
    config: KafkaSourceConfig,
    worker: usize,
    peers: usize,
    topics: Vec<TopicReader>,
    parts: Vec<PartitionState>,
    /// The time of live records (monotone).
    live_time: u64,
    /// New records get at least this time: the largest recorded time plus a tick.
    floor: u64,
    /// The last lower bound returned.
    last_lower: u64,
    next_refresh: Instant,
    /// The topic read first in the next poll (round robin).
    next_topic: usize,
    /// Records read and decoded whose bindings are not synced yet.
    staged: Vec<(Decoded, u64)>,
    /// Records ready to be handed out, and a lower bound of their times.
    ready: std::collections::VecDeque<(Decoded, u64)>,
    ready_min: Option<u64>,
    records: u64,
    total: Option<u64>,
}

impl std::fmt::Debug for KafkaPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPart")
            .field("source", &self.config.name)
            .field("worker", &self.worker)
            .field("peers", &self.peers)
            .field("partitions", &self.assigned())
            .finish_non_exhaustive()
    }
}

impl KafkaPart {
    /// The `(topic, partition)` pairs this part reads, in the order assigned.
    pub fn assigned(&self) -> Vec<(String, i32)> {
        self.parts
            .iter()
            .map(|p| (p.topic.clone(), p.partition))
            .collect()
    }

    /// Opens the binding logs of new partitions of topic `t` and adds them
    /// to its consumer's assignment.
    fn add_partitions(&mut self, t: usize, partitions: Vec<i32>) -> Result<(), KafkaError> {
        if partitions.is_empty() {
            return Ok(());
        }
        let topic = self.topics[t].topic.clone();
        let mut tpl = TopicPartitionList::new();
        let mut new = Vec::new();
        for partition in partitions {
            let path =
                reclock::log_path(&self.config.state_dir, &self.config.name, &topic, partition);
            let log = BindingLog::open(path.clone()).map_err(|e| {
                KafkaError::state(
                    format!("cannot open reclock bindings {}", path.display()),
                    e,
                )
            })?;
            let start = match log.lower() {
                Some(lo) => {
                    tracing::info!(source = %self.config.name, topic = %topic, partition, bindings = log.bindings().len(),
                        "replaying from offset {lo} at the recorded times");
                    Offset::Offset(lo as i64)
                }
                None => Offset::Beginning,
            };
            // Watermarks: the total of a bounded read (an estimate: see the
            // module docs on watermarks) and the consumer lag of a live one.
            let (low, high) = self.topics[t]
                .consumer
                .fetch_watermarks(&topic, partition, METADATA_TIMEOUT)
                .map(|(l, h)| (l.max(0) as u64, h.max(0) as u64))
                .unwrap_or((0, 0));
            let first = log.lower().unwrap_or(low);
            if let Some(total) = &mut self.total {
                *total += high.saturating_sub(first);
            }
            tpl.add_partition_offset(&topic, partition, start)
                .map_err(|e| KafkaError::client(format!("cannot assign {topic}/{partition}"), e))?;
            let replay = ReplayCursor::new(log.bindings());
            let next_lo = log.upper();
            new.push(PartitionState {
                topic: topic.clone(),
                partition,
                log,
                replay,
                next_lo,
                batch: None,
                unsynced: false,
                done: false,
                start: first,
                position: first,
                high,
            });
        }
        self.topics[t]
            .consumer
            .incremental_assign(&tpl)
            .map_err(|e| {
                KafkaError::client(
                    format!(
                        "cannot assign partitions of {topic} to source {:?}",
                        self.config.name
                    ),
                    e,
                )
            })?;
        for ps in new {
            let index = &mut self.topics[t].index;
            let p = ps.partition as usize;
            if index.len() <= p {
                index.resize(p + 1, None);
            }
            index[p] = Some(self.parts.len());
            self.parts.push(ps);
        }
        Ok(())
    }

    /// Fetches the high watermark of every partition read (live sources:
    /// the consumer lag that [`SourcePart::progress`] reports).
    fn refresh_watermarks(&mut self) {
        for ps in &mut self.parts {
            let Some(&t) = self
                .topics
                .iter()
                .position(|r| r.topic == ps.topic)
                .as_ref()
            else {
                continue;
            };
            match self.topics[t]
                .consumer
                .fetch_watermarks(&ps.topic, ps.partition, REFRESH_TIMEOUT)
            {
                Ok((_, high)) => ps.high = ps.high.max(high.max(0) as u64),
                Err(e) => {
                    tracing::debug!(source = %self.config.name, topic = %ps.topic, partition = ps.partition, "cannot fetch watermarks: {e}")
                }
            }
        }
    }

    /// Looks for partitions added to the topics since the last look.
    fn refresh(&mut self) {
        for t in 0..self.topics.len() {
            let reader = &self.topics[t];
            let count = match partition_count(
                &reader.consumer,
                &reader.topic,
                &self.config.brokers,
                REFRESH_TIMEOUT,
            ) {
                Ok(Some(c)) => c,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(source = %self.config.name, topic = %reader.topic, "cannot refresh partitions: {e}");
                    continue;
                }
            };
            if count <= reader.known {
                continue;
            }
            let new: Vec<i32> = (reader.known as i32..count as i32)
                .filter(|&p| {
                    owner(&reader.topic, p, self.config.source_index, self.peers) == self.worker
                })
                .collect();
            for p in &new {
                tracing::info!(source = %self.config.name, topic = %reader.topic, partition = p, "reading a new partition");
            }
            match self.add_partitions(t, new) {
                Ok(()) => self.topics[t].known = count,
                Err(e) => {
                    tracing::warn!(source = %self.config.name, "cannot read new partitions (will retry): {e}")
                }
            }
        }
    }

    /// Appends and syncs the bindings of the staged live records, then
    /// moves the staged records to the ready queue. On failure the records
    /// stay staged and the next poll tries again.
    fn bind(&mut self) -> bool {
        // STEP 1. Append every pending entry.
        for ps in &mut self.parts {
            let Some((time, lo, hi)) = ps.batch else {
                continue;
            };
            if let Err(e) = ps.log.append_unsynced(time, lo, hi) {
                tracing::error!(source = %self.config.name, topic = %ps.topic, partition = ps.partition,
                    "cannot record reclock binding, holding records back: {e}");
                return false;
            }
            ps.batch = None;
            ps.next_lo = Some(hi);
            ps.unsynced = true;
        }
        // STEP 2. Sync them all at once.
        let logs: Vec<&BindingLog> = self
            .parts
            .iter()
            .filter(|p| p.unsynced)
            .map(|p| &p.log)
            .collect();
        if let Err(e) = reclock::sync_all(&logs) {
            tracing::error!(source = %self.config.name, "cannot sync reclock bindings, holding records back: {e}");
            return false;
        }
        for ps in &mut self.parts {
            ps.unsynced = false;
        }
        // STEP 3. The records may leave.
        if let Some(min) = self.staged.iter().map(|(_, t)| *t).min() {
            self.ready_min = Some(self.ready_min.map_or(min, |m| m.min(min)));
        }
        self.ready.extend(self.staged.drain(..));
        true
    }

    /// Hands out up to `budget` ready records.
    fn hand_out(&mut self, out: &mut Vec<(Decoded, u64)>, budget: usize) -> usize {
        let n = budget.min(self.ready.len());
        out.extend(self.ready.drain(..n));
        if self.ready.is_empty() {
            self.ready_min = None;
        }
        n
    }

    /// A partition of topic `t` reached the end of its log.
    fn at_end(&mut self, t: usize, partition: i32) {
        let Some(idx) = self.topics[t]
            .index
            .get(partition as usize)
            .copied()
            .flatten()
        else {
            return;
        };
        let ps = &mut self.parts[idx];
        if !ps.replay.done() {
            // The recorded offsets are gone (retention, or the topic was recreated).
            tracing::error!(source = %self.config.name, topic = %ps.topic, partition = ps.partition,
                "the log ends before the recorded bindings (up to offset {}); the missing records cannot be replayed",
                ps.log.upper().unwrap_or(0));
            ps.replay.abandon();
        }
        if self.config.bounded {
            ps.done = true;
        }
    }

    fn lower(&self) -> u64 {
        let replay = self
            .parts
            .iter()
            .filter(|p| !p.done)
            .filter_map(|p| p.replay.pending_time())
            .min();
        let staged = self.staged.iter().map(|(_, t)| *t).min();
        let mut lower = self.live_time;
        for t in [replay, staged, self.ready_min].into_iter().flatten() {
            lower = lower.min(t);
        }
        lower.max(self.last_lower)
    }

    fn finished(&self) -> bool {
        self.config.bounded
            && self.staged.is_empty()
            && self.ready.is_empty()
            && self.parts.iter().all(|p| p.done)
    }

    /// Reads up to `budget` records of topic `t` into the staging area.
    /// Returns how many, and whether the consumer ran dry.
    fn read_topic(&mut self, t: usize, budget: usize) -> (usize, bool) {
        let mut read = 0;
        while read < budget {
            let msg = match self.topics[t].consumer.poll(Duration::ZERO) {
                None => return (read, true),
                Some(Ok(m)) => m,
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                    self.at_end(t, p);
                    continue;
                }
                Some(Err(e)) => {
                    tracing::warn!(source = %self.config.name, topic = %self.topics[t].topic, "consumer error: {e}");
                    break;
                }
            };
            let Some(idx) = self.topics[t]
                .index
                .get(msg.partition() as usize)
                .copied()
                .flatten()
            else {
                continue;
            };
            let offset = msg.offset().max(0) as u64;
            let ps = &mut self.parts[idx];
            ps.position = ps.position.max(offset + 1);
            if ps.done {
                // Bounded: past the end as first reached.
                continue;
            }
            let time = match ps.replay.time_of(offset) {
                Some(t) => {
                    ps.replay.advance_past(offset);
                    t.max(self.last_lower)
                }
                None => {
                    let lo = ps
                        .batch
                        .map_or(ps.next_lo.unwrap_or(offset), |(_, lo, _)| lo);
                    ps.batch = Some((self.live_time, lo, offset + 1));
                    self.live_time
                }
            };
            // The Kafka timestamp stands in for a missing `receivedAt`;
            // it is part of the log, so a replay decodes the same event.
            let payload = msg.payload().unwrap_or(b"");
            let received = msg
                .timestamp()
                .to_millis()
                .filter(|t| *t > 0)
                .unwrap_or(time as i64);
            let decoded = parse_event(
                payload,
                &ParseContext {
                    default_received_at_ms: Some(received),
                },
            )
            .map_err(|rej| {
                ErrorRecord::new(
                    &self.config.name,
                    msg.partition() as u32,
                    offset,
                    rej,
                    payload,
                )
            });
            self.staged.push((decoded, time));
            read += 1;
        }
        (read, false)
    }
}

impl SourcePart for KafkaPart {
    fn poll(&mut self, out: &mut Vec<(Decoded, u64)>, budget: usize) -> Poll {
        // STEP 1. Records already bound go first.
        if !self.ready.is_empty() {
            self.hand_out(out, budget);
            self.last_lower = self.lower();
            return Poll::Pending {
                lower: self.last_lower,
                idle: false,
            };
        }
        if self.finished() {
            return Poll::Done;
        }
        // STEP 2. New partitions (unbounded only).
        if !self.config.bounded && Instant::now() >= self.next_refresh {
            self.refresh();
            self.refresh_watermarks();
            self.next_refresh = Instant::now() + METADATA_REFRESH;
        }
        // STEP 3. The time of records that arrive now. A batch never spans
        // two times: records of the previous tick are bound first.
        let tick = self.config.tick_ms;
        let live = self.live_time.max(now_ms() / tick * tick).max(self.floor);
        if live != self.live_time && !self.staged.is_empty() && !self.bind() {
            return Poll::Pending {
                lower: self.last_lower,
                idle: true,
            };
        }
        self.live_time = live;
        // STEP 4. Read until the batch is full or the consumers run dry, topics in turn.
        let mut dry = true;
        if self.ready.is_empty() {
            let n = self.topics.len();
            for k in 0..n {
                let t = (self.next_topic + k) % n;
                let room = BIND_BATCH.saturating_sub(self.staged.len());
                let (read, ran_dry) = self.read_topic(t, room);
                self.records += read as u64;
                dry &= ran_dry;
                if self.staged.len() >= BIND_BATCH {
                    dry = false;
                    break;
                }
            }
            self.next_topic = (self.next_topic + 1) % n;
        }
        // STEP 5. Bind durably (full batch, or caught up), then hand out.
        if !self.staged.is_empty() && (dry || self.staged.len() >= BIND_BATCH) && !self.bind() {
            return Poll::Pending {
                lower: self.last_lower,
                idle: true,
            };
        }
        let handed = self.hand_out(out, budget);
        if self.finished() {
            return Poll::Done;
        }
        // STEP 6. Nothing earlier than the oldest pending replay, staged or
        // ready record, or the live time.
        self.last_lower = self.lower();
        Poll::Pending {
            lower: self.last_lower,
            idle: handed == 0 && dry,
        }
    }

    /// `consumed` counts offsets (records, and transaction markers between
    /// them); a live source's `total` is the high watermarks (refreshed every
    /// [`METADATA_REFRESH`]), so `total - consumed` is its consumer lag
    /// (after a transactional producer's last commit, its marker counts as
    /// one offset of lag until a record follows it).
    fn progress(&self) -> PartProgress {
        let consumed = self.parts.iter().map(|p| p.position - p.start).sum();
        let total = match self.total {
            Some(t) => t,
            None => self
                .parts
                .iter()
                .map(|p| p.high.max(p.position) - p.start)
                .sum(),
        };
        PartProgress {
            consumed,
            total: Some(total),
            records: self.records,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_stable_and_spread() {
        for peers in 1..6 {
            let mut load = vec![0; peers];
            for p in 0..(4 * peers as i32) {
                let w = owner("events", p, 0, peers);
                assert!(w < peers);
                load[w] += 1;
                assert_eq!(w, owner("events", p, 0, peers), "deterministic");
            }
            assert!(
                load.iter().all(|&n| n == 4),
                "consecutive partitions spread evenly: {load:?}"
            );
        }
        // Another source shifts the spread.
        assert_ne!(owner("events", 0, 0, 3), owner("events", 0, 1, 3));
    }
}

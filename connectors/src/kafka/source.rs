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
//! broker. Partitions added to a topic are found by re-reading its metadata
//! every [`METADATA_REFRESH`] (unbounded sources only).
//!
//! ## Time
//!
//! Live mode uses ingestion time: a record read at wall-clock `now` gets the
//! logical time `now` rounded down to `tick_ms` (and never less than a time
//! already used). When nothing arrives the part still reports the current
//! tick as its lower bound, so an idle partition never holds back the
//! frontier. Each poll's records are bound durably before they are handed
//! out; see [`super::reclock`] for the binding, its invariants and the
//! restart rule (replay from the first binding at the recorded times, then
//! new times `>= max recorded + tick`).
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
//! With `bounded`, each part reads the high watermarks of its partitions
//! when it is created and returns [`Poll::Done`] once it has read up to
//! them; records at or past a watermark are ignored. Used by tests and replays.

use std::collections::{BTreeMap, HashMap};
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

/// How long a metadata or watermark request may take.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Stop at the high watermarks read when the part is created.
    pub bounded: bool,
    /// Index of this source among the job's sources (spreads partitions of
    /// different sources over different workers).
    pub source_index: usize,
}

impl KafkaSourceConfig {
    /// A configuration with the defaults: no options, 100 ms ticks, unbounded.
    pub fn new(name: impl Into<String>, brokers: impl Into<String>, topics: Vec<String>, state_dir: PathBuf) -> Self {
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
        let KafkaSourceConfig { name, brokers, topics, options, state_dir: _, tick_ms, bounded: _, source_index: _ } = self;
        if brokers.trim().is_empty() {
            return Err(KafkaError::Config(format!("Kafka source {name:?} has no brokers; set `brokers` to host:port.")));
        }
        if topics.is_empty() {
            return Err(KafkaError::Config(format!("Kafka source {name:?} has no topics; list at least one.")));
        }
        if *tick_ms == 0 {
            return Err(KafkaError::Config(format!("Kafka source {name:?} has tick_ms = 0; use a positive tick.")));
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
        let mut cfg = client_config(&self.brokers, &self.options, &format!("weft-{}-{worker}", self.name));
        cfg.set("group.id", format!("weft-{}", self.name))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true");
        let consumer: BaseConsumer = cfg
            .create()
            .map_err(|e| KafkaError::client(format!("cannot create a Kafka consumer for source {:?}", self.name), e))?;
        let mut part = KafkaPart {
            config: self.clone(),
            worker,
            peers,
            consumer,
            parts: Vec::new(),
            index: HashMap::new(),
            live_time: 0,
            floor: 0,
            last_lower: 0,
            next_refresh: Instant::now() + METADATA_REFRESH,
            staged: Vec::new(),
            records: 0,
            total: self.bounded.then_some(0),
        };
        // STEP 1. Partitions: those the brokers know, plus those we hold bindings for.
        let mut mine = Vec::new();
        for topic in &self.topics {
            let count = part.partition_count(topic)?.ok_or_else(|| {
                KafkaError::Config(format!(
                    "Kafka source {:?}: topic {topic:?} does not exist on {}; create it first.",
                    self.name, self.brokers
                ))
            })?;
            let mut partitions: Vec<i32> = (0..count as i32).collect();
            let recorded = reclock::recorded_partitions(&self.state_dir, &self.name, topic)
                .map_err(|e| KafkaError::state(format!("cannot list reclock state of source {:?}", self.name), e))?;
            partitions.extend(recorded);
            partitions.sort_unstable();
            partitions.dedup();
            mine.extend(partitions.into_iter().filter(|&p| owner(topic, p, self.source_index, peers) == worker).map(|p| (topic.clone(), p)));
        }
        // STEP 2. Open their binding logs and assign them.
        part.add_partitions(mine)?;
        part.floor = part.parts.iter().filter_map(|p| p.log.max_time()).max().map_or(0, |t| t + self.tick_ms);
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

/// One partition read by a part.
struct PartitionState {
    topic: String,
    partition: i32,
    log: BindingLog,
    replay: ReplayCursor,
    /// Start of the next binding: the end of the last one, once there is one.
    next_lo: Option<u64>,
    /// Live records read in this poll: `[lo, hi)` to bind.
    batch: Option<(u64, u64)>,
    /// Bounded mode: the high watermark read at start.
    end: Option<u64>,
    /// Bounded mode: everything up to `end` was read.
    done: bool,
}

/// One worker's share of a Kafka source.
pub struct KafkaPart {
    config: KafkaSourceConfig,
    worker: usize,
    peers: usize,
    consumer: BaseConsumer,
    parts: Vec<PartitionState>,
    /// topic → partition → index in `parts`.
    index: HashMap<String, Vec<Option<usize>>>,
    /// The time of live records (monotone).
    live_time: u64,
    /// New records get at least this time: the largest recorded time plus a tick.
    floor: u64,
    /// The last lower bound returned.
    last_lower: u64,
    next_refresh: Instant,
    /// Records read and decoded but not handed out, because their binding
    /// could not be written yet.
    staged: Vec<(Decoded, u64)>,
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
        self.parts.iter().map(|p| (p.topic.clone(), p.partition)).collect()
    }

    fn partition_count(&self, topic: &str) -> Result<Option<usize>, KafkaError> {
        let md = self
            .consumer
            .fetch_metadata(Some(topic), METADATA_TIMEOUT)
            .map_err(|e| KafkaError::client(format!("cannot read metadata of topic {topic:?} from {}", self.config.brokers), e))?;
        Ok(md.topics().iter().find(|t| t.name() == topic).and_then(|t| {
            if t.error().is_some() || t.partitions().is_empty() {
                None
            } else {
                Some(t.partitions().len())
            }
        }))
    }

    /// Opens the binding logs of new partitions and adds them to the assignment.
    fn add_partitions(&mut self, new: Vec<(String, i32)>) -> Result<(), KafkaError> {
        if new.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in new {
            let path = reclock::log_path(&self.config.state_dir, &self.config.name, &topic, partition);
            let log = BindingLog::open(path.clone())
                .map_err(|e| KafkaError::state(format!("cannot open reclock bindings {}", path.display()), e))?;
            let start = match log.lower() {
                Some(lo) => {
                    tracing::info!(source = %self.config.name, topic = %topic, partition, bindings = log.bindings().len(),
                        "replaying from offset {lo} at the recorded times");
                    Offset::Offset(lo as i64)
                }
                None => Offset::Beginning,
            };
            let mut end = None;
            let mut done = false;
            if self.config.bounded {
                let (low, high) = self
                    .consumer
                    .fetch_watermarks(&topic, partition, METADATA_TIMEOUT)
                    .map_err(|e| KafkaError::client(format!("cannot read watermarks of {topic}/{partition}"), e))?;
                let (low, high) = (low.max(0) as u64, high.max(0) as u64);
                let from = log.lower().unwrap_or(low).max(low);
                done = from >= high;
                end = Some(high);
                *self.total.get_or_insert(0) += high.saturating_sub(from);
            }
            tpl.add_partition_offset(&topic, partition, start)
                .map_err(|e| KafkaError::client(format!("cannot assign {topic}/{partition}"), e))?;
            let slot = self.index.entry(topic.clone()).or_default();
            if slot.len() <= partition as usize {
                slot.resize(partition as usize + 1, None);
            }
            slot[partition as usize] = Some(self.parts.len());
            let replay = ReplayCursor::new(log.bindings());
            let next_lo = log.upper();
            self.parts.push(PartitionState { topic, partition, log, replay, next_lo, batch: None, end, done });
        }
        self.consumer
            .incremental_assign(&tpl)
            .map_err(|e| KafkaError::client(format!("cannot assign partitions of source {:?}", self.config.name), e))?;
        Ok(())
    }

    /// Looks for partitions added to the topics since the last look.
    fn refresh(&mut self) {
        let mut new = Vec::new();
        for topic in self.config.topics.clone() {
            let count = match self.partition_count(&topic) {
                Ok(Some(c)) => c,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(source = %self.config.name, topic = %topic, "cannot refresh partitions: {e}");
                    continue;
                }
            };
            let known = self.index.get(&topic).map_or(0, |v| v.len());
            for p in known as i32..count as i32 {
                if owner(&topic, p, self.config.source_index, self.peers) == self.worker {
                    tracing::info!(source = %self.config.name, topic = %topic, partition = p, "reading a new partition");
                    new.push((topic.clone(), p));
                }
            }
            // Remember that partitions below `count` were considered.
            let slot = self.index.entry(topic).or_default();
            if slot.len() < count {
                slot.resize(count, None);
            }
        }
        if let Err(e) = self.add_partitions(new) {
            tracing::warn!(source = %self.config.name, "cannot read new partitions (will retry): {e}");
            // Forget the failed ones so the next refresh tries again.
            for v in self.index.values_mut() {
                while v.last() == Some(&None) {
                    v.pop();
                }
            }
        }
    }

    /// Writes the bindings of this poll's live records. On failure the
    /// records stay staged and the bindings are retried at the next poll.
    fn bind(&mut self) -> bool {
        let time = self.live_time;
        for ps in &mut self.parts {
            let Some((lo, hi)) = ps.batch else { continue };
            if let Err(e) = ps.log.append(time, lo, hi) {
                tracing::error!(source = %self.config.name, topic = %ps.topic, partition = ps.partition,
                    "cannot record reclock binding, holding records back: {e}");
                return false;
            }
            ps.batch = None;
            ps.next_lo = Some(hi);
        }
        true
    }

    /// Bounded mode: marks partitions whose position reached their end.
    fn check_positions(&mut self, partition: Option<i32>) {
        let Ok(positions) = self.consumer.position() else { return };
        for ps in self.parts.iter_mut().filter(|p| !p.done && partition.is_none_or(|q| q == p.partition)) {
            let Some(end) = ps.end else { continue };
            if let Some(elem) = positions.find_partition(&ps.topic, ps.partition) {
                if let Offset::Offset(pos) = elem.offset() {
                    if pos.max(0) as u64 >= end {
                        ps.done = true;
                    }
                }
            }
        }
    }

    /// A partition reported end-of-log while its replay was incomplete: the
    /// recorded offsets are gone (retention, or the topic was recreated).
    fn check_lost_replay(&mut self, partition: i32) {
        for ps in self.parts.iter_mut().filter(|p| p.partition == partition && !p.replay.done()) {
            let Ok((_, high)) = self.consumer.fetch_watermarks(&ps.topic, ps.partition, METADATA_TIMEOUT) else { continue };
            let upper = ps.log.upper().unwrap_or(0);
            if (high.max(0) as u64) < upper {
                tracing::error!(source = %self.config.name, topic = %ps.topic, partition = ps.partition,
                    "the log ends at offset {high} but bindings reach {upper}; the missing records cannot be replayed");
                ps.replay.abandon();
            }
        }
    }

    fn decode(&self, ps: &PartitionState, payload: &[u8], offset: u64, timestamp: Option<i64>, time: u64) -> Decoded {
        let received = timestamp.filter(|t| *t > 0).unwrap_or(time as i64);
        parse_event(payload, &ParseContext { default_received_at_ms: Some(received) })
            .map_err(|rej| ErrorRecord::new(&self.config.name, ps.partition as u32, offset, rej, payload))
    }

    fn lower(&self) -> u64 {
        let replay = self.parts.iter().filter(|p| !p.done).filter_map(|p| p.replay.pending_time()).min();
        let staged = self.staged.iter().map(|(_, t)| *t).min();
        let mut lower = self.live_time;
        for t in [replay, staged].into_iter().flatten() {
            lower = lower.min(t);
        }
        lower.max(self.last_lower)
    }

    fn finished(&self) -> bool {
        self.config.bounded && self.staged.is_empty() && self.parts.iter().all(|p| p.done)
    }
}

impl SourcePart for KafkaPart {
    fn poll(&mut self, out: &mut Vec<(Decoded, u64)>, budget: usize) -> Poll {
        // STEP 1. Hand out records held back by a failed binding write.
        if !self.staged.is_empty() {
            if !self.bind() {
                return Poll::Pending { lower: self.last_lower, idle: true };
            }
            out.append(&mut self.staged);
        }
        if self.finished() {
            return Poll::Done;
        }
        // STEP 2. New partitions (unbounded only).
        if !self.config.bounded && Instant::now() >= self.next_refresh {
            self.refresh();
            self.next_refresh = Instant::now() + METADATA_REFRESH;
        }
        // STEP 3. The time of records that arrive now.
        let tick = self.config.tick_ms;
        self.live_time = self.live_time.max(now_ms() / tick * tick).max(self.floor);
        // STEP 4. Read up to `budget` records.
        let before = out.len();
        let mut read = 0;
        while read < budget {
            let msg = match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Ok(m)) => m,
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                    if self.config.bounded {
                        self.check_positions(Some(p));
                    }
                    self.check_lost_replay(p);
                    continue;
                }
                Some(Err(e)) => {
                    tracing::warn!(source = %self.config.name, "consumer error: {e}");
                    break;
                }
            };
            let Some(idx) = self.index.get(msg.topic()).and_then(|v| v.get(msg.partition() as usize).copied().flatten())
            else {
                continue;
            };
            let offset = msg.offset().max(0) as u64;
            let ps = &mut self.parts[idx];
            if let Some(end) = ps.end {
                if offset >= end {
                    ps.done = true;
                    continue;
                }
            }
            let time = match ps.replay.time_of(offset) {
                Some(t) => {
                    ps.replay.advance_past(offset);
                    t.max(self.last_lower)
                }
                None => {
                    let lo = ps.batch.map_or(ps.next_lo.unwrap_or(offset), |(lo, _)| lo);
                    ps.batch = Some((lo, offset + 1));
                    self.live_time
                }
            };
            if ps.end.is_some_and(|end| offset + 1 >= end) {
                ps.done = true;
            }
            let ps = &self.parts[idx];
            let decoded = self.decode(ps, msg.payload().unwrap_or(b""), offset, msg.timestamp().to_millis(), time);
            out.push((decoded, time));
            read += 1;
        }
        self.records += read as u64;
        // STEP 5. Bind the live records durably before they leave.
        if !self.bind() {
            self.staged.extend(out.drain(before..));
            return Poll::Pending { lower: self.last_lower, idle: true };
        }
        if self.config.bounded && read == 0 {
            self.check_positions(None);
        }
        if self.finished() {
            return Poll::Done;
        }
        // STEP 6. Nothing earlier than the oldest pending replay or the live time.
        self.last_lower = self.lower();
        Poll::Pending { lower: self.last_lower, idle: read == 0 }
    }

    fn progress(&self) -> PartProgress {
        PartProgress { consumed: self.records, total: self.total, records: self.records }
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
            assert!(load.iter().all(|&n| n == 4), "consecutive partitions spread evenly: {load:?}");
        }
        // Another source shifts the spread.
        assert_ne!(owner("events", 0, 0, 3), owner("events", 0, 1, 3));
    }
}

//! The runtime: timely workers driven by a totally ordered command stream.
//!
//! ```text
//!   controller (API / CLI thread, process 0)
//!        │ Command (crossbeam channel, to worker 0 only)
//!        ▼
//!   worker 0 ── Sequencer::push ──► timely Sequencer ──► every worker of every process, same order
//!                                                        │
//!                        InstallJob → build the job's dataflow (same shape everywhere)
//!                        DropJob    → stop the job's sources; the dataflow drains,
//!                                     sinks commit, then the dataflow is dropped
//!                        Shutdown   → DropJob for every job, then leave the loop
//! ```
//!
//! Workers never act on anything but sequenced commands, so every worker
//! builds the same dataflows in the same order (a timely requirement), whether
//! the cluster is one process or many. Later commands (audiences, regulations,
//! peeks) are further variants of [`Command`].
//!
//! ## Processes
//!
//! A cluster is `P` processes × `W` worker threads, connected by timely's own
//! TCP communication ([`ClusterConfig::addresses`]). Worker `i` of process `p`
//! has the global index `p·W + i`. Only process 0 takes commands: global
//! worker 0 lives there, and so do every single-writer sink (they run on
//! worker 0) and the regulation log reader. Sources split their input by the
//! global index and number of workers, so a job reads the same records and
//! writes the same output on `P × W` workers as on one process with `P·W`
//! workers.
//!
//! Workers report back through [`Shared`], one per process: per job, its
//! status, metrics (atomics; hot loops never log) and, when finished, its
//! summary. The first worker of every other process sends its process's job
//! counters to worker 0 every [`TELEMETRY_INTERVAL`] (and as soon as they
//! change after a job completes there) over a small telemetry dataflow, so
//! process 0's [`Cluster::report`] covers the whole cluster:
//!
//! * **Running** once process 0's workers have built the job (the others
//!   build it from the same sequenced command);
//! * **Finished** once every worker of every process has completed the job and
//!   process 0 holds their final counters. The sinks (worker 0) have then
//!   committed their complete output.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::{Exchange, Inspect};
use timely::dataflow::InputHandleVec;
use timely::synchronization::Sequencer;
use timely::worker::Worker;
use weft_dataflows::privacy::parse_regulation;
use weft_dataflows::record::CountKey;
use weft_dataflows::spec::{JobSpec, SourceSpec};
use weft_operators::dedupe::DedupeStatsSnapshot;

use crate::job::{build_job, RunningJob};

/// A job's id, unique within a cluster.
pub type JobId = u64;

/// How often other processes send their job counters to process 0.
pub const TELEMETRY_INTERVAL: Duration = Duration::from_millis(200);

/// How often process 0 samples each job's throughput.
const RATE_INTERVAL: Duration = Duration::from_secs(1);

/// What workers are told to do, in one total order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Command {
    /// Build a job's dataflow. The spec travels as TOML text with its paths
    /// already resolved, so that every worker parses the same thing.
    InstallJob {
        /// The job's id.
        id: JobId,
        /// The resolved spec, as TOML.
        spec_toml: String,
    },
    /// Stop a job's sources; the job drains, its sinks commit, and it is dropped.
    DropJob {
        /// The job's id.
        id: JobId,
    },
    /// Drop every job, then stop the workers.
    Shutdown,
    /// Add, replace or drop runtime audiences / computed traits of a job, or
    /// restore its persisted ones (checked by the controller; see `crate::views`).
    Definitions {
        /// The job.
        job: JobId,
        /// The change.
        change: crate::views::DefinitionChange,
    },
}

/// A job's lifecycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobStatus {
    /// Submitted, not yet built by every worker.
    Starting,
    /// Running.
    Running,
    /// Sources stopped; draining to the sinks.
    Draining,
    /// Every worker has completed the job (bounded input exhausted, or drained after a drop).
    Finished,
}

impl JobStatus {
    /// The status as the API spells it (`starting`, `running`, `draining`, `finished`).
    pub fn as_str(&self) -> &'static str {
        match self {
            JobStatus::Starting => "starting",
            JobStatus::Running => "running",
            JobStatus::Draining => "draining",
            JobStatus::Finished => "finished",
        }
    }
}

/// Counters a job's workers update (relaxed atomics), summed over this process's workers.
#[derive(Default)]
pub struct JobMetrics {
    /// Records read from all sources.
    pub records: AtomicU64,
    /// Records that failed validation.
    pub rejected: AtomicU64,
    /// Source units consumed (bytes for files).
    pub consumed: AtomicU64,
    /// Source units in total (bytes for files), when known.
    pub total: AtomicU64,
    /// Changes written by all sinks.
    pub sink_lines: AtomicU64,
    /// Dedupe counters (shared by the job's workers).
    pub dedupe: weft_operators::dedupe::DedupeStats,
    /// Per source, by name (see [`JobMetrics::source`]).
    pub source_metrics: Mutex<BTreeMap<String, Arc<SourceMetrics>>>,
    /// Per sink, by name (see [`JobMetrics::sink`]); sinks run on worker 0, so
    /// only process 0 has entries.
    pub sink_metrics: Mutex<BTreeMap<String, Arc<SinkMetrics>>>,
    /// Delivery metrics of the job's destination sinks (webhook, postgres,
    /// lake), by sink name: each closure returns `(metric, value)` pairs such
    /// as `("delivered_events", n)`, `("retries", n)`, `("queue_bytes", n)`.
    /// Registered by worker 0 when the sink opens.
    #[allow(clippy::type_complexity)]
    pub sinks:
        std::sync::Mutex<BTreeMap<String, Arc<dyn Fn() -> Vec<(String, f64)> + Send + Sync>>>,
}

impl std::fmt::Debug for JobMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let destinations: Vec<String> = match self.sinks.lock() {
            Ok(s) => s.keys().cloned().collect(),
            Err(_) => Vec::new(),
        };
        f.debug_struct("JobMetrics")
            .field("records", &self.records)
            .field("rejected", &self.rejected)
            .field("consumed", &self.consumed)
            .field("total", &self.total)
            .field("sink_lines", &self.sink_lines)
            .field("dedupe", &self.dedupe)
            .field("source_metrics", &self.source_metrics)
            .field("sink_metrics", &self.sink_metrics)
            .field("sinks", &destinations)
            .finish()
    }
}

impl JobMetrics {
    /// The counters of source `name`, created on first use.
    pub fn source(&self, name: &str) -> Arc<SourceMetrics> {
        let mut map = self.source_metrics.lock().expect("source metrics lock");
        map.entry(name.to_string()).or_default().clone()
    }

    /// The counters of sink `name`, created on first use.
    pub fn sink(&self, name: &str) -> Arc<SinkMetrics> {
        let mut map = self.sink_metrics.lock().expect("sink metrics lock");
        map.entry(name.to_string()).or_default().clone()
    }

    /// A copy of this process's counters (without worker counts and errors).
    pub fn counters(&self) -> Counters {
        let sources = self
            .source_metrics
            .lock()
            .expect("source metrics lock")
            .iter()
            .map(|(name, m)| (name.clone(), m.counters()))
            .collect();
        Counters {
            records: self.records.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            consumed: self.consumed.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            sink_lines: self.sink_lines.load(Ordering::Relaxed),
            dedupe: self.dedupe.snapshot(),
            sources,
            workers_installed: 0,
            workers_done: 0,
            errors: Vec::new(),
        }
    }
}

/// Counters of one source of a job (relaxed atomics).
#[derive(Debug, Default)]
pub struct SourceMetrics {
    /// Records read (valid or not).
    pub records: AtomicU64,
    /// Records that failed validation.
    pub rejected: AtomicU64,
    /// Units consumed (bytes for files, records for Kafka).
    pub consumed: AtomicU64,
    /// Units in total when known (files: their size), else 0.
    pub total: AtomicU64,
}

impl SourceMetrics {
    fn counters(&self) -> SourceCounters {
        SourceCounters {
            records: self.records.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            consumed: self.consumed.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
        }
    }
}

/// The frontier value of a sink whose input is complete.
pub const FRONTIER_COMPLETE: u64 = u64::MAX;

/// Counters of one sink of a job (on worker 0).
#[derive(Debug, Default)]
pub struct SinkMetrics {
    /// Changes handed to the sink.
    pub changes: AtomicU64,
    /// Commits made.
    pub commits: AtomicU64,
    /// The last frontier committed (ms of logical time; [`FRONTIER_COMPLETE`] once complete).
    pub frontier: AtomicU64,
    /// Set when the sink failed (its further output is discarded).
    pub failed: AtomicBool,
    /// How long each `commit` call took.
    pub commit_seconds: Histogram,
}

impl SinkMetrics {
    /// Records a commit that took `took` and reached `frontier` (empty: complete).
    pub fn committed(&self, frontier: &[u64], took: Duration) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        let f = frontier.iter().min().copied().unwrap_or(FRONTIER_COMPLETE);
        self.frontier.store(f, Ordering::Relaxed);
        self.commit_seconds.observe(took);
    }

    fn report(&self) -> SinkReport {
        let f = self.frontier.load(Ordering::Relaxed);
        SinkReport {
            changes: self.changes.load(Ordering::Relaxed),
            commits: self.commits.load(Ordering::Relaxed),
            frontier: (f != FRONTIER_COMPLETE).then_some(f),
            failed: self.failed.load(Ordering::Relaxed),
            commit_seconds: self.commit_seconds.snapshot(),
            delivery: Vec::new(),
        }
    }
}

/// Upper bounds (seconds) of the [`Histogram`] buckets.
pub const HISTOGRAM_BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram with fixed buckets ([`HISTOGRAM_BOUNDS`]), lock-free.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; HISTOGRAM_BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Adds one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = HISTOGRAM_BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(HISTOGRAM_BOUNDS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// A copy, with cumulative bucket counts (as Prometheus exposes them).
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut acc = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                acc += b.load(Ordering::Relaxed);
                acc
            })
            .collect();
        HistogramSnapshot {
            cumulative,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

/// A point-in-time copy of a [`Histogram`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// Observations `≤` each bound of [`HISTOGRAM_BOUNDS`], then all of them (`+Inf`).
    pub cumulative: Vec<u64>,
    /// Sum of the observations, seconds.
    pub sum_seconds: f64,
    /// Number of observations.
    pub count: u64,
}

/// A serializable copy of a job's counters on one process; what other
/// processes send to process 0, and what reports sum.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// Records read.
    pub records: u64,
    /// Records rejected.
    pub rejected: u64,
    /// Source units consumed.
    pub consumed: u64,
    /// Source units in total, when known.
    pub total: u64,
    /// Changes written by sinks.
    pub sink_lines: u64,
    /// Dedupe counters.
    pub dedupe: DedupeStatsSnapshot,
    /// Per source.
    pub sources: BTreeMap<String, SourceCounters>,
    /// Workers (of that process) that have built the job.
    pub workers_installed: usize,
    /// Workers (of that process) that have completed it.
    pub workers_done: usize,
    /// Problems met there.
    pub errors: Vec<String>,
}

impl Counters {
    /// Adds `other`'s counters (gauges add too: they are per-process shares).
    fn add(&mut self, other: &Counters) {
        self.records += other.records;
        self.rejected += other.rejected;
        self.consumed += other.consumed;
        self.total += other.total;
        self.sink_lines += other.sink_lines;
        self.dedupe += &other.dedupe;
        for (name, s) in &other.sources {
            self.sources.entry(name.clone()).or_default().add(s);
        }
        self.workers_installed += other.workers_installed;
        self.workers_done += other.workers_done;
    }
}

/// Counters of one source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceCounters {
    /// Records read.
    pub records: u64,
    /// Records rejected.
    pub rejected: u64,
    /// Units consumed.
    pub consumed: u64,
    /// Units in total, when known (else 0).
    pub total: u64,
}

impl SourceCounters {
    fn add(&mut self, o: &SourceCounters) {
        self.records += o.records;
        self.rejected += o.rejected;
        self.consumed += o.consumed;
        self.total += o.total;
    }

    /// Units not consumed yet, when the total is known.
    pub fn lag(&self) -> Option<u64> {
        (self.total > 0).then(|| self.total.saturating_sub(self.consumed))
    }
}

/// What the controller knows about a job.
#[derive(Debug)]
pub struct JobState {
    /// The job's name.
    pub name: String,
    /// Its status.
    pub status: JobStatus,
    /// Live counters.
    pub metrics: Arc<JobMetrics>,
    /// When it was submitted.
    pub started: Instant,
    /// When it finished.
    pub finished: Option<Instant>,
    /// Workers (of this process) that have built the job.
    pub workers_installed: usize,
    /// Workers (of this process) that have completed it.
    pub workers_done: usize,
    /// Final counts (from the job's counts output), when finished.
    pub counts: BTreeMap<CountKey, isize>,
    /// Problems met while running (a failed sink, an unreadable file); the job goes on without that part.
    pub errors: Vec<String>,
    /// The resolved spec (process 0, from submission).
    pub spec: Option<Arc<JobSpec>>,
    /// The latest counters of the other processes (process 0 only), by process index.
    pub remote: BTreeMap<usize, Counters>,
    /// Records per second over the last sampling interval (process 0).
    pub rate: f64,
    /// The last throughput sample: when, and the records read by then.
    sampled: (Instant, u64),
}

impl JobState {
    fn new(name: &str) -> Self {
        JobState {
            name: name.to_string(),
            status: JobStatus::Starting,
            metrics: Arc::default(),
            started: Instant::now(),
            finished: None,
            workers_installed: 0,
            workers_done: 0,
            counts: BTreeMap::new(),
            errors: Vec::new(),
            spec: None,
            remote: BTreeMap::new(),
            rate: 0.0,
            sampled: (Instant::now(), 0),
        }
    }

    /// This process's counters plus the other processes' latest ones.
    pub fn cluster_counters(&self) -> Counters {
        let mut c = self.metrics.counters();
        c.workers_installed = self.workers_installed;
        c.workers_done = self.workers_done;
        c.errors = self.errors.clone();
        for (process, r) in &self.remote {
            c.add(r);
            c.errors
                .extend(r.errors.iter().map(|e| format!("process {process}: {e}")));
        }
        c
    }

    /// Moves the status on from the worker counts; logs transitions.
    fn refresh_status(&mut self, shared: &Shared) {
        let remote_done: usize = self.remote.values().map(|c| c.workers_done).sum();
        let expected_remote = if shared.process == 0 {
            shared.peers - shared.workers
        } else {
            0
        };
        if self.status != JobStatus::Finished
            && self.workers_done == shared.workers
            && remote_done == expected_remote
        {
            self.status = JobStatus::Finished;
            self.finished = Some(Instant::now());
            let c = self.cluster_counters();
            tracing::info!(
                job = %self.name,
                process = shared.process,
                records = c.records,
                rejected = c.rejected,
                changes = c.sink_lines,
                errors = c.errors.len(),
                "job finished in {:.3}s",
                (Instant::now() - self.started).as_secs_f64()
            );
        } else if self.status == JobStatus::Starting && self.workers_installed == shared.workers {
            self.status = JobStatus::Running;
            tracing::info!(job = %self.name, process = shared.process, "job running");
        }
    }
}

/// State shared between the controller and this process's workers.
#[derive(Debug)]
pub struct Shared {
    /// Workers in this process.
    pub workers: usize,
    /// Workers in the whole cluster.
    pub peers: usize,
    /// This process's index.
    pub process: usize,
    /// Processes in the cluster.
    pub processes: usize,
    /// When this process started its workers.
    pub started: Instant,
    /// Jobs by id.
    pub jobs: Mutex<BTreeMap<JobId, JobState>>,
    /// Set when every worker has left its loop.
    pub stopped: AtomicBool,
    /// Collection API routes: write key → HTTP source of a running job.
    pub collect: crate::collect::Inboxes,
    /// Runtime audiences and profile indexes of jobs (process 0).
    pub views: crate::views::Views,
}

impl Shared {
    /// Runs `f` on a job's state, creating it if a worker learns of the job first.
    pub fn with_job<R>(&self, id: JobId, name: &str, f: impl FnOnce(&mut JobState) -> R) -> R {
        let mut jobs = self.jobs.lock().expect("job registry lock");
        let state = jobs.entry(id).or_insert_with(|| JobState::new(name));
        f(state)
    }

    /// Records a problem in a job.
    pub fn job_error(&self, id: JobId, name: &str, message: String) {
        tracing::error!(job = name, id, process = self.process, "{message}");
        self.with_job(id, name, |s| s.errors.push(message));
    }

    /// Counts a worker of this process that has built a job.
    fn installed(&self, id: JobId, name: &str) {
        self.with_job(id, name, |s| {
            s.workers_installed += 1;
            s.refresh_status(self);
        });
    }

    /// Counts a worker of this process that has completed a job.
    fn completed(&self, id: JobId, name: &str, counts: Option<BTreeMap<CountKey, isize>>) {
        self.with_job(id, name, |s| {
            s.workers_done += 1;
            if let Some(c) = counts {
                s.counts = c;
            }
            s.refresh_status(self);
        });
    }

    /// Takes another process's latest counters of a job (process 0).
    fn remote_counters(&self, process: usize, id: JobId, name: &str, counters: Counters) {
        self.with_job(id, name, |s| {
            s.remote.insert(process, counters);
            s.refresh_status(self);
        });
    }

    /// Updates each unfinished job's throughput (records/s since the last sample).
    fn sample_rates(&self) {
        let mut jobs = self.jobs.lock().expect("job registry lock");
        let now = Instant::now();
        for s in jobs.values_mut() {
            if s.status == JobStatus::Finished {
                s.rate = 0.0;
                continue;
            }
            let records = s.cluster_counters().records;
            let secs = (now - s.sampled.0).as_secs_f64();
            if secs > 0.0 {
                s.rate = records.saturating_sub(s.sampled.1) as f64 / secs;
            }
            s.sampled = (now, records);
        }
    }

    /// Counters of every job of this process, for telemetry.
    fn local_counters(&self) -> Vec<(JobId, String, Counters)> {
        let jobs = self.jobs.lock().expect("job registry lock");
        jobs.iter()
            .map(|(id, s)| {
                let mut c = s.metrics.counters();
                c.workers_installed = s.workers_installed;
                c.workers_done = s.workers_done;
                c.errors = s.errors.clone();
                (*id, s.name.clone(), c)
            })
            .collect()
    }
}

/// A snapshot of a job, for display.
#[derive(Clone, Debug)]
pub struct JobReport {
    /// The job's id.
    pub id: JobId,
    /// The job's name.
    pub name: String,
    /// Its status.
    pub status: JobStatus,
    /// Records read.
    pub records: u64,
    /// Records rejected.
    pub rejected: u64,
    /// Source units consumed / total.
    pub consumed: u64,
    /// Source units in total.
    pub total: u64,
    /// Changes written by sinks.
    pub sink_lines: u64,
    /// Dedupe counters.
    pub dedupe: DedupeStatsSnapshot,
    /// Time since submission (or until finish).
    pub elapsed: Duration,
    /// Records per second over the last second (0 when finished).
    pub rate: f64,
    /// Per source.
    pub sources: BTreeMap<String, SourceCounters>,
    /// Per sink.
    pub sinks: BTreeMap<String, SinkReport>,
    /// Workers (of the whole cluster, as far as process 0 knows) that have built / completed the job.
    pub workers: (usize, usize),
    /// Final counts, when finished.
    pub counts: BTreeMap<CountKey, isize>,
    /// Problems met (another process's are prefixed with `process N: `).
    pub errors: Vec<String>,
}

/// A sink's counters in a [`JobReport`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SinkReport {
    /// Changes handed to the sink.
    pub changes: u64,
    /// Commits made.
    pub commits: u64,
    /// The last committed frontier (ms of logical time); `None` once complete.
    pub frontier: Option<u64>,
    /// Whether the sink failed.
    pub failed: bool,
    /// Commit durations.
    pub commit_seconds: HistogramSnapshot,
    /// The destination's own delivery metrics, `(metric, value)` (see [`JobMetrics::sinks`]).
    pub delivery: Vec<(String, f64)>,
}

impl JobReport {
    fn of(id: JobId, s: &JobState) -> JobReport {
        let c = s.cluster_counters();
        let mut sinks: BTreeMap<String, SinkReport> = s
            .metrics
            .sink_metrics
            .lock()
            .expect("sink metrics lock")
            .iter()
            .map(|(name, m)| (name.clone(), m.report()))
            .collect();
        let destinations = s.metrics.sinks.lock().unwrap_or_else(|p| p.into_inner());
        for (name, gauges) in destinations.iter() {
            sinks.entry(name.clone()).or_default().delivery = gauges();
        }
        JobReport {
            id,
            name: s.name.clone(),
            status: s.status.clone(),
            records: c.records,
            rejected: c.rejected,
            consumed: c.consumed,
            total: c.total,
            sink_lines: c.sink_lines,
            dedupe: c.dedupe,
            elapsed: s.finished.unwrap_or_else(Instant::now) - s.started,
            rate: s.rate,
            sources: c.sources,
            sinks,
            workers: (c.workers_installed, c.workers_done),
            counts: s.counts.clone(),
            errors: c.errors,
        }
    }
}

/// Merge effort (updates' worth) an idle arrangement spends per scheduling
/// until it is compact (see [`differential_dataflow::Config`]);
/// `WEFT_IDLE_MERGE_EFFORT` overrides it (0: no idle merging).
const IDLE_MERGE_EFFORT: isize = 1000;

/// Settings of a cluster process.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Worker threads in this process.
    pub workers: usize,
    /// This process's index in `addresses` (0 when alone).
    pub process: usize,
    /// `host:port` of every process, in process order, where each listens for
    /// the others (timely's TCP communication); empty (or one entry) for a
    /// single process, which then opens no port.
    pub addresses: Vec<String>,
}

impl ClusterConfig {
    /// One process with `workers` threads (the embedded cluster of `weft run`).
    pub fn single(workers: usize) -> Self {
        ClusterConfig {
            workers,
            process: 0,
            addresses: Vec::new(),
        }
    }

    /// Processes in the cluster.
    pub fn processes(&self) -> usize {
        self.addresses.len().max(1)
    }
}

/// Why the cluster refused a command.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The job id is unknown.
    #[error("no job {0}")]
    NoSuchJob(JobId),
    /// A job of that name has not finished; names are unique among live jobs.
    #[error("a job named {0} is already running (drop it first, or rename the new one)")]
    NameInUse(String),
    /// The request cannot apply to the job in its current state.
    #[error("{0}")]
    Conflict(String),
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// Only process 0 takes commands.
    #[error("process {0} does not take commands: send them to process 0")]
    NotLeader(usize),
    /// The workers have stopped.
    #[error("the cluster has stopped")]
    Stopped,
    /// A file could not be written.
    #[error("{0}")]
    Io(String),
}

/// A running cluster process: `workers` timely worker threads, alone or
/// connected to the other processes of the cluster.
pub struct Cluster {
    commands: Sender<Command>,
    shared: Arc<Shared>,
    guards: Mutex<Option<timely::communication::WorkerGuards<()>>>,
    next_id: AtomicU64,
    /// Serializes appends to regulation logs.
    regulation_lock: Mutex<u64>,
    /// Set (and signalled) when someone asks the process to shut the cluster down.
    shutdown_requested: (Mutex<bool>, Condvar),
}

impl Cluster {
    /// Starts this process's workers; they idle until a command arrives.
    ///
    /// With several processes this blocks until every process is connected
    /// (timely retries connecting once a second and says so on stdout).
    pub fn start(config: ClusterConfig) -> anyhow::Result<Cluster> {
        anyhow::ensure!(config.workers >= 1, "--workers must be at least 1");
        let processes = config.processes();
        anyhow::ensure!(
            config.process < processes,
            "process index {} is not below the number of processes ({processes})",
            config.process
        );
        let communication = if processes > 1 {
            timely::CommunicationConfig::Cluster {
                threads: config.workers,
                process: config.process,
                addresses: config.addresses.clone(),
                report: false,
                zerocopy: false,
            }
        } else {
            timely::CommunicationConfig::Process(config.workers)
        };
        let (tx, rx) = crossbeam_channel::unbounded::<Command>();
        let shared = Arc::new(Shared {
            workers: config.workers,
            peers: config.workers * processes,
            process: config.process,
            processes,
            started: Instant::now(),
            jobs: Mutex::new(BTreeMap::new()),
            stopped: AtomicBool::new(false),
            collect: Default::default(),
            views: crate::views::Views::new(tx.clone()),
        });
        let rx = Arc::new(Mutex::new(Some(rx)));
        let worker_shared = shared.clone();
        // Idle arrangements keep merging until compact: a trace that stops
        // receiving batches would otherwise hold every time's updates apart
        // (value histories of aggregates, audiences, components) forever.
        let mut worker = timely::WorkerConfig::default();
        let effort = std::env::var("WEFT_IDLE_MERGE_EFFORT")
            .ok()
            .and_then(|v| v.parse::<isize>().ok())
            .unwrap_or(IDLE_MERGE_EFFORT);
        differential_dataflow::configure(
            &mut worker,
            &differential_dataflow::Config::default()
                .idle_merge_effort((effort > 0).then_some(effort)),
        );
        let timely_config = timely::Config {
            communication,
            worker,
        };
        let guards = timely::execute(timely_config, move |worker| {
            crate::arrangements::install(worker);
            let commands = if worker.index() == 0 {
                rx.lock().expect("receiver lock").take()
            } else {
                None
            };
            worker_loop(worker, commands, worker_shared.clone());
        })
        .map_err(|e| anyhow::anyhow!("cannot start timely workers: {e}"))?;
        Ok(Cluster {
            commands: tx,
            shared,
            guards: Mutex::new(Some(guards)),
            next_id: AtomicU64::new(1),
            regulation_lock: Mutex::new(0),
            shutdown_requested: (Mutex::new(false), Condvar::new()),
        })
    }

    /// This process's shared state (job registry and metrics).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// This process's index; process 0 takes commands.
    pub fn process(&self) -> usize {
        self.shared.process
    }

    fn ensure_leader(&self) -> Result<(), ControlError> {
        match self.shared.process {
            0 => Ok(()),
            p => Err(ControlError::NotLeader(p)),
        }
    }

    /// Submits a job (already validated, paths resolved); returns its id.
    pub fn submit(&self, spec: &JobSpec) -> Result<JobId, ControlError> {
        self.ensure_leader()?;
        let spec_toml = toml::to_string(spec)
            .map_err(|e| ControlError::Invalid(format!("cannot serialize the spec: {e}")))?;
        let id = {
            // Check and register under one lock, so two submissions of a name cannot both pass.
            let mut jobs = self.shared.jobs.lock().expect("job registry lock");
            if jobs
                .values()
                .any(|s| s.name == spec.job.name && s.status != JobStatus::Finished)
            {
                return Err(ControlError::NameInUse(spec.job.name.clone()));
            }
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let mut state = JobState::new(&spec.job.name);
            state.spec = Some(Arc::new(spec.clone()));
            jobs.insert(id, state);
            id
        };
        tracing::info!(job = %spec.job.name, id, "job submitted");
        self.commands
            .send(Command::InstallJob { id, spec_toml })
            .map_err(|_| ControlError::Stopped)?;
        Ok(id)
    }

    /// Stops a job's sources; it drains and finishes. Dropping a finished job does nothing.
    pub fn drop_job(&self, id: JobId) -> Result<(), ControlError> {
        self.ensure_leader()?;
        let name = {
            let jobs = self.shared.jobs.lock().expect("job registry lock");
            let s = jobs.get(&id).ok_or(ControlError::NoSuchJob(id))?;
            if s.status == JobStatus::Finished {
                return Ok(());
            }
            s.name.clone()
        };
        tracing::info!(job = %name, id, "job dropped: stopping its sources");
        self.commands
            .send(Command::DropJob { id })
            .map_err(|_| ControlError::Stopped)
    }

    /// Validates a regulation request (one JSON object, as the regulation
    /// log takes it; see `docs/privacy.md`) and appends it, as one line, to
    /// the job's regulation log; returns the regulation's id (the request's
    /// `id`, or a new `api-…` id written into the line).
    ///
    /// The line is fsync'd before this returns. The job's worker 0 tails
    /// the log and binds the line to a logical time when it reads it, so
    /// the regulation applies once, even across restarts. Only a job that
    /// tails its log (a live job: some source unbounded) can take one:
    /// a bounded job read its log when it started.
    pub fn append_regulation(&self, id: JobId, request: &str) -> Result<String, ControlError> {
        self.ensure_leader()?;
        let (name, path) = self.regulation_target(id)?;
        let mut value: serde_json::Value = serde_json::from_str(request)
            .map_err(|e| ControlError::Invalid(format!("the regulation is not JSON: {e}")))?;
        let object = value.as_object_mut().ok_or_else(|| {
            ControlError::Invalid("the regulation must be a JSON object".to_string())
        })?;
        let mut seq = self.regulation_lock.lock().expect("regulation lock");
        let reg_id = match object.get("id").and_then(|v| v.as_str()) {
            Some(given) => given.to_string(),
            None => {
                *seq += 1;
                let generated = format!("api-{}-{}-{}", name, wall_ms(), *seq);
                object.insert("id".into(), generated.clone().into());
                generated
            }
        };
        let line = value.to_string();
        parse_regulation(&line).map_err(ControlError::Invalid)?;
        append_line(&path, &line)
            .map_err(|e| ControlError::Io(format!("cannot append to {}: {e}", path.display())))?;
        tracing::info!(job = %name, id, regulation = %reg_id, "regulation appended to {}", path.display());
        Ok(reg_id)
    }

    /// The job's name and regulation log, if it can take a regulation now.
    fn regulation_target(&self, id: JobId) -> Result<(String, std::path::PathBuf), ControlError> {
        let jobs = self.shared.jobs.lock().expect("job registry lock");
        let s = jobs.get(&id).ok_or(ControlError::NoSuchJob(id))?;
        let spec = s.spec.as_ref().ok_or(ControlError::NoSuchJob(id))?;
        let regs = spec.regulations.as_ref().ok_or_else(|| {
            ControlError::Conflict(format!(
                "job {} has no [regulations] section: add one (with a log path) and resubmit",
                s.name
            ))
        })?;
        if matches!(s.status, JobStatus::Draining | JobStatus::Finished) {
            return Err(ControlError::Conflict(format!(
                "job {} is {}: it no longer reads its regulation log ({}); append there for its next run",
                s.name,
                s.status.as_str(),
                regs.path.display()
            )));
        }
        if spec.sources.iter().all(SourceSpec::bounded) {
            return Err(ControlError::Conflict(format!(
                "job {} has only bounded sources: it read its regulation log ({}) when it started; append there and run it again",
                s.name,
                regs.path.display()
            )));
        }
        Ok((s.name.clone(), regs.path.clone()))
    }

    /// The current state of a job (cluster-wide on process 0).
    pub fn report(&self, id: JobId) -> Option<JobReport> {
        let jobs = self.shared.jobs.lock().expect("job registry lock");
        jobs.get(&id).map(|s| JobReport::of(id, s))
    }

    /// Every job's state, by id.
    pub fn reports(&self) -> Vec<JobReport> {
        let jobs = self.shared.jobs.lock().expect("job registry lock");
        jobs.iter().map(|(id, s)| JobReport::of(*id, s)).collect()
    }

    /// Asks whoever owns this cluster (`weft serve`) to shut it down; see
    /// [`Cluster::shutdown_requested`].
    pub fn request_shutdown(&self) {
        let (flag, signal) = &self.shutdown_requested;
        *flag.lock().expect("shutdown flag lock") = true;
        signal.notify_all();
    }

    /// Waits up to `timeout` for [`Cluster::request_shutdown`]; whether it was called.
    pub fn shutdown_requested(&self, timeout: Duration) -> bool {
        let (flag, signal) = &self.shutdown_requested;
        let guard = flag.lock().expect("shutdown flag lock");
        let (guard, _) = signal
            .wait_timeout_while(guard, timeout, |requested| !*requested)
            .expect("shutdown flag lock");
        *guard
    }

    /// Stops every job (draining them) and the workers of every process;
    /// waits for this process's threads. Later calls return at once.
    pub fn shutdown(&self) -> anyhow::Result<()> {
        let _ = self.commands.send(Command::Shutdown);
        self.wait()
    }

    /// Waits until this process's workers have stopped (on a process other
    /// than 0: until process 0 shuts the cluster down).
    pub fn wait(&self) -> anyhow::Result<()> {
        let guards = self.guards.lock().expect("guards lock").take();
        if let Some(guards) = guards {
            for r in guards.join() {
                r.map_err(|e| anyhow::anyhow!("a worker failed: {e}"))?;
            }
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let guards = self.guards.get_mut().ok().and_then(|g| g.take());
        if let Some(guards) = guards {
            let _ = self.commands.send(Command::Shutdown);
            drop(guards.join());
        }
    }
}

/// Appends one line and syncs it.
fn append_line(path: &std::path::Path, line: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    // One write of the whole line: readers only take complete lines.
    f.write_all(format!("{line}\n").as_bytes())?;
    f.sync_data()
}

/// The wall clock in ms.
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A process's counters of one job, on their way to process 0.
type TelemetryRecord = (usize, JobId, String, Counters);

/// The telemetry dataflow on one worker: the first worker of every process
/// but 0 sends its process's changed job counters; worker 0 receives them.
struct Telemetry {
    input: InputHandleVec<u64, TelemetryRecord>,
    /// Whether this worker sends (first worker of a process other than 0).
    sender: bool,
    last_sent: BTreeMap<JobId, Counters>,
    next: Instant,
}

impl Telemetry {
    fn build(worker: &mut Worker, shared: &Arc<Shared>) -> Telemetry {
        let mut input: InputHandleVec<u64, TelemetryRecord> = InputHandleVec::new();
        let receiver = shared.clone();
        worker.dataflow_named::<u64, _, _>("telemetry", |scope| {
            input
                .to_stream(scope)
                .exchange(|_| 0)
                .inspect(move |(process, id, name, counters)| {
                    receiver.remote_counters(*process, *id, name, counters.clone())
                });
        });
        Telemetry {
            input,
            sender: shared.process != 0 && worker.index() == shared.process * shared.workers,
            last_sent: BTreeMap::new(),
            next: Instant::now(),
        }
    }

    /// Sends the counters that changed since the last send, at most every [`TELEMETRY_INTERVAL`].
    fn tick(&mut self, shared: &Shared, force: bool) {
        if !self.sender || (!force && Instant::now() < self.next) {
            return;
        }
        self.next = Instant::now() + TELEMETRY_INTERVAL;
        let mut sent = false;
        for (id, name, counters) in shared.local_counters() {
            if self.last_sent.get(&id) != Some(&counters) {
                self.last_sent.insert(id, counters.clone());
                self.input.send((shared.process, id, name, counters));
                sent = true;
            }
        }
        if sent {
            let next = self.input.time() + 1;
            self.input.advance_to(next);
        }
    }
}

/// One worker's life: apply sequenced commands, step the dataflows, report.
fn worker_loop(worker: &mut Worker, commands: Option<Receiver<Command>>, shared: Arc<Shared>) {
    let mut sequencer: Sequencer<Command> = Sequencer::new(worker, Instant::now());
    let mut telemetry = Telemetry::build(worker, &shared);
    let mut jobs: BTreeMap<JobId, RunningJob> = BTreeMap::new();
    let mut shutting_down = false;
    let mut next_rate_sample = Instant::now() + RATE_INTERVAL;
    loop {
        // STEP 1. Worker 0 feeds controller commands into the sequencer.
        if let Some(rx) = &commands {
            for cmd in rx.try_iter() {
                sequencer.push(cmd);
            }
        }
        // STEP 2. Apply sequenced commands, in order, on every worker.
        for cmd in sequencer.by_ref() {
            tracing::debug!(worker = worker.index(), ?cmd, "applying command");
            match cmd {
                Command::InstallJob { id, spec_toml } => {
                    let spec =
                        JobSpec::from_toml(&spec_toml).expect("the controller validated this spec");
                    let job = build_job(worker, id, &spec, &shared);
                    tracing::debug!(job = %spec.job.name, id, worker = worker.index(), "job built");
                    shared.installed(id, &spec.job.name);
                    jobs.insert(id, job);
                }
                Command::DropJob { id } => {
                    if let Some(job) = jobs.get(&id) {
                        job.stop();
                        shared.with_job(id, &job.name, |s| {
                            if s.status != JobStatus::Finished {
                                s.status = JobStatus::Draining
                            }
                        });
                    }
                }
                Command::Definitions { job, change } => {
                    crate::views::apply(worker, jobs.get_mut(&job), job, change);
                }
                Command::Shutdown => {
                    if worker.index() == 0 {
                        tracing::info!(jobs = jobs.len(), "shutting down: draining every job");
                    }
                    shutting_down = true;
                    for job in jobs.values() {
                        job.stop();
                    }
                }
            }
        }
        // STEP 3. Do work; park briefly when there is none.
        worker.step_or_park(Some(Duration::from_millis(5)));
        // STEP 4. Retire completed jobs.
        let done: Vec<JobId> = jobs
            .iter()
            .filter(|(_, j)| j.is_complete())
            .map(|(id, _)| *id)
            .collect();
        let retired = !done.is_empty();
        for id in done {
            let job = jobs.remove(&id).expect("job is present");
            let counts = job.take_counts();
            for dataflow in job.dataflow_indices() {
                worker.drop_dataflow(dataflow);
            }
            tracing::debug!(job = %job.name, id, worker = worker.index(), "job completed on this worker");
            shared.completed(id, &job.name, counts);
        }
        // STEP 5. Telemetry and throughput.
        telemetry.tick(&shared, retired);
        if worker.index() == 0 && Instant::now() >= next_rate_sample {
            shared.sample_rates();
            next_rate_sample = Instant::now() + RATE_INTERVAL;
        }
        if shutting_down && jobs.is_empty() {
            break;
        }
    }
    if worker.index() == 0 {
        shared.stopped.store(true, Ordering::Relaxed);
    }
}

//! The runtime: timely workers driven by a totally ordered command stream.
//!
//! ```text
//!   controller (API / CLI thread)
//!        │ Command (crossbeam channel, to worker 0 only)
//!        ▼
//!   worker 0 ── Sequencer::push ──► timely Sequencer ──► every worker, same order
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
//! Workers report back through [`Shared`]: per job, its status, metrics
//! (atomics; hot loops never log) and, when finished, its summary.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};
use timely::synchronization::Sequencer;
use timely::worker::Worker;
use weft_dataflows::record::CountKey;
use weft_dataflows::spec::JobSpec;

use crate::job::{build_job, RunningJob};

/// A job's id, unique within a cluster.
pub type JobId = u64;

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

/// Counters a job's workers update (relaxed atomics).
#[derive(Debug, Default)]
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
    /// Workers that have built the job.
    pub workers_installed: usize,
    /// Workers that have completed it.
    pub workers_done: usize,
    /// Final counts (from the job's counts output), when finished.
    pub counts: BTreeMap<CountKey, isize>,
    /// Problems met while running (a failed sink, an unreadable file); the job goes on without that part.
    pub errors: Vec<String>,
}

/// State shared between the controller and this process's workers.
#[derive(Debug)]
pub struct Shared {
    /// Workers in this process.
    pub workers: usize,
    /// Jobs by id.
    pub jobs: Mutex<BTreeMap<JobId, JobState>>,
    /// Set when every worker has left its loop.
    pub stopped: AtomicBool,
}

impl Shared {
    /// Runs `f` on a job's state, creating it if a worker learns of the job first.
    pub fn with_job<R>(&self, id: JobId, name: &str, f: impl FnOnce(&mut JobState) -> R) -> R {
        let mut jobs = self.jobs.lock().expect("job registry lock");
        let state = jobs.entry(id).or_insert_with(|| JobState {
            name: name.to_string(),
            status: JobStatus::Starting,
            metrics: Arc::default(),
            started: Instant::now(),
            finished: None,
            workers_installed: 0,
            workers_done: 0,
            counts: BTreeMap::new(),
            errors: Vec::new(),
        });
        f(state)
    }

    /// Records a problem in a job.
    pub fn job_error(&self, id: JobId, name: &str, message: String) {
        tracing::error!(job = name, "{message}");
        self.with_job(id, name, |s| s.errors.push(message));
    }
}

/// A snapshot of a job, for display.
#[derive(Clone, Debug)]
pub struct JobReport {
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
    pub dedupe: weft_operators::dedupe::DedupeStatsSnapshot,
    /// Time since submission (or until finish).
    pub elapsed: Duration,
    /// Final counts, when finished.
    pub counts: BTreeMap<CountKey, isize>,
    /// Problems met.
    pub errors: Vec<String>,
}

/// Settings of an embedded cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Worker threads.
    pub workers: usize,
}

/// A running embedded cluster: one process, `workers` timely worker threads.
pub struct Cluster {
    commands: Sender<Command>,
    shared: Arc<Shared>,
    guards: Option<timely::communication::WorkerGuards<()>>,
    next_id: AtomicU64,
}

impl Cluster {
    /// Starts the workers; they idle until a command arrives.
    pub fn start(config: ClusterConfig) -> anyhow::Result<Cluster> {
        anyhow::ensure!(config.workers >= 1, "--workers must be at least 1");
        let (tx, rx) = crossbeam_channel::unbounded::<Command>();
        let shared = Arc::new(Shared {
            workers: config.workers,
            jobs: Mutex::new(BTreeMap::new()),
            stopped: AtomicBool::new(false),
        });
        let rx = Arc::new(Mutex::new(Some(rx)));
        let worker_shared = shared.clone();
        let guards = timely::execute(timely::Config::process(config.workers), move |worker| {
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
            guards: Some(guards),
            next_id: AtomicU64::new(1),
        })
    }

    /// Submits a job (already validated, paths resolved); returns its id.
    pub fn submit(&self, spec: &JobSpec) -> anyhow::Result<JobId> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let spec_toml = toml::to_string(spec)?;
        self.shared.with_job(id, &spec.job.name, |_| ());
        self.commands
            .send(Command::InstallJob { id, spec_toml })
            .map_err(|_| anyhow::anyhow!("the cluster has stopped"))?;
        Ok(id)
    }

    /// Stops a job's sources; it drains and finishes.
    pub fn drop_job(&self, id: JobId) -> anyhow::Result<()> {
        self.commands
            .send(Command::DropJob { id })
            .map_err(|_| anyhow::anyhow!("the cluster has stopped"))
    }

    /// The current state of a job.
    pub fn report(&self, id: JobId) -> Option<JobReport> {
        let jobs = self.shared.jobs.lock().expect("job registry lock");
        let s = jobs.get(&id)?;
        let m = &s.metrics;
        Some(JobReport {
            name: s.name.clone(),
            status: s.status.clone(),
            records: m.records.load(Ordering::Relaxed),
            rejected: m.rejected.load(Ordering::Relaxed),
            consumed: m.consumed.load(Ordering::Relaxed),
            total: m.total.load(Ordering::Relaxed),
            sink_lines: m.sink_lines.load(Ordering::Relaxed),
            dedupe: m.dedupe.snapshot(),
            elapsed: s.finished.unwrap_or_else(Instant::now) - s.started,
            counts: s.counts.clone(),
            errors: s.errors.clone(),
        })
    }

    /// Stops every job (draining them) and the workers; waits for the threads.
    pub fn shutdown(mut self) -> anyhow::Result<()> {
        let _ = self.commands.send(Command::Shutdown);
        if let Some(guards) = self.guards.take() {
            for r in guards.join() {
                r.map_err(|e| anyhow::anyhow!("a worker failed: {e}"))?;
            }
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(guards) = self.guards.take() {
            let _ = self.commands.send(Command::Shutdown);
            drop(guards.join());
        }
    }
}

/// One worker's life: apply sequenced commands, step the dataflows, report.
fn worker_loop(worker: &mut Worker, commands: Option<Receiver<Command>>, shared: Arc<Shared>) {
    let mut sequencer: Sequencer<Command> = Sequencer::new(worker, Instant::now());
    let mut jobs: BTreeMap<JobId, RunningJob> = BTreeMap::new();
    let mut shutting_down = false;
    loop {
        // STEP 1. Worker 0 feeds controller commands into the sequencer.
        if let Some(rx) = &commands {
            for cmd in rx.try_iter() {
                sequencer.push(cmd);
            }
        }
        // STEP 2. Apply sequenced commands, in order, on every worker.
        while let Some(cmd) = sequencer.next() {
            tracing::debug!(worker = worker.index(), ?cmd, "applying command");
            match cmd {
                Command::InstallJob { id, spec_toml } => {
                    let spec =
                        JobSpec::from_toml(&spec_toml).expect("the controller validated this spec");
                    let job = build_job(worker, id, &spec, &shared);
                    shared.with_job(id, &spec.job.name, |s| {
                        s.workers_installed += 1;
                        if s.workers_installed == shared.workers && s.status == JobStatus::Starting
                        {
                            s.status = JobStatus::Running;
                        }
                    });
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
                Command::Shutdown => {
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
        for id in done {
            let job = jobs.remove(&id).expect("job is present");
            let counts = job.take_counts();
            worker.drop_dataflow(job.dataflow_index);
            shared.with_job(id, &job.name, |s| {
                s.workers_done += 1;
                if let Some(c) = counts {
                    s.counts = c;
                }
                if s.workers_done == shared.workers {
                    s.status = JobStatus::Finished;
                    s.finished = Some(Instant::now());
                }
            });
        }
        if shutting_down && jobs.is_empty() {
            break;
        }
    }
    if worker.index() == 0 {
        shared.stopped.store(true, Ordering::Relaxed);
    }
}

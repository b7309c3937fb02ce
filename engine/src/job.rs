//! Building a job's dataflow on one worker.
//!
//! ```text
//!  [[sources]] ──► Source:<name> ──► Reclock:<name> (files) ──────────┐
//!                                                                      ├─ concat ─► ingest ─┬─ events ─► Sink:<name>
//!                                                                      ┘                    ├─ errors ─► Sink:<name>
//!                                                                                           └─ counts ─► Sink:<name>, Summary
//! ```
//!
//! Every worker builds the same operators in the same order (timely requires
//! it); only the data each worker's source parts read differs. Single-writer
//! sinks route all updates to worker 0, so output does not depend on the
//! number of workers.
//!
//! A part that fails (an unreadable file, a sink that cannot write) is
//! recorded as a job error and the rest of the job goes on.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use differential_dataflow::{AsCollection, VecCollection};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::Scope;
use timely::scheduling::Activator;
use timely::worker::Worker;
use weft_connectors::file_sink::{JsonLinesSink, SegmentAudienceSink};
use weft_connectors::file_source::FileSourceConfig;
use weft_connectors::kafka::admin::create_topic;
use weft_connectors::kafka::{
    DeadLetterSink, KafkaError, KafkaKey, KafkaSink, KafkaSinkConfig, KafkaSourceConfig,
};
use weft_connectors::sink::Sink;
use weft_connectors::source::{Decoded, PartProgress, Poll, SourcePart};
use weft_dataflows::audience::{
    compile_aggregate, compile_audience, AggValue, Members, Membership, ProfileInputs, TraitValue,
    TraitValues,
};
use weft_dataflows::event::Event;
use weft_dataflows::identity::{
    identity, Identifier, ProfileChangeRecord, ProfileId, ProfileRecord, TraitRecord,
};
use weft_dataflows::ingest::ingest;
use weft_dataflows::query::{parse_audience, parse_computed_trait};
use weft_dataflows::record::{CountKey, WriteJson};
use weft_dataflows::spec::{
    DedupeSpec, JobSpec, LatePolicySpec, OutputName, SinkFormat, SinkSpec, SourceSpec,
};
use weft_operators::by_time::{SinkByTime, SinkEvent, SinkTarget};
use weft_operators::dedupe::{DedupeConfig, LatePolicy};
use weft_operators::reclock::Reclock;

use crate::runtime::{JobId, JobMetrics, Shared};

/// Records a source part produces per activation before yielding to other operators.
const SOURCE_BATCH: usize = 8192;

/// The profile-level outputs of a job, readable for sinks.
struct ProfileOutputs<'s> {
    identities: VecCollection<'s, u64, ProfileRecord, isize>,
    changes: VecCollection<'s, u64, ProfileChangeRecord, isize>,
    traits: VecCollection<'s, u64, TraitRecord, isize>,
    audiences: VecCollection<'s, u64, Membership, isize>,
    computed: VecCollection<'s, u64, TraitValue, isize>,
}

/// Identity resolution, then computed traits and audiences over the profiles.
///
/// ```text
///  events ─► identity ─► profiles (id → profile), traits, changes
///     │                      │
///     └─ anchor id ──────────┴─ join ─► (profile, event) ─► computed traits ─► audiences
/// ```
fn build_profiles<'s>(
    events: VecCollection<'s, u64, Event, isize>,
    spec: &JobSpec,
) -> Result<ProfileOutputs<'s>, String> {
    let ids = identity(events, &spec.identity)?;
    // Each event belongs to the profile of its anchor identifier (userId, else anonymousId, ...).
    let profile_events = ids
        .anchored
        .clone()
        .arrange_by_key_named("EventsByAnchor")
        .join_core(ids.profile_of.clone(), |_h, e, p| Some((*p, e.clone())));
    let inputs = ProfileInputs {
        profiles: ids.profiles.clone().map(|(_, p)| p).distinct(),
        events: profile_events,
        traits: ids
            .traits
            .clone()
            .map(|((p, k), v)| (p, (k.to_string(), v.to_string()))),
    };
    let mut computed: BTreeMap<String, TraitValues<'s, ProfileId>> = BTreeMap::new();
    let mut computed_out = Vec::new();
    for t in &spec.traits {
        let agg = parse_computed_trait(&t.query).map_err(|e| format!("trait {}: {e}", t.name))?;
        let values = compile_aggregate(&inputs, &agg);
        let name = t.name.clone();
        computed_out.push(values.clone().map(move |(p, v)| (p, (name.clone(), v))));
        computed.insert(t.name.clone(), values);
    }
    let mut audiences: BTreeMap<String, Members<'s, ProfileId>> = BTreeMap::new();
    let mut members_out = Vec::new();
    for a in &spec.audiences {
        let cond = parse_audience(&a.query).map_err(|e| format!("audience {}: {e}", a.name))?;
        let members = compile_audience(&inputs, &cond, &computed, &audiences)?;
        let key = a.key.clone().unwrap_or_else(|| a.name.clone());
        members_out.push(members.clone().map(move |p| (p, key.clone())));
        audiences.insert(a.name.clone(), members);
    }
    let scope = inputs.profiles.scope();
    let audiences_out = differential_dataflow::collection::concatenate(scope, members_out)
        .arrange_by_key_named("NameMembers")
        .join_core(
            ids.identifiers.clone(),
            |_p, audience: &String, ident: &Identifier| {
                Some(Membership {
                    audience: audience.clone(),
                    profile: format!("{}:{}", ident.kind, ident.value),
                })
            },
        );
    let computed_out = differential_dataflow::collection::concatenate(scope, computed_out)
        .arrange_by_key_named("NameComputed")
        .join_core(
            ids.identifiers.clone(),
            |_p, (name, value): &(String, AggValue), ident| {
                Some(TraitValue {
                    name: name.clone(),
                    profile: format!("{}:{}", ident.kind, ident.value),
                    value: value.clone(),
                })
            },
        );
    Ok(ProfileOutputs {
        identities: ids.profile_records(),
        changes: ids.change_records(),
        traits: ids.trait_records(),
        audiences: audiences_out,
        computed: computed_out,
    })
}

/// An empty collection (an output whose producer could not be built).
fn empty<'s, D: Clone + 'static>(scope: Scope<'s, u64>) -> VecCollection<'s, u64, D, isize> {
    differential_dataflow::collection::concatenate(scope, Vec::new())
}

/// How long an idle (caught-up) unbounded source waits before polling again.
const SOURCE_IDLE_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// A job's dataflow on one worker.
pub struct RunningJob {
    /// The job's name.
    pub name: String,
    /// The timely dataflow index (for `drop_dataflow`).
    pub dataflow_index: usize,
    stop: Rc<Cell<bool>>,
    activators: Rc<RefCell<Vec<Activator>>>,
    sinks_total: usize,
    sinks_done: Rc<Cell<usize>>,
    counts: Rc<RefCell<Option<BTreeMap<CountKey, isize>>>>,
}

impl RunningJob {
    /// Stops the sources: they release their capabilities at their next activation.
    pub fn stop(&self) {
        self.stop.set(true);
        for a in self.activators.borrow().iter() {
            a.activate();
        }
    }

    /// Whether every sink on this worker has seen its input complete.
    pub fn is_complete(&self) -> bool {
        self.sinks_done.get() == self.sinks_total
    }

    /// The final counts (worker 0 only).
    pub fn take_counts(&self) -> Option<BTreeMap<CountKey, isize>> {
        self.counts.borrow_mut().take()
    }
}

/// Builds `spec`'s dataflow on this worker.
pub fn build_job(
    worker: &mut Worker,
    id: JobId,
    spec: &JobSpec,
    shared: &Arc<Shared>,
) -> RunningJob {
    let index = worker.index();
    let peers = worker.peers();
    let name = spec.job.name.clone();
    let metrics = shared.with_job(id, &name, |s| s.metrics.clone());
    let stop = Rc::new(Cell::new(false));
    let activators = Rc::new(RefCell::new(Vec::new()));
    let sinks_done = Rc::new(Cell::new(0));
    let counts = Rc::new(RefCell::new(None));
    let dataflow_index = worker.next_dataflow_index();
    let mut sinks_total = 0;

    worker.dataflow_named::<u64, _, _>(&format!("job-{name}"), |scope| {
        // STEP 1. Sources: each worker reads its part of each source.
        let mut decoded = Vec::new();
        for (file_index, src) in spec.sources.iter().enumerate() {
            match src {
                SourceSpec::File {
                    name: src_name,
                    path,
                    compression,
                    chunk_bytes,
                } => {
                    let config = FileSourceConfig {
                        name: src_name.clone(),
                        path: path.clone(),
                        compression: *compression,
                        chunk_bytes: *chunk_bytes,
                        file_index,
                    };
                    let part = match config.part(index, peers) {
                        Ok(p) => Some(p),
                        Err(e) => {
                            if index == 0 {
                                shared.job_error(id, &name, format!("source {src_name}: {e}"));
                            }
                            None
                        }
                    };
                    if index == 0 {
                        if let Some(p) = &part {
                            metrics
                                .total
                                .fetch_add(p.progress().total.unwrap_or(0), Ordering::Relaxed);
                        }
                    }
                    // Files are replays: move chunk (position) times to the
                    // watermark of the events' receive clock.
                    let records =
                        source_operator(scope, src_name, part, &stop, &activators, &metrics);
                    decoded.push(
                        records.reclock_to_watermark(&format!("Reclock:{src_name}"), replay_clock),
                    );
                }
                SourceSpec::Kafka {
                    name: src_name,
                    brokers,
                    topics,
                    tick,
                    bounded,
                    options,
                } => {
                    // Live: the source binds offsets to ingestion time itself (and
                    // records the bindings), so no reclocking here.
                    let config = KafkaSourceConfig {
                        name: src_name.clone(),
                        brokers: brokers.clone().unwrap_or_default(),
                        topics: topics.clone(),
                        options: options.clone(),
                        state_dir: spec
                            .job
                            .state_dir
                            .clone()
                            .unwrap_or_else(|| ".weft-state".into()),
                        tick_ms: tick.0,
                        bounded: *bounded,
                        source_index: file_index,
                    };
                    let part = match config.part(index, peers) {
                        Ok(p) => Some(p),
                        Err(e) => {
                            shared.job_error(
                                id,
                                &name,
                                format!("source {src_name} (worker {index}): {e}"),
                            );
                            None
                        }
                    };
                    decoded.push(source_operator(
                        scope,
                        src_name,
                        part,
                        &stop,
                        &activators,
                        &metrics,
                    ));
                }
            }
        }
        let decoded = differential_dataflow::collection::concatenate(scope, decoded);

        // STEP 2. The ingest dataflow.
        let dedupe = spec.dedupe.enabled.then(|| {
            let DedupeSpec {
                enabled: _,
                window,
                key: _,
                max_memory_mb,
                late,
            } = &spec.dedupe;
            let mut config = DedupeConfig::new(window.0).with_late_policy(match late {
                LatePolicySpec::Pass => LatePolicy::Pass,
                LatePolicySpec::Drop => LatePolicy::Drop,
            });
            if let Some(mb) = max_memory_mb {
                let dir = spec
                    .job
                    .state_dir
                    .clone()
                    .unwrap_or_else(|| ".weft-state".into())
                    .join("dedupe-spill");
                config = config.with_spill(dir, (*mb as usize) << 20);
            }
            (config, metrics.dedupe.clone())
        });
        let outputs = ingest(decoded, dedupe.as_ref().map(|(c, s)| (c, s.clone())));

        // STEP 3. Identity, computed traits and audiences, when anything uses them.
        let profile_outputs = [
            OutputName::Identities,
            OutputName::ProfileChanges,
            OutputName::ProfileTraits,
            OutputName::Audiences,
            OutputName::ComputedTraits,
        ];
        let needs_profiles = !spec.audiences.is_empty()
            || !spec.traits.is_empty()
            || spec
                .sinks
                .iter()
                .any(|s| profile_outputs.contains(&s.output()));
        let profiles = if needs_profiles {
            match build_profiles(outputs.events.clone(), spec) {
                Ok(p) => Some(p),
                Err(e) => {
                    if index == 0 {
                        shared.job_error(
                            id,
                            &name,
                            format!("identity and audiences are not running: {e}"),
                        );
                    }
                    None
                }
            }
        } else {
            None
        };

        // STEP 4. Sinks, then the summary (final counts for the controller).
        for sink in &spec.sinks {
            sinks_total += 1;
            let cx = SinkContext {
                job: id,
                job_name: &name,
                index,
                shared,
                metrics: &metrics,
                done: &sinks_done,
            };
            match (sink.output(), &profiles) {
                (OutputName::Events, _) => attach_sink(outputs.events.clone(), sink, &cx),
                (OutputName::Errors, _) => attach_sink(outputs.errors.clone(), sink, &cx),
                (OutputName::Counts, _) => attach_sink(outputs.counts.clone(), sink, &cx),
                (OutputName::Identities, Some(p)) => attach_sink(p.identities.clone(), sink, &cx),
                (OutputName::ProfileChanges, Some(p)) => attach_sink(p.changes.clone(), sink, &cx),
                (OutputName::ProfileTraits, Some(p)) => attach_sink(p.traits.clone(), sink, &cx),
                (OutputName::Audiences, Some(p)) => attach_sink(p.audiences.clone(), sink, &cx),
                (OutputName::ComputedTraits, Some(p)) => attach_sink(p.computed.clone(), sink, &cx),
                (OutputName::Identities, None) => {
                    attach_sink::<ProfileRecord>(empty(scope), sink, &cx)
                }
                (OutputName::ProfileChanges, None) => {
                    attach_sink::<ProfileChangeRecord>(empty(scope), sink, &cx)
                }
                (OutputName::ProfileTraits, None) => {
                    attach_sink::<TraitRecord>(empty(scope), sink, &cx)
                }
                (OutputName::Audiences, None) => attach_sink::<Membership>(empty(scope), sink, &cx),
                (OutputName::ComputedTraits, None) => {
                    attach_sink::<TraitValue>(empty(scope), sink, &cx)
                }
            }
        }
        sinks_total += 1;
        let done = sinks_done.clone();
        let summary = counts.clone();
        let mut acc: BTreeMap<CountKey, isize> = BTreeMap::new();
        outputs
            .counts
            .sink_by_time("Summary", SinkTarget::Worker(0), move |ev| match ev {
                SinkEvent::Updates { updates, .. } => {
                    for ((key, count), diff) in updates {
                        *acc.entry(key.clone()).or_default() += count * diff;
                    }
                    acc.retain(|_, v| *v != 0);
                }
                SinkEvent::Progress { frontier } => {
                    if frontier.is_empty() {
                        if index == 0 {
                            *summary.borrow_mut() = Some(std::mem::take(&mut acc));
                        }
                        done.set(done.get() + 1);
                    }
                }
            });
    });

    RunningJob {
        name,
        dataflow_index,
        stop,
        activators,
        sinks_total,
        sinks_done,
        counts,
    }
}

/// The clock a replayed event contributes to the watermark: when it was
/// received (what a live run's ingestion clock would have read), else its
/// event time. Rejected records do not move the clock.
fn replay_clock(d: &Decoded) -> Option<u64> {
    d.as_ref()
        .ok()
        .map(|e| e.received_at_ms.unwrap_or(e.time_ms).max(0) as u64)
}

/// A timely source operator around one worker's part of a source.
fn source_operator<'s, P: SourcePart + 'static>(
    scope: Scope<'s, u64>,
    name: &str,
    part: Option<P>,
    stop: &Rc<Cell<bool>>,
    activators: &Rc<RefCell<Vec<Activator>>>,
    metrics: &Arc<JobMetrics>,
) -> VecCollection<'s, u64, Decoded, isize> {
    let stop = stop.clone();
    let metrics = metrics.clone();
    source::<_, CapacityContainerBuilder<Vec<(Decoded, u64, isize)>>, _, _>(
        scope,
        &format!("Source:{name}"),
        |cap, info| {
            let activator = scope.activator_for(info.address);
            activators.borrow_mut().push(activator.clone());
            let mut cap = Some(cap);
            let mut part = part;
            let mut buf: Vec<(Decoded, u64)> = Vec::with_capacity(SOURCE_BATCH);
            let mut reported = PartProgress::default();
            move |output| {
                let (Some(c), Some(p)) = (cap.as_mut(), part.as_mut()) else {
                    cap = None;
                    return;
                };
                if stop.get() {
                    cap = None;
                    return;
                }
                let poll = p.poll(&mut buf, SOURCE_BATCH);
                let mut rejected = 0u64;
                let mut records = buf.drain(..).peekable();
                while let Some((first, time)) = records.next() {
                    let at = c.delayed(&time);
                    let mut session = output.session(&at);
                    rejected += u64::from(first.is_err());
                    session.give((first, time, 1));
                    while let Some((d, t)) = records.next_if(|(_, t)| *t == time) {
                        rejected += u64::from(d.is_err());
                        session.give((d, t, 1));
                    }
                }
                let now = p.progress();
                metrics
                    .records
                    .fetch_add(now.records - reported.records, Ordering::Relaxed);
                metrics
                    .consumed
                    .fetch_add(now.consumed - reported.consumed, Ordering::Relaxed);
                metrics.rejected.fetch_add(rejected, Ordering::Relaxed);
                reported = now;
                match poll {
                    Poll::Done => cap = None,
                    Poll::Pending { lower, idle } => {
                        c.downgrade(&lower);
                        if idle {
                            activator.activate_after(SOURCE_IDLE_POLL);
                        } else {
                            activator.activate();
                        }
                    }
                }
            }
        },
    )
    .as_collection()
}

struct SinkContext<'a> {
    job: JobId,
    job_name: &'a str,
    index: usize,
    shared: &'a Arc<Shared>,
    metrics: &'a Arc<JobMetrics>,
    done: &'a Rc<Cell<usize>>,
}

/// Records a sink can write: JSON for files, and a Kafka encoding.
pub trait SinkRecord: timely::ExchangeData + Ord + Clone + WriteJson + KafkaKey + Sized {
    /// Opens a Kafka sink for this record type (changes, or dead letters for errors).
    fn open_kafka(config: &KafkaSinkConfig) -> Result<Box<dyn Sink<Self>>, KafkaError> {
        Ok(Box::new(KafkaSink::open(config)?))
    }
    /// Opens a file sink writing Segment calls (audiences only; validation
    /// rejects the Segment formats for other outputs).
    fn open_segment(_path: &std::path::Path, _track: bool) -> Result<Box<dyn Sink<Self>>, String> {
        Err("the Segment formats apply to the audiences output only".into())
    }
}

impl SinkRecord for Event {}
impl SinkRecord for ProfileRecord {}
impl SinkRecord for ProfileChangeRecord {}
impl SinkRecord for TraitRecord {}
impl SinkRecord for Membership {
    fn open_segment(path: &std::path::Path, track: bool) -> Result<Box<dyn Sink<Self>>, String> {
        SegmentAudienceSink::create(path, track)
            .map(|s| Box::new(s) as Box<dyn Sink<Self>>)
            .map_err(|e| e.to_string())
    }
}
impl SinkRecord for TraitValue {}
impl SinkRecord for (CountKey, isize) {}
impl SinkRecord for weft_dataflows::record::ErrorRecord {
    fn open_kafka(config: &KafkaSinkConfig) -> Result<Box<dyn Sink<Self>>, KafkaError> {
        Ok(Box::new(DeadLetterSink::open(config)?))
    }
}

/// Attaches a single-writer sink (on worker 0) to an output collection.
fn attach_sink<D: SinkRecord>(
    collection: VecCollection<'_, u64, D, isize>,
    spec: &SinkSpec,
    cx: &SinkContext<'_>,
) {
    let sink_name = spec.name().to_string();
    let mut sink: Option<Box<dyn Sink<D>>> = None;
    if cx.index == 0 {
        let created: Result<Box<dyn Sink<D>>, String> = match spec {
            SinkSpec::File {
                path,
                format: SinkFormat::Changes,
                ..
            } => JsonLinesSink::create(path)
                .map(|s| Box::new(s) as Box<dyn Sink<D>>)
                .map_err(|e| e.to_string()),
            SinkSpec::File { path, format, .. } => {
                D::open_segment(path, *format == SinkFormat::SegmentTrack)
            }
            SinkSpec::Stdout { .. } => Ok(Box::new(JsonLinesSink::stdout())),
            SinkSpec::Kafka {
                brokers,
                topic,
                partitions,
                options,
                ..
            } => {
                let brokers = brokers.clone().unwrap_or_default();
                let mut config = KafkaSinkConfig::new(
                    &sink_name,
                    &brokers,
                    topic,
                    format!("weft-{}-{}", cx.job_name, sink_name),
                );
                config.options = options.clone();
                create_topic(&brokers, topic, *partitions as i32, &[])
                    .and_then(|_| D::open_kafka(&config))
                    .map_err(|e| e.to_string())
            }
        };
        match created {
            Ok(s) => sink = Some(s),
            Err(e) => cx.shared.job_error(
                cx.job,
                cx.job_name,
                format!("sink {sink_name}: {e}; its output is discarded"),
            ),
        }
    }
    let (job, job_name, shared) = (cx.job, cx.job_name.to_string(), cx.shared.clone());
    let metrics = cx.metrics.clone();
    let done = cx.done.clone();
    collection.sink_by_time(
        &format!("Sink:{sink_name}"),
        SinkTarget::Worker(0),
        move |ev| {
            let result = match (&mut sink, ev) {
                (Some(s), SinkEvent::Updates { time, updates }) => {
                    metrics
                        .sink_lines
                        .fetch_add(updates.len() as u64, Ordering::Relaxed);
                    s.write(*time, updates)
                }
                (Some(s), SinkEvent::Progress { frontier }) => {
                    let r = s.commit(frontier);
                    if frontier.is_empty() {
                        done.set(done.get() + 1);
                    }
                    r
                }
                (None, SinkEvent::Progress { frontier }) => {
                    if frontier.is_empty() {
                        done.set(done.get() + 1);
                    }
                    Ok(())
                }
                (None, SinkEvent::Updates { .. }) => Ok(()),
            };
            if let Err(e) = result {
                shared.job_error(
                    job,
                    &job_name,
                    format!("sink {sink_name}: {e}; its further output is discarded"),
                );
                sink = None;
            }
        },
    );
}

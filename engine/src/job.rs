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

use differential_dataflow::hashable::Hashable as _;
use differential_dataflow::{AsCollection, VecCollection};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::Exchange as _;
use timely::dataflow::Scope;
use timely::scheduling::Activator;
use timely::worker::Worker;
use weft_connectors::file_sink::{JsonLinesSink, SegmentAudienceSink};
use weft_connectors::file_source::FileSourceConfig;
use weft_connectors::kafka::admin::create_topic;
use weft_connectors::kafka::{
    DeadLetterSink, KafkaError, KafkaKey, KafkaSink, KafkaSinkConfig, KafkaSourceConfig,
};
use weft_connectors::lake::{LakeConfig, LakeRecord, LakeStats, ParquetLakeSink};
use weft_connectors::regulations::{LogEntry, RegulationLog};
use weft_connectors::sink::Sink;
use weft_connectors::source::{Decoded, PartProgress, Poll, SourcePart};
use weft_connectors::warehouse::{WarehouseConfig, WarehouseRecord, WarehouseSink, WarehouseStats};
use weft_connectors::webhook::{WebhookConfig, WebhookSink, WebhookStats};
use weft_dataflows::audience::{
    arrange_aggregate, arrange_audience, condition_aggregates, event_contributions, AggValue,
    AggregateValues, Members, Membership, ProfileInputs, SharedAggregates, TraitValue, TraitValues,
};
use weft_dataflows::chain::{anchor_heads, expand_chains};
use weft_dataflows::event::Event;
use weft_dataflows::identity::{
    identity, identity_insert_only, IdHash, IdentityOutputs, IdentityRules, ProfileChangeRecord,
    ProfileId, ProfileRecord, TraitRecord,
};
use weft_dataflows::ingest::ingest;
use weft_dataflows::privacy::{apply_rules, resolve, Regulation, Resolved, Rule};
use weft_dataflows::query::{parse_audience, parse_computed_trait};
use weft_dataflows::record::{CountKey, WriteJson};
use weft_dataflows::spec::{
    DedupeSpec, JobSpec, LatePolicySpec, OutputName, SinkFormat, SinkSpec, SourceSpec,
};
use weft_dataflows::spec::{LakeSinkSpec, PostgresSinkSpec, WebhookSinkSpec};
use weft_dataflows::stored::StoredEvent;
use weft_operators::by_time::{SinkByTime, SinkEvent, SinkTarget};
use weft_operators::dedupe::{DedupeConfig, LatePolicy};
use weft_operators::reclock::Reclock;

use crate::audit::{lock_audit, AuditLog, SharedAudit};
use crate::hub::{hub_operator, Exports, Hub, HubRecord};
use crate::profile_index::{IndexUpdate, ProfileIndex};
use crate::runtime::{JobId, JobMetrics, Shared, SinkMetrics};
use crate::views::JobViews;

/// Records a source part produces per activation before yielding to other operators.
const SOURCE_BATCH: usize = 8192;

/// The profile-level outputs of a job, readable for sinks, and what runtime
/// audiences attach to.
///
/// Each readable output is built only when a sink of the job reads it (it
/// is empty otherwise): naming profiles for a sink arranges the output by
/// profile, state no one would read.
struct ProfileOutputs<'s> {
    identities: VecCollection<'s, u64, ProfileRecord, isize>,
    changes: VecCollection<'s, u64, ProfileChangeRecord, isize>,
    traits: VecCollection<'s, u64, TraitRecord, isize>,
    audiences: VecCollection<'s, u64, Membership, isize>,
    computed: VecCollection<'s, u64, TraitValue, isize>,
    /// The hub and exported arrangements runtime definitions attach to.
    views: Option<JobViews>,
}

/// Identity resolution, then computed traits and audiences over the profiles,
/// the hub runtime definitions attach to, and the profile index.
///
/// ```text
///  events ─► identity ─► profiles (id → profile), traits, changes
///     │                      │
///     └─ anchor id ──────────┴─ join ─► (profile, event) ─► computed traits ─► audiences
///                                             │                   │  (spec)        │
///   exported: events by anchor, profile of,   │   RuntimeDefinitions (hub) ─────────┤
///   traits, profiles, each spec definition    ▼                                     ▼
///                                       profile index (worker 0) ◄── audiences / computed_traits outputs
/// ```
///
/// `index` is this worker's profile index: `Some` on global worker 0 only
/// (every update is routed there). The index counts as one of the job's
/// sinks: `done` is bumped once it has applied everything.
fn build_profiles<'s>(
    events: VecCollection<'s, u64, Event, isize>,
    prebuilt: Option<IdentityOutputs<'s>>,
    spec: &JobSpec,
    index: Option<Arc<ProfileIndex>>,
    done: &Rc<Cell<usize>>,
    one_process: bool,
) -> Result<ProfileOutputs<'s>, String> {
    // A job without regulations never retracts an event (only the privacy
    // layer does, and it builds identity itself: `prebuilt`).
    let insert_only = prebuilt.is_none();
    let ids = match prebuilt {
        Some(ids) => ids,
        // Without regulations nothing retracts an event: first-seen times
        // keep one value per identifier and edge.
        None => identity_insert_only(events, &spec.identity)?,
    };
    // STEP 1. The shared arrangements: events by anchor and the set of profiles
    // (with identity's id → profile and traits, exported to runtime definitions).
    // Each event belongs to the profile of its anchor identifier (userId, else anonymousId, ...).
    // Events at rest are compressed, in the process's event log on disk
    // (see `weft_dataflows::stored`); retractions, about to cancel, are not
    // written there. Events move to the anchor's worker first (the
    // arrangement's own exchange then stays local), so a stored event never
    // travels between processes (it would be read back and stored again).
    // Without regulations an anchor's history only grows: each event is
    // linked to its anchor's previous one in the log, and the arrangement
    // keeps one head per anchor, which stands for its chain of events
    // (`weft_dataflows::chain`); `expand_chains` turns head changes back
    // into event changes.
    let events_by_anchor = if insert_only {
        anchor_heads(ids.anchored.clone()).arrange_by_key_named("EventHeadsByAnchor")
    } else {
        ids.anchored
            .clone()
            .inner
            .exchange(|((a, _), _, _)| a.hashed().into())
            .map(|((a, e), t, r)| {
                let stored = if r > 0 {
                    StoredEvent::store(&e)
                } else {
                    StoredEvent::transient(&e)
                };
                ((a, stored), t, r)
            })
            .as_collection()
            .arrange_by_key_named("EventsByAnchor")
    };
    let keyed_events = events_by_anchor
        .clone()
        .join_core(ids.profile_of.clone(), |a, e, p| {
            Some((*p, (*a, e.clone())))
        });
    // The index (worker 0) reads chains itself when they are in its process.
    let profile_events = if insert_only && one_process {
        IndexEvents::Heads(keyed_events)
    } else {
        IndexEvents::Events(expand_chains(keyed_events))
    };
    // A profile is named by its oldest identifier, one of its own: the
    // profiles are the identifiers that name themselves, one each, so the
    // set needs no `distinct` (an arrangement of every member and a reduce).
    let profiles = ids
        .profiles
        .clone()
        .flat_map(|(h, p)| (h == p).then_some(p))
        .arrange_by_self_named("Profiles");
    // The aggregates of every spec trait and audience, in one pass over the
    // events (see `SharedAggregates`): the join emits contributions, not events.
    let mut aggs = Vec::new();
    for t in &spec.traits {
        aggs.push(parse_computed_trait(&t.query).map_err(|e| format!("trait {}: {e}", t.name))?);
    }
    for a in &spec.audiences {
        let cond = parse_audience(&a.query).map_err(|e| format!("audience {}: {e}", a.name))?;
        aggs.extend(condition_aggregates(&cond));
    }
    let aggs = SharedAggregates::<ProfileId>::distinct(aggs);
    // Contributions are computed and windowed once per event, at its anchor,
    // and arranged there: a profile merge or split re-keys the (consolidated)
    // contributions of the anchors involved, never re-reads their events.
    let shared = (!aggs.is_empty()).then(|| {
        let list = aggs.clone();
        let by_anchor = ids.anchored.clone().flat_map(move |(a, e)| {
            event_contributions(&list, &e)
                .into_iter()
                .map(move |(i, c, time)| (a, (i, c, time)))
        });
        // Without retractions, `last` and `first` keep one contribution per
        // anchor (see `SharedAggregates::prune_insert_only`).
        let by_anchor = if insert_only {
            SharedAggregates::<ProfileId>::prune_insert_only(by_anchor, &aggs)
        } else {
            by_anchor
        };
        let windowed = SharedAggregates::<ProfileId>::window(by_anchor, &aggs);
        Rc::new(SharedAggregates::from_windowed_by(
            windowed,
            ids.profile_of.clone(),
            &aggs,
        ))
    });
    // Every spec aggregate is in `shared`: the compilation never reads
    // events (runtime definitions load them from `events_by_anchor`).
    let inputs = ProfileInputs {
        profiles: profiles.clone().as_collection(|p, _| *p),
        events: empty(profiles.stream.scope()),
        traits: ids
            .traits
            .clone()
            .map(|((p, k), v)| (p, (k.to_string(), v.to_string()))),
        shared,
    };
    let mut exports = Exports::new(
        events_by_anchor.trace.clone(),
        ids.profile_of.trace.clone(),
        ids.traits_by_profile.trace.clone(),
        profiles.trace.clone(),
    );
    // STEP 2. The spec's computed traits and audiences, each exported.
    let mut computed: BTreeMap<String, TraitValues<'s, ProfileId>> = BTreeMap::new();
    let mut computed_out = Vec::new();
    // Each spec definition's own arrangement, to name its profiles for sinks.
    let mut spec_values = Vec::new();
    let mut spec_members = Vec::new();
    for t in &spec.traits {
        let agg = parse_computed_trait(&t.query).map_err(|e| format!("trait {}: {e}", t.name))?;
        let arranged = arrange_aggregate(&inputs, &agg);
        exports.values.insert(t.name.clone(), arranged.export());
        let values = arranged.values();
        spec_values.push((t.name.clone(), arranged));
        let name = t.name.clone();
        computed_out.push(values.clone().map(move |(p, v)| (p, (name.clone(), v))));
        computed.insert(t.name.clone(), values);
    }
    let mut audiences: BTreeMap<String, Members<'s, ProfileId>> = BTreeMap::new();
    let mut members_out = Vec::new();
    for a in &spec.audiences {
        let cond = parse_audience(&a.query).map_err(|e| format!("audience {}: {e}", a.name))?;
        let arranged = arrange_audience(&inputs, &cond, &computed, &audiences)?;
        exports
            .members
            .insert(a.name.clone(), arranged.trace.clone());
        spec_members.push((
            a.key.clone().unwrap_or_else(|| a.name.clone()),
            arranged.clone(),
        ));
        let members = arranged.as_collection(|p, _| *p);
        let name_key = (
            a.name.clone(),
            a.key.clone().unwrap_or_else(|| a.name.clone()),
        );
        members_out.push(members.clone().map(move |p| (p, name_key.clone())));
        audiences.insert(a.name.clone(), members);
    }
    // STEP 3. The hub: runtime definitions' changes join the spec's.
    let scope = inputs.profiles.scope();
    let base = {
        use timely::dataflow::operators::vec::Map as _;
        use timely::dataflow::operators::Concatenate as _;
        scope.concatenate(vec![
            events_by_anchor.stream.clone().map(|_| ()),
            ids.profile_of.stream.clone().map(|_| ()),
            ids.traits_by_profile.stream.clone().map(|_| ()),
            profiles.stream.clone().map(|_| ()),
        ])
    };
    let hub = Rc::new(RefCell::new(Hub::default()));
    let exports = Rc::new(RefCell::new(exports));
    let runtime = hub_operator(base, hub.clone(), exports.clone());
    let runtime_members = runtime.clone().flat_map(|(p, r)| match r {
        HubRecord::Member { name, key } => Some((p, (name, key))),
        HubRecord::Value { .. } => None,
    });
    let runtime_values = runtime.flat_map(|(p, r)| match r {
        HubRecord::Value { name, value } => Some((p, (name, value))),
        HubRecord::Member { .. } => None,
    });
    members_out.push(runtime_members.clone());
    computed_out.push(runtime_values.clone());
    let members_all = differential_dataflow::collection::concatenate(scope, members_out);
    let computed_all = differential_dataflow::collection::concatenate(scope, computed_out);
    // STEP 4. Readable outputs for the sinks that read them, and the profile index.
    let read = |o: OutputName| spec.sinks.iter().any(|s| s.output() == o);
    // Spec definitions are named from their own arrangements; runtime
    // ones (arriving through the hub) are arranged to be named.
    let audiences_out = built_if(read(OutputName::Audiences), scope, || {
        let mut named: Vec<_> = spec_members
            .iter()
            .map(|(key, arranged)| ids.audience_records(key, arranged))
            .collect();
        named.push(ids.membership_records(runtime_members.map(|(p, (_name, key))| (p, key))));
        differential_dataflow::collection::concatenate(scope, named)
    });
    let computed_records = built_if(read(OutputName::ComputedTraits), scope, || {
        // The counts are slots of one arrangement of rows: named together.
        let (mut named, mut slots, mut rows) = (Vec::new(), BTreeMap::new(), None);
        for (name, values) in &spec_values {
            match values {
                AggregateValues::Arranged(a) => named.push(ids.trait_value_records(name, a)),
                AggregateValues::Slot { rows: r, slot, .. } => {
                    slots
                        .entry(*slot)
                        .or_insert_with(Vec::new)
                        .push(name.clone());
                    rows = Some(r.clone());
                }
            }
        }
        if let Some(rows) = rows {
            named.push(ids.slot_value_records(&rows, slots));
        }
        named.push(ids.computed_records(runtime_values));
        differential_dataflow::collection::concatenate(scope, named)
    });
    let identities = built_if(read(OutputName::Identities), scope, || {
        ids.profile_records()
    });
    let changes = built_if(read(OutputName::ProfileChanges), scope, || {
        ids.change_records()
    });
    let trait_records = built_if(read(OutputName::ProfileTraits), scope, || {
        ids.trait_records()
    });
    maintain_profile_index(
        &ids,
        members_all,
        computed_all,
        profile_events,
        index,
        done.clone(),
    );
    Ok(ProfileOutputs {
        identities,
        changes,
        traits: trait_records,
        audiences: audiences_out,
        computed: computed_records,
        views: Some(JobViews::new(hub, exports)),
    })
}

/// `build()` when `read`, else an empty collection (an output no sink reads).
fn built_if<'s, D: Clone + 'static>(
    read: bool,
    scope: Scope<'s, u64>,
    build: impl FnOnce() -> VecCollection<'s, u64, D, isize>,
) -> VecCollection<'s, u64, D, isize> {
    if read {
        build()
    } else {
        empty(scope)
    }
}

/// A profile's events as the profile index receives them.
enum IndexEvents<'s> {
    /// Each event.
    Events(VecCollection<'s, u64, (ProfileId, StoredEvent), isize>),
    /// Each anchor's head, standing for its chain (see `weft_dataflows::chain`).
    Heads(VecCollection<'s, u64, (ProfileId, (IdHash, StoredEvent)), isize>),
}

/// Feeds the profile index: every change of a profile's identifiers, traits,
/// computed traits, audiences and events, one completed time at a time, on
/// worker 0 (see `crate::profile_index`). Bumps `done` when its input is complete.
fn maintain_profile_index<'s>(
    ids: &IdentityOutputs<'s>,
    members: VecCollection<'s, u64, (ProfileId, (String, String)), isize>,
    computed: VecCollection<'s, u64, (ProfileId, (String, AggValue)), isize>,
    events: IndexEvents<'s>,
    index: Option<Arc<ProfileIndex>>,
    done: Rc<Cell<usize>>,
) {
    let events = match events {
        IndexEvents::Events(e) => e.map(|(p, e)| IndexUpdate::Event(p, e)),
        IndexEvents::Heads(h) => h.map(|(p, (a, h))| IndexUpdate::Head(p, a, h)),
    };
    let identifiers = ids
        .profile_of
        .clone()
        .join_core(ids.identifiers.clone(), |_h, p, ident| {
            Some(IndexUpdate::Identifier(*p, ident.clone()))
        });
    let updates = identifiers
        .concat(
            ids.traits
                .clone()
                .map(|((p, k), v)| IndexUpdate::Trait(p, k, v)),
        )
        .concat(computed.map(|(p, (name, v))| IndexUpdate::Computed(p, name, v)))
        .concat(members.map(|(p, (name, _key))| IndexUpdate::Audience(p, name)))
        .concat(events);
    updates.sink_by_time("ProfileIndex", SinkTarget::Worker(0), move |ev| match ev {
        SinkEvent::Updates { time, updates } => {
            if let Some(index) = &index {
                index.apply(*time, updates);
            }
        }
        SinkEvent::Progress { frontier } => {
            if let Some(index) = &index {
                index.advance(frontier);
            }
            if frontier.is_empty() {
                done.set(done.get() + 1);
            }
        }
    });
}

/// The job's state directory.
fn state_dir(spec: &JobSpec) -> std::path::PathBuf {
    spec.job
        .state_dir
        .clone()
        .unwrap_or_else(|| ".weft-state".into())
}

/// What the privacy layer needs from the job being built.
struct PrivacyContext<'a> {
    index: usize,
    job: JobId,
    job_name: &'a str,
    shared: &'a Arc<Shared>,
    stop: &'a Rc<Cell<bool>>,
    activators: &'a Rc<RefCell<Vec<Activator>>>,
    audit: &'a SharedAudit,
}

/// The privacy layer's products.
struct Privacy<'s> {
    /// Identity over the admitted events (reused for profiles).
    ids: IdentityOutputs<'s>,
    /// Suppress/delete regulations resolved to identifiers, at their times.
    resolved: Resolved<'s>,
}

/// Regulations between dedupe and the rest (see `weft_dataflows::privacy`):
///
/// ```text
///  events ─► apply_rules ─► kept ─► identity ─► resolve ◄─ regulation log
///                 ▲                                │
///                 └──── rules (feedback, +1 ms) ◄──┘
/// ```
fn build_privacy<'s>(
    events: VecCollection<'s, u64, Event, isize>,
    regs: &weft_dataflows::spec::RegulationsSpec,
    spec: &JobSpec,
    cx: &PrivacyContext<'_>,
) -> Result<(VecCollection<'s, u64, Event, isize>, Privacy<'s>), String> {
    use timely::dataflow::operators::vec::Map as _;
    use timely::dataflow::operators::{ConnectLoop, Feedback};

    let rules_spec = Rc::new(IdentityRules::new(&spec.identity)?);
    let scope = events.scope();
    let (handle, cycle) = scope.feedback::<Vec<((IdHash, Rule), u64, isize)>>(1);
    let rules = cycle.as_collection();
    let kept = apply_rules(events, rules.clone(), rules_spec);
    let ids = identity(kept.clone(), &spec.identity)?;
    let bounded = spec.sources.iter().all(SourceSpec::bounded);
    let log = if cx.index == 0 {
        match RegulationLog::open(&regs.path, &state_dir(spec)) {
            Ok(l) => Some(l),
            Err(e) => {
                cx.shared.job_error(
                    cx.job,
                    cx.job_name,
                    format!("regulation log {}: {e}", regs.path.display()),
                );
                None
            }
        }
    } else {
        None
    };
    let regulations = regulation_source(scope, log, bounded, cx);
    let resolution = resolve(regulations.clone(), &ids, rules);
    // Rules made at `t` apply from `t + 1`: advance the data's times with the loop's.
    resolution
        .new_rules
        .inner
        .map(|(d, t, r)| (d, t + 1, r))
        .connect_loop(handle);
    audit_regulations(regulations, resolution.resolved.clone(), cx.audit);
    Ok((
        kept,
        Privacy {
            ids,
            resolved: resolution.resolved,
        },
    ))
}

/// The regulation log as a collection, each regulation at its bound time.
///
/// Worker 0 reads the log; bounded jobs (every source bounded) read it once,
/// live jobs tail it, holding their capability at the wall clock.
fn regulation_source<'s>(
    scope: Scope<'s, u64>,
    log: Option<RegulationLog>,
    bounded: bool,
    cx: &PrivacyContext<'_>,
) -> VecCollection<'s, u64, Regulation, isize> {
    let stop = cx.stop.clone();
    let audit = cx.audit.clone();
    let (job, job_name, shared) = (cx.job, cx.job_name.to_string(), cx.shared.clone());
    let activators = cx.activators.clone();
    source::<_, CapacityContainerBuilder<Vec<(Regulation, u64, isize)>>, _, _>(
        scope,
        "Source:regulations",
        move |cap, info| {
            let activator = scope.activator_for(info.address);
            activators.borrow_mut().push(activator.clone());
            let mut cap = Some(cap);
            let mut log = log;
            move |output| {
                let (Some(c), Some(l)) = (cap.as_mut(), log.as_mut()) else {
                    cap = None;
                    return;
                };
                if stop.get() {
                    cap = None;
                    return;
                }
                let now = wall_ms();
                let lower = *c.time();
                match l.poll(now, lower) {
                    Ok(entries) => {
                        for (entry, t) in entries {
                            match entry {
                                LogEntry::Regulation(r) => {
                                    output.session(&c.delayed(&t)).give((r, t, 1));
                                }
                                LogEntry::Invalid { line, message } => {
                                    shared.job_error(
                                        job,
                                        &job_name,
                                        format!("regulation log line {line}: {message}; skipped"),
                                    );
                                    if let Some(a) = lock_audit(&audit).as_mut() {
                                        let _ = a.rejected(line, &message);
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => {
                        shared.job_error(job, &job_name, format!("regulation log: {e}"));
                        cap = None;
                        return;
                    }
                }
                if bounded {
                    cap = None;
                } else {
                    c.downgrade(&now.max(lower));
                    activator.activate_after(SOURCE_IDLE_POLL);
                }
            }
        },
    )
    .as_collection()
}

/// The wall clock in ms.
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Writes an `applied` audit entry for each regulation once its time completes.
fn audit_regulations<'s>(
    regulations: VecCollection<'s, u64, Regulation, isize>,
    resolved: Resolved<'s>,
    audit: &SharedAudit,
) {
    let audit = audit.clone();
    regulations
        .map(|r| (r, false))
        .concat(resolved.map(|(r, _, _)| (r, true)))
        .sink_by_time("Audit:regulations", SinkTarget::Worker(0), move |ev| {
            if let (SinkEvent::Updates { updates, .. }, Some(log)) =
                (ev, lock_audit(&audit).as_mut())
            {
                let mut at = 0;
                while at < updates.len() {
                    let reg = &updates[at].0 .0;
                    let end = at
                        + updates[at..]
                            .iter()
                            .take_while(|((r, _), _)| r == reg)
                            .count();
                    let identifiers: isize = updates[at..end]
                        .iter()
                        .filter(|((_, ident), _)| *ident)
                        .map(|(_, d)| *d)
                        .sum();
                    if let Err(e) = log.applied(reg, identifiers.max(0) as usize) {
                        tracing::error!("regulations audit log: {e}");
                    }
                    at = end;
                }
                if let Err(e) = log.flush() {
                    tracing::error!("regulations audit log: {e}");
                }
            }
        });
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
    /// Runtime audiences and computed traits (`None` when the job resolves no profiles).
    pub(crate) views: Option<JobViews>,
}

impl RunningJob {
    /// Every dataflow of the job, to drop when it retires: its runtime
    /// definitions' first, then the core's.
    pub fn dataflow_indices(&self) -> Vec<usize> {
        let mut all = self
            .views
            .as_ref()
            .map_or_else(Vec::new, JobViews::dataflows);
        all.push(self.dataflow_index);
        all
    }

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
    let audit: SharedAudit = Arc::new(std::sync::Mutex::new(None));
    if index == 0 {
        if let Some(regs) = &spec.regulations {
            let path = regs
                .audit
                .clone()
                .unwrap_or_else(|| state_dir(spec).join("regulations-audit.jsonl"));
            let sinks = spec.sinks.iter().map(|s| s.name().to_string()).collect();
            match AuditLog::open(&path, sinks) {
                Ok(log) => *lock_audit(&audit) = Some(log),
                Err(e) => shared.job_error(id, &name, format!("regulations audit log: {e}")),
            }
        }
    }

    let mut job_views: Option<JobViews> = None;
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
                            let total = p.progress().total.unwrap_or(0);
                            for m in [&metrics.total, &metrics.source(src_name).total] {
                                m.fetch_add(total, Ordering::Relaxed);
                            }
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
                SourceSpec::Http { name: src_name, .. } => {
                    // Live: the log's (or the topic's) lines are bound to
                    // ingestion time by the part itself; no reclocking here.
                    let part = crate::collect::http_part(
                        src,
                        &crate::collect::HttpSourceContext {
                            job: id,
                            job_name: &name,
                            state_dir: &state_dir(spec),
                            worker: index,
                            peers,
                            source_index: file_index,
                            shared,
                        },
                    );
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
        // Privacy regulations sit between dedupe and everything else; they need identity.
        let mut privacy: Option<Privacy<'_>> = None;
        let outputs = ingest(
            decoded,
            dedupe.as_ref().map(|(c, s)| (c, s.clone())),
            |events| match &spec.regulations {
                None => events,
                Some(regs) => match build_privacy(
                    events.clone(),
                    regs,
                    spec,
                    &PrivacyContext {
                        index,
                        job: id,
                        job_name: &name,
                        shared,
                        stop: &stop,
                        activators: &activators,
                        audit: &audit,
                    },
                ) {
                    Ok((kept, p)) => {
                        privacy = Some(p);
                        kept
                    }
                    Err(e) => {
                        if index == 0 {
                            shared.job_error(
                                id,
                                &name,
                                format!("regulations are not applied: {e}"),
                            );
                        }
                        events
                    }
                },
            },
        );
        let (prebuilt_ids, resolved) = match privacy {
            Some(p) => (Some(p.ids), Some(p.resolved)),
            None => (None, None),
        };

        // STEP 3. Identity, computed traits and audiences, when anything uses them.
        let profile_outputs = [
            OutputName::Identities,
            OutputName::ProfileChanges,
            OutputName::ProfileTraits,
            OutputName::Audiences,
            OutputName::ComputedTraits,
        ];
        let needs_profiles = prebuilt_ids.is_some()
            || !spec.audiences.is_empty()
            || !spec.traits.is_empty()
            || spec
                .sinks
                .iter()
                .any(|s| profile_outputs.contains(&s.output()));
        // Global worker 0 keeps the profile index and registers the job's
        // definitions with the controller (which then restores runtime ones).
        let profile_index = (index == 0).then(|| Arc::new(ProfileIndex::default()));
        let profiles = if needs_profiles {
            let built = build_profiles(
                outputs.events.clone(),
                prebuilt_ids,
                spec,
                profile_index.clone(),
                &sinks_done,
                shared.processes == 1,
            );
            match built {
                Ok(mut p) => {
                    job_views = p.views.take();
                    sinks_total += 1; // the profile index
                    Some(p)
                }
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
        if index == 0 {
            let index = profile_index.filter(|_| job_views.is_some());
            shared.views.register_job(id, spec, index, shared);
        }

        // STEP 4. Sinks, then the summary (final counts for the controller).
        // A deletion's resolved identifiers reach every sink at its effect time.
        let erasures = resolved.map(|resolved| {
            use timely::dataflow::operators::vec::Map as _;
            resolved
                .filter(|(r, _, _)| r.kind.deletes())
                .map(|(_, _, ident)| format!("{}:{}", ident.kind, ident.value))
                .inner
                .map(|(d, t, r)| (d, t + 1, r))
                .as_collection()
        });
        for sink in &spec.sinks {
            sinks_total += 1;
            let cx = SinkContext {
                job: id,
                job_name: &name,
                state_dir: state_dir(spec),
                index,
                shared,
                metrics: &metrics,
                done: &sinks_done,
                audit: &audit,
                erasures: erasures.as_ref(),
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
        views: job_views,
    }
}

/// The clock a replayed event contributes to the watermark: when it was
/// received (what a live run's ingestion clock would have read), else its
/// event time. Rejected records do not move the clock.
fn replay_clock(d: &Decoded) -> Option<u64> {
    d.as_ref()
        .ok()
        .map(|e| e.received_at_ms().unwrap_or(e.time_ms).max(0) as u64)
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
    let source_metrics = metrics.source(name);
    source::<_, CapacityContainerBuilder<Vec<(Decoded, u64, isize)>>, _, _>(
        scope,
        &format!("Source:{name}"),
        |cap, info| {
            let activator = scope.activator_for(info.address);
            activators.borrow_mut().push(activator.clone());
            let mut cap = Some(cap);
            let mut part = part;
            let mut buf: Vec<(Decoded, u64)> = Vec::with_capacity(SOURCE_BATCH);
            // The total found at build time was counted then (see build_job).
            let mut reported = PartProgress {
                total: part.as_ref().and_then(|p| p.progress().total),
                ..PartProgress::default()
            };
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
                let (read, consumed) = (
                    now.records - reported.records,
                    now.consumed - reported.consumed,
                );
                for m in [&metrics.records, &source_metrics.records] {
                    m.fetch_add(read, Ordering::Relaxed);
                }
                for m in [&metrics.consumed, &source_metrics.consumed] {
                    m.fetch_add(consumed, Ordering::Relaxed);
                }
                for m in [&metrics.rejected, &source_metrics.rejected] {
                    m.fetch_add(rejected, Ordering::Relaxed);
                }
                // A live Kafka source's total grows with the high watermarks
                // (total - consumed is its consumer lag).
                let grown = now
                    .total
                    .unwrap_or(0)
                    .saturating_sub(reported.total.unwrap_or(0));
                if grown > 0 {
                    for m in [&metrics.total, &source_metrics.total] {
                        m.fetch_add(grown, Ordering::Relaxed);
                    }
                }
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

struct SinkContext<'a, 's> {
    job: JobId,
    job_name: &'a str,
    /// The job's state directory (webhook queues live under it).
    state_dir: std::path::PathBuf,
    index: usize,
    shared: &'a Arc<Shared>,
    metrics: &'a Arc<JobMetrics>,
    done: &'a Rc<Cell<usize>>,
    audit: &'a SharedAudit,
    /// Identifiers (`kind:value`) of deleted people, at the deletion's effect time.
    erasures: Option<&'a VecCollection<'s, u64, String, isize>>,
}

/// What a sink operator receives when the job applies regulations: erasures
/// sort before records, so a sink erases before it writes the same time.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
enum SinkItem<D> {
    Erase(String),
    Record(D),
}

/// What the worker hands to a sink's thread.
enum SinkMsg<D> {
    /// The changes of one completed time (erasures first).
    Write {
        time: u64,
        erase: Vec<String>,
        records: Vec<(D, isize)>,
    },
    /// Every earlier write is complete; make it durable up to `frontier`.
    Commit(Vec<u64>),
}

/// Messages a sink's thread may have queued before the worker waits: enough
/// to keep the thread busy, few enough that a slow destination slows the
/// dataflow (backpressure) instead of growing memory without bound.
const SINK_QUEUE: usize = 64;

/// One sink on worker 0 (or none, elsewhere or after a failure): the worker
/// side. The sink itself runs on its own thread ([`SinkThread`]), so encoding,
/// writing and committing (a Kafka transaction, a PostgreSQL transaction, an
/// fsync) never stop worker 0 from running the dataflow: commits overlap with
/// computation, and when a commit is slower than the times complete, the
/// next commit covers all the times that completed meanwhile.
struct SinkDriver<D: Send + 'static> {
    tx: Option<std::sync::mpsc::SyncSender<SinkMsg<D>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    metrics: Arc<JobMetrics>,
    done: Rc<Cell<usize>>,
    /// This sink's counters (changes, commits, frontier, commit latency).
    stats: Arc<SinkMetrics>,
}

impl<D: Send + 'static> SinkDriver<D> {
    fn start(
        sink: Option<Box<dyn Sink<D> + Send>>,
        cx: SinkThread<D>,
        metrics: Arc<JobMetrics>,
        done: Rc<Cell<usize>>,
    ) -> Self {
        let stats = cx.stats.clone();
        let (tx, thread) = match sink {
            Some(sink) => {
                let (tx, rx) = std::sync::mpsc::sync_channel(SINK_QUEUE);
                let name = format!("weft-sink-{}", cx.name);
                let thread = std::thread::Builder::new()
                    .name(name)
                    .spawn(move || cx.run(sink, rx));
                match thread {
                    Ok(t) => (Some(tx), Some(t)),
                    Err(e) => {
                        stats.failed.store(true, Ordering::Relaxed);
                        tracing::error!("cannot start a sink thread: {e}");
                        (None, None)
                    }
                }
            }
            None => (None, None),
        };
        SinkDriver {
            tx,
            thread,
            metrics,
            done,
            stats,
        }
    }

    fn send(&mut self, msg: SinkMsg<D>) {
        if let Some(tx) = &self.tx {
            if tx.send(msg).is_err() {
                // The thread stopped after a failure (it reported it).
                self.tx = None;
            }
        }
    }

    fn updates(&mut self, time: u64, erase: &[String], records: &[(D, isize)])
    where
        D: Clone,
    {
        if self.tx.is_none() || (erase.is_empty() && records.is_empty()) {
            return;
        }
        for m in [&self.metrics.sink_lines, &self.stats.changes] {
            m.fetch_add(records.len() as u64, Ordering::Relaxed);
        }
        self.send(SinkMsg::Write {
            time,
            erase: erase.to_vec(),
            records: records.to_vec(),
        });
    }

    fn progress(&mut self, frontier: &[u64]) {
        self.send(SinkMsg::Commit(frontier.to_vec()));
        if frontier.is_empty() {
            // Complete: the job is done with this sink once its thread has
            // made everything durable.
            self.finish();
            self.done.set(self.done.get() + 1);
        }
    }

    /// Closes the queue and waits for the thread to write what it holds.
    fn finish(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl<D: Send + 'static> Drop for SinkDriver<D> {
    fn drop(&mut self) {
        // A dropped job: the thread writes what it was given (without a
        // further commit) and closes the destination before the job is gone.
        self.finish();
    }
}

/// The thread side of a sink: writes, erases and commits in order, reports
/// commits to the sink's metrics and the regulations audit log, and reports a
/// failure as a job error (the sink's further output is then discarded).
struct SinkThread<D> {
    name: String,
    job: JobId,
    job_name: String,
    shared: Arc<Shared>,
    audit: SharedAudit,
    stats: Arc<SinkMetrics>,
    _records: std::marker::PhantomData<fn(D)>,
}

impl<D> SinkThread<D> {
    fn run(self, mut sink: Box<dyn Sink<D> + Send>, rx: std::sync::mpsc::Receiver<SinkMsg<D>>) {
        let mut queue: std::collections::VecDeque<SinkMsg<D>> = Default::default();
        loop {
            if queue.is_empty() {
                match rx.recv() {
                    Ok(m) => queue.push_back(m),
                    Err(_) => return,
                }
            }
            queue.extend(rx.try_iter());
            // Commits coalesce: everything up to the last queued commit is
            // written, then committed once at that commit's frontier. Writes
            // after it (later times) wait for the commit that covers them.
            let last_commit = queue.iter().rposition(|m| matches!(m, SinkMsg::Commit(_)));
            let take = last_commit.map_or(queue.len(), |k| k + 1);
            let mut commit = None;
            for msg in queue.drain(..take) {
                let result = match msg {
                    SinkMsg::Write {
                        time,
                        erase,
                        records,
                    } => {
                        let mut r = Ok(());
                        if !erase.is_empty() {
                            r = sink.erase(time, &erase);
                        }
                        if r.is_ok() && !records.is_empty() {
                            r = sink.write(time, &records);
                        }
                        r
                    }
                    SinkMsg::Commit(f) => {
                        commit = Some(f);
                        Ok(())
                    }
                };
                if let Err(e) = result {
                    return self.fail(e);
                }
            }
            if let Some(frontier) = commit {
                let started = std::time::Instant::now();
                if let Err(e) = sink.commit(&frontier) {
                    return self.fail(e);
                }
                self.stats.committed(&frontier, started.elapsed());
                if let Some(a) = lock_audit(&self.audit).as_mut() {
                    if let Err(e) = a.sink_committed(&self.name, &frontier) {
                        tracing::error!("regulations audit log: {e}");
                    }
                }
                if frontier.is_empty() {
                    return;
                }
            }
        }
    }

    fn fail(&self, e: std::io::Error) {
        self.shared.job_error(
            self.job,
            &self.job_name,
            format!("sink {}: {e}; its further output is discarded", self.name),
        );
        self.stats.failed.store(true, Ordering::Relaxed);
    }
}

/// A destination's delivery metrics: `(metric, value)` pairs, read by the
/// metrics endpoint (see [`JobMetrics::sinks`]).
pub type SinkGauges = Arc<dyn Fn() -> Vec<(String, f64)> + Send + Sync>;

/// An opened sink, with its delivery metrics if it keeps any.
pub type OpenedSink<D> = (Box<dyn Sink<D> + Send>, Option<SinkGauges>);

/// Records a sink can write: JSON for files and webhooks, a Kafka encoding,
/// and, for the outputs they store, warehouse tables and lake files.
pub trait SinkRecord: timely::ExchangeData + Ord + Clone + WriteJson + KafkaKey + Sized {
    /// Opens a Kafka sink for this record type (changes, or dead letters for errors).
    fn open_kafka(config: &KafkaSinkConfig) -> Result<Box<dyn Sink<Self> + Send>, KafkaError> {
        Ok(Box::new(KafkaSink::open(config)?))
    }
    /// Opens a file sink writing Segment calls (audiences only; validation
    /// rejects the Segment formats for other outputs).
    fn open_segment(
        _path: &std::path::Path,
        _track: bool,
    ) -> Result<Box<dyn Sink<Self> + Send>, String> {
        Err("the Segment formats apply to the audiences output only".into())
    }
    /// Opens a PostgreSQL warehouse sink (events, profile traits, audiences
    /// and computed traits; validation rejects the other outputs).
    fn open_warehouse(_config: &WarehouseConfig) -> Result<OpenedSink<Self>, String> {
        Err("the postgres sink has no tables for this output".into())
    }
    /// Opens a Parquet lake sink (events and the profile outputs; validation
    /// rejects the others).
    fn open_lake(_config: LakeConfig) -> Result<OpenedSink<Self>, String> {
        Err("the lake sink does not store this output".into())
    }
}

impl SinkRecord for Event {
    fn open_warehouse(config: &WarehouseConfig) -> Result<OpenedSink<Self>, String> {
        open_warehouse(config)
    }
    fn open_lake(config: LakeConfig) -> Result<OpenedSink<Self>, String> {
        open_lake(config)
    }
}
impl SinkRecord for ProfileRecord {
    fn open_lake(config: LakeConfig) -> Result<OpenedSink<Self>, String> {
        open_lake(config)
    }
}
impl SinkRecord for ProfileChangeRecord {
    fn open_lake(config: LakeConfig) -> Result<OpenedSink<Self>, String> {
        open_lake(config)
    }
}
impl SinkRecord for TraitRecord {
    fn open_warehouse(config: &WarehouseConfig) -> Result<OpenedSink<Self>, String> {
        open_warehouse(config)
    }
    fn open_lake(config: LakeConfig) -> Result<OpenedSink<Self>, String> {
        open_lake(config)
    }
}
impl SinkRecord for Membership {
    fn open_segment(
        path: &std::path::Path,
        track: bool,
    ) -> Result<Box<dyn Sink<Self> + Send>, String> {
        SegmentAudienceSink::create(path, track)
            .map(|s| Box::new(s) as Box<dyn Sink<Self> + Send>)
            .map_err(|e| e.to_string())
    }
    fn open_warehouse(config: &WarehouseConfig) -> Result<OpenedSink<Self>, String> {
        open_warehouse(config)
    }
    fn open_lake(config: LakeConfig) -> Result<OpenedSink<Self>, String> {
        open_lake(config)
    }
}
impl SinkRecord for TraitValue {
    fn open_warehouse(config: &WarehouseConfig) -> Result<OpenedSink<Self>, String> {
        open_warehouse(config)
    }
    fn open_lake(config: LakeConfig) -> Result<OpenedSink<Self>, String> {
        open_lake(config)
    }
}
impl SinkRecord for (CountKey, isize) {}
impl SinkRecord for weft_dataflows::record::ErrorRecord {
    fn open_kafka(config: &KafkaSinkConfig) -> Result<Box<dyn Sink<Self> + Send>, KafkaError> {
        Ok(Box::new(DeadLetterSink::open(config)?))
    }
}

/// The webhook sink's settings for a `type = "webhook"` sink of a job whose
/// state directory is `job_state_dir`: its queue lives in
/// `<job_state_dir>/webhook/<sink name>`.
pub fn webhook_config(spec: &WebhookSinkSpec, job_state_dir: &std::path::Path) -> WebhookConfig {
    let WebhookSinkSpec {
        name,
        output: _,
        url,
        headers,
        batch_size,
        max_batch_bytes,
        linger,
        timeout,
        retry_horizon,
        initial_backoff,
        max_backoff,
        max_memory_mb,
        segment_mb,
        drain_timeout,
    } = spec;
    let ms = |d: &weft_dataflows::spec::DurationMs| std::time::Duration::from_millis(d.0);
    let mut config = WebhookConfig::new(name, url, job_state_dir.join("webhook").join(name));
    config.headers = headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    config.batch_size = *batch_size;
    config.max_batch_bytes = *max_batch_bytes;
    config.linger = ms(linger);
    config.request_timeout = ms(timeout);
    config.retry_horizon = ms(retry_horizon);
    config.initial_backoff = ms(initial_backoff);
    config.max_backoff = ms(max_backoff);
    config.max_memory_bytes = mib(*max_memory_mb);
    config.segment_bytes = mib(*segment_mb) as u64;
    config.drain_timeout = ms(drain_timeout);
    config
}

/// The warehouse sink's settings for a `type = "postgres"` sink; an error
/// if it has no URL (neither `url` nor `WEFT_PG_URL`).
pub fn warehouse_config(spec: &PostgresSinkSpec) -> Result<WarehouseConfig, String> {
    let PostgresSinkSpec {
        name,
        output: _,
        url,
        schema,
        lock_timeout,
        max_buffered_mb,
    } = spec;
    let Some(url) = url.as_deref().filter(|u| !u.trim().is_empty()) else {
        return Err("no PostgreSQL URL; set `url` or the WEFT_PG_URL environment variable".into());
    };
    let mut config = WarehouseConfig::new(name, url, schema);
    config.lock_timeout = std::time::Duration::from_millis(lock_timeout.0);
    config.max_buffered_bytes = mib(*max_buffered_mb);
    Ok(config)
}

/// The lake sink's settings for a `type = "lake"` sink. The lake is named
/// after the output (the `type=` partition of derived records).
pub fn lake_config(spec: &LakeSinkSpec) -> LakeConfig {
    let LakeSinkSpec {
        name: _,
        output,
        root,
        target_file_mb,
        max_row_group_rows,
        max_open_partitions,
        max_buffered_mb,
    } = spec;
    let mut config = LakeConfig::new(output.as_str(), root);
    config.target_file_bytes = mib(*target_file_mb) as u64;
    config.max_row_group_rows = *max_row_group_rows;
    config.max_open_partitions = *max_open_partitions;
    config.max_buffered_bytes = mib(*max_buffered_mb);
    config
}

/// `n` MiB in bytes (saturating).
fn mib(n: u64) -> usize {
    usize::try_from(n)
        .unwrap_or(usize::MAX)
        .saturating_mul(1 << 20)
}

fn open_webhook<D: WriteJson + 'static>(config: &WebhookConfig) -> Result<OpenedSink<D>, String> {
    let sink = WebhookSink::<D>::open(config).map_err(|e| e.to_string())?;
    let metrics = sink.metrics();
    let gauges: SinkGauges = Arc::new(move || webhook_gauges(metrics.snapshot()));
    Ok((Box::new(sink), Some(gauges)))
}

/// A webhook's counters; `*_events` count messages (one per change).
fn webhook_gauges(stats: WebhookStats) -> Vec<(String, f64)> {
    let WebhookStats {
        delivered_messages,
        delivered_batches,
        retries,
        discarded_messages,
        discarded_batches: _,
        dead_lettered_messages,
        dead_lettered_batches: _,
        skipped_messages,
        queued_messages,
        memory_bytes,
        spilled_bytes,
        last_error: _,
    } = stats;
    [
        ("delivered_events", delivered_messages),
        ("delivered_batches", delivered_batches),
        ("retries", retries),
        ("discarded_events", discarded_messages),
        ("dead_letters", dead_lettered_messages),
        ("skipped_events", skipped_messages),
        ("queued_events", queued_messages),
        ("queue_bytes", memory_bytes + spilled_bytes),
        ("spilled_bytes", spilled_bytes),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v as f64))
    .collect()
}

fn open_warehouse<D: WarehouseRecord + 'static>(
    config: &WarehouseConfig,
) -> Result<OpenedSink<D>, String> {
    let sink = WarehouseSink::<D>::open(config).map_err(|e| e.to_string())?;
    Ok(metered(sink))
}

fn open_lake<D: LakeRecord + 'static>(config: LakeConfig) -> Result<OpenedSink<D>, String> {
    let sink = ParquetLakeSink::<D>::open(config).map_err(|e| e.to_string())?;
    Ok(metered(sink))
}

/// A sink whose counters live inside it (read on the worker thread).
trait Counted {
    /// The counters, as of the last successful commit.
    fn counts(&self) -> Vec<(&'static str, u64)>;
}

impl<D: WarehouseRecord> Counted for WarehouseSink<D> {
    fn counts(&self) -> Vec<(&'static str, u64)> {
        let WarehouseStats {
            staged,
            skipped,
            rows,
            deletes,
            users,
            commits: _,
            unreadable,
        } = self.stats();
        // After a successful commit, everything staged is committed.
        vec![
            ("delivered_events", staged),
            ("skipped_events", skipped),
            ("rows_written", rows),
            ("rows_deleted", deletes),
            ("users_changed", users),
            ("unreadable_objects", unreadable),
        ]
    }
}

impl<D: LakeRecord> Counted for ParquetLakeSink<D> {
    fn counts(&self) -> Vec<(&'static str, u64)> {
        let LakeStats {
            rows_written,
            files_published,
            bytes_published,
            files_rewritten,
            files_read,
            rows_removed,
            orphans_removed,
        } = self.stats();
        // After a successful commit, every row written is published.
        vec![
            ("delivered_events", rows_written),
            ("files_published", files_published),
            ("bytes_published", bytes_published),
            ("files_rewritten", files_rewritten),
            ("files_read", files_read),
            ("rows_removed", rows_removed),
            ("orphans_removed", orphans_removed),
        ]
    }
}

/// A [`Counted`] sink that publishes its counters, with `commits` and the
/// last `commit_latency_ms`, after every commit that made changes visible.
struct Metered<S> {
    inner: S,
    published: Arc<std::sync::Mutex<Vec<(String, f64)>>>,
    /// Something was written or erased since the last commit.
    dirty: bool,
    commits: u64,
    commit_latency_ms: f64,
}

fn metered<D: 'static, S: Sink<D> + Counted + Send + 'static>(sink: S) -> OpenedSink<D> {
    let published = Arc::new(std::sync::Mutex::new(Vec::new()));
    let read = published.clone();
    let gauges: SinkGauges =
        Arc::new(move || read.lock().unwrap_or_else(|p| p.into_inner()).clone());
    let m = Metered {
        inner: sink,
        published,
        dirty: false,
        commits: 0,
        commit_latency_ms: 0.0,
    };
    m.publish();
    (Box::new(m), Some(gauges))
}

impl<S: Counted> Metered<S> {
    fn publish(&self) {
        let mut all: Vec<(String, f64)> = self
            .inner
            .counts()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v as f64))
            .collect();
        all.push(("commits".into(), self.commits as f64));
        all.push(("commit_latency_ms".into(), self.commit_latency_ms));
        *self.published.lock().unwrap_or_else(|p| p.into_inner()) = all;
    }
}

impl<D, S: Sink<D> + Counted> Sink<D> for Metered<S> {
    fn write(&mut self, time: u64, updates: &[(D, isize)]) -> std::io::Result<()> {
        self.dirty |= !updates.is_empty();
        self.inner.write(time, updates)
    }

    fn commit(&mut self, frontier: &[u64]) -> std::io::Result<()> {
        let started = std::time::Instant::now();
        self.inner.commit(frontier)?;
        if std::mem::take(&mut self.dirty) {
            self.commits += 1;
            self.commit_latency_ms = started.elapsed().as_secs_f64() * 1e3;
        }
        self.publish();
        Ok(())
    }

    fn erase(&mut self, time: u64, identifiers: &[String]) -> std::io::Result<()> {
        self.dirty |= !identifiers.is_empty();
        self.inner.erase(time, identifiers)
    }
}

/// Attaches a single-writer sink (on worker 0) to an output collection.
fn attach_sink<'s, D: SinkRecord>(
    collection: VecCollection<'s, u64, D, isize>,
    spec: &SinkSpec,
    cx: &SinkContext<'_, 's>,
) {
    let sink_name = spec.name().to_string();
    let mut sink: Option<Box<dyn Sink<D> + Send>> = None;
    if cx.index == 0 {
        let created: Result<OpenedSink<D>, String> = match spec {
            SinkSpec::File {
                path,
                format: SinkFormat::Changes,
                ..
            } => JsonLinesSink::create(path)
                .map(|s| (Box::new(s) as Box<dyn Sink<D> + Send>, None))
                .map_err(|e| e.to_string()),
            SinkSpec::File { path, format, .. } => {
                D::open_segment(path, *format == SinkFormat::SegmentTrack).map(|s| (s, None))
            }
            SinkSpec::Stdout { .. } => Ok((Box::new(JsonLinesSink::stdout()), None)),
            SinkSpec::Webhook(w) => open_webhook(&webhook_config(w, &cx.state_dir)),
            SinkSpec::Postgres(p) => warehouse_config(p).and_then(|c| D::open_warehouse(&c)),
            SinkSpec::Lake(l) => D::open_lake(lake_config(l)),
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
                    .map(|s| (s, None))
                    .map_err(|e| e.to_string())
            }
        };
        match created {
            Ok((s, gauges)) => {
                sink = Some(s);
                if let Some(g) = gauges {
                    cx.metrics
                        .sinks
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(sink_name.clone(), g);
                }
            }
            Err(e) => cx.shared.job_error(
                cx.job,
                cx.job_name,
                format!("sink {sink_name}: {e}; its output is discarded"),
            ),
        }
    }
    let mut driver = SinkDriver::start(
        sink,
        SinkThread {
            name: sink_name.clone(),
            job: cx.job,
            job_name: cx.job_name.to_string(),
            shared: cx.shared.clone(),
            audit: cx.audit.clone(),
            stats: cx.metrics.sink(&sink_name),
            _records: std::marker::PhantomData,
        },
        cx.metrics.clone(),
        cx.done.clone(),
    );
    let op = format!("Sink:{sink_name}");
    match cx.erasures {
        None => collection.sink_by_time(&op, SinkTarget::Worker(0), move |ev| match ev {
            SinkEvent::Updates { time, updates } => driver.updates(*time, &[], updates),
            SinkEvent::Progress { frontier } => driver.progress(frontier),
        }),
        Some(erasures) => {
            let mut records = Vec::new();
            collection
                .map(SinkItem::Record)
                .concat(erasures.clone().map(SinkItem::Erase))
                .sink_by_time(&op, SinkTarget::Worker(0), move |ev| match ev {
                    SinkEvent::Updates { time, updates } => {
                        let mut erase = Vec::new();
                        records.clear();
                        for (item, diff) in updates {
                            match item {
                                SinkItem::Erase(id) if *diff > 0 => erase.push(id.clone()),
                                SinkItem::Erase(_) => {}
                                SinkItem::Record(d) => records.push((d.clone(), *diff)),
                            }
                        }
                        driver.updates(*time, &erase, &records);
                    }
                    SinkEvent::Progress { frontier } => driver.progress(frontier),
                })
        }
    }
}

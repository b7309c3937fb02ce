//! Audiences and computed traits added, replaced and dropped while a job
//! runs, and the registry the HTTP APIs read (definitions, profile index).
//!
//! ```text
//!  controller (process 0)                          every worker, same order
//!  ─────────────────────────────────────────       ─────────────────────────────────────────────
//!  check against the job's Catalog
//!  write <state_dir>/definitions.json   ──► Command::Definitions ──► Set: per definition, detach the
//!  (then the change cannot be forgotten)         (sequenced)          old one (exits at the switch
//!                                                                     time), drop its dataflow, build
//!  worker 0 builds the job: read the file ──► Restore ─────────────►  the new one (imports the core's
//!  (installed before anything is output)                             arrangements: backfill) and
//!                                                                     attach it to the hub
//! ```
//!
//! Each runtime definition is its own dataflow importing the arrangements
//! the job's core dataflow exports (events by anchor, identifier → profile,
//! profile traits, profiles, and the audiences and computed traits it refers
//! to), so adding one neither rebuilds nor pauses the core, and importing an
//! arrangement hands the new definition the accumulated state (backfill).
//! Its changes reach the job's `audiences` / `computed_traits` outputs (every
//! sink of them, and the profile index) through the core's hub; see
//! [`crate::hub`] for when a change takes effect and how a drop retracts.
//!
//! **Determinism.** Workers build dataflows only from sequenced commands and
//! in the same order (timely requires it). A command never depends on a
//! worker's local state: a worker that has already retired the job (a
//! bounded job completes at slightly different moments on different workers)
//! still builds the same dataflows, over empty complete arrangements, and
//! discards their output. Every check that can fail is made by the
//! controller before the command is sequenced (see
//! [`crate::definitions::Catalog`]); a failure never reaches a worker.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use crossbeam_channel::Sender;
use differential_dataflow::operators::arrange::TraceAgent;
use differential_dataflow::trace::implementations::{KeySpine, ValSpine};
use differential_dataflow::trace::Trace;
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::generic::OperatorInfo;
use timely::dataflow::Scope;
use timely::worker::Worker;
use weft_dataflows::audience::{
    arrange_aggregate, arrange_audience, AggValue, ExportedValues, Members, MembersTrace,
    ProfileInputs, TraitValues,
};
use weft_dataflows::chain::expand_chains;
use weft_dataflows::identity::{HashTrace, ProfileId};
use weft_dataflows::query::{parse_audience, parse_computed_trait, Aggregate, Condition};
use weft_dataflows::spec::JobSpec;
use weft_dataflows::stored::StoredEvent;

use crate::definitions::{self, Catalog, Definition, DefinitionError, Origin};
use crate::hub::{agree, capture, Exports, Hub, HubChange, ProfilesTrace, Row};
use crate::job::RunningJob;
use crate::profile_index::ProfileIndex;
use crate::runtime::{Cluster, Command, ControlError, JobId, JobStatus, Shared};

/// A change to a job's runtime definitions, as workers apply it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum DefinitionChange {
    /// The persisted definitions, installed right after the job is built;
    /// ends the hub's hold at time 0.
    Restore(Vec<Definition>),
    /// Install these in order, each replacing the installed one of its name.
    Set(Vec<Definition>),
    /// Drop the definition of this name.
    Drop(String),
}

/// Why a request about definitions or profiles failed.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// About the job or the cluster.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// About the definition.
    #[error(transparent)]
    Definition(#[from] DefinitionError),
}

/// What [`Cluster::set_definition`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SetOutcome {
    /// A definition of that name existed and was replaced.
    pub replaced: bool,
    /// The definitions the workers rebuild, in order: the new one, then the
    /// runtime definitions that use it (directly or not).
    pub rebuilt: Vec<String>,
}

/// What process 0 knows about one job.
struct JobEntry {
    catalog: Catalog,
    path: PathBuf,
    /// The profile index (worker 0 fills it); `None` when the job does not resolve profiles.
    index: Option<Arc<ProfileIndex>>,
}

/// The process-wide registry of runtime definitions and profile indexes
/// (filled on process 0, where the APIs run).
#[derive(Debug)]
pub struct Views {
    commands: Sender<Command>,
    jobs: Mutex<BTreeMap<JobId, JobEntry>>,
}

impl std::fmt::Debug for JobEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobEntry")
            .field("path", &self.path)
            .field("runtime", &self.catalog.runtime().len())
            .finish()
    }
}

impl Views {
    /// A registry that sequences its commands through `commands` (worker 0's channel).
    pub fn new(commands: Sender<Command>) -> Views {
        Views {
            commands,
            jobs: Mutex::new(BTreeMap::new()),
        }
    }

    /// Registers a job built by global worker 0: its spec definitions, its
    /// index (`None` if it does not resolve profiles) and its persisted
    /// runtime definitions, which it sends as the `Restore` command.
    pub(crate) fn register_job(
        &self,
        id: JobId,
        spec: &JobSpec,
        index: Option<Arc<ProfileIndex>>,
        shared: &Shared,
    ) {
        let mut catalog = Catalog::from_spec(spec);
        let path = definitions::definitions_path(spec);
        let mut jobs = self.jobs.lock().expect("views lock");
        if index.is_some() {
            let saved = definitions::load(&path).unwrap_or_else(|e| {
                let message = format!("runtime definitions {}: {e}; none restored", path.display());
                shared.job_error(id, &spec.job.name, message);
                Vec::new()
            });
            let (restored, problems) = catalog.restore(saved);
            for p in problems {
                shared.job_error(id, &spec.job.name, p);
            }
            let change = DefinitionChange::Restore(restored);
            if self.send(id, change).is_err() {
                tracing::warn!(job = %spec.job.name, "the cluster stopped before the job's definitions were restored");
            }
        }
        jobs.insert(
            id,
            JobEntry {
                catalog,
                path,
                index,
            },
        );
    }

    /// Forgets a job (its definitions and index).
    pub fn forget(&self, id: JobId) {
        self.jobs.lock().expect("views lock").remove(&id);
    }

    /// The profile index of a job, if it has one.
    pub fn index(&self, id: JobId) -> Option<Arc<ProfileIndex>> {
        let jobs = self.jobs.lock().expect("views lock");
        jobs.get(&id).and_then(|e| e.index.clone())
    }

    fn send(&self, job: JobId, change: DefinitionChange) -> Result<(), ControlError> {
        self.commands
            .send(Command::Definitions { job, change })
            .map_err(|_| ControlError::Stopped)
    }

    /// Checks, persists and sequences a change (under the registry lock, so
    /// changes are persisted and sequenced in the same order).
    fn change(
        &self,
        job: JobId,
        edit: impl FnOnce(&mut Catalog) -> Result<DefinitionChange, DefinitionError>,
    ) -> Result<(), ViewError> {
        let mut jobs = self.jobs.lock().expect("views lock");
        let entry = jobs.get_mut(&job).ok_or(ControlError::NoSuchJob(job))?;
        if entry.index.is_none() {
            return Err(no_profiles(job).into());
        }
        let mut catalog = entry.catalog.clone();
        let change = edit(&mut catalog)?;
        definitions::save(&entry.path, catalog.runtime()).map_err(|e| {
            ControlError::Io(format!(
                "cannot save runtime definitions to {}: {e}",
                entry.path.display()
            ))
        })?;
        entry.catalog = catalog;
        self.send(job, change)?;
        Ok(())
    }
}

fn no_profiles(job: JobId) -> ControlError {
    ControlError::Conflict(format!(
        "job {job} does not resolve profiles (it declares no audience, computed trait, \
         regulation or profile output), so it has no profiles and takes no audiences"
    ))
}

/// The controller's side: what the control and profile APIs call.
impl Cluster {
    /// Adds or replaces an audience or computed trait of a running job.
    pub fn set_definition(
        &self,
        job: JobId,
        definition: Definition,
    ) -> Result<SetOutcome, ViewError> {
        self.check_running(job)?;
        let mut outcome = SetOutcome::default();
        self.shared().views.change(job, |catalog| {
            outcome.replaced = catalog.find(&definition.name).is_some();
            let rebuilt = catalog.set(definition)?;
            outcome.rebuilt = rebuilt.iter().map(|d| d.name.clone()).collect();
            Ok(DefinitionChange::Set(rebuilt))
        })?;
        Ok(outcome)
    }

    /// Drops a runtime audience or computed trait: its members exit (values retract).
    pub fn drop_definition(&self, job: JobId, name: &str) -> Result<(), ViewError> {
        self.check_running(job)?;
        self.shared().views.change(job, |catalog| {
            catalog.drop_definition(name)?;
            Ok(DefinitionChange::Drop(name.to_string()))
        })
    }

    /// A job's audiences and computed traits with their origin: spec first,
    /// then runtime ones in installation order.
    pub fn definitions(&self, job: JobId) -> Result<Vec<(Definition, Origin)>, ViewError> {
        self.known(job)?;
        let jobs = self.shared().views.jobs.lock().expect("views lock");
        let entry = jobs.get(&job).ok_or_else(|| starting(job))?;
        Ok(entry.catalog.all().map(|(d, o)| (d.clone(), o)).collect())
    }

    /// A job's profile index (the Profile API reads it).
    pub fn profile_index(&self, job: JobId) -> Result<Arc<ProfileIndex>, ViewError> {
        self.known(job)?;
        let jobs = self.shared().views.jobs.lock().expect("views lock");
        let entry = jobs.get(&job).ok_or_else(|| starting(job))?;
        Ok(entry.index.clone().ok_or_else(|| no_profiles(job))?)
    }

    fn known(&self, job: JobId) -> Result<JobStatus, ControlError> {
        if self.process() != 0 {
            return Err(ControlError::NotLeader(self.process()));
        }
        let jobs = self.shared().jobs.lock().expect("job registry lock");
        jobs.get(&job)
            .map(|s| s.status.clone())
            .ok_or(ControlError::NoSuchJob(job))
    }

    fn check_running(&self, job: JobId) -> Result<(), ControlError> {
        match self.known(job)? {
            JobStatus::Running => Ok(()),
            other => Err(ControlError::Conflict(format!(
                "job {job} is {}; audiences change only while it runs",
                other.as_str()
            ))),
        }
    }
}

fn starting(job: JobId) -> ControlError {
    ControlError::Conflict(format!("job {job} is starting; try again shortly"))
}

// ---------------------------------------------------------------------------
// Workers.

/// One installed runtime definition on a worker.
struct Installed {
    name: String,
    slot: u64,
    dataflow: usize,
}

/// A job's runtime definitions on one worker: the core's hub and exports
/// they attach to, and their dataflows.
pub struct JobViews {
    hub: Rc<RefCell<Hub>>,
    exports: Rc<RefCell<Exports>>,
    installed: Vec<Installed>,
    next_slot: u64,
}

impl JobViews {
    /// The views of a job whose core dataflow made `hub` and `exports`.
    pub(crate) fn new(hub: Rc<RefCell<Hub>>, exports: Rc<RefCell<Exports>>) -> JobViews {
        JobViews {
            hub,
            exports,
            installed: Vec::new(),
            next_slot: 0,
        }
    }

    /// The dataflows of the installed definitions.
    pub fn dataflows(&self) -> Vec<usize> {
        self.installed.iter().map(|i| i.dataflow).collect()
    }

    /// When a change applied now can take effect on this worker: its
    /// proposal for the switch time (see [`crate::hub`]).
    fn switch_time(&self) -> u64 {
        let cap = self.hub.borrow().cap().unwrap_or(0);
        cap.max(self.exports.borrow().since())
    }

    /// Uninstalls a definition; returns the retraction of what the hub
    /// forwarded for it (see [`Hub::detach`]).
    fn remove(&mut self, worker: &mut Worker, name: &str) -> Vec<HubChange> {
        let Some(pos) = self.installed.iter().position(|i| i.name == name) else {
            return Vec::new();
        };
        let old = self.installed.remove(pos);
        let retract = self.hub.borrow_mut().detach(old.slot);
        let mut exports = self.exports.borrow_mut();
        exports.values.remove(name);
        exports.members.remove(name);
        drop(exports);
        worker.drop_dataflow(old.dataflow);
        retract
    }
}

/// Applies a sequenced change on this worker. `job` is `None` when this
/// worker has already retired the job: the same dataflows are built over
/// empty arrangements (see the module docs).
pub fn apply(
    worker: &mut Worker,
    job: Option<&mut RunningJob>,
    id: JobId,
    change: DefinitionChange,
) {
    let mut views = match job {
        Some(j) => match j.views.as_mut() {
            Some(v) => Some(v),
            None => return, // no profiles on any worker: the controller sends nothing
        },
        None => None,
    };
    match change {
        DefinitionChange::Restore(defs) => {
            for d in &defs {
                install(worker, views.as_deref_mut(), id, d, 0, Vec::new());
            }
            if let Some(v) = views {
                v.hub.borrow_mut().set_ready();
            }
        }
        DefinitionChange::Set(defs) => {
            // One proposal for them all: they switch together (the old
            // definitions' retractions at the new ones' switch time).
            let at = views.as_ref().map_or(0, |v| v.switch_time());
            for d in &defs {
                let retract = match views.as_deref_mut() {
                    Some(v) => v.remove(worker, &d.name),
                    None => Vec::new(),
                };
                install(worker, views.as_deref_mut(), id, d, at, retract);
            }
        }
        DefinitionChange::Drop(name) => {
            if let Some(v) = views {
                let at = v.switch_time();
                let retract = v.remove(worker, &name);
                v.hub.borrow_mut().emit(retract, at);
            }
        }
    }
}

/// A definition's query, parsed.
enum Parsed {
    Audience(Condition),
    Trait(Aggregate),
}

/// The traces a definition's dataflow imports.
struct Imports {
    events_by_anchor: HashTrace<StoredEvent>,
    profile_of: HashTrace<ProfileId>,
    traits: HashTrace<(Box<str>, Box<str>)>,
    profiles: ProfilesTrace,
    values: BTreeMap<String, ExportedValues<ProfileId>>,
    members: BTreeMap<String, MembersTrace<ProfileId>>,
}

/// What a definition's dataflow exports.
enum Output {
    Values(ExportedValues<ProfileId>),
    Members(MembersTrace<ProfileId>),
}

/// An empty arrangement whose input is complete (for workers without the job).
fn empty_trace<Tr: Trace<Time = u64> + 'static>() -> TraceAgent<Tr> {
    let info = OperatorInfo::new(0, 0, Rc::from(Vec::new()));
    let trace = Tr::new(info.clone(), None, None);
    let (agent, writer) = TraceAgent::new(trace, info, None);
    drop(writer); // seals the trace at the empty frontier
    agent
}

impl Imports {
    /// The traces `parsed` needs, from `exports` (empty ones where there is none).
    fn gather(exports: Option<&Exports>, parsed: &Parsed) -> Imports {
        let (mut audiences, mut traits) = (Vec::new(), Vec::new());
        match parsed {
            Parsed::Audience(c) => {
                c.audiences(&mut audiences);
                c.computed(&mut traits);
            }
            Parsed::Trait(_) => {}
        }
        let values = traits
            .into_iter()
            .map(|n| {
                let t = exports.and_then(|e| e.values.get(&n).cloned());
                (
                    n,
                    t.unwrap_or_else(|| {
                        ExportedValues::Arranged(empty_trace::<
                            ValSpine<ProfileId, AggValue, u64, isize>,
                        >())
                    }),
                )
            })
            .collect();
        let members = audiences
            .into_iter()
            .map(|n| {
                let t = exports.and_then(|e| e.members.get(&n).cloned());
                (
                    n,
                    t.unwrap_or_else(empty_trace::<KeySpine<ProfileId, u64, isize>>),
                )
            })
            .collect();
        match exports {
            Some(e) => Imports {
                events_by_anchor: e.events_by_anchor.clone(),
                profile_of: e.profile_of.clone(),
                traits: e.traits.clone(),
                profiles: e.profiles.clone(),
                values,
                members,
            },
            None => Imports {
                events_by_anchor: empty_trace(),
                profile_of: empty_trace(),
                traits: empty_trace(),
                profiles: empty_trace(),
                values,
                members,
            },
        }
    }
}

/// Builds one definition's dataflow and, when this worker has the job,
/// attaches it with this worker's proposed switch time and the retractions
/// of the definition it replaces.
fn install(
    worker: &mut Worker,
    views: Option<&mut JobViews>,
    job: JobId,
    def: &Definition,
    proposal: u64,
    retract: Vec<HubChange>,
) {
    // The controller checked the query; a failure here is the same on every worker.
    let parsed = match def.kind {
        definitions::DefinitionKind::Audience => parse_audience(&def.query).map(Parsed::Audience),
        definitions::DefinitionKind::Trait => parse_computed_trait(&def.query).map(Parsed::Trait),
    };
    let Ok(parsed) = parsed else {
        tracing::error!(job, name = %def.name, "a sequenced definition does not parse; skipped");
        return;
    };
    let (slot, hub, imports) = match &views {
        Some(v) => (
            v.next_slot,
            Some(v.hub.clone()),
            Imports::gather(Some(&v.exports.borrow()), &parsed),
        ),
        None => (0, None, Imports::gather(None, &parsed)),
    };
    let dataflow = worker.next_dataflow_index();
    let name = format!("definition-{job}-{}", def.name);
    let output = worker.dataflow_named::<u64, _, _>(&name, |scope| {
        build_definition(scope, &def.name, &parsed, imports, slot, proposal, hub)
    });
    if let Some(v) = views {
        v.next_slot += 1;
        v.hub.borrow_mut().attach(slot, def, proposal, retract);
        let mut exports = v.exports.borrow_mut();
        match output {
            Output::Values(t) => {
                exports.values.insert(def.name.clone(), t);
            }
            Output::Members(t) => {
                exports.members.insert(def.name.clone(), t);
            }
        }
        drop(exports);
        v.installed.push(Installed {
            name: def.name.clone(),
            slot,
            dataflow,
        });
    }
}

/// The dataflow of one definition: imports, the compiled query, its
/// exported output arrangement, the capture into the hub and the workers'
/// agreement on its switch time (`proposal` is this worker's).
fn build_definition<'s>(
    scope: Scope<'s, u64>,
    name: &str,
    parsed: &Parsed,
    mut imports: Imports,
    slot: u64,
    proposal: u64,
    hub: Option<Rc<RefCell<Hub>>>,
) -> Output {
    let (anchored, _) = imports
        .events_by_anchor
        .import_frontier(scope, "Import:EventsByAnchor");
    let (profile_of, _) = imports
        .profile_of
        .import_frontier(scope, "Import:ProfileOf");
    let (traits, _) = imports.traits.import_frontier(scope, "Import:Traits");
    let (profiles, _) = imports.profiles.import_frontier(scope, "Import:Profiles");
    let inputs = ProfileInputs {
        profiles: profiles.as_collection(|p, _| *p),
        // Heads (a job without regulations) or events: both expand to events.
        events: expand_chains(
            anchored.join_core(profile_of, |a, e, p| Some((*p, (*a, e.clone())))),
        )
        .map(|(p, e)| (p, e.load())),
        traits: traits.as_collection(|p, (k, v)| (*p, (k.to_string(), v.to_string()))),
        shared: None,
    };
    let computed: BTreeMap<String, TraitValues<'s, ProfileId>> = imports
        .values
        .iter_mut()
        .map(|(n, t)| (n.clone(), t.import(scope, &format!("Import:{n}"))))
        .collect();
    let audiences: BTreeMap<String, Members<'s, ProfileId>> = imports
        .members
        .iter_mut()
        .map(|(n, t)| {
            let (arr, _) = t.import_frontier(scope, &format!("Import:{n}"));
            (n.clone(), arr.as_collection(|p, _| *p))
        })
        .collect();
    let (rows, output): (VecCollection<'s, u64, Row, isize>, Output) = match parsed {
        Parsed::Trait(agg) => {
            let values = arrange_aggregate(&inputs, agg);
            (values.values(), Output::Values(values.export()))
        }
        Parsed::Audience(cond) => match arrange_audience(&inputs, cond, &computed, &audiences) {
            Ok(arr) => {
                let rows = arr.clone().as_collection(|p, _| (*p, AggValue::Null));
                (rows, Output::Members(arr.trace))
            }
            Err(e) => {
                // Unreachable: every reference was imported (or stood in for by an empty trace).
                tracing::error!(name, "runtime audience not built: {e}");
                let rows = differential_dataflow::collection::concatenate(scope, Vec::new());
                (rows, Output::Members(empty_trace()))
            }
        },
    };
    agree(scope, proposal, name, slot, hub.clone());
    capture(rows, name, slot, hub);
    output
}

//! Where runtime audiences and computed traits meet a job's core dataflow.
//!
//! ```text
//!  core dataflow                                   one dataflow per runtime definition
//!  ────────────────────────────────────────────     ─────────────────────────────────────────
//!  events by anchor, profile of, traits, profiles ─ export ─► import ─► compile ─► arrange ─► export
//!  spec audiences / traits (their own arrangements)─ export ─► import ┘                │
//!        │ (stream frontiers)                                                      Capture
//!        ▼                                                                          │ (same worker,
//!  RuntimeDefinitions (this hub) ◄──────────────── queue + frontier ◄────────────────┘  shared queue)
//!        │ (profile, Member{name,key} | Value{name,value})
//!        ▼
//!  audiences / computed_traits outputs ─► the job's sinks, the profile index
//! ```
//!
//! The hub is an operator of the core dataflow holding one capability. It
//! forwards each attached definition's changes into the core and holds its
//! capability at the meet of the core's frontier and every attached
//! definition's output frontier, so the job's sinks see every change of every
//! definition at its own logical time, exactly once, in time order.
//!
//! **Switch time.** A definition added (or replaced) while the job runs
//! takes effect at its *switch time* `s`, the same on every worker. Each
//! worker proposes the first time its hub can still emit at and that its
//! imports have not compacted past (`max(hub capability, since of the
//! imported traces)`); the definition's dataflow broadcasts the proposals
//! and `s` is the latest ([`agree`]). Until then this worker's hub forwards
//! nothing of it and holds its capability at its own proposal (`≤ s`).
//! The new definition's changes at times `≤ s` (its backfill from the
//! accumulated state) are emitted at `s`; later ones at their own times.
//!
//! One `s` for all workers is what makes the backfill exact: a profile's
//! output combines inputs from every worker (its identifiers' events live
//! where the identifiers hash), and each worker's imports start at that
//! worker's compaction frontier. Between the earliest and the latest of
//! those frontiers the profile's output is partial (say a count of 1 where
//! the state at `s` has 2); a switch time picked per worker, before the
//! latest frontier, emitted that partial value and corrected it a tick
//! later (a transient value). At times `≥ s` every worker's imports are
//! exact, so the output accumulated at `s` is the state at `s`. Proposals
//! only grow on a worker, so a definition using another gets an `s` no
//! earlier than the other's: it never forwards the other's partial values.
//!
//! A replaced definition's outputs stop at the replacement's `s`: the hub
//! emits there (or at their own time if later) the retraction of everything
//! it forwarded for the old one, so old and new memberships consolidate at
//! `s` into exactly the difference. A dropped definition's outputs stop at
//! this worker's proposal, where the hub retracts what it forwarded (a drop
//! is an exit of every member; each profile's changes live on one worker,
//! so no agreement is needed). Changes an old definition would have made
//! after its last forwarded time and before it stops (a few milliseconds)
//! are not emitted.
//!
//! **Hold at start.** Until the job's persisted runtime definitions are
//! installed (the `Restore` command that follows every build), the hub holds
//! its capability at time 0 and the exported traces are not compacted, so
//! restored definitions see the complete history and reproduce the original
//! times: a restarted job's output does not depend on when a definition was
//! added in an earlier run.
//!
//! **Memory.** For each runtime definition the hub keeps what it forwarded,
//! consolidated: about 80 bytes per live membership or value on the worker
//! that owns the profile. Exported traces are compacted to the core's frontier
//! as it advances.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use differential_dataflow::operators::arrange::TraceAgent;
use differential_dataflow::trace::implementations::KeySpine;
use differential_dataflow::trace::TraceReader;
use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::Stream;
use timely::progress::frontier::AntichainRef;
use timely::scheduling::Activator;
use weft_dataflows::audience::{AggValue, ExportedValues, MembersTrace};
use weft_dataflows::identity::{HashTrace, ProfileId};
use weft_dataflows::stored::StoredEvent;

use crate::definitions::{Definition, DefinitionKind};

/// One row of a definition's output: an audience member (value `Null`) or a
/// computed trait's value.
pub type Row = (ProfileId, AggValue);

/// A runtime definition's change as the core receives it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum HubRecord {
    /// A member of an audience.
    Member {
        /// The audience's name.
        name: String,
        /// Its key for destinations.
        key: String,
    },
    /// A computed trait's value.
    Value {
        /// The trait's name.
        name: String,
        /// The value.
        value: AggValue,
    },
}

/// A change the hub emits: `((profile, record), time, diff)`.
pub type HubChange = ((ProfileId, HubRecord), u64, isize);

/// The set of profiles, arranged.
pub type ProfilesTrace = TraceAgent<KeySpine<ProfileId, u64, isize>>;

/// The arrangements a job's core dataflow exports to runtime definitions
/// (this worker's part), and the outputs of its definitions.
pub struct Exports {
    /// Events by anchor identifier (at rest, compressed); in a job without
    /// regulations, each anchor's latest event, the head of its chain of
    /// events in the log (see `weft_dataflows::chain`). Either way
    /// `expand_chains` gives the events.
    pub events_by_anchor: HashTrace<StoredEvent>,
    /// Identifier → profile.
    pub profile_of: HashTrace<ProfileId>,
    /// Profile → (trait key, value JSON).
    pub traits: HashTrace<(Box<str>, Box<str>)>,
    /// Every profile.
    pub profiles: ProfilesTrace,
    /// Computed traits (spec and runtime), by name.
    pub values: BTreeMap<String, ExportedValues<ProfileId>>,
    /// Audiences (spec and runtime), by name.
    pub members: BTreeMap<String, MembersTrace<ProfileId>>,
    compacted: Option<u64>,
}

impl Exports {
    /// The core's arrangements, with no definitions yet.
    pub fn new(
        events_by_anchor: HashTrace<StoredEvent>,
        profile_of: HashTrace<ProfileId>,
        traits: HashTrace<(Box<str>, Box<str>)>,
        profiles: ProfilesTrace,
    ) -> Exports {
        Exports {
            events_by_anchor,
            profile_of,
            traits,
            profiles,
            values: BTreeMap::new(),
            members: BTreeMap::new(),
            compacted: None,
        }
    }

    /// Allows every trace to forget distinctions between times before `time`.
    fn compact_to(&mut self, time: u64) {
        if self.compacted.is_some_and(|c| c >= time) {
            return;
        }
        self.compacted = Some(time);
        let frontier = [time];
        let f = AntichainRef::new(&frontier);
        fn both<T: TraceReader<Time = u64>>(t: &mut T, f: AntichainRef<'_, u64>) {
            t.set_logical_compaction(f);
            t.set_physical_compaction(f);
        }
        both(&mut self.events_by_anchor, f);
        both(&mut self.profile_of, f);
        both(&mut self.traits, f);
        both(&mut self.profiles, f);
        self.values.values_mut().for_each(|t| t.compact_to(f));
        self.members.values_mut().for_each(|t| both(t, f));
    }

    /// The latest compaction frontier of any export (0 if none compacted).
    pub fn since(&self) -> u64 {
        self.compacted.unwrap_or(0)
    }
}

/// One attached runtime definition.
struct Attached {
    name: String,
    key: String,
    kind: DefinitionKind,
    /// Its changes at earlier times are emitted at this time: this worker's
    /// proposal until `agreed`, then the switch time of every worker.
    switch: u64,
    /// Whether the workers have agreed on `switch` (nothing is forwarded before).
    agreed: bool,
    /// Retractions of the definition this one replaces, emitted at `switch`
    /// (or at their own time if later) once agreed.
    retract: Vec<HubChange>,
    /// Its output frontier (`None`: complete).
    frontier: Option<u64>,
    /// Changes captured and not yet forwarded.
    queue: Vec<(Row, u64, isize)>,
    /// Forwarded at times the hub's capability has passed, consolidated.
    settled: HashMap<Row, isize>,
    /// Forwarded at times the hub's capability has not passed.
    recent: Vec<(Row, u64, isize)>,
}

impl Attached {
    fn record(&self, value: &AggValue) -> HubRecord {
        match self.kind {
            DefinitionKind::Audience => HubRecord::Member {
                name: self.name.clone(),
                key: self.key.clone(),
            },
            DefinitionKind::Trait => HubRecord::Value {
                name: self.name.clone(),
                value: value.clone(),
            },
        }
    }

    /// Moves forwarded changes at times before `time` into `settled`.
    fn settle(&mut self, time: u64) {
        let settled = &mut self.settled;
        self.recent.retain(|(row, t, r)| {
            if *t >= time {
                return true;
            }
            let n = settled.entry(row.clone()).or_default();
            *n += r;
            if *n == 0 {
                settled.remove(row);
            }
            false
        });
    }
}

/// The hub's state on one worker, shared by the hub operator, the capture
/// operators of runtime definitions and the command handler (one thread).
pub struct Hub {
    cap: Option<u64>,
    ready: bool,
    attached: BTreeMap<u64, Attached>,
    out: Vec<((ProfileId, HubRecord), u64, isize)>,
    activator: Option<Activator>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            cap: Some(0),
            ready: false,
            attached: BTreeMap::new(),
            out: Vec::new(),
            activator: None,
        }
    }
}

impl Hub {
    /// The hub's capability (`None`: released, the job's output is complete).
    pub fn cap(&self) -> Option<u64> {
        self.cap
    }

    /// Ends the hold at time 0 (persisted definitions are installed).
    pub fn set_ready(&mut self) {
        self.ready = true;
        self.activate();
    }

    /// Attaches a definition's output (captured under `slot`) with this
    /// worker's proposed switch time; it is forwarded once the workers agree
    /// (see [`agree`]), its earlier changes and `retract` (from
    /// [`Hub::detach`] of the definition it replaces) at the agreed time.
    pub fn attach(&mut self, slot: u64, def: &Definition, proposal: u64, retract: Vec<HubChange>) {
        self.attached.insert(
            slot,
            Attached {
                name: def.name.clone(),
                key: def.key().to_string(),
                kind: def.kind,
                switch: proposal,
                agreed: false,
                retract,
                frontier: Some(0),
                queue: Vec::new(),
                settled: HashMap::new(),
                recent: Vec::new(),
            },
        );
        self.activate();
    }

    /// Every worker's proposal for `slot` is in: `switch` is the latest.
    fn agree(&mut self, slot: u64, switch: u64) {
        let Some(a) = self.attached.get_mut(&slot) else {
            return; // dropped before the workers agreed
        };
        a.switch = a.switch.max(switch);
        a.agreed = true;
        let at = a.switch;
        let retract = std::mem::take(&mut a.retract);
        self.out
            .extend(retract.into_iter().map(|(d, t, r)| (d, t.max(at), r)));
        self.activate();
    }

    /// Stops forwarding a definition; returns the retraction of all it
    /// forwarded (settled changes at time 0, recent ones at their own
    /// time) and of what it had still to retract, for the caller to emit.
    pub fn detach(&mut self, slot: u64) -> Vec<HubChange> {
        let Some(a) = self.attached.remove(&slot) else {
            return Vec::new();
        };
        let mut out = a.retract.clone();
        for (row, r) in &a.settled {
            out.push(((row.0, a.record(&row.1)), 0, -r));
        }
        for (row, t, r) in &a.recent {
            out.push(((row.0, a.record(&row.1)), *t, -r));
        }
        out
    }

    /// Emits `changes` at `at` (or at their own time if later).
    pub fn emit(&mut self, changes: Vec<HubChange>, at: u64) {
        self.out
            .extend(changes.into_iter().map(|(d, t, r)| (d, t.max(at), r)));
        self.activate();
    }

    fn activate(&self) {
        if let Some(a) = &self.activator {
            a.activate();
        }
    }
}

/// The earlier of two frontiers, `None` standing for the empty frontier.
fn meet(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (x, None) | (None, x) => x,
    }
}

/// The hub operator (see the module docs). `base` carries the frontier of the
/// core's exported arrangements; its data is ignored.
pub fn hub_operator<'s>(
    base: Stream<'s, u64, Vec<()>>,
    hub: Rc<RefCell<Hub>>,
    exports: Rc<RefCell<Exports>>,
) -> VecCollection<'s, u64, (ProfileId, HubRecord), isize> {
    let scope = base.scope();
    base.unary_frontier::<CapacityContainerBuilder<Vec<HubChange>>, _, _, _>(
        Pipeline,
        "RuntimeDefinitions",
        move |cap, info| {
            hub.borrow_mut().activator = Some(scope.activator_for(info.address));
            let mut cap = Some(cap);
            let mut batch: Vec<HubChange> = Vec::new();
            move |(input, frontier), output| {
                input.for_each(|_, _| {});
                let Some(c) = cap.as_mut() else { return };
                let mut guard = hub.borrow_mut();
                let h = &mut *guard;
                let now = *c.time();
                // STEP 1. Forward captured changes, never before the capability or a switch time.
                for a in h.attached.values_mut().filter(|a| a.agreed) {
                    for (row, t, r) in std::mem::take(&mut a.queue) {
                        let t = t.max(a.switch).max(now);
                        batch.push(((row.0, a.record(&row.1)), t, r));
                        a.recent.push((row, t, r));
                    }
                }
                batch.extend(h.out.drain(..).map(|(d, t, r)| (d, t.max(now), r)));
                batch.sort_by_key(|(_, t, _)| *t);
                let mut rest = &batch[..];
                while let Some(((_, t, _), _)) = rest.split_first() {
                    let n = rest.iter().take_while(|(_, u, _)| u == t).count();
                    let at = c.delayed(t);
                    output.session(&at).give_iterator(rest[..n].iter().cloned());
                    rest = &rest[n..];
                }
                batch.clear();
                // STEP 2. Hold at the meet of the core's and every definition's frontier.
                let base = frontier.frontier().iter().min().copied();
                let mut lower = if h.ready { base } else { Some(now) };
                for a in h.attached.values() {
                    let held = if a.agreed { a.frontier } else { Some(0) };
                    lower = meet(lower, held.map(|f| f.max(a.switch)));
                }
                match lower {
                    None => {
                        cap = None;
                        h.cap = None;
                    }
                    Some(l) => {
                        let l = l.max(now);
                        c.downgrade(&l);
                        h.cap = Some(l);
                        h.attached.values_mut().for_each(|a| a.settle(l));
                    }
                }
                // STEP 3. Exported traces keep no history the core has passed.
                if let (true, Some(b)) = (h.ready, base) {
                    exports.borrow_mut().compact_to(b);
                }
            }
        },
    )
    .as_collection()
}

/// The switch time of a runtime definition (see the module docs): every
/// worker's dataflow sends its `proposal` to all workers; once all are in,
/// this worker's hub forwards the definition from the latest one. Workers
/// without the job propose 0 (`hub` is `None`).
pub fn agree<'s>(
    scope: timely::dataflow::Scope<'s, u64>,
    proposal: u64,
    name: &str,
    slot: u64,
    hub: Option<Rc<RefCell<Hub>>>,
) {
    use timely::dataflow::operators::vec::{Broadcast, ToStream};
    let mut latest = 0u64;
    let mut done = false;
    Some(proposal).to_stream(scope).broadcast().sink(
        Pipeline,
        &format!("SwitchTime:{name}"),
        move |(input, frontier)| {
            input.for_each(|_, data| {
                latest = data.iter().fold(latest, |m, p| m.max(*p));
            });
            if !done && frontier.frontier().is_empty() {
                done = true;
                if let Some(hub) = &hub {
                    hub.borrow_mut().agree(slot, latest);
                }
            }
        },
    );
}

/// The end of a runtime definition's dataflow: hands its changes and output
/// frontier to this worker's hub (or discards them when there is none).
pub fn capture<'s>(
    rows: VecCollection<'s, u64, Row, isize>,
    name: &str,
    slot: u64,
    hub: Option<Rc<RefCell<Hub>>>,
) {
    rows.inner.sink(
        Pipeline,
        &format!("Capture:{name}"),
        move |(input, frontier)| {
            let Some(hub) = &hub else {
                input.for_each(|_, _| {});
                return;
            };
            let mut h = hub.borrow_mut();
            let mut changed = false;
            match h.attached.get_mut(&slot) {
                Some(a) => {
                    input.for_each(|_, data| {
                        changed |= !data.is_empty();
                        a.queue.append(data);
                    });
                    let f = frontier.frontier().iter().min().copied();
                    changed |= f != a.frontier;
                    a.frontier = f;
                }
                None => input.for_each(|_, _| {}),
            }
            if changed {
                h.activate();
            }
        },
    );
}

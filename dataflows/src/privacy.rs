//! Privacy: GDPR/CCPA regulations applied as exact retractions.
//!
//! A [`Regulation`] addresses a person by any identifier (`kind:value`) and
//! applies at a logical time `t` (its `at`):
//!
//! | kind | effect |
//! |---|---|
//! | `suppress` | events carrying any of the person's identifiers that arrive **after** `t` are dropped |
//! | `unsuppress` | ends every suppression whose identifiers include the one named; events arriving after `t` flow again |
//! | `delete` | every stored event of the person that arrived **at or before** `t` is retracted, and with it everything derived |
//! | `suppress_with_delete` | both |
//!
//! ## Resolution
//!
//! The person is the **profile** the identifier belongs to at time `t`
//! (identity as of `t`, including events that arrived at `t`): the
//! regulation resolves to that profile's identifiers, plus the named
//! identifier itself (so suppressing an identifier not seen yet works). The
//! resolution is *frozen* at `t`: it is computed from the identity
//! arrangements at exactly `t` and never revised, even though the profile
//! later changes (it must — the deletion empties it).
//!
//! ## Effect, within one logical time
//!
//! Each resolved identifier becomes a [`Rule`]. Rules made at `t` take
//! effect at `t + 1` (they flow back to the front of the dataflow through a
//! feedback edge that advances time by one), all at once:
//!
//! * **Delete** `{upto: t}`: every event whose *anchor* identifier (its
//!   highest-priority identifier, the one that attributes it to a profile)
//!   is one of the person's and that arrived at or before `t` is retracted at
//!   `t + 1`. The person's identity edges, identifiers, traits, computed
//!   traits and audience memberships are functions of those events, so they
//!   all retract at `t + 1`: the profile disappears and audiences emit exits.
//!   Events that arrive later are not affected (without a suppression, a
//!   person may come back as new).
//! * **Suppress** `{from: t, until}`: every event carrying *any* of the
//!   person's identifiers that arrives in `(from, until]` is dropped before
//!   anything sees it (a [`weft_operators::gate`], judged at the event's
//!   arrival time and never revisited). `unsuppress` at `u` sets `until = u`.
//!
//! Arrival time is the event's logical time: the reclocked time of a replayed
//! file, or the recorded ingestion time of a Kafka record. A restarted job
//! replays events and regulations at the same times, so suppression applies
//! identically to replayed and late events, and survives restarts as long as
//! the regulation log does.
//!
//! ## What is not removed
//!
//! An event of someone else (anchored to their identifier) that also carries
//! one of the person's identifiers on an edge the identity rules rejected
//! (a per-kind limit) is not the person's and stays. Rejected records (the
//! `errors` output) are not attributed to profiles and are not retracted.
//! Append-only destinations learn about deletions through
//! `weft_connectors::sink::Sink::erase`, with the resolved identifiers.

use std::rc::Rc;

use differential_dataflow::hashable::Hashable as _;
use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::vec::{Filter, Map};
use timely::dataflow::operators::Exchange as _;
use weft_operators::gate::Gate;

use crate::event::{parse_iso8601_ms, Event};
use crate::identity::{IdHash, Identifier, IdentityOutputs, IdentityRules};
use crate::stored::StoredEvent;

/// What a regulation asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegulationKind {
    /// Drop the person's future events.
    Suppress,
    /// End the person's suppressions.
    Unsuppress,
    /// Retract everything stored about the person.
    Delete,
    /// Both suppress and delete.
    SuppressWithDelete,
}

impl RegulationKind {
    /// Whether it deletes.
    pub fn deletes(self) -> bool {
        matches!(
            self,
            RegulationKind::Delete | RegulationKind::SuppressWithDelete
        )
    }
    /// Whether it suppresses.
    pub fn suppresses(self) -> bool {
        matches!(
            self,
            RegulationKind::Suppress | RegulationKind::SuppressWithDelete
        )
    }
    /// The name used in regulation logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RegulationKind::Suppress => "suppress",
            RegulationKind::Unsuppress => "unsuppress",
            RegulationKind::Delete => "delete",
            RegulationKind::SuppressWithDelete => "suppress_with_delete",
        }
    }
}

/// A regulation bound to the logical time it applies at.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Regulation {
    /// The request's id (from the request, else assigned by the log).
    pub id: Box<str>,
    /// What it asks for.
    pub kind: RegulationKind,
    /// Whom it addresses.
    pub identifier: Identifier,
    /// The logical time (ms) it applies at; its effects are at `at + 1`.
    pub at: u64,
}

/// A regulation request as written in a regulation log (one JSON object per line):
/// `{"type": "delete", "identifier": "email:a@b.c", "at": "2026-01-01T00:00:00Z", "id": "req-1"}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegulationRequest {
    /// `id`, when given.
    pub id: Option<String>,
    /// `type`.
    pub kind: RegulationKind,
    /// `identifier`, `kind:value`.
    pub identifier: Identifier,
    /// `at` (ISO-8601 or epoch ms), when given.
    pub at: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    #[serde(rename = "type")]
    kind: RegulationKind,
    identifier: String,
    #[serde(default)]
    at: Option<serde_json::Value>,
    #[serde(default)]
    id: Option<String>,
}

/// Parses one regulation request; the error says what is wrong.
///
/// ```
/// use weft_dataflows::privacy::{parse_regulation, RegulationKind};
/// let r = parse_regulation(r#"{"type":"delete","identifier":"email:a@b.c","at":"2026-01-01T00:00:00Z"}"#).unwrap();
/// assert_eq!(r.kind, RegulationKind::Delete);
/// assert_eq!((&*r.identifier.kind, &*r.identifier.value), ("email", "a@b.c"));
/// assert_eq!(r.at, Some(1_767_225_600_000));
/// assert!(parse_regulation(r#"{"type":"forget","identifier":"email:a@b.c"}"#).is_err());
/// assert!(parse_regulation(r#"{"type":"delete","identifier":"a@b.c"}"#).is_err());
/// ```
pub fn parse_regulation(line: &str) -> Result<RegulationRequest, String> {
    let raw: RawRequest = serde_json::from_str(line).map_err(|e| {
        format!("{e} (expected {{\"type\": \"suppress\"|\"unsuppress\"|\"delete\"|\"suppress_with_delete\", \"identifier\": \"kind:value\", \"at\"?: ISO-8601 or ms, \"id\"?: string}})")
    })?;
    let identifier = parse_identifier(&raw.identifier)?;
    let at = match raw.at {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) => Some(n.as_u64().ok_or_else(|| {
            format!("`at` must be a non-negative integer of ms or an ISO-8601 string, got {n}")
        })?),
        Some(serde_json::Value::String(s)) => Some(
            parse_iso8601_ms(&s)
                .filter(|ms| *ms >= 0)
                .ok_or_else(|| format!("`at` is not an ISO-8601 timestamp: {s:?}"))?
                as u64,
        ),
        Some(other) => {
            return Err(format!(
                "`at` must be an ISO-8601 string or ms, got {other}"
            ))
        }
    };
    if let Some(id) = &raw.id {
        if id.is_empty() || id.len() > 200 {
            return Err("`id` must be 1 to 200 characters".into());
        }
    }
    Ok(RegulationRequest {
        id: raw.id,
        kind: raw.kind,
        identifier,
        at,
    })
}

/// Parses `kind:value` (the first `:` separates them).
pub fn parse_identifier(text: &str) -> Result<Identifier, String> {
    match text.split_once(':') {
        Some((kind, value)) if !kind.is_empty() && !value.is_empty() => {
            Ok(Identifier::new(kind, value))
        }
        _ => Err(format!(
            "identifier {text:?} is not `kind:value` (e.g. `user_id:u1`, `email:a@b.c`, `anonymous_id:x`)"
        )),
    }
}

/// A rule a regulation leaves on one identifier (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Rule {
    /// Events anchored to the identifier that arrived at or before `upto` are retracted.
    Delete {
        /// The regulation's time.
        upto: u64,
    },
    /// Events carrying the identifier that arrive in `(from, until]` are dropped.
    Suppress {
        /// The suppression's time.
        from: u64,
        /// The unsuppression's time, once there is one.
        until: Option<u64>,
        /// The suppressing regulation's id (unsuppress ends all its rules).
        regulation: Box<str>,
    },
}

/// Rules by identifier hash.
pub type Rules<'s> = VecCollection<'s, u64, (IdHash, Rule), isize>;

/// A regulation resolved to one of the person's identifiers (frozen at `at`).
pub type Resolved<'s> = VecCollection<'s, u64, (Regulation, IdHash, Identifier), isize>;

/// Drops and retracts the events the accumulated `rules` cover.
///
/// `rules` must come from a feedback edge (see [`resolve`]): the rules at
/// time `t` were made by regulations before `t`.
pub fn apply_rules<'s>(
    events: VecCollection<'s, u64, Event, isize>,
    rules: Rules<'s>,
    identity_rules: Rc<IdentityRules>,
) -> VecCollection<'s, u64, Event, isize> {
    // STEP 1. Each event's identifiers, once (the first is its anchor).
    let observed = events.map(move |e| {
        let ids: Vec<IdHash> = identity_rules
            .observe(&e)
            .ids
            .iter()
            .map(|(_, h, _)| *h)
            .collect();
        (ids, e)
    });

    // STEP 2. Suppression: judged at arrival, by any identifier.
    let suppressions = rules.clone().flat_map(|(h, rule)| match rule {
        Rule::Suppress { from, until, .. } => Some((h, (from, until))),
        Rule::Delete { .. } => None,
    });
    let admitted = observed.gate(
        "Suppress",
        suppressions,
        |(ids, _): &(Vec<IdHash>, Event)| ids.clone(),
        |&(from, until): &(u64, Option<u64>), t| from < t && until.is_none_or(|u| t <= u),
    );

    // STEP 3. Deletion: retract stored events by anchor, up to the latest delete's time.
    let upto = rules
        .flat_map(|(h, rule)| match rule {
            Rule::Delete { upto } => Some((h, upto)),
            Rule::Suppress { .. } => None,
        })
        .reduce_named("DeleteUpTo", |_h, input, output| {
            if let Some(max) = input.iter().filter(|(_, r)| *r > 0).map(|(t, _)| **t).max() {
                output.push((max, 1));
            }
        });
    // Kept compressed (see `crate::stored`); `load` gives back the very
    // event admitted, so the retraction cancels it.
    // By anchor first (the arrangement's exchange then stays local): a
    // stored event never travels between processes.
    let anchored = admitted
        .clone()
        .inner
        .exchange(|((ids, _), _, _)| ids.first().map_or(0, |a| a.hashed().into()))
        .flat_map(|((ids, e), t, r)| {
            ids.first().map(|a| {
                let stored = if r > 0 {
                    StoredEvent::store(&e)
                } else {
                    StoredEvent::transient(&e)
                };
                ((*a, (t, stored)), t, r)
            })
        })
        .as_collection()
        .arrange_by_key_named("PrivacyEventsByAnchor");
    let removed = anchored.join_core(
        upto.arrange_by_key_named("PrivacyDeletes"),
        |_a, (arrived, e), upto| (*arrived <= *upto).then(|| e.load()),
    );
    admitted.map(|(_, e)| e).concat(removed.negate())
}

/// What [`resolve`] builds.
pub struct Resolution<'s> {
    /// Each suppress/delete regulation with each identifier it resolved to, at its time.
    pub resolved: Resolved<'s>,
    /// Rule changes made at each time; feed them back with a delay of one.
    pub new_rules: Rules<'s>,
}

/// Keeps only the updates at the time the record's regulation applies: the
/// resolution as of that time, never revised afterwards.
fn freeze<'s, D: timely::ExchangeData + Clone>(
    collection: VecCollection<'s, u64, D, isize>,
    at: impl Fn(&D) -> u64 + 'static,
) -> VecCollection<'s, u64, D, isize> {
    collection
        .inner
        .filter(move |(d, t, _)| *t == at(d))
        .as_collection()
}

/// Resolves regulations against identity (as of each regulation's time) and
/// turns them into rules.
pub fn resolve<'s>(
    regulations: VecCollection<'s, u64, Regulation, isize>,
    ids: &IdentityOutputs<'s>,
    rules: Rules<'s>,
) -> Resolution<'s> {
    // STEP 1. Suppress and delete: the named identifier's profile's identifiers, plus itself.
    let targets = regulations
        .clone()
        .filter(|r| r.kind != RegulationKind::Unsuppress)
        .map(|r| (r.identifier.hash(), r));
    let members = targets
        .clone()
        .arrange_by_key_named("RegulationTargets")
        .join_core(ids.profile_of.clone(), |_x, r, p| Some((*p, r.clone())))
        .arrange_by_key_named("RegulationProfiles")
        .join_core(ids.members.clone(), |_p, r, m| Some((*m, r.clone())))
        .arrange_by_key_named("RegulationMembers")
        .join_core(ids.identifiers.clone(), |m, r, ident| {
            Some((r.clone(), *m, ident.clone()))
        });
    let named = targets.map(|(x, r)| {
        let ident = r.identifier.clone();
        (r, x, ident)
    });
    let resolved = freeze(members.concat(named), |(r, _, _)| r.at).distinct();
    let made = resolved.clone().flat_map(|(r, h, _)| {
        let delete = r.kind.deletes().then_some((h, Rule::Delete { upto: r.at }));
        let suppress = r.kind.suppresses().then(|| {
            (
                h,
                Rule::Suppress {
                    from: r.at,
                    until: None,
                    regulation: r.id.clone(),
                },
            )
        });
        delete.into_iter().chain(suppress)
    });

    // STEP 2. Unsuppress: end every open suppression that covers the named identifier.
    let open = rules.flat_map(|(h, rule)| match rule {
        Rule::Suppress {
            from,
            until: None,
            regulation,
        } => Some((h, (regulation, from))),
        _ => None,
    });
    let ended = freeze(
        regulations
            .filter(|r| r.kind == RegulationKind::Unsuppress)
            .map(|r| (r.identifier.hash(), r.at))
            .arrange_by_key_named("Unsuppressions")
            .join_core(
                open.clone().arrange_by_key_named("OpenSuppressions"),
                |_x, at, (reg, _from)| Some((reg.clone(), *at)),
            ),
        |(_, at)| *at,
    )
    .distinct();
    let closes = freeze(
        ended.arrange_by_key_named("EndedSuppressions").join_core(
            open.map(|(h, (reg, from))| (reg, (h, from)))
                .arrange_by_key_named("OpenByRegulation"),
            |reg, at, (h, from)| Some((reg.clone(), *at, *h, *from)),
        ),
        |(_, at, _, _)| *at,
    );
    let closes = closes.flat_map(|(reg, at, h, from)| {
        [
            (
                (
                    h,
                    Rule::Suppress {
                        from,
                        until: None,
                        regulation: reg.clone(),
                    },
                ),
                -1,
            ),
            (
                (
                    h,
                    Rule::Suppress {
                        from,
                        until: Some(at),
                        regulation: reg,
                    },
                ),
                1,
            ),
        ]
    });
    let closes = closes
        .inner
        .map(|((d, sign), t, r)| (d, t, r * sign))
        .as_collection();
    Resolution {
        resolved,
        new_rules: made.concat(closes),
    }
}

//! The ingest dataflow: decoded source records → validated, deduplicated
//! events, rejected records and counts.
//!
//! ```text
//!   decoded (Result<Event, ErrorRecord>)
//!        │ split_results
//!        ├──► valid ──► dedupe_by_key (messageId, event-time window) ──► admit ──► events ──┐ type, track event name
//!        │      └──────────────── valid − deduplicated = dropped duplicates ───────────────┤
//!        └──► errors ────────────────────────────────────────────────────────────┤ rejection reason
//!                                                                                 └─► count ─► counts
//! ```
//!
//! Dedupe sits before anything else sees events. `admit` is the caller's
//! hook between dedupe and everything else: privacy regulations drop and
//! retract events there, so counts and every output see the result. Counts are a differential
//! `count`: when a key's count changes at time `t`, the output retracts the
//! old `(key, n)` and inserts the new one at `t`.

use differential_dataflow::VecCollection;
use weft_operators::dedupe::{DedupeByKey, DedupeConfig, DedupeStats};
use weft_operators::split::SplitResults;

use crate::event::{Event, EventType, Field};
use crate::record::{CountKey, ErrorRecord};

/// The collections a job exposes to sinks (and, later, to audiences and the Profile API).
pub struct IngestOutputs<'scope> {
    /// Validated, deduplicated events.
    pub events: VecCollection<'scope, u64, Event, isize>,
    /// Rejected records.
    pub errors: VecCollection<'scope, u64, ErrorRecord, isize>,
    /// Counts per call type, per track event name, per rejection reason, and of dropped duplicates.
    pub counts: VecCollection<'scope, u64, (CountKey, isize), isize>,
}

/// The 128-bit fingerprint dedupe keys on: xxh3-128 of the messageId.
pub fn message_fingerprint(e: &Event) -> u128 {
    xxhash_rust::xxh3::xxh3_128(e.message_id().as_bytes())
}

/// Builds the ingest dataflow over decoded source records; `dedupe` is the
/// dedupe configuration and its counters, or `None` to keep duplicates;
/// `admit` maps the deduplicated events to the events the job keeps.
pub fn ingest<'scope>(
    decoded: VecCollection<'scope, u64, Result<Event, ErrorRecord>, isize>,
    dedupe: Option<(&DedupeConfig, DedupeStats)>,
    admit: impl FnOnce(
        VecCollection<'scope, u64, Event, isize>,
    ) -> VecCollection<'scope, u64, Event, isize>,
) -> IngestOutputs<'scope> {
    let (valid, errors) = decoded.split_results("SplitValid");
    let (events, duplicates) = match dedupe {
        Some((config, stats)) => {
            let events = valid.clone().dedupe_by_key(
                "Dedupe",
                config,
                message_fingerprint,
                |e: &Event| e.time_ms,
                stats,
            );
            let dropped = valid
                .concat(events.clone().negate())
                .map(|_| CountKey::Duplicate);
            (events, Some(dropped))
        }
        None => (valid, None),
    };
    let events = admit(events);
    let event_keys = events.clone().flat_map(|e: Event| {
        let name = (e.kind == EventType::Track)
            .then(|| e.get(Field::Event).map(|n| CountKey::TrackEvent(n.into())))
            .flatten();
        std::iter::once(CountKey::Type(e.kind)).chain(name)
    });
    let error_keys = errors
        .clone()
        .map(|r: ErrorRecord| CountKey::Rejected(r.reason));
    let mut keys = event_keys.concat(error_keys);
    if let Some(d) = duplicates {
        keys = keys.concat(d);
    }
    let counts = keys.count();
    IngestOutputs {
        events,
        errors,
        counts,
    }
}

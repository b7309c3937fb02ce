//! The ingest dataflow: decoded source records → validated events, rejected
//! records and counts.
//!
//! ```text
//!   decoded (Result<Event, ErrorRecord>)
//!        │ split_results
//!        ├──────────────► events  ──┐ flat_map(type, track event name)
//!        └──────────────► errors  ──┤ map(rejection reason)
//!                                   └─► count ─► counts: (CountKey, n)
//! ```
//!
//! Counts are a differential `count`: when a key's count changes at time `t`,
//! the output retracts the old `(key, n)` and inserts the new one at `t`.

use differential_dataflow::VecCollection;
use weft_operators::split::SplitResults;

use crate::event::{Event, EventType, Field};
use crate::record::{CountKey, ErrorRecord};

/// The collections a job exposes to sinks (and, later, to audiences and the Profile API).
pub struct IngestOutputs<'scope> {
    /// Validated events.
    pub events: VecCollection<'scope, u64, Event, isize>,
    /// Rejected records.
    pub errors: VecCollection<'scope, u64, ErrorRecord, isize>,
    /// Counts per call type, per track event name and per rejection reason.
    pub counts: VecCollection<'scope, u64, (CountKey, isize), isize>,
}

/// Builds the ingest dataflow over decoded source records.
pub fn ingest<'scope>(decoded: VecCollection<'scope, u64, Result<Event, ErrorRecord>, isize>) -> IngestOutputs<'scope> {
    let (events, errors) = decoded.split_results("SplitValid");
    let event_keys = events.clone().flat_map(|e: Event| {
        let name = (e.kind == EventType::Track)
            .then(|| e.get(Field::Event).map(|n| CountKey::TrackEvent(n.into())))
            .flatten();
        std::iter::once(CountKey::Type(e.kind)).chain(name)
    });
    let error_keys = errors.clone().map(|r: ErrorRecord| CountKey::Rejected(r.reason));
    let counts = event_keys.concat(error_keys).count();
    IngestOutputs { events, errors, counts }
}

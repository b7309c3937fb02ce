//! The source seam.

use weft_dataflows::event::Event;
use weft_dataflows::record::ErrorRecord;

/// A decoded record: a validated event or the reason it was rejected.
pub type Decoded = Result<Event, ErrorRecord>;

/// What a [`SourcePart`] says after a poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Poll {
    /// More may come; nothing will be produced at a time before `lower`.
    Pending {
        /// Lower bound on the times of future records (the worker's new capability).
        lower: u64,
        /// Nothing is available right now (an unbounded source caught up): the
        /// engine polls again after a short delay instead of at once.
        idle: bool,
    },
    /// The part is exhausted (bounded sources only).
    Done,
}

/// How far a part has read, in the units of its transport (bytes for files).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartProgress {
    /// Units consumed so far.
    pub consumed: u64,
    /// Units in total, when known (bounded sources).
    pub total: Option<u64>,
    /// Records produced so far.
    pub records: u64,
}

/// The share of one source that one worker reads.
///
/// Invariants: the times a part produces never go below the `lower` bound it
/// last returned; given the same input and the same (worker, peers), a part
/// produces the same records at the same times.
pub trait SourcePart {
    /// Appends up to about `budget` decoded records with their times to `out`.
    fn poll(&mut self, out: &mut Vec<(Decoded, u64)>, budget: usize) -> Poll;
    /// Progress so far.
    fn progress(&self) -> PartProgress;
}

//! The sink seam.

use std::io;

/// A destination for one output's changes.
///
/// The engine calls [`Sink::write`] once per completed logical time, in
/// increasing time order, with consolidated `(record, diff)` pairs sorted by
/// record, and [`Sink::commit`] when the frontier advances: everything at
/// times not beyond the frontier has been written and must now be made
/// durable/visible. An empty frontier means the output is complete.
pub trait Sink<D> {
    /// Writes the changes of one time.
    fn write(&mut self, time: u64, updates: &[(D, isize)]) -> io::Result<()>;
    /// Makes everything written so far durable; `frontier` is the new lower bound of future times.
    fn commit(&mut self, frontier: &[u64]) -> io::Result<()>;
    /// A privacy DELETE took effect at `time`: remove every trace of the
    /// person with these identifiers (`kind:value`, e.g. `user_id:u1`,
    /// `email:a@b.c`) that the destination still holds from earlier writes.
    ///
    /// The retractions of the person's records arrive through [`Sink::write`]
    /// at `time` as usual (a destination that stores current state, such as
    /// a table, is clean once it applies them). Append-only destinations
    /// (change logs, data-lake files) also hold the person's *history*; they
    /// rewrite or tombstone it here. Called before `write(time, ..)`; made
    /// durable by the next `commit`. The default does nothing.
    fn erase(&mut self, time: u64, identifiers: &[String]) -> io::Result<()> {
        let _ = (time, identifiers);
        Ok(())
    }
}

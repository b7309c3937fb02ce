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
}

//! Sources and sinks for Weft.
//!
//! Every source is read through the [`source::SourcePart`] seam: the engine
//! asks each worker's part for decoded records, each bound to a logical time,
//! and for a lower bound on the times still to come (which becomes the
//! worker's capability). Every sink implements [`sink::Sink`]: it receives
//! consolidated changes one completed time at a time, in time order, and is
//! told when to commit.
//!
//! Transport (files, later Kafka and HTTP) is kept apart from format (JSON
//! lines → [`weft_dataflows::event`]).

#![forbid(missing_docs)]

pub mod collect;
pub mod file_sink;
pub mod file_source;
pub mod kafka;
pub mod lake;
pub mod regulations;
pub mod sink;
pub mod source;
pub mod warehouse;
pub mod webhook;

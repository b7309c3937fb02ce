//! Customer-data semantics for Weft, built from `weft-operators`.
//!
//! - [`event`]: the Segment event model, parsing and validation;
//! - [`spec`]: the job spec (TOML);
//! - [`record`]: records that travel between dataflows and sinks (errors, counts)
//!   and their JSON encodings;
//! - [`ingest`]: the first job dataflow: validated / rejected split and counts.
//! - [`stored`]: events at rest, compressed (the state that keeps events);
//! - [`identity`]: identity resolution: identifiers → profiles under rules, merges, splits, traits.
//!
//! This crate has no I/O beyond reading a spec file, and never links librdkafka.

#![forbid(missing_docs)]

pub mod audience;
pub mod chain;
pub mod event;
pub mod identity;
pub mod ingest;
pub mod privacy;
pub mod query;
pub mod record;
pub mod spec;
pub mod stored;

//! The Weft runtime and the `weft` command.
//!
//! - [`runtime`]: the embedded cluster, its command stream and job registry;
//! - [`job`]: building one job's dataflow on a worker;
//! - [`run`]: `weft run` / `weft validate`, progress display and summaries;
//! - [`api`]: the HTTP APIs of a cluster (control, metrics) and a client of
//!   the control API.

#![forbid(missing_docs)]

pub mod api;
pub mod arrangements;
pub mod audit;
pub mod collect;
pub mod definitions;
pub mod hub;
pub mod job;
pub mod profile_index;
pub mod run;
pub mod runtime;
pub mod views;

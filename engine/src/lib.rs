//! The Weft runtime and the `weft` command.
//!
//! - [`runtime`]: the embedded cluster, its command stream and job registry;
//! - [`job`]: building one job's dataflow on a worker;
//! - [`run`]: `weft run` / `weft validate`, progress display and summaries.

#![forbid(missing_docs)]

pub mod audit;
pub mod job;
pub mod run;
pub mod runtime;

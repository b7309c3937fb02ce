//! Weft benchmark harness and event generator.

pub mod cost;
pub mod gen;
pub mod kafka;

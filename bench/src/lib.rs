//! Weft benchmark harness and event generator.

pub mod gen;

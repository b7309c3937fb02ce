//! Weft benchmark harness and event generator.

//! Shared helpers for Weft end-to-end tests.

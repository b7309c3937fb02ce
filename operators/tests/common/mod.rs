//! Helpers shared by the operator oracles.

/// The seeds an oracle runs: `default`, or the one seed in the environment
/// variable `var` (to rerun a failure).
pub fn seeds(var: &str, default: std::ops::Range<u64>) -> Vec<u64> {
    match std::env::var(var) {
        Ok(s) => vec![s.parse().unwrap_or_else(|_| panic!("{var} is a number"))],
        Err(_) => default.collect(),
    }
}

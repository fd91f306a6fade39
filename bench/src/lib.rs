//! Shared helpers for the benchmark binaries in `src/bin/`.

use std::time::Duration;

use serde_json::{Value, json};

/// A `usize` from the environment (the benchmarks' size knobs), or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The `q` quantile (0..=1) of `samples`, nearest rank. `samples` must not be empty.
pub fn pct(samples: &[f64], q: f64) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    s[((q * s.len() as f64) as usize).min(s.len() - 1)]
}

/// `{p50, p90, p99, n}` of `samples`.
pub fn summary(samples: &[f64]) -> Value {
    json!({"p50": pct(samples, 0.5), "p90": pct(samples, 0.9), "p99": pct(samples, 0.99), "n": samples.len()})
}

/// A duration in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

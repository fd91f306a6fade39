//! The conformance check of a box's live metrics: sane values, or a loud refusal.

use super::{CheckOutcome, ensure, expect_kind};
use crate::{BoxMetrics, CodeBox, ErrorKind, METRIC_FIELDS};

/// A running box's sample is sane: every used amount within its limit where both are known,
/// at least one process, CPU use neither negative nor past what its CPUs allow, and
/// `unavailable` naming exactly the fields without a value, by known names. A backend without
/// metrics (see [`Capabilities::metrics`](crate::Capabilities)) refuses loudly.
pub(super) async fn metrics_sane(b: &dyn CodeBox) -> CheckOutcome {
    if !b.capabilities().metrics {
        expect_kind(b.metrics().await.map(|_| ()), ErrorKind::Unsupported, "metrics")?;
        return Ok("metrics unsupported".into());
    }
    let first = b.metrics().await.map_err(|e| format!("metrics() failed: {e}"))?;
    check_sample(&first)?;
    let second = b.metrics().await.map_err(|e| format!("a second metrics() failed: {e}"))?;
    check_sample(&second)?;
    ensure(second.timestamp_ms >= first.timestamp_ms, || {
        format!("samples go back in time: {} then {}", first.timestamp_ms, second.timestamp_ms)
    })?;
    Ok(if first.unavailable.is_empty() {
        "every field measured".to_owned()
    } else {
        format!("unavailable: {}", first.unavailable.join(", "))
    })
}

fn check_sample(m: &BoxMetrics) -> CheckOutcome {
    ensure(!m.final_sample, || format!("a running box's sample is marked final: {m:?}"))?;
    ensure(m.timestamp_ms > 0, || "the sample has no timestamp".into())?;
    for name in &m.unavailable {
        ensure(METRIC_FIELDS.contains(&name.as_str()), || format!("unavailable names an unknown field {name:?}"))?;
    }
    let mut expected = m.clone();
    expected.mark_unavailable();
    ensure(expected.unavailable == m.unavailable, || {
        format!("unavailable is {:?}, but the fields without a value are {:?}", m.unavailable, expected.unavailable)
    })?;
    let within = |used: Option<u64>, limit: Option<u64>, what: &str| {
        ensure(used.zip(limit).is_none_or(|(u, l)| u <= l), || {
            format!("{what}: used {used:?} past its limit {limit:?}")
        })
    };
    within(m.memory_used_bytes, m.memory_limit_bytes, "memory")?;
    within(m.disk_used_bytes, m.disk_limit_bytes, "disk")?;
    ensure(m.processes.is_none_or(|p| p >= 1), || "a running box has no process".into())?;
    ensure(m.cpu_count.is_none_or(|c| c >= 1), || "the box may use no CPU".into())?;
    if let Some(pct) = m.cpu_percent {
        // A sample over a short window can overshoot a little: the clock and the counter
        // are read at slightly different moments.
        let most = f64::from(m.cpu_count.unwrap_or(u32::MAX)) * 100.0 * 1.5;
        ensure(pct.is_finite() && pct >= 0.0 && pct <= most, || format!("cpu_percent {pct} out of range"))?;
    }
    Ok(String::new())
}

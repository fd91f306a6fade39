//! When to retry and how long to wait.
//!
//! A refusal (429, 503) is waited out for as long as the server asks with `Retry-After`,
//! given in seconds or as an HTTP date, for requests that may be repeated: idempotent ones,
//! session creation and other requests the server refused before doing anything. An
//! execution is never repeated, refused or not.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use codebox_core::{CodeBoxError, TimeoutKind};

use super::config::RetryPolicy;
use super::request::Retry;

/// What is known about how a failed attempt went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// The request never reached the server (no connection).
    No,
    /// It may have reached the server.
    Maybe,
}

/// Whether a failed attempt may be repeated under `retry`.
pub(crate) fn should_retry(retry: Retry, err: &CodeBoxError, sent: Sent) -> bool {
    let status = err.http().map(|h| h.status);
    match retry {
        Retry::Never => false,
        Retry::OnRefusal => sent == Sent::No || matches!(status, Some(429 | 503)),
        Retry::Idempotent => {
            matches!(status, Some(429 | 502 | 503 | 504))
                || matches!(err, CodeBoxError::Connection { .. })
                || matches!(err, CodeBoxError::Timeout { kind: TimeoutKind::Connect, .. })
        }
    }
}

/// How long to wait before retry number `attempt` (from 0), or `None` when the server asked
/// for a longer wait than the policy allows.
pub(crate) fn delay(policy: &RetryPolicy, attempt: u32, err: &CodeBoxError) -> Option<Duration> {
    if let Some(after) = asked_wait(err, SystemTime::now()) {
        return (after <= policy.max_retry_after).then_some(after);
    }
    let base = policy.initial_backoff.saturating_mul(2u32.saturating_pow(attempt.min(20))).min(policy.max_backoff);
    // Full jitter over the upper half: between base/2 and base.
    let half = base / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    let jitter = if nanos == 0 { 0 } else { random() % (nanos + 1) };
    Some(half + Duration::from_nanos(jitter))
}

/// The wait the server asked for, if it did: `Retry-After` in seconds (or the error body's
/// `retry_after`), else `Retry-After` as an HTTP date (RFC 9110 allows both), counted from
/// `now`; a date already past means at once.
fn asked_wait(err: &CodeBoxError, now: SystemTime) -> Option<Duration> {
    err.retry_after().or_else(|| {
        let http = err.http()?;
        let (_, value) = http.headers.iter().find(|(name, _)| name.eq_ignore_ascii_case("retry-after"))?;
        let at = httpdate::parse_http_date(value.trim()).ok()?;
        Some(at.duration_since(now).unwrap_or_default())
    })
}

/// A random number from the standard library's randomly keyed hasher.
fn random() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use codebox_core::HttpError;

    fn status(code: u16) -> CodeBoxError {
        HttpError::new(code, "x").into()
    }

    #[test]
    fn executions_are_never_retried() {
        for err in [status(502), status(503), status(429), CodeBoxError::connection("x")] {
            assert!(!should_retry(Retry::Never, &err, Sent::No));
            assert!(!should_retry(Retry::Never, &err, Sent::Maybe));
        }
    }

    #[test]
    fn refusals_and_idempotent_failures_are_retried() {
        assert!(should_retry(Retry::OnRefusal, &status(429), Sent::Maybe));
        assert!(should_retry(Retry::OnRefusal, &status(503), Sent::Maybe));
        assert!(!should_retry(Retry::OnRefusal, &status(502), Sent::Maybe));
        assert!(should_retry(Retry::Idempotent, &status(502), Sent::Maybe));
        assert!(should_retry(Retry::Idempotent, &status(504), Sent::Maybe));
        assert!(!should_retry(Retry::Idempotent, &status(500), Sent::Maybe));
        assert!(!should_retry(Retry::Idempotent, &status(404), Sent::Maybe));
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let policy = RetryPolicy::default().with_backoff(Duration::from_millis(100), Duration::from_millis(400));
        let conn = CodeBoxError::connection("x");
        for attempt in 0..6 {
            let base = Duration::from_millis(100 * (1 << attempt.min(2)));
            let d = delay(&policy, attempt, &conn).unwrap();
            assert!(d >= base / 2 && d <= base, "attempt {attempt}: {d:?} not in [{:?}, {base:?}]", base / 2);
        }
    }

    #[test]
    fn retry_after_replaces_backoff_within_the_cap() {
        let policy = RetryPolicy::default().with_max_retry_after(Duration::from_secs(5));
        let mut http = HttpError::new(429, "slow down");
        http.retry_after = Some(Duration::from_secs(2));
        assert_eq!(delay(&policy, 0, &http.clone().into()), Some(Duration::from_secs(2)));
        http.retry_after = Some(Duration::from_secs(30));
        assert_eq!(delay(&policy, 0, &http.into()), None);
    }

    #[test]
    fn retry_after_as_an_http_date_is_a_wait_from_now() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let refusal = |date: SystemTime| {
            let mut http = HttpError::new(429, "slow down");
            http.headers.push(("Retry-After".into(), httpdate::fmt_http_date(date)));
            CodeBoxError::from(http)
        };
        assert_eq!(asked_wait(&refusal(now + Duration::from_secs(3)), now), Some(Duration::from_secs(3)));
        assert_eq!(asked_wait(&refusal(now - Duration::from_secs(3)), now), Some(Duration::ZERO), "already past");
        let mut garbled = HttpError::new(503, "busy");
        garbled.headers.push(("retry-after".into(), "soon".into()));
        assert_eq!(asked_wait(&garbled.into(), now), None, "unreadable: the backoff applies");
        let far = refusal(SystemTime::now() + Duration::from_secs(3600));
        assert_eq!(delay(&RetryPolicy::default(), 0, &far), None, "longer than max_retry_after");
    }
}

//! Per-key request rates: a token bucket for each API key (`governor`), checked before a
//! request does any work, so that one key cannot take the server's time from the others.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

use codebox_core::ErrorKind;
use codebox_http::server::ApiError;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::auth::Owner;

/// The request rate of every key: one bucket per key, none at all when the limit is off.
pub(crate) struct RequestRates {
    buckets: HashMap<Owner, DefaultDirectRateLimiter>,
    clock: DefaultClock,
    per_second: u32,
    burst: u32,
}

impl std::fmt::Debug for RequestRates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestRates")
            .field("keys", &self.buckets.len())
            .field("per_second", &self.per_second)
            .field("burst", &self.burst)
            .finish()
    }
}

impl RequestRates {
    /// `per_second` requests a second with bursts of `burst` for each of `owners` (no limit
    /// when `per_second` is 0). The owners are known at start, so the buckets are made once
    /// and a request never takes a lock to find its own.
    pub(crate) fn new(per_second: u32, burst: u32, owners: impl IntoIterator<Item = Owner>) -> Self {
        let quota = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
            Quota::per_second(rate).allow_burst(burst)
        });
        let buckets = match quota {
            Some(quota) => owners.into_iter().map(|owner| (owner, RateLimiter::direct(quota))).collect(),
            None => HashMap::new(),
        };
        Self { buckets, clock: DefaultClock::default(), per_second, burst }
    }

    /// Take one request from `owner`'s bucket, or the 429 `rate_limited` error saying when
    /// the next one is allowed (`Retry-After` in whole seconds, at least 1).
    pub(crate) fn check(&self, owner: Owner) -> Result<(), ApiError> {
        let Some(bucket) = self.buckets.get(&owner) else { return Ok(()) };
        bucket.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            let message = format!(
                "this API key is over its rate of {} requests per second (bursts of {}); retry after {secs} s",
                self.per_second, self.burst
            );
            ApiError::new(429, ErrorKind::RateLimited, message).with_retry_after(Duration::from_secs(secs))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_refused_with_a_whole_second_retry_after() {
        let (a, b) = (Owner::from_index(0), Owner::from_index(1));
        // One a second: the burst is spent long before the next token could arrive.
        let rates = RequestRates::new(1, 3, [a, b]);
        for _ in 0..3 {
            rates.check(a).unwrap();
        }
        let err = rates.check(a).unwrap_err();
        assert_eq!((err.status, err.kind), (429, ErrorKind::RateLimited));
        assert_eq!(err.retry_after, Some(Duration::from_secs(1)));
        assert!(err.message.contains("1 requests per second"), "{}", err.message);
        rates.check(b).expect("each key has its own bucket");
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let a = Owner::from_index(0);
        let rates = RequestRates::new(0, 0, [a]);
        for _ in 0..1000 {
            rates.check(a).unwrap();
        }
    }
}

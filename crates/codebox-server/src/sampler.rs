//! The sessions' live metrics over time: one task samples every session's box each
//! `metrics_interval` into a bounded ring per session, which `GET /v1/sessions/{id}/metrics`
//! reads. Not to be confused with `metrics`, the server's own counters behind `/metrics`.
//!
//! A ring belongs to one session (checked by identity, so a later session of the same id
//! starts empty) and is dropped when its session leaves the registry. When a box stops or
//! dies, its last sample is marked final and kept while the session is listed.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use codebox_core::{BoxMetrics, BoxState, ErrorKind, Result};
use futures::StreamExt;

use crate::sessions::Session;
use crate::state::AppState;

/// Samples kept per session: an hour at the default interval of 5 s.
pub(crate) const RING_CAPACITY: usize = 720;

/// How many boxes are measured at once: a box's first sample waits a short window.
const CONCURRENT_SAMPLES: usize = 8;

/// One session's samples, oldest first.
#[derive(Debug)]
struct Ring {
    session: Weak<Session>,
    samples: VecDeque<BoxMetrics>,
}

impl Ring {
    fn push(&mut self, sample: BoxMetrics) {
        if self.samples.len() == RING_CAPACITY {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    /// Mark the newest sample final: the box stopped.
    fn finish(&mut self) {
        if let Some(last) = self.samples.back_mut() {
            last.final_sample = true;
        }
    }
}

/// Every session's ring, keyed by the session's address and checked against a weak handle
/// to it (an address reused by a later session finds a handle that is gone).
#[derive(Debug, Default)]
pub(crate) struct MetricsRings {
    rings: Mutex<HashMap<usize, Ring>>,
}

fn key(session: &Arc<Session>) -> usize {
    Arc::as_ptr(session) as usize
}

impl MetricsRings {
    fn lock(&self) -> MutexGuard<'_, HashMap<usize, Ring>> {
        self.rings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run `f` on `session`'s ring, made empty for a session seen for the first time.
    fn with_ring<T>(&self, session: &Arc<Session>, f: impl FnOnce(&mut Ring) -> T) -> T {
        let mut rings = self.lock();
        if !rings.contains_key(&key(session)) {
            // Rings only grow here: forget those of sessions that are gone, even when no
            // sampler runs to prune them.
            rings.retain(|_, r| r.session.strong_count() > 0);
        }
        let ring = rings
            .entry(key(session))
            .or_insert_with(|| Ring { session: Arc::downgrade(session), samples: VecDeque::new() });
        if !ring.session.ptr_eq(&Arc::downgrade(session)) || ring.session.strong_count() == 0 {
            *ring = Ring { session: Arc::downgrade(session), samples: VecDeque::new() };
        }
        f(ring)
    }

    /// Keep a sample of `session`.
    pub(crate) fn push(&self, session: &Arc<Session>, sample: BoxMetrics) {
        self.with_ring(session, |r| r.push(sample));
    }

    /// The box of `session` stopped: its newest sample is its last.
    fn finish(&self, session: &Arc<Session>) {
        self.with_ring(session, Ring::finish);
    }

    /// The newest sample of `session`, if any.
    pub(crate) fn latest(&self, session: &Arc<Session>) -> Option<BoxMetrics> {
        self.with_ring(session, |r| r.samples.back().cloned())
    }

    /// The samples of `session` taken after `since_ms` (Unix milliseconds), oldest first.
    pub(crate) fn since(&self, session: &Arc<Session>, since_ms: u64) -> Vec<BoxMetrics> {
        self.with_ring(session, |r| r.samples.iter().filter(|s| s.timestamp_ms > since_ms).cloned().collect())
    }

    /// Forget the rings of sessions that are gone.
    fn prune(&self) {
        self.lock().retain(|_, r| r.session.strong_count() > 0);
    }
}

/// Measure `session`'s box now and keep the sample; a box that stopped has its newest
/// sample marked final and the error returned.
pub(crate) async fn measure(rings: &MetricsRings, session: &Arc<Session>) -> Result<BoxMetrics> {
    match session.codebox.metrics().await {
        Ok(sample) => {
            rings.push(session, sample.clone());
            Ok(sample)
        }
        Err(e) => {
            if e.kind() == ErrorKind::NotRunning {
                rings.finish(session);
            }
            Err(e)
        }
    }
}

/// Whether the box of `session` has stopped or died (and so will give no newer sample).
pub(crate) async fn has_stopped(session: &Session) -> bool {
    session.codebox.status().await.is_ok_and(|s| matches!(s.state, BoxState::Stopped | BoxState::Dead))
}

/// Sample every session that measures itself, every `interval`, until the server ends.
/// One task for all sessions: per-session tasks would cost a timer each.
pub(crate) async fn run(state: Arc<AppState>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let sessions: Vec<Arc<Session>> =
            state.registry.all().into_iter().filter(|s| s.codebox.capabilities().metrics).collect();
        futures::stream::iter(sessions)
            .for_each_concurrent(CONCURRENT_SAMPLES, |session| {
                let rings = &state.metrics_rings;
                async move {
                    if let Err(e) = measure(rings, &session).await
                        && e.kind() != ErrorKind::NotRunning
                    {
                        tracing::debug!(session = %session.id, error = %e, "sampling a box failed");
                    }
                }
            })
            .await;
        state.metrics_rings.prune();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_is_bounded_and_marks_its_last_sample_final() {
        let mut ring = Ring { session: Weak::new(), samples: VecDeque::new() };
        for t in 0..(RING_CAPACITY as u64 + 5) {
            ring.push(BoxMetrics::new(t));
        }
        assert_eq!(ring.samples.len(), RING_CAPACITY);
        assert_eq!(ring.samples.front().map(|s| s.timestamp_ms), Some(5));
        ring.finish();
        assert!(ring.samples.back().is_some_and(|s| s.final_sample));
        assert!(!ring.samples[0].final_sample);
    }
}

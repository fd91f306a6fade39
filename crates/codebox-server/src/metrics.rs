//! Counters for `/metrics`, rendered in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use codebox_core::{ErrorKind, Outcome};

/// Upper bounds of the execution duration histogram, in seconds.
const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0, 300.0];

/// How an execution ended, as far as the server is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExecutionEnd {
    /// The box sent its end event.
    Finished(Outcome),
    /// The box failed (the stream's last line was an error).
    Failed,
    /// The client went away first; the execution was cancelled.
    Disconnected,
}

impl ExecutionEnd {
    fn label(self) -> &'static str {
        match self {
            Self::Finished(Outcome::Ok) => "ok",
            Self::Finished(Outcome::Error) => "error",
            Self::Finished(Outcome::Interrupted) => "interrupted",
            Self::Finished(Outcome::TimedOut) => "timed_out",
            Self::Finished(_) => "other",
            Self::Failed => "failed",
            Self::Disconnected => "disconnected",
        }
    }
}

/// The server's counters. Cheap to update from any task.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    sessions_created: AtomicU64,
    sessions_reaped: AtomicU64,
    sessions_rejected: AtomicU64,
    executions_running: AtomicU64,
    executions: Mutex<BTreeMap<&'static str, u64>>,
    duration_buckets: [AtomicU64; BUCKETS.len()],
    duration_count: AtomicU64,
    duration_sum_us: AtomicU64,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    responses: Mutex<BTreeMap<u16, u64>>,
    bytes_uploaded: AtomicU64,
    bytes_downloaded: AtomicU64,
}

fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K) {
    *map.lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_default() += 1;
}

impl Metrics {
    pub(crate) fn session_created(&self) {
        self.sessions_created.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn session_reaped(&self) {
        self.sessions_reaped.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn session_rejected(&self) {
        self.sessions_rejected.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn execution_started(&self) {
        self.executions_running.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn execution_ended(&self, end: ExecutionEnd, elapsed: Duration) {
        self.executions_running.fetch_sub(1, Ordering::Relaxed);
        bump(&self.executions, end.label());
        let secs = elapsed.as_secs_f64();
        for (bound, count) in BUCKETS.iter().zip(&self.duration_buckets) {
            if secs <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.duration_count.fetch_add(1, Ordering::Relaxed);
        self.duration_sum_us.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// Count an error answered to a client.
    pub(crate) fn error(&self, kind: ErrorKind) {
        bump(&self.errors, kind.as_str());
    }

    pub(crate) fn response(&self, status: u16) {
        bump(&self.responses, status);
    }

    pub(crate) fn uploaded(&self, bytes: u64) {
        self.bytes_uploaded.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn downloaded(&self, bytes: u64) {
        self.bytes_downloaded.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The Prometheus text exposition. `sessions` is the number of live sessions.
    pub(crate) fn render(&self, sessions: usize) -> String {
        let mut out = String::with_capacity(4096);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let one = |v: u64| vec![(String::new(), v.to_string())];
        metric("codebox_sessions", "gauge", "Sessions alive or starting.", &one(sessions as u64));
        metric("codebox_sessions_created_total", "counter", "Sessions started.", &one(load(&self.sessions_created)));
        metric(
            "codebox_sessions_reaped_total",
            "counter",
            "Sessions stopped for being idle.",
            &one(load(&self.sessions_reaped)),
        );
        metric(
            "codebox_sessions_rejected_total",
            "counter",
            "Session creations refused because the server was full.",
            &one(load(&self.sessions_rejected)),
        );
        metric("codebox_executions_running", "gauge", "Executions in progress.", &one(load(&self.executions_running)));
        let by_outcome: Vec<(String, String)> = self
            .executions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (format!("{{outcome=\"{k}\"}}"), v.to_string()))
            .collect();
        metric("codebox_executions_total", "counter", "Finished executions by outcome.", &by_outcome);
        let mut hist: Vec<(String, String)> = BUCKETS
            .iter()
            .zip(&self.duration_buckets)
            .map(|(b, c)| (format!("_bucket{{le=\"{b}\"}}"), load(c).to_string()))
            .collect();
        let count = load(&self.duration_count);
        hist.push(("_bucket{le=\"+Inf\"}".into(), count.to_string()));
        hist.push(("_sum".into(), format!("{}", load(&self.duration_sum_us) as f64 / 1e6)));
        hist.push(("_count".into(), count.to_string()));
        metric("codebox_execution_duration_seconds", "histogram", "Execution wall time seen by the server.", &hist);
        let errors: Vec<(String, String)> = self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (format!("{{kind=\"{k}\"}}"), v.to_string()))
            .collect();
        metric("codebox_errors_total", "counter", "Error responses and stream errors by kind.", &errors);
        let responses: Vec<(String, String)> = self
            .responses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (format!("{{status=\"{k}\"}}"), v.to_string()))
            .collect();
        metric("codebox_http_responses_total", "counter", "HTTP responses by status.", &responses);
        let bytes = vec![
            ("{direction=\"upload\"}".to_string(), load(&self.bytes_uploaded).to_string()),
            ("{direction=\"download\"}".to_string(), load(&self.bytes_downloaded).to_string()),
        ];
        metric("codebox_file_bytes_total", "counter", "File bytes moved through the server.", &bytes);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.execution_started();
        m.execution_ended(ExecutionEnd::Finished(Outcome::Ok), Duration::from_millis(3));
        m.error(ErrorKind::NotFound);
        m.uploaded(10);
        let text = m.render(2);
        assert!(text.contains("codebox_sessions 2\n"), "{text}");
        assert!(text.contains("codebox_executions_total{outcome=\"ok\"} 1\n"), "{text}");
        assert!(text.contains("codebox_execution_duration_seconds_bucket{le=\"0.005\"} 1\n"), "{text}");
        assert!(text.contains("codebox_execution_duration_seconds_bucket{le=\"0.001\"} 0\n"), "{text}");
        assert!(text.contains("codebox_errors_total{kind=\"not_found\"} 1\n"), "{text}");
        assert!(text.contains("codebox_file_bytes_total{direction=\"upload\"} 10\n"), "{text}");
        assert!(text.contains("codebox_executions_running 0\n"), "{text}");
    }
}

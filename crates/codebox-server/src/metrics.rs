//! Counters for `/metrics`, kept and rendered (OpenMetrics text) by `prometheus-client`.

use std::fmt::Write as _;
use std::time::Duration;

use codebox_core::{ErrorKind, Outcome};
use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The media type of [`Metrics::render`]'s output.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the execution duration histogram, in seconds.
const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0, 300.0];

/// A label value, escaped as the text format requires: prometheus-client writes label values
/// as given, and one with a `"`, `\` or newline would break the exposition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Label(&'static str);

impl EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// One label: its name and value.
type Labels = [(&'static str, Label); 1];

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
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    sessions: Gauge,
    sessions_created: Counter,
    sessions_reaped: Counter,
    sessions_rejected: Counter,
    requests_rate_limited: Counter,
    executions_running: Gauge,
    executions: Family<Labels, Counter>,
    duration: Histogram,
    errors: Family<Labels, Counter>,
    responses: Family<[(&'static str, u16); 1], Counter>,
    file_bytes: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let metrics = Self {
            registry: Registry::default(),
            sessions: Gauge::default(),
            sessions_created: Counter::default(),
            sessions_reaped: Counter::default(),
            sessions_rejected: Counter::default(),
            requests_rate_limited: Counter::default(),
            executions_running: Gauge::default(),
            executions: Family::default(),
            duration: Histogram::new(BUCKETS),
            errors: Family::default(),
            responses: Family::default(),
            file_bytes: Family::default(),
        };
        // Both directions show from the start, as zero.
        for direction in ["upload", "download"] {
            metrics.file_bytes.get_or_create(&[("direction", Label(direction))]).inc_by(0);
        }
        let mut registry = Registry::default();
        // Counters are registered without `_total` and help texts without their full stop:
        // the encoder adds both.
        registry.register("codebox_sessions", "Sessions alive or starting", metrics.sessions.clone());
        registry.register("codebox_sessions_created", "Sessions started", metrics.sessions_created.clone());
        registry.register(
            "codebox_sessions_reaped",
            "Sessions stopped for being idle",
            metrics.sessions_reaped.clone(),
        );
        registry.register(
            "codebox_sessions_rejected",
            "Session creations refused because the server was full",
            metrics.sessions_rejected.clone(),
        );
        registry.register(
            "codebox_requests_rate_limited",
            "Requests refused because their key was over its request rate",
            metrics.requests_rate_limited.clone(),
        );
        registry.register("codebox_executions_running", "Executions in progress", metrics.executions_running.clone());
        registry.register("codebox_executions", "Finished executions by outcome", metrics.executions.clone());
        registry.register(
            "codebox_execution_duration_seconds",
            "Execution wall time seen by the server",
            metrics.duration.clone(),
        );
        registry.register("codebox_errors", "Error responses and stream errors by kind", metrics.errors.clone());
        registry.register("codebox_http_responses", "HTTP responses by status", metrics.responses.clone());
        registry.register("codebox_file_bytes", "File bytes moved through the server", metrics.file_bytes.clone());
        Self { registry, ..metrics }
    }
}

impl Metrics {
    pub(crate) fn session_created(&self) {
        self.sessions_created.inc();
    }

    pub(crate) fn session_reaped(&self) {
        self.sessions_reaped.inc();
    }

    pub(crate) fn session_rejected(&self) {
        self.sessions_rejected.inc();
    }

    /// A request refused for its key's request rate.
    pub(crate) fn request_rate_limited(&self) {
        self.requests_rate_limited.inc();
    }

    pub(crate) fn execution_started(&self) {
        self.executions_running.inc();
    }

    pub(crate) fn execution_ended(&self, end: ExecutionEnd, elapsed: Duration) {
        self.executions_running.dec();
        self.executions.get_or_create(&[("outcome", Label(end.label()))]).inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// Count an error answered to a client.
    pub(crate) fn error(&self, kind: ErrorKind) {
        self.errors.get_or_create(&[("kind", Label(kind.as_str()))]).inc();
    }

    pub(crate) fn response(&self, status: u16) {
        self.responses.get_or_create(&[("status", status)]).inc();
    }

    pub(crate) fn uploaded(&self, bytes: u64) {
        self.file_bytes.get_or_create(&[("direction", Label("upload"))]).inc_by(bytes);
    }

    pub(crate) fn downloaded(&self, bytes: u64) {
        self.file_bytes.get_or_create(&[("direction", Label("download"))]).inc_by(bytes);
    }

    /// The OpenMetrics text exposition ([`CONTENT_TYPE`]). `sessions` is the number of live
    /// sessions.
    pub(crate) fn render(&self, sessions: usize) -> String {
        self.sessions.set(i64::try_from(sessions).unwrap_or(i64::MAX));
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
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

    #[test]
    fn label_values_are_escaped() {
        let family = Family::<Labels, Counter>::default();
        family.get_or_create(&[("kind", Label("a\"b\\c\nd"))]).inc();
        let mut registry = Registry::default();
        registry.register("odd", "Odd labels", family);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("odd_total{kind=\"a\\\"b\\\\c\\nd\"} 1\n"), "{text}");
    }
}

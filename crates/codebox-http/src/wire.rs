//! The JSON shapes of the native API (`/v1`), shared by client and server.
//!
//! Long file: every route's shapes stay in one place, so client and server read one contract.

use std::collections::BTreeMap;
use std::time::Duration;

use codebox_core::{
    BoxMetrics, BoxStatus, Capabilities, CodeBoxError, ContextInfo, ErrorKind, ExecEvent, ExecutionRecord, HttpError,
    KernelDeath, PackageInfo, ProcessEvent, ProcessInfo, ProcessSignal, ResourceLimits, RunOptions, TimeoutKind,
};
use serde::{Deserialize, Serialize};

/// The path prefix of the native API.
pub const API_PREFIX: &str = "/v1";

/// The media type of an execution stream.
pub const NDJSON: &str = "application/x-ndjson";

/// `POST /v1/sessions`. Every field may be left out: the server's defaults apply.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateSession {
    /// Use this id (attach if this key already has a session with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// A template of the server's catalogue (`GET /v1/templates`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// The kernel to start, when not the template's or the server's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// The language to run (`python`, `javascript`, ...), for the server to pick a template by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// Environment variables of every execution and command in the box.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The caller's own labels, echoed in [`SessionInfo`] and usable as listing filters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Resource limits, each at most the server's maximum (unset: the server's default).
    #[serde(default, skip_serializing_if = "ResourceLimits::is_empty")]
    pub limits: ResourceLimits,
    /// The session's lifetime in seconds: it is stopped this long after creation (see
    /// `POST /v1/sessions/{id}/timeout`). At most the server's maximum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// Seconds without use after which the session is stopped; at most the server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<u64>,
    /// Pause the session when it idles out (`true`) or stop it (`false`), whatever the
    /// server's `--on-idle` says; pausing needs a server with a state directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_pause: Option<bool>,
}

/// `POST /v1/sessions/{id}/timeout`: the session now lives until `timeout` seconds from now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetTimeout {
    /// Seconds from now.
    pub timeout: u64,
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SessionState {
    /// Its box is being started.
    Starting,
    /// Its box is up and takes requests.
    #[default]
    Running,
    /// It was stopped (deleted, idle or past its lifetime).
    Stopped,
    /// Its box failed and does not take requests.
    Error,
    /// Its box's state is on the server's disk and nothing of it runs: any request to it
    /// resumes it (or `POST /v1/sessions/{id}/resume`).
    Paused,
    /// A state this client does not know, from a newer server.
    #[serde(other)]
    Unknown,
}

impl SessionState {
    /// The name on the wire (`running`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Stopped => "stopped",
            Self::Error => "error",
            Self::Paused => "paused",
            Self::Unknown => "unknown",
        }
    }

    /// The state named `name`, when it is one a caller may filter by.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Starting, Self::Running, Self::Stopped, Self::Error, Self::Paused]
            .into_iter()
            .find(|s| s.as_str() == name)
    }
}

impl std::fmt::Display for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A session as the server describes it. Fields after `last_used_at` came later: a reader
/// takes their defaults when an older server leaves them out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SessionInfo {
    /// The session id.
    pub id: String,
    /// The box's status, with the isolation it really got and its gaps.
    pub status: BoxStatus,
    /// What the box can do.
    pub capabilities: Capabilities,
    /// When it was created, in Unix seconds.
    pub created_at: f64,
    /// When it was last used, in Unix seconds.
    pub last_used_at: f64,
    /// The fingerprint of the key that owns it (the first 12 hexadecimal digits of the key's
    /// SHA-256), shown to operator keys only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Where the session is in its life.
    #[serde(default)]
    pub state: SessionState,
    /// The template it was made from, when it asked for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// The kernel it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// The language it runs, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// The caller's labels, as given at creation.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The names of the environment variables given at creation (values may be secrets and
    /// are never reported).
    #[serde(default)]
    pub env_keys: Vec<String>,
    /// The limits in force: those asked for, the server's defaults for the rest.
    #[serde(default)]
    pub limits: ResourceLimits,
    /// Its lifetime in seconds, as last set (`None`: it lives until it idles out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// Seconds without use after which it is stopped (0: unknown, from an older server).
    #[serde(default)]
    pub idle_timeout: u64,
    /// When it will be stopped for its lifetime, in Unix seconds (`None`: no lifetime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<f64>,
    /// A paused session's snapshot size on the server's disk, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
}

impl SessionInfo {
    /// A running session `id` with this status and these capabilities, created and last used
    /// at the epoch; the other fields empty.
    pub fn new(id: impl Into<String>, status: BoxStatus, capabilities: Capabilities) -> Self {
        Self {
            id: id.into(),
            status,
            capabilities,
            created_at: 0.0,
            last_used_at: 0.0,
            owner: None,
            state: SessionState::Running,
            template: None,
            kernel: None,
            language: None,
            metadata: BTreeMap::new(),
            env_keys: Vec::new(),
            limits: ResourceLimits::default(),
            timeout: None,
            idle_timeout: 0,
            expires_at: None,
            disk_bytes: None,
        }
    }
}

/// The answer of `POST /v1/sessions/{id}/resume`: the session, running again, and what came
/// back of it (what did not, by name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResumeResponse {
    /// The session.
    pub session: SessionInfo,
    /// What came back.
    pub report: codebox_core::ResumeReport,
}

/// The response header of `GET /v1/sessions` that carries the next page's token.
pub const NEXT_TOKEN_HEADER: &str = "x-next-token";

/// `POST /v1/sessions/{id}/execute`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecuteRequest {
    /// The code to run.
    pub code: String,
    /// Per-execution options.
    #[serde(default)]
    pub options: RunOptions,
}

/// `POST /v1/sessions/{id}/rename`: move a file or directory within the box.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameRequest {
    /// The path to move, relative to the box's working directory.
    pub from: String,
    /// Where it goes; its parent must exist, and a directory there is never overwritten.
    pub to: String,
}

/// `POST /v1/sessions/{id}/install`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallRequest {
    /// Package specifications as pip takes them.
    pub packages: Vec<String>,
}

/// The answer to an install.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallResponse {
    /// The installer's output.
    pub output: String,
}

/// The packages of a session's environment, its own installs first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackagesResponse {
    /// The session's own installs first, then by name.
    pub packages: Vec<PackageInfo>,
}

/// The newest executions of a session, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryResponse {
    /// Newest first, at most the `limit` asked for.
    pub executions: Vec<ExecutionRecord>,
}

/// How many executions `GET /v1/sessions/{id}/history` gives without a `limit`.
pub const DEFAULT_HISTORY_LIMIT: usize = 100;
/// The largest `limit` that `GET /v1/sessions/{id}/history` accepts.
pub const MAX_HISTORY_LIMIT: usize = 10_000;

/// `POST /v1/sessions/{id}/contexts`: make a code context (answered with 201 and its
/// [`ContextInfo`]). Both fields may be left out; unknown fields are refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateContext {
    /// The language its kernel runs: one the session's kernel runs (unset: the session's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// Its starting directory, relative to the session's working directory (unset: that one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// `GET /v1/sessions/{id}/contexts`: the session's code contexts, the default one first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextsResponse {
    /// The default context (the session's own kernel) first.
    pub contexts: Vec<ContextInfo>,
}

/// A session's live metrics samples newer than a moment (`GET /v1/sessions/{id}/metrics?since=`).
/// Without `since` the route answers one [`BoxMetrics`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsSeries {
    /// Oldest first; the server keeps a bounded number per session.
    pub samples: Vec<BoxMetrics>,
}

/// One line of an execution stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StreamLine {
    /// An execution event with its sequence number.
    Event {
        /// Counts from 0 with no gaps.
        seq: u64,
        /// The event.
        event: ExecEvent,
    },
    /// The box failed; the stream ends after this line.
    Error {
        /// Continues the event numbering.
        seq: u64,
        /// What failed.
        error: ErrorBody,
    },
    /// Sent during silence; carries nothing.
    Keepalive {
        /// Always true.
        keepalive: bool,
    },
}

/// One line of a background process's stream (`POST /v1/sessions/{id}/processes`, and
/// `GET /v1/sessions/{id}/processes/{pid}` to follow it again): framed like [`StreamLine`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ProcessLine {
    /// A process event with its sequence number.
    Event {
        /// Counts from 0 with no gaps, in each stream.
        seq: u64,
        /// The event.
        event: ProcessEvent,
    },
    /// The box failed; the stream ends after this line.
    Error {
        /// Continues the event numbering.
        seq: u64,
        /// What failed.
        error: ErrorBody,
    },
    /// Sent during silence; carries nothing.
    Keepalive {
        /// Always true.
        keepalive: bool,
    },
}

/// `GET /v1/sessions/{id}/processes`: the background processes the session runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessesResponse {
    /// Each running process, by id.
    pub processes: Vec<ProcessInfo>,
}

/// `POST /v1/sessions/{id}/processes/{pid}/signal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalRequest {
    /// `SIGTERM`, `SIGKILL` or `SIGINT`.
    pub signal: ProcessSignal,
}

/// The `error` object of every JSON error response and of a stream's error line.
///
/// `kind` and `message` are always there; the other fields only when the error has them,
/// so that a client can rebuild the error a box gave (see [`ErrorDetail`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ErrorBody {
    /// The category.
    pub kind: ErrorKind,
    /// A human-readable message.
    pub message: String,
    /// Seconds to wait before trying again, when the server says (a JSON error response
    /// also sends it as `Retry-After`; a stream's error line has only this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<f64>,
    /// For `kernel_died`: how the kernel died.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<KernelDeath>,
    /// For `timeout` from a box: which deadline passed (`execution`, `kernel_start`,
    /// `transfer` or `operation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<TimeoutKind>,
    /// For `timeout` from a box: the deadline in seconds, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<f64>,
    /// For `timeout` from a box: whether the kernel was killed and restarted, so its
    /// variables are gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_lost: Option<bool>,
}

/// A JSON error response: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// The error.
    pub error: ErrorBody,
}

/// What an error says beyond its kind and message, carried over HTTP so that a client
/// gets back the same [`CodeBoxError`] variant a box in its own process would give.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ErrorDetail {
    /// The kernel died ([`CodeBoxError::KernelDied`]).
    KernelDied {
        /// How it died.
        cause: KernelDeath,
    },
    /// A deadline of the box passed ([`CodeBoxError::Timeout`]).
    Timeout {
        /// Which deadline.
        kind: TimeoutKind,
        /// The deadline, when known.
        after: Option<Duration>,
        /// The kernel was killed and restarted, so its variables are gone.
        state_lost: bool,
    },
}

impl ErrorDetail {
    /// The detail of `err`, when it has one worth carrying.
    ///
    /// A timeout of a connection (connect, request, read) is not carried: it was a
    /// deadline of the server's own connection, and a client that took it for its own
    /// would retry.
    pub fn of(err: &CodeBoxError) -> Option<Self> {
        match err {
            CodeBoxError::KernelDied { cause, .. } => Some(Self::KernelDied { cause: cause.clone() }),
            CodeBoxError::Timeout { kind, after, state_lost, .. }
                if !matches!(kind, TimeoutKind::Connect | TimeoutKind::Request | TimeoutKind::Read) =>
            {
                Some(Self::Timeout { kind: *kind, after: *after, state_lost: *state_lost })
            }
            _ => None,
        }
    }

    /// The error this detail stands for: the variant a box in this process gives.
    pub fn into_error(self) -> CodeBoxError {
        match self {
            Self::KernelDied { cause } => CodeBoxError::kernel_died(cause),
            Self::Timeout { kind, after, state_lost: false } => CodeBoxError::timeout(kind, after),
            Self::Timeout { kind, after, state_lost: true } => CodeBoxError::timeout_state_lost(kind, after),
        }
    }

    /// The kind of error this detail belongs to.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::KernelDied { .. } => ErrorKind::KernelDied,
            Self::Timeout { .. } => ErrorKind::Timeout,
        }
    }
}

impl ErrorBody {
    /// An error body with only a kind and a message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after: None,
            cause: None,
            timeout: None,
            after: None,
            state_lost: None,
        }
    }

    /// The wire form of an error, with its retry delay and detail.
    pub fn from_error(err: &CodeBoxError) -> Self {
        Self::new(err.kind(), err.to_string()).with_retry_after(err.retry_after()).with_detail(ErrorDetail::of(err))
    }

    /// This body saying how long to wait before trying again.
    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.retry_after = retry_after.map(|d| d.as_secs_f64());
        self
    }

    /// This body carrying `detail`'s fields.
    pub fn with_detail(mut self, detail: Option<ErrorDetail>) -> Self {
        match detail {
            Some(ErrorDetail::KernelDied { cause }) => self.cause = Some(cause),
            Some(ErrorDetail::Timeout { kind, after, state_lost }) => {
                self.timeout = Some(kind);
                self.after = after.map(|d| d.as_secs_f64());
                self.state_lost = Some(state_lost);
            }
            None => {}
        }
        self
    }

    /// The detail the body carries, when its fields fit its kind.
    pub fn detail(&self) -> Option<ErrorDetail> {
        match self.kind {
            ErrorKind::KernelDied => self.cause.clone().map(|cause| ErrorDetail::KernelDied { cause }),
            ErrorKind::Timeout => self.timeout.map(|kind| ErrorDetail::Timeout {
                kind,
                after: self.after.and_then(seconds),
                state_lost: self.state_lost.unwrap_or(false),
            }),
            _ => None,
        }
    }

    /// The retry delay the body carries.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after.and_then(seconds)
    }

    /// The HTTP status a server answers with for this kind of error.
    pub fn status(&self) -> u16 {
        status_for_kind(self.kind)
    }
}

/// Seconds from the wire as a duration, when they are a sane one.
fn seconds(secs: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(secs).ok()
}

/// The HTTP status that fits an error kind.
pub fn status_for_kind(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::InvalidInput | ErrorKind::UnsafePath | ErrorKind::Protocol | ErrorKind::Install => 400,
        ErrorKind::Authentication => 401,
        ErrorKind::NotFound => 404,
        ErrorKind::Timeout => 504,
        ErrorKind::NotRunning => 409,
        ErrorKind::TooLarge => 413,
        ErrorKind::SessionLost | ErrorKind::Expired => 410,
        ErrorKind::RateLimited => 429,
        ErrorKind::Unsupported => 501,
        ErrorKind::Connection => 502,
        ErrorKind::StorageFull => 507,
        _ => 500,
    }
}

/// Rebuild a client-side error from a failure response.
///
/// `body` is the raw response body. When it is a JSON error response with a typed detail
/// (a kernel's death, a box's timeout), the result is that variant
/// ([`CodeBoxError::KernelDied`], [`CodeBoxError::Timeout`]), as a box in this process
/// would give it. Otherwise it is [`CodeBoxError::Http`]: with the body's kind and message
/// when it is a JSON error response, and the JSON attached either way.
pub fn error_from_response(status: u16, headers: Vec<(String, String)>, body: &[u8]) -> CodeBoxError {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let parsed = json.as_ref().and_then(|j| serde_json::from_value::<ErrorResponse>(j.clone()).ok());
    if let Some(detail) = parsed.as_ref().and_then(|r| r.error.detail()) {
        return detail.into_error();
    }
    let retry_after = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
        .and_then(|(_, v)| v.trim().parse::<f64>().ok())
        .and_then(seconds)
        .or_else(|| parsed.as_ref().and_then(|r| r.error.retry_after()));
    let (kind, message) = match parsed {
        Some(r) => (r.error.kind, r.error.message),
        None => {
            (HttpError::kind_for_status(status), String::from_utf8_lossy(&body[..body.len().min(2048)]).into_owned())
        }
    };
    let headers = headers
        .into_iter()
        .filter(|(k, _)| !matches!(k.to_ascii_lowercase().as_str(), "authorization" | "cookie" | "set-cookie"))
        .collect();
    CodeBoxError::Http(Box::new(HttpError { status, kind, message, body: json, headers, retry_after }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use codebox_core::Outcome;

    /// Every kind goes out with its status and comes back as the same kind, from the JSON
    /// body or, without one, from the status alone.
    #[test]
    fn kinds_and_statuses_round_trip() {
        for (kind, status) in [
            (ErrorKind::NotFound, 404),
            (ErrorKind::SessionLost, 410),
            (ErrorKind::TooLarge, 413),
            (ErrorKind::RateLimited, 429),
            (ErrorKind::Unsupported, 501),
            (ErrorKind::StorageFull, 507),
        ] {
            assert_eq!(status_for_kind(kind), status);
            let body = serde_json::json!({"error": {"kind": kind, "message": "m"}}).to_string();
            assert_eq!(error_from_response(status, vec![], body.as_bytes()).kind(), kind);
            assert_eq!(error_from_response(status, vec![], b"not json").kind(), kind);
        }
    }

    /// An expired session shares 410 with a lost one; only the JSON body tells them apart.
    #[test]
    fn an_expired_session_is_gone_with_its_own_kind() {
        assert_eq!(status_for_kind(ErrorKind::Expired), 410);
        let body = br#"{"error":{"kind":"expired","message":"session a expired at 2026-01-01T00:00:00Z"}}"#;
        assert_eq!(error_from_response(410, vec![], body).kind(), ErrorKind::Expired);
    }

    /// What an older server sends still reads, and a state this client does not know yet
    /// reads as `unknown`.
    #[test]
    fn session_info_reads_old_and_new_shapes() {
        let full = SessionInfo::new("a", BoxStatus::new(codebox_core::BoxState::Idle), Capabilities::full(["python"]));
        let mut old = serde_json::to_value(&full).unwrap();
        old.as_object_mut()
            .unwrap()
            .retain(|k, _| matches!(k.as_str(), "id" | "status" | "capabilities" | "created_at" | "last_used_at"));
        let info: SessionInfo = serde_json::from_value(old.clone()).unwrap();
        assert_eq!(info, full);
        old["state"] = "hibernating".into();
        let info: SessionInfo = serde_json::from_value(old.clone()).unwrap();
        assert_eq!(info.state, SessionState::Unknown);
        old["state"] = "paused".into();
        let info: SessionInfo = serde_json::from_value(old).unwrap();
        assert_eq!(info.state, SessionState::Paused);
        assert_eq!(SessionState::parse("stopped"), Some(SessionState::Stopped));
        assert_eq!(SessionState::parse("unknown"), None);
    }

    #[test]
    fn stream_lines_parse_in_all_three_forms() {
        let ev: StreamLine = serde_json::from_str(r#"{"seq":0,"event":{"type":"stdout","text":"hi"}}"#).unwrap();
        assert_eq!(ev, StreamLine::Event { seq: 0, event: ExecEvent::stdout("hi") });
        let ka: StreamLine = serde_json::from_str(r#"{"keepalive":true}"#).unwrap();
        assert_eq!(ka, StreamLine::Keepalive { keepalive: true });
        let err: StreamLine =
            serde_json::from_str(r#"{"seq":3,"error":{"kind":"kernel_died","message":"boom"}}"#).unwrap();
        assert!(matches!(err, StreamLine::Error { seq: 3, error: ErrorBody { kind: ErrorKind::KernelDied, .. } }));
        let end = StreamLine::Event { seq: 1, event: ExecEvent::end(Some(1), Duration::from_millis(2), Outcome::Ok) };
        let back: StreamLine = serde_json::from_str(&serde_json::to_string(&end).unwrap()).unwrap();
        assert_eq!(back, end);
    }

    /// An end line with artifacts parses, and so does one without (an older server's); an
    /// execute body carries `save_images` only when set.
    #[test]
    fn end_lines_carry_artifacts_and_execute_bodies_save_images() {
        let line = r#"{"seq":2,"event":{"type":"end","duration_ms":1.0,"outcome":"ok",
            "artifacts":[{"path":"out/a.csv","size":3,"modified":1.5,"change":"created"}],"artifacts_truncated":true}}"#;
        let StreamLine::Event { event: ExecEvent::End { artifacts, artifacts_truncated, .. }, .. } =
            serde_json::from_str(line).unwrap()
        else {
            panic!("not an end event")
        };
        assert_eq!((artifacts[0].path.as_str(), artifacts[0].size, artifacts_truncated), ("out/a.csv", 3, true));
        let older = r#"{"seq":2,"event":{"type":"end","duration_ms":1.0,"outcome":"ok"}}"#;
        let StreamLine::Event { event: ExecEvent::End { artifacts, .. }, .. } = serde_json::from_str(older).unwrap()
        else {
            panic!("not an end event")
        };
        assert!(artifacts.is_empty());
        let plain = ExecuteRequest { code: "1".into(), options: RunOptions::new() };
        assert_eq!(serde_json::to_value(&plain).unwrap(), serde_json::json!({"code": "1", "options": {}}));
        let saving = ExecuteRequest { code: "1".into(), options: RunOptions::new().with_save_images(true) };
        let json = serde_json::to_value(&saving).unwrap();
        assert_eq!(json["options"]["save_images"], true);
        assert_eq!(serde_json::from_value::<ExecuteRequest>(json).unwrap(), saving);
    }

    /// What a box in this process gives, a client gets back from the wire: the body of a
    /// JSON error response turns back into the same variant, not into `Http`.
    #[test]
    fn typed_detail_round_trips_to_the_same_variant() {
        let died = CodeBoxError::kernel_died(KernelDeath::Signaled { signal: 9 });
        let lost = CodeBoxError::timeout_state_lost(TimeoutKind::Execution, Some(Duration::from_millis(500)));
        let kept = CodeBoxError::timeout(TimeoutKind::KernelStart, None);
        for err in [died, lost, kept] {
            let body = ErrorBody::from_error(&err);
            let json = serde_json::to_vec(&ErrorResponse { error: body.clone() }).unwrap();
            let back = error_from_response(body.status(), vec![], &json);
            assert!(back.http().is_none(), "{back:?}");
            assert_eq!(back.to_string(), err.to_string());
            match (&back, &err) {
                (CodeBoxError::KernelDied { cause: a, .. }, CodeBoxError::KernelDied { cause: b, .. }) => {
                    assert_eq!(a, b)
                }
                (
                    CodeBoxError::Timeout { kind: k1, after: a1, state_lost: s1, .. },
                    CodeBoxError::Timeout { kind: k2, after: a2, state_lost: s2, .. },
                ) => assert_eq!((k1, a1, s1), (k2, a2, s2)),
                _ => panic!("{err:?} came back as {back:?}"),
            }
        }
    }

    #[test]
    fn the_wire_names_the_detail_fields() {
        let lost = CodeBoxError::timeout_state_lost(TimeoutKind::Execution, Some(Duration::from_secs(2)));
        let json = serde_json::to_value(ErrorBody::from_error(&lost)).unwrap();
        assert_eq!(json["kind"], "timeout");
        assert_eq!(json["timeout"], "execution");
        assert_eq!(json["after"], 2.0);
        assert_eq!(json["state_lost"], true);
        let died = CodeBoxError::kernel_died(KernelDeath::Exited { code: 3 });
        let json = serde_json::to_value(ErrorBody::from_error(&died)).unwrap();
        assert_eq!(json["cause"], serde_json::json!({"type": "exited", "code": 3}));
        // Without detail, only kind and message: what older clients and servers send.
        let plain = serde_json::to_value(ErrorBody::from_error(&CodeBoxError::not_found("x"))).unwrap();
        assert_eq!(plain.as_object().unwrap().len(), 2, "{plain}");
    }

    #[test]
    fn a_timeout_of_the_servers_own_connection_stays_an_http_error() {
        // The server's read deadline passed, not the client's: typed, the client would take
        // it for its own and retry.
        let read = CodeBoxError::timeout(TimeoutKind::Read, Some(Duration::from_secs(1)));
        assert_eq!(ErrorDetail::of(&read), None);
        let json = serde_json::to_vec(&ErrorResponse { error: ErrorBody::from_error(&read) }).unwrap();
        let back = error_from_response(504, vec![], &json);
        assert_eq!((back.http().map(|h| h.status), back.kind()), (Some(504), ErrorKind::Timeout));
        // A detail whose fields do not fit the kind is not trusted.
        let odd = br#"{"error":{"kind":"not_found","message":"m","cause":{"type":"out_of_memory"}}}"#;
        assert_eq!(error_from_response(404, vec![], odd).kind(), ErrorKind::NotFound);
    }

    #[test]
    fn a_retry_delay_in_the_body_counts_when_no_header_says_one() {
        let body = br#"{"error":{"kind":"rate_limited","message":"full","retry_after":2.5}}"#;
        let err = error_from_response(503, vec![], body);
        assert_eq!(err.retry_after(), Some(Duration::from_millis(2500)));
        let err = error_from_response(503, vec![("retry-after".into(), "4".into())], body);
        assert_eq!(err.retry_after(), Some(Duration::from_secs(4)), "the header wins");
    }

    #[test]
    fn failure_responses_keep_status_body_and_headers() {
        let body = br#"{"error":{"kind":"not_found","message":"no session abc"}}"#;
        let err = error_from_response(
            404,
            vec![("x-request-id".into(), "r1".into()), ("set-cookie".into(), "secret".into())],
            body,
        );
        assert_eq!(err.kind(), ErrorKind::NotFound);
        let http = err.http().unwrap();
        assert_eq!(http.status, 404);
        assert_eq!(http.body.as_ref().unwrap()["error"]["message"], "no session abc");
        assert_eq!(http.headers, vec![("x-request-id".to_string(), "r1".to_string())]);

        let err = error_from_response(429, vec![("Retry-After".into(), "2".into())], b"slow down");
        assert_eq!(err.kind(), ErrorKind::RateLimited);
        assert_eq!(err.retry_after(), Some(Duration::from_secs(2)));
        assert!(err.is_retryable());
    }
}

//! The one error type that crosses every crate boundary.

use std::fmt;
use std::time::Duration;

/// A `Result` whose error is [`CodeBoxError`].
pub type Result<T, E = CodeBoxError> = std::result::Result<T, E>;

/// Why a box failed.
///
/// A Python exception raised by user code is not a `CodeBoxError`: it comes back as
/// [`ErrorInfo`](crate::ErrorInfo) inside a successful [`Execution`](crate::Execution).
/// Use [`kind`](Self::kind) to branch on the category; it is the same whether the failure
/// happened in this process or on a server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodeBoxError {
    /// A server answered a request of this client with a failure status.
    ///
    /// Only an HTTP client builds this (`codebox-http`'s client, `wire::error_from_response`):
    /// a server answers from its own error type, and a failure the server reports with a
    /// typed detail (a kernel's death, an execution timeout) comes back as that variant
    /// instead.
    #[error("{0}")]
    Http(Box<HttpError>),
    /// The API key was missing or not accepted.
    #[error("authentication failed: {message}")]
    #[non_exhaustive]
    Authentication {
        /// What the server or client said.
        message: String,
    },
    /// A session, file or kernel does not exist.
    #[error("not found: {what}")]
    #[non_exhaustive]
    NotFound {
        /// What was looked for.
        what: String,
    },
    /// Too many requests or sessions; try again later.
    #[error("rate limited{}", fmt_retry_after(*retry_after))]
    #[non_exhaustive]
    RateLimited {
        /// How long the server asked the caller to wait.
        retry_after: Option<Duration>,
    },
    /// Something took longer than allowed.
    #[error("{kind} timed out{}{}", fmt_after(*after), if *state_lost { "; the kernel was restarted and its state was lost" } else { "" })]
    #[non_exhaustive]
    Timeout {
        /// Which deadline passed.
        kind: TimeoutKind,
        /// The deadline, when known.
        after: Option<Duration>,
        /// The kernel ignored the interrupt and was killed, so variables are gone.
        state_lost: bool,
    },
    /// A connection could not be made or was cut.
    #[error("connection failed: {message}")]
    #[non_exhaustive]
    Connection {
        /// What failed.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<BoxedSource>,
    },
    /// The kernel process died (OOM kill, `os._exit`, segfault, ...).
    #[error("kernel died: {cause}")]
    #[non_exhaustive]
    KernelDied {
        /// How it died.
        cause: KernelDeath,
    },
    /// A kernel could not be started.
    #[error("kernel failed to start: {message}")]
    #[non_exhaustive]
    KernelStart {
        /// What went wrong, with the tail of the kernel's stderr when there is one.
        message: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<BoxedSource>,
    },
    /// The backend cannot do this operation.
    #[error("unsupported by this box: {operation}")]
    #[non_exhaustive]
    Unsupported {
        /// The operation that was asked for.
        operation: String,
    },
    /// The request was malformed or refers to something invalid.
    #[error("invalid input: {message}")]
    #[non_exhaustive]
    InvalidInput {
        /// What is wrong.
        message: String,
        /// The underlying error, when there is one (a parse error, say).
        #[source]
        source: Option<BoxedSource>,
    },
    /// A path was refused because it could lead outside the box.
    #[error("unsafe path {path:?}: {reason}")]
    #[non_exhaustive]
    UnsafePath {
        /// The path as given.
        path: String,
        /// Why it was refused.
        reason: String,
    },
    /// A package installation failed.
    #[error("install failed:\n{output}")]
    #[non_exhaustive]
    Install {
        /// The installer's combined output.
        output: String,
    },
    /// The box is not running (never started, or stopped).
    #[error("box is not running: {message}")]
    #[non_exhaustive]
    NotRunning {
        /// Detail.
        message: String,
    },
    /// The peer spoke the protocol wrongly (malformed JSON, a cut stream, an unexpected reply).
    #[error("protocol error: {message}")]
    #[non_exhaustive]
    Protocol {
        /// What was wrong.
        message: String,
        /// The underlying error, when there is one (a JSON error, say).
        #[source]
        source: Option<BoxedSource>,
    },
    /// A local I/O failure.
    #[error("I/O error: {context}: {source}")]
    #[non_exhaustive]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Something was larger than a limit allows: a request body, a directory listing, an
    /// argument list.
    #[error("too large: {message}")]
    #[non_exhaustive]
    TooLarge {
        /// What was too large, and the limit.
        message: String,
    },
}

/// The cause kept inside a [`CodeBoxError`].
pub type BoxedSource = Box<dyn std::error::Error + Send + Sync>;

/// The category of a [`CodeBoxError`], stable across local and remote boxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// See [`CodeBoxError::Authentication`].
    Authentication,
    /// See [`CodeBoxError::NotFound`].
    NotFound,
    /// See [`CodeBoxError::RateLimited`].
    RateLimited,
    /// See [`CodeBoxError::Timeout`].
    Timeout,
    /// See [`CodeBoxError::Connection`].
    Connection,
    /// See [`CodeBoxError::KernelDied`].
    KernelDied,
    /// See [`CodeBoxError::KernelStart`].
    KernelStart,
    /// See [`CodeBoxError::Unsupported`].
    Unsupported,
    /// See [`CodeBoxError::InvalidInput`].
    InvalidInput,
    /// See [`CodeBoxError::UnsafePath`].
    UnsafePath,
    /// See [`CodeBoxError::Install`].
    Install,
    /// See [`CodeBoxError::NotRunning`].
    NotRunning,
    /// See [`CodeBoxError::Protocol`].
    Protocol,
    /// See [`CodeBoxError::Io`].
    Io,
    /// A request payload exceeded a size limit (HTTP 413).
    TooLarge,
    /// The session existed but was lost, with its kernel and files, when its server
    /// restarted (HTTP 410): create a new one.
    SessionLost,
    /// The session reached the end of its lifetime and was stopped (HTTP 410): create a
    /// new one, or extend a session's lifetime before it ends.
    Expired,
    /// The storage behind the box is full (no space left, or a quota reached): HTTP 507.
    /// What was being written is incomplete; free space or write less.
    StorageFull,
    /// The server failed in a way that has no better category.
    Server,
}

impl ErrorKind {
    /// The snake_case name used on the wire, e.g. `"not_found"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Authentication => "authentication",
            Self::NotFound => "not_found",
            Self::RateLimited => "rate_limited",
            Self::Timeout => "timeout",
            Self::Connection => "connection",
            Self::KernelDied => "kernel_died",
            Self::KernelStart => "kernel_start",
            Self::Unsupported => "unsupported",
            Self::InvalidInput => "invalid_input",
            Self::UnsafePath => "unsafe_path",
            Self::Install => "install",
            Self::NotRunning => "not_running",
            Self::Protocol => "protocol",
            Self::Io => "io",
            Self::TooLarge => "too_large",
            Self::SessionLost => "session_lost",
            Self::Expired => "expired",
            Self::StorageFull => "storage_full",
            Self::Server => "server",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which deadline passed in a [`CodeBoxError::Timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TimeoutKind {
    /// Opening a connection.
    Connect,
    /// A whole HTTP request.
    Request,
    /// Waiting for the next bytes of a response.
    Read,
    /// Running user code.
    Execution,
    /// Starting a kernel.
    KernelStart,
    /// Sending or receiving an upload or download body.
    Transfer,
    /// Any other operation.
    Operation,
}

impl fmt::Display for TimeoutKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connect => "connect",
            Self::Request => "request",
            Self::Read => "read",
            Self::Execution => "execution",
            Self::KernelStart => "kernel start",
            Self::Transfer => "transfer",
            Self::Operation => "operation",
        })
    }
}

/// How a kernel died.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum KernelDeath {
    /// The process exited with this code.
    Exited {
        /// Exit code.
        code: i32,
    },
    /// The process was killed by this signal.
    Signaled {
        /// Signal number.
        signal: i32,
    },
    /// The process was killed for exceeding its memory limit.
    OutOfMemory,
    /// The kernel sent one message larger than the box allows, and was recycled before
    /// the message reached its client.
    OutputLimitExceeded {
        /// Bytes of the message, as the kernel announced them.
        size: u64,
        /// The largest message the box accepts.
        limit: u64,
    },
    /// The kernel stopped answering, or the cause is not known.
    Unknown {
        /// What is known.
        detail: String,
    },
}

impl fmt::Display for KernelDeath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exited { code } => write!(f, "exited with code {code}"),
            Self::Signaled { signal } => write!(f, "killed by signal {signal}{}", signal_name(*signal)),
            Self::OutOfMemory => f.write_str("killed for running out of memory"),
            Self::OutputLimitExceeded { size, limit } => write!(
                f,
                "was recycled for exceeding the output limit: it sent one message of {size} bytes, over the \
                 {limit}-byte message limit"
            ),
            Self::Unknown { detail } => f.write_str(detail),
        }
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        6 => " (SIGABRT)",
        9 => " (SIGKILL)",
        11 => " (SIGSEGV)",
        15 => " (SIGTERM)",
        _ => "",
    }
}

/// A failure status from an HTTP server, with everything the server sent back.
///
/// `headers` never hold credentials (the HTTP client drops them), so `Debug` may show all of it.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpError {
    /// The HTTP status code.
    pub status: u16,
    /// The category, from the server's error body when it sent one, else from the status.
    pub kind: ErrorKind,
    /// A human-readable message.
    pub message: String,
    /// The JSON body, when the body was JSON.
    pub body: Option<serde_json::Value>,
    /// The response headers, with credentials removed.
    pub headers: Vec<(String, String)>,
    /// `Retry-After`, when the server sent one.
    pub retry_after: Option<Duration>,
}

impl HttpError {
    /// An error for `status` with the kind derived from the status code.
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            kind: Self::kind_for_status(status),
            message: message.into(),
            body: None,
            headers: Vec::new(),
            retry_after: None,
        }
    }

    /// The category that a bare status code implies.
    pub fn kind_for_status(status: u16) -> ErrorKind {
        match status {
            400 | 405 | 415 | 422 => ErrorKind::InvalidInput,
            401 | 403 => ErrorKind::Authentication,
            404 => ErrorKind::NotFound,
            410 => ErrorKind::SessionLost,
            408 | 504 => ErrorKind::Timeout,
            413 => ErrorKind::TooLarge,
            429 => ErrorKind::RateLimited,
            501 => ErrorKind::Unsupported,
            507 => ErrorKind::StorageFull,
            502 | 503 => ErrorKind::Connection,
            _ => ErrorKind::Server,
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {} ({}): {}", self.status, self.kind, self.message)
    }
}

impl CodeBoxError {
    /// The category of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Http(e) => e.kind,
            Self::Authentication { .. } => ErrorKind::Authentication,
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::RateLimited { .. } => ErrorKind::RateLimited,
            Self::Timeout { .. } => ErrorKind::Timeout,
            Self::Connection { .. } => ErrorKind::Connection,
            Self::KernelDied { .. } => ErrorKind::KernelDied,
            Self::KernelStart { .. } => ErrorKind::KernelStart,
            Self::Unsupported { .. } => ErrorKind::Unsupported,
            Self::InvalidInput { .. } => ErrorKind::InvalidInput,
            Self::UnsafePath { .. } => ErrorKind::UnsafePath,
            Self::Install { .. } => ErrorKind::Install,
            Self::NotRunning { .. } => ErrorKind::NotRunning,
            Self::Protocol { .. } => ErrorKind::Protocol,
            Self::Io { source, .. } => io_kind(source),
            Self::TooLarge { .. } => ErrorKind::TooLarge,
        }
    }

    /// Whether repeating the same request may succeed.
    ///
    /// True for connection failures, rate limiting, connect and read timeouts, and the
    /// HTTP statuses 502, 503 and 504. Never true for an execution timeout: running code
    /// twice is not safe.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Http(e) => matches!(e.status, 429 | 502 | 503 | 504),
            Self::Connection { .. } | Self::RateLimited { .. } => true,
            Self::Timeout { kind, .. } => matches!(kind, TimeoutKind::Connect | TimeoutKind::Read),
            _ => false,
        }
    }

    /// How long to wait before retrying, when the server said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Http(e) => e.retry_after,
            Self::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }

    /// The HTTP details, when this error came from an HTTP response.
    pub fn http(&self) -> Option<&HttpError> {
        match self {
            Self::Http(e) => Some(e),
            _ => None,
        }
    }

    /// An [`Io`](Self::Io) error with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }

    /// An [`InvalidInput`](Self::InvalidInput) error.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidInput { message: message.into(), source: None }
    }

    /// An [`Unsupported`](Self::Unsupported) error for `operation`.
    pub fn unsupported(operation: impl Into<String>) -> Self {
        Self::Unsupported { operation: operation.into() }
    }

    /// A [`Protocol`](Self::Protocol) error.
    pub fn protocol(message: impl Into<String>) -> Self {
        Self::Protocol { message: message.into(), source: None }
    }

    /// A [`NotFound`](Self::NotFound) error.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::NotFound { what: what.into() }
    }

    /// An [`Authentication`](Self::Authentication) error.
    pub fn authentication(message: impl Into<String>) -> Self {
        Self::Authentication { message: message.into() }
    }

    /// A [`RateLimited`](Self::RateLimited) error, with how long to wait when known.
    pub fn rate_limited(retry_after: Option<Duration>) -> Self {
        Self::RateLimited { retry_after }
    }

    /// A [`Timeout`](Self::Timeout) of `kind` after `after`, with the box's state kept.
    pub fn timeout(kind: TimeoutKind, after: Option<Duration>) -> Self {
        Self::Timeout { kind, after, state_lost: false }
    }

    /// A [`Timeout`](Self::Timeout) of `kind` after which the kernel was killed and
    /// restarted, so its variables are gone.
    pub fn timeout_state_lost(kind: TimeoutKind, after: Option<Duration>) -> Self {
        Self::Timeout { kind, after, state_lost: true }
    }

    /// A [`Connection`](Self::Connection) error (see [`with_source`](Self::with_source)).
    pub fn connection(message: impl Into<String>) -> Self {
        Self::Connection { message: message.into(), source: None }
    }

    /// A [`KernelDied`](Self::KernelDied) error.
    pub fn kernel_died(cause: KernelDeath) -> Self {
        Self::KernelDied { cause }
    }

    /// A [`KernelStart`](Self::KernelStart) error (see [`with_source`](Self::with_source)).
    pub fn kernel_start(message: impl Into<String>) -> Self {
        Self::KernelStart { message: message.into(), source: None }
    }

    /// An [`UnsafePath`](Self::UnsafePath) error for `path`.
    pub fn unsafe_path(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::UnsafePath { path: path.into(), reason: reason.into() }
    }

    /// An [`Install`](Self::Install) error with the installer's output.
    pub fn install(output: impl Into<String>) -> Self {
        Self::Install { output: output.into() }
    }

    /// A [`NotRunning`](Self::NotRunning) error.
    pub fn not_running(message: impl Into<String>) -> Self {
        Self::NotRunning { message: message.into() }
    }

    /// A [`TooLarge`](Self::TooLarge) error.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::TooLarge { message: message.into() }
    }

    /// This error with `cause` kept as its [`source`](std::error::Error::source).
    ///
    /// Only the variants that carry a cause keep it: [`Connection`](Self::Connection),
    /// [`KernelStart`](Self::KernelStart), [`InvalidInput`](Self::InvalidInput) and
    /// [`Protocol`](Self::Protocol). The others, whose category says all (or, for
    /// [`Io`](Self::Io), whose cause is already required), are returned unchanged.
    pub fn with_source(mut self, cause: impl Into<BoxedSource>) -> Self {
        match &mut self {
            Self::Connection { source, .. }
            | Self::KernelStart { source, .. }
            | Self::InvalidInput { source, .. }
            | Self::Protocol { source, .. } => *source = Some(cause.into()),
            _ => {}
        }
        self
    }
}

impl From<HttpError> for CodeBoxError {
    fn from(e: HttpError) -> Self {
        Self::Http(Box::new(e))
    }
}

/// The category of a local I/O failure: a full disk or quota is the caller's to fix (write
/// less, free space), not a server fault, and a file over the size limit is too large. So
/// are failures that only the caller's input causes: a name longer than the filesystem
/// takes (ENAMETOOLONG) is invalid input, an argument list or environment over the kernel's
/// limit (E2BIG) is too large, and an input error the standard library raises itself,
/// without asking the kernel (a NUL byte in a program's argument), is invalid input.
fn io_kind(source: &std::io::Error) -> ErrorKind {
    match source.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => ErrorKind::StorageFull,
        std::io::ErrorKind::FileTooLarge | std::io::ErrorKind::ArgumentListTooLong => ErrorKind::TooLarge,
        std::io::ErrorKind::InvalidFilename => ErrorKind::InvalidInput,
        // EINVAL from the kernel stays an I/O error: it may as well be our own mistake.
        std::io::ErrorKind::InvalidInput if source.raw_os_error().is_none() => ErrorKind::InvalidInput,
        _ => ErrorKind::Io,
    }
}

fn fmt_retry_after(d: Option<Duration>) -> String {
    d.map(|d| format!("; retry after {:.1}s", d.as_secs_f64())).unwrap_or_default()
}

fn fmt_after(d: Option<Duration>) -> String {
    d.map(|d| format!(" after {:.1}s", d.as_secs_f64())).unwrap_or_default()
}

#[cfg(test)]
mod tests;

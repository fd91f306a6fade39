//! [`RemoteBox`]: a box that forwards every `CodeBox` method to the [`Session`] of the
//! protocol its server speaks.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use codebox_core::{
    BoxMetrics, BoxStatus, ByteStream, Capabilities, CodeBox, CodeBoxError, CodeBoxSettings, CommandOutput,
    CommandSpec, ContextInfo, DEFAULT_CONTEXT, EventStream, ExecutionRecord, ExecutionStats, FileInfo, PackageInfo,
    PortStream, ProcessId, ProcessInfo, ProcessSignal, ProcessSpec, ProcessStream, Result, RunOptions,
};
use codebox_http::client::HttpClient;
use codebox_http::wire::SessionInfo;

use crate::builder::RemoteBoxBuilder;
use crate::connection::Connection;
use crate::session::{Protocol, Session};

/// A box that is a session on a CodeBox server.
///
/// Make one with [`RemoteBox::builder`], [`RemoteBox::from_settings`] or
/// [`RemoteBox::from_id`]. A box that created its session deletes it on
/// [`stop`](CodeBox::stop), and also when dropped inside a Tokio runtime; a box attached by
/// id leaves the session alone when dropped. The API key never appears in `Debug`, errors or
/// logs.
pub struct RemoteBox {
    session: Box<dyn Session>,
}

impl fmt::Debug for RemoteBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let conn = self.connection();
        f.debug_struct("RemoteBox")
            .field("id", &conn.id)
            .field("base_url", &conn.base)
            .field("protocol", &self.session.protocol())
            .field("api_key", &conn.api_key())
            .field("attached", &conn.attached)
            .field("running", &conn.is_running())
            .finish_non_exhaustive()
    }
}

impl RemoteBox {
    /// A builder with the defaults.
    pub fn builder() -> RemoteBoxBuilder {
        RemoteBoxBuilder::new()
    }

    /// A box from `CODEBOX_*` settings (see [`RemoteBoxBuilder::from_settings`]).
    pub fn from_settings(settings: &CodeBoxSettings) -> Result<Self> {
        RemoteBoxBuilder::from_settings(settings).build()
    }

    /// Attach to the existing session `id` on the server the settings name. The box is
    /// usable at once; [`start`](CodeBox::start) checks that the session exists.
    pub fn from_id(id: impl Into<String>, settings: &CodeBoxSettings) -> Result<Self> {
        RemoteBoxBuilder::from_settings(settings).with_session_id(id).build()
    }

    pub(crate) fn with_session(session: Box<dyn Session>) -> Self {
        Self { session }
    }

    fn connection(&self) -> &Connection {
        self.session.connection()
    }

    /// The base URL of the server.
    pub fn base_url(&self) -> &str {
        &self.connection().base
    }

    /// The protocol spoken.
    pub fn protocol(&self) -> Protocol {
        self.session.protocol()
    }

    /// The HTTP client (shared connection pool).
    pub fn http_client(&self) -> &HttpClient {
        &self.connection().http
    }

    /// What the server says of this session: its template, kernel, state, metadata,
    /// environment names, limits, lifetime and the isolation it really got. The box must be
    /// started; the codebox-api protocols answer `Unsupported`.
    pub async fn info(&self) -> Result<SessionInfo> {
        self.session.info().await
    }

    /// Make the session live until `timeout` from now (E2B's `set_timeout`: it may shorten
    /// the lifetime as well as extend it), at most the server's maximum; returns the new
    /// description, whose `expires_at` says when it ends. The codebox-api protocols answer
    /// `Unsupported`.
    pub async fn set_timeout(&self, timeout: Duration) -> Result<SessionInfo> {
        self.session.set_timeout(timeout).await
    }

    /// The session's live metrics samples taken after `since_ms` (Unix milliseconds),
    /// oldest first: the series the server samples (every 5 s by default, the last 720 kept).
    /// [`metrics`](CodeBox::metrics) gives the newest alone. The codebox-api protocols
    /// answer [`Unsupported`](codebox_core::ErrorKind::Unsupported).
    pub async fn metrics_since(&self, since_ms: u64) -> Result<Vec<BoxMetrics>> {
        self.session.metrics_since(since_ms).await
    }
}

impl Drop for RemoteBox {
    fn drop(&mut self) {
        let Some(req) = self.session.request_on_drop() else { return };
        let conn = self.connection();
        // A created session must not outlive its owner: end it in the background.
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(session = %conn.id, "RemoteBox dropped outside a Tokio runtime; its session stays until the server reaps it");
            return;
        };
        let http = conn.http.clone();
        let id = conn.id.clone();
        handle.spawn(async move {
            if let Err(e) = http.send(req).await {
                tracing::debug!(session = %id, error = %e, "deleting the session of a dropped RemoteBox failed");
            }
        });
    }
}

#[async_trait]
impl CodeBox for RemoteBox {
    fn id(&self) -> &str {
        &self.connection().id
    }

    fn capabilities(&self) -> Capabilities {
        self.session.capabilities()
    }

    async fn start(&self) -> Result<()> {
        self.session.start().await
    }

    async fn stop(&self) -> Result<()> {
        self.session.stop().await
    }

    async fn status(&self) -> Result<BoxStatus> {
        self.session.status().await
    }

    async fn run_stream(&self, code: &str, options: RunOptions) -> Result<EventStream> {
        // A protocol without contexts would run the code in the box's own kernel: refused.
        if options.context.as_deref().is_some_and(|c| c != DEFAULT_CONTEXT) && !self.capabilities().contexts {
            return Err(CodeBoxError::unsupported(format!("code contexts ({:?} has none)", self.protocol())));
        }
        let options = self.connection().with_default_timeout(options);
        self.session.run_stream(code, options).await
    }

    async fn upload(&self, path: &str, content: ByteStream) -> Result<FileInfo> {
        self.session.upload(path, content).await
    }

    async fn download(&self, path: &str) -> Result<ByteStream> {
        self.session.download(path).await
    }

    async fn list_files(&self, dir: &str, recursive: bool) -> Result<Vec<FileInfo>> {
        self.session.list_files(dir, recursive).await
    }

    async fn delete_file(&self, path: &str) -> Result<()> {
        self.session.delete_file(path).await
    }

    async fn stat(&self, path: &str) -> Result<FileInfo> {
        self.session.stat(path).await
    }

    async fn make_dir(&self, path: &str) -> Result<FileInfo> {
        self.session.make_dir(path).await
    }

    async fn rename(&self, from: &str, to: &str) -> Result<FileInfo> {
        self.session.rename(from, to).await
    }

    async fn list_dir(&self, dir: &str, depth: usize) -> Result<Vec<FileInfo>> {
        self.session.list_dir(dir, depth).await
    }

    async fn install(&self, packages: &[String]) -> Result<String> {
        self.session.install(packages).await
    }

    async fn packages(&self) -> Result<Vec<PackageInfo>> {
        self.session.packages().await
    }

    async fn history(&self, limit: usize) -> Result<Vec<ExecutionRecord>> {
        self.session.history(limit).await
    }

    async fn execution_stats(&self) -> Result<ExecutionStats> {
        self.session.execution_stats().await
    }

    async fn pause(&self) -> Result<codebox_core::PauseReport> {
        self.session.pause().await
    }

    async fn create_context(&self, language: Option<&str>, cwd: Option<&str>) -> Result<ContextInfo> {
        self.session.create_context(language, cwd).await
    }

    async fn contexts(&self) -> Result<Vec<ContextInfo>> {
        self.session.contexts().await
    }

    async fn restart_context(&self, id: &str) -> Result<()> {
        self.session.restart_context(id).await
    }

    async fn delete_context(&self, id: &str) -> Result<()> {
        self.session.delete_context(id).await
    }

    async fn interrupt_context(&self, id: &str) -> Result<()> {
        self.session.interrupt_context(id).await
    }

    async fn connect_port(&self, port: u16) -> Result<PortStream> {
        self.session.connect_port(port).await
    }

    async fn port_url(&self, port: u16) -> Result<String> {
        self.session.port_url(port).await
    }

    async fn metrics(&self) -> Result<BoxMetrics> {
        self.session.metrics().await
    }

    async fn start_process(&self, spec: ProcessSpec) -> Result<ProcessStream> {
        self.session.start_process(spec).await
    }

    async fn connect_process(&self, pid: ProcessId) -> Result<ProcessStream> {
        self.session.connect_process(pid).await
    }

    async fn processes(&self) -> Result<Vec<ProcessInfo>> {
        self.session.processes().await
    }

    async fn process_input(&self, pid: ProcessId, data: bytes::Bytes) -> Result<()> {
        self.session.process_input(pid, data).await
    }

    async fn close_process_input(&self, pid: ProcessId) -> Result<()> {
        self.session.close_process_input(pid).await
    }

    async fn signal_process(&self, pid: ProcessId, signal: ProcessSignal) -> Result<()> {
        self.session.signal_process(pid, signal).await
    }

    async fn restart(&self) -> Result<()> {
        self.session.restart().await
    }

    async fn interrupt(&self) -> Result<()> {
        self.session.interrupt().await
    }

    async fn run_command(&self, command: CommandSpec) -> Result<CommandOutput> {
        self.session.run_command(command).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_never_shown_and_bad_settings_are_refused() {
        let b = RemoteBox::builder().with_api_key("sk-top-secret").build().unwrap();
        let dbg = format!("{b:?}");
        assert!(!dbg.contains("top-secret"), "{dbg}");
        let err = RemoteBox::builder().build().unwrap_err();
        assert!(err.to_string().contains("API key"), "{err}");
        let err = RemoteBox::builder().with_api_key("k").with_base_url("ftp://x").build().unwrap_err();
        assert_eq!(err.kind(), codebox_core::ErrorKind::InvalidInput);
        let err = RemoteBox::builder().with_api_key("k").with_session_id("a/b").build().unwrap_err();
        assert_eq!(err.kind(), codebox_core::ErrorKind::InvalidInput);
    }

    #[test]
    fn settings_pick_the_protocol_and_attach_by_id() {
        let s = CodeBoxSettings::new().with_api_key("k").with_base_url("https://codeboxapi.com/api/v2");
        let b = RemoteBoxBuilder::from_settings(&s);
        assert!(format!("{b:?}").contains("CodeboxApi"));
        let s = CodeBoxSettings::new().with_api_key("k").with_session_id("abc");
        let b = RemoteBox::from_settings(&s).unwrap();
        assert_eq!(b.id(), "abc");
        assert!(b.connection().attached);
    }
}

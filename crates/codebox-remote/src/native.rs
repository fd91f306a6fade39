//! The native API of `codebox serve` (`/v1`, `docs/native-api.md`): every operation of the
//! trait has a route, execution events stream as NDJSON lines (see [`ndjson`](crate::ndjson)).

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use http::Method;
use tokio_util::compat::TokioAsyncReadCompatExt;
use tracing::debug;

use codebox_core::{
    BoxMetrics, BoxStatus, ByteStream, Capabilities, CodeBoxError, CommandOutput, CommandSpec, ContextInfo, ErrorKind,
    EventStream, ExecutionRecord, ExecutionStats, FileInfo, PackageInfo, PortStream, ProcessId, ProcessInfo,
    ProcessSignal, ProcessSpec, ProcessStream, Result, RunOptions, check_port,
};
use codebox_http::client::{Request, Retry};
use codebox_http::wire::{
    API_PREFIX, ContextsResponse, CreateContext, ExecuteRequest, HistoryResponse, InstallRequest, InstallResponse,
    MAX_HISTORY_LIMIT, MetricsSeries, PackagesResponse, ProcessesResponse, RenameRequest, SessionInfo, SetTimeout,
    SignalRequest,
};

use crate::connection::Connection;
use crate::ndjson;
use crate::path::{checked_dir, checked_path, encode_component, encode_file_path};
use crate::request::{SessionRequest, whole_seconds};
use crate::session::{Protocol, Session};

/// The `Upgrade` protocol of the server's port route that splices raw TCP to a box's port.
const PORT_PROTOCOL: &str = "codebox-tcp";
/// The header that repeats the id of a session being created (nginx routes by it).
const SESSION_ID_HEADER: &str = "codebox-session-id";

/// How long an install or a command may stay silent before the client gives up.
const LONG_OPERATION: Duration = Duration::from_secs(3600);

/// A session of `codebox serve`, created by this box or attached by id.
pub(crate) struct NativeSession {
    conn: Connection,
    /// What to ask for when creating the session.
    create: SessionRequest,
    /// What the server last said the session can do.
    capabilities: Mutex<Option<Capabilities>>,
}

impl NativeSession {
    pub(crate) fn new(conn: Connection, create: SessionRequest) -> Self {
        Self { conn, create, capabilities: Mutex::new(None) }
    }

    fn sessions_url(&self) -> String {
        format!("{}{API_PREFIX}/sessions", self.conn.base)
    }

    fn session_url(&self) -> String {
        format!("{}/{}", self.sessions_url(), encode_component(&self.conn.id))
    }

    fn delete_session_request(&self) -> Result<Request> {
        Ok(self.conn.request(Method::DELETE, &self.session_url())?.retry(Retry::Idempotent))
    }

    fn remember(&self, info: &SessionInfo) {
        if let Ok(mut caps) = self.capabilities.lock() {
            *caps = Some(info.capabilities.clone());
        }
    }

    /// The URL of code context `id`.
    fn context_url(&self, id: &str) -> String {
        format!("{}/contexts/{}", self.session_url(), encode_component(id))
    }

    /// The URL of background process `pid`.
    fn process_url(&self, pid: ProcessId) -> String {
        format!("{}/processes/{pid}", self.session_url())
    }

    /// A process's stream: no deadline for its head or between its lines (the server sends
    /// keepalives during silence; a process may run for as long as its session).
    async fn process_stream(&self, req: Request) -> Result<ProcessStream> {
        let req = req.with_timeout(None).with_read_timeout(LONG_OPERATION).without_head_deadline();
        let response = self.conn.http.send(req).await?;
        Ok(ndjson::decode_process(response.into_stream()))
    }

    /// `interrupt` and `restart`, of the session or (`action` under `contexts/{id}/`) of a
    /// code context.
    async fn post_empty(&self, action: &str) -> Result<()> {
        self.conn.ensure_running()?;
        let req = self.conn.request(Method::POST, &format!("{}/{action}", self.session_url()))?.retry(Retry::OnRefusal);
        self.conn.http.send(req).await?.discard().await
    }
}

#[async_trait]
impl Session for NativeSession {
    fn connection(&self) -> &Connection {
        &self.conn
    }

    fn protocol(&self) -> Protocol {
        Protocol::Native
    }

    fn capabilities(&self) -> Capabilities {
        // Before the server has answered, assume the full set it normally reports.
        let mut caps =
            self.capabilities.lock().ok().and_then(|c| c.clone()).unwrap_or_else(|| Capabilities::full(["python"]));
        // `connect_port` upgrades an HTTP/1.1 connection, which HTTP/2 prior knowledge rules out.
        caps.ports &= !self.conn.http.config().http2_prior_knowledge;
        caps
    }

    async fn start(&self) -> Result<()> {
        let conn = &self.conn;
        if conn.attached {
            // Attaching: the session must exist already.
            let info: SessionInfo =
                conn.http.send(conn.request(Method::GET, &self.session_url())?).await?.json().await?;
            self.remember(&info);
        } else {
            let body = self.create.to_wire(&conn.id);
            // Creating with an explicit id is idempotent: the server attaches when it exists.
            // The id goes in a header too, so that a proxy in front of several servers sends
            // the creation where the session's later requests go (docs/scaling.md).
            let req = conn
                .request(Method::POST, &self.sessions_url())?
                .header(http::HeaderName::from_static(SESSION_ID_HEADER), &conn.id)?
                .json(&body)?
                .retry(Retry::Idempotent);
            let info: SessionInfo = conn.http.send(req).await?.json().await?;
            if info.id != conn.id {
                return Err(CodeBoxError::protocol(format!(
                    "asked for session {}, the server made {}",
                    conn.id, info.id
                )));
            }
            self.remember(&info);
        }
        conn.mark_started();
        debug!(session = %conn.id, "remote box started");
        Ok(())
    }

    async fn stop(&self) -> Result<()> {
        if !self.conn.mark_stopped() {
            return Ok(());
        }
        match self.conn.http.send(self.delete_session_request()?).await {
            Ok(resp) => resp.discard().await,
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => {
                self.conn.mark_still_running();
                Err(e)
            }
        }
    }

    async fn status(&self) -> Result<BoxStatus> {
        let conn = &self.conn;
        if !conn.is_running() {
            return Ok(conn.not_running_status());
        }
        let info: SessionInfo = conn.http.send(conn.request(Method::GET, &self.session_url())?).await?.json().await?;
        self.remember(&info);
        Ok(info.status)
    }

    async fn info(&self) -> Result<SessionInfo> {
        let conn = &self.conn;
        conn.ensure_running()?;
        let info: SessionInfo = conn.http.send(conn.request(Method::GET, &self.session_url())?).await?.json().await?;
        self.remember(&info);
        Ok(info)
    }

    async fn set_timeout(&self, timeout: Duration) -> Result<SessionInfo> {
        let conn = &self.conn;
        conn.ensure_running()?;
        let body = SetTimeout { timeout: whole_seconds(timeout) };
        // Setting the same lifetime again only moves its end a little: safe to repeat.
        let req = conn
            .request(Method::POST, &format!("{}/timeout", self.session_url()))?
            .json(&body)?
            .retry(Retry::Idempotent);
        let info: SessionInfo = conn.http.send(req).await?.json().await?;
        self.remember(&info);
        Ok(info)
    }

    async fn run_stream(&self, code: &str, options: RunOptions) -> Result<EventStream> {
        self.conn.ensure_running()?;
        let body = ExecuteRequest { code: code.to_owned(), options };
        // Running code twice is never safe: no retry, whatever failed. The server answers once
        // the box takes the execution, which waits for one already running: no deadline on that.
        let req = self
            .conn
            .request(Method::POST, &format!("{}/execute", self.session_url()))?
            .json(&body)?
            .retry(Retry::Never)
            .without_head_deadline();
        let response = self.conn.http.send(req).await?;
        Ok(ndjson::decode(response.into_stream()))
    }

    async fn upload(&self, path: &str, content: ByteStream) -> Result<FileInfo> {
        let encoded = encode_file_path(path)?;
        self.conn.ensure_running()?;
        let req = self
            .conn
            .request(Method::PUT, &format!("{}/files/{encoded}", self.session_url()))?
            .stream("application/octet-stream", content)?
            .with_timeout(None);
        self.conn.http.send(req).await?.json().await
    }

    async fn download(&self, path: &str) -> Result<ByteStream> {
        let encoded = encode_file_path(path)?;
        self.conn.ensure_running()?;
        let req = self.conn.request(Method::GET, &format!("{}/files/{encoded}", self.session_url()))?;
        Ok(self.conn.http.send(req).await?.into_stream())
    }

    async fn list_files(&self, dir: &str, recursive: bool) -> Result<Vec<FileInfo>> {
        let dir = checked_dir(dir)?;
        self.conn.ensure_running()?;
        let url = format!("{}/files?dir={}&recursive={recursive}", self.session_url(), encode_component(&dir));
        self.conn.http.send(self.conn.request(Method::GET, &url)?).await?.json().await
    }

    async fn delete_file(&self, path: &str) -> Result<()> {
        let encoded = encode_file_path(path)?;
        self.conn.ensure_running()?;
        let req = self.conn.request(Method::DELETE, &format!("{}/files/{encoded}", self.session_url()))?;
        self.conn.http.send(req).await?.discard().await
    }

    async fn stat(&self, path: &str) -> Result<FileInfo> {
        let encoded = encode_file_path(path)?;
        self.conn.ensure_running()?;
        let req = self.conn.request(Method::GET, &format!("{}/stat/{encoded}", self.session_url()))?;
        self.conn.http.send(req).await?.json().await
    }

    async fn make_dir(&self, path: &str) -> Result<FileInfo> {
        let encoded = encode_file_path(path)?;
        self.conn.ensure_running()?;
        // Making a directory that exists is fine, so a retry after a lost answer is too.
        let req = self
            .conn
            .request(Method::POST, &format!("{}/dirs/{encoded}", self.session_url()))?
            .retry(Retry::Idempotent);
        self.conn.http.send(req).await?.json().await
    }

    async fn rename(&self, from: &str, to: &str) -> Result<FileInfo> {
        // Checked here as the server would, so a bad path fails before any request.
        let (from, to) = (checked_path(from)?, checked_path(to)?);
        self.conn.ensure_running()?;
        let body = RenameRequest { from, to };
        let req = self
            .conn
            .request(Method::POST, &format!("{}/rename", self.session_url()))?
            .json(&body)?
            .retry(Retry::OnRefusal);
        self.conn.http.send(req).await?.json().await
    }

    async fn list_dir(&self, dir: &str, depth: usize) -> Result<Vec<FileInfo>> {
        codebox_core::check_list_depth(depth)?;
        let dir = checked_dir(dir)?;
        self.conn.ensure_running()?;
        let url = format!("{}/files?dir={}&depth={depth}", self.session_url(), encode_component(&dir));
        self.conn.http.send(self.conn.request(Method::GET, &url)?).await?.json().await
    }

    async fn install(&self, packages: &[String]) -> Result<String> {
        if packages.is_empty() {
            return Err(CodeBoxError::invalid("no packages to install"));
        }
        self.conn.ensure_running()?;
        let body = InstallRequest { packages: packages.to_vec() };
        let req = self
            .conn
            .request(Method::POST, &format!("{}/install", self.session_url()))?
            .json(&body)?
            .retry(Retry::OnRefusal)
            .with_timeout(None)
            .with_read_timeout(LONG_OPERATION);
        let out: InstallResponse = self.conn.http.send(req).await?.json().await?;
        Ok(out.output)
    }

    async fn packages(&self) -> Result<Vec<PackageInfo>> {
        self.conn.ensure_running()?;
        let req = self.conn.request(Method::GET, &format!("{}/packages", self.session_url()))?;
        let out: PackagesResponse = self.conn.http.send(req).await?.json().await?;
        Ok(out.packages)
    }

    async fn history(&self, limit: usize) -> Result<Vec<ExecutionRecord>> {
        self.conn.ensure_running()?;
        // The server refuses a limit past its maximum; a caller asking for everything gets that much.
        let limit = limit.min(MAX_HISTORY_LIMIT);
        let req = self.conn.request(Method::GET, &format!("{}/history?limit={limit}", self.session_url()))?;
        let out: HistoryResponse = self.conn.http.send(req).await?.json().await?;
        Ok(out.executions)
    }

    async fn execution_stats(&self) -> Result<ExecutionStats> {
        self.conn.ensure_running()?;
        let req = self.conn.request(Method::GET, &format!("{}/stats", self.session_url()))?;
        self.conn.http.send(req).await?.json().await
    }

    async fn pause(&self) -> Result<codebox_core::PauseReport> {
        self.conn.ensure_running()?;
        // Pausing a paused session answers its report again: safe to resend.
        let req = self.conn.request(Method::POST, &format!("{}/pause", self.session_url()))?.retry(Retry::Idempotent);
        self.conn.http.send(req).await?.json().await
    }

    async fn create_context(&self, language: Option<&str>, cwd: Option<&str>) -> Result<ContextInfo> {
        self.conn.ensure_running()?;
        let body = CreateContext { language: language.map(str::to_owned), cwd: cwd.map(str::to_owned) };
        // Each request makes a kernel: resent only when the server surely did not take it.
        let req = self
            .conn
            .request(Method::POST, &format!("{}/contexts", self.session_url()))?
            .json(&body)?
            .retry(Retry::OnRefusal);
        self.conn.http.send(req).await?.json().await
    }

    async fn contexts(&self) -> Result<Vec<ContextInfo>> {
        self.conn.ensure_running()?;
        let req = self.conn.request(Method::GET, &format!("{}/contexts", self.session_url()))?;
        let out: ContextsResponse = self.conn.http.send(req).await?.json().await?;
        Ok(out.contexts)
    }

    async fn restart_context(&self, id: &str) -> Result<()> {
        self.post_empty(&format!("contexts/{}/restart", encode_component(id))).await
    }

    async fn delete_context(&self, id: &str) -> Result<()> {
        self.conn.ensure_running()?;
        let req = self.conn.request(Method::DELETE, &self.context_url(id))?.retry(Retry::OnRefusal);
        self.conn.http.send(req).await?.discard().await
    }

    async fn interrupt_context(&self, id: &str) -> Result<()> {
        self.post_empty(&format!("contexts/{}/interrupt", encode_component(id))).await
    }

    /// `Upgrade: codebox-tcp` on the session's port route: the server answers 101 and the
    /// connection carries the port's bytes from then on.
    async fn connect_port(&self, port: u16) -> Result<PortStream> {
        let port = check_port(port.into())?;
        self.conn.ensure_running()?;
        let req = self.conn.request(Method::GET, &format!("{}/ports/{port}", self.session_url()))?;
        let upgraded = self.conn.http.upgrade(req, PORT_PROTOCOL).await?;
        Ok(Box::pin(upgraded.compat()))
    }

    async fn port_url(&self, port: u16) -> Result<String> {
        let port = check_port(port.into())?;
        self.conn.ensure_running()?;
        Ok(format!("{}/ports/{port}/", self.session_url()))
    }

    async fn metrics(&self) -> Result<BoxMetrics> {
        self.conn.ensure_running()?;
        let req = self.conn.request(Method::GET, &format!("{}/metrics", self.session_url()))?.retry(Retry::Idempotent);
        self.conn.http.send(req).await?.json().await
    }

    async fn metrics_since(&self, since_ms: u64) -> Result<Vec<BoxMetrics>> {
        self.conn.ensure_running()?;
        let url = format!("{}/metrics?since={since_ms}", self.session_url());
        let req = self.conn.request(Method::GET, &url)?.retry(Retry::Idempotent);
        let out: MetricsSeries = self.conn.http.send(req).await?.json().await?;
        Ok(out.samples)
    }

    async fn start_process(&self, spec: ProcessSpec) -> Result<ProcessStream> {
        if spec.command.program.is_empty() {
            return Err(CodeBoxError::invalid("the process has no program"));
        }
        self.conn.ensure_running()?;
        // Starting a process twice is never safe: no retry.
        let url = format!("{}/processes", self.session_url());
        let req = self.conn.request(Method::POST, &url)?.json(&spec)?.retry(Retry::Never);
        self.process_stream(req).await
    }

    async fn connect_process(&self, pid: ProcessId) -> Result<ProcessStream> {
        self.conn.ensure_running()?;
        let req = self.conn.request(Method::GET, &self.process_url(pid))?.retry(Retry::Idempotent);
        self.process_stream(req).await
    }

    async fn processes(&self) -> Result<Vec<ProcessInfo>> {
        self.conn.ensure_running()?;
        let url = format!("{}/processes", self.session_url());
        let req = self.conn.request(Method::GET, &url)?.retry(Retry::Idempotent);
        let out: ProcessesResponse = self.conn.http.send(req).await?.json().await?;
        Ok(out.processes)
    }

    async fn process_input(&self, pid: ProcessId, data: bytes::Bytes) -> Result<()> {
        self.conn.ensure_running()?;
        let url = format!("{}/input", self.process_url(pid));
        // Written twice would be read twice: resent only when the server surely did not take it.
        let req =
            self.conn.request(Method::POST, &url)?.bytes("application/octet-stream", data).retry(Retry::OnRefusal);
        self.conn.http.send(req).await?.discard().await
    }

    async fn close_process_input(&self, pid: ProcessId) -> Result<()> {
        self.conn.ensure_running()?;
        let url = format!("{}/close-input", self.process_url(pid));
        let req = self.conn.request(Method::POST, &url)?.retry(Retry::Idempotent);
        self.conn.http.send(req).await?.discard().await
    }

    async fn signal_process(&self, pid: ProcessId, signal: ProcessSignal) -> Result<()> {
        self.conn.ensure_running()?;
        let url = format!("{}/signal", self.process_url(pid));
        let req = self.conn.request(Method::POST, &url)?.json(&SignalRequest { signal })?.retry(Retry::OnRefusal);
        self.conn.http.send(req).await?.discard().await
    }

    async fn restart(&self) -> Result<()> {
        self.post_empty("restart").await
    }

    async fn interrupt(&self) -> Result<()> {
        self.post_empty("interrupt").await
    }

    async fn run_command(&self, command: CommandSpec) -> Result<CommandOutput> {
        if command.program.is_empty() {
            return Err(CodeBoxError::invalid("the command has no program"));
        }
        self.conn.ensure_running()?;
        let req = self
            .conn
            .request(Method::POST, &format!("{}/commands", self.session_url()))?
            .json(&command)?
            .retry(Retry::OnRefusal)
            .with_timeout(None)
            .with_read_timeout(LONG_OPERATION);
        self.conn.http.send(req).await?.json().await
    }

    fn request_on_drop(&self) -> Option<Request> {
        // A created session must not outlive its owner; an attached one is someone else's.
        if self.conn.attached || !self.conn.is_running() {
            return None;
        }
        self.delete_session_request().ok()
    }
}

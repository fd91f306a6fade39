//! The wire protocols a server may speak, and the operations a session offers, one
//! implementation per protocol.
//!
//! [`RemoteBox`](crate::RemoteBox) holds one [`Session`] and forwards every `CodeBox` method
//! to it. A protocol is one type implementing this trait over a shared
//! [`Connection`](crate::connection::Connection); it knows nothing of the box around it.

use std::time::Duration;

use async_trait::async_trait;

use bytes::Bytes;
use codebox_core::{
    BoxMetrics, BoxStatus, ByteStream, Capabilities, CodeBoxError, CommandOutput, CommandSpec, ContextInfo,
    EventStream, ExecutionRecord, ExecutionStats, FileInfo, PackageInfo, PortStream, ProcessId, ProcessInfo,
    ProcessSignal, ProcessSpec, ProcessStream, Result, RunOptions,
};
use codebox_http::client::Request;
use codebox_http::wire::SessionInfo;

use crate::connection::Connection;

/// Which protocol the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Protocol {
    /// The native API of `codebox serve` (`/v1`). Every operation works.
    #[default]
    Native,
    /// The hosted codebox-api 0.2 service: `{base}/codebox/{session}/exec`, `/files/upload`,
    /// `/files/download/{path}`, with `Authorization: Bearer` and `Factory-Id` headers.
    CodeboxApi,
    /// The single-box server of the `codeboxapi` 0.2 Python package
    /// (`uvicorn codeboxapi.api:app`): the same routes at the base URL's root.
    CodeboxApiServer,
}

/// A session on a server, spoken to in one wire protocol.
///
/// The methods mean what the `CodeBox` methods of the same name mean; an operation the
/// protocol has no route for answers `CodeBoxError::Unsupported`.
#[async_trait]
pub(crate) trait Session: Send + Sync {
    /// The connection state shared by every protocol.
    fn connection(&self) -> &Connection;

    /// The protocol spoken.
    fn protocol(&self) -> Protocol;

    fn capabilities(&self) -> Capabilities;

    async fn start(&self) -> Result<()>;

    async fn stop(&self) -> Result<()>;

    async fn status(&self) -> Result<BoxStatus>;

    /// The server's description of the session.
    async fn info(&self) -> Result<SessionInfo> {
        Err(CodeBoxError::unsupported("session info (only the native protocol describes sessions)"))
    }

    /// Make the session live until `timeout` from now.
    async fn set_timeout(&self, _timeout: Duration) -> Result<SessionInfo> {
        Err(CodeBoxError::unsupported("set_timeout (only the native protocol has session lifetimes)"))
    }

    /// Run code; `options` already carry the box's default timeout.
    async fn run_stream(&self, code: &str, options: RunOptions) -> Result<EventStream>;

    async fn upload(&self, path: &str, content: ByteStream) -> Result<FileInfo>;

    async fn download(&self, path: &str) -> Result<ByteStream>;

    async fn list_files(&self, dir: &str, recursive: bool) -> Result<Vec<FileInfo>>;

    async fn delete_file(&self, path: &str) -> Result<()>;

    async fn stat(&self, _path: &str) -> Result<FileInfo> {
        Err(CodeBoxError::unsupported("stat"))
    }

    async fn make_dir(&self, _path: &str) -> Result<FileInfo> {
        Err(CodeBoxError::unsupported("make_dir"))
    }

    async fn rename(&self, _from: &str, _to: &str) -> Result<FileInfo> {
        Err(CodeBoxError::unsupported("rename"))
    }

    async fn list_dir(&self, _dir: &str, _depth: usize) -> Result<Vec<FileInfo>> {
        Err(CodeBoxError::unsupported("list_dir"))
    }

    async fn install(&self, packages: &[String]) -> Result<String>;

    /// The packages of the box's environment; only the native protocol can list them.
    async fn packages(&self) -> Result<Vec<PackageInfo>> {
        Err(CodeBoxError::unsupported("packages (only the native protocol lists a session's packages)"))
    }

    /// The box's newest executions; only the native protocol keeps a history.
    async fn history(&self, limit: usize) -> Result<Vec<ExecutionRecord>> {
        let _ = limit;
        Err(CodeBoxError::unsupported("history (only the native protocol keeps a session's executions)"))
    }

    /// Statistics over the box's executions; only the native protocol keeps them.
    async fn execution_stats(&self) -> Result<ExecutionStats> {
        Err(CodeBoxError::unsupported("execution_stats (only the native protocol keeps a session's executions)"))
    }

    async fn pause(&self) -> Result<codebox_core::PauseReport> {
        Err(CodeBoxError::unsupported("pause (only the native protocol of `codebox serve` pauses sessions)"))
    }

    /// Make a code context; only the native protocol has them.
    async fn create_context(&self, language: Option<&str>, cwd: Option<&str>) -> Result<ContextInfo> {
        let _ = (language, cwd);
        Err(contexts_unsupported("create_context"))
    }

    /// The session's code contexts.
    async fn contexts(&self) -> Result<Vec<ContextInfo>> {
        Err(contexts_unsupported("contexts"))
    }

    /// Restart a code context's kernel.
    async fn restart_context(&self, id: &str) -> Result<()> {
        let _ = id;
        Err(contexts_unsupported("restart_context"))
    }

    /// End a code context.
    async fn delete_context(&self, id: &str) -> Result<()> {
        let _ = id;
        Err(contexts_unsupported("delete_context"))
    }

    /// Interrupt a code context.
    async fn interrupt_context(&self, id: &str) -> Result<()> {
        let _ = id;
        Err(contexts_unsupported("interrupt_context"))
    }

    /// A connection to a port of the box; only the native protocol reaches ports.
    async fn connect_port(&self, port: u16) -> Result<PortStream> {
        codebox_core::check_port(port.into())?;
        Err(CodeBoxError::unsupported("connect_port (only the native protocol reaches a box's ports)"))
    }

    /// The URL of a port of the box; only the native protocol has one.
    async fn port_url(&self, port: u16) -> Result<String> {
        codebox_core::check_port(port.into())?;
        Err(CodeBoxError::unsupported("port_url (only the native protocol reaches a box's ports)"))
    }

    /// The box's latest live metrics sample; only the native protocol measures a session.
    async fn metrics(&self) -> Result<BoxMetrics> {
        Err(CodeBoxError::unsupported("metrics (only the native protocol measures a session)"))
    }

    /// The box's metrics samples taken after `since_ms` (Unix milliseconds), oldest first.
    async fn metrics_since(&self, since_ms: u64) -> Result<Vec<BoxMetrics>> {
        let _ = since_ms;
        Err(CodeBoxError::unsupported("metrics_since (only the native protocol measures a session)"))
    }

    /// Start a background process; only the native protocol runs them.
    async fn start_process(&self, spec: ProcessSpec) -> Result<ProcessStream> {
        let _ = spec;
        Err(processes_unsupported("start_process"))
    }

    /// Follow a background process again.
    async fn connect_process(&self, pid: ProcessId) -> Result<ProcessStream> {
        let _ = pid;
        Err(processes_unsupported("connect_process"))
    }

    /// The background processes running in the box.
    async fn processes(&self) -> Result<Vec<ProcessInfo>> {
        Err(processes_unsupported("processes"))
    }

    /// Write to a background process's standard input.
    async fn process_input(&self, pid: ProcessId, data: Bytes) -> Result<()> {
        let _ = (pid, data);
        Err(processes_unsupported("process_input"))
    }

    /// Close a background process's standard input.
    async fn close_process_input(&self, pid: ProcessId) -> Result<()> {
        let _ = pid;
        Err(processes_unsupported("close_process_input"))
    }

    /// Signal a background process.
    async fn signal_process(&self, pid: ProcessId, signal: ProcessSignal) -> Result<()> {
        let _ = (pid, signal);
        Err(processes_unsupported("signal_process"))
    }

    async fn restart(&self) -> Result<()>;

    async fn interrupt(&self) -> Result<()>;

    async fn run_command(&self, command: CommandSpec) -> Result<CommandOutput>;

    /// The request that ends the session when its box is dropped without `stop`, or `None`
    /// when nothing is to be ended (an attached session, or a protocol without sessions to
    /// delete).
    fn request_on_drop(&self) -> Option<Request>;
}

/// The refusal of a process operation by a protocol without background processes.
fn processes_unsupported(operation: &str) -> CodeBoxError {
    CodeBoxError::unsupported(format!("{operation} (only the native protocol runs background processes)"))
}

/// The refusal of a context operation by a protocol without code contexts.
fn contexts_unsupported(operation: &str) -> CodeBoxError {
    CodeBoxError::unsupported(format!("{operation} (only the native protocol has code contexts)"))
}

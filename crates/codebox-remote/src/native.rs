//! The native API of `codebox serve` (`/v1`, `docs/native-api.md`).

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::Method;
use tracing::debug;

use codebox_core::{
    BoxStatus, ByteStream, Capabilities, CodeBoxError, CommandOutput, CommandSpec, ErrorKind, EventStream, FileInfo,
    Result, RunOptions,
};
use codebox_http::client::{Request, Retry};
use codebox_http::wire::{API_PREFIX, CreateSession, ExecuteRequest, InstallRequest, InstallResponse, SessionInfo};

use crate::ndjson;
use crate::path::{checked_dir, encode_component, encode_file_path};
use crate::remote_box::Inner;

/// How long an install or a command may stay silent before the client gives up.
const LONG_OPERATION: Duration = Duration::from_secs(3600);

pub(crate) fn default_capabilities() -> Capabilities {
    Capabilities::full(["python"])
}

fn sessions_url(i: &Inner) -> String {
    format!("{}{API_PREFIX}/sessions", i.conn.base)
}

fn session_url(i: &Inner) -> String {
    format!("{}/{}", sessions_url(i), encode_component(&i.conn.id))
}

pub(crate) fn delete_session_request(i: &Inner) -> Result<Request> {
    Ok(i.request(Method::DELETE, &session_url(i))?.retry(Retry::Idempotent))
}

fn remember(i: &Inner, info: &SessionInfo) {
    if let Ok(mut caps) = i.capabilities.lock() {
        *caps = Some(info.capabilities.clone());
    }
}

pub(crate) async fn start(i: &Inner) -> Result<()> {
    if i.conn.attached {
        // Attaching: the session must exist already.
        let info: SessionInfo = i.conn.http.send(i.request(Method::GET, &session_url(i))?).await?.json().await?;
        remember(i, &info);
    } else {
        let body = CreateSession { id: Some(i.conn.id.clone()), kernel: i.conn.kernel.clone() };
        // Creating with an explicit id is idempotent: the server attaches when it exists.
        let req = i.request(Method::POST, &sessions_url(i))?.json(&body)?.retry(Retry::Idempotent);
        let info: SessionInfo = i.conn.http.send(req).await?.json().await?;
        if info.id != i.conn.id {
            return Err(CodeBoxError::protocol(format!(
                "asked for session {}, the server made {}",
                i.conn.id, info.id
            )));
        }
        remember(i, &info);
    }
    i.stopped.store(false, Ordering::Release);
    i.running.store(true, Ordering::Release);
    debug!(session = %i.conn.id, "remote box started");
    Ok(())
}

pub(crate) async fn stop(i: &Inner) -> Result<()> {
    if !i.running.swap(false, Ordering::AcqRel) {
        i.stopped.store(true, Ordering::Release);
        return Ok(());
    }
    i.stopped.store(true, Ordering::Release);
    match i.conn.http.send(delete_session_request(i)?).await {
        Ok(resp) => resp.discard().await,
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => {
            i.running.store(true, Ordering::Release);
            Err(e)
        }
    }
}

pub(crate) async fn status(i: &Inner) -> Result<BoxStatus> {
    if !i.running.load(Ordering::Acquire) {
        return Ok(i.not_running_status());
    }
    let info: SessionInfo = i.conn.http.send(i.request(Method::GET, &session_url(i))?).await?.json().await?;
    remember(i, &info);
    Ok(info.status)
}

pub(crate) async fn run_stream(i: &Inner, code: &str, options: RunOptions) -> Result<EventStream> {
    i.ensure_running()?;
    let body = ExecuteRequest { code: code.to_owned(), options };
    // Running code twice is never safe: no retry, whatever failed. The server answers once
    // the box takes the execution, which waits for one already running: no deadline on that.
    let req = i
        .request(Method::POST, &format!("{}/execute", session_url(i)))?
        .json(&body)?
        .retry(Retry::Never)
        .without_head_deadline();
    let response = i.conn.http.send(req).await?;
    Ok(ndjson::decode(response.into_stream()))
}

pub(crate) async fn upload(i: &Inner, path: &str, content: ByteStream) -> Result<FileInfo> {
    let encoded = encode_file_path(path)?;
    i.ensure_running()?;
    let req = i
        .request(Method::PUT, &format!("{}/files/{encoded}", session_url(i)))?
        .stream("application/octet-stream", content)?
        .with_timeout(None);
    i.conn.http.send(req).await?.json().await
}

pub(crate) async fn download(i: &Inner, path: &str) -> Result<ByteStream> {
    let encoded = encode_file_path(path)?;
    i.ensure_running()?;
    let req = i.request(Method::GET, &format!("{}/files/{encoded}", session_url(i)))?;
    Ok(i.conn.http.send(req).await?.into_stream())
}

pub(crate) async fn list_files(i: &Inner, dir: &str, recursive: bool) -> Result<Vec<FileInfo>> {
    let dir = checked_dir(dir)?;
    i.ensure_running()?;
    let url = format!("{}/files?dir={}&recursive={recursive}", session_url(i), encode_component(&dir));
    i.conn.http.send(i.request(Method::GET, &url)?).await?.json().await
}

pub(crate) async fn delete_file(i: &Inner, path: &str) -> Result<()> {
    let encoded = encode_file_path(path)?;
    i.ensure_running()?;
    let req = i.request(Method::DELETE, &format!("{}/files/{encoded}", session_url(i)))?;
    i.conn.http.send(req).await?.discard().await
}

pub(crate) async fn install(i: &Inner, packages: &[String]) -> Result<String> {
    if packages.is_empty() {
        return Err(CodeBoxError::invalid("no packages to install"));
    }
    i.ensure_running()?;
    let body = InstallRequest { packages: packages.to_vec() };
    let req = i
        .request(Method::POST, &format!("{}/install", session_url(i)))?
        .json(&body)?
        .retry(Retry::OnRefusal)
        .with_timeout(None)
        .with_read_timeout(LONG_OPERATION);
    let out: InstallResponse = i.conn.http.send(req).await?.json().await?;
    Ok(out.output)
}

pub(crate) async fn run_command(i: &Inner, command: CommandSpec) -> Result<CommandOutput> {
    if command.program.is_empty() {
        return Err(CodeBoxError::invalid("the command has no program"));
    }
    i.ensure_running()?;
    let req = i
        .request(Method::POST, &format!("{}/commands", session_url(i)))?
        .json(&command)?
        .retry(Retry::OnRefusal)
        .with_timeout(None)
        .with_read_timeout(LONG_OPERATION);
    i.conn.http.send(req).await?.json().await
}

/// `interrupt` and `restart`.
pub(crate) async fn post_empty(i: &Inner, action: &str) -> Result<()> {
    i.ensure_running()?;
    let req = i.request(Method::POST, &format!("{}/{action}", session_url(i)))?.retry(Retry::OnRefusal);
    i.conn.http.send(req).await?.discard().await
}

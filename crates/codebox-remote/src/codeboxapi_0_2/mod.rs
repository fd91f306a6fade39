//! The codebox-api 0.2 service protocol, hosted (`{base}/codebox/{session}/...`) or served
//! at the root by the `codeboxapi` Python package's single-box server.
//!
//! Routes: `POST /exec` (`{code, kernel, timeout, cwd}`, answered with tagged chunks, see
//! [`tagged`]), `POST /files/upload` (multipart, field `file`), `GET /files/download/{path}`,
//! and on the single-box server `GET /` for health. Nothing else exists, so listing,
//! deleting, installing, restarting, interrupting and commands are unsupported. The wire
//! carries text only: exceptions and outcomes are recognized from it (see [`execution`]),
//! and [`Capabilities::unreported`] names what cannot be known.

mod execution;
mod tagged;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use http::Method;
use http::header::HeaderName;

use codebox_core::{
    BoxState, BoxStatus, ByteStream, Capabilities, CodeBoxError, CommandOutput, CommandSpec, EventStream, ExecEvent,
    FileInfo, Result, RunOptions,
};
use codebox_http::client::{Request, Retry};

use crate::connection::Connection;
use crate::path::{encode_component, encode_file_path};
use crate::session::{Protocol, Session};
use execution::ExecutionReader;
use tagged::TaggedParser;

/// Where a codebox-api 0.2 session is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Host {
    /// The hosted service: routes under `{base}/codebox/{session}`, a `Factory-Id` header.
    Service,
    /// The single-box server of the `codeboxapi` package: routes at the base URL's root.
    SingleBox,
}

/// An execution being read: the response body, its chunks, and the events ready to hand out.
struct Reading {
    body: ByteStream,
    parser: TaggedParser,
    reader: ExecutionReader,
    ready: VecDeque<ExecEvent>,
    started: Instant,
    done: bool,
}

/// A session of a codebox-api 0.2 server.
pub(crate) struct CodeboxApiSession {
    conn: Connection,
    host: Host,
    /// The `Factory-Id` header; the hosted service gets `default` when none is set.
    factory_id: Option<String>,
}

impl CodeboxApiSession {
    pub(crate) fn new(conn: Connection, host: Host, factory_id: Option<String>) -> Self {
        Self { conn, host, factory_id }
    }

    /// The root the routes hang off.
    fn root(&self) -> String {
        match self.host {
            Host::Service => format!("{}/codebox/{}", self.conn.base, encode_component(&self.conn.id)),
            Host::SingleBox => self.conn.base.clone(),
        }
    }

    fn request(&self, method: Method, route: &str) -> Result<Request> {
        let mut req = self.conn.request(method, &format!("{}{route}", self.root()))?;
        let factory = self.factory_id.as_deref().or((self.host == Host::Service).then_some("default"));
        if let Some(factory) = factory {
            req = req.header(HeaderName::from_static("factory-id"), factory)?;
        }
        Ok(req)
    }
}

fn unsupported(operation: &str) -> CodeBoxError {
    CodeBoxError::unsupported(format!("{operation} (the codebox-api 0.2 protocol has no such route)"))
}

fn kernel_for(language: Option<&str>) -> Result<&'static str> {
    match language {
        None | Some("python" | "python3" | "ipython") => Ok("ipython"),
        Some("bash") => Ok("bash"),
        Some(other) => Err(CodeBoxError::unsupported(format!(
            "language {other:?} (the codebox-api 0.2 protocol runs python and bash)"
        ))),
    }
}

#[async_trait]
impl Session for CodeboxApiSession {
    fn connection(&self) -> &Connection {
        &self.conn
    }

    fn protocol(&self) -> Protocol {
        match self.host {
            Host::Service => Protocol::CodeboxApi,
            Host::SingleBox => Protocol::CodeboxApiServer,
        }
    }

    /// What this protocol can do: run Python or bash with streamed output, move files; and
    /// what its text-only wire cannot tell.
    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::minimal(["python", "bash"]);
        caps.streaming = true;
        caps.unreported =
            ["exact_outcome", "kernel_death_cause", "execution_count", "kernel_state"].map(String::from).to_vec();
        caps
    }

    async fn start(&self) -> Result<()> {
        if self.host == Host::SingleBox {
            // The single-box server answers `GET /` with {"status": "ok"}.
            let health: serde_json::Value = self.conn.http.send(self.request(Method::GET, "/")?).await?.json().await?;
            if health.get("status").and_then(|s| s.as_str()) != Some("ok") {
                return Err(CodeBoxError::protocol(format!("unexpected health answer {health}")));
            }
        }
        // The hosted service creates the session on first use.
        self.conn.mark_started();
        Ok(())
    }

    async fn stop(&self) -> Result<()> {
        // There is no route to end a session: the service reaps it.
        self.conn.mark_stopped();
        Ok(())
    }

    async fn status(&self) -> Result<BoxStatus> {
        if !self.conn.is_running() {
            return Ok(self.conn.not_running_status());
        }
        if self.host == Host::SingleBox {
            self.conn.http.send(self.request(Method::GET, "/")?).await?.discard().await?;
        }
        Ok(BoxStatus::new(BoxState::Idle).with_kernel("ipython"))
    }

    async fn run_stream(&self, code: &str, options: RunOptions) -> Result<EventStream> {
        self.conn.ensure_running()?;
        let kernel = kernel_for(options.language.as_deref())?;
        if !options.env.is_empty() {
            return Err(unsupported("per-execution environment variables"));
        }
        let timeout = options.timeout.map(|t| t.as_secs_f64().ceil().max(1.0) as u64);
        let body = serde_json::json!({"code": code, "kernel": kernel, "timeout": timeout, "cwd": options.cwd});
        let started = Instant::now();
        let req = self.request(Method::POST, "/exec")?.json(&body)?.retry(Retry::Never);
        let response = self.conn.http.send(req).await?;
        let state = Reading {
            body: response.into_stream(),
            parser: TaggedParser::default(),
            reader: ExecutionReader::default(),
            ready: VecDeque::new(),
            started,
            done: false,
        };
        Ok(Box::pin(stream::unfold(state, |mut s| async move {
            loop {
                if let Some(event) = s.ready.pop_front() {
                    return Some((Ok(event), s));
                }
                if s.done {
                    return None;
                }
                match s.parser.next_chunk() {
                    Ok(Some(chunk)) => {
                        s.ready.extend(s.reader.read(chunk));
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        s.done = true;
                        return Some((Err(e), s));
                    }
                }
                match s.body.next().await {
                    Some(Ok(bytes)) => s.parser.push(&bytes),
                    Some(Err(e)) => {
                        s.done = true;
                        return Some((Err(e), s));
                    }
                    None => {
                        s.done = true;
                        if s.parser.has_leftover() {
                            let err = CodeBoxError::protocol("the execution stream ended inside an output chunk");
                            return Some((Err(err), s));
                        }
                        let elapsed = s.started.elapsed();
                        s.ready.extend(s.reader.finish(elapsed));
                    }
                }
            }
        })))
    }

    async fn upload(&self, path: &str, content: ByteStream) -> Result<FileInfo> {
        encode_file_path(path)?;
        if path.chars().any(|c| c.is_control()) {
            return Err(CodeBoxError::invalid(format!("file name {path:?} contains control characters")));
        }
        self.conn.ensure_running()?;
        let boundary = format!("codebox-{}", crate::connection::new_session_id());
        let filename = path.replace('\\', "%5C").replace('"', "%22");
        let head = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        );
        let tail = format!("\r\n--{boundary}--\r\n");
        let size = Arc::new(AtomicU64::new(0));
        let counted = {
            let size = size.clone();
            content.inspect_ok(move |chunk| {
                size.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            })
        };
        let body = stream::once(async move { Ok(Bytes::from(head)) })
            .chain(counted)
            .chain(stream::once(async move { Ok(Bytes::from(tail)) }));
        let req = self
            .request(Method::POST, "/files/upload")?
            .stream(&format!("multipart/form-data; boundary={boundary}"), Box::pin(body))?
            .with_timeout(None);
        self.conn.http.send(req).await?.discard().await?;
        let name = path.rsplit('/').next().unwrap_or(path).to_owned();
        Ok(FileInfo {
            path: path.to_owned(),
            name,
            size: size.load(Ordering::Relaxed),
            is_dir: false,
            modified: None,
            file_kind: None,
            mode: None,
        })
    }

    async fn download(&self, path: &str) -> Result<ByteStream> {
        let encoded = encode_file_path(path)?;
        self.conn.ensure_running()?;
        let req = self.request(Method::GET, &format!("/files/download/{encoded}"))?;
        Ok(self.conn.http.send(req).await?.into_stream())
    }

    async fn list_files(&self, _dir: &str, _recursive: bool) -> Result<Vec<FileInfo>> {
        Err(unsupported("list_files"))
    }

    async fn delete_file(&self, _path: &str) -> Result<()> {
        Err(unsupported("delete_file"))
    }

    async fn install(&self, _packages: &[String]) -> Result<String> {
        Err(unsupported("install"))
    }

    async fn restart(&self) -> Result<()> {
        Err(unsupported("restart"))
    }

    async fn interrupt(&self) -> Result<()> {
        Err(unsupported("interrupt"))
    }

    async fn run_command(&self, _command: CommandSpec) -> Result<CommandOutput> {
        Err(unsupported("run_command"))
    }

    fn request_on_drop(&self) -> Option<Request> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codebox_core::ErrorKind;

    #[test]
    fn languages_map_to_the_two_kernels() {
        assert_eq!(kernel_for(None).unwrap(), "ipython");
        assert_eq!(kernel_for(Some("python3")).unwrap(), "ipython");
        assert_eq!(kernel_for(Some("bash")).unwrap(), "bash");
        assert_eq!(kernel_for(Some("r")).unwrap_err().kind(), ErrorKind::Unsupported);
    }
}

//! The codebox-api 0.2 service protocol, hosted (`{base}/codebox/{session}/...`) or served
//! at the root by the `codeboxapi` Python package's single-box server.
//!
//! Routes: `POST /exec` (`{code, kernel, timeout, cwd}`, answered with tagged chunks),
//! `POST /files/upload` (multipart, field `file`), `GET /files/download/{path}`, and on the
//! single-box server `GET /` for health. Nothing else exists, so listing, deleting,
//! installing, restarting, interrupting and commands are unsupported.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use http::Method;
use http::header::HeaderName;

use codebox_core::{
    BoxState, BoxStatus, ByteStream, Capabilities, CodeBoxError, EventStream, ExecEvent, FileInfo, Outcome, Result,
    RunOptions,
};
use codebox_http::client::{Request, Retry};

use crate::builder::Protocol;
use crate::path::{encode_component, encode_file_path};
use crate::remote_box::Inner;
use crate::tagged::TaggedParser;

/// What this protocol can do: run Python or bash with streamed output, move files.
pub(crate) fn capabilities() -> Capabilities {
    let mut caps = Capabilities::minimal(["python", "bash"]);
    caps.streaming = true;
    caps
}

pub(crate) fn unsupported(operation: &str) -> CodeBoxError {
    CodeBoxError::unsupported(format!("{operation} (the codebox-api 0.2 protocol has no such route)"))
}

/// The root the routes hang off.
fn root(i: &Inner) -> String {
    match i.conn.protocol {
        Protocol::CodeboxApi => format!("{}/codebox/{}", i.conn.base, encode_component(&i.conn.id)),
        _ => i.conn.base.clone(),
    }
}

fn request(i: &Inner, method: Method, route: &str) -> Result<Request> {
    let mut req = i.request(method, &format!("{}{route}", root(i)))?;
    let factory = i.conn.factory_id.as_deref().or((i.conn.protocol == Protocol::CodeboxApi).then_some("default"));
    if let Some(factory) = factory {
        req = req.header(HeaderName::from_static("factory-id"), factory)?;
    }
    Ok(req)
}

pub(crate) async fn start(i: &Inner) -> Result<()> {
    if i.conn.protocol == Protocol::CodeboxApiServer {
        // The single-box server answers `GET /` with {"status": "ok"}.
        let health: serde_json::Value = i.conn.http.send(request(i, Method::GET, "/")?).await?.json().await?;
        if health.get("status").and_then(|s| s.as_str()) != Some("ok") {
            return Err(CodeBoxError::protocol(format!("unexpected health answer {health}")));
        }
    }
    // The hosted service creates the session on first use.
    i.stopped.store(false, Ordering::Release);
    i.running.store(true, Ordering::Release);
    Ok(())
}

pub(crate) async fn stop(i: &Inner) -> Result<()> {
    i.running.store(false, Ordering::Release);
    i.stopped.store(true, Ordering::Release);
    Ok(())
}

pub(crate) async fn status(i: &Inner) -> Result<BoxStatus> {
    if !i.running.load(Ordering::Acquire) {
        return Ok(i.not_running_status());
    }
    if i.conn.protocol == Protocol::CodeboxApiServer {
        i.conn.http.send(request(i, Method::GET, "/")?).await?.discard().await?;
    }
    Ok(BoxStatus::new(BoxState::Idle).with_kernel("ipython"))
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

pub(crate) async fn run_stream(i: &Inner, code: &str, options: RunOptions) -> Result<EventStream> {
    i.ensure_running()?;
    let kernel = kernel_for(options.language.as_deref())?;
    if !options.env.is_empty() {
        return Err(unsupported("per-execution environment variables"));
    }
    let timeout = options.timeout.map(|t| t.as_secs_f64().ceil().max(1.0) as u64);
    let body = serde_json::json!({"code": code, "kernel": kernel, "timeout": timeout, "cwd": options.cwd});
    let started = Instant::now();
    let req = request(i, Method::POST, "/exec")?.json(&body)?.retry(Retry::Never);
    let response = i.conn.http.send(req).await?;
    let state = (response.into_stream(), TaggedParser::default(), false);
    Ok(Box::pin(stream::unfold(state, move |(mut body, mut parser, mut done)| async move {
        if done {
            return None;
        }
        loop {
            match parser.next_event() {
                Ok(Some(event)) => return Some((Ok(event), (body, parser, done))),
                Ok(None) => {}
                Err(e) => return Some((Err(e), (body, parser, true))),
            }
            match body.next().await {
                Some(Ok(chunk)) => parser.push(&chunk),
                Some(Err(e)) => return Some((Err(e), (body, parser, true))),
                None => {
                    done = true;
                    if parser.has_leftover() {
                        let err = CodeBoxError::protocol("the execution stream ended inside an output chunk");
                        return Some((Err(err), (body, parser, done)));
                    }
                    let end = ExecEvent::end(None, started.elapsed(), Outcome::Ok);
                    return Some((Ok(end), (body, parser, done)));
                }
            }
        }
    })))
}

pub(crate) async fn upload(i: &Inner, path: &str, content: ByteStream) -> Result<FileInfo> {
    encode_file_path(path)?;
    if path.chars().any(|c| c.is_control()) {
        return Err(CodeBoxError::invalid(format!("file name {path:?} contains control characters")));
    }
    i.ensure_running()?;
    let boundary = format!("codebox-{}", crate::remote_box::new_session_id());
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
    let req = request(i, Method::POST, "/files/upload")?
        .stream(&format!("multipart/form-data; boundary={boundary}"), Box::pin(body))?
        .with_timeout(None);
    i.conn.http.send(req).await?.discard().await?;
    let name = path.rsplit('/').next().unwrap_or(path).to_owned();
    Ok(FileInfo { path: path.to_owned(), name, size: size.load(Ordering::Relaxed), is_dir: false, modified: None })
}

pub(crate) async fn download(i: &Inner, path: &str) -> Result<ByteStream> {
    let encoded = encode_file_path(path)?;
    i.ensure_running()?;
    let req = request(i, Method::GET, &format!("/files/download/{encoded}"))?;
    Ok(i.conn.http.send(req).await?.into_stream())
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

//! envd, E2B's in-sandbox daemon (port 49983 traffic): `/health`, `/files`, and the
//! `filesystem.Filesystem` and `process.Process` Connect RPC services, in JSON.
//!
//! | request | answer |
//! |---|---|
//! | `GET /health` | 204 |
//! | `GET /files?path=` | the file's bytes (gzip when asked); 404 / 400 `{"code","message"}` |
//! | `POST /files[?path=]` | multipart (field `file`, file name = path, several parts) or raw bytes (`Content-Encoding: gzip` too); `[{"name","type":"file","path"}]` |
//! | `POST /filesystem.Filesystem/{ListDir,Stat,MakeDir,Remove,Move}` | unary |
//! | `POST /process.Process/{Start,Connect}` | server streams |
//! | `POST /process.Process/{List,SendInput,CloseStdin,SendSignal}` | unary |
//!
//! The routes are matched on the path's tail, so that they work under a prefix (`/e2b`).

mod connect;
mod files;
mod filesystem;
mod process;
mod protojson;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use codebox_core::Result;
use codebox_http::server::Body;
use futures::{Stream, StreamExt};
use http::{HeaderMap, Method};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use self::connect::{Code, ConnectError, Shape};
use crate::sessions::Session;
use crate::state::AppState;

/// The shortest keepalive interval a client may ask for (`Keepalive-Ping-Interval`).
const MIN_KEEPALIVE: Duration = Duration::from_secs(1);
/// The longest.
const MAX_KEEPALIVE: Duration = Duration::from_secs(3600);

/// Answer one envd request for `session` (already authenticated and resolved: the caller's
/// own, running).
pub(crate) async fn handle(state: &Arc<AppState>, session: Arc<Session>, req: Request<Incoming>) -> Response<Body> {
    session.touch();
    let path = req.uri().path().to_owned();
    if path == "/health" || path.ends_with("/health") {
        return match *req.method() {
            Method::GET | Method::HEAD => status_only(StatusCode::NO_CONTENT),
            _ => status_only(StatusCode::METHOD_NOT_ALLOWED),
        };
    }
    if path == "/files" || path.ends_with("/files") {
        return match *req.method() {
            Method::GET | Method::HEAD => files::download(state, &session, req).await,
            Method::POST => files::upload(state, &session, req).await,
            _ => status_only(StatusCode::METHOD_NOT_ALLOWED),
        };
    }
    rpc(state, session, &path, req).await
}

fn status_only(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = status;
    resp
}

/// A Connect call: `POST /<package.Service>/<Method>`.
async fn rpc(state: &Arc<AppState>, session: Arc<Session>, path: &str, req: Request<Incoming>) -> Response<Body> {
    let mut segments = path.trim_end_matches('/').rsplit('/');
    let (method, service) = (segments.next().unwrap_or(""), segments.next().unwrap_or(""));
    let streaming = match service {
        "filesystem.Filesystem" => filesystem::is_streaming(method),
        "process.Process" => process::is_streaming(method),
        _ => {
            return ConnectError::new(Code::NotFound, format!("no envd route {path}")).unary_response();
        }
    };
    let shape = match connect::shape_of(req.headers()) {
        Ok(shape) => shape,
        Err(e) => return e.unary_response(),
    };
    // Errors are answered in the shape the client reads.
    let fail = |e: ConnectError| match shape {
        Shape::Unary => e.unary_response(),
        Shape::ServerStream => connect::stream_error(&e),
    };
    if req.method() != Method::POST {
        let mut resp =
            fail(ConnectError::new(Code::Unimplemented, format!("{} {path}: Connect calls are POST", req.method())));
        *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        return resp;
    }
    let served = match service {
        "filesystem.Filesystem" => matches!(method, "ListDir" | "Stat" | "MakeDir" | "Remove" | "Move"),
        _ => matches!(method, "Start" | "Connect" | "List" | "SendInput" | "CloseStdin" | "SendSignal"),
    };
    if !served {
        let error = if service == "process.Process" {
            process::unserved(method)
        } else {
            ConnectError::new(Code::Unimplemented, format!("{service}/{method} is not served"))
        };
        return fail(error);
    }
    match (streaming, shape) {
        (true, Shape::Unary) => {
            return fail(ConnectError::invalid(format!(
                "{service}/{method} streams its answer: call it with `{}`",
                connect::STREAM_JSON
            )));
        }
        (false, Shape::ServerStream) => {
            return fail(ConnectError::invalid(format!(
                "{service}/{method} is unary: call it with `{}`",
                connect::UNARY_JSON
            )));
        }
        _ => {}
    }
    let timeout = match connect::timeout_of(req.headers()) {
        Ok(timeout) => timeout,
        Err(e) => return fail(e),
    };
    let keepalive = keepalive_of(req.headers(), state.config.keepalive_interval);
    let message: serde_json::Value = match connect::read_message(state, shape, req).await {
        Ok(message) => message,
        Err(e) => return fail(e),
    };
    if !message.is_object() {
        return fail(ConnectError::invalid("the request message must be a JSON object"));
    }
    if streaming {
        let follow = process::Follow { timeout, keepalive };
        return match method {
            "Start" => process::start(session, message, follow).await,
            _ => process::connect(session, message, follow).await,
        };
    }
    let call = async {
        match service {
            "filesystem.Filesystem" => filesystem::call(&session, method, message).await,
            _ => process::call(&session, method, message).await,
        }
    };
    let result = match timeout {
        Some(timeout) => tokio::time::timeout(timeout, call).await.unwrap_or_else(|_| {
            Err(ConnectError::new(Code::DeadlineExceeded, format!("the call's deadline of {timeout:?} passed")))
        }),
        None => call.await,
    };
    match result {
        Ok(answer) => connect::unary_ok(&answer),
        Err(e) => e.unary_response(),
    }
}

/// The keepalive interval a streaming call asks for (`Keepalive-Ping-Interval`, seconds),
/// kept within bounds; else the server's.
fn keepalive_of(headers: &HeaderMap, default: Duration) -> Duration {
    headers
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|secs| Duration::from_secs(secs).clamp(MIN_KEEPALIVE, MAX_KEEPALIVE))
        .unwrap_or(default)
}

/// A stream fed by `body` through a channel of one chunk: the producer runs only as fast as
/// the consumer reads, and stops when the consumer is dropped (it is polled by the stream
/// itself, so nothing outlives the response). An error the producer returns is the stream's
/// last item.
pub(super) fn channel_stream<F, Fut>(body: F) -> impl Stream<Item = Result<Bytes>> + Send + 'static
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Bytes>>) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let fut = body(tx.clone());
    let producer = async move {
        if let Err(e) = fut.await {
            let _ = tx.send(Err(e)).await;
        }
    };
    let receiver = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    futures::stream::select(futures::stream::once(producer).filter_map(|()| std::future::ready(None)), receiver)
}

//! Drop-in compatibility with the Python `codeboxapi` clients: every request whose path
//! starts with `/api/v1/` (codebox-api 0.1) or `/api/v2/` (codebox-api 0.2) comes here, and
//! existing users switch by pointing `CODEBOX_BASE_URL` at this server. The modules are named
//! after the client version they serve (`api01`, `api02`), so that "v1" names only the
//! native API.
//!
//! Both protocols run on the session registry, so every session is an ordinary session of
//! the caller's key (visible to the native API, reaped when idle, stopped on shutdown), and
//! every operation maps onto the [`CodeBox`](codebox_core::CodeBox) trait. Both clients send
//! `Authorization: Bearer <CODEBOX_API_KEY>`; a missing or unknown key gets 401. Clients
//! must set `CODEBOX_API_KEY` to a key of this server: both treat an unset key (0.1) or the
//! values `local` and `docker` (0.2) as a request for a box of their own, not a server.
//!
//! # codebox-api 0.1.x (`api01`) — `CODEBOX_BASE_URL=http://HOST:PORT/api/v1`
//!
//! The `CodeBox` class (sync methods over `requests`, `a*` async twins over `aiohttp`; both
//! send the same requests). It treats any status but 200 as a failure and reads the failure
//! body as JSON, so every answer is 200 or a JSON error. The session id is an integer (the
//! client keeps `UUID(int=id)` and puts `uuid.int` in paths), so sessions started here get a
//! random id below 2^128, written in decimal as the registry id.
//!
//! | client call | request | answer |
//! |---|---|---|
//! | `start` | `GET /codebox/start` | `{"id": <int>}`; a new session |
//! | `status` | `GET /codebox/{id}/` | `{"status": "running" \| "started" \| "stopped" \| "dead"}` |
//! | `run(code)` | `POST /codebox/{id}/run` `{"code"}` | `{"type": "text" \| "image/png" \| "error", "content"}` |
//! | `upload(name, bytes)` | `POST /codebox/{id}/upload`, multipart field `file` | `{"status": "<name> uploaded successfully"}` |
//! | `download(name)` | `GET /codebox/{id}/download` with a JSON body `{"file_name"}` | raw bytes, `application/octet-stream`, `Content-Disposition: attachment; filename=<name>` (the client takes the name after `=`) |
//! | `install(pkg)` | `POST /codebox/{id}/install` `{"package_name"}` | `{"status": "<pkg> installed successfully"}` |
//! | `list_files` | `GET /codebox/{id}/files` | `{"files": [<name>, ...]}` (the working directory, like `os.listdir`) |
//! | `restart` | `POST /codebox/{id}/restart` | `{"status": "restarted"}` |
//! | `stop` | `POST /codebox/{id}/stop` | `{"status": "stopped"}`; the session is gone |
//!
//! `run` answers like the client's own local box: the first image shown (`image/png`, base64)
//! or the first exception (`error`, `"Name: value"`), else all text output in order (stdout,
//! stderr, the cell's value), or `code run successfully (no output)`. `download` also takes
//! `?file_name=` for clients that cannot send a body with `GET`.
//!
//! # codebox-api 0.2.x (`api02`) — `CODEBOX_BASE_URL=http://HOST:PORT/api/v2`
//!
//! `RemoteBox` (`httpx`), which also sends `Factory-Id` (ignored here). The session id is the
//! client's choice (`uuid4().hex` by default); its first request creates the session under
//! that id. Only `exec`, `upload` and `stream_download` are requests; the other calls are
//! built by the client on `exec`.
//!
//! | client call | request | answer |
//! |---|---|---|
//! | `exec`, `stream_exec` | `POST /codebox/{id}/exec` `{"code", "kernel": "ipython" \| "bash", "cwd"?, "timeout"?}` | 200, a stream of tagged chunks `<txt>..</txt>`, `<img>..</img>`, `<err>..</err>`, nothing between them |
//! | `upload(path, content)` | `POST /codebox/{id}/files/upload`, multipart field `file` whose file name is the path | 200 `FileInfo` JSON (the client only checks the status) |
//! | `stream_download(path)` | `GET /codebox/{id}/files/download/{path}` | raw bytes, streamed |
//! | `download(path)` | `list_files`, then `stream_download` | |
//! | `list_files` | bash `find . -type f -exec du -h {} + \| awk '{print $2, $1}' \| sort` | |
//! | `install(*pkgs)` | bash `uv pip install <pkgs>` | |
//! | `list_packages` | bash `uv pip list \| tail -n +3 \| cut -d ' ' -f 1` | |
//! | `show_variables` | ipython `%who`, then `print(<name>, end='')` for each name | |
//! | `restart` | ipython `%restart` | |
//! | `healthcheck` | bash `echo ok`; healthy when the text holds `ok` | |
//! | (the 0.2 server's health) | `GET /codebox/{id}/` | `{"status": "ok"}` |
//!
//! Chunks map execution events: stdout and a text value or display are `txt`; a PNG in a
//! display or value is `img` (base64); stderr, a raised exception (its traceback, else
//! `Name: value`), a timeout, an interruption and a failure of the box mid-way are `err`. The
//! client parses chunks from the start of its buffer, so nothing (not even a keepalive) goes
//! between them, and content holding its own closing tag is split into several chunks of the
//! same kind that join back to it exactly. A client that disconnects drops the event stream,
//! which interrupts the code.
//!
//! Kernels: `ipython` is the box's default kernel, and the exact code `%restart` is the box's
//! `restart()`. `bash` runs in the box's `bash` kernel when it has one (streamed), else as
//! `bash -c <code>` through `run_command` (output at the end). A plain `uv pip install <pkgs>`
//! is the box's `install()`; any other `uv pip ...` in bash code is served by a shell function
//! running `pip` of the box's Python kernel, so the helpers work in boxes without `uv`.

mod api01;
mod api02;
pub(crate) mod multipart;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use codebox_core::{ByteStream, CodeBoxError, ErrorKind, Result};
use codebox_http::server::{ApiError, Body, json_response, read_budgeted, stream_limited};
use futures::StreamExt;
use http::{HeaderValue, Method, header};
use http_body::Body as HttpBody;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

use crate::auth::Owner;
use crate::sessions::Session;
use crate::state::{ApiResult, AppState};

/// The path prefix of the codebox-api 0.1 client's protocol.
const API01_PREFIX: &str = "/api/v1";
/// The path prefix of the codebox-api 0.2 client's protocol.
const API02_PREFIX: &str = "/api/v2";

/// Answer one compatibility request. `owner` is `None` when the request carried no key or an
/// unknown one: every compatibility route needs a key, so that is a 401.
pub(crate) async fn handle(state: &AppState, owner: Option<Owner>, req: Request<Incoming>) -> Response<Body> {
    let Some(owner) = owner else {
        let err =
            ApiError::new(401, ErrorKind::Authentication, "a valid `Authorization: Bearer <key>` header is required");
        return state.fail(&err);
    };
    let scope = Scope { state, owner };
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let (client, rest) = if let Some(rest) = path.strip_prefix(API01_PREFIX) {
        (ClientVersion::Api01, rest)
    } else if let Some(rest) = path.strip_prefix(API02_PREFIX) {
        (ClientVersion::Api02, rest)
    } else {
        return state.fail(&no_route(&method, &path));
    };
    // Both protocols put every operation under `/codebox/{id}/{op}`.
    let Some(after) = rest.strip_prefix("/codebox/") else {
        return state.fail(&no_route(&method, &path));
    };
    let (id, op) = after.split_once('/').unwrap_or((after, ""));
    let route = SessionRoute { method: &method, path: &path, id, op };
    let result = match client {
        ClientVersion::Api01 => api01::handle(&scope, &route, req).await,
        ClientVersion::Api02 => api02::handle(&scope, &route, req).await,
    };
    result.unwrap_or_else(|err| state.fail(&err))
}

/// Which codebox-api client a request comes from, by its path prefix.
#[derive(Debug, Clone, Copy)]
enum ClientVersion {
    /// codebox-api 0.1, under `/api/v1`.
    Api01,
    /// codebox-api 0.2, under `/api/v2`.
    Api02,
}

/// A compatibility request for `/codebox/{id}/{op}`.
#[derive(Debug, Clone, Copy)]
struct SessionRoute<'a> {
    /// The request's method.
    method: &'a Method,
    /// The full request path, for error messages.
    path: &'a str,
    /// The session id, as the client wrote it.
    id: &'a str,
    /// The operation: the rest of the path, empty for `/codebox/{id}`.
    op: &'a str,
}

impl SessionRoute<'_> {
    /// The 404 for this request.
    fn no_route(&self) -> ApiError {
        no_route(self.method, self.path)
    }

    /// The 405 for this request.
    fn wrong_method(&self) -> ApiError {
        wrong_method(self.method, self.path)
    }
}

/// One caller's view of the server: its sessions and the request limits.
struct Scope<'a> {
    state: &'a AppState,
    owner: Owner,
}

impl Scope<'_> {
    /// The caller's session `id`, created (and started) when it has none by that id, and
    /// resumed when it is paused.
    async fn open(&self, id: &str) -> ApiResult<Arc<Session>> {
        let (session, _) = self.state.registry.get_or_create(self.owner, Some(id), None).await?;
        if session.is_paused() {
            return self.state.registry.require_live(self.owner, id).await;
        }
        Ok(session)
    }

    /// The caller's existing session `id`, resumed when it is paused.
    async fn get(&self, id: &str) -> ApiResult<Arc<Session>> {
        self.state.registry.require_live(self.owner, id).await
    }

    /// Stop and forget the caller's session `id`.
    async fn close(&self, id: &str) -> ApiResult<()> {
        if self.state.registry.stop(self.owner, id).await {
            Ok(())
        } else {
            Err(self.state.registry.missing(self.owner, id))
        }
    }

    /// A JSON body, read with the JSON limit; `None` when the body is empty.
    async fn read_json<B, T>(&self, req: Request<B>) -> ApiResult<Option<T>>
    where
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: std::error::Error + 'static,
        T: serde::de::DeserializeOwned,
    {
        let config = &self.state.config;
        let body =
            read_budgeted(req.into_body(), config.max_json_bytes, config.body_idle_timeout, &self.state.body_budget)
                .await?;
        if body.bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        serde_json::from_slice(&body.bytes)
            .map(Some)
            .map_err(|e| ApiError::new(400, ErrorKind::InvalidInput, format!("malformed JSON body: {e}")))
    }

    /// Upload the file part of a multipart request into `session`'s box, streamed, with the
    /// upload limit applied. Returns the file name the client gave and the written file.
    async fn upload<B>(&self, session: &Session, req: Request<B>) -> ApiResult<(String, codebox_core::FileInfo)>
    where
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: std::error::Error + 'static,
    {
        let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let boundary = multipart::boundary(content_type)
            .map_err(|e| ApiError::new(415, ErrorKind::InvalidInput, strip_kind(&e)))?;
        let config = &self.state.config;
        // The framing around the file adds a little; allow for it on top of the file limit.
        let body = stream_limited(
            req.into_body(),
            config.max_upload_bytes.saturating_add(64 * 1024),
            config.body_idle_timeout,
        );
        // A body that stalls or grows too large before the file part is answered as any
        // request body (408, 413).
        let part = multipart::first_file_part(body, &boundary).await.map_err(|e| ApiError::from_body_error(&e))?;
        if part.field != "file" {
            tracing::debug!(field = %part.field, "the upload's file field is not named `file`; taking it anyway");
        }
        let metrics = Arc::clone(&self.state.metrics);
        let limit = config.max_upload_bytes;
        let mut seen = 0u64;
        // What went wrong with the body, kept for the answer: the box sees the error in the
        // stream, but answers with its own view of it.
        let failure: Arc<std::sync::Mutex<Option<ApiError>>> = Arc::default();
        let record = Arc::clone(&failure);
        let content: ByteStream = Box::pin(part.content.map(move |chunk| {
            let checked = chunk.and_then(|bytes| {
                seen += bytes.len() as u64;
                if seen > limit {
                    let message = format!("the file exceeds the upload limit of {limit} bytes");
                    return Err(CodeBoxError::too_large(message));
                }
                Ok(bytes)
            });
            match checked {
                Ok(bytes) => {
                    metrics.uploaded(bytes.len() as u64);
                    Ok(bytes)
                }
                Err(e) => {
                    let mut slot = record.lock().unwrap_or_else(|p| p.into_inner());
                    slot.get_or_insert_with(|| ApiError::from_body_error(&e));
                    Err(e)
                }
            }
        }));
        let result = session.codebox.upload(&part.file_name, content).await;
        let failure = failure.lock().unwrap_or_else(|p| p.into_inner()).take();
        match (result, failure) {
            (Ok(info), None) => Ok((part.file_name, info)),
            (result, Some(failure)) => {
                if result.is_ok() {
                    // The box kept what it got before the body failed: remove the partial file.
                    let _ = session.codebox.delete_file(&part.file_name).await;
                }
                Err(failure)
            }
            (Err(e), None) => Err(e.into()),
        }
    }

    /// The file at `path` as a streamed download with the headers both clients expect
    /// (`Content-Length` when the box knows the size; `name` in `Content-Disposition`). The
    /// session counts as in use until the body is sent or dropped.
    async fn download(&self, session: &Arc<Session>, path: &str, name: &str) -> ApiResult<Response<Body>> {
        // The 0.1 client takes everything after the first `=` as the name, so it goes
        // unquoted; what a header cannot carry is percent-encoded.
        let disposition =
            HeaderValue::from_str(&format!("attachment; filename={}", header_safe(name))).map_err(|e| {
                CodeBoxError::invalid(format!("file name {name:?} cannot be sent in a header: {e}")).with_source(e)
            })?;
        let guard = session.use_guard();
        let (dir, file) = path.rsplit_once('/').unwrap_or(("", path));
        let size = match session.codebox.list_files(dir, false).await {
            Ok(listing) => listing.into_iter().find(|f| f.name == file).map(|f| (f.size, f.is_dir)),
            // No such directory, an unsafe path and the like: the download below fails with
            // the error that fits.
            Err(_) => None,
        };
        if let Some((_, true)) = size {
            return Err(CodeBoxError::invalid(format!("{path} is a directory, not a file")).into());
        }
        let slot = self.state.downloads.take(session.owner)?;
        let content = session.codebox.download(path).await?;
        let metrics = Arc::clone(&self.state.metrics);
        let content = content.inspect(move |chunk| {
            let _in_use = (&guard, &slot);
            if let Ok(bytes) = chunk {
                metrics.downloaded(bytes.len() as u64);
            }
        });
        let mut resp = match size {
            Some((len, _)) => {
                let mut resp = Response::new(Body::sized_stream(content, len));
                resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
                resp
            }
            None => Response::new(Body::from_stream(content)),
        };
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, disposition);
        Ok(resp)
    }
}

/// Counts one execution in the server's metrics: started when made, ended exactly once (as
/// disconnected when dropped before [`finish`](Self::finish)).
struct ExecutionMetrics {
    metrics: Arc<crate::metrics::Metrics>,
    started: std::time::Instant,
    ended: bool,
}

impl ExecutionMetrics {
    fn start(state: &AppState) -> Self {
        state.metrics.execution_started();
        Self { metrics: Arc::clone(&state.metrics), started: std::time::Instant::now(), ended: false }
    }

    fn finish(&mut self, end: crate::metrics::ExecutionEnd) {
        if !self.ended {
            self.ended = true;
            self.metrics.execution_ended(end, self.started.elapsed());
        }
    }
}

impl Drop for ExecutionMetrics {
    fn drop(&mut self) {
        self.finish(crate::metrics::ExecutionEnd::Disconnected);
    }
}

/// A 404 for a path no route serves.
fn no_route(method: &Method, path: &str) -> ApiError {
    ApiError::new(404, ErrorKind::NotFound, format!("no route for {method} {path}"))
}

/// A 405 for a known path with another method.
fn wrong_method(method: &Method, path: &str) -> ApiError {
    ApiError::new(405, ErrorKind::InvalidInput, format!("{method} is not allowed on {path}"))
}

/// A 200 JSON answer.
fn ok_json<T: serde::Serialize + ?Sized>(value: &T) -> ApiResult<Response<Body>> {
    Ok(json_response(StatusCode::OK, value))
}

/// An error's message without the `invalid input: ` its display adds.
fn strip_kind(err: &CodeBoxError) -> String {
    match err {
        CodeBoxError::InvalidInput { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// What a `Content-Disposition` file name cannot carry as is: control characters, non-ASCII
/// bytes (always encoded by `percent-encoding`) and `;`, `"`, `\`, `%`.
const HEADER_UNSAFE: &AsciiSet = &CONTROLS.add(b';').add(b'"').add(b'\\').add(b'%');

/// `name` with control characters, non-ASCII bytes and `;`, `"`, `\`, `%` percent-encoded.
fn header_safe(name: &str) -> String {
    utf8_percent_encode(name, HEADER_UNSAFE).to_string()
}

/// Decode `%XX` escapes; `None` when an escape is malformed or the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    codebox_http::percent::decode_component(s).ok()
}

/// Seconds from a client, as a timeout.
fn timeout_secs(secs: Option<f64>) -> Result<Option<Duration>> {
    match secs {
        None => Ok(None),
        // Bounded well inside what `Duration` and deadline arithmetic can hold.
        Some(s) if s.is_finite() && s > 0.0 && s < 1e9 => Duration::try_from_secs_f64(s)
            .map(Some)
            .map_err(|e| CodeBoxError::invalid(format!("timeout {s} is not a duration: {e}")).with_source(e)),
        Some(s) => Err(CodeBoxError::invalid(format!("timeout must be a positive number of seconds, got {s}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_refuses_bad_escapes() {
        assert_eq!(percent_decode("a%20b%2Fc").as_deref(), Some("a b/c"));
        assert_eq!(percent_decode("na%C3%AFve").as_deref(), Some("naïve"));
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("bad%zz"), None);
        assert_eq!(percent_decode("%FF"), None);
    }

    #[test]
    fn header_names_stay_readable_and_safe() {
        assert_eq!(header_safe("plot 1.png"), "plot 1.png");
        assert_eq!(header_safe("a;b\"c\n"), "a%3Bb%22c%0A");
        assert_eq!(header_safe("é"), "%C3%A9");
    }

    #[test]
    fn timeouts_must_be_positive_seconds() {
        assert_eq!(timeout_secs(Some(1.5)).unwrap(), Some(Duration::from_millis(1500)));
        assert_eq!(timeout_secs(None).unwrap(), None);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e300, 1.9e19] {
            assert!(timeout_secs(Some(bad)).is_err(), "{bad}");
        }
    }
}

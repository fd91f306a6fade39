//! The protocol of the codebox-api 0.2 client (`/api/v2`). See the module docs of `compat`
//! for the table.

use bytes::Bytes;
use codebox_core::{CodeBox, CodeBoxError, CommandSpec, ErrorKind, ExecEvent, Outcome, Result, RunOptions};
use codebox_http::server::Body;
use futures::{Stream, StreamExt, stream};
use http::{HeaderValue, Method, Request, Response, header};
use http_body::Body as HttpBody;
use serde::Deserialize;

use super::api01::png;
use super::{ExecutionMetrics, Scope, SessionRoute, ok_json, timeout_secs};
use crate::metrics::ExecutionEnd;
use crate::sessions::SessionUse;
use crate::sessions::valid_session_id;
use crate::state::ApiResult;

/// `POST /codebox/{id}/exec`.
#[derive(Debug, Deserialize)]
struct ExecBody {
    code: String,
    #[serde(default)]
    kernel: Option<String>,
    #[serde(default)]
    cwd: Option<String>,
    /// Seconds; the 0.2 server accepts it, the 0.2 client does not send it.
    #[serde(default)]
    timeout: Option<f64>,
}

/// A stream of tagged chunks, each a complete `<tag>...</tag>`.
type ChunkStream = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes>> + Send + 'static>>;

/// Serve a `/api/v2/codebox/{id}/{op}` request.
pub(super) async fn handle<B>(scope: &Scope<'_>, route: &SessionRoute<'_>, req: Request<B>) -> ApiResult<Response<Body>>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + 'static,
{
    let SessionRoute { method, id, op, .. } = *route;
    if !valid_session_id(id) {
        return Err(route.no_route());
    }
    match op {
        // The 0.2 server answers `GET /` with its health.
        "" => {
            if method != Method::GET {
                return Err(route.wrong_method());
            }
            scope.open(id).await?;
            ok_json(&serde_json::json!({"status": "ok"}))
        }
        "exec" => {
            if method != Method::POST {
                return Err(route.wrong_method());
            }
            let body: ExecBody = scope
                .read_json(req)
                .await?
                .ok_or_else(|| CodeBoxError::invalid("exec needs a JSON body {\"code\": ...}"))?;
            let session = scope.open(id).await?;
            let running = session.execution_guard();
            let mut counted = ExecutionMetrics::start(scope.state);
            let chunks = match exec(session.codebox.as_ref(), body).await {
                Ok(chunks) => chunks,
                Err(e) => {
                    counted.finish(ExecutionEnd::Failed);
                    return Err(e.into());
                }
            };
            // The session stays in use, and counts as executing, until the stream ends or the
            // client goes away (which counts as a disconnect).
            let chunks = Counted { chunks, counted, errors: false, _running: running };
            let mut resp = Response::new(Body::from_stream(chunks));
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
            resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(resp)
        }
        "files/upload" => {
            if method != Method::POST {
                return Err(route.wrong_method());
            }
            let session = scope.open(id).await?;
            let _in_use = session.use_guard();
            let (_, info) = scope.upload(&session, req).await?;
            ok_json(&info)
        }
        _ => {
            let Some(path) = op.strip_prefix("files/download/") else {
                return Err(route.no_route());
            };
            if method != Method::GET {
                return Err(route.wrong_method());
            }
            let path = super::percent_decode(path).ok_or_else(|| {
                CodeBoxError::invalid(format!("the file path {path:?} is not valid percent-encoded UTF-8"))
            })?;
            let session = scope.open(id).await?;
            let name = path.rsplit('/').next().unwrap_or(&path).to_owned();
            scope.download(&session, &path, &name).await
        }
    }
}

/// An execution's chunks, counted in the metrics when they end: with an error outcome when
/// any chunk was an `<err>`.
struct Counted {
    chunks: ChunkStream,
    counted: ExecutionMetrics,
    errors: bool,
    _running: SessionUse,
}

impl Stream for Counted {
    type Item = Result<Bytes>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Bytes>>> {
        let polled = self.chunks.poll_next_unpin(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(chunk))) => self.errors |= chunk.starts_with(b"<err>"),
            std::task::Poll::Ready(Some(Err(_))) => self.counted.finish(ExecutionEnd::Failed),
            std::task::Poll::Ready(None) => {
                let outcome = if self.errors { Outcome::Error } else { Outcome::Ok };
                self.counted.finish(ExecutionEnd::Finished(outcome));
            }
            std::task::Poll::Pending => {}
        }
        polled
    }
}

/// Run one `exec` request and return its chunks. Failures before any output are errors of
/// the request; failures once output flows become a last `<err>` chunk.
async fn exec(cb: &dyn CodeBox, body: ExecBody) -> Result<ChunkStream> {
    let mut options = RunOptions::new();
    options.timeout = timeout_secs(body.timeout)?;
    options.cwd = body.cwd.filter(|c| !c.is_empty() && c != ".");
    match body.kernel.as_deref().unwrap_or("ipython") {
        "ipython" | "python" | "python3" => {
            if body.code.trim() == "%restart" {
                cb.restart().await?;
                return Ok(Box::pin(stream::empty()));
            }
            Ok(event_chunks(cb.run_stream(&body.code, options).await?))
        }
        "bash" => bash(cb, &body.code, options).await,
        other => Err(CodeBoxError::invalid(format!("unsupported kernel {other:?}; use \"ipython\" or \"bash\""))),
    }
}

/// Run bash code: `uv pip install` on its own is the box's `install()`; anything else runs in
/// the box's bash kernel, or as `bash -c` when it has none.
async fn bash(cb: &dyn CodeBox, code: &str, options: RunOptions) -> Result<ChunkStream> {
    if let Some(packages) = uv_pip_install(code) {
        let chunks = match cb.install(&packages).await {
            Ok(output) => vec![tag("txt", &output)],
            Err(CodeBoxError::Install { output, .. }) => vec![tag("err", &output)],
            Err(e) if e.kind() == ErrorKind::Unsupported => return Err(e),
            Err(e) => vec![tag("err", &e.to_string())],
        };
        return Ok(chunks_of(chunks));
    }
    let script = if mentions_uv(code) { format!("{}\n{code}", uv_shim(cb).await) } else { code.to_owned() };
    let caps = cb.capabilities();
    if caps.languages.iter().any(|l| l == "bash") {
        let events = cb.run_stream(&script, options.with_language("bash")).await?;
        return Ok(event_chunks(events));
    }
    if !caps.commands {
        return Err(CodeBoxError::unsupported("the bash kernel: this box has neither a bash kernel nor commands"));
    }
    let mut spec = CommandSpec::new("bash").arg("-c").arg(script);
    spec.cwd = options.cwd;
    spec.timeout = options.timeout;
    let out = cb.run_command(spec).await?;
    let mut chunks = vec![tag("txt", &out.stdout), tag("err", &out.stderr)];
    if out.timed_out {
        chunks.push(tag("err", "the command timed out and was killed"));
    } else if out.stderr.is_empty() && !out.success() {
        let how =
            out.exit_code.map_or_else(|| "was killed by a signal".to_owned(), |c| format!("exited with code {c}"));
        chunks.push(tag("err", &format!("bash {how}")));
    }
    Ok(chunks_of(chunks))
}

/// The packages of a plain `uv pip install a b c` (no options, no shell syntax).
fn uv_pip_install(code: &str) -> Option<Vec<String>> {
    let code = code.trim();
    if code.contains(['\n', ';', '|', '&', '$', '`', '<', '>', '(', ')', '"', '\'', '\\', '#']) {
        return None;
    }
    let mut words = code.split_whitespace();
    if (words.next(), words.next(), words.next()) != (Some("uv"), Some("pip"), Some("install")) {
        return None;
    }
    let packages: Vec<String> = words.map(str::to_owned).collect();
    (!packages.is_empty() && packages.iter().all(|p| !p.starts_with('-'))).then_some(packages)
}

/// Whether bash code calls `uv` as a command word.
fn mentions_uv(code: &str) -> bool {
    code.split(|c: char| c.is_whitespace() || matches!(c, ';' | '|' | '&' | '(' | ')' | '`')).any(|w| w == "uv")
}

/// A bash function that serves `uv pip ...` with pip of the box's Python kernel (so
/// `uv pip list` shows what the kernel can import) and hands other `uv` commands on.
async fn uv_shim(cb: &dyn CodeBox) -> String {
    let python = match cb.run("import sys; print(sys.executable, end='')", RunOptions::default()).await {
        Ok(ex) if ex.is_ok() && !ex.stdout().trim().is_empty() => ex.stdout().trim().to_owned(),
        _ => "python3".to_owned(),
    };
    let quoted = format!("'{}'", python.replace('\'', r"'\''"));
    format!(
        "uv() {{ if [ \"$1\" = pip ]; then shift; {quoted} -m pip --disable-pip-version-check \"$@\"; else command uv \"$@\"; fi; }}"
    )
}

/// One complete chunk; empty content gives nothing.
///
/// The client ends a chunk at the first closing tag, so content that holds its own closing
/// tag (`print("</txt>")`) is split just inside it into several chunks of the same kind:
/// joined, they give the content back exactly, and the stream stays parseable.
fn tag(kind: &str, content: &str) -> Bytes {
    let close = format!("</{kind}>");
    let mut out = String::with_capacity(content.len() + 2 * close.len());
    let mut rest = content;
    while !rest.is_empty() {
        let cut = rest.find(&close).map_or(rest.len(), |at| at + 1);
        let (piece, tail) = rest.split_at(cut);
        out.push('<');
        out.push_str(kind);
        out.push('>');
        out.push_str(piece);
        out.push_str(&close);
        rest = tail;
    }
    Bytes::from(out)
}

fn chunks_of(chunks: Vec<Bytes>) -> ChunkStream {
    Box::pin(stream::iter(chunks.into_iter().filter(|c| !c.is_empty()).map(Ok)))
}

/// The chunks of an execution's events, as they happen. A failure of the box mid-way becomes
/// a last `<err>` chunk.
fn event_chunks(events: codebox_core::EventStream) -> ChunkStream {
    let chunks = events
        .scan(false, |failed, item| {
            if *failed {
                return std::future::ready(None);
            }
            let chunk = match item {
                Ok(event) => encode_event(&event),
                Err(e) => {
                    *failed = true;
                    tag("err", &e.to_string())
                }
            };
            std::future::ready(Some(chunk))
        })
        .filter(|c| std::future::ready(!c.is_empty()))
        .map(Ok);
    Box::pin(chunks)
}

/// The tagged form of one event (empty for events the protocol has no form for).
fn encode_event(event: &ExecEvent) -> Bytes {
    match event {
        ExecEvent::Stdout { text } => tag("txt", text),
        ExecEvent::Stderr { text } => tag("err", text),
        ExecEvent::Display { data, .. } | ExecEvent::UpdateDisplay { data, .. } | ExecEvent::Result { data, .. } => {
            match png(data) {
                Some(b64) => tag("img", &b64),
                None => tag("txt", &data.plain().unwrap_or_default()),
            }
        }
        ExecEvent::Error(info) => {
            if info.traceback.is_empty() {
                tag("err", &format!("{}: {}", info.name, info.value))
            } else {
                tag("err", &info.traceback.join("\n"))
            }
        }
        ExecEvent::Truncated { dropped_bytes } => {
            tag("err", &format!("output truncated: {dropped_bytes} bytes over the output limit were dropped"))
        }
        ExecEvent::End { outcome: Outcome::TimedOut, .. } => tag("err", "TimeoutError: the execution timed out"),
        ExecEvent::End { outcome: Outcome::Interrupted, .. } => {
            tag("err", "KeyboardInterrupt: the execution was interrupted")
        }
        _ => Bytes::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codebox_core::{ErrorInfo, MimeBundle};
    use futures::TryStreamExt;
    use std::time::Duration;

    #[test]
    fn events_become_tagged_chunks() {
        assert_eq!(encode_event(&ExecEvent::stdout("hi\n")), "<txt>hi\n</txt>");
        assert_eq!(encode_event(&ExecEvent::stderr("w")), "<err>w</err>");
        let mut bundle = MimeBundle::text_plain("<Figure>");
        bundle.insert(MimeBundle::PNG, serde_json::Value::String("iVBO\nRw==\n".into()));
        assert_eq!(encode_event(&ExecEvent::Display { data: bundle, display_id: None }), "<img>iVBORw==</img>");
        let value = ExecEvent::Result { data: MimeBundle::text_plain("2"), execution_count: Some(1) };
        assert_eq!(encode_event(&value), "<txt>2</txt>");
        let err = ErrorInfo { name: "E".into(), value: "v".into(), traceback: vec![] };
        assert_eq!(encode_event(&ExecEvent::Error(err)), "<err>E: v</err>");
        let end = ExecEvent::end(Some(1), Duration::ZERO, Outcome::Ok);
        assert!(encode_event(&end).is_empty());
        let timed_out = ExecEvent::end(Some(1), Duration::ZERO, Outcome::TimedOut);
        assert!(encode_event(&timed_out).starts_with(b"<err>TimeoutError"));
    }

    #[test]
    fn content_holding_its_closing_tag_is_split_so_the_client_can_parse_it() {
        assert_eq!(tag("txt", "a</txt>b"), "<txt>a<</txt><txt>/txt>b</txt>");
        assert_eq!(tag("txt", "</txt>"), "<txt><</txt><txt>/txt></txt>");
        assert_eq!(tag("err", "x</txt>y"), "<err>x</txt>y</err>");
        assert!(tag("img", "").is_empty());
    }

    #[tokio::test]
    async fn a_failure_mid_stream_is_the_last_chunk() {
        let events: codebox_core::EventStream = Box::pin(stream::iter(vec![
            Ok(ExecEvent::stdout("a")),
            Ok(ExecEvent::stdout("")),
            Err(CodeBoxError::protocol("cut")),
            Ok(ExecEvent::stdout("never")),
        ]));
        let chunks: Vec<Bytes> = event_chunks(events).try_collect().await.unwrap();
        assert_eq!(chunks, vec![Bytes::from("<txt>a</txt>"), Bytes::from("<err>protocol error: cut</err>")]);
    }

    #[test]
    fn only_plain_uv_pip_installs_are_intercepted() {
        assert_eq!(
            uv_pip_install("uv pip install six  tqdm==4.66.0\n"),
            Some(vec!["six".into(), "tqdm==4.66.0".into()])
        );
        assert_eq!(uv_pip_install("uv pip install -U six"), None);
        assert_eq!(uv_pip_install("uv pip install six; rm -rf x"), None);
        assert_eq!(uv_pip_install("uv pip install"), None);
        assert_eq!(uv_pip_install("uv pip list"), None);
        assert!(mentions_uv("uv pip list | tail -n +3 | cut -d ' ' -f 1"));
        assert!(mentions_uv("echo a && uv pip freeze"));
        assert!(!mentions_uv("echo uvicorn"));
    }
}

//! E2B's code interpreter (port 49999 traffic): `POST /execute` streamed as E2B's NDJSON,
//! `/contexts` on the box's contexts, `/health`.
//!
//! The stream's traps, as the SDK reads it: every line is one JSON object with a `type`,
//! never a blank line (the SDK's `json.loads('')` would raise in the user's `run_code`),
//! `end_of_execution` last and then the stream closes (the SDK reads to EOF), a `keepalive`
//! line after five seconds of silence. A client that goes away drops the stream, and with
//! it the box's event stream, which interrupts the code.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use codebox_core::{CodeBoxError, ContextInfo, ErrorKind, EventStream, ExecEvent, MimeBundle, Outcome, RunOptions};
use codebox_http::server::{ApiError, Body, json_response};
use futures::StreamExt;
use http::{HeaderValue, Method, header};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{no_content, no_route, read_json};
use crate::metrics::{ExecutionEnd, Metrics};
use crate::sessions::{Session, SessionUse};
use crate::state::{ApiResult, AppState};

/// Silence after which a `keepalive` line goes out (E2B's `KEEPALIVE_INTERVAL`).
const KEEPALIVE: Duration = Duration::from_secs(5);

/// `POST /execute`.
#[derive(Debug, Deserialize)]
struct ExecuteBody {
    code: String,
    #[serde(default)]
    context_id: Option<String>,
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    env_vars: Option<BTreeMap<String, String>>,
}

/// `POST /contexts`.
#[derive(Debug, Default, Deserialize)]
struct CreateContextBody {
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    cwd: Option<String>,
}

/// A context as E2B describes it.
#[derive(Debug, Serialize)]
struct E2bContext {
    id: String,
    language: String,
    cwd: String,
}

impl From<ContextInfo> for E2bContext {
    fn from(info: ContextInfo) -> Self {
        let cwd = match info.cwd.as_deref() {
            None | Some("") | Some(".") => super::paths::HOME.to_owned(),
            Some(dir) => format!("{}/{}", super::paths::HOME, dir.trim_start_matches("./")),
        };
        Self { id: info.id, language: info.language, cwd }
    }
}

/// Answer one code interpreter request for `session`.
pub(super) async fn handle(
    state: &Arc<AppState>,
    session: Arc<Session>,
    req: Request<Incoming>,
) -> ApiResult<Response<Body>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["health"]) => Ok(json_response(StatusCode::OK, &"OK")),
        (&Method::POST, ["execute"]) => execute(state, session, req).await,
        (&Method::POST, ["contexts"]) => {
            let body: CreateContextBody = read_json(state, req).await?.unwrap_or_default();
            let language = normalize_language(body.language.as_deref());
            let cwd = body.cwd.as_deref().map(super::paths::box_path).transpose()?;
            let cwd = cwd.filter(|c| !c.is_empty());
            let _use = session.use_guard();
            let info = session.codebox.create_context(Some(&language), cwd.as_deref()).await?;
            Ok(json_response(StatusCode::OK, &E2bContext::from(info)))
        }
        (&Method::GET, ["contexts"]) => {
            let contexts = session.codebox.contexts().await?;
            let listed: Vec<E2bContext> = contexts.into_iter().filter(|c| !c.default).map(E2bContext::from).collect();
            Ok(json_response(StatusCode::OK, &listed))
        }
        (&Method::POST, ["contexts", id, "restart"]) => {
            let _use = session.use_guard();
            session.codebox.restart_context(id).await?;
            Ok(no_content())
        }
        (&Method::DELETE, ["contexts", id]) => {
            let _use = session.use_guard();
            session.codebox.delete_context(id).await?;
            Ok(no_content())
        }
        _ => Err(no_route(&method, &path)),
    }
}

/// E2B's language names: `js` and `ts` are short for `javascript` and `typescript`, and no
/// language is Python.
fn normalize_language(language: Option<&str>) -> String {
    match language.map(|l| l.trim().to_ascii_lowercase()) {
        None => "python".to_owned(),
        Some(l) if l.is_empty() => "python".to_owned(),
        Some(l) if l == "js" => "javascript".to_owned(),
        Some(l) if l == "ts" => "typescript".to_owned(),
        Some(l) => l,
    }
}

/// The options of an execution in `language` (none: the box's default): the box's own
/// kernel when it runs that language, else a context of that language, made on first use
/// (as E2B keeps one default context per language).
async fn options_for(session: &Arc<Session>, language: Option<&str>) -> ApiResult<RunOptions> {
    let mut options = RunOptions::new();
    let Some(language) = language else { return Ok(options) };
    let language = normalize_language(Some(language));
    if session.codebox.capabilities().languages.contains(&language) {
        options.language = Some(language);
        return Ok(options);
    }
    let contexts = session.codebox.contexts().await?;
    let id = match contexts.into_iter().find(|c| !c.default && c.language == language) {
        Some(existing) => existing.id,
        None => {
            let _use = session.use_guard();
            session.codebox.create_context(Some(&language), None).await?.id
        }
    };
    options.context = Some(id);
    Ok(options)
}

async fn execute(state: &Arc<AppState>, session: Arc<Session>, req: Request<Incoming>) -> ApiResult<Response<Body>> {
    let body: ExecuteBody = read_json(state, req)
        .await?
        .ok_or_else(|| ApiError::new(400, ErrorKind::InvalidInput, "execute needs a JSON body {\"code\": ...}"))?;
    if body.context_id.is_some() && body.language.is_some() {
        return Err(ApiError::new(
            400,
            ErrorKind::InvalidInput,
            "only one of context_id and language may be given: a context has its own language",
        ));
    }
    let mut options = match &body.context_id {
        Some(context) => {
            let mut options = RunOptions::new();
            options.context = Some(context.clone());
            options
        }
        None => options_for(&session, body.language.as_deref()).await?,
    };
    options.env = body.env_vars.unwrap_or_default();
    let count_key = format!("{}/{}/{}", session.owner, session.id, options.context.as_deref().unwrap_or_default());
    let guard = session.execution_guard();
    let events = session.codebox.run_stream(&body.code, options).await?;
    state.metrics.execution_started();
    let predicted = state.e2b.counts.next(&count_key);
    let mut lines = Lines::new(events, Arc::clone(state), guard, session.id.clone());
    lines.count = Some((count_key, predicted));
    let mut resp = Response::new(Body::from_stream(lines.into_stream()));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// The text of a `text/plain` value as E2B gives it: surrounding quotes stripped.
fn strip_quotes(text: &str) -> &str {
    for quote in ['\'', '"'] {
        if text.len() >= 2
            && let Some(inner) = text.strip_prefix(quote).and_then(|t| t.strip_suffix(quote))
        {
            return inner;
        }
    }
    text
}

/// A `result` line of `data`: E2B's fields for the MIME types it knows, `extra` (always
/// present) for the rest.
fn result_line(data: &MimeBundle, is_main_result: bool) -> Value {
    let mut line = Map::new();
    line.insert("type".into(), json!("result"));
    line.insert("is_main_result".into(), json!(is_main_result));
    let mut extra = Map::new();
    for (mime, value) in &data.0 {
        let field = match mime.as_str() {
            "text/plain" => {
                let text = value.as_str().map(strip_quotes).map_or_else(|| value.clone(), |t| json!(t));
                line.insert("text".into(), text);
                continue;
            }
            "text/html" => "html",
            "text/markdown" => "markdown",
            "image/svg+xml" => "svg",
            "image/png" => "png",
            "image/jpeg" => "jpeg",
            "application/pdf" => "pdf",
            "text/latex" => "latex",
            "application/json" => "json",
            "application/javascript" => "javascript",
            "e2b/data" => "data",
            "e2b/chart" => "chart",
            _ => {
                extra.insert(mime.clone(), value.clone());
                continue;
            }
        };
        line.insert(field.into(), value.clone());
    }
    line.insert("extra".into(), Value::Object(extra));
    Value::Object(line)
}

fn now_iso() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

/// An `error` line.
fn error_line(name: &str, value: &str, traceback: &str) -> Value {
    json!({"type": "error", "name": name, "value": value, "traceback": traceback})
}

/// One execution's lines, with its metrics and its hold on the session.
struct Lines {
    events: EventStream,
    state: Arc<AppState>,
    /// Where the execution's count is kept, and the count the stream announced first.
    count: Option<(String, u64)>,
    started: Instant,
    ended: bool,
    /// Whether an `error` line went out: E2B sends at most one.
    errored: bool,
    session: String,
    _guard: SessionUse,
}

impl Lines {
    fn new(events: EventStream, state: Arc<AppState>, guard: SessionUse, session: String) -> Self {
        Self {
            events,
            state,
            count: None,
            started: Instant::now(),
            ended: false,
            errored: false,
            session,
            _guard: guard,
        }
    }

    fn metrics(&self) -> &Metrics {
        &self.state.metrics
    }

    fn finish(&mut self, end: ExecutionEnd) {
        if !self.ended {
            self.ended = true;
            self.metrics().execution_ended(end, self.started.elapsed());
        }
    }

    /// The lines of one event; the last of an end event is `end_of_execution`.
    fn lines_of(&mut self, event: ExecEvent) -> Vec<Value> {
        match event {
            ExecEvent::Stdout { text } => vec![json!({"type": "stdout", "text": text, "timestamp": now_iso()})],
            ExecEvent::Stderr { text } => vec![json!({"type": "stderr", "text": text, "timestamp": now_iso()})],
            ExecEvent::Display { data, .. } | ExecEvent::UpdateDisplay { data, .. } => vec![result_line(&data, false)],
            ExecEvent::Result { data, .. } => vec![result_line(&data, true)],
            ExecEvent::ClearOutput { .. } => Vec::new(),
            ExecEvent::Error(info) if !self.errored => {
                self.errored = true;
                vec![error_line(&info.name, &info.value, &info.traceback.join("\n"))]
            }
            ExecEvent::Error(_) => Vec::new(),
            ExecEvent::Truncated { dropped_bytes } => vec![json!({
                "type": "stderr",
                "text": format!("\n[output truncated: {dropped_bytes} bytes dropped]\n"),
                "timestamp": now_iso(),
            })],
            ExecEvent::End { execution_count, outcome, .. } => {
                self.finish(ExecutionEnd::Finished(outcome));
                let mut lines = Vec::new();
                if let (Some(count), Some((key, predicted))) = (execution_count, &self.count) {
                    self.state.e2b.counts.set(key, count);
                    // The count announced first was the one expected; the kernel's own wins.
                    if count != *predicted {
                        lines.push(json!({"type": "number_of_executions", "execution_count": count}));
                    }
                }
                if !self.errored {
                    match outcome {
                        Outcome::Interrupted => {
                            lines.push(error_line("ExecutionAborted", "the execution was interrupted", ""));
                        }
                        Outcome::TimedOut => {
                            lines.push(error_line("TimeoutError", "the execution ran past its timeout", ""));
                        }
                        _ => {}
                    }
                }
                lines.push(json!({"type": "end_of_execution"}));
                lines
            }
            // Events of later versions: nothing E2B has a line for.
            _ => Vec::new(),
        }
    }

    /// The lines of a failure of the box mid-way, closing the stream.
    fn failure(&mut self, err: &CodeBoxError) -> Vec<Value> {
        self.metrics().error(err.kind());
        self.finish(ExecutionEnd::Failed);
        tracing::warn!(session = %self.session, error = %err, "E2B execution failed");
        let mut lines = Vec::new();
        if !self.errored {
            self.errored = true;
            lines.push(error_line("UnexpectedEndOfExecution", &err.to_string(), ""));
        }
        lines.push(json!({"type": "end_of_execution"}));
        lines
    }

    /// The NDJSON body: the lines of each event, a keepalive after [`KEEPALIVE`] of silence,
    /// and nothing after `end_of_execution`.
    fn into_stream(self) -> impl futures::Stream<Item = codebox_core::Result<Bytes>> + Send + 'static {
        // E2B announces the count on `execute_input`, before any output: the count expected
        // goes first, corrected at the end if the kernel counted otherwise.
        let first = self.count.as_ref().map(|(_, predicted)| {
            let line = json!({"type": "number_of_executions", "execution_count": predicted});
            let mut chunk = serde_json::to_vec(&line).unwrap_or_default();
            chunk.push(b'\n');
            Ok(Bytes::from(chunk))
        });
        let rest = futures::stream::unfold(Some(self), |lines| async move {
            let mut lines = lines?;
            if lines.ended {
                return None;
            }
            let values = match tokio::time::timeout(KEEPALIVE, lines.events.next()).await {
                Err(_) => vec![json!({"type": "keepalive"})],
                Ok(Some(Ok(event))) => lines.lines_of(event),
                Ok(Some(Err(err))) => lines.failure(&err),
                Ok(None) => {
                    let err = CodeBoxError::protocol("the box's event stream ended without an end event");
                    lines.failure(&err)
                }
            };
            let mut chunk = Vec::new();
            for value in values {
                // Serializing a `Value` cannot fail.
                chunk.extend(serde_json::to_vec(&value).unwrap_or_default());
                chunk.push(b'\n');
            }
            Some((Ok(Bytes::from(chunk)), Some(lines)))
        })
        .filter(|chunk| futures::future::ready(chunk.as_ref().map_or(true, |c| !c.is_empty())));
        futures::stream::iter(first).chain(rest)
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        if !self.ended {
            tracing::info!(session = %self.session, "E2B client went away during an execution; interrupting it");
            self.finish(ExecutionEnd::Disconnected);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_map_mime_types_strip_quotes_and_keep_the_rest_in_extra() {
        let mut data = MimeBundle::new();
        data.insert("text/plain", json!("'hello'"));
        data.insert("image/png", json!("iVBOR"));
        data.insert("application/json", json!({"a": 1}));
        data.insert("application/vnd.custom", json!("x"));
        let line = result_line(&data, true);
        assert_eq!(line["type"], "result");
        assert_eq!(line["is_main_result"], true);
        assert_eq!(line["text"], "hello");
        assert_eq!(line["png"], "iVBOR");
        assert_eq!(line["json"], json!({"a": 1}));
        assert_eq!(line["extra"], json!({"application/vnd.custom": "x"}));
        let plain = result_line(&MimeBundle::text_plain("2"), false);
        assert_eq!(plain["text"], "2");
        assert_eq!(plain["extra"], json!({}));
        assert!(plain.get("html").is_none(), "absent types are left out: {plain}");
    }

    #[test]
    fn quotes_are_stripped_only_in_pairs() {
        assert_eq!(strip_quotes("'a'"), "a");
        assert_eq!(strip_quotes("\"a\""), "a");
        assert_eq!(strip_quotes("'a\""), "'a\"");
        assert_eq!(strip_quotes("'"), "'");
        assert_eq!(strip_quotes("42"), "42");
    }

    #[test]
    fn languages_are_normalized_as_e2b_does() {
        assert_eq!(normalize_language(None), "python");
        assert_eq!(normalize_language(Some("js")), "javascript");
        assert_eq!(normalize_language(Some("TS")), "typescript");
        assert_eq!(normalize_language(Some("bash")), "bash");
    }
}

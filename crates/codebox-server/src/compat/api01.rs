//! The protocol of the codebox-api 0.1 client (`/api/v1`). See the module docs of `compat`
//! for the table.

use bytes::Bytes;
use codebox_core::{BoxState, CodeBoxError, ExecEvent, Execution, MimeBundle, Result, RunOptions};
use codebox_http::server::Body;
use http::{Method, Request, Response};
use http_body::Body as HttpBody;
use serde::{Deserialize, Serialize};

use super::{ExecutionMetrics, Scope, SessionRoute, ok_json};
use crate::metrics::ExecutionEnd;
use crate::state::ApiResult;

/// What `run` answers when the code printed nothing, as the 0.1 client's own box does.
pub(super) const NO_OUTPUT: &str = "code run successfully (no output)";

#[derive(Serialize)]
struct Started {
    id: u128,
}

#[derive(Serialize)]
struct Status {
    status: String,
}

#[derive(Serialize)]
struct RunOutput {
    r#type: &'static str,
    content: String,
}

#[derive(Serialize)]
struct Files {
    files: Vec<String>,
}

#[derive(Deserialize)]
struct RunBody {
    code: String,
}

#[derive(Deserialize)]
struct DownloadBody {
    file_name: String,
}

#[derive(Deserialize)]
struct InstallBody {
    package_name: String,
}

fn status(text: impl Into<String>) -> ApiResult<Response<Body>> {
    ok_json(&Status { status: text.into() })
}

/// Serve a `/api/v1/codebox/{id}/{op}` request.
pub(super) async fn handle<B>(scope: &Scope<'_>, route: &SessionRoute<'_>, req: Request<B>) -> ApiResult<Response<Body>>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + 'static,
{
    let SessionRoute { method, id, op, .. } = *route;
    if id == "start" && op.is_empty() {
        if method != Method::GET && method != Method::POST {
            return Err(route.wrong_method());
        }
        return start(scope).await;
    }
    // The client writes `UUID.int`: a decimal integer below 2^128.
    if id.is_empty() || id.len() > 39 || !id.bytes().all(|b| b.is_ascii_digit()) || id.parse::<u128>().is_err() {
        return Err(route.no_route());
    }
    let expected = match op {
        "" | "files" | "download" => Method::GET,
        "run" | "upload" | "install" | "restart" | "stop" => Method::POST,
        _ => return Err(route.no_route()),
    };
    if method != expected {
        return Err(route.wrong_method());
    }
    match op {
        "" => {
            let session = scope.get(id).await?;
            let _in_use = session.use_guard();
            let state = session.codebox.status().await?.state;
            status(match state {
                BoxState::NotStarted => "started",
                BoxState::Stopped => "stopped",
                BoxState::Dead => "dead",
                _ => "running",
            })
        }
        "run" => {
            let body: RunBody = required(scope.read_json(req).await?)?;
            let session = scope.get(id).await?;
            let _running = session.execution_guard();
            let mut counted = ExecutionMetrics::start(scope.state);
            let execution = match session.codebox.run(&body.code, RunOptions::default()).await {
                Ok(execution) => {
                    counted.finish(ExecutionEnd::Finished(execution.outcome));
                    execution
                }
                Err(e) => {
                    counted.finish(ExecutionEnd::Failed);
                    return Err(e.into());
                }
            };
            let (kind, content) = run_output(&execution);
            ok_json(&RunOutput { r#type: kind, content })
        }
        "upload" => {
            let session = scope.get(id).await?;
            let _in_use = session.use_guard();
            let (name, info) = scope.upload(&session, req).await?;
            tracing::debug!(path = %info.path, size = info.size, "uploaded through the 0.1 protocol");
            status(format!("{name} uploaded successfully"))
        }
        "download" => {
            let from_query = query_param(req.uri().query().unwrap_or(""), "file_name");
            let name = match from_query {
                Some(name) => name,
                None => required::<DownloadBody>(scope.read_json(req).await?)?.file_name,
            };
            let session = scope.get(id).await?;
            scope.download(&session, &name, &name).await
        }
        "install" => {
            let body: InstallBody = required(scope.read_json(req).await?)?;
            let packages: Vec<String> = body.package_name.split_whitespace().map(str::to_owned).collect();
            if packages.is_empty() {
                return Err(CodeBoxError::invalid("package_name is empty").into());
            }
            let session = scope.get(id).await?;
            let _in_use = session.use_guard();
            session.codebox.install(&packages).await?;
            status(format!("{} installed successfully", body.package_name))
        }
        "files" => {
            let session = scope.get(id).await?;
            let _in_use = session.use_guard();
            let files = session.codebox.list_files("", false).await?.into_iter().map(|f| f.name).collect();
            ok_json(&Files { files })
        }
        "restart" => {
            let session = scope.get(id).await?;
            let _in_use = session.use_guard();
            session.codebox.restart().await?;
            status("restarted")
        }
        "stop" => {
            scope.close(id).await?;
            status("stopped")
        }
        _ => Err(route.no_route()),
    }
}

/// `GET /codebox/start`: a new session under a fresh integer id.
async fn start(scope: &Scope<'_>) -> ApiResult<Response<Body>> {
    let id = crate::node::NodeId::api01_id(scope.state.registry.node(), random_id()?);
    scope.open(&id.to_string()).await?;
    ok_json(&Started { id })
}

/// A random id below 2^128 from the system's randomness.
fn random_id() -> Result<u128> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| {
        CodeBoxError::io("reading system randomness for a session id", std::io::Error::other(e.to_string()))
    })?;
    Ok(u128::from_le_bytes(bytes))
}

/// A body that must be present.
fn required<T>(body: Option<T>) -> Result<T> {
    body.ok_or_else(|| CodeBoxError::invalid("this request needs a JSON body"))
}

/// One query parameter, percent-decoded (`+` as space).
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| super::percent_decode(&v.replace('+', " "))).flatten()
    })
}

/// The 0.1 answer to `run`: the first image, else the first exception, else all text.
pub(super) fn run_output(execution: &Execution) -> (&'static str, String) {
    let mut text = String::new();
    for event in &execution.events {
        match event {
            ExecEvent::Display { data, .. } | ExecEvent::Result { data, .. } if png(data).is_some() => {
                return ("image/png", png(data).unwrap_or_default());
            }
            ExecEvent::Error(info) => return ("error", format!("{}: {}", info.name, info.value)),
            ExecEvent::Stdout { text: t } | ExecEvent::Stderr { text: t } => text.push_str(t),
            ExecEvent::Result { data, .. } | ExecEvent::Display { data, .. } => {
                if let Some(plain) = data.plain() {
                    text.push_str(&plain);
                    text.push('\n');
                }
            }
            _ => {}
        }
    }
    match execution.outcome {
        codebox_core::Outcome::TimedOut => return ("error", "TimeoutError: the execution timed out".to_owned()),
        codebox_core::Outcome::Interrupted => {
            return ("error", "KeyboardInterrupt: the execution was interrupted".to_owned());
        }
        _ => {}
    }
    if text.is_empty() { ("text", NO_OUTPUT.to_owned()) } else { ("text", text) }
}

/// A bundle's PNG as base64 without line breaks.
pub(super) fn png(data: &MimeBundle) -> Option<String> {
    let text = data.text_of(MimeBundle::PNG)?;
    Some(text.chars().filter(|c| !c.is_ascii_whitespace()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use codebox_core::{ErrorInfo, Outcome};
    use std::time::Duration;

    fn execution(events: Vec<ExecEvent>, outcome: Outcome) -> Execution {
        Execution {
            events,
            execution_count: Some(1),
            duration: Duration::ZERO,
            outcome,
            artifacts: Vec::new(),
            artifacts_truncated: false,
        }
    }

    #[test]
    fn run_prefers_images_then_errors_then_text() {
        let mut bundle = MimeBundle::text_plain("<Figure>");
        bundle.insert(MimeBundle::PNG, serde_json::Value::String("iVBO\nRw==".into()));
        let ex = execution(
            vec![ExecEvent::stdout("a\n"), ExecEvent::Display { data: bundle, display_id: None }],
            Outcome::Ok,
        );
        assert_eq!(run_output(&ex), ("image/png", "iVBORw==".to_owned()));

        let err = ErrorInfo { name: "ZeroDivisionError".into(), value: "division by zero".into(), traceback: vec![] };
        let ex = execution(vec![ExecEvent::stdout("a\n"), ExecEvent::Error(err)], Outcome::Error);
        assert_eq!(run_output(&ex), ("error", "ZeroDivisionError: division by zero".to_owned()));

        let ex = execution(
            vec![
                ExecEvent::stdout("a\n"),
                ExecEvent::stderr("w\n"),
                ExecEvent::Result { data: MimeBundle::text_plain("2"), execution_count: Some(1) },
            ],
            Outcome::Ok,
        );
        assert_eq!(run_output(&ex), ("text", "a\nw\n2\n".to_owned()));
        assert_eq!(run_output(&execution(vec![], Outcome::Ok)), ("text", NO_OUTPUT.to_owned()));
        assert_eq!(run_output(&execution(vec![], Outcome::TimedOut)).0, "error");
    }

    #[test]
    fn start_ids_are_distinct_and_serialize_as_integers() {
        let (a, b) = (random_id().unwrap(), random_id().unwrap());
        assert_ne!(a, b);
        let json = serde_json::to_string(&Started { id: u128::MAX }).unwrap();
        assert_eq!(json, format!("{{\"id\":{}}}", u128::MAX));
    }

    #[test]
    fn download_names_come_from_the_query_too() {
        assert_eq!(query_param("file_name=a%20b.txt&x=1", "file_name").as_deref(), Some("a b.txt"));
        assert_eq!(query_param("x=1", "file_name"), None);
    }
}

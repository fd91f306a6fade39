//! `process.Process`: `Start` and `Connect` (server streams of process events), `SendInput`,
//! `CloseStdin`, `SendSignal` and `List`, on the box's background processes. `commands.run`
//! arrives here as `Start` of `/bin/bash -l -c <cmd>`.
//!
//! A stream opens with `{"event":{"start":{"pid"}}}` (the SDK refuses one that does not),
//! carries output as base64 `data` events and `keepalive` events in silences, and ends with
//! `{"event":{"end":{"exitCode","exited","status"}}}`. A call whose `Connect-Timeout-Ms`
//! passes ends with `deadline_exceeded`; for `Start` the process is killed first.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use codebox_core::{CommandSpec, ProcessEvent, ProcessExit, ProcessId, ProcessSignal, ProcessSpec, ProcessStream};
use codebox_http::server::Body;
use futures::StreamExt;
use hyper::Response;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::connect::{self, Code, ConnectError, ConnectResult};
use super::protojson::{self, EnumValue};
use crate::e2b::paths;
use crate::sessions::Session;

/// Whether `method` is a method of the service that streams its answer.
pub(super) fn is_streaming(method: &str) -> bool {
    matches!(method, "Start" | "Connect")
}

/// The unary methods.
pub(super) async fn call(
    session: &Arc<Session>,
    method: &str,
    message: serde_json::Value,
) -> ConnectResult<serde_json::Value> {
    match method {
        "List" => list(session).await,
        "SendInput" => send_input(session, parse(message)?).await,
        "CloseStdin" => {
            let req: SelectRequest = parse(message)?;
            let pid = resolve(session, req.process).await?;
            session.codebox.close_process_input(pid).await?;
            Ok(json!({}))
        }
        "SendSignal" => send_signal(session, parse(message)?).await,
        other => Err(unserved(other)),
    }
}

/// The `unimplemented` answer to a method this service does not serve.
pub(super) fn unserved(method: &str) -> ConnectError {
    let why = match method {
        "Update" | "StreamInput" => " (terminals are not supported)",
        _ => "",
    };
    ConnectError::new(
        Code::Unimplemented,
        format!(
            "process.Process/{method} is not served{why}; Start, Connect, List, SendInput, CloseStdin and SendSignal are"
        ),
    )
}

fn parse<T: serde::de::DeserializeOwned>(message: serde_json::Value) -> ConnectResult<T> {
    serde_json::from_value(message).map_err(|e| ConnectError::invalid(format!("malformed request message: {e}")))
}

/// E2B's `ProcessConfig`.
#[derive(Debug, Default, Deserialize, Serialize)]
struct ProcessConfig {
    #[serde(default)]
    cmd: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    envs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cwd: Option<String>,
}

#[derive(Debug, Deserialize)]
struct StartRequest {
    process: Option<ProcessConfig>,
    #[serde(default)]
    pty: Option<serde_json::Value>,
    #[serde(default)]
    tag: Option<String>,
    /// Keep standard input open; envd's default when absent.
    #[serde(default)]
    stdin: Option<bool>,
}

/// E2B's `ProcessSelector`: a pid or a tag.
#[derive(Debug, Deserialize)]
struct Selector {
    #[serde(default, deserialize_with = "protojson::opt_u32_field")]
    pid: Option<u32>,
    #[serde(default)]
    tag: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SelectRequest {
    process: Option<Selector>,
}

#[derive(Debug, Deserialize)]
struct ProcessInput {
    #[serde(default, deserialize_with = "opt_bytes")]
    stdin: Option<Bytes>,
    #[serde(default)]
    pty: Option<serde_json::Value>,
}

fn opt_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Bytes>, D::Error> {
    protojson::bytes_field(d).map(Some)
}

#[derive(Debug, Deserialize)]
struct SendInputRequest {
    process: Option<Selector>,
    input: Option<ProcessInput>,
}

#[derive(Debug, Deserialize)]
struct SendSignalRequest {
    process: Option<Selector>,
    signal: Option<EnumValue>,
}

/// The pid a selector names; a tag is looked up among the box's processes.
async fn resolve(session: &Arc<Session>, selector: Option<Selector>) -> ConnectResult<ProcessId> {
    match selector {
        Some(Selector { pid: Some(pid), .. }) => Ok(pid),
        Some(Selector { tag: Some(tag), .. }) => session
            .codebox
            .processes()
            .await?
            .into_iter()
            .find(|p| p.spec.tag.as_deref() == Some(tag.as_str()))
            .map(|p| p.pid)
            .ok_or_else(|| ConnectError::new(Code::NotFound, format!("no process is tagged {tag:?}"))),
        _ => Err(ConnectError::invalid("`process` must select a process by `pid` or `tag`")),
    }
}

async fn list(session: &Arc<Session>) -> ConnectResult<serde_json::Value> {
    let processes: Vec<serde_json::Value> = session
        .codebox
        .processes()
        .await?
        .into_iter()
        .map(|p| {
            let command = &p.spec.command;
            let config = ProcessConfig {
                cmd: command.program.clone(),
                args: command.args.clone(),
                envs: command.env.clone(),
                cwd: Some(paths::e2b_path(command.cwd.as_deref().unwrap_or(""))),
            };
            let mut info = json!({ "config": config, "pid": p.pid });
            if let Some(tag) = &p.spec.tag {
                info["tag"] = json!(tag);
            }
            info
        })
        .collect();
    Ok(json!({ "processes": processes }))
}

async fn send_input(session: &Arc<Session>, req: SendInputRequest) -> ConnectResult<serde_json::Value> {
    let input = req.input.ok_or_else(|| ConnectError::invalid("`input` is required"))?;
    if input.pty.is_some() {
        return Err(ConnectError::new(Code::Unimplemented, "terminal (pty) input is not supported"));
    }
    let data = input.stdin.ok_or_else(|| ConnectError::invalid("`input.stdin` is required"))?;
    let pid = resolve(session, req.process).await?;
    session.codebox.process_input(pid, data).await?;
    Ok(json!({}))
}

async fn send_signal(session: &Arc<Session>, req: SendSignalRequest) -> ConnectResult<serde_json::Value> {
    let signal = match req.signal {
        Some(EnumValue::Name(name)) if name == "SIGNAL_SIGKILL" => ProcessSignal::Sigkill,
        Some(EnumValue::Name(name)) if name == "SIGNAL_SIGTERM" => ProcessSignal::Sigterm,
        Some(EnumValue::Number(9)) => ProcessSignal::Sigkill,
        Some(EnumValue::Number(15)) => ProcessSignal::Sigterm,
        other => {
            return Err(ConnectError::invalid(format!("signal {other:?}: expected SIGNAL_SIGKILL or SIGNAL_SIGTERM")));
        }
    };
    let pid = resolve(session, req.process).await?;
    session.codebox.signal_process(pid, signal).await?;
    Ok(json!({}))
}

/// How a stream is followed.
#[derive(Debug, Clone, Copy)]
pub(super) struct Follow {
    /// The call's deadline (`Connect-Timeout-Ms`).
    pub(super) timeout: Option<Duration>,
    /// How long a silence lasts before a keepalive event.
    pub(super) keepalive: Duration,
}

/// `Start`: run the process and stream what it does.
pub(super) async fn start(session: Arc<Session>, message: serde_json::Value, follow: Follow) -> Response<Body> {
    match start_stream(&session, message, follow.timeout).await {
        Ok(events) => stream(session, events, None, follow, true),
        Err(e) => connect::stream_error(&e),
    }
}

async fn start_stream(
    session: &Arc<Session>,
    message: serde_json::Value,
    timeout: Option<Duration>,
) -> ConnectResult<ProcessStream> {
    let req: StartRequest = parse(message)?;
    if req.pty.is_some() {
        return Err(ConnectError::new(Code::Unimplemented, "terminals (pty) are not supported"));
    }
    let config = req.process.ok_or_else(|| ConnectError::invalid("`process` is required"))?;
    if config.cmd.is_empty() {
        return Err(ConnectError::invalid("`process.cmd` must name a program"));
    }
    let cwd = match config.cwd.as_deref() {
        None => None,
        Some(cwd) => Some(paths::box_path(cwd)?).filter(|c| !c.is_empty()),
    };
    let mut command = CommandSpec::new(config.cmd).args(config.args);
    command.cwd = cwd;
    command.env = config.envs;
    // The box kills it at the deadline too; the stream's own deadline below is what answers.
    command.timeout = timeout;
    let mut spec = ProcessSpec::new(command);
    spec.stdin = req.stdin.unwrap_or(true);
    spec.tag = req.tag;
    Ok(session.codebox.start_process(spec).await?)
}

/// `Connect`: follow a running process again.
pub(super) async fn connect(session: Arc<Session>, message: serde_json::Value, follow: Follow) -> Response<Body> {
    let followed = async {
        let req: SelectRequest = parse(message)?;
        let pid = resolve(&session, req.process).await?;
        let events = session.codebox.connect_process(pid).await?;
        Ok::<_, ConnectError>((pid, events))
    };
    match followed.await {
        Ok((pid, events)) => stream(session, events, Some(pid), follow, false),
        Err(e) => connect::stream_error(&e),
    }
}

/// The answer streaming `events`. `started` is the pid when the stream must open with a
/// start event of its own (`Connect`: the box's stream starts with output). `kill_at_deadline`
/// (`Start`, whose deadline is also the process's timeout): the call's deadline ends the
/// process, not only the stream, and a process the box stopped at it ends the call with
/// `deadline_exceeded` rather than an end event.
fn stream(
    session: Arc<Session>,
    mut events: ProcessStream,
    started: Option<ProcessId>,
    follow: Follow,
    kill_at_deadline: bool,
) -> Response<Body> {
    let body = super::channel_stream(move |tx| async move {
        let send = |message: serde_json::Value| {
            let tx = tx.clone();
            async move {
                let bytes = connect::envelope(&message)?;
                Ok::<bool, ConnectError>(tx.send(Ok(bytes)).await.is_ok())
            }
        };
        let _use = session.use_guard();
        let deadline = follow.timeout.map(|t| tokio::time::Instant::now() + t);
        let expired = async move {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expired);
        let mut keepalive = tokio::time::interval_at(tokio::time::Instant::now() + follow.keepalive, follow.keepalive);
        let mut pid = started;
        let outcome: ConnectResult<()> = async {
            if let Some(pid) = started
                && !send(json!({ "event": { "start": { "pid": pid } } })).await?
            {
                return Ok(());
            }
            loop {
                let message = tokio::select! {
                    event = events.next() => match event {
                        Some(Ok(ProcessEvent::Start { pid: p })) if started.is_none() => {
                            pid = Some(p);
                            json!({ "event": { "start": { "pid": p } } })
                        }
                        Some(Ok(ProcessEvent::Start { .. })) => continue,
                        Some(Ok(ProcessEvent::Stdout { data })) => {
                            json!({ "event": { "data": { "stdout": protojson::base64(&data) } } })
                        }
                        Some(Ok(ProcessEvent::Stderr { data })) => {
                            json!({ "event": { "data": { "stderr": protojson::base64(&data) } } })
                        }
                        // The box's own deadline for a `Start` (the same as the call's).
                        Some(Ok(ProcessEvent::End(exit))) if exit.timed_out && kill_at_deadline => {
                            return Err(deadline_exceeded(follow.timeout));
                        }
                        Some(Ok(ProcessEvent::End(exit))) => {
                            send(json!({ "event": { "end": end_event(&exit) } })).await?;
                            return Ok(());
                        }
                        // Events a newer box may add: not E2B's to see.
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => return Err(e.into()),
                        None => {
                            return Err(ConnectError::new(Code::Internal, "the process's events ended without its end"));
                        }
                    },
                    _ = keepalive.tick() => json!({ "event": { "keepalive": {} } }),
                    () = &mut expired => {
                        if kill_at_deadline && let Some(pid) = pid {
                            // Best effort: it may have ended at this very moment.
                            let _ = session.codebox.signal_process(pid, ProcessSignal::Sigkill).await;
                        }
                        return Err(deadline_exceeded(follow.timeout));
                    }
                };
                keepalive.reset();
                if !send(message).await? {
                    return Ok(());
                }
            }
        }
        .await;
        let _ = tx.send(Ok(connect::end_of_stream(outcome.err().as_ref()))).await;
        Ok(())
    });
    connect::stream_response(Body::from_stream(body))
}

fn deadline_exceeded(timeout: Option<Duration>) -> ConnectError {
    let after = timeout.map(|t| format!(" after {:.3}s", t.as_secs_f64())).unwrap_or_default();
    ConnectError::new(Code::DeadlineExceeded, format!("the call's deadline passed{after}; the process was stopped"))
}

/// E2B's `EndEvent` for how a process ended, as Go's `ProcessState` describes it.
fn end_event(exit: &ProcessExit) -> serde_json::Value {
    match (exit.exit_code, exit.signal) {
        (Some(code), _) => json!({ "exitCode": code, "exited": true, "status": format!("exit status {code}") }),
        (None, signal) => {
            let name = match signal {
                Some(9) => "killed".to_owned(),
                Some(15) => "terminated".to_owned(),
                Some(2) => "interrupt".to_owned(),
                Some(n) => format!("signal {n}"),
                None => "unknown".to_owned(),
            };
            json!({ "exitCode": -1, "exited": false, "status": format!("signal: {name}") })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_read_as_go_writes_them() {
        assert_eq!(end_event(&ProcessExit::code(3)), json!({"exitCode": 3, "exited": true, "status": "exit status 3"}));
        assert_eq!(
            end_event(&ProcessExit::signalled(9, false)),
            json!({"exitCode": -1, "exited": false, "status": "signal: killed"})
        );
    }

    #[test]
    fn requests_read_as_the_sdk_writes_them() {
        let start: StartRequest = serde_json::from_value(json!({
            "process": {"cmd": "/bin/bash", "args": ["-l", "-c", "echo hi"], "envs": {"A": "1"}, "cwd": "/home/user"},
            "stdin": false
        }))
        .unwrap();
        assert_eq!(start.process.unwrap().args, ["-l", "-c", "echo hi"]);
        assert_eq!(start.stdin, Some(false));
        let input: SendInputRequest =
            serde_json::from_value(json!({"process": {"pid": "4"}, "input": {"stdin": "aGk="}})).unwrap();
        assert_eq!(input.process.unwrap().pid, Some(4));
        assert_eq!(input.input.unwrap().stdin.unwrap(), Bytes::from_static(b"hi"));
        let signal: SendSignalRequest =
            serde_json::from_value(json!({"process": {"pid": 4}, "signal": "SIGNAL_SIGKILL"})).unwrap();
        assert_eq!(signal.signal, Some(EnumValue::Name("SIGNAL_SIGKILL".into())));
    }
}

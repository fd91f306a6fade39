//! Background process routes (`/v1/sessions/{id}/processes`): start a process and stream
//! what it does as NDJSON (framed like `/execute`), follow it again, list, write to its
//! standard input, close it, and signal it. A process runs on when its stream's client
//! goes away; it ends with its session.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use codebox_core::{CodeBoxError, ProcessEvent, ProcessId, ProcessSpec, ProcessStream};
use codebox_http::server::{Body, json_response, ndjson_response, read_budgeted};
use codebox_http::wire::{ErrorBody, ProcessLine, ProcessesResponse, SignalRequest};
use futures::{Stream, StreamExt};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use super::{json_body, no_content, session_for};
use crate::auth::Owner;
use crate::sessions::SessionUse;
use crate::state::{ApiResult, AppState};

/// `{pid}` of a route: a process id is a number.
pub(super) fn parse_pid(pid: &str) -> ApiResult<ProcessId> {
    pid.parse().map_err(|_| CodeBoxError::invalid(format!("{pid:?} is not a process id (a number)")).into())
}

/// `POST /v1/sessions/{id}/processes`: start a process (a JSON `ProcessSpec`) and stream its
/// events, `start` first and `end` last.
pub(super) async fn start(
    state: &Arc<AppState>,
    owner: Owner,
    id: &str,
    req: Request<Incoming>,
) -> ApiResult<Response<Body>> {
    let session = session_for(state, owner, id)?;
    let spec: ProcessSpec = json_body(state, req).await?;
    if spec.command.program.is_empty() {
        return Err(CodeBoxError::invalid("`program` must name a program").into());
    }
    let guard = session.use_guard();
    let events = session.codebox.start_process(spec).await?;
    Ok(lines(state, events, guard, session.id.clone()))
}

/// `GET /v1/sessions/{id}/processes/{pid}`: follow process `pid` from now on, to its end.
pub(super) async fn connect(state: &Arc<AppState>, owner: Owner, id: &str, pid: &str) -> ApiResult<Response<Body>> {
    let session = session_for(state, owner, id)?;
    let pid = parse_pid(pid)?;
    let guard = session.use_guard();
    let events = session.codebox.connect_process(pid).await?;
    Ok(lines(state, events, guard, session.id.clone()))
}

/// `GET /v1/sessions/{id}/processes`.
pub(super) async fn list(state: &Arc<AppState>, owner: Owner, id: &str) -> ApiResult<Response<Body>> {
    let session = session_for(state, owner, id)?;
    let processes = session.codebox.processes().await?;
    Ok(json_response(StatusCode::OK, &ProcessesResponse { processes }))
}

/// `POST /v1/sessions/{id}/processes/{pid}/input`: the body's bytes, as they are, to the
/// process's standard input (at most the server's JSON body limit per request). 204.
pub(super) async fn input(
    state: &Arc<AppState>,
    owner: Owner,
    id: &str,
    pid: &str,
    req: Request<Incoming>,
) -> ApiResult<Response<Body>> {
    let session = session_for(state, owner, id)?;
    let pid = parse_pid(pid)?;
    let limit = state.config.max_json_bytes;
    let body = read_budgeted(req.into_body(), limit, state.config.body_idle_timeout, &state.body_budget).await?;
    let _use = session.use_guard();
    session.codebox.process_input(pid, body.bytes).await?;
    Ok(no_content())
}

/// `POST /v1/sessions/{id}/processes/{pid}/close-input`: 204.
pub(super) async fn close_input(state: &Arc<AppState>, owner: Owner, id: &str, pid: &str) -> ApiResult<Response<Body>> {
    let session = session_for(state, owner, id)?;
    let pid = parse_pid(pid)?;
    session.codebox.close_process_input(pid).await?;
    Ok(no_content())
}

/// `POST /v1/sessions/{id}/processes/{pid}/signal` with `{"signal": "SIGTERM"}`: 204.
pub(super) async fn signal(
    state: &Arc<AppState>,
    owner: Owner,
    id: &str,
    pid: &str,
    req: Request<Incoming>,
) -> ApiResult<Response<Body>> {
    let session = session_for(state, owner, id)?;
    let pid = parse_pid(pid)?;
    let body: SignalRequest = json_body(state, req).await?;
    session.codebox.signal_process(pid, body.signal).await?;
    Ok(no_content())
}

fn lines(state: &AppState, events: ProcessStream, guard: SessionUse, session: String) -> Response<Body> {
    let lines = ProcessLines { events, seq: 0, ended: false, session, _guard: guard };
    ndjson_response(lines, state.config.keepalive_interval)
}

/// The lines of one process stream. Dropping it (the client went away) leaves the process
/// running; the session counts as in use while someone follows one of its processes.
struct ProcessLines {
    events: ProcessStream,
    seq: u64,
    ended: bool,
    session: String,
    _guard: SessionUse,
}

impl ProcessLines {
    fn failure(&mut self, err: &CodeBoxError) -> ProcessLine {
        self.ended = true;
        tracing::warn!(session = %self.session, error = %err, "a process stream failed");
        ProcessLine::Error { seq: self.seq, error: ErrorBody::from_error(err) }
    }
}

impl Stream for ProcessLines {
    type Item = ProcessLine;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ProcessLine>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.events.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(event))) => {
                self.ended = matches!(event, ProcessEvent::End(_));
                let line = ProcessLine::Event { seq: self.seq, event };
                self.seq += 1;
                Poll::Ready(Some(line))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(self.failure(&err))),
            Poll::Ready(None) => {
                let err = CodeBoxError::protocol("the box's process stream ended without an end event");
                Poll::Ready(Some(self.failure(&err)))
            }
        }
    }
}

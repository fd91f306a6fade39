//! `POST /v1/sessions/{id}/execute`: run code and stream its events as NDJSON.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use codebox_core::{CodeBoxError, EventStream, ExecEvent};
use codebox_http::server::{Body, ndjson_response};
use codebox_http::wire::{ErrorBody, ExecuteRequest, StreamLine};
use futures::{Stream, StreamExt};
use hyper::body::Incoming;
use hyper::{Request, Response};

use super::json_body;
use crate::auth::Owner;
use crate::metrics::{ExecutionEnd, Metrics};
use crate::sessions::SessionUse;
use crate::state::{ApiResult, AppState};

pub(super) async fn execute(
    state: &Arc<AppState>,
    owner: Owner,
    id: &str,
    req: Request<Incoming>,
) -> ApiResult<Response<Body>> {
    let session = state.registry.require(owner, id)?;
    let body: ExecuteRequest = json_body(state, req).await?;
    let guard = session.execution_guard();
    let events = session.codebox.run_stream(&body.code, body.options).await?;
    state.metrics.execution_started();
    let lines = ExecutionLines {
        events,
        seq: 0,
        ended: None,
        started: Instant::now(),
        metrics: Arc::clone(&state.metrics),
        session: session.id.clone(),
        _guard: guard,
    };
    Ok(ndjson_response(lines, state.config.keepalive_interval))
}

/// The lines of one execution. Dropping it before the end (the client went away) drops
/// the box's event stream, which cancels the execution.
pub(crate) struct ExecutionLines {
    events: EventStream,
    seq: u64,
    ended: Option<ExecutionEnd>,
    started: Instant,
    metrics: Arc<Metrics>,
    session: String,
    _guard: SessionUse,
}

impl ExecutionLines {
    fn finish(&mut self, end: ExecutionEnd) {
        if self.ended.is_none() {
            self.ended = Some(end);
            self.metrics.execution_ended(end, self.started.elapsed());
        }
    }

    fn failure(&mut self, err: &CodeBoxError) -> StreamLine {
        self.metrics.error(err.kind());
        self.finish(ExecutionEnd::Failed);
        tracing::warn!(session = %self.session, error = %err, "execution failed");
        StreamLine::Error { seq: self.seq, error: ErrorBody::from_error(err) }
    }
}

impl Stream for ExecutionLines {
    type Item = StreamLine;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<StreamLine>> {
        if self.ended.is_some() {
            return Poll::Ready(None);
        }
        match self.events.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(event))) => {
                if let ExecEvent::End { outcome, .. } = &event {
                    let outcome = *outcome;
                    self.finish(ExecutionEnd::Finished(outcome));
                }
                let line = StreamLine::Event { seq: self.seq, event };
                self.seq += 1;
                Poll::Ready(Some(line))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(self.failure(&err))),
            Poll::Ready(None) => {
                let err = CodeBoxError::protocol("the box's event stream ended without an end event");
                Poll::Ready(Some(self.failure(&err)))
            }
        }
    }
}

impl Drop for ExecutionLines {
    fn drop(&mut self) {
        if self.ended.is_none() {
            tracing::info!(session = %self.session, "client went away during an execution; cancelling it");
            self.finish(ExecutionEnd::Disconnected);
        }
    }
}

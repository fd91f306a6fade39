//! Execution history routes: a session's newest executions and statistics over them.

use std::sync::Arc;

use codebox_core::CodeBoxError;
use codebox_http::server::{Body, json_response};
use codebox_http::wire::{DEFAULT_HISTORY_LIMIT, HistoryResponse, MAX_HISTORY_LIMIT};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use super::session_for;
use crate::auth::Owner;
use crate::state::{ApiResult, AppState};

/// `GET /v1/sessions/{id}/history?limit=N`.
pub(super) async fn history(
    state: &Arc<AppState>,
    owner: Owner,
    id: &str,
    req: &Request<Incoming>,
) -> ApiResult<Response<Body>> {
    let session = session_for(state, owner, id)?;
    let limit = parse_limit(req.uri().query())?;
    let executions = session.codebox.history(limit).await?;
    Ok(json_response(StatusCode::OK, &HistoryResponse { executions }))
}

/// `GET /v1/sessions/{id}/stats`.
pub(super) async fn stats(state: &Arc<AppState>, owner: Owner, id: &str) -> ApiResult<Response<Body>> {
    let session = session_for(state, owner, id)?;
    let stats = session.codebox.execution_stats().await?;
    Ok(json_response(StatusCode::OK, &stats))
}

/// The `limit` of a history query: [`DEFAULT_HISTORY_LIMIT`] without one; not a number,
/// past [`MAX_HISTORY_LIMIT`] or any other parameter is refused.
fn parse_limit(query: Option<&str>) -> Result<usize, CodeBoxError> {
    let mut limit = DEFAULT_HISTORY_LIMIT;
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("limit", v) => {
                limit = v.parse().map_err(|_| CodeBoxError::invalid(format!("limit={v:?}: expected a number")))?;
                if limit > MAX_HISTORY_LIMIT {
                    return Err(CodeBoxError::invalid(format!(
                        "limit={limit} is past the maximum {MAX_HISTORY_LIMIT}"
                    )));
                }
            }
            (other, _) => return Err(CodeBoxError::invalid(format!("unknown query parameter {other:?}"))),
        }
    }
    Ok(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_default_and_are_bounded() {
        assert_eq!(parse_limit(None).unwrap(), DEFAULT_HISTORY_LIMIT);
        assert_eq!(parse_limit(Some("limit=0")).unwrap(), 0);
        assert_eq!(parse_limit(Some("limit=10000")).unwrap(), MAX_HISTORY_LIMIT);
        for bad in ["limit=10001", "limit=-1", "limit=ten", "limit=", "since=3"] {
            assert!(parse_limit(Some(bad)).is_err(), "{bad}");
        }
    }
}

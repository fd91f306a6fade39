//! Session routes: create with parameters, list with filters and pages, describe, extend
//! the lifetime, delete.

use std::sync::Arc;

use codebox_http::server::{Body, json_response};
use codebox_http::wire::{CreateSession, NEXT_TOKEN_HEADER, SetTimeout};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use super::{json_body, no_content, optional_json_body};
use crate::auth::Owner;
use crate::listing::ListQuery;
use crate::params::{SessionSpec, check_timeout};
use crate::sessions::Created;
use crate::state::{ApiResult, AppState};

pub(super) async fn create(state: &Arc<AppState>, owner: Owner, req: Request<Incoming>) -> ApiResult<Response<Body>> {
    let body: CreateSession = optional_json_body(state, req).await?;
    let spec = SessionSpec::from_body(&state.config, &body)?;
    let (session, created) = state.registry.get_or_create_with(owner, body.id.as_deref(), spec).await?;
    let status = if created == Created::New { StatusCode::CREATED } else { StatusCode::OK };
    Ok(json_response(status, &session.info(state.config.max_upload_bytes).await))
}

/// The sessions `caller` may see (its own; every key's for an operator) that the request's
/// query asks for, one page of them.
pub(super) async fn list(state: &Arc<AppState>, caller: Owner, req: &Request<Incoming>) -> ApiResult<Response<Body>> {
    let query = ListQuery::parse(req.uri().query())?;
    let sessions = state.registry.list_in(state.scope_of(caller));
    let max_upload = state.config.max_upload_bytes;
    let (infos, next) = query
        .page(sessions, |s| async move {
            let mut info = s.info(max_upload).await;
            info.owner = state.owner_label(caller, s.owner);
            info
        })
        .await;
    let mut resp = json_response(StatusCode::OK, &infos);
    if let Some(next) = next
        && let Ok(value) = http::HeaderValue::from_str(&next)
    {
        resp.headers_mut().insert(NEXT_TOKEN_HEADER, value);
    }
    Ok(resp)
}

pub(super) async fn get(state: &Arc<AppState>, caller: Owner, id: &str) -> ApiResult<Response<Body>> {
    let session = state.registry.require(state.session_owner(caller, id)?, id)?;
    let mut info = session.info(state.config.max_upload_bytes).await;
    info.owner = state.owner_label(caller, session.owner);
    Ok(json_response(StatusCode::OK, &info))
}

/// `POST /v1/sessions/{id}/timeout`: the session lives until now + `timeout`.
pub(super) async fn set_timeout(
    state: &Arc<AppState>,
    owner: Owner,
    id: &str,
    req: Request<Incoming>,
) -> ApiResult<Response<Body>> {
    let session = state.registry.require(state.session_owner(owner, id)?, id)?;
    let body: SetTimeout = json_body(state, req).await?;
    let timeout = check_timeout(&state.config, body.timeout)?;
    session.set_timeout(timeout);
    session.touch();
    Ok(json_response(StatusCode::OK, &session.info(state.config.max_upload_bytes).await))
}

pub(super) async fn delete(state: &Arc<AppState>, owner: Owner, id: &str) -> ApiResult<Response<Body>> {
    if state.registry.stop(owner, id).await {
        tracing::info!(session = %id, %owner, "session stopped");
        Ok(no_content())
    } else {
        Err(state.registry.missing(owner, id))
    }
}

/// `POST /v1/sessions/{id}/pause`: the session's state goes to disk and its box stops.
pub(super) async fn pause(state: &Arc<AppState>, owner: Owner, id: &str) -> ApiResult<Response<Body>> {
    let report = state.registry.pause(owner, id).await?;
    Ok(json_response(StatusCode::OK, &report))
}

/// `POST /v1/sessions/{id}/resume`: a paused session runs again.
pub(super) async fn resume(state: &Arc<AppState>, owner: Owner, id: &str) -> ApiResult<Response<Body>> {
    let (session, report) = state.registry.resume(owner, id).await?;
    let session = session.info(state.config.max_upload_bytes).await;
    Ok(json_response(StatusCode::OK, &codebox_http::wire::ResumeResponse { session, report }))
}

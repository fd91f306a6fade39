//! Code context routes: kernels of their own in one session (`/v1/sessions/{id}/contexts`).
//! An execution runs in one with `options.context` on the execute route.

use std::sync::Arc;

use codebox_http::server::{Body, json_response};
use codebox_http::wire::{ContextsResponse, CreateContext};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use super::{no_content, optional_json_body, session_for};
use crate::auth::Owner;
use crate::state::{ApiResult, AppState};

/// `POST /v1/sessions/{id}/contexts`: 201 with the new context. An empty body asks for the
/// session's own language and working directory.
pub(super) async fn create(
    state: &Arc<AppState>,
    owner: Owner,
    id: &str,
    req: Request<Incoming>,
) -> ApiResult<Response<Body>> {
    let session = session_for(state, owner, id)?;
    let body: CreateContext = optional_json_body(state, req).await?;
    let _use = session.use_guard();
    let info = session.codebox.create_context(body.language.as_deref(), body.cwd.as_deref()).await?;
    Ok(json_response(StatusCode::CREATED, &info))
}

/// `GET /v1/sessions/{id}/contexts`.
pub(super) async fn list(state: &Arc<AppState>, owner: Owner, id: &str) -> ApiResult<Response<Body>> {
    let session = session_for(state, owner, id)?;
    let contexts = session.codebox.contexts().await?;
    Ok(json_response(StatusCode::OK, &ContextsResponse { contexts }))
}

/// `POST /v1/sessions/{id}/contexts/{ctx}/restart`: 204.
pub(super) async fn restart(state: &Arc<AppState>, owner: Owner, id: &str, ctx: &str) -> ApiResult<Response<Body>> {
    let session = session_for(state, owner, id)?;
    let _use = session.use_guard();
    session.codebox.restart_context(ctx).await?;
    Ok(no_content())
}

/// `POST /v1/sessions/{id}/contexts/{ctx}/interrupt`: 204.
pub(super) async fn interrupt(state: &Arc<AppState>, owner: Owner, id: &str, ctx: &str) -> ApiResult<Response<Body>> {
    let session = session_for(state, owner, id)?;
    session.codebox.interrupt_context(ctx).await?;
    Ok(no_content())
}

/// `DELETE /v1/sessions/{id}/contexts/{ctx}`: 204.
pub(super) async fn delete(state: &Arc<AppState>, owner: Owner, id: &str, ctx: &str) -> ApiResult<Response<Body>> {
    let session = session_for(state, owner, id)?;
    let _use = session.use_guard();
    session.codebox.delete_context(ctx).await?;
    Ok(no_content())
}

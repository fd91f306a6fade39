//! Session routes.

use std::sync::Arc;

use codebox_core::CodeBoxError;
use codebox_http::server::{Body, json_response};
use codebox_http::wire::CreateSession;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use super::{no_content, optional_json_body};
use crate::auth::Owner;
use crate::sessions::Created;
use crate::state::{ApiResult, AppState};

pub(super) async fn create(state: &Arc<AppState>, owner: Owner, req: Request<Incoming>) -> ApiResult<Response<Body>> {
    let body: CreateSession = optional_json_body(state, req).await?;
    if let Some(kernel) = &body.kernel
        && (kernel.is_empty()
            || kernel.len() > 64
            || !kernel.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
    {
        return Err(CodeBoxError::invalid(format!("{kernel:?} is not a kernel name")).into());
    }
    let (session, created) = state.registry.get_or_create(owner, body.id.as_deref(), body.kernel.as_deref()).await?;
    let status = if created == Created::New { StatusCode::CREATED } else { StatusCode::OK };
    Ok(json_response(status, &session.info(state.config.max_upload_bytes).await))
}

pub(super) async fn list(state: &Arc<AppState>, caller: Owner) -> ApiResult<Response<Body>> {
    let sessions = state.visible_sessions(caller);
    let infos = futures::future::join_all(sessions.iter().map(|s| async {
        let mut info = s.info(state.config.max_upload_bytes).await;
        info.owner = state.owner_label(caller, s.owner);
        info
    }))
    .await;
    Ok(json_response(StatusCode::OK, &infos))
}

pub(super) async fn get(state: &Arc<AppState>, caller: Owner, id: &str) -> ApiResult<Response<Body>> {
    let session = state.registry.require(state.session_owner(caller, id)?, id)?;
    let mut info = session.info(state.config.max_upload_bytes).await;
    info.owner = state.owner_label(caller, session.owner);
    Ok(json_response(StatusCode::OK, &info))
}

pub(super) async fn delete(state: &Arc<AppState>, owner: Owner, id: &str) -> ApiResult<Response<Body>> {
    if state.registry.stop(owner, id).await {
        tracing::info!(session = %id, %owner, "session stopped");
        Ok(no_content())
    } else {
        Err(state.registry.missing(owner, id))
    }
}

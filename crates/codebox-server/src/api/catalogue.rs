//! What the server can make: its factory's templates (`GET /v1/templates`) and its pools of
//! ready boxes (`GET /v1/pool`), as JSON arrays of codebox-core's `TemplateInfo` and
//! `PoolStats`.

use codebox_http::server::{Body, json_response};
use hyper::{Response, StatusCode};

use crate::state::{ApiResult, AppState};

pub(super) fn templates(state: &AppState) -> ApiResult<Response<Body>> {
    Ok(json_response(StatusCode::OK, &state.factory.templates()))
}

pub(super) fn pool(state: &AppState) -> ApiResult<Response<Body>> {
    Ok(json_response(StatusCode::OK, &state.factory.pool_stats()))
}

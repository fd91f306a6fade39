//! The entry point of every request: request id and span, authentication, the key's request
//! rate, routing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use codebox_core::{CodeBoxError, ErrorKind};
use codebox_http::server::{ApiError, Body, REQUEST_ID_HEADER, RequestId, json_response};
use http::{HeaderValue, Method, header};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tracing::Instrument;

use crate::api;
use crate::auth::Caller;
use crate::compat;
use crate::routes::{self, Matched, Route};
use crate::state::AppState;

/// The OpenAPI document of the native API.
pub(crate) const OPENAPI: &str = include_str!("../openapi.json");

/// Answer one request.
pub(crate) async fn handle(state: Arc<AppState>, mut req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    // For the `X-Forwarded-For` of requests proxied to a box's port.
    req.extensions_mut().insert(api::Peer(peer));
    let request_id = RequestId::from_headers(req.headers());
    let span = tracing::info_span!("request", id = %request_id, method = %req.method(), path = %req.uri().path());
    async move {
        let started = Instant::now();
        let mut resp = if crate::e2b::is_e2b(&req) {
            crate::e2b::handle(&state, req, peer).await
        } else {
            route(&state, req).await
        };
        let status = resp.status().as_u16();
        state.metrics.response(status);
        if let Ok(value) = HeaderValue::from_str(request_id.as_str()) {
            resp.headers_mut().insert(REQUEST_ID_HEADER, value);
        }
        tracing::info!(status, %peer, elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "answered");
        resp
    }
    .instrument(span)
    .await
}

fn is_compat(path: &str) -> bool {
    ["/api/v1", "/api/v2"]
        .iter()
        .any(|p| path.strip_prefix(p).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')))
}

async fn route(state: &Arc<AppState>, req: Request<Incoming>) -> Response<Body> {
    let caller = state.keys.identify(req.headers());
    let path = req.uri().path().to_owned();
    // Before anything else is done for the request: a key over its rate costs the server no
    // more than this. `/health` and `/ready` are for probes, which must not be refused for a
    // busy key.
    if let Some(owner) = caller.owner()
        && path != "/health"
        && path != "/ready"
        && let Err(err) = state.rates.check(owner)
    {
        state.metrics.request_rate_limited();
        return state.fail(&err);
    }
    if crate::mcp::is_mcp(&path) {
        return crate::mcp::handle(state, caller, req).await;
    }
    if is_compat(&path) {
        return compat::handle(state, caller.owner(), req).await;
    }
    let (route, params) = match routes::find(req.method(), &path) {
        Matched::Route(route, params) => (route, params),
        Matched::WrongMethod(allowed) => {
            let allow = allowed.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
            let err = ApiError::new(
                405,
                ErrorKind::InvalidInput,
                format!("{} is not allowed here; use {allow}", req.method()),
            );
            let mut resp = state.fail(&err);
            if let Ok(v) = HeaderValue::from_str(&allow) {
                resp.headers_mut().insert(header::ALLOW, v);
            }
            return resp;
        }
        Matched::NotFound => return state.fail(&CodeBoxError::not_found(format!("no route {path}")).into()),
    };
    match route {
        Route::Health => return json_response(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        // A load balancer sends new sessions only to ready servers; a draining one still
        // serves the sessions it has, so it stays live (`/health`) while it is not ready.
        Route::Ready if state.registry.refuses_new() => {
            return json_response(StatusCode::SERVICE_UNAVAILABLE, &serde_json::json!({"status": "draining"}));
        }
        Route::Ready => return json_response(StatusCode::OK, &serde_json::json!({"status": "ready"})),
        Route::OpenApi if caller.owner().is_some() => {
            let mut resp = Response::new(Body::full(OPENAPI));
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            return resp;
        }
        _ => {}
    }
    let owner = match caller {
        Caller::Known(owner) => owner,
        Caller::Missing | Caller::Invalid if route.needs_auth() => {
            let message = if caller == Caller::Missing {
                "this route needs `Authorization: Bearer <key>`"
            } else {
                "the API key was not accepted"
            };
            let mut resp = state.fail(&CodeBoxError::authentication(message).into());
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        }
        _ => return state.fail(&CodeBoxError::not_found(format!("no route {path}")).into()),
    };
    if route == Route::Metrics {
        let mut resp = Response::new(Body::full(state.metrics.render(state.registry.len())));
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(crate::metrics::CONTENT_TYPE));
        return resp;
    }
    match api::dispatch(state, route, params, owner, req).await {
        Ok(resp) => resp,
        Err(err) => state.fail(&err),
    }
}

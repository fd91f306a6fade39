//! E2B's wire protocol on the same sessions: the control plane (`/sandboxes…`), the code
//! interpreter (`/execute`, `/contexts`, port 49999 traffic) and envd (files, filesystem and
//! process Connect RPC, port 49983 traffic), so that the unmodified E2B SDK talks to
//! `codebox serve`. The protocol as the SDK speaks it is described in `docs/e2b.md`.
//!
//! One listening port serves all three, as E2B's own proxy tells them apart: a request with
//! `E2b-Sandbox-Id` is sandbox traffic (`E2b-Sandbox-Port: 49999` the code interpreter,
//! any other port envd), one without it is the control plane. Everything may also sit under
//! the path prefix `/e2b`, for a server whose root paths are taken.
//!
//! An E2B sandbox is a codebox session of the caller's key, its id the session id. The
//! control plane takes the key in `X-API-KEY`. Sandbox traffic carries the sandbox's access
//! token instead (`X-Access-Token` or `E2B-Traffic-Access-Token`): a random secret per
//! session, handed out by create and connect, compared in constant time and good for its
//! own session only. The SDK's debug mode sends neither: the fixed id `debug_sandbox_id`
//! is accepted only when the operator names the key it acts as, and only from loopback.

mod control;
pub(crate) mod envd;
mod interpreter;
pub(crate) mod paths;
mod tokens;

use std::net::SocketAddr;
use std::sync::Arc;

use codebox_core::ErrorKind;
use codebox_http::server::{ApiError, Body, json_response};
use http::{HeaderMap, HeaderValue, Uri};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use crate::auth::{Caller, Owner};
use crate::sessions::Session;
use crate::state::{ApiResult, AppState};

pub(crate) use tokens::SandboxTokens;

/// The path prefix the whole E2B surface is also served under.
pub(crate) const PREFIX: &str = "/e2b";
/// The header naming the sandbox of sandbox traffic.
const SANDBOX_ID_HEADER: &str = "e2b-sandbox-id";
/// The header naming the in-sandbox port sandbox traffic is for.
const SANDBOX_PORT_HEADER: &str = "e2b-sandbox-port";
/// The code interpreter's port; every other port is envd's.
const INTERPRETER_PORT: &str = "49999";
/// The control plane's key header.
const API_KEY_HEADER: &str = "x-api-key";
/// The sandbox token header of envd and `/execute` requests.
const ACCESS_TOKEN_HEADER: &str = "x-access-token";
/// The sandbox token header of code interpreter requests (the only one `/contexts` carries).
const TRAFFIC_TOKEN_HEADER: &str = "e2b-traffic-access-token";
/// The sandbox id the SDK uses in debug mode, where it makes no control-plane call.
pub(crate) const DEBUG_SANDBOX_ID: &str = "debug_sandbox_id";
/// The envd version advertised: 0.5.7 unlocks streamed and gzip uploads; 0.6.2 would make
/// the SDK send file metadata this server does not keep.
pub(crate) const ENVD_VERSION: &str = "0.5.7";
/// The `domain` of create and connect answers: one that cannot resolve, so that a client
/// without `E2B_SANDBOX_URL` fails on DNS instead of sending its token to E2B's servers.
pub(crate) const DOMAIN: &str = "codebox.invalid";

/// The E2B side of the server's state.
#[derive(Debug, Default)]
pub(crate) struct E2bState {
    /// The access token of every sandbox that was given one.
    pub(crate) tokens: SandboxTokens,
    /// The last execution count of each sandbox's contexts.
    pub(crate) counts: ExecutionCounts,
}

/// The last execution count seen per sandbox and context, so that an execution's stream can
/// announce its count before the kernel has said it (as E2B's does).
#[derive(Debug, Default)]
pub(crate) struct ExecutionCounts {
    counts: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

impl ExecutionCounts {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, u64>> {
        self.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The count the next execution at `key` is expected to get.
    pub(crate) fn next(&self, key: &str) -> u64 {
        self.lock().get(key).map_or(1, |last| last + 1)
    }

    /// The count an execution at `key` got.
    pub(crate) fn set(&self, key: &str, count: u64) {
        self.lock().insert(key.to_owned(), count);
    }

    /// Forget the counts of sandbox `id` of `owner` (it was killed).
    pub(crate) fn forget(&self, owner: Owner, id: &str) {
        let prefix = format!("{owner}/{id}/");
        self.lock().retain(|k, _| !k.starts_with(&prefix));
    }
}

/// Whether `req` is E2B traffic: sandbox traffic by its header, the control plane by its
/// paths, anything under [`PREFIX`].
pub(crate) fn is_e2b<B>(req: &Request<B>) -> bool {
    let path = req.uri().path();
    req.headers().contains_key(SANDBOX_ID_HEADER)
        || under(path, PREFIX)
        || under(path, "/sandboxes")
        || under(path, "/v2/sandboxes")
}

/// Whether `path` is `prefix` or below it.
fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Answer one E2B request (one [`is_e2b`] said yes to).
pub(crate) async fn handle(state: &Arc<AppState>, mut req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    if let Some(rest) = req.uri().path().strip_prefix(PREFIX)
        && (rest.is_empty() || rest.starts_with('/'))
    {
        let rest = if rest.is_empty() { "/" } else { rest };
        let path_and_query = match req.uri().query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest.to_owned(),
        };
        match path_and_query.parse::<Uri>() {
            Ok(uri) => *req.uri_mut() = uri,
            Err(e) => return fail(state, &ApiError::new(400, ErrorKind::InvalidInput, format!("bad path: {e}"))),
        }
    }
    let sandbox = req.headers().get(SANDBOX_ID_HEADER).map(|v| v.to_str().map(str::to_owned));
    let result = match sandbox {
        Some(Ok(id)) => sandbox_traffic(state, &id, req, peer).await,
        Some(Err(_)) => Err(ApiError::new(400, ErrorKind::InvalidInput, "E2b-Sandbox-Id is not readable text")),
        None => match control_owner(state, req.headers()) {
            Ok(owner) => control::handle(state, owner, req).await,
            Err(e) => Err(e),
        },
    };
    result.unwrap_or_else(|err| fail(state, &err))
}

/// The owner of a control-plane request, by its `X-API-KEY`; over its request rate, refused.
fn control_owner(state: &AppState, headers: &HeaderMap) -> ApiResult<Owner> {
    let caller = match headers.get(API_KEY_HEADER) {
        _ if state.config.no_auth => Caller::Known(Owner::ANONYMOUS),
        None => Caller::Missing,
        Some(key) => {
            // The keys compare `Authorization: Bearer` headers, in constant time.
            let mut bearer = b"Bearer ".to_vec();
            bearer.extend_from_slice(key.as_bytes());
            let mut as_bearer = HeaderMap::new();
            match HeaderValue::from_bytes(&bearer) {
                Ok(value) => {
                    as_bearer.insert(http::header::AUTHORIZATION, value);
                    state.keys.identify(&as_bearer)
                }
                Err(_) => Caller::Invalid,
            }
        }
    };
    let owner = match caller {
        Caller::Known(owner) => owner,
        Caller::Missing => {
            return Err(ApiError::new(401, ErrorKind::Authentication, "the control plane needs `X-API-KEY: <key>`"));
        }
        Caller::Invalid => return Err(ApiError::new(401, ErrorKind::Authentication, "the API key was not accepted")),
    };
    rate(state, owner)?;
    Ok(owner)
}

/// Count a request against `owner`'s rate.
fn rate(state: &AppState, owner: Owner) -> ApiResult<()> {
    state.rates.check(owner).inspect_err(|_| state.metrics.request_rate_limited())
}

/// The key debug-mode traffic acts as, when the operator allowed debug mode.
fn debug_owner(state: &AppState) -> Option<Owner> {
    let named = state.config.e2b_debug_as.as_deref()?;
    state.keys.owners().find(|owner| state.keys.fingerprint(*owner) == named)
}

/// Sandbox traffic for sandbox `id`: authenticated by its token (or as debug traffic),
/// then sent to the code interpreter or to envd by its port header.
async fn sandbox_traffic(
    state: &Arc<AppState>,
    id: &str,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> ApiResult<Response<Body>> {
    let token = [ACCESS_TOKEN_HEADER, TRAFFIC_TOKEN_HEADER]
        .iter()
        .find_map(|h| req.headers().get(*h))
        .map(|v| v.as_bytes().to_vec());
    let session = match token {
        Some(token) => {
            let owner = state.e2b.tokens.owner_of(id, &token).ok_or_else(|| {
                ApiError::new(401, ErrorKind::Authentication, "the sandbox access token was not accepted")
            })?;
            rate(state, owner)?;
            let session = state.registry.require_live(owner, id).await?;
            if !state.e2b.tokens.is_current(&session) {
                // The token was made for an earlier session of the same id.
                return Err(ApiError::new(401, ErrorKind::Authentication, "the sandbox access token was not accepted"));
            }
            session
        }
        None if id == DEBUG_SANDBOX_ID => debug_session(state, peer).await?,
        None => {
            return Err(ApiError::new(
                401,
                ErrorKind::Authentication,
                "sandbox traffic needs the sandbox's `X-Access-Token` (or `E2B-Traffic-Access-Token`)",
            ));
        }
    };
    session.touch();
    let port = req.headers().get(SANDBOX_PORT_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if port == INTERPRETER_PORT {
        interpreter::handle(state, session, req).await
    } else {
        Ok(envd::handle(state, session, req).await)
    }
}

/// The debug sandbox's session, made on first use: only when the operator named the key
/// debug traffic acts as, and only for a loopback peer.
async fn debug_session(state: &Arc<AppState>, peer: SocketAddr) -> ApiResult<Arc<Session>> {
    let Some(owner) = debug_owner(state) else {
        return Err(ApiError::new(
            401,
            ErrorKind::Authentication,
            "E2B debug mode is off on this server (codebox serve --e2b-debug-as names the key it acts as)",
        ));
    };
    if !peer.ip().is_loopback() {
        return Err(ApiError::new(
            401,
            ErrorKind::Authentication,
            "E2B debug mode is accepted from this machine only (a loopback address)",
        ));
    }
    rate(state, owner)?;
    let (session, _) = state.registry.get_or_create(owner, Some(DEBUG_SANDBOX_ID), None).await?;
    if session.is_paused() {
        return state.registry.require_live(owner, DEBUG_SANDBOX_ID).await;
    }
    Ok(session)
}

/// The answer to a failed E2B request: `{"code": <status>, "message": ...}`, E2B's error
/// shape, counted in the metrics.
fn fail(state: &AppState, err: &ApiError) -> Response<Body> {
    state.metrics.error(err.kind);
    tracing::debug!(error = %err, kind = %err.kind, "E2B request failed");
    let status = StatusCode::from_u16(err.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = json_response(status, &serde_json::json!({ "code": err.status, "message": err.message }));
    if let Some(after) = err.retry_after
        && let Ok(value) = HeaderValue::from_str(&after.as_secs().max(1).to_string())
    {
        resp.headers_mut().insert(http::header::RETRY_AFTER, value);
    }
    resp
}

/// A JSON request body, read within the JSON limit; `None` when it is empty. Malformed
/// JSON is a 400.
async fn read_json<T: serde::de::DeserializeOwned>(state: &AppState, req: Request<Incoming>) -> ApiResult<Option<T>> {
    let config = &state.config;
    let body = codebox_http::server::read_budgeted(
        req.into_body(),
        config.max_json_bytes,
        config.body_idle_timeout,
        &state.body_budget,
    )
    .await?;
    if body.bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&body.bytes)
        .map(Some)
        .map_err(|e| ApiError::new(400, ErrorKind::InvalidInput, format!("malformed JSON body: {e}")))
}

/// A 204.
fn no_content() -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

/// The 404 of a path this surface does not serve.
fn no_route(method: &http::Method, path: &str) -> ApiError {
    ApiError::new(404, ErrorKind::NotFound, format!("no E2B route {method} {path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, sandbox: Option<&str>) -> Request<()> {
        let mut req = Request::builder().uri(path);
        if let Some(id) = sandbox {
            req = req.header("E2b-Sandbox-Id", id);
        }
        req.body(()).unwrap()
    }

    #[test]
    fn e2b_traffic_is_told_by_its_header_its_paths_or_the_prefix() {
        assert!(is_e2b(&request("/health", Some("abc"))));
        assert!(is_e2b(&request("/v2/sandboxes", None)));
        assert!(is_e2b(&request("/sandboxes/abc/timeout", None)));
        assert!(is_e2b(&request("/e2b", None)));
        assert!(is_e2b(&request("/e2b/execute", None)));
        assert!(!is_e2b(&request("/health", None)));
        assert!(!is_e2b(&request("/v1/sessions", None)));
        assert!(!is_e2b(&request("/e2bx", None)));
        assert!(!is_e2b(&request("/sandboxesx", None)));
    }
}

//! `/mcp`: the MCP service of `codebox-mcp` over Streamable HTTP, on this server's sessions.
//! A request needs an API key like every native route; its tools see only the sessions of
//! that key. Without `session_id` a tool works on the key's default MCP session (`mcp-default`),
//! made on first use and left to the server's idle and lifetime rules, since a Streamable
//! HTTP client has no connection whose end would stop it.

use std::sync::Arc;

use async_trait::async_trait;
use codebox_core::{CodeBoxError, ErrorKind, Result};
use codebox_http::server::Body;
use codebox_http::wire::CreateSession;
use codebox_mcp::http_service::{self, McpHttpService, StreamableHttpServerConfig};
use codebox_mcp::{CallContext, Lease, NewSession, SessionHost, SessionSummary};
use futures::StreamExt;
use http::{HeaderValue, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use crate::auth::{Caller, Owner};
use crate::params::SessionSpec;
use crate::state::AppState;

/// The path of the MCP endpoint.
pub(crate) const PATH: &str = "/mcp";

/// The id of a key's default MCP session.
const DEFAULT_SESSION: &str = "mcp-default";

/// The MCP service this server mounts at [`PATH`].
pub(crate) struct Endpoint {
    service: McpHttpService,
    /// Cancelled when the server shuts down: ends the MCP sessions and their open streams.
    stop: CancellationToken,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Endpoint")
    }
}

/// The MCP service this server mounts at [`PATH`].
pub(crate) fn service() -> Endpoint {
    // rmcp's `Host` check guards servers without authentication against DNS rebinding; every
    // request here carries an API key a rebinding page cannot have, and a server bound to a
    // public name would otherwise refuse its own clients.
    let stop = CancellationToken::new();
    let config = StreamableHttpServerConfig::default().disable_allowed_hosts().with_cancellation_token(stop.clone());
    Endpoint { service: http_service::new(Arc::new(ServerHost), config), stop }
}

impl Endpoint {
    /// End every MCP session and stream: the server is shutting down.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }
}

/// Whether `path` is the MCP endpoint.
pub(crate) fn is_mcp(path: &str) -> bool {
    path == PATH || path == "/mcp/"
}

/// Answer a request to `/mcp`: 401 without a valid key, else the MCP service's answer.
pub(crate) async fn handle(state: &Arc<AppState>, caller: Caller, mut req: Request<Incoming>) -> Response<Body> {
    let Caller::Known(owner) = caller else {
        let message = if caller == Caller::Missing {
            "/mcp needs `Authorization: Bearer <key>`"
        } else {
            "the API key was not accepted"
        };
        let mut resp = state.fail(&CodeBoxError::authentication(message).into());
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    };
    req.extensions_mut().insert(McpCaller { state: Arc::clone(state), owner });
    let mut service = state.mcp.service.clone();
    let resp = match service.call(req).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    };
    resp.map(|body| Body::from_stream(body.into_data_stream().map(|chunk| chunk.map_err(|never| match never {}))))
}

/// Who calls, put in the request's extensions for the host to read.
#[derive(Clone)]
struct McpCaller {
    state: Arc<AppState>,
    owner: Owner,
}

/// The server's sessions as the MCP service's host.
#[derive(Debug)]
struct ServerHost;

fn caller<'a>(call: &CallContext<'a>) -> Result<&'a McpCaller> {
    call.extension::<McpCaller>().ok_or_else(|| CodeBoxError::authentication("an MCP call without a caller"))
}

/// A refusal of the registry as the tool reports it: its message, and its kind where a
/// kind of the box's errors says the same.
fn from_api(e: codebox_http::server::ApiError) -> CodeBoxError {
    match e.kind {
        ErrorKind::NotFound => CodeBoxError::not_found(e.message),
        ErrorKind::Authentication => CodeBoxError::authentication(e.message),
        _ => CodeBoxError::invalid(e.message),
    }
}

#[async_trait]
impl SessionHost for ServerHost {
    fn manages_sessions(&self) -> bool {
        true
    }

    async fn get(&self, call: &CallContext<'_>, id: Option<&str>) -> Result<Lease> {
        let McpCaller { state, owner } = caller(call)?;
        let session = match id {
            Some(id) => state.registry.require(*owner, id).map_err(from_api)?,
            None => state.registry.get_or_create(*owner, Some(DEFAULT_SESSION), None).await.map_err(from_api)?.0,
        };
        let info = session.info(state.config.max_upload_bytes).await;
        Ok(Lease {
            id: session.id.clone(),
            codebox: Arc::clone(&session.codebox),
            started_at: session.created_at(),
            details: serde_json::json!({"limits": info.limits, "template": info.template, "timeout": info.timeout}),
            guard: Some(Box::new(session.use_guard())),
        })
    }

    async fn create(&self, call: &CallContext<'_>, request: NewSession) -> Result<SessionSummary> {
        let McpCaller { state, owner } = caller(call)?;
        let body = CreateSession {
            language: request.language,
            template: request.template,
            env: request.env,
            timeout: request.timeout_secs,
            ..CreateSession::default()
        };
        let spec = SessionSpec::from_body(&state.config, &body)?;
        let (session, _) = state.registry.get_or_create_with(*owner, None, spec).await.map_err(from_api)?;
        Ok(summary(&session.info(state.config.max_upload_bytes).await))
    }

    async fn list(&self, call: &CallContext<'_>) -> Result<Vec<SessionSummary>> {
        let McpCaller { state, owner } = caller(call)?;
        let mut out = Vec::new();
        // Its own sessions only, operator or not: the tools address sessions by id alone.
        for session in state.registry.list_in(crate::sessions::Scope::Owner(*owner)) {
            out.push(summary(&session.info(state.config.max_upload_bytes).await));
        }
        Ok(out)
    }

    async fn close(&self, call: &CallContext<'_>, id: &str) -> Result<()> {
        let McpCaller { state, owner } = caller(call)?;
        if state.registry.stop(*owner, id).await { Ok(()) } else { Err(from_api(state.registry.missing(*owner, id))) }
    }
}

fn summary(info: &codebox_http::wire::SessionInfo) -> SessionSummary {
    SessionSummary {
        session_id: info.id.clone(),
        language: info.language.clone(),
        template: info.template.clone(),
        created_at: Some(info.created_at),
        last_used_at: Some(info.last_used_at),
        state: info.state.to_string(),
    }
}

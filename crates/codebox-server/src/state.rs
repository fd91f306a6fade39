//! The state every request handler shares.
//!
//! The compatibility routes (`compat`) get `&AppState` and use, as their stable interface:
//! `registry` (see [`Registry`](crate::sessions::Registry): `get`, `require`,
//! `get_or_create` with a client-chosen id, `stop`, `list_in`), `config.max_upload_bytes`,
//! `config.body_idle_timeout`, `config.keepalive_interval`, `metrics`, and the body
//! helpers of `codebox_http::server` (`Body`, `json_response`, `ApiError`,
//! `stream_limited`, `read_budgeted` with `body_budget`).
//!
//! Which sessions a caller may see and stop is decided here, by its key's role:
//! [`AppState::visible_sessions`] and [`AppState::session_owner`].

use std::sync::Arc;

use codebox_core::{BoxFactory, ErrorKind};
use codebox_http::server::{ApiError, Body, BodyBudget};
use hyper::Response;

use crate::auth::{ApiKeys, Owner, Role};
use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::ratelimit::RequestRates;
use crate::sessions::{Registry, Scope};

/// What the handlers share.
#[derive(Debug)]
pub(crate) struct AppState {
    /// The configuration the server was started with.
    pub(crate) config: ServerConfig,
    /// The accepted keys.
    pub(crate) keys: ApiKeys,
    /// Every session.
    pub(crate) registry: Registry,
    /// The counters behind `/metrics`.
    pub(crate) metrics: Arc<Metrics>,
    /// The bytes of JSON request bodies all requests together may hold in memory.
    pub(crate) body_budget: BodyBudget,
    /// The files held open for downloads, server-wide and per key.
    pub(crate) downloads: Arc<crate::downloads::DownloadSlots>,
    /// Where boxes come from; also what `/v1/templates` and `/v1/pool` describe.
    pub(crate) factory: Arc<dyn BoxFactory>,
    /// Each key's request rate.
    pub(crate) rates: RequestRates,
    /// Connections upgraded through a box's port (WebSocket, raw TCP), server-wide and per
    /// key: once upgraded they leave the connection cap, so they are bounded here.
    pub(crate) tunnels: Arc<crate::downloads::DownloadSlots>,
    /// Each session's live metrics samples (not the server's own `metrics`).
    pub(crate) metrics_rings: crate::sampler::MetricsRings,
    /// The MCP service at `/mcp`.
    pub(crate) mcp: crate::mcp::Endpoint,
    /// E2B's sandbox tokens and execution counts.
    pub(crate) e2b: crate::e2b::E2bState,
}

impl AppState {
    /// The error response for `err`, counted in the metrics. Logged at debug level: errors
    /// never contain keys.
    pub(crate) fn fail(&self, err: &ApiError) -> Response<Body> {
        self.metrics.error(err.kind);
        tracing::debug!(error = %err, kind = %err.kind, "request failed");
        err.to_response()
    }

    /// The role of `caller`'s key.
    pub(crate) fn role(&self, caller: Owner) -> Role {
        self.keys.role(caller)
    }

    /// The sessions `caller` may list: its own, or every key's for an operator.
    pub(crate) fn scope_of(&self, caller: Owner) -> Scope {
        match self.role(caller) {
            Role::Normal => Scope::Owner(caller),
            Role::Operator => Scope::All,
        }
    }

    /// The owner of the session `id` that `caller` means: its own session of that id when it
    /// has one; for an operator, else the one key's that has it. A normal caller always means
    /// its own (and gets 404 for another key's, as if it did not exist). An operator naming
    /// an id that several other keys use gets 409 (session ids are unique per key only).
    pub(crate) fn session_owner(&self, caller: Owner, id: &str) -> ApiResult<Owner> {
        if self.role(caller) == Role::Normal || self.registry.get(caller, id).is_some() {
            return Ok(caller);
        }
        let mut owners = self.registry.all().into_iter().filter(|s| s.id == id).map(|s| s.owner);
        match (owners.next(), owners.next()) {
            (Some(owner), None) => {
                // Who acted on whose session, for the operators' own audit; keys are never logged.
                tracing::info!(operator = %caller, %owner, session = %id, "an operator key addresses another key's session");
                Ok(owner)
            }
            (None, _) => Ok(caller),
            (Some(_), Some(_)) => Err(ApiError::new(
                409,
                ErrorKind::InvalidInput,
                format!(
                    "several keys have a session named {id}; an operator can address only a session whose id is unique"
                ),
            )),
        }
    }

    /// How `viewer` sees the owner of a session of `owner`: the owner key's fingerprint for an
    /// operator (never the key), nothing for a normal key (its sessions are all its own).
    pub(crate) fn owner_label(&self, viewer: Owner, owner: Owner) -> Option<String> {
        (self.role(viewer) == Role::Operator).then(|| self.keys.fingerprint(owner))
    }
}

/// What a request handler returns: a response, or the error it is answered with.
pub(crate) type ApiResult<T> = std::result::Result<T, ApiError>;

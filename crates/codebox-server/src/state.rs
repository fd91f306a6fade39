//! The state every request handler shares.
//!
//! The compatibility routes (`compat`) get `&AppState` and use, as their stable interface:
//! `registry` (see [`Registry`](crate::sessions::Registry): `get`, `require`,
//! `get_or_create` with a client-chosen id, `stop`, `list_in`), `config.max_upload_bytes`,
//! `config.body_idle_timeout`, `config.keepalive_interval`, `metrics`, and the body
//! helpers of `codebox_http::server` (`Body`, `json_response`, `ApiError`,
//! `stream_limited`, `read_budgeted` with `body_budget`).

use std::sync::Arc;

use codebox_http::server::{ApiError, Body, BodyBudget};
use hyper::Response;

use crate::auth::ApiKeys;
use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::sessions::Registry;

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
}

impl AppState {
    /// The error response for `err`, counted in the metrics. Logged at debug level: errors
    /// never contain keys.
    pub(crate) fn fail(&self, err: &ApiError) -> Response<Body> {
        self.metrics.error(err.kind);
        tracing::debug!(error = %err, kind = %err.kind, "request failed");
        err.to_response()
    }
}

/// What a request handler returns: a response, or the error it is answered with.
pub(crate) type ApiResult<T> = std::result::Result<T, ApiError>;

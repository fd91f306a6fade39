//! The CodeBox HTTP server as a library: it serves sessions, each backed by a box from a
//! [`BoxFactory`], and knows only the [`CodeBox`](codebox_core::CodeBox) trait.
//!
//! It speaks the native API described in `docs/native-api.md` under `/v1` (HTTP/1.1 and
//! HTTP/2, JSON, NDJSON execution streams, streamed file bodies), the codebox-api
//! compatibility routes under `/api/v1` and `/api/v2`, MCP at `/mcp` (Streamable HTTP),
//! and serves `/health`, `/metrics`
//! (Prometheus text) and `/openapi.json`.
//!
//! ```no_run
//! # async fn demo(factory: std::sync::Arc<dyn codebox_server::BoxFactory>) -> codebox_core::Result<()> {
//! use codebox_server::{Server, ServerConfig};
//!
//! let config = ServerConfig::new().with_addr("127.0.0.1:0".parse().unwrap()).with_api_key("secret");
//! let server = Server::bind(config, factory).await?;
//! println!("listening on {}", server.local_addr());
//! server.run_until(codebox_server::shutdown_signal()).await
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod api;
mod auth;
mod capacity;
mod compat;
mod config;
mod downloads;
mod e2b;
mod factory;
mod listing;
mod mcp;
mod metrics;
mod node;
mod params;
mod paused;
mod ratelimit;
mod record;
mod routes;
mod sampler;
mod service;
mod sessions;
mod state;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use codebox_core::{CodeBoxError, Result};
use codebox_http::server::{BodyBudget, ConnectionLimits, serve};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use crate::capacity::{SESSION_MEMORY_ALLOWANCE, max_sessions_for_memory};
pub use crate::config::{
    DEFAULT_MAX_SESSION_TIMEOUT, DEFAULT_MAX_UPLOAD_BYTES, MIN_METRICS_INTERVAL, OnIdle, ServerConfig,
};
pub use crate::factory::{BoxFactory, BoxRequest, factory_fn};
pub use crate::node::{NODE_SEPARATOR, NodeId};

use crate::auth::ApiKeys;
use crate::metrics::Metrics;
use crate::sessions::Registry;
use crate::state::AppState;

/// How long a JSON body waits for room in the server's budget of buffered bytes before it
/// is refused with 503: long enough for bodies being parsed to finish, short enough that a
/// flood of bodies does not queue up.
const BODY_BUDGET_WAIT: Duration = Duration::from_secs(2);

/// A bound CodeBox server. [`bind`](Self::bind) it, read [`local_addr`](Self::local_addr),
/// then [`run_until`](Self::run_until) a shutdown future resolves.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    state: Arc<AppState>,
}

impl Server {
    /// Validate `config` and bind its address. Boxes for new sessions come from `factory`.
    pub async fn bind(config: ServerConfig, factory: Arc<dyn BoxFactory>) -> Result<Self> {
        config.validate()?;
        if config.no_auth {
            tracing::warn!(
                addr = %config.addr,
                "AUTHENTICATION IS OFF: anyone who can reach {} can run code on this machine. \
                 Use this for local development only.",
                config.addr
            );
        }
        let listener = TcpListener::bind(config.addr)
            .await
            .map_err(|e| CodeBoxError::io(format!("binding {}", config.addr), e))?;
        let local_addr = listener.local_addr().map_err(|e| CodeBoxError::io("reading the bound address", e))?;
        let record = match &config.state_dir {
            Some(dir) => {
                let keys: Vec<_> = auth::all_keys(&config.api_keys, &config.operator_keys).cloned().collect();
                record::SessionRecord::open(dir, &keys)?
            }
            None => record::SessionRecord::default(),
        };
        let metrics = Arc::new(Metrics::default());
        let registry = Registry::new(Arc::clone(&factory), &config, Arc::clone(&metrics), record);
        let keys = ApiKeys::new(&config.api_keys, &config.operator_keys, config.no_auth);
        if let Some(named) = &config.e2b_debug_as
            && !keys.owners().any(|owner| keys.fingerprint(owner) == *named)
        {
            return Err(CodeBoxError::invalid(format!(
                "e2b_debug_as {named:?} is not the fingerprint of any key of this server (the first 12 hexadecimal \
                 digits of `printf %s \"$KEY\" | sha256sum`, or `anonymous` with authentication off)"
            )));
        }
        let rates = ratelimit::RequestRates::new(config.rate_limit, config.rate_burst, keys.owners());
        let body_budget = BodyBudget::new(config.max_buffered_bytes, BODY_BUDGET_WAIT);
        // As many open downloads as connections: with the connection cap, a quarter of the
        // descriptors each by default, so the rest stay for sessions and their kernels.
        let downloads =
            downloads::DownloadSlots::new(config.connections_cap(), config.api_keys.len() + config.operator_keys.len());
        // Upgraded connections to boxes' ports: as many as connections, shared by key alike.
        let tunnels = downloads::DownloadSlots::named(
            config.connections_cap(),
            config.api_keys.len() + config.operator_keys.len(),
            "connections upgraded through a box's port",
            "close one before opening the next",
        );
        let state = Arc::new(AppState {
            config,
            keys,
            registry,
            metrics,
            body_budget,
            downloads,
            factory,
            rates,
            tunnels,
            metrics_rings: sampler::MetricsRings::default(),
            mcp: mcp::service(),
            e2b: e2b::E2bState::default(),
        });
        Ok(Self { listener, local_addr, state })
    }

    /// The address the server listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serve until `shutdown` resolves, then shut down gracefully: stop accepting, refuse
    /// new sessions, let running executions finish for the configured grace period and
    /// interrupt those still running, wait for responses to complete, and stop every box.
    pub async fn run_until<F>(self, shutdown: F) -> Result<()>
    where
        F: Future<Output = ()> + Send,
    {
        let Self { listener, local_addr, state } = self;
        tracing::info!(addr = %local_addr, "serving");
        let reaper = tokio::spawn(reap_idle(Arc::clone(&state)));
        let expiry_reaper = tokio::spawn(sessions::reap_expired(Arc::clone(&state)));
        // Live metrics of every session, unless sampling is off (then each request measures).
        let interval = state.config.metrics_interval;
        let sampler = (!interval.is_zero()).then(|| tokio::spawn(sampler::run(Arc::clone(&state), interval)));
        let (stopping_tx, stopping_rx) = watch::channel(false);

        let shutdown = {
            let state = Arc::clone(&state);
            async move {
                shutdown.await;
                drain(&state).await;
                tracing::info!("shutting down");
                state.registry.refuse_new();
                state.mcp.stop();
                let _ = stopping_tx.send(true);
                // Executions get the grace period; then they are interrupted.
                tokio::spawn(async move {
                    tokio::time::sleep(state.config.shutdown_grace).await;
                    let running: Vec<_> = state.registry.all().into_iter().filter(|s| s.is_executing()).collect();
                    if !running.is_empty() {
                        tracing::info!(count = running.len(), "interrupting executions still running");
                    }
                    for session in running {
                        if let Err(e) = session.codebox.interrupt().await {
                            tracing::warn!(session = %session.id, error = %e, "interrupt failed");
                        }
                    }
                });
            }
        };
        let drain = {
            let grace = state.config.shutdown_grace;
            let mut stopping = stopping_rx;
            async move {
                let _ = stopping.wait_for(|s| *s).await;
                // After the interrupt, responses get a little longer to end cleanly.
                tokio::time::sleep(grace + Duration::from_secs(5)).await;
            }
        };
        let max_connections = state.config.connections_cap();
        tracing::info!(max_connections, idle_timeout = ?state.config.connection_idle_timeout, "connection limits");
        let limits = ConnectionLimits::default()
            .with_header_read_timeout(state.config.header_read_timeout)
            .with_max_connections(max_connections)
            .with_idle_timeout(state.config.connection_idle_timeout);
        let handler_state = Arc::clone(&state);
        let handler = move |req, peer| service::handle(Arc::clone(&handler_state), req, peer);
        serve(listener, handler, limits, shutdown, drain).await;

        reaper.abort();
        expiry_reaper.abort();
        if let Some(sampler) = sampler {
            sampler.abort();
        }
        let sessions = state.registry.len();
        state.registry.close().await;
        tracing::info!(sessions, "every box stopped; server down");
        Ok(())
    }

    /// Serve until SIGTERM or SIGINT (see [`shutdown_signal`]).
    pub async fn run(self) -> Result<()> {
        self.run_until(shutdown_signal()).await
    }
}

/// The routes of the native API and the operational endpoints, as method and path
/// template (`{id}` and `{port}` are one segment, `{path}` the rest, `{rest}` the rest or
/// nothing); the same set as the OpenAPI document. The compatibility routes under `/api/v1`
/// and `/api/v2` are not included.
pub fn routes() -> Vec<(http::Method, &'static str)> {
    routes::Route::all_specs()
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
///
/// The handlers are installed when this is called, not when the future is first polled: a
/// SIGTERM that arrives between the two (a supervisor stopping a server as soon as it
/// answers its first request) must stop the server gracefully, never kill it outright. Call it
/// within a Tokio runtime, as the server runs in one.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                (Ok(mut term), Err(_)) => {
                    term.recv().await;
                }
                (Err(_), _) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Drain before shutting down, for at most `drain_period`: readiness fails and new sessions
/// are refused, so a load balancer sends them elsewhere, while the sessions the server has
/// keep being served. Sessions that are not executing are paused when the server keeps a state
/// directory (the server that comes back on it resumes them; until then they answer 503), and
/// executing ones once they finish. Draining ends early once every session is paused.
async fn drain(state: &AppState) {
    let period = state.config.drain_period;
    if period.is_zero() {
        return;
    }
    tracing::info!(?period, "draining: no new sessions");
    state.registry.refuse_new();
    let deadline = tokio::time::Instant::now() + period;
    let can_pause = state.config.state_dir.is_some();
    // Sessions whose box cannot be paused are not asked again.
    let mut unpausable = std::collections::HashSet::new();
    loop {
        let mut unpaused = 0;
        for session in state.registry.all() {
            if session.is_paused() {
                continue;
            }
            unpaused += 1;
            if !can_pause || session.is_executing() || unpausable.contains(&session.id) {
                continue;
            }
            match state.registry.pause(session.owner, &session.id).await {
                Ok(_) => {
                    unpaused -= 1;
                    tracing::info!(session = %session.id, "paused while draining");
                }
                Err(e) => {
                    tracing::info!(session = %session.id, error = %e, "cannot be paused: served until shutdown");
                    unpausable.insert(session.id.clone());
                }
            }
        }
        let now = tokio::time::Instant::now();
        if unpaused == 0 || now >= deadline {
            tracing::info!(unpaused, "drained");
            return;
        }
        tokio::time::sleep(Duration::from_millis(250).min(deadline - now)).await;
    }
}

async fn reap_idle(state: Arc<AppState>) {
    let timeout = state.config.idle_timeout;
    // A session may ask for a shorter idle timeout than the server's: look at least every second.
    let period = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let reaped = state.registry.reap_idle().await;
        if reaped > 0 {
            tracing::info!(reaped, "idle sessions stopped");
        }
    }
}

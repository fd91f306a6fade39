//! The server's configuration.

use std::net::SocketAddr;
use std::time::Duration;

use codebox_core::{ApiKey, CodeBoxError, ResourceLimits, Result};

use crate::node::NodeId;

/// The default of [`ServerConfig::max_upload_bytes`].
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 512 << 20;

/// The default of [`ServerConfig::max_session_timeout`]: a day.
pub const DEFAULT_MAX_SESSION_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The shortest `metrics_interval` other than zero: sampling every box more often would be
/// most of what the server does.
pub const MIN_METRICS_INTERVAL: Duration = Duration::from_secs(1);

/// Everything a [`Server`](crate::Server) needs to know. Start from [`ServerConfig::new`]
/// and change what you need with the `with_*` setters; [`Server::bind`](crate::Server::bind)
/// validates it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Where to listen. Default `127.0.0.1:8069`; port 0 picks a free port.
    pub addr: SocketAddr,
    /// The accepted API keys.
    pub api_keys: Vec<ApiKey>,
    /// Accept every request without a key (local development only).
    pub no_auth: bool,
    /// Allow `no_auth` on an address other than loopback.
    pub force_no_auth: bool,
    /// The most sessions alive at once; more get 503 with `Retry-After`. Default 64 here;
    /// `codebox serve` derives its default from the host's memory
    /// ([`max_sessions_for_memory`](crate::max_sessions_for_memory)).
    pub max_sessions: usize,
    /// A session unused for this long is stopped. Default 15 minutes.
    pub idle_timeout: Duration,
    /// The largest file upload, in bytes. Default 512 MiB: well inside the usable space of
    /// a 1 GiB working directory (ext4 keeps some of an image for itself), so that an
    /// upload under the limit does not fail for want of space in the default box.
    pub max_upload_bytes: u64,
    /// The largest JSON request body, in bytes. Default 16 MiB.
    pub max_json_bytes: u64,
    /// The most bytes of JSON request bodies held in memory at once, across all requests.
    /// A body that finds the budget spent waits briefly for others to finish, then gets
    /// 503 with `Retry-After`. At least `max_json_bytes`. Default 64 MiB.
    pub max_buffered_bytes: u64,
    /// The most sessions one API key may hold at once; more get 429 `rate_limited`. `None`
    /// (the default) means `max_sessions` divided by the number of keys, at least 1, so
    /// that no key can take every session (all of them with a single key).
    pub max_sessions_per_key: Option<usize>,
    /// A client that sends no request body bytes for this long is cut off (408). Default 30 s.
    pub body_idle_timeout: Duration,
    /// How long a client may take to send its request headers. Default 30 s.
    pub header_read_timeout: Duration,
    /// The most client connections open at once; one more is answered 503 and closed at
    /// once, so that connections never take the file descriptors sessions need. `None`
    /// (the default) means a quarter of the process's soft limit on open files, read when
    /// the server starts.
    pub max_connections: Option<usize>,
    /// A connection with no request in flight that sends and receives nothing for this
    /// long is closed (one that never sends a request included). A request in progress
    /// (a long execution stream, an upload) never counts as idle. Default 60 s.
    pub connection_idle_timeout: Duration,
    /// A keepalive line is sent after this much silence in an execution stream. Default 10 s.
    pub keepalive_interval: Duration,
    /// On shutdown, running executions get this long to finish before they are
    /// interrupted. Default 10 s.
    pub shutdown_grace: Duration,
    /// The `Retry-After` sent when the server is full. Default 5 s.
    pub retry_after: Duration,
    /// How many boxes may be starting at once; further session creations wait their turn,
    /// so a burst of new sessions does not starve every kernel start at once. Default: the
    /// number of CPUs, at least 2.
    pub max_concurrent_starts: usize,
    /// A directory of this server's own where it records which sessions are alive, so that
    /// after a restart (a crash included) requests for sessions of the earlier run get 410
    /// Gone saying the session was lost, instead of 404. One server per directory: a second
    /// one is refused while the first runs. Default none (no record).
    pub state_dir: Option<std::path::PathBuf>,
    /// Operator keys: accepted like [`api_keys`](Self::api_keys), and their callers also
    /// list, inspect and stop every key's sessions. Never logged.
    pub operator_keys: Vec<ApiKey>,
    /// Requests per second each key may make, refilled steadily; a request over it gets
    /// 429 `rate_limited` with `Retry-After` before it does any work (`/health` is never
    /// limited). 0 turns the limit off. Default 50.
    pub rate_limit: u32,
    /// How many requests a key may make at once above its steady rate (the bucket's size).
    /// At least 1 when `rate_limit` is on. Default 100.
    pub rate_burst: u32,
    /// The longest lifetime (`timeout`) a session may ask for, at creation or later. Default a day.
    pub max_session_timeout: Duration,
    /// The lifetime of a session that asks for none (`None`, the default: it lives until it
    /// idles out).
    pub default_session_timeout: Option<Duration>,
    /// After a session reached its lifetime, requests naming it get 410 `expired` for this
    /// long (then 404). Default an hour.
    pub expired_retention: Duration,
    /// The limits of a session that asks for none (each unset one: the factory's default).
    pub default_limits: ResourceLimits,
    /// The most a session may ask for; more is refused with 400 saying the maximum (each
    /// unset one: no maximum).
    pub max_limits: ResourceLimits,
    /// How often every session's box is measured into its ring of live metrics (`GET
    /// /v1/sessions/{id}/metrics`); zero turns sampling off, and each request then measures.
    /// At least a second otherwise. Default 5 s.
    pub metrics_interval: Duration,
    /// What happens to a session that idles out: paused (the default; only with a state
    /// directory, and stopped when its box cannot be paused) or stopped. A session's own
    /// `auto_pause` overrides it.
    pub on_idle: OnIdle,
    /// The most bytes paused sessions may take on disk, server-wide; past it the sessions
    /// paused longest are removed first. `None`: no bound.
    pub paused_disk_budget: Option<u64>,
    /// The most bytes one key's paused sessions may take on disk; past it that key's
    /// sessions paused longest are removed first. `None`: no bound.
    pub paused_disk_per_key: Option<u64>,
    /// The node this server runs as: every session id it mints starts with it, so a proxy
    /// in front of several servers routes by the id alone (see [`NodeId`]). `None`: ids
    /// carry no node (one server).
    pub node_id: Option<NodeId>,
    /// On SIGTERM/SIGINT, how long the server keeps serving its sessions while it drains
    /// (readiness fails, new sessions are refused, idle sessions are paused) before it shuts
    /// down. Default zero: shut down at once.
    pub drain_period: Duration,
    /// The key E2B debug-mode traffic (no key, sandbox id `debug_sandbox_id`) acts as, named
    /// by its fingerprint (the first 12 hexadecimal digits of its SHA-256; `anonymous` with
    /// authentication off). `None` (the default) refuses debug mode; it is accepted from
    /// loopback peers only.
    pub e2b_debug_as: Option<String>,
}

/// What the server does with a session that idles out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnIdle {
    /// Pause it: its state goes to disk and it resumes on its next request.
    #[default]
    Pause,
    /// Stop it: its kernel, variables and files are gone.
    Stop,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8069)),
            api_keys: Vec::new(),
            no_auth: false,
            force_no_auth: false,
            max_sessions: 64,
            idle_timeout: Duration::from_secs(15 * 60),
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            max_json_bytes: 16 << 20,
            max_buffered_bytes: 64 << 20,
            max_sessions_per_key: None,
            body_idle_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(30),
            max_connections: None,
            connection_idle_timeout: codebox_http::server::DEFAULT_CONNECTION_IDLE_TIMEOUT,
            keepalive_interval: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            retry_after: Duration::from_secs(5),
            max_concurrent_starts: std::thread::available_parallelism().map_or(2, |n| n.get()).max(2),
            state_dir: None,
            operator_keys: Vec::new(),
            rate_limit: 50,
            rate_burst: 100,
            max_session_timeout: DEFAULT_MAX_SESSION_TIMEOUT,
            default_session_timeout: None,
            expired_retention: Duration::from_secs(3600),
            default_limits: ResourceLimits::default(),
            max_limits: ResourceLimits::default(),
            metrics_interval: Duration::from_secs(5),
            on_idle: OnIdle::default(),
            paused_disk_budget: None,
            paused_disk_per_key: None,
            node_id: None,
            drain_period: Duration::ZERO,
            e2b_debug_as: None,
        }
    }
}

impl ServerConfig {
    /// The defaults: loopback port 8069, no keys yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Listen on `addr`.
    pub fn with_addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Accept one more API key.
    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_keys.push(ApiKey::new(key));
        self
    }

    /// Accept these API keys as well.
    pub fn with_api_keys(mut self, keys: impl IntoIterator<Item = ApiKey>) -> Self {
        self.api_keys.extend(keys);
        self
    }

    /// Turn authentication off (`force` allows it on a non-loopback address).
    pub fn with_no_auth(mut self, no_auth: bool, force: bool) -> Self {
        self.no_auth = no_auth;
        self.force_no_auth = force;
        self
    }

    /// Allow at most `max` sessions at once.
    pub fn with_max_sessions(mut self, max: usize) -> Self {
        self.max_sessions = max;
        self
    }

    /// Pause (or stop) sessions that idle out.
    pub fn with_on_idle(mut self, on_idle: OnIdle) -> Self {
        self.on_idle = on_idle;
        self
    }

    /// Keep paused sessions within `bytes` on disk, server-wide, and within `per_key` for
    /// each key (the sessions paused longest go first).
    pub fn with_paused_disk_budget(mut self, bytes: Option<u64>, per_key: Option<u64>) -> Self {
        self.paused_disk_budget = bytes;
        self.paused_disk_per_key = per_key;
        self
    }

    /// Accept E2B debug-mode traffic from loopback as the key of fingerprint `fingerprint`
    /// (see [`e2b_debug_as`](Self::e2b_debug_as)).
    pub fn with_e2b_debug_as(mut self, fingerprint: impl Into<String>) -> Self {
        self.e2b_debug_as = Some(fingerprint.into());
        self
    }

    /// Stop sessions unused for `timeout`.
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Refuse uploads over `bytes`.
    pub fn with_max_upload_bytes(mut self, bytes: u64) -> Self {
        self.max_upload_bytes = bytes;
        self
    }

    /// Refuse JSON bodies over `bytes`.
    pub fn with_max_json_bytes(mut self, bytes: u64) -> Self {
        self.max_json_bytes = bytes;
        self
    }

    /// Hold at most `bytes` of JSON request bodies in memory at once, across all requests.
    pub fn with_max_buffered_bytes(mut self, bytes: u64) -> Self {
        self.max_buffered_bytes = bytes;
        self
    }

    /// Let one API key hold at most `max` sessions (see
    /// [`max_sessions_per_key`](Self::max_sessions_per_key)).
    pub fn with_max_sessions_per_key(mut self, max: usize) -> Self {
        self.max_sessions_per_key = Some(max);
        self
    }

    /// The per-key session cap in force: the configured one, else `max_sessions` shared
    /// evenly among the keys (at least 1 each).
    pub fn sessions_per_key(&self) -> usize {
        let keys = self.api_keys.len() + self.operator_keys.len();
        self.max_sessions_per_key.unwrap_or_else(|| (self.max_sessions / keys.max(1)).max(1))
    }

    /// Cut off clients that stall their request body for `timeout`.
    pub fn with_body_idle_timeout(mut self, timeout: Duration) -> Self {
        self.body_idle_timeout = timeout;
        self
    }

    /// Cut off clients that take longer than `timeout` to send their headers.
    pub fn with_header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// Allow at most `max` client connections open at once (see
    /// [`max_connections`](Self::max_connections)).
    pub fn with_max_connections(mut self, max: usize) -> Self {
        self.max_connections = Some(max);
        self
    }

    /// Close connections idle for `timeout` (see
    /// [`connection_idle_timeout`](Self::connection_idle_timeout)).
    pub fn with_connection_idle_timeout(mut self, timeout: Duration) -> Self {
        self.connection_idle_timeout = timeout;
        self
    }

    /// The cap on open connections in force: the configured one, else a quarter of the
    /// soft limit on open files.
    pub fn connections_cap(&self) -> usize {
        self.max_connections.unwrap_or_else(codebox_http::server::default_max_connections)
    }

    /// Send keepalive lines after `interval` of silence in execution streams.
    pub fn with_keepalive_interval(mut self, interval: Duration) -> Self {
        self.keepalive_interval = interval;
        self
    }

    /// Let running executions finish for `grace` on shutdown before interrupting them.
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Run as node `node`: minted session ids carry it.
    pub fn with_node_id(mut self, node: NodeId) -> Self {
        self.node_id = Some(node);
        self
    }

    /// Keep serving for `period` after SIGTERM/SIGINT while draining, before shutting down.
    pub fn with_drain_period(mut self, period: Duration) -> Self {
        self.drain_period = period;
        self
    }

    /// Ask refused clients to come back after `after`.
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = after;
        self
    }

    /// Let at most `n` boxes start at once.
    pub fn with_max_concurrent_starts(mut self, n: usize) -> Self {
        self.max_concurrent_starts = n;
        self
    }

    /// Record live sessions in `dir` (see [`state_dir`](Self::state_dir)).
    pub fn with_state_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// Accept `key` as an operator key (see [`operator_keys`](Self::operator_keys)).
    pub fn with_operator_key(mut self, key: impl Into<String>) -> Self {
        self.operator_keys.push(ApiKey::new(key));
        self
    }

    /// Accept these operator keys as well.
    pub fn with_operator_keys(mut self, keys: impl IntoIterator<Item = ApiKey>) -> Self {
        self.operator_keys.extend(keys);
        self
    }

    /// Let each key make `per_second` requests a second with bursts of `burst` (0
    /// requests a second: no limit).
    pub fn with_rate_limit(mut self, per_second: u32, burst: u32) -> Self {
        self.rate_limit = per_second;
        self.rate_burst = burst;
        self
    }

    /// Let sessions ask for lifetimes up to `max` (see
    /// [`max_session_timeout`](Self::max_session_timeout)).
    pub fn with_max_session_timeout(mut self, max: Duration) -> Self {
        self.max_session_timeout = max;
        self
    }

    /// Give sessions that ask for no lifetime this one.
    pub fn with_default_session_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.default_session_timeout = timeout;
        self
    }

    /// Answer 410 `expired` for this long after a session's lifetime ended.
    pub fn with_expired_retention(mut self, retention: Duration) -> Self {
        self.expired_retention = retention;
        self
    }

    /// Give sessions that ask for no limits these.
    pub fn with_default_limits(mut self, limits: ResourceLimits) -> Self {
        self.default_limits = limits;
        self
    }

    /// Refuse sessions that ask for more than these limits.
    pub fn with_max_limits(mut self, limits: ResourceLimits) -> Self {
        self.max_limits = limits;
        self
    }

    /// Measure every session's box this often; zero turns sampling off.
    pub fn with_metrics_interval(mut self, interval: Duration) -> Self {
        self.metrics_interval = interval;
        self
    }

    /// Check that the configuration makes sense.
    pub fn validate(&self) -> Result<()> {
        if !self.metrics_interval.is_zero() && self.metrics_interval < MIN_METRICS_INTERVAL {
            return Err(CodeBoxError::invalid(format!(
                "metrics_interval {:?} is under the minimum of {MIN_METRICS_INTERVAL:?} (0 turns sampling off)",
                self.metrics_interval
            )));
        }
        if self.no_auth {
            if !self.addr.ip().is_loopback() && !self.force_no_auth {
                return Err(CodeBoxError::invalid(format!(
                    "refusing to serve without authentication on {}, which is not a loopback address; \
                     use API keys, bind 127.0.0.1, or force it explicitly",
                    self.addr
                )));
            }
            if !self.operator_keys.is_empty() {
                return Err(CodeBoxError::invalid(
                    "operator keys need authentication: with it off there are no keys to tell apart",
                ));
            }
        } else if self.api_keys.is_empty() && self.operator_keys.is_empty() {
            return Err(CodeBoxError::invalid(
                "no API keys configured: give at least one key, or turn authentication off for local development",
            ));
        }
        let malformed = |k: &ApiKey| {
            let k = k.expose();
            k.is_empty() || k.len() > 4096 || k.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        };
        if let Some(i) = self.api_keys.iter().position(malformed) {
            return Err(CodeBoxError::invalid(format!(
                "API key #{i} is empty, too long, or contains whitespace or control characters"
            )));
        }
        if let Some(i) = self.operator_keys.iter().position(malformed) {
            return Err(CodeBoxError::invalid(format!(
                "operator key #{i} is empty, too long, or contains whitespace or control characters"
            )));
        }
        if let Some(i) = self.operator_keys.iter().position(|k| self.api_keys.iter().any(|a| a.expose() == k.expose()))
        {
            return Err(CodeBoxError::invalid(format!(
                "operator key #{i} is also a normal API key; give each key one role"
            )));
        }
        if self.rate_limit > 0 && self.rate_burst == 0 {
            return Err(CodeBoxError::invalid(
                "rate_burst must be at least 1 while rate_limit is on (or set rate_limit to 0 to turn it off)",
            ));
        }
        if self.max_sessions == 0 {
            return Err(CodeBoxError::invalid("max_sessions must be at least 1"));
        }
        if self.max_sessions_per_key == Some(0) {
            return Err(CodeBoxError::invalid("max_sessions_per_key must be at least 1"));
        }
        if self.max_buffered_bytes < self.max_json_bytes {
            return Err(CodeBoxError::invalid(format!(
                "max_buffered_bytes ({}) must be at least max_json_bytes ({}), or no JSON body of the largest size \
                 could ever be read",
                self.max_buffered_bytes, self.max_json_bytes
            )));
        }
        if self.max_connections == Some(0) {
            return Err(CodeBoxError::invalid("max_connections must be at least 1"));
        }
        if self.max_concurrent_starts == 0 {
            return Err(CodeBoxError::invalid("max_concurrent_starts must be at least 1"));
        }
        if let Some(default) = self.default_session_timeout
            && default > self.max_session_timeout
        {
            return Err(CodeBoxError::invalid(format!(
                "default_session_timeout ({}s) is above max_session_timeout ({}s)",
                default.as_secs(),
                self.max_session_timeout.as_secs()
            )));
        }
        if let Some(name) =
            crate::params::first_limit_above(&self.default_limits, &self.max_limits).map(|(name, _)| name)
        {
            return Err(CodeBoxError::invalid(format!("the default {name} is above its maximum")));
        }
        for (name, d) in [
            ("idle_timeout", self.idle_timeout),
            ("max_session_timeout", self.max_session_timeout),
            ("body_idle_timeout", self.body_idle_timeout),
            ("header_read_timeout", self.header_read_timeout),
            ("connection_idle_timeout", self.connection_idle_timeout),
            ("keepalive_interval", self.keepalive_interval),
        ] {
            if d.is_zero() {
                return Err(CodeBoxError::invalid(format!("{name} must be longer than zero")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_a_key() {
        assert!(ServerConfig::new().validate().is_err());
        assert!(ServerConfig::new().with_api_key("k").validate().is_ok());
        assert!(ServerConfig::new().with_api_key("has space").validate().is_err());
        assert!(ServerConfig::new().with_api_key("").validate().is_err());
    }

    #[test]
    fn sessions_are_shared_among_keys_by_default() {
        let one = ServerConfig::new().with_api_key("a").with_max_sessions(4);
        assert_eq!(one.sessions_per_key(), 4);
        let two = one.clone().with_api_key("b");
        assert_eq!(two.sessions_per_key(), 2);
        let many = (0..10).fold(ServerConfig::new().with_max_sessions(4), |c, i| c.with_api_key(format!("k{i}")));
        assert_eq!(many.sessions_per_key(), 1);
        assert_eq!(two.clone().with_max_sessions_per_key(3).sessions_per_key(), 3);
        assert!(two.clone().with_max_sessions_per_key(0).validate().is_err());
        assert!(two.with_max_buffered_bytes(1 << 20).validate().is_err(), "smaller than one JSON body");
    }

    #[test]
    fn connections_are_capped_by_default_and_on_request() {
        let config = ServerConfig::new().with_api_key("a");
        assert!(config.connections_cap() >= 16);
        assert_eq!(config.clone().with_max_connections(8).connections_cap(), 8);
        assert!(config.clone().with_max_connections(0).validate().is_err());
        assert!(config.with_connection_idle_timeout(Duration::ZERO).validate().is_err());
    }

    #[test]
    fn operator_keys_and_rates_are_checked() {
        let config = ServerConfig::new().with_api_key("a");
        assert!(ServerConfig::new().with_operator_key("root").validate().is_ok(), "an operator key alone will do");
        assert!(config.clone().with_operator_key("a").validate().is_err(), "one role per key");
        assert!(config.clone().with_operator_key("has space").validate().is_err());
        assert!(ServerConfig::new().with_no_auth(true, false).with_operator_key("root").validate().is_err());
        assert!(config.clone().with_rate_limit(10, 0).validate().is_err());
        assert!(config.clone().with_rate_limit(0, 0).validate().is_ok(), "0 turns the limit off");
        assert_eq!((config.rate_limit, config.rate_burst), (50, 100));
    }

    #[test]
    fn session_defaults_must_fit_their_maximums() {
        let config = ServerConfig::new().with_api_key("a");
        assert_eq!(config.max_session_timeout, DEFAULT_MAX_SESSION_TIMEOUT);
        let long = config.clone().with_default_session_timeout(Some(DEFAULT_MAX_SESSION_TIMEOUT * 2));
        assert!(long.validate().unwrap_err().to_string().contains("above max_session_timeout"));
        let limits = config
            .clone()
            .with_default_limits(ResourceLimits::new().with_processes(10))
            .with_max_limits(ResourceLimits::new().with_processes(5));
        assert!(limits.validate().unwrap_err().to_string().contains("processes"));
        assert!(config.with_max_session_timeout(Duration::ZERO).validate().is_err());
    }

    #[test]
    fn no_auth_is_loopback_only_unless_forced() {
        let open = ServerConfig::new().with_no_auth(true, false);
        assert!(open.clone().validate().is_ok());
        let public = open.with_addr("0.0.0.0:8069".parse().unwrap());
        let err = public.clone().validate().unwrap_err();
        assert!(err.to_string().contains("not a loopback"), "{err}");
        assert!(public.with_no_auth(true, true).validate().is_ok());
    }
}

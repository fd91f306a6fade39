//! What a new session asks its server for: [`SessionRequest`], and [`SessionFilter`] for
//! listing sessions.

use std::collections::BTreeMap;
use std::time::Duration;

use codebox_core::ResourceLimits;
use codebox_http::wire::{CreateSession, SessionState};

/// The parameters of a new session on a CodeBox server (`POST /v1/sessions`). Each one left
/// unset takes the server's default. Only the native protocol carries them.
///
/// ```
/// # use std::time::Duration;
/// use codebox_remote::SessionRequest;
/// let request = SessionRequest::new()
///     .with_template("python")
///     .with_env("MODE", "test")
///     .with_metadata("user", "alice")
///     .with_timeout(Duration::from_secs(600));
/// # let _ = request;
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct SessionRequest {
    /// A template of the server's catalogue.
    pub template: Option<String>,
    /// A kernel, when not the template's.
    pub kernel: Option<String>,
    /// A language, for the server to pick a template by.
    pub language: Option<String>,
    /// Environment variables of every execution and command.
    pub env: BTreeMap<String, String>,
    /// Labels of the caller's own, echoed back and usable as listing filters.
    pub metadata: BTreeMap<String, String>,
    /// Resource limits, each at most the server's maximum.
    pub limits: ResourceLimits,
    /// The session's lifetime: the server stops it this long after creation (whole
    /// seconds, rounded up).
    pub timeout: Option<Duration>,
    /// Idle time after which the server stops it (whole seconds, rounded up).
    pub idle_timeout: Option<Duration>,
    /// Pause it when it idles out (`true`) or stop it (`false`); `None`: as the server says.
    pub auto_pause: Option<bool>,
}

impl SessionRequest {
    /// The server's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// From this template.
    pub fn with_template(mut self, template: impl Into<String>) -> Self {
        self.template = Some(template.into());
        self
    }

    /// Running this kernel.
    pub fn with_kernel(mut self, kernel: impl Into<String>) -> Self {
        self.kernel = Some(kernel.into());
        self
    }

    /// In this language.
    pub fn with_language(mut self, language: impl Into<String>) -> Self {
        self.language = Some(language.into());
        self
    }

    /// With this environment variable.
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// With this label.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// With these limits.
    pub fn with_limits(mut self, limits: ResourceLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Living this long.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Stopped after this long unused.
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// Pause the session when it idles out (`true`), or stop it (`false`).
    pub fn with_auto_pause(mut self, auto_pause: bool) -> Self {
        self.auto_pause = Some(auto_pause);
        self
    }

    /// The body that creates session `id` with these parameters.
    pub(crate) fn to_wire(&self, id: &str) -> CreateSession {
        CreateSession {
            id: Some(id.to_owned()),
            template: self.template.clone(),
            kernel: self.kernel.clone(),
            language: self.language.clone(),
            env: self.env.clone(),
            metadata: self.metadata.clone(),
            limits: self.limits.clone(),
            timeout: self.timeout.map(whole_seconds),
            idle_timeout: self.idle_timeout.map(whole_seconds),
            auto_pause: self.auto_pause,
        }
    }
}

/// A duration as the whole seconds the wire takes, rounded up so that a short timeout does
/// not become none.
pub(crate) fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Which sessions [`Client::list`](crate::Client::list) returns: all of the key's, or those
/// in a state and with metadata.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct SessionFilter {
    /// Only sessions in this state.
    pub state: Option<SessionState>,
    /// Only sessions with each of these metadata keys set to this value.
    pub metadata: BTreeMap<String, String>,
    /// How many sessions to fetch per request (`None`: the server's pages; at most 1000).
    pub page_size: Option<usize>,
}

impl SessionFilter {
    /// Every session of the key.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only those in `state`.
    pub fn with_state(mut self, state: SessionState) -> Self {
        self.state = Some(state);
        self
    }

    /// Only those whose metadata has `key` set to `value`.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Fetch `n` sessions per request.
    pub fn with_page_size(mut self, n: usize) -> Self {
        self.page_size = Some(n);
        self
    }

    /// The query string of a listing, without `?`, continuing after `next_token` when given.
    pub(crate) fn query(&self, next_token: Option<&str>) -> String {
        use crate::path::encode_component;
        let mut parts = Vec::new();
        if let Some(state) = self.state {
            parts.push(format!("state={state}"));
        }
        for (k, v) in &self.metadata {
            parts.push(format!("metadata.{}={}", encode_component(k), encode_component(v)));
        }
        if let Some(n) = self.page_size {
            parts.push(format!("limit={n}"));
        }
        if let Some(token) = next_token {
            parts.push(format!("next_token={}", encode_component(token)));
        }
        parts.join("&")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_round_up_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(2)), 2);
        let wire = SessionRequest::new().with_timeout(Duration::from_millis(1500)).to_wire("a");
        assert_eq!(wire.timeout, Some(2));
    }

    #[test]
    fn filters_make_encoded_queries() {
        let f = SessionFilter::new().with_state(SessionState::Running).with_metadata("user", "a b").with_page_size(5);
        assert_eq!(f.query(Some("1.x")), "state=running&metadata.user=a%20b&limit=5&next_token=1.x");
        assert_eq!(SessionFilter::new().query(None), "");
    }
}

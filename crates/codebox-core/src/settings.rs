//! Client settings, from the environment or code. Reading a `.env` file is I/O, so the
//! `codebox` facade does it (`settings_from_env_and_file`).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{CodeBoxError, Result};

/// An API key. Its `Debug` and `Display` never show the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wrap a key.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The secret itself, for putting in an `Authorization` header. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether this is the special key `local`, which asks for a local box.
    pub fn is_local(&self) -> bool {
        self.0 == "local"
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Settings shared by every box, read from `CODEBOX_*` variables.
///
/// | variable | field | default |
/// |---|---|---|
/// | `CODEBOX_API_KEY` | `api_key` | none: a local box |
/// | `CODEBOX_BASE_URL` | `base_url` | `http://127.0.0.1:8069` |
/// | `CODEBOX_TIMEOUT` | `timeout` (seconds) | none |
/// | `CODEBOX_VERBOSE` | `verbose` | false |
/// | `CODEBOX_SESSION_ID` | `session_id` | none: a new session |
/// | `CODEBOX_PYTHON` | `python` | discovered or provisioned |
/// | `CODEBOX_KERNEL` | `kernel` | `python3-lean` |
/// | `CODEBOX_FACTORY_ID` | `factory_id` | none |
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CodeBoxSettings {
    /// The API key. `None` or `local` means a local box.
    pub api_key: Option<ApiKey>,
    /// The CodeBox server's base URL.
    pub base_url: String,
    /// The default timeout for one execution.
    pub timeout: Option<Duration>,
    /// Log each operation. The `codebox` command then writes its own log and the codebox
    /// crates' at `debug` to stderr; a program using the libraries sees the same events
    /// through the `tracing` subscriber it installs.
    pub verbose: bool,
    /// Attach to this existing remote session instead of creating one.
    pub session_id: Option<String>,
    /// The Python interpreter for local kernels.
    pub python: Option<PathBuf>,
    /// The default kernel name for local boxes.
    pub kernel: Option<String>,
    /// The factory id sent to hosted CodeBox API v2 services.
    pub factory_id: Option<String>,
}

impl Default for CodeBoxSettings {
    fn default() -> Self {
        Self {
            api_key: None,
            base_url: Self::DEFAULT_BASE_URL.to_owned(),
            timeout: None,
            verbose: false,
            session_id: None,
            python: None,
            kernel: None,
            factory_id: None,
        }
    }
}

impl CodeBoxSettings {
    /// Where `codebox serve` listens unless told otherwise.
    pub const DEFAULT_BASE_URL: &'static str = "http://127.0.0.1:8069";

    /// Defaults: a local box.
    pub fn new() -> Self {
        Self::default()
    }

    /// Read the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Read settings through a lookup function (for tests and embedding).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |name: &str| lookup(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let timeout = match get("CODEBOX_TIMEOUT") {
            None => None,
            Some(t) => {
                let secs: f64 = t.parse().ok().filter(|s: &f64| s.is_finite() && *s > 0.0).ok_or_else(|| {
                    CodeBoxError::invalid(format!("CODEBOX_TIMEOUT must be a positive number of seconds, got {t:?}"))
                })?;
                Some(Duration::from_secs_f64(secs))
            }
        };
        let settings = Self {
            api_key: get("CODEBOX_API_KEY").map(ApiKey::new),
            base_url: get("CODEBOX_BASE_URL").unwrap_or_else(|| Self::DEFAULT_BASE_URL.to_owned()),
            timeout,
            verbose: get("CODEBOX_VERBOSE")
                .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")),
            session_id: get("CODEBOX_SESSION_ID"),
            python: get("CODEBOX_PYTHON").map(PathBuf::from),
            kernel: get("CODEBOX_KERNEL"),
            factory_id: get("CODEBOX_FACTORY_ID"),
        };
        Ok(settings)
    }

    /// Whether these settings ask for a local box: no API key, or the key `local`.
    pub fn wants_local(&self) -> bool {
        self.api_key.as_ref().is_none_or(ApiKey::is_local)
    }

    /// Set the API key.
    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(ApiKey::new(key));
        self
    }

    /// Set the base URL.
    pub fn with_base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into();
        self
    }

    /// Set the default execution timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Attach to an existing remote session.
    pub fn with_session_id(mut self, id: impl Into<String>) -> Self {
        self.session_id = Some(id.into());
        self
    }

    /// Use this Python for local kernels.
    pub fn with_python(mut self, python: impl Into<PathBuf>) -> Self {
        self.python = Some(python.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn no_key_or_local_key_means_local() {
        assert!(CodeBoxSettings::from_lookup(lookup(&[])).unwrap().wants_local());
        assert!(CodeBoxSettings::from_lookup(lookup(&[("CODEBOX_API_KEY", "local")])).unwrap().wants_local());
        let remote = CodeBoxSettings::from_lookup(lookup(&[
            ("CODEBOX_API_KEY", "sk-secret"),
            ("CODEBOX_BASE_URL", "http://h:1/api"),
            ("CODEBOX_TIMEOUT", "2.5"),
            ("CODEBOX_VERBOSE", "true"),
        ]))
        .unwrap();
        assert!(!remote.wants_local());
        assert_eq!(remote.base_url, "http://h:1/api");
        assert_eq!(remote.timeout, Some(Duration::from_millis(2500)));
        assert!(remote.verbose);
    }

    #[test]
    fn the_key_never_shows_in_debug() {
        let s = CodeBoxSettings::new().with_api_key("sk-very-secret");
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("very-secret"), "{dbg}");
        assert!(dbg.contains("redacted"));
        assert_eq!(s.api_key.unwrap().expose(), "sk-very-secret");
    }

    #[test]
    fn bad_timeout_is_a_clear_error() {
        let err = CodeBoxSettings::from_lookup(lookup(&[("CODEBOX_TIMEOUT", "soon")])).unwrap_err();
        assert!(err.to_string().contains("CODEBOX_TIMEOUT"), "{err}");
    }
}

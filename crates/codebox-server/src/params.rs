//! The parameters of a new session (`POST /v1/sessions`), checked against the server's
//! bounds: every refusal is a 400 that names the bound it crossed.

use std::collections::BTreeMap;
use std::time::Duration;

use codebox_core::{BoxRequest, CodeBoxError, ResourceLimits, Result};
use codebox_http::wire::CreateSession;

use crate::config::ServerConfig;

/// The most metadata keys a session may carry.
pub(crate) const MAX_METADATA_KEYS: usize = 32;
/// The longest metadata key, in bytes.
pub(crate) const MAX_METADATA_KEY_BYTES: usize = 64;
/// The longest metadata value, in bytes.
pub(crate) const MAX_METADATA_VALUE_BYTES: usize = 512;
/// The most bytes of metadata keys and values together.
pub(crate) const MAX_METADATA_BYTES: usize = 8 << 10;
/// The most environment variables a session may set.
pub(crate) const MAX_ENV_VARS: usize = 128;
/// The most bytes of environment names and values together.
pub(crate) const MAX_ENV_BYTES: usize = 64 << 10;

/// Prefixes of the environment variables the box sets for itself: a session that could
/// override them could break its own kernel or the server's view of it. `PIP_*` are the
/// operator's installer settings: the paths they name are opened to the box's pip.
const RESERVED_ENV_PREFIXES: [&str; 4] = ["CODEBOX_", "JUPYTER_", "JPY_", "PIP_"];
/// Whole names the box sets for itself.
const RESERVED_ENV_NAMES: [&str; 1] = ["HOME"];

/// What a session was created with, beyond its box: kept for its [`SessionInfo`](codebox_http::wire::SessionInfo).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct SessionSpec {
    /// What the factory was asked for (env values included; never reported).
    pub(crate) request: BoxRequest,
    /// The caller's labels.
    pub(crate) metadata: BTreeMap<String, String>,
    /// The lifetime, when it has one.
    pub(crate) timeout: Option<Duration>,
    /// Idle time after which it is stopped.
    pub(crate) idle_timeout: Duration,
    /// Whether it is paused rather than stopped when it idles out (`None`: as the server says).
    pub(crate) auto_pause: Option<bool>,
}

impl SessionSpec {
    /// A session with the server's defaults, as the compatibility routes ask.
    pub(crate) fn defaults(config: &ServerConfig) -> Self {
        let request = BoxRequest::new().with_limits(config.default_limits.clone());
        Self {
            request,
            metadata: BTreeMap::new(),
            timeout: config.default_session_timeout,
            idle_timeout: config.idle_timeout,
            auto_pause: None,
        }
    }

    /// The spec of a `POST /v1/sessions` body, or a 400-worthy error naming what is wrong.
    pub(crate) fn from_body(config: &ServerConfig, body: &CreateSession) -> Result<Self> {
        for (field, name) in [("template", &body.template), ("kernel", &body.kernel), ("language", &body.language)] {
            if let Some(name) = name {
                check_name(field, name)?;
            }
        }
        check_env(&body.env)?;
        check_metadata(&body.metadata)?;
        check_limits(&body.limits, &config.max_limits)?;
        let timeout = match body.timeout {
            Some(secs) => Some(check_timeout(config, secs)?),
            None => config.default_session_timeout,
        };
        let idle_timeout = match body.idle_timeout {
            Some(0) => return Err(CodeBoxError::invalid("`idle_timeout` must be at least 1 second")),
            Some(secs) if Duration::from_secs(secs) > config.idle_timeout => {
                return Err(CodeBoxError::invalid(format!(
                    "`idle_timeout` of {secs} s is above this server's maximum of {} s",
                    config.idle_timeout.as_secs()
                )));
            }
            Some(secs) => Duration::from_secs(secs),
            None => config.idle_timeout,
        };
        let mut request = BoxRequest::new().with_limits(body.limits.or(&config.default_limits));
        request.template = body.template.clone();
        request.kernel = body.kernel.clone();
        request.language = body.language.clone();
        request.env = body.env.clone();
        Ok(Self { request, metadata: body.metadata.clone(), timeout, idle_timeout, auto_pause: body.auto_pause })
    }
}

/// A lifetime of `secs` seconds, when within the server's bounds.
pub(crate) fn check_timeout(config: &ServerConfig, secs: u64) -> Result<Duration> {
    if secs == 0 {
        return Err(CodeBoxError::invalid("`timeout` must be at least 1 second"));
    }
    let max = config.max_session_timeout;
    if secs > max.as_secs() {
        return Err(CodeBoxError::invalid(format!(
            "`timeout` of {secs} s is above this server's maximum of {} s (max_session_timeout)",
            max.as_secs()
        )));
    }
    Ok(Duration::from_secs(secs))
}

/// A template, kernel or language name: 1 to 64 letters, digits, `-`, `_` or `.`.
fn check_name(field: &str, name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(CodeBoxError::invalid(format!(
            "{name:?} is not a {field} name (1 to 64 letters, digits, `-`, `_` or `.`)"
        )));
    }
    Ok(())
}

fn check_env(env: &BTreeMap<String, String>) -> Result<()> {
    if env.len() > MAX_ENV_VARS {
        return Err(CodeBoxError::invalid(format!(
            "`env` has {} variables; at most {MAX_ENV_VARS} are allowed",
            env.len()
        )));
    }
    let mut total = 0;
    for (name, value) in env {
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(CodeBoxError::invalid(format!(
                "{name:?} is not an environment variable name (non-empty, without `=` or NUL)"
            )));
        }
        if value.contains('\0') {
            return Err(CodeBoxError::invalid(format!("the value of environment variable {name} contains NUL")));
        }
        if RESERVED_ENV_NAMES.contains(&name.as_str()) || RESERVED_ENV_PREFIXES.iter().any(|p| name.starts_with(p)) {
            return Err(CodeBoxError::invalid(format!(
                "environment variable {name} is set by codebox itself and cannot be given (reserved: {}, and names \
                 starting with {})",
                RESERVED_ENV_NAMES.join(", "),
                RESERVED_ENV_PREFIXES.join(", ")
            )));
        }
        total += name.len() + value.len();
    }
    if total > MAX_ENV_BYTES {
        return Err(CodeBoxError::invalid(format!(
            "`env` holds {total} bytes of names and values; at most {MAX_ENV_BYTES} are allowed"
        )));
    }
    Ok(())
}

fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<()> {
    if metadata.len() > MAX_METADATA_KEYS {
        return Err(CodeBoxError::invalid(format!(
            "`metadata` has {} keys; at most {MAX_METADATA_KEYS} are allowed",
            metadata.len()
        )));
    }
    let mut total = 0;
    for (key, value) in metadata {
        if key.is_empty() || key.len() > MAX_METADATA_KEY_BYTES {
            return Err(CodeBoxError::invalid(format!(
                "metadata key {key:?} must be 1 to {MAX_METADATA_KEY_BYTES} bytes"
            )));
        }
        if value.len() > MAX_METADATA_VALUE_BYTES {
            return Err(CodeBoxError::invalid(format!(
                "the value of metadata key {key:?} is {} bytes; at most {MAX_METADATA_VALUE_BYTES} are allowed",
                value.len()
            )));
        }
        total += key.len() + value.len();
    }
    if total > MAX_METADATA_BYTES {
        return Err(CodeBoxError::invalid(format!(
            "`metadata` holds {total} bytes of keys and values; at most {MAX_METADATA_BYTES} are allowed"
        )));
    }
    Ok(())
}

/// Each limit as a number, with its name on the wire.
fn limit_values(limits: &ResourceLimits) -> [(&'static str, Option<f64>); 4] {
    [
        ("memory_bytes", limits.memory_bytes.map(|v| v as f64)),
        ("cpus", limits.cpus),
        ("processes", limits.processes.map(|v| v as f64)),
        ("disk_bytes", limits.disk_bytes.map(|v| v as f64)),
    ]
}

/// The first limit of `limits` above its maximum in `max`, with that maximum.
pub(crate) fn first_limit_above(limits: &ResourceLimits, max: &ResourceLimits) -> Option<(&'static str, f64)> {
    limit_values(limits).into_iter().zip(limit_values(max)).find_map(|((name, asked), (_, max))| match (asked, max) {
        (Some(asked), Some(max)) if asked > max => Some((name, max)),
        _ => None,
    })
}

fn check_limits(limits: &ResourceLimits, max: &ResourceLimits) -> Result<()> {
    for (name, value) in limit_values(limits) {
        if let Some(value) = value
            && (!value.is_finite() || value <= 0.0)
        {
            return Err(CodeBoxError::invalid(format!("`limits.{name}` must be above zero")));
        }
    }
    if let Some((name, max)) = first_limit_above(limits, max) {
        return Err(CodeBoxError::invalid(format!("`limits.{name}` is above this server's maximum of {max}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: serde_json::Value) -> CreateSession {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn defaults_fill_what_the_body_leaves_out() {
        let config = ServerConfig::new()
            .with_default_limits(ResourceLimits::new().with_memory_bytes(100).with_processes(8))
            .with_default_session_timeout(Some(Duration::from_secs(60)));
        let spec = SessionSpec::from_body(&config, &body(serde_json::json!({"limits": {"memory_bytes": 50}}))).unwrap();
        assert_eq!(spec.request.limits, ResourceLimits::new().with_memory_bytes(50).with_processes(8));
        assert_eq!(spec.timeout, Some(Duration::from_secs(60)));
        assert_eq!(spec.idle_timeout, config.idle_timeout);
    }

    #[test]
    fn every_bound_is_named_in_its_refusal() {
        let config = ServerConfig::new().with_max_limits(ResourceLimits::new().with_cpus(2.0));
        let big: BTreeMap<String, String> = (0..33).map(|i| (format!("k{i}"), String::new())).collect();
        for (json, says) in [
            (serde_json::json!({"limits": {"cpus": 4.0}}), "maximum of 2"),
            (serde_json::json!({"limits": {"cpus": 0.0}}), "above zero"),
            (serde_json::json!({"metadata": big}), "at most 32"),
            (serde_json::json!({"metadata": {"k": "v".repeat(513)}}), "at most 512"),
            (serde_json::json!({"metadata": {"k".repeat(65): ""}}), "1 to 64 bytes"),
            (serde_json::json!({"env": {"A=B": "x"}}), "without `=`"),
            (serde_json::json!({"env": {"CODEBOX_API_KEY": "x"}}), "set by codebox"),
            (serde_json::json!({"env": {"PIP_FIND_LINKS": "/etc"}}), "set by codebox"),
            (serde_json::json!({"timeout": 86401}), "maximum of 86400"),
            (serde_json::json!({"idle_timeout": 901}), "maximum of 900"),
            (serde_json::json!({"kernel": "a b"}), "not a kernel name"),
        ] {
            let err = SessionSpec::from_body(&config, &body(json.clone())).unwrap_err();
            assert!(err.to_string().contains(says), "{json}: {err}");
        }
        let total: BTreeMap<String, String> = (0..20).map(|i| (format!("k{i}"), "v".repeat(500))).collect();
        let err = SessionSpec::from_body(&config, &body(serde_json::json!({ "metadata": total }))).unwrap_err();
        assert!(err.to_string().contains("at most 8192"), "{err}");
    }
}

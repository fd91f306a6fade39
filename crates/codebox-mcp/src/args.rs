//! The tools' arguments: one struct per tool, whose JSON Schema (from `schemars`) is the
//! tool's input schema, and [`parse`], which turns a call's arguments into one or answers
//! with an MCP error naming the argument that is missing or wrong.

use std::collections::BTreeMap;

use rmcp::ErrorData;
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// The longest an execution or command may be given, in seconds.
pub const MAX_TIMEOUT_SECS: f64 = 3600.0;
/// How long an execution or command runs when the call does not say, in seconds.
pub const DEFAULT_TIMEOUT_SECS: f64 = 60.0;

/// Arguments of `execute`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Execute {
    /// The code to run.
    pub(crate) code: String,
    /// The language or kernel (`python`, `bash`, a kernelspec name); the box's own by default.
    #[serde(default)]
    pub(crate) language: Option<String>,
    /// A code context of the box to run in (its own kernel); the box's default one otherwise.
    #[serde(default)]
    pub(crate) context: Option<String>,
    /// Seconds after which the code is interrupted (default 60, at most 3600).
    #[serde(default)]
    pub(crate) timeout: Option<f64>,
    /// The session to run in; the connection's default box otherwise.
    #[serde(default)]
    pub(crate) session_id: Option<String>,
}

/// Arguments of `shell_execute`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ShellExecute {
    /// A shell command line, run by `bash -c`.
    pub(crate) command: String,
    /// The working directory, relative to the box's.
    #[serde(default)]
    pub(crate) cwd: Option<String>,
    /// Seconds after which the command is killed (default 60, at most 3600).
    #[serde(default)]
    pub(crate) timeout: Option<f64>,
    /// The session to run in; the connection's default box otherwise.
    #[serde(default)]
    pub(crate) session_id: Option<String>,
}

/// How `write_file`'s content is encoded.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Encoding {
    /// The content is the file's text.
    #[default]
    Utf8,
    /// The content is the file's bytes in base64.
    Base64,
}

/// Arguments of `write_file`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WriteFile {
    /// The file's path in the box.
    pub(crate) path: String,
    /// What to write.
    pub(crate) content: String,
    /// `utf8` (default) or `base64`.
    #[serde(default)]
    pub(crate) encoding: Encoding,
    /// The session; the connection's default box otherwise.
    #[serde(default)]
    pub(crate) session_id: Option<String>,
}

/// Arguments of `read_file`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReadFile {
    /// The file's path in the box.
    pub(crate) path: String,
    /// The most bytes of text to return (default 262144); the rest is cut with a note.
    #[serde(default)]
    pub(crate) max_bytes: Option<u64>,
    /// The session; the connection's default box otherwise.
    #[serde(default)]
    pub(crate) session_id: Option<String>,
}

/// Arguments of `list_files`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListFiles {
    /// The directory (default `.`, the box's working directory).
    #[serde(default)]
    pub(crate) path: Option<String>,
    /// Whether to list subdirectories' contents too.
    #[serde(default)]
    pub(crate) recursive: bool,
    /// The most entries to return (default 1000, at most 10000).
    #[serde(default)]
    pub(crate) max_entries: Option<u64>,
    /// The session; the connection's default box otherwise.
    #[serde(default)]
    pub(crate) session_id: Option<String>,
}

/// Arguments of `delete_file`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeleteFile {
    /// The file's path in the box.
    pub(crate) path: String,
    /// The session; the connection's default box otherwise.
    #[serde(default)]
    pub(crate) session_id: Option<String>,
}

/// Arguments of `install_packages`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct InstallPackages {
    /// Package specifiers, as pip takes them (`numpy`, `pandas==2.2`).
    pub(crate) packages: Vec<String>,
    /// The session; the connection's default box otherwise.
    #[serde(default)]
    pub(crate) session_id: Option<String>,
}

/// Arguments of the tools that take only a session: `restart`, `list_artifacts`,
/// `get_execution_info`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SessionOnly {
    /// The session; the connection's default box otherwise.
    #[serde(default)]
    pub(crate) session_id: Option<String>,
}

/// Arguments of `cleanup_artifacts`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CleanupArtifacts {
    /// The artifacts to delete (paths as `list_artifacts` gives them); all of them otherwise.
    #[serde(default)]
    pub(crate) paths: Option<Vec<String>>,
    /// The session; the connection's default box otherwise.
    #[serde(default)]
    pub(crate) session_id: Option<String>,
}

/// Arguments of `create_session`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateSession {
    /// The language or kernel the session runs.
    #[serde(default)]
    pub(crate) language: Option<String>,
    /// A template of the server's catalogue.
    #[serde(default)]
    pub(crate) template: Option<String>,
    /// Environment variables of the box.
    #[serde(default)]
    pub(crate) env: BTreeMap<String, String>,
    /// The session's lifetime in seconds (it is stopped then).
    #[serde(default)]
    pub(crate) timeout_secs: Option<u64>,
}

/// Arguments of `list_sessions`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoArgs {}

/// Arguments of `close_session`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CloseSession {
    /// The session to stop.
    pub(crate) session_id: String,
}

/// The JSON Schema of `T` as an MCP input schema.
pub(crate) fn schema<T: JsonSchema>() -> serde_json::Map<String, serde_json::Value> {
    let schema = schemars::schema_for!(T);
    match serde_json::to_value(schema) {
        Ok(serde_json::Value::Object(map)) => map,
        // A derived schema is always an object; an empty one accepts anything.
        _ => serde_json::Map::new(),
    }
}

/// The call's arguments as `T`, or an `invalid_params` error that names the argument.
pub(crate) fn parse<T: DeserializeOwned>(
    tool: &str,
    arguments: Option<serde_json::Map<String, serde_json::Value>>,
) -> Result<T, ErrorData> {
    let value = serde_json::Value::Object(arguments.unwrap_or_default());
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // serde names a missing or unknown field itself; a wrongly typed one is named by its path.
        let message = if path == "." || path.is_empty() {
            format!("{tool}: bad arguments: {inner}")
        } else {
            format!("{tool}: argument `{path}`: {inner}")
        };
        ErrorData::invalid_params(message, None)
    })
}

/// A timeout argument in seconds, checked: positive, finite, at most [`MAX_TIMEOUT_SECS`].
pub(crate) fn timeout(tool: &str, secs: Option<f64>) -> Result<std::time::Duration, ErrorData> {
    let secs = secs.unwrap_or(DEFAULT_TIMEOUT_SECS);
    if !(secs.is_finite() && secs > 0.0 && secs <= MAX_TIMEOUT_SECS) {
        return Err(ErrorData::invalid_params(
            format!("{tool}: argument `timeout`: {secs} is not a number of seconds in (0, {MAX_TIMEOUT_SECS}]"),
            None,
        ));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

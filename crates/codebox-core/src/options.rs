//! Per-call options.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Options for one execution. Build with [`RunOptions::new`] and the `with_*` setters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RunOptions {
    /// Interrupt the code after this long. The box keeps its state.
    #[serde(default, with = "opt_secs", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// The directory (relative to the box's working directory) the code runs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Environment variables set for this execution.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The language or kernel name (`python`, `bash`, or a kernelspec name).
    /// `None` means the box's default kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// The code context to run in (see [`CodeBox::create_context`](crate::CodeBox::create_context));
    /// `None` (or `"default"`) means the box's own kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// Write each PNG, JPEG or SVG image the execution displays as a file of the working
    /// directory (`images/<execution count>-<n>.<ext>`, never over an existing file) and
    /// list it among the execution's artifacts. Off by default; a backend without the
    /// `artifacts` capability ignores it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub save_images: bool,
}

impl RunOptions {
    /// Default options: the box's default kernel, no timeout beyond the box's own.
    pub fn new() -> Self {
        Self::default()
    }

    /// Interrupt the code after `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Run in `cwd`, relative to the box's working directory.
    pub fn with_cwd(mut self, cwd: impl Into<String>) -> Self {
        self.cwd = Some(cwd.into());
        self
    }

    /// Set one environment variable for this execution.
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Run in this language or kernel.
    pub fn with_language(mut self, language: impl Into<String>) -> Self {
        self.language = Some(language.into());
        self
    }

    /// Run in the code context `id`.
    pub fn with_context(mut self, id: impl Into<String>) -> Self {
        self.context = Some(id.into());
        self
    }

    /// Save the images the execution displays as files (see [`RunOptions::save_images`]).
    pub fn with_save_images(mut self, save: bool) -> Self {
        self.save_images = save;
        self
    }
}

/// A shell command to run in a box, without a shell: the program and its arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CommandSpec {
    /// The program to run, looked up on the box's `PATH`.
    pub program: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// The directory (relative to the box's working directory) to run in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Extra environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Kill the command after this long.
    #[serde(default, with = "opt_secs", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

impl CommandSpec {
    /// A command for `program` with no arguments.
    pub fn new(program: impl Into<String>) -> Self {
        Self { program: program.into(), ..Self::default() }
    }

    /// Append one argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Append arguments.
    pub fn args(mut self, args: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Run in `cwd`, relative to the box's working directory.
    pub fn with_cwd(mut self, cwd: impl Into<String>) -> Self {
        self.cwd = Some(cwd.into());
        self
    }

    /// Set one environment variable.
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Kill the command after `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// What a finished command produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CommandOutput {
    /// The exit code; `None` when the command was killed by a signal or timed out.
    pub exit_code: Option<i32>,
    /// Standard output, lossily decoded as UTF-8.
    pub stdout: String,
    /// Standard error, lossily decoded as UTF-8.
    pub stderr: String,
    /// Whether the command was killed because it ran past its timeout.
    #[serde(default)]
    pub timed_out: bool,
}

impl CommandOutput {
    /// A finished command's output.
    pub fn new(exit_code: Option<i32>, stdout: String, stderr: String, timed_out: bool) -> Self {
        Self { exit_code, stdout, stderr, timed_out }
    }

    /// Whether the command exited with code 0.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }
}

mod opt_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let secs = Option::<f64>::deserialize(d)?;
        // Input from clients: a value `Duration` cannot hold (1e300, or 1.9e19 past u64
        // seconds) would panic in `from_secs_f64`, and one near that limit would overflow the
        // deadline `Instant::now() + timeout`; anything over ~31 years is refused instead.
        const MAX_SECS: f64 = 1e9;
        match secs {
            None => Ok(None),
            Some(s) if (0.0..=MAX_SECS).contains(&s) => Duration::try_from_secs_f64(s)
                .map(Some)
                .map_err(|e| serde::de::Error::custom(format!("timeout {s} is not a duration: {e}"))),
            Some(s) => Err(serde::de::Error::custom(format!(
                "timeout must be a number of seconds from 0 to {MAX_SECS:e}, got {s}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_options_wire_form_uses_seconds() {
        let opts = RunOptions::new().with_timeout(Duration::from_millis(1500)).with_language("bash");
        let json = serde_json::to_value(&opts).unwrap();
        assert_eq!(json, serde_json::json!({"timeout": 1.5, "language": "bash"}));
        assert_eq!(serde_json::from_value::<RunOptions>(json).unwrap(), opts);
        let saving = RunOptions::new().with_save_images(true);
        assert_eq!(serde_json::to_value(&saving).unwrap(), serde_json::json!({"save_images": true}));
        assert_eq!(serde_json::from_value::<RunOptions>(serde_json::json!({"save_images": true})).unwrap(), saving);
        let err = serde_json::from_value::<RunOptions>(serde_json::json!({"save_images": "yes"})).unwrap_err();
        assert!(err.to_string().contains("expected a boolean"), "{err}");
        assert!(serde_json::from_value::<RunOptions>(serde_json::json!({"timeout": -1})).is_err());
        for huge in [1e300, 1.9e19, 1.8e19, 1e10] {
            assert!(serde_json::from_value::<RunOptions>(serde_json::json!({ "timeout": huge })).is_err(), "{huge}");
            assert!(
                serde_json::from_value::<CommandSpec>(serde_json::json!({"program": "x", "timeout": huge})).is_err()
            );
        }
    }
}

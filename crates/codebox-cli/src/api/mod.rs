//! The commands that drive a CodeBox server's API: `sessions`, `exec`, `sh`, `processes`,
//! `files`, `install`, `templates`, `metrics`, `history` and `contexts`.
//!
//! They are ordinary blocking programs, so they use `codebox::blocking`. Every one takes the
//! server's URL and key from `--url`/`--api-key` or, better, from `CODEBOX_API_URL` (or
//! `CODEBOX_BASE_URL`) and `CODEBOX_API_KEY` (a command line is visible to every user of the
//! machine), and `--json` for output a program reads. Exit statuses (docs/cli.md): 0 ok, 1
//! the code raised or the command failed, 2 usage, connection, authentication or an unknown
//! session.

// Printing results and errors is these commands' whole job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use codebox::blocking::{Client, RemoteBox};
use codebox::{CodeBoxError, ErrorKind};
use serde::Serialize;

pub(crate) mod exec;
pub(crate) mod files;
pub(crate) mod info;
pub(crate) mod processes;
pub(crate) mod sessions;

/// The command did what it was asked.
pub(crate) const EXIT_OK: u8 = 0;
/// The code raised (or timed out), or the command failed.
pub(crate) const EXIT_FAILED: u8 = 1;
/// Usage, connection or authentication errors, and unknown sessions.
pub(crate) const EXIT_USAGE: u8 = 2;

/// The exit statuses, at the end of every API command's `--help` and man page.
pub(crate) const EXIT_STATUS_HELP: &str = "Exit status: 0 ok; 1 the code raised or timed out, the program failed, or the \
command failed; 2 usage, no key, the server unreachable, the key refused, or an unknown session.";

/// The variable naming the server, as the CLI's documentation calls it.
const URL_VAR: &str = "CODEBOX_API_URL";

/// How to reach the server, and how to print: every API command has these.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Conn {
    /// The server's base URL [env: CODEBOX_API_URL, then CODEBOX_BASE_URL; default http://127.0.0.1:8069].
    #[arg(long, global = true, value_name = "URL")]
    url: Option<String>,
    /// The API key. Prefer CODEBOX_API_KEY in the environment: a command line is visible to
    /// every user of the machine.
    #[arg(long, global = true, env = "CODEBOX_API_KEY", hide_env_values = true, value_name = "KEY")]
    api_key: Option<String>,
    /// Print JSON (one document, or one event per line for `exec`) instead of text.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

impl Conn {
    /// A client for the server these settings name.
    pub(crate) fn client(&self) -> Result<Client, Failure> {
        let url = self
            .url
            .clone()
            .or_else(|| std::env::var(URL_VAR).ok().filter(|v| !v.is_empty()))
            .or_else(|| std::env::var("CODEBOX_BASE_URL").ok().filter(|v| !v.is_empty()))
            .unwrap_or_else(|| codebox::CodeBoxSettings::DEFAULT_BASE_URL.to_owned());
        let Some(key) = self.api_key.clone().filter(|k| !k.is_empty()) else {
            return Err(Failure::usage("no API key: set CODEBOX_API_KEY (or pass --api-key)"));
        };
        Client::builder().with_base_url(url).with_api_key(key).build().map_err(|e| Failure::usage(e.to_string()))
    }

    /// The session `id`, checked to exist. An unknown one fails with the server's message
    /// and exit 2, like any failure to reach the server.
    pub(crate) fn session(&self, id: &str) -> Result<(Client, RemoteBox), Failure> {
        let client = self.client()?;
        let b = client.get(id).map_err(|e| Failure { exit: EXIT_USAGE, ..Failure::from(e) })?;
        Ok((client, b))
    }

    /// Print `value` as JSON under `--json`, else as `text` says.
    pub(crate) fn show<T: Serialize>(
        &self,
        value: &T,
        text: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Outcome {
        let mut out = std::io::stdout().lock();
        let written = if self.json {
            serde_json::to_writer_pretty(&mut out, value).map_err(std::io::Error::from).and_then(|()| writeln!(out))
        } else {
            text(&mut out)
        };
        written.and_then(|()| out.flush()).map_err(|e| Failure::failed(format!("writing the output: {e}")))?;
        Ok(EXIT_OK)
    }
}

/// What a command ends with: an exit status, or a failure to report.
pub(crate) type Outcome = Result<u8, Failure>;

/// A command's failure: its message and exit status.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) exit: u8,
    pub(crate) kind: Option<ErrorKind>,
    pub(crate) message: String,
}

impl Failure {
    /// A usage error (exit 2).
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self { exit: EXIT_USAGE, kind: None, message: message.into() }
    }

    /// A failed command (exit 1).
    pub(crate) fn failed(message: impl Into<String>) -> Self {
        Self { exit: EXIT_FAILED, kind: None, message: message.into() }
    }
}

impl From<CodeBoxError> for Failure {
    fn from(e: CodeBoxError) -> Self {
        let kind = e.kind();
        let exit = match kind {
            ErrorKind::Authentication | ErrorKind::Connection | ErrorKind::InvalidInput | ErrorKind::UnsafePath => {
                EXIT_USAGE
            }
            _ => EXIT_FAILED,
        };
        Self { exit, kind: Some(kind), message: e.to_string() }
    }
}

/// The error line printed under `--json`.
#[derive(Serialize)]
struct ErrorDoc<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    exit: u8,
}

/// Report a command's end: the failure on stderr (and as JSON on stdout under `--json`).
pub(crate) fn finish(json: bool, outcome: Outcome) -> ExitCode {
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("codebox: {}", f.message);
            if json {
                let kind = f.kind.map(|k| format!("{k:?}"));
                let doc = ErrorDoc { error: &f.message, kind, exit: f.exit };
                if let Ok(line) = serde_json::to_string(&doc) {
                    println!("{line}");
                }
            }
            ExitCode::from(f.exit)
        }
    }
}

/// All of stdin, which must be piped: on a terminal, a usage error saying `when_terminal`.
pub(crate) fn piped_stdin(when_terminal: &str) -> Result<Vec<u8>, Failure> {
    let mut stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err(Failure::usage(when_terminal));
    }
    let mut data = Vec::new();
    stdin.read_to_end(&mut data).map_err(|e| Failure::usage(format!("reading stdin: {e}")))?;
    Ok(data)
}

/// Parse `KEY=VALUE`.
pub(crate) fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// Parse a positive number of seconds.
pub(crate) fn seconds(s: &str) -> Result<std::time::Duration, String> {
    match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 && secs < 1e9 => Ok(std::time::Duration::from_secs_f64(secs)),
        _ => Err(format!("expected a positive number of seconds, got {s:?}")),
    }
}

/// A Unix time in seconds, as UTC text.
pub(crate) fn unix_time(secs: f64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(secs.max(0.0)))
        .to_string()
}

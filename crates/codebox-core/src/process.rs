//! Processes a box runs in the background: started with [`CodeBox::start_process`], their
//! output streamed as it comes, written to, signalled and listed while they run. This is
//! what E2B's `commands` and a terminal-like agent tool need; [`CodeBox::run_command`]
//! stays the one-shot form.
//!
//! [`CodeBox::start_process`]: crate::CodeBox::start_process
//! [`CodeBox::run_command`]: crate::CodeBox::run_command

use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::options::CommandSpec;

/// The id of a process in its box: small, given by the box, never the host's pid (which
/// would tell a tenant about the host). Unique among the box's processes for the box's
/// life.
pub type ProcessId = u32;

/// How to start a background process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProcessSpec {
    /// What to run: program, arguments, directory, environment and timeout (after which the
    /// process is killed and its end says `timed_out`).
    #[serde(flatten)]
    pub command: CommandSpec,
    /// Keep the process's standard input open for [`CodeBox::process_input`]; without it
    /// the process reads end-of-file.
    ///
    /// [`CodeBox::process_input`]: crate::CodeBox::process_input
    #[serde(default)]
    pub stdin: bool,
    /// A name of the caller's choosing, listed with the process (in [`ProcessInfo::spec`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

impl ProcessSpec {
    /// A process running `command`, standard input closed.
    pub fn new(command: CommandSpec) -> Self {
        Self { command, ..Self::default() }
    }

    /// Keep standard input open.
    pub fn with_stdin(mut self) -> Self {
        self.stdin = true;
        self
    }

    /// Name the process.
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }
}

/// A process the box runs, as [`CodeBox::processes`] lists it.
///
/// [`CodeBox::processes`]: crate::CodeBox::processes
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProcessInfo {
    /// Its id in the box.
    pub pid: ProcessId,
    /// How it was started.
    pub spec: ProcessSpec,
}

impl ProcessInfo {
    /// A listed process.
    pub fn new(pid: ProcessId, spec: ProcessSpec) -> Self {
        Self { pid, spec }
    }
}

/// A signal a caller may send to a process of its box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum ProcessSignal {
    /// Ask it to end.
    Sigterm,
    /// End it now.
    Sigkill,
    /// What Ctrl-C sends.
    Sigint,
}

/// How a process ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProcessExit {
    /// Its exit code; `None` when a signal ended it.
    pub exit_code: Option<i32>,
    /// The signal that ended it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Whether it was killed for running past its timeout.
    #[serde(default)]
    pub timed_out: bool,
}

impl ProcessExit {
    /// A process that exited with `code`.
    pub fn code(code: i32) -> Self {
        Self { exit_code: Some(code), ..Self::default() }
    }

    /// A process a signal ended.
    pub fn signalled(signal: i32, timed_out: bool) -> Self {
        Self { exit_code: None, signal: Some(signal), timed_out }
    }

    /// Whether it exited with code 0.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// What a background process does, as it happens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProcessEvent {
    /// It started; always the first event of [`CodeBox::start_process`]'s stream.
    ///
    /// [`CodeBox::start_process`]: crate::CodeBox::start_process
    Start {
        /// Its id in the box.
        pid: ProcessId,
    },
    /// Bytes it wrote to standard output (not necessarily whole lines or UTF-8).
    Stdout {
        /// The bytes.
        #[serde(with = "base64_bytes")]
        data: Bytes,
    },
    /// Bytes it wrote to standard error.
    Stderr {
        /// The bytes.
        #[serde(with = "base64_bytes")]
        data: Bytes,
    },
    /// It ended; the last event.
    End(ProcessExit),
}

/// A process's events: [`ProcessEvent::Start`] first (from `start_process`), output as it
/// comes, [`ProcessEvent::End`] last. Dropping the stream does not stop the process: it
/// runs on until it ends or is signalled, and [`CodeBox::connect_process`] follows it again.
/// A box keeps a bounded backlog of output for each reader: one that reads slower than the
/// process writes loses the oldest output it has not read (never the end), rather than the
/// box buffering without bound.
///
/// [`CodeBox::connect_process`]: crate::CodeBox::connect_process
pub type ProcessStream = Pin<Box<dyn Stream<Item = Result<ProcessEvent>> + Send + 'static>>;

/// Bytes as standard base64 in JSON: output is arbitrary bytes.
mod base64_bytes {
    use base64::Engine;
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(data: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(data))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD.decode(text).map(Bytes::from).map_err(serde::de::Error::custom)
    }
}

//! What a box is doing and what it can do.

use serde::{Deserialize, Serialize};

/// The lifecycle state of a box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BoxState {
    /// Created but not started.
    NotStarted,
    /// The kernel is starting.
    Starting,
    /// Ready for code.
    Idle,
    /// Running code.
    Busy,
    /// The kernel is being restarted.
    Restarting,
    /// Stopped by its owner.
    Stopped,
    /// The kernel died and could not be restarted within its budget.
    Dead,
}

/// A report of a box's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BoxStatus {
    /// The lifecycle state.
    pub state: BoxState,
    /// The kernel's name (e.g. `python3`), when one is running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// The isolation the kernel runs under (e.g. `none`, `bubblewrap`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<String>,
    /// What the box's isolation cannot keep from code inside it, by stable name (for
    /// example `host_processes`); empty when it holds everything codebox checks. The names
    /// and what each means are listed in docs/security.md.
    #[serde(default)]
    pub isolation_gaps: Vec<String>,
    /// How many times the kernel was restarted after dying.
    #[serde(default)]
    pub restarts: u32,
    /// Why the box is dead or was restarted last, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl BoxStatus {
    /// A status with only the state set.
    pub fn new(state: BoxState) -> Self {
        Self { state, kernel: None, isolation: None, isolation_gaps: Vec::new(), restarts: 0, detail: None }
    }

    /// Set the kernel name.
    pub fn with_kernel(mut self, kernel: impl Into<String>) -> Self {
        self.kernel = Some(kernel.into());
        self
    }

    /// Set the isolation level.
    pub fn with_isolation(mut self, isolation: impl Into<String>) -> Self {
        self.isolation = Some(isolation.into());
        self
    }

    /// Set what the isolation cannot hold.
    pub fn with_isolation_gaps<S: Into<String>>(mut self, gaps: impl IntoIterator<Item = S>) -> Self {
        self.isolation_gaps = gaps.into_iter().map(Into::into).collect();
        self
    }

    /// Set the restart count.
    pub fn with_restarts(mut self, restarts: u32) -> Self {
        self.restarts = restarts;
        self
    }

    /// Set the detail text.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Whether the box can run code now or after a short wait.
    pub fn is_running(&self) -> bool {
        matches!(self.state, BoxState::Starting | BoxState::Idle | BoxState::Busy | BoxState::Restarting)
    }
}

/// What a backend can do. An operation a backend cannot do returns
/// [`CodeBoxError::Unsupported`](crate::CodeBoxError::Unsupported), never a silent no-op.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Capabilities {
    /// Execution events arrive as they happen (not only at the end).
    pub streaming: bool,
    /// `interrupt()` works.
    pub interrupt: bool,
    /// `restart()` works.
    pub restart: bool,
    /// `install()` works.
    pub install: bool,
    /// `packages()` works. Absent from an older server's answer: `false`.
    #[serde(default)]
    pub packages: bool,
    /// `history()` and `execution_stats()` work. Absent from an older server's answer: `false`.
    #[serde(default)]
    pub history: bool,
    /// Code contexts work: `create_context()`, `contexts()`, `restart_context()`,
    /// `delete_context()`, `interrupt_context()` and `RunOptions::context`. Absent from an
    /// older server's answer: `false`.
    #[serde(default)]
    pub contexts: bool,
    /// `connect_port()` works: programs in the box listening on TCP can be reached. Absent
    /// from an older server's answer: `false`.
    #[serde(default)]
    pub ports: bool,
    /// `metrics()` works. Absent from an older server's answer: `false`.
    #[serde(default)]
    pub metrics: bool,
    /// Executions list the files they created or changed (`Execution::artifacts`) and
    /// `RunOptions::save_images` works. Absent from an older server's answer: `false`.
    #[serde(default)]
    pub artifacts: bool,
    /// `pause()` works: the box's state can be written to disk and resumed later. Absent
    /// from an older server's answer: `false`.
    #[serde(default)]
    pub pause: bool,
    /// `run_command()` works.
    pub commands: bool,
    /// Background processes work: `start_process()`, `connect_process()`, `processes()`,
    /// `process_input()`, `close_process_input()` and `signal_process()`. Absent from an
    /// older server's answer: `false`.
    #[serde(default)]
    pub processes: bool,
    /// `delete_file()` works.
    pub delete_file: bool,
    /// `list_files(.., recursive = true)` works.
    pub recursive_list: bool,
    /// `stat()`, `make_dir()` and `rename()` work. Absent from older servers: then false.
    #[serde(default)]
    pub file_ops: bool,
    /// Languages or kernel names that `RunOptions::language` accepts.
    pub languages: Vec<String>,
    /// The largest upload accepted, in bytes, when there is a limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_upload_bytes: Option<u64>,
    /// What the box cannot report about its executions and kernel, by stable name; empty
    /// when it reports everything the trait describes. The names:
    /// - `exact_outcome`: exceptions and the [`Outcome`](crate::Outcome) are recognized from
    ///   output text, so an exception whose traceback is not printed, a timeout or an
    ///   interrupt may end as `Ok`;
    /// - `kernel_death_cause`: a kernel that dies shows as text or a cut stream, never as
    ///   [`CodeBoxError::KernelDied`](crate::CodeBoxError::KernelDied) with its cause;
    /// - `execution_count`: executions carry no execution counter;
    /// - `kernel_state`: `status()` cannot see a busy or dead kernel.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreported: Vec<String>,
}

impl Capabilities {
    /// A backend that can do everything the trait offers.
    pub fn full(languages: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            streaming: true,
            interrupt: true,
            restart: true,
            install: true,
            packages: true,
            history: true,
            contexts: true,
            ports: true,
            metrics: true,
            artifacts: true,
            pause: true,
            commands: true,
            processes: true,
            delete_file: true,
            recursive_list: true,
            file_ops: true,
            languages: languages.into_iter().map(Into::into).collect(),
            max_upload_bytes: None,
            unreported: Vec::new(),
        }
    }

    /// A backend that can do nothing but run code and move files.
    pub fn minimal(languages: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            streaming: false,
            interrupt: false,
            restart: false,
            install: false,
            packages: false,
            history: false,
            contexts: false,
            ports: false,
            metrics: false,
            artifacts: false,
            pause: false,
            commands: false,
            processes: false,
            delete_file: false,
            recursive_list: false,
            file_ops: false,
            languages: languages.into_iter().map(Into::into).collect(),
            max_upload_bytes: None,
            unreported: Vec::new(),
        }
    }
}

//! The core of codebox: the [`CodeBox`] trait every backend implements, the types that cross
//! its boundary, the one error type, and the settings read from the environment.
//!
//! This crate performs no I/O of its own: settings come from the process environment or a
//! lookup function, and the `codebox` facade reads `.env` files. Backends live in their own
//! crates (`codebox-local`, `codebox-remote`) and the `codebox` facade re-exports them.
//!
//! A Python exception raised by user code is *data*: it comes back inside `Ok(Execution)`
//! with name, value and traceback. An `Err(CodeBoxError)` means the box itself failed.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod artifact;
mod codebox;
mod context;
mod error;
mod event;
mod execution;
mod factory;
mod files;
mod history;
mod metrics;
mod options;
mod packages;
mod pause;
mod ports;
mod process;
mod settings;
mod status;

#[cfg(feature = "conformance")]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub mod conformance;

pub use crate::artifact::{Artifact, ArtifactChange};
pub use crate::codebox::{ByteStream, CodeBox, CodeBoxExt, EventStream, MAX_LIST_DEPTH, check_list_depth};
pub use crate::context::{ContextInfo, DEFAULT_CONTEXT, DEFAULT_MAX_CONTEXTS, default_context_kept, unknown_context};
pub use crate::error::{BoxedSource, CodeBoxError, ErrorKind, HttpError, KernelDeath, Result, TimeoutKind};
pub use crate::event::{ErrorInfo, ExecEvent, MimeBundle, Outcome};
pub use crate::execution::{Execution, Image};
pub use crate::factory::{BoxFactory, BoxRequest, PoolStats, ResourceLimits, TemplateInfo, factory_fn};
pub use crate::files::{FileInfo, FileKind, normalize_box_path};
pub use crate::history::{CODE_HEAD_CHARS, ExecutionRecord, ExecutionStats, HistoryRing, code_hash};
pub use crate::metrics::{BoxMetrics, METRIC_FIELDS};
pub use crate::options::{CommandOutput, CommandSpec, RunOptions};
pub use crate::packages::PackageInfo;
pub use crate::pause::{ContextSnapshot, PauseReport, RESUME_NOTICE_MIME, ResumeReport, SnapshotRung, Unrestored};
pub use crate::ports::{PORT_RANGE, PortIo, PortStream, check_port};
pub use crate::process::{
    ProcessEvent, ProcessExit, ProcessId, ProcessInfo, ProcessSignal, ProcessSpec, ProcessStream,
};
pub use crate::settings::{ApiKey, CodeBoxSettings};
pub use crate::status::{BoxState, BoxStatus, Capabilities};

//! LocalBox: run code in Jupyter kernels that codebox starts and supervises itself on this
//! machine, over the Jupyter messaging protocol on ZeroMQ (no Jupyter server, no IPython in
//! this process).
//!
//! ```no_run
//! use codebox_core::{CodeBox, CodeBoxExt};
//! use codebox_local::LocalBox;
//!
//! # async fn demo() -> codebox_core::Result<()> {
//! let lb = LocalBox::new()?;
//! lb.start().await?;
//! lb.exec("x = 20").await?;
//! let ex = lb.exec("print('hello'); x + 22").await?;
//! assert_eq!(ex.stdout(), "hello\n");
//! assert_eq!(ex.result().and_then(|r| r.plain()).as_deref(), Some("42"));
//! lb.stop().await?;
//! # Ok(()) }
//! ```
//!
//! # What a box is
//!
//! Each [`LocalBox`] owns one kernel process (ipykernel by default, or any installed
//! kernelspec) and one working directory, the kernel's current directory. Boxes are
//! independent: many run side by side in one process.
//!
//! # Python
//!
//! The kernel's Python is, in order: the builder's [`with_python`](LocalBoxBuilder::with_python),
//! `CODEBOX_PYTHON`, or a managed virtual environment (see [`managed_python_dir`]) that is
//! created on first use with ipykernel, matplotlib, numpy and pandas
//! ([`PythonProfile::Data`]) unless provisioning is [`Provision::Off`].
//! Building it takes a while (the venv, then one pip run per group of packages); each step is
//! reported as a [`ProvisionEvent`] to the hook given to
//! [`with_progress`](LocalBoxBuilder::with_progress), and as `tracing` events. This crate
//! never prints.
//!
//! # JavaScript and TypeScript
//!
//! The built-in [`DENO_KERNEL`] runs Deno's Jupyter kernel. Deno is `CODEBOX_DENO`, else it
//! is fetched on first use from the npm registry (pinned at [`DENO_VERSION`], checked against
//! the registry's published integrity with [`verify_integrity`]) into [`managed_deno_dir`],
//! reported through the same [`ProvisionEvent`]s. A deno box needs no ipykernel: commands run
//! under the system's `python3` (or `CODEBOX_PYTHON`).
//!
//! # Supervision
//!
//! Kernels are forked from one long-lived thread with `PR_SET_PDEATHSIG`, each in its own
//! process group, so none outlives the process that owns it, even when that process is
//! killed. A kernel that dies (`os._exit`, a segfault, the OOM killer) fails the running
//! call at once with [`CodeBoxError::KernelDied`](codebox_core::CodeBoxError::KernelDied)
//! and its cause, and is restarted (at most 3 times a minute by default). An execution that
//! passes its timeout is interrupted and ends with
//! [`Outcome::TimedOut`](codebox_core::Outcome::TimedOut), state kept; if the kernel
//! ignores the interrupt it is killed and restarted and the call fails with a timeout error
//! saying the state was lost.
//!
//! # Isolation
//!
//! Kernels, and the commands and `bash` cells of a box, run sandboxed by default: under
//! bubblewrap where it works (a user namespace, no network, a minimal read-only root with
//! only the working directory writable, no capabilities, a seccomp deny-list), else under
//! Landlock, else without isolation and with a loud warning. The level is reported in
//! [`BoxStatus::isolation`](codebox_core::BoxStatus::isolation). A [`SandboxPolicy`] given
//! to [`with_sandbox`](LocalBoxBuilder::with_sandbox) picks the level (or requires one),
//! the network, [`Limits`] (rlimits, tmpfs sizes and, with cgroups (root), memory, process
//! and CPU limits) and a uid of the box's own. The sandbox itself is the `codebox-sandbox`
//! crate; this crate re-exports its policy types.
//!
//! # Templates
//!
//! A [`Template`] names a kernel, the language of cells that name none, packages, variables
//! and default limits; [`with_template`](LocalBoxBuilder::with_template) takes a built-in
//! (`python`, `python-ipykernel`, `python-minimal`, `bash`, `javascript`, `typescript`) and
//! [`with_template_def`](LocalBoxBuilder::with_template_def) any. A template with packages
//! runs on a Python environment of its own ([`template_python_dir`]), built on first use
//! under a lock (reported as [`ProvisionEvent`]s), cached by the hash of its profile and
//! packages and shared read-only; a failed build removes what it made, so the next use
//! builds afresh.
//!
//! # Hosting boxes for a server
//!
//! [`LocalFactory`] makes a confined box per session for a server, from a
//! [`TemplateCatalogue`]: it claims and sweeps a session root, chooses session uids and
//! cgroups, keeps a warm [`KernelPool`] per template it is told to and says how many
//! sessions its uids allow. A pool also hands out boxes itself
//! ([`KernelPool::acquire`], [`KernelPool::release`], [`KernelPool::stats`]).
//!
//! # Installing packages
//!
//! In a confined box (any isolation level, or a uid of its own) `install` runs
//! `pip install --target` under the box's own confinement and uid, with network for pip
//! alone, into `.codebox/site-packages` in the working directory
//! ([`PACKAGES_DIR`]): the packages count against the box's disk limit, go with the
//! box, and are first on `PYTHONPATH` of its kernels and commands from the start, so they
//! import at once and after a restart. The shared Python is never written. `--target`
//! installs a package's dependencies into the box too, even those the shared environment
//! has. `.codebox/` is left out of file listings. The operator's pip settings (`PIP_INDEX_URL`,
//! `PIP_FIND_LINKS`, `PIP_CERT`, proxies) reach pip. pip has the network, and a source
//! package's build code runs in pip's process: a box that may install can reach the network
//! through a package it builds, though still confined and under its own uid. An unconfined
//! box (isolation none, no session uid) runs pip on this machine into the box's Python
//! environment.
//!
//! # Per-execution options
//!
//! `RunOptions::cwd` and `env` are applied by two small silent requests around the
//! execution (`os.chdir` and `os.environ`, restored afterwards); the user's code is sent
//! unchanged. `language: "bash"` runs the code with `bash -c` as a child process in the
//! working directory.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod artifacts;
mod boxprocess;
mod confine;
mod deno;
mod exec;
mod factory;
mod files;
mod history;
mod kernel;
mod kernelspec;
mod localbox;
mod metrics;
mod output;
mod pip;
mod pool;
mod progress;
mod protocol;
mod python;
mod relay;
mod snapshot;
mod spawn;
mod template;
mod util;
mod workdir;

// Trees a box's code may have shaped are removed by the sandbox crate's walk.

pub use crate::artifacts::MAX_WATCHED_DIRS;
pub use crate::deno::{DENO_VERSION, IntegrityError, managed_deno_dir, provision_deno_at, verify_integrity};
pub use crate::factory::{LocalFactory, LocalFactoryBuilder};
pub use crate::history::HISTORY_CAPACITY;
pub use crate::kernelspec::{DENO_KERNEL, LEAN_KERNEL};
pub use crate::localbox::{DEFAULT_MAX_PROCESSES, DEFAULT_OUTPUT_LIMIT, LocalBox, LocalBoxBuilder};
pub use crate::pool::{KernelPool, KernelPoolStats};
pub use crate::progress::{ProgressFn, ProvisionEvent, ProvisionStep};
pub use crate::python::{Provision, PythonProfile, managed_python_dir, provision_at, template_python_dir};
pub use crate::template::{DEFAULT_TEMPLATE, Template, TemplateCatalogue};
pub use codebox_sandbox::{
    Allowlist, BwrapUnavailable, DEFAULT_UID_RANGE, HostMemory, Isolation, IsolationLevel, LandlockUnavailable, Limits,
    PACKAGES_DIR, Probe, SandboxPolicy, UidAllocator, choose, host_memory, probe, running_as_root,
};

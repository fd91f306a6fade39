//! Why a kernel could not be sandboxed, and why an isolation level does not work here.
//!
//! [`SandboxError`] stays inside the crate: [`Confinement`](crate::Confinement) turns it into
//! a `CodeBoxError::KernelStart` that keeps it as its source. [`BwrapUnavailable`] and
//! [`LandlockUnavailable`] are public, as the fields of [`Probe`](crate::Probe): the probe is
//! cached and cloned, so they are `Clone` and compare by value.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;

/// Why a sandboxed command could not be prepared.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SandboxError {
    /// The command line has no program.
    #[error("empty kernel command line")]
    EmptyCommand,
    /// The box's limits are out of range.
    #[error("{0}")]
    Limits(#[source] codebox_core::CodeBoxError),
    /// The kernel's `HOME` and `TMPDIR` could not be made.
    #[error("making the kernel's HOME and TMPDIR in {}: {source}", work_dir.display())]
    PrivateDirs {
        /// The working directory they belong in.
        work_dir: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// The bubblewrap level was chosen without a `bwrap` to run.
    #[error("bubblewrap was chosen but no bwrap binary is known")]
    NoBwrap,
    /// The bubblewrap configuration would be rejected by `bwrap` (or is unsafe).
    #[error("{reason}")]
    BwrapConfig {
        /// What is wrong with it.
        reason: String,
    },
    /// This CPU has no seccomp filter.
    #[error("no seccomp filter for this CPU: {0}")]
    SeccompArch(#[source] seccompiler::BackendError),
    /// A seccomp rule or program could not be built.
    #[error("building the seccomp filter: {0}")]
    Seccomp(#[source] seccompiler::BackendError),
    /// The compiled seccomp programs could not be written for bwrap to read.
    #[error("writing the seccomp filter: {0}")]
    SeccompMemfd(#[source] std::io::Error),
    /// The Landlock ruleset could not be created or a rule added.
    #[error("{context}: {source}")]
    Landlock {
        /// The step that failed.
        context: &'static str,
        /// What Landlock said.
        #[source]
        source: landlock::RulesetError,
    },
}

impl From<seccompiler::BackendError> for SandboxError {
    fn from(e: seccompiler::BackendError) -> Self {
        Self::Seccomp(e)
    }
}

/// Why bubblewrap does not work on this machine.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BwrapUnavailable {
    /// No `bwrap` was found.
    #[error("bwrap was not found on PATH (install bubblewrap, e.g. `apt-get install bubblewrap`)")]
    NotFound,
    /// `bwrap` could not be started.
    #[error("could not run {}: {source}", path.display())]
    NotRunnable {
        /// The `bwrap` that was tried.
        path: PathBuf,
        /// Why it could not be started (shared: the probe is cloned).
        #[source]
        source: Arc<std::io::Error>,
    },
    /// `bwrap` ran but could not make its sandbox.
    #[error("{} failed ({status}): {stderr}{}", path.display(), userns_hint(*userns_restricted))]
    Failed {
        /// The `bwrap` that was tried.
        path: PathBuf,
        /// How it exited.
        status: ExitStatus,
        /// What it wrote to stderr, trimmed.
        stderr: String,
        /// Whether its stderr looks like restricted unprivileged user namespaces.
        userns_restricted: bool,
    },
}

/// What to do about restricted user namespaces, after a failure that looks like them.
fn userns_hint(userns_restricted: bool) -> &'static str {
    if userns_restricted {
        " (unprivileged user namespaces look restricted, e.g. by AppArmor's \
         kernel.apparmor_restrict_unprivileged_userns=1: install an AppArmor profile that \
         allows userns for bwrap, see /etc/apparmor.d/bwrap-userns-restrict, or set that \
         sysctl to 0)"
    } else {
        ""
    }
}

// By hand: `std::io::Error` has no equality; two start failures are the same when they name
// the same `bwrap` and read the same.
impl PartialEq for BwrapUnavailable {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::NotFound, Self::NotFound) => true,
            (Self::NotRunnable { path: a, source: e }, Self::NotRunnable { path: b, source: f }) => {
                a == b && e.kind() == f.kind() && e.to_string() == f.to_string()
            }
            (
                Self::Failed { path: a, status: s, stderr: e, userns_restricted: u },
                Self::Failed { path: b, status: t, stderr: f, userns_restricted: v },
            ) => a == b && s == t && e == f && u == v,
            _ => false,
        }
    }
}

impl Eq for BwrapUnavailable {}

/// Why Landlock does not work on this machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LandlockUnavailable {
    /// No Landlock ABI this code knows could create a ruleset.
    #[error("Landlock is not enabled in this kernel (needs Linux >= 5.13 with landlock in the `lsm=` list)")]
    NotEnabled,
}

//! The sandbox of codebox's local kernels: the isolation ladder, resource limits,
//! per-session uids and cgroups, and the session root a server sweeps.
//!
//! A kernel runs under the strongest level this machine allows, tried in order:
//!
//! 1. [`IsolationLevel::Bubblewrap`]: `bwrap` with a user namespace, no network unless the box
//!    opts in, a minimal read-only root, only the working directory (and the kernel's socket
//!    directory) writable, sized tmpfs for `/tmp`, `/dev/shm` and `/home/user`, every capability
//!    dropped, no new privileges and a seccomp deny-list.
//! 2. [`IsolationLevel::Landlock`]: where user namespaces are not available, Landlock rules
//!    (read-only system and Python, read-write working directory, no `/proc` entry of another
//!    process, abstract Unix sockets and signals scoped to the box), the same seccomp
//!    deny-list plus, without network, no IP sockets at all, and rlimits.
//! 3. [`IsolationLevel::None`]: rlimits only, with a loud warning.
//!
//! At every level the kernel gets the box's own environment and what the sandbox sets, never
//! the server's, and its `HOME` and `TMPDIR` live in the working directory.
//!
//! # The public API
//!
//! The policy is a value: a [`SandboxPolicy`] (an [`Isolation`] asked for, [`Limits`], the
//! network or an [`Allowlist`], a [`UidAllocator`], cgroups) compared by its fields, so
//! that two boxes confined alike can share pre-started kernels. [`probe()`] says what this
//! machine allows and [`choose`] which level a policy gets here.
//!
//! A host of many boxes (a server) claims a [`SessionRoot`], which sweeps what an earlier
//! host left behind, and checks [`cgroup_version`] and [`running_as_root`].
//!
//! The launch side, for codebox-local: [`SandboxPolicy::confine`] turns a policy and a working
//! directory into a [`Confinement`] (the box's uid, cgroup and disk image), whose
//! [`prepare`](Confinement::prepare) turns a command line into a [`Prepared`] command to
//! spawn. [`NetProxy`] and [`LoopbackProxy`] carry an allowlisted box's traffic, and
//! [`rmtree`] removes trees a box may have shaped. [`Confinement::prepare_fork_target`] makes
//! a box for a kernel forked into it rather than executed, with the [`ForkPlan`] that kernel
//! applies to itself, and [`host_memory`] says what memory this process may count on.
//! Everything else (bubblewrap arguments, Landlock rules, seccomp programs, rlimits, cgroup
//! files) stays inside this crate.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod bwrap;
mod cgroup;
mod confinement;
mod disk;
mod error;
mod landlock;
mod launch;
mod leftovers;
mod limits;
mod memory;
mod netns;
mod netproxy;
mod policy;
mod probe;
pub mod proctree;
mod rlimits;
pub mod rmtree;
mod seccomp;
mod sweep;
mod uid;

use std::fmt;

pub use self::cgroup::{CgroupCounters, CgroupUnavailable, cgroup_version, session_cgroups_of};
pub use self::confinement::{Confinement, FORK_PLACEHOLDER, ForkPlan, ForkTarget, InstallerNetwork, PACKAGES_DIR};
pub use self::error::{BwrapUnavailable, LandlockUnavailable};
pub use self::launch::{Prepared, SpawnGuard};
pub use self::limits::Limits;
pub use self::memory::{HostMemory, host_memory, machine_memory};
pub use self::netns::{BoxNamespace, PortConnectError, check_listener_owner, connect_loopback, loopback_listeners};
pub use self::netproxy::{Allowlist, LoopbackProxy, NetProxy, proxy_env};
pub use self::policy::SandboxPolicy;
pub use self::probe::{Probe, probe};
pub use self::sweep::{SessionRoot, Swept};
pub use self::uid::{DEFAULT_UID_RANGE, UidAllocator, processes_in_range, running_as_root, unreachable_for_others};

/// The bare bubblewrap command the sandbox builds on, running `argv`: every namespace
/// unshared, no capabilities, and the read-only system mounts a kernel sees, without the
/// rest of a box's confinement (seccomp, tmpfs, working directory). For measuring what
/// bubblewrap itself costs; `None` where bubblewrap does not work.
pub fn bare_bubblewrap(argv: &[&str]) -> Option<std::process::Command> {
    let bwrap = probe().bubblewrap.as_ref().ok()?;
    let mut cmd = std::process::Command::new(bwrap);
    cmd.args(["--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session"])
        .args(["--cap-drop", "ALL"])
        .args(bwrap::system_mounts())
        .args(["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/"])
        .args(argv);
    Some(cmd)
}

/// Which isolation a box asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Isolation {
    /// The strongest level this machine allows: bubblewrap, else Landlock, else none.
    #[default]
    Auto,
    /// bubblewrap with a user namespace; an error where it does not work.
    Bubblewrap,
    /// Landlock, seccomp and rlimits; an error where Landlock is not available.
    Landlock,
    /// No isolation: the kernel runs as a plain child process (rlimits still apply).
    None,
}

impl std::str::FromStr for Isolation {
    type Err = codebox_core::CodeBoxError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "bwrap" | "bubblewrap" => Ok(Self::Bubblewrap),
            "landlock" => Ok(Self::Landlock),
            "none" | "off" => Ok(Self::None),
            other => Err(codebox_core::CodeBoxError::invalid(format!(
                "unknown isolation {other:?}: expected auto, bubblewrap, landlock or none"
            ))),
        }
    }
}

/// The isolation a kernel actually runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum IsolationLevel {
    /// No isolation.
    None,
    /// Landlock, seccomp and rlimits.
    Landlock,
    /// bubblewrap: namespaces, minimal read-only root, seccomp, no capabilities.
    Bubblewrap,
}

impl IsolationLevel {
    /// The name reported in [`BoxStatus::isolation`](codebox_core::BoxStatus::isolation).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Landlock => "landlock",
            Self::Bubblewrap => "bubblewrap",
        }
    }

    /// What this level cannot keep from code in a box, by the stable names reported in
    /// [`BoxStatus::isolation_gaps`](codebox_core::BoxStatus::isolation_gaps) and explained
    /// in docs/security.md. A server refuses to serve several API keys on a level with gaps
    /// unless its operator allows weak isolation.
    ///
    /// * `host_unix_sockets`: Unix sockets with a path on the host that the box's uid may
    ///   write can be connected to (Landlock does not govern `connect`).
    /// * `host_abstract_sockets`, `host_signals`: on a kernel without Landlock ABI 6 (before
    ///   Linux 6.12), abstract Unix sockets of the host and signals to processes of the same
    ///   uid are not scoped to the box.
    /// * `host_filesystem`, `host_processes`, `host_network`: no sandbox at all; the session
    ///   uid and the file permissions are all that stand between the box and the host.
    /// * `install_network`: `install` runs pip with the host network.
    /// * `host_writable_dirs`: code can write the host's world-writable directories (`/tmp`,
    ///   `/var/tmp`, `/dev/shm`, ...) beyond the working directory's size limit while the
    ///   session lives; what the session uid left there is removed when the session ends.
    pub fn gaps(self) -> &'static [&'static str] {
        match self {
            Self::Bubblewrap => &[],
            Self::Landlock => match probe().landlock {
                Ok(abi) if abi >= 6 => &["host_unix_sockets"],
                _ => &["host_unix_sockets", "host_abstract_sockets", "host_signals"],
            },
            Self::None => {
                &["host_filesystem", "host_processes", "host_network", "install_network", "host_writable_dirs"]
            }
        }
    }
}

impl fmt::Display for IsolationLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Choose the level for `wanted` on a machine described by `probe`.
///
/// `Auto` falls down the ladder; an explicit level that does not work here is an error, and
/// so is `Auto` ending at `None` when `require` is set. The error says why each level failed
/// and how to fix it.
pub fn choose(wanted: Isolation, require: bool, probe: &Probe) -> codebox_core::Result<IsolationLevel> {
    let bwrap_err = || probe.bubblewrap.as_ref().err().map(ToString::to_string).unwrap_or_default();
    let landlock_err = || probe.landlock.as_ref().err().map(ToString::to_string).unwrap_or_default();
    let fail = |message: String| codebox_core::CodeBoxError::kernel_start(message);
    match wanted {
        Isolation::Bubblewrap => match &probe.bubblewrap {
            Ok(_) => Ok(IsolationLevel::Bubblewrap),
            Err(e) => Err(fail(format!("isolation bubblewrap is not available: {e}")).with_source(e.clone())),
        },
        Isolation::Landlock => match &probe.landlock {
            Ok(_) => Ok(IsolationLevel::Landlock),
            Err(e) => Err(fail(format!("isolation landlock is not available: {e}")).with_source(e.clone())),
        },
        Isolation::None if require => {
            Err(codebox_core::CodeBoxError::invalid("isolation none contradicts require_isolation"))
        }
        Isolation::None => Ok(IsolationLevel::None),
        Isolation::Auto => {
            if probe.bubblewrap.is_ok() {
                Ok(IsolationLevel::Bubblewrap)
            } else if probe.landlock.is_ok() {
                Ok(IsolationLevel::Landlock)
            } else if require {
                Err(fail(format!(
                    "no isolation is available and it is required: bubblewrap: {}; landlock: {}",
                    bwrap_err(),
                    landlock_err()
                )))
            } else {
                Ok(IsolationLevel::None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn machine(bwrap: bool, landlock: bool) -> Probe {
        Probe {
            bubblewrap: if bwrap { Ok(PathBuf::from("/usr/bin/bwrap")) } else { Err(BwrapUnavailable::NotFound) },
            landlock: if landlock { Ok(7) } else { Err(LandlockUnavailable::NotEnabled) },
        }
    }

    #[test]
    fn auto_walks_down_the_ladder() {
        assert_eq!(choose(Isolation::Auto, false, &machine(true, true)).unwrap(), IsolationLevel::Bubblewrap);
        assert_eq!(choose(Isolation::Auto, false, &machine(false, true)).unwrap(), IsolationLevel::Landlock);
        assert_eq!(choose(Isolation::Auto, false, &machine(false, false)).unwrap(), IsolationLevel::None);
    }

    #[test]
    fn required_isolation_fails_closed_with_the_reasons() {
        let err = choose(Isolation::Auto, true, &machine(false, false)).unwrap_err().to_string();
        assert!(err.contains("bwrap was not found") && err.contains("Landlock is not enabled"), "{err}");
        assert!(choose(Isolation::None, true, &machine(true, true)).is_err());
    }

    #[test]
    fn an_explicit_level_that_is_missing_is_an_error() {
        let err = choose(Isolation::Bubblewrap, false, &machine(false, true)).unwrap_err();
        assert!(err.to_string().contains("bubblewrap is not available"), "{err}");
        let cause = std::error::Error::source(&err).and_then(|e| e.downcast_ref::<BwrapUnavailable>());
        assert_eq!(cause, Some(&BwrapUnavailable::NotFound), "the probe's reason is kept as the source");
        assert!(choose(Isolation::Landlock, false, &machine(true, false)).is_err());
        assert_eq!(choose(Isolation::Landlock, false, &machine(true, true)).unwrap(), IsolationLevel::Landlock);
        assert_eq!(choose(Isolation::None, false, &machine(true, true)).unwrap(), IsolationLevel::None);
    }

    #[test]
    fn isolation_parses_and_rejects_unknown_names() {
        assert_eq!("bwrap".parse::<Isolation>().unwrap(), Isolation::Bubblewrap);
        assert_eq!(" Landlock ".parse::<Isolation>().unwrap(), Isolation::Landlock);
        assert_eq!("none".parse::<Isolation>().unwrap(), Isolation::None);
        assert_eq!("auto".parse::<Isolation>().unwrap(), Isolation::Auto);
        let err = "docker".parse::<Isolation>().unwrap_err().to_string();
        assert!(err.contains("docker"), "{err}");
    }

    #[test]
    fn levels_have_stable_names() {
        assert_eq!(IsolationLevel::Bubblewrap.to_string(), "bubblewrap");
        assert_eq!(IsolationLevel::Landlock.as_str(), "landlock");
        assert_eq!(IsolationLevel::None.as_str(), "none");
    }
}

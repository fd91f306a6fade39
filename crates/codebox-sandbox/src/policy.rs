//! The sandbox policy: how a box's kernels and commands are confined, as a value.

use std::sync::OnceLock;

use codebox_core::{CodeBoxError, Result};

use crate::netproxy::Allowlist;
use crate::uid::UidAllocator;
use crate::{Isolation, IsolationLevel, Limits, choose, probe};

/// How a box's kernels are confined.
///
/// A value, compared and hashed by every field: a kernel pool hands a box only a kernel
/// confined by an equal policy. Build one from [`SandboxPolicy::default`] with the `with_*`
/// setters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct SandboxPolicy {
    /// The isolation asked for.
    pub isolation: Isolation,
    /// Fail instead of running a kernel without isolation.
    pub require: bool,
    /// Give kernels the host network.
    pub network: bool,
    /// Let kernels reach only these hosts, through codebox's proxy ([`NetProxy`](crate::NetProxy)).
    /// Needs the bubblewrap level and excludes `network`.
    pub network_allowlist: Allowlist,
    /// Resource limits.
    pub limits: Limits,
    /// Run each kernel under its own uid from this allocator (needs root).
    pub uids: Option<UidAllocator>,
    /// Put each kernel in its own cgroup with the memory, pids and cpu limits (needs root
    /// or a delegated cgroup subtree).
    pub cgroups: bool,
}

impl Default for SandboxPolicy {
    /// `Auto` isolation, not required, no network, the local [`Limits`], no session uid or
    /// cgroup.
    fn default() -> Self {
        Self {
            isolation: Isolation::Auto,
            require: false,
            network: false,
            network_allowlist: Allowlist::default(),
            limits: Limits::default(),
            uids: None,
            cgroups: false,
        }
    }
}

fn warn_unisolated() {
    static WARNED: OnceLock<()> = OnceLock::new();
    WARNED.get_or_init(|| {
        tracing::warn!(
            "KERNELS RUN WITHOUT ISOLATION: neither bubblewrap (user namespaces) nor Landlock works on this \
             machine, so code in a box can read and write everything this user can. Install bubblewrap, or set \
             require_isolation to refuse to run like this."
        );
    });
}

impl SandboxPolicy {
    /// Which isolation kernels run under (default [`Isolation::Auto`]: bubblewrap where it
    /// works, else Landlock, else none with a loud warning).
    pub fn with_isolation(mut self, isolation: Isolation) -> Self {
        self.isolation = isolation;
        self
    }

    /// Refuse to run kernels without isolation: a level that is not available here is an
    /// error instead of a step down the ladder (default off).
    pub fn with_require_isolation(mut self, require: bool) -> Self {
        self.require = require;
        self
    }

    /// Give kernels the host network (default off: a private network namespace with only
    /// loopback under bubblewrap; TCP denied under Landlock).
    pub fn with_network(mut self, network: bool) -> Self {
        self.network = network;
        self
    }

    /// Let the box reach only these hosts, over HTTP and HTTPS through codebox's proxy
    /// (`HTTP_PROXY` and `HTTPS_PROXY` are set in the kernel, so pip, requests and urllib
    /// use it; anything else finds no network). Needs the bubblewrap level and excludes
    /// [`with_network`](Self::with_network).
    pub fn with_network_allowlist(mut self, allowlist: Allowlist) -> Self {
        self.network_allowlist = allowlist;
        self
    }

    /// Resource limits of the box's kernels and commands (default [`Limits::default`]).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Run each box under its own unprivileged uid from `uids` (the process must be root;
    /// `None`: the process's own uid). The Python environment must be readable by those uids.
    pub fn with_session_uids(mut self, uids: Option<UidAllocator>) -> Self {
        self.uids = uids;
        self
    }

    /// Put each box in a cgroup of its own that applies the memory, process and CPU limits
    /// and tells an OOM kill apart (needs root or a delegated cgroup subtree).
    pub fn with_cgroups(mut self, cgroups: bool) -> Self {
        self.cgroups = cgroups;
        self
    }

    /// The level kernels will run under here; an error when a required level is missing.
    pub fn level(&self) -> Result<IsolationLevel> {
        self.limits.validate()?;
        if self.network && !self.network_allowlist.is_empty() {
            return Err(CodeBoxError::invalid("a box gets either the host network or a network allowlist, not both"));
        }
        let level = choose(self.isolation, self.require, probe())?;
        if !self.network_allowlist.is_empty() && level != IsolationLevel::Bubblewrap {
            return Err(CodeBoxError::invalid(format!(
                "a network allowlist needs the bubblewrap isolation level (a private network namespace); \
                 this box would run under {level:?}"
            )));
        }
        if level == IsolationLevel::None {
            warn_unisolated();
        }
        Ok(level)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_differing_in_any_one_field_are_different_keys() {
        use std::hash::BuildHasher;
        let hasher = std::collections::hash_map::RandomState::new();
        let uids = UidAllocator::new(300_400..300_410).unwrap();
        let base = SandboxPolicy::default().with_session_uids(Some(uids.clone()));
        let variants = [
            base.clone().with_isolation(Isolation::None),
            base.clone().with_require_isolation(true),
            base.clone().with_network(true),
            base.clone().with_network_allowlist(Allowlist::parse(&["pypi.org"]).unwrap()),
            base.clone().with_limits(Limits::default().with_cpu(Some(0.5))),
            base.clone().with_limits(Limits::default().with_tmpfs_sizes(128 << 20, 64 << 20, 16 << 20)),
            base.clone().with_session_uids(None),
            base.clone().with_session_uids(Some(UidAllocator::new(300_400..300_411).unwrap())),
            base.clone().with_cgroups(true),
        ];
        for (i, v) in variants.iter().enumerate() {
            assert_ne!(v, &base, "variant {i} equals the base policy");
            for (j, w) in variants.iter().enumerate().filter(|(j, _)| *j != i) {
                assert_ne!(v, w, "variants {i} and {j} are equal");
            }
        }
        // The same range, but a second allocator: it would hand out the same uids.
        let twin = base.clone().with_session_uids(Some(UidAllocator::new(300_400..300_410).unwrap()));
        assert_ne!(twin, base);
        // A clone (sharing the allocator) and an equal policy built again are the same key,
        // with the same hash.
        let again = SandboxPolicy::default().with_session_uids(Some(uids));
        assert_eq!(again, base);
        assert_eq!(hasher.hash_one(&again), hasher.hash_one(&base));
        let (a, b) = (
            SandboxPolicy::default().with_limits(Limits::default().with_cpu(Some(1.0))),
            SandboxPolicy::default().with_limits(Limits::default().with_cpu_millis(Some(1000))),
        );
        assert_eq!(a, b);
        assert_eq!(hasher.hash_one(&a), hasher.hash_one(&b));
    }
}

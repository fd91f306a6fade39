//! `LocalFactory`: the host of confined local boxes for a server, one box per session.
//!
//! Running local boxes for many tenants is more than building a box: the host claims a
//! session root (one host per root) and sweeps what an earlier host left in it, gives every
//! session a uid of its own and a cgroup where it runs as root, keeps a pool of warm
//! kernels, and caps the sessions at what its uids allow. This module owns those choices so
//! that `codebox serve`, the examples, the tests and the benchmarks make them alike.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use codebox_core::{BoxFactory, BoxRequest, CodeBox, Result};
use codebox_sandbox::{SessionRoot, Swept, UidAllocator};

use crate::{KernelPool, LocalBoxBuilder};

/// A [`BoxFactory`] that makes a confined [`LocalBox`](crate::LocalBox) per session.
///
/// Every box is built from one template [`LocalBoxBuilder`] (Python, kernel,
/// [`SandboxPolicy`](crate::SandboxPolicy) and the rest); the factory adds what only a host decides: the session root its boxes live
/// in, session uids, cgroups and a kernel pool. The root stays claimed while the factory
/// lives.
///
/// ```no_run
/// # fn demo() -> codebox_core::Result<()> {
/// use codebox_local::{DEFAULT_UID_RANGE, LocalBox, LocalFactory};
///
/// let factory = LocalFactory::builder(LocalBox::builder())
///     .with_session_root("/var/lib/codebox/sessions")
///     .with_session_uids(Some(DEFAULT_UID_RANGE))
///     .with_cgroups(true)
///     .with_pool_size(2)
///     .build()?;
/// // Inside a tokio runtime: start the pool's kernels, then hand `factory` to a server.
/// factory.prewarm_in_background();
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct LocalFactory {
    boxes: LocalBoxBuilder,
    pool: Option<KernelPool>,
    uids: Option<Range<u32>>,
    // Declared last: the claim is released only once the rest is gone.
    root: Option<SessionRoot>,
}

/// Builds a [`LocalFactory`]. Get one from [`LocalFactory::builder`].
#[derive(Debug, Clone)]
pub struct LocalFactoryBuilder {
    boxes: LocalBoxBuilder,
    session_root: Option<PathBuf>,
    session_uids: Option<Range<u32>>,
    cgroups: bool,
    pool_size: usize,
}

impl LocalFactory {
    /// A factory of boxes like those `boxes` builds; by default with no session root, no
    /// session uids, no cgroups and no kernel pool. The factory's choice of session uids and
    /// cgroups replaces what the template's [`SandboxPolicy`](crate::SandboxPolicy) says of them.
    pub fn builder(boxes: LocalBoxBuilder) -> LocalFactoryBuilder {
        LocalFactoryBuilder { boxes, session_root: None, session_uids: None, cgroups: false, pool_size: 0 }
    }

    /// The claimed session root, if the factory has one.
    pub fn session_root(&self) -> Option<&Path> {
        self.root.as_ref().map(SessionRoot::path)
    }

    /// The uids sessions run under, if they get uids of their own.
    pub fn session_uids(&self) -> Option<Range<u32>> {
        self.uids.clone()
    }

    /// The kernel pool, if the factory keeps one.
    pub fn pool(&self) -> Option<&KernelPool> {
        self.pool.as_ref()
    }

    /// The most sessions at once that the session uids allow, if sessions get uids: each
    /// session holds one uid and so does each kernel the pool keeps ready, so the uids less
    /// the pool size (at least one). A server should serve no more sessions than this.
    pub fn session_cap(&self) -> Option<usize> {
        let pool = self.pool.as_ref().map_or(0, KernelPool::size);
        self.uids.as_ref().map(|uids| session_cap(uids.len(), pool))
    }

    /// Fill the kernel pool in the background, logging how that went (nothing without a
    /// pool). Call it inside a tokio runtime; outside one it only warns.
    pub fn prewarm_in_background(&self) {
        let Some(pool) = self.pool.clone() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("the kernel pool is not warmed: no async runtime to warm it in");
            return;
        };
        let boxes = self.boxes.clone();
        runtime.spawn(async move {
            match pool.prewarm(&boxes).await {
                Ok(()) => tracing::info!(ready = pool.ready(), "kernel pool warm"),
                Err(e) => tracing::warn!("warming the kernel pool failed: {e}"),
            }
        });
    }
}

/// Sessions that `uids` uids allow next to a pool of `pool` kernels.
fn session_cap(uids: usize, pool: usize) -> usize {
    uids.saturating_sub(pool).max(1)
}

#[async_trait]
impl BoxFactory for LocalFactory {
    async fn create(&self, request: &BoxRequest) -> Result<Arc<dyn CodeBox>> {
        let builder = match request.kernel.as_deref() {
            Some(kernel) => self.boxes.clone().with_kernel(kernel),
            None => self.boxes.clone(),
        };
        Ok(Arc::new(builder.build()?))
    }
}

impl LocalFactoryBuilder {
    /// Keep the sessions' working directories and kernel runtime directories in this
    /// absolute directory, claimed for this factory alone (a second factory on it, in this
    /// process or another, is refused while this one lives). Claiming sweeps what an earlier
    /// host left there: processes under the session uids, session cgroups of hosts that are
    /// gone, mounted images and directories.
    pub fn with_session_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.session_root = Some(root.into());
        self
    }

    /// Run each session under its own uid from `uids` (`None`: all under this process's
    /// uid). Needs root: otherwise the factory warns and sessions share this process's uid.
    /// The Python environment must be readable by those uids.
    pub fn with_session_uids(mut self, uids: Option<Range<u32>>) -> Self {
        self.session_uids = uids;
        self
    }

    /// Put each session in a cgroup of its own, which applies the memory, process and CPU
    /// limits. Needs root and a usable cgroup hierarchy: otherwise the factory warns and the
    /// limits that need a cgroup do not apply.
    pub fn with_cgroups(mut self, cgroups: bool) -> Self {
        self.cgroups = cgroups;
        self
    }

    /// Keep this many kernels of the default kind started ahead (default 0: none).
    pub fn with_pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// Claim the session root (sweeping it), choose the session uids and cgroups, and make
    /// the factory. Blocking: the sweep may kill processes and unmount images.
    pub fn build(self) -> Result<LocalFactory> {
        let root_user = codebox_sandbox::running_as_root();
        let uids = match self.session_uids {
            Some(range) if root_user => Some(range),
            Some(_) => {
                tracing::warn!("not running as root: every session runs as this user (no session uids)");
                None
            }
            None => None,
        };
        let cgroups = match (self.cgroups, root_user) {
            (true, true) => match codebox_sandbox::cgroup_version() {
                Ok(version) => {
                    tracing::info!(version, "sessions get cgroups");
                    true
                }
                Err(e) => {
                    tracing::warn!("no cgroups for sessions (memory, process and CPU limits do not apply): {e}");
                    false
                }
            },
            (true, false) => {
                tracing::warn!("not running as root: no cgroups (memory, process and CPU limits do not apply)");
                false
            }
            (false, _) => false,
        };
        let mut boxes = self.boxes;
        let policy = boxes
            .config()
            .sandbox
            .clone()
            .with_session_uids(uids.clone().map(UidAllocator::new).transpose()?)
            .with_cgroups(cgroups);
        boxes = boxes.with_sandbox(policy);
        let root = match &self.session_root {
            Some(path) => {
                let (claim, swept) = SessionRoot::claim(path, uids.clone(), cgroups)?;
                report_sweep(&claim, &swept);
                boxes = boxes.with_scratch_dir(claim.scratch());
                Some(claim)
            }
            None => None,
        };
        let pool = (self.pool_size > 0).then(|| KernelPool::new(self.pool_size));
        if let Some(pool) = &pool {
            boxes = boxes.with_pool(pool.clone());
        }
        Ok(LocalFactory { boxes, pool, uids, root })
    }
}

fn report_sweep(claim: &SessionRoot, swept: &Swept) {
    // What was swept is logged by the claim itself; an empty sweep is worth a line too.
    if swept.is_empty() {
        tracing::info!(root = %claim.path().display(), "session root claimed; nothing left from an earlier server");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cap_leaves_a_uid_for_every_session_and_pooled_kernel() {
        assert_eq!(session_cap(4, 2), 2);
        assert_eq!(session_cap(4, 0), 4);
        assert_eq!(session_cap(2, 2), 1, "never below one session");
        assert_eq!(session_cap(65_536, 2), 65_534);
    }
}

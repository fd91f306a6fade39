//! `LocalFactory`: the host of confined local boxes for a server, one box per session.
//!
//! Running local boxes for many tenants is more than building a box: the host claims a
//! session root (one host per root) and sweeps what an earlier host left in it, gives every
//! session a uid of its own and a cgroup where it runs as root, keeps a pool of warm
//! kernels, and caps the sessions at what its uids allow. This module owns those choices so
//! that `codebox serve`, the examples, the tests and the benchmarks make them alike.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use codebox_core::{
    BoxFactory, BoxRequest, CodeBox, CodeBoxError, PoolStats, ResourceLimits, Result, ResumeReport, TemplateInfo,
};
use codebox_sandbox::{Limits, SessionRoot, Swept, UidAllocator};

use crate::template::{DEFAULT_TEMPLATE, Template, TemplateCatalogue};
use crate::{KernelPool, LocalBoxBuilder};

/// A [`BoxFactory`] that makes a confined [`LocalBox`](crate::LocalBox) per session, from a
/// catalogue of [`Template`]s.
///
/// Every box is built from one base [`LocalBoxBuilder`] (Python, kernel,
/// [`SandboxPolicy`](crate::SandboxPolicy) and the rest); the factory adds what only a host
/// decides: the session root its boxes live in, session uids, cgroups and kernel pools. The
/// root stays claimed while the factory lives.
///
/// A request names a template (else a language, whose first template is taken; else the
/// default template, `python`, which is the base builder as it is). The template sets the
/// kernel, default language, Python environment, variables and limits; the request's kernel,
/// variables and limits go over the template's, and the template's limits over the base
/// builder's. A template may have a pool of kernels kept ready
/// ([`with_pool`](LocalFactoryBuilder::with_pool)); a request that changes the template's
/// kernel, variables or limits never takes from it.
///
/// ```no_run
/// # fn demo() -> codebox_core::Result<()> {
/// use codebox_local::{DEFAULT_UID_RANGE, LocalBox, LocalFactory, Template};
///
/// let factory = LocalFactory::builder(LocalBox::builder())
///     .with_session_root("/var/lib/codebox/sessions")
///     .with_session_uids(Some(DEFAULT_UID_RANGE))
///     .with_cgroups(true)
///     .with_pool_size(2)
///     .with_templates([Template::new("web", "python3", "python").with_packages(["requests"])])
///     .with_pool("web", 1)
///     .build()?;
/// // Inside a tokio runtime: start the pools' kernels, then hand `factory` to a server.
/// factory.prewarm_in_background();
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct LocalFactory {
    boxes: LocalBoxBuilder,
    catalogue: TemplateCatalogue,
    /// A pool per template kept warm, by template name.
    pools: BTreeMap<String, KernelPool>,
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
    templates: Vec<Template>,
    /// Pool sizes by template name; the default template's is `with_pool_size`'s.
    pools: BTreeMap<String, usize>,
}

impl LocalFactory {
    /// A factory of boxes like those `boxes` builds; by default with no session root, no
    /// session uids, no cgroups, no kernel pool and the built-in templates. The factory's
    /// choice of session uids and cgroups replaces what the builder's
    /// [`SandboxPolicy`](crate::SandboxPolicy) says of them.
    pub fn builder(boxes: LocalBoxBuilder) -> LocalFactoryBuilder {
        LocalFactoryBuilder {
            boxes,
            session_root: None,
            session_uids: None,
            cgroups: false,
            templates: Vec::new(),
            pools: BTreeMap::new(),
        }
    }

    /// The claimed session root, if the factory has one.
    pub fn session_root(&self) -> Option<&Path> {
        self.root.as_ref().map(SessionRoot::path)
    }

    /// The uids sessions run under, if they get uids of their own.
    pub fn session_uids(&self) -> Option<Range<u32>> {
        self.uids.clone()
    }

    /// The kernel pool of the default template, if the factory keeps one.
    pub fn pool(&self) -> Option<&KernelPool> {
        self.pools.get(self.catalogue.default_template().name())
    }

    /// The kernel pool of `template`, if the factory keeps one.
    pub fn pool_of(&self, template: &str) -> Option<&KernelPool> {
        self.pools.get(template)
    }

    /// The catalogue boxes are made from.
    pub fn catalogue(&self) -> &TemplateCatalogue {
        &self.catalogue
    }

    /// The most sessions at once that the session uids allow, if sessions get uids: each
    /// session holds one uid and so does each kernel the pools keep ready, so the uids less
    /// the pool sizes (at least one). A server should serve no more sessions than this.
    pub fn session_cap(&self) -> Option<usize> {
        let pooled = self.pools.values().map(KernelPool::size).sum();
        self.uids.as_ref().map(|uids| session_cap(uids.len(), pooled))
    }

    /// The builder of boxes of `template`, with no pool.
    fn template_builder(&self, template: &Template) -> LocalBoxBuilder {
        // The built-in default is the base builder as the host set it up (its kernel and
        // Python may be the operator's choice); any other template goes over it.
        let builder = if template.is_builtin() && template.name() == DEFAULT_TEMPLATE {
            self.boxes.clone()
        } else {
            self.boxes.clone().with_template_def(template.clone())
        };
        builder.set_pool(None)
    }

    /// The template a request is for: the one it names, else the first of its language,
    /// else the default.
    fn template_for(&self, request: &BoxRequest) -> Result<&Template> {
        match (request.template.as_deref(), request.language.as_deref()) {
            (Some(name), language) => {
                let template = self.catalogue.get(name)?;
                match language {
                    Some(language) if language != template.language() => Err(CodeBoxError::invalid(format!(
                        "template {name:?} runs {:?}, not {language:?}",
                        template.language()
                    ))),
                    _ => Ok(template),
                }
            }
            (None, Some(language)) if language == self.catalogue.default_template().language() => {
                Ok(self.catalogue.default_template())
            }
            (None, Some(language)) => self.catalogue.for_language(language),
            (None, None) => Ok(self.catalogue.default_template()),
        }
    }

    /// The builder of the box `request` asks for: its template, with the request's kernel,
    /// environment, limits and state directory over it.
    fn builder_for(&self, request: &BoxRequest) -> Result<LocalBoxBuilder> {
        let template = self.template_for(request)?;
        let mut builder = self.template_builder(template);
        let changed = request.kernel.as_deref().is_some_and(|k| k != template.kernel())
            || !request.env.is_empty()
            || !request.limits.is_empty();
        if let Some(kernel) = &request.kernel {
            builder = builder.with_kernel(kernel);
        }
        for (key, value) in &request.env {
            // `PIP_*` in a box's own environment are its owner's installer settings: the paths
            // they name are opened to the sandboxed pip. A session's request is not the owner.
            if key.starts_with("PIP_") {
                return Err(CodeBoxError::invalid(format!(
                    "environment variable {key}: `PIP_*` settings are the server's, not a session's"
                )));
            }
            builder = builder.with_env(key, value);
        }
        if !request.limits.is_empty() {
            let mut policy = builder.config().sandbox.clone();
            policy.limits = sandbox_limits(&policy.limits, &request.limits);
            builder = builder.with_sandbox(policy);
        }
        // A box unlike the template's would only set the pool warming kernels of its kind.
        if !changed && let Some(pool) = self.pools.get(template.name()) {
            builder = builder.with_pool(pool.clone());
        }
        if let Some(dir) = &request.state_dir {
            builder = builder.with_state_dir(dir);
        }
        Ok(builder)
    }

    /// Fill the kernel pools in the background, logging how that went (nothing without a
    /// pool). Call it inside a tokio runtime; outside one it only warns.
    pub fn prewarm_in_background(&self) {
        if self.pools.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("the kernel pools are not warmed: no async runtime to warm them in");
            return;
        };
        for (name, pool) in &self.pools {
            let Ok(template) = self.catalogue.get(name) else { continue };
            let boxes = self.template_builder(template).with_pool(pool.clone());
            let (name, pool) = (name.clone(), pool.clone());
            runtime.spawn(async move {
                match pool.prewarm(&boxes).await {
                    Ok(()) => tracing::info!(template = %name, ready = pool.ready(), "kernel pool warm"),
                    Err(e) => tracing::warn!(template = %name, "warming the kernel pool failed: {e}"),
                }
            });
        }
    }
}

/// Sessions that `uids` uids allow next to pools of `pooled` kernels.
fn session_cap(uids: usize, pooled: usize) -> usize {
    uids.saturating_sub(pooled).max(1)
}

/// Bytes of working directory per file it may hold, when a request sizes it: ext4's inodes
/// are 256 bytes, so the inode table takes at most half the image. (A ratio like ext4's own
/// 16 KiB would leave a server's 64 MiB default a few thousand files: too few for a tree.)
const BYTES_PER_INODE: u64 = 512;

/// `base` with what `limits` asks for: memory (with `RLIMIT_DATA` at 90 % of it), CPUs as
/// thousandths of a CPU, processes as the pid limit, disk as the working directory's size.
pub(crate) fn sandbox_limits(base: &Limits, limits: &ResourceLimits) -> Limits {
    let mut out = base.clone();
    if let Some(bytes) = limits.memory_bytes {
        out = out.with_memory(bytes);
    }
    if let Some(cpus) = limits.cpus {
        out = out.with_cpu(Some(cpus));
    }
    if let Some(processes) = limits.processes {
        out = out.with_pids(Some(processes));
    }
    if let Some(bytes) = limits.disk_bytes {
        // The image's inode table must fit in it (see `BYTES_PER_INODE`), and never more
        // files than the base allows.
        let inodes = out.workdir_inodes.min(bytes / BYTES_PER_INODE);
        out = out.with_workdir_size(Some(bytes), inodes);
    }
    out
}

#[async_trait]
impl BoxFactory for LocalFactory {
    async fn create(&self, request: &BoxRequest) -> Result<Arc<dyn CodeBox>> {
        Ok(Arc::new(self.builder_for(request)?.build()?))
    }

    async fn resume(&self, request: &BoxRequest) -> Result<(Arc<dyn CodeBox>, ResumeReport)> {
        if request.state_dir.is_none() {
            return Err(CodeBoxError::invalid("resuming a box needs the directory of its snapshot"));
        }
        let (resumed, report) = self.builder_for(request)?.resume().await?;
        Ok((Arc::new(resumed), report))
    }

    fn snapshot_files(&self, state_dir: &std::path::Path) -> Option<std::path::PathBuf> {
        crate::snapshot::store::current_files(state_dir)
    }

    fn templates(&self) -> Vec<TemplateInfo> {
        self.catalogue.templates().iter().map(|t| t.info(crate::python::template_ready(t))).collect()
    }

    fn pool_stats(&self) -> Vec<PoolStats> {
        self.pools
            .iter()
            .map(|(name, pool)| {
                let counts = pool.stats();
                let mut stats = PoolStats::new(name);
                stats.target = counts.size;
                stats.ready = counts.ready;
                stats.starting = counts.starting;
                stats.hits = counts.hits;
                stats.misses = counts.misses;
                stats
            })
            .collect()
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

    /// Keep this many kernels of the default template started ahead (default 0: none).
    pub fn with_pool_size(mut self, size: usize) -> Self {
        self.pools.insert(DEFAULT_TEMPLATE.to_owned(), size);
        self
    }

    /// Keep this many kernels of `template` started ahead (0: none). A template the
    /// catalogue does not have is refused by [`build`](Self::build).
    pub fn with_pool(mut self, template: impl Into<String>, size: usize) -> Self {
        self.pools.insert(template.into(), size);
        self
    }

    /// Add these templates (a server's configuration) to the built-in ones; one named like a
    /// built-in replaces it. Each is checked by [`build`](Self::build).
    pub fn with_templates(mut self, templates: impl IntoIterator<Item = Template>) -> Self {
        self.templates.extend(templates);
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
        let mut catalogue = TemplateCatalogue::new();
        for template in self.templates {
            catalogue.add(template)?;
        }
        let mut pools = BTreeMap::new();
        for (name, size) in self.pools {
            catalogue.get(&name)?;
            if size > 0 {
                pools.insert(name, KernelPool::new(size));
            }
        }
        Ok(LocalFactory { boxes, catalogue, pools, uids, root })
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

    #[test]
    fn resource_limits_map_onto_the_sandbox_limits() {
        let base = Limits::server();
        let asked = ResourceLimits::new()
            .with_memory_bytes(512 << 20)
            .with_cpus(0.5)
            .with_processes(32)
            .with_disk_bytes(64 << 20);
        let l = sandbox_limits(&base, &asked);
        assert_eq!(l.memory, Some(512 << 20));
        assert_eq!(l.data, Some((512 << 20) / 10 * 9), "RLIMIT_DATA follows the memory");
        assert_eq!(l.cpu_millis, Some(500));
        assert_eq!(l.pids, Some(32));
        assert_eq!(l.workdir_size, Some(64 << 20));
        assert_eq!(l.workdir_inodes, base.workdir_inodes.min((64 << 20) / 512), "an inode table that fits the image");
        assert_eq!(sandbox_limits(&base, &ResourceLimits::new()), base, "nothing asked, nothing changed");
    }
}

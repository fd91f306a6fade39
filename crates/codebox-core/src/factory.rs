//! Where a server gets its boxes: a factory that makes one per session, from a request that
//! says which template, kernel, environment and limits the session asked for.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{CodeBox, Result};

/// Resource limits a session asks for (each `None`: the factory's default). A server checks
/// them against its own maximums before a factory sees them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ResourceLimits {
    /// Memory of the box's processes together, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// CPU time as a number of CPUs (`0.5`: half of one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Processes and threads the box may have at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<u64>,
    /// Size of the box's working directory, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
}

impl ResourceLimits {
    /// No limit asked for.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask for this much memory.
    pub fn with_memory_bytes(mut self, bytes: u64) -> Self {
        self.memory_bytes = Some(bytes);
        self
    }

    /// Ask for this many CPUs.
    pub fn with_cpus(mut self, cpus: f64) -> Self {
        self.cpus = Some(cpus);
        self
    }

    /// Ask for at most this many processes.
    pub fn with_processes(mut self, processes: u64) -> Self {
        self.processes = Some(processes);
        self
    }

    /// Ask for a working directory of this size.
    pub fn with_disk_bytes(mut self, bytes: u64) -> Self {
        self.disk_bytes = Some(bytes);
        self
    }

    /// Whether nothing is asked for.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// These limits, each unset one taken from `defaults`.
    pub fn or(&self, defaults: &Self) -> Self {
        Self {
            memory_bytes: self.memory_bytes.or(defaults.memory_bytes),
            cpus: self.cpus.or(defaults.cpus),
            processes: self.processes.or(defaults.processes),
            disk_bytes: self.disk_bytes.or(defaults.disk_bytes),
        }
    }
}

/// What a session asks its box to be: everything given at creation that the box itself needs
/// (metadata and lifetimes are the server's business and are not here).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BoxRequest {
    /// A template of the factory's catalogue (`None`: the factory's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// A kernel by name, within the template (`None`: the template's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// A language (`python`, `javascript`, ...), for a factory to pick a template or kernel by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// Environment variables of every execution and command in the box, over the template's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Resource limits, over the template's and the factory's defaults.
    #[serde(default, skip_serializing_if = "ResourceLimits::is_empty")]
    pub limits: ResourceLimits,
    /// Where the box keeps its snapshots, so that it can be paused and resumed
    /// ([`CodeBox::pause`], [`BoxFactory::resume`]); `None`: it cannot be. Chosen by the host
    /// of the box (a server: under its state directory), never read from the wire.
    #[serde(skip)]
    pub state_dir: Option<std::path::PathBuf>,
}

impl BoxRequest {
    /// The factory's default box.
    pub fn new() -> Self {
        Self::default()
    }

    /// From this template.
    pub fn with_template(mut self, template: impl Into<String>) -> Self {
        self.template = Some(template.into());
        self
    }

    /// Running this kernel.
    pub fn with_kernel(mut self, kernel: impl Into<String>) -> Self {
        self.kernel = Some(kernel.into());
        self
    }

    /// For this language.
    pub fn with_language(mut self, language: impl Into<String>) -> Self {
        self.language = Some(language.into());
        self
    }

    /// With this environment variable.
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// With these limits.
    pub fn with_limits(mut self, limits: ResourceLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Keeping its snapshots in `dir`.
    pub fn with_state_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }
}

/// A template as a catalogue describes it (`GET /v1/templates`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TemplateInfo {
    /// The name sessions ask for (`python`, `javascript`, ...).
    pub name: String,
    /// What it is for, in a sentence.
    #[serde(default)]
    pub description: String,
    /// The kernel its boxes run.
    pub kernel: String,
    /// The language its boxes run (`python`, `javascript`, `typescript`, `bash`).
    pub language: String,
    /// Packages installed in its environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
    /// The names of the environment variables it sets (values are not listed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_keys: Vec<String>,
    /// Its default limits.
    #[serde(default, skip_serializing_if = "ResourceLimits::is_empty")]
    pub limits: ResourceLimits,
    /// Whether it ships with codebox (else it comes from the server's configuration).
    #[serde(default)]
    pub builtin: bool,
    /// Whether its environment is built (the first session of an unbuilt one waits for it).
    #[serde(default)]
    pub ready: bool,
}

impl TemplateInfo {
    /// A template named `name` running `kernel` in `language`.
    pub fn new(name: impl Into<String>, kernel: impl Into<String>, language: impl Into<String>) -> Self {
        Self { name: name.into(), kernel: kernel.into(), language: language.into(), ..Self::default() }
    }
}

/// How a factory's pool of ready boxes for one template is doing (`GET /v1/pool`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PoolStats {
    /// The template the pool keeps boxes of.
    pub template: String,
    /// How many ready boxes it tries to keep.
    pub target: usize,
    /// Ready now.
    pub ready: usize,
    /// Being started.
    pub starting: usize,
    /// Sessions that got a ready box.
    pub hits: u64,
    /// Sessions that had to start one.
    pub misses: u64,
}

impl PoolStats {
    /// The pool of `template`, empty.
    pub fn new(template: impl Into<String>) -> Self {
        Self { template: template.into(), ..Self::default() }
    }
}

/// Makes a box for each new session. A server (codebox-server) knows boxes only through the
/// [`CodeBox`] trait and this factory; codebox-local's `LocalFactory` makes confined local
/// Jupyter kernels, and [`factory_fn`] turns a closure into a factory.
///
/// The server calls [`CodeBox::start`] on the box it gets and [`CodeBox::stop`] when the
/// session ends (deleted, idle, expired, or server shutdown).
#[async_trait]
pub trait BoxFactory: Send + Sync + std::fmt::Debug {
    /// A new box as `request` asks. An unknown template or kernel is an `InvalidInput` error
    /// that names the ones that exist.
    async fn create(&self, request: &BoxRequest) -> Result<Arc<dyn CodeBox>>;

    /// The templates this factory can make boxes from (empty: it has no catalogue, and
    /// makes every box from its defaults).
    fn templates(&self) -> Vec<TemplateInfo> {
        Vec::new()
    }

    /// Its pools of ready boxes, one per template it keeps warm (empty: no pool).
    fn pool_stats(&self) -> Vec<PoolStats> {
        Vec::new()
    }

    /// The box `request` describes, brought back (started) from the snapshot in its
    /// [`state_dir`](BoxRequest::state_dir), with what came back and what did not.
    async fn resume(&self, request: &BoxRequest) -> Result<(Arc<dyn CodeBox>, crate::ResumeReport)> {
        let _ = request;
        Err(crate::CodeBoxError::unsupported("resume"))
    }

    /// Where the copy of the working directory in the current snapshot in `state_dir` is,
    /// readable without resuming the box (a server lists and serves a paused session's files
    /// from there, and falls back to them when the snapshot cannot be resumed). `None`: there
    /// is none, or the factory does not say. The snapshot's layout is the factory's to know.
    fn snapshot_files(&self, state_dir: &std::path::Path) -> Option<std::path::PathBuf> {
        let _ = state_dir;
        None
    }
}

/// A factory from a closure that gets the request and returns a box, for embedding the server
/// (tests, benchmarks) without a factory type of one's own.
///
/// ```
/// # use std::sync::Arc;
/// # fn make_box(kernel: Option<String>) -> codebox_core::Result<Arc<dyn codebox_core::CodeBox>> { unimplemented!() }
/// let factory = codebox_core::factory_fn(|request| async move { make_box(request.kernel) });
/// ```
pub fn factory_fn<F, Fut>(f: F) -> Arc<dyn BoxFactory>
where
    F: Fn(BoxRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Arc<dyn CodeBox>>> + Send + 'static,
{
    Arc::new(FnFactory(f))
}

struct FnFactory<F>(F);

impl<F> fmt::Debug for FnFactory<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnFactory")
    }
}

#[async_trait]
impl<F, Fut> BoxFactory for FnFactory<F>
where
    F: Fn(BoxRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Arc<dyn CodeBox>>> + Send + 'static,
{
    async fn create(&self, request: &BoxRequest) -> Result<Arc<dyn CodeBox>> {
        (self.0)(request.clone()).await
    }
}

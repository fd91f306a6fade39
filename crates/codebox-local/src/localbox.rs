//! `LocalBox`: the `CodeBox` backed by a kernel on this machine. Its builder is here; the
//! lifecycle (start, restart, recovery) is in `supervisor`, `install` in its own module.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use codebox_core::{
    BoxState, BoxStatus, ByteStream, Capabilities, CodeBox, CodeBoxError, CodeBoxSettings, CommandOutput, CommandSpec,
    EventStream, FileInfo, Result, RunOptions,
};

use crate::exec::{around_code, check_env};
use crate::kernelspec::LaunchSpec;
use crate::kernelspec::is_python;
use crate::pool::KernelPool;
use crate::progress::{ProgressFn, ProvisionEvent};
use crate::python::{Provision, PythonProfile};
use crate::sandbox::netproxy::Allowlist;
use crate::sandbox::uid::UidAllocator;
use crate::sandbox::{Isolation, IsolationLevel, Limits, PolicyRef, SandboxPolicy};

mod install;
mod supervisor;

use supervisor::Inner;

/// Output kept per execution unless configured otherwise: 10 MiB.
pub const DEFAULT_OUTPUT_LIMIT: usize = 10 * 1024 * 1024;

/// A box that runs code in a Jupyter kernel started and supervised on this machine.
///
/// Each `LocalBox` has its own kernel process and its own working directory (the kernel's
/// current directory; a fresh temporary directory unless the builder names one). Many boxes
/// run side by side in one process. Dropping a box kills its kernel; `stop()` shuts it down
/// gracefully and removes the working directory unless asked to keep it.
///
/// See the [crate docs](crate) for an example.
#[derive(Clone)]
pub struct LocalBox {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LocalBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBox").field("id", &self.inner.id).field("kernel", &self.inner.config.kernel).finish()
    }
}

/// Builds a [`LocalBox`]. Get one from [`LocalBox::builder`].
#[derive(Clone)]
pub struct LocalBoxBuilder {
    config: Config,
}

impl std::fmt::Debug for LocalBoxBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBoxBuilder")
            .field("python", &self.config.python)
            .field("kernel", &self.config.kernel)
            .field("working_dir", &self.config.working_dir)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
pub(crate) struct Config {
    python: Option<PathBuf>,
    provision: Provision,
    profile: PythonProfile,
    progress: Option<ProgressFn>,
    kernel: String,
    timeout: Option<Duration>,
    output_limit: usize,
    interrupt_grace: Duration,
    start_timeout: Duration,
    working_dir: Option<PathBuf>,
    keep_working_dir: bool,
    pool: Option<KernelPool>,
    env: BTreeMap<String, String>,
    max_restarts: usize,
    restart_window: Duration,
    sandbox: SandboxPolicy,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            python: None,
            provision: Provision::Auto,
            profile: PythonProfile::Data,
            progress: None,
            kernel: "python3".into(),
            timeout: None,
            output_limit: DEFAULT_OUTPUT_LIMIT,
            interrupt_grace: Duration::from_secs(5),
            start_timeout: Duration::from_secs(30),
            working_dir: None,
            keep_working_dir: false,
            pool: None,
            env: BTreeMap::new(),
            max_restarts: 3,
            restart_window: Duration::from_secs(60),
            sandbox: SandboxPolicy::default(),
        }
    }
}

impl Config {
    async fn python(&self) -> Result<PathBuf> {
        let (python, provision, profile, progress) =
            (self.python.clone(), self.provision, self.profile, self.progress.clone());
        tokio::task::spawn_blocking(move || {
            crate::python::resolve(python.as_deref(), provision, profile, progress.as_ref())
        })
        .await
        .map_err(|e| CodeBoxError::kernel_start(format!("provisioning task failed: {e}")))?
    }

    /// The environment of the kernel and of commands: ours, the environment's `bin` first on
    /// `PATH`, and the builder's variables.
    fn child_env(&self, python: &Path) -> Vec<(String, String)> {
        let mut env = Vec::new();
        if let Some(bin) = python.parent() {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let joined = std::env::join_paths(std::iter::once(bin.to_path_buf()).chain(std::env::split_paths(&path)))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|_| path.to_string_lossy().into_owned());
            env.push(("PATH".to_owned(), joined));
        }
        env.extend(self.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }

    pub(crate) async fn launch_spec(&self) -> Result<LaunchSpec> {
        let python = self.python().await?;
        self.spec_for(&python)
    }

    fn spec_for(&self, python: &Path) -> Result<LaunchSpec> {
        let mut spec =
            crate::kernelspec::launch_spec(&self.kernel, python, self.child_env(python), self.start_timeout)?;
        spec.sandbox = PolicyRef::new(self.sandbox.clone());
        Ok(spec)
    }
}

impl LocalBoxBuilder {
    /// Use this Python (it must have ipykernel) instead of `CODEBOX_PYTHON` or the managed
    /// environment.
    pub fn with_python(mut self, python: impl Into<PathBuf>) -> Self {
        self.config.python = Some(python.into());
        self
    }

    /// Apply what settings say about a local box: `python`, `kernel` and `timeout`, where
    /// set. [`LocalBox::from_settings`] is this and `build`; the builder leaves room for
    /// more, such as [`with_progress`](Self::with_progress).
    pub fn with_settings(mut self, settings: &CodeBoxSettings) -> Self {
        if let Some(p) = &settings.python {
            self = self.with_python(p.clone());
        }
        if let Some(k) = &settings.kernel {
            self = self.with_kernel(k.clone());
        }
        if let Some(t) = settings.timeout {
            self = self.with_timeout(t);
        }
        self
    }

    /// Allow or forbid creating the managed Python environment.
    pub fn with_provision(mut self, provision: Provision) -> Self {
        self.config.provision = provision;
        self
    }

    /// What the managed environment contains (default: [`PythonProfile::Data`]).
    pub fn with_profile(mut self, profile: PythonProfile) -> Self {
        self.config.profile = profile;
        self
    }

    /// Hear how building the managed Python environment goes: each step (the venv, then each
    /// group of packages) with its place and timings, and the lines the tools print. Called
    /// on the thread doing the build; nothing is reported when the environment is ready.
    /// Each event displays as one line, so `|event| eprintln!("{event}")` is a complete hook.
    pub fn with_progress(mut self, progress: impl Fn(&ProvisionEvent) + Send + Sync + 'static) -> Self {
        self.config.progress = Some(Arc::new(progress));
        self
    }

    /// The kernel to run: `python3` (the default, ipykernel over the box's Python),
    /// [`LEAN_KERNEL`](crate::LEAN_KERNEL) (IPython over the box's Python without ipykernel:
    /// shorter round trips and starts, no widgets or debugger), or the name of an installed
    /// kernelspec.
    pub fn with_kernel(mut self, kernel: impl Into<String>) -> Self {
        self.config.kernel = kernel.into();
        self
    }

    /// The default timeout of one execution (none unless set).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = Some(timeout);
        self
    }

    /// How many bytes of output one execution keeps (default 10 MiB): the first and last
    /// halves, with an [`ExecEvent::Truncated`](codebox_core::ExecEvent::Truncated) marker
    /// for the rest.
    pub fn with_output_limit(mut self, bytes: usize) -> Self {
        self.config.output_limit = bytes;
        self
    }

    /// How long a timed-out execution may take to honour its interrupt before the kernel is
    /// killed and restarted (default 5 s).
    pub fn with_interrupt_grace(mut self, grace: Duration) -> Self {
        self.config.interrupt_grace = grace;
        self
    }

    /// How long a kernel may take to start (default 30 s).
    pub fn with_start_timeout(mut self, timeout: Duration) -> Self {
        self.config.start_timeout = timeout;
        self
    }

    /// Use this existing directory as the working directory instead of a temporary one.
    /// It is never removed.
    pub fn with_working_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.working_dir = Some(dir.into());
        self
    }

    /// Keep the temporary working directory when the box stops.
    pub fn with_keep_working_dir(mut self, keep: bool) -> Self {
        self.config.keep_working_dir = keep;
        self
    }

    /// Take kernels from this pool when starting.
    pub fn with_pool(mut self, pool: KernelPool) -> Self {
        self.config.pool = Some(pool);
        self
    }

    /// Set an environment variable for the kernel and for commands.
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.env.insert(key.into(), value.into());
        self
    }

    /// How many crash restarts are allowed within `window` before the box is declared dead
    /// (default 3 within 60 s).
    pub fn with_restart_limit(mut self, restarts: usize, window: Duration) -> Self {
        self.config.max_restarts = restarts;
        self.config.restart_window = window;
        self
    }

    /// Which isolation kernels run under (default [`Isolation::Auto`]: bubblewrap where it
    /// works, else Landlock, else none with a loud warning). See [`crate::sandbox`].
    pub fn with_isolation(mut self, isolation: Isolation) -> Self {
        self.config.sandbox.isolation = isolation;
        self
    }

    /// Refuse to run kernels without isolation: a level that is not available here is an
    /// error instead of a step down the ladder (default off).
    pub fn with_require_isolation(mut self, require: bool) -> Self {
        self.config.sandbox.require = require;
        self
    }

    /// Give kernels the host network (default off: a private network namespace with only
    /// loopback under bubblewrap; TCP denied under Landlock).
    pub fn with_network(mut self, network: bool) -> Self {
        self.config.sandbox.network = network;
        self
    }

    /// Let the box reach only these hosts, over HTTP and HTTPS through codebox's proxy
    /// (`HTTP_PROXY` and `HTTPS_PROXY` are set in the kernel, so pip, requests and urllib
    /// use it; anything else finds no network). Needs the bubblewrap level and a built-in
    /// kernel; commands run with `run_command` get no network.
    pub fn with_network_allowlist(mut self, allowlist: Allowlist) -> Self {
        self.config.sandbox.network_allowlist = allowlist;
        self
    }

    /// Resource limits of the box's kernels and commands (default [`Limits::default`]).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.config.sandbox.limits = limits;
        self
    }

    /// Run each box under its own unprivileged uid from `uids` (the process must be root).
    /// The Python environment must be readable by those uids (the managed environment of
    /// root, under `/var/lib/codebox`, is).
    pub fn with_session_uids(mut self, uids: UidAllocator) -> Self {
        self.config.sandbox.uids = Some(uids);
        self
    }

    /// Put each box in a cgroup of its own that applies the memory, process and CPU limits
    /// and tells an OOM kill apart (needs root or a delegated cgroup subtree).
    pub fn with_cgroups(mut self, cgroups: bool) -> Self {
        self.config.sandbox.cgroups = cgroups;
        self
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// Check the settings and make the box. Nothing starts until [`CodeBox::start`] (or the
    /// first call that needs the kernel).
    pub fn build(self) -> Result<LocalBox> {
        let c = &self.config;
        if c.kernel.trim().is_empty() {
            return Err(CodeBoxError::invalid("the kernel name is empty"));
        }
        if c.output_limit < 2 {
            return Err(CodeBoxError::invalid("the output limit must be at least 2 bytes"));
        }
        if let Some(dir) = &c.working_dir
            && !dir.is_dir()
        {
            return Err(CodeBoxError::invalid(format!("working directory {} does not exist", dir.display())));
        }
        if let Some(p) = &c.python
            && !p.exists()
        {
            return Err(CodeBoxError::invalid(format!("Python {} does not exist", p.display())));
        }
        c.sandbox.limits.validate()?;
        // An isolation that was asked for by name, or required (or an allowlist, which needs
        // bubblewrap), must exist: say so now.
        if c.sandbox.require || c.sandbox.isolation != Isolation::Auto || !c.sandbox.network_allowlist.is_empty() {
            c.sandbox.level()?;
        }
        Ok(LocalBox::from_config(self.config))
    }
}

impl LocalBox {
    /// A builder with the defaults: kernel `python3`, Python from `CODEBOX_PYTHON` or the
    /// managed environment, a temporary working directory, 10 MiB output per execution.
    pub fn builder() -> LocalBoxBuilder {
        LocalBoxBuilder { config: Config::default() }
    }

    /// A box with the defaults. It starts on [`CodeBox::start`] or on first use.
    pub fn new() -> Result<Self> {
        Self::builder().build()
    }

    /// A box configured from settings (`python`, `kernel`, `timeout`). Not started.
    pub fn from_settings(settings: &CodeBoxSettings) -> Result<Self> {
        Self::builder().with_settings(settings).build()
    }

    fn from_config(config: Config) -> Self {
        Self { inner: Arc::new(Inner::new(config)) }
    }

    /// Remove the working and kernel runtime directories of boxes whose owner process died
    /// without cleaning up (SIGKILL, a crash), and return how many. Every process does this
    /// once by itself before its first kernel starts; a long-lived process may call it again.
    /// Directories of live processes are never touched. Looks where boxes put them by
    /// default: the system's temporary directory (and `XDG_RUNTIME_DIR`).
    pub fn remove_stale_runtime_dirs() -> usize {
        crate::workdir::remove_stale_runtime_dirs(&std::env::temp_dir())
    }

    /// The former name of [`remove_stale_runtime_dirs`](Self::remove_stale_runtime_dirs).
    #[deprecated(note = "renamed to `remove_stale_runtime_dirs`: \"sweep\" names the session root's sweep")]
    pub fn sweep_stale_dirs() -> usize {
        Self::remove_stale_runtime_dirs()
    }

    /// The box's working directory on this machine, once started.
    pub async fn working_dir(&self) -> Option<PathBuf> {
        self.inner.state.lock().await.workdir.as_ref().map(|w| w.path().to_owned())
    }

    /// The process id of the running kernel, if any.
    pub async fn kernel_pid(&self) -> Option<i32> {
        self.inner.state.lock().await.run.as_ref().map(|r| r.kernel.pid())
    }

    /// The Python the box's kernels and `install` use, once started.
    pub async fn python(&self) -> Option<PathBuf> {
        self.inner.state.lock().await.run.as_ref().map(|r| r.python.clone())
    }

    /// The directory of the running kernel's sockets and connection file.
    pub async fn runtime_dir(&self) -> Option<PathBuf> {
        self.inner.state.lock().await.run.as_ref().map(|r| r.kernel.runtime_dir().to_owned())
    }

    /// The isolation the box's kernels run under, once started.
    pub async fn isolation(&self) -> Option<IsolationLevel> {
        self.inner.state.lock().await.run.as_ref().map(|r| r.confinement.level())
    }

    /// The unprivileged uid the box runs under, when it has one of its own.
    pub async fn session_uid(&self) -> Option<u32> {
        self.inner.state.lock().await.run.as_ref().and_then(|r| r.confinement.uid())
    }

    /// The box's cgroup directories, when it has a cgroup.
    pub async fn cgroup_paths(&self) -> Vec<PathBuf> {
        let st = self.inner.state.lock().await;
        st.run.as_ref().and_then(|r| r.confinement.cgroup().map(|c| c.paths())).unwrap_or_default()
    }
}

fn is_bash(language: &str) -> bool {
    matches!(language, "bash" | "sh" | "shell")
}

impl LocalBox {
    /// Refuse what only a Python kernel can do.
    fn require_python(&self, what: &str) -> Result<()> {
        if self.inner.runs_python() {
            return Ok(());
        }
        let language = self.inner.kernel_language().filter(|l| !l.is_empty());
        Err(CodeBoxError::invalid(format!(
            "{what} needs a Python kernel; this box's kernel {:?} runs {}",
            self.inner.config.kernel,
            language.map_or_else(|| "another language".to_owned(), |l| format!("{l:?}"))
        )))
    }
}

#[async_trait]
impl CodeBox for LocalBox {
    fn id(&self) -> &str {
        &self.inner.id
    }

    fn capabilities(&self) -> Capabilities {
        let python = self.inner.runs_python();
        let mut languages = Vec::new();
        if python {
            languages.push("python".to_owned());
        }
        languages.push("bash".to_owned());
        if !matches!(self.inner.config.kernel.as_str(), "python3" | "python") {
            languages.push(self.inner.config.kernel.clone());
        }
        let mut capabilities = Capabilities::full(languages);
        // pip installs for the box's Python, which only a Python kernel imports from.
        capabilities.install = python;
        capabilities
    }

    async fn start(&self) -> Result<()> {
        self.inner.start().await
    }

    async fn stop(&self) -> Result<()> {
        self.inner.stop().await;
        Ok(())
    }

    async fn status(&self) -> Result<BoxStatus> {
        let snap = self.inner.snapshot();
        let mut state = snap.state;
        if state == BoxState::Idle && self.inner.exec_lock.try_lock().is_err() {
            state = BoxState::Busy;
        }
        let level = snap.isolation.or_else(|| self.inner.config.sandbox.level().ok());
        let mut status = BoxStatus::new(state)
            .with_kernel(self.inner.config.kernel.clone())
            .with_isolation(level.map_or("unavailable", IsolationLevel::as_str))
            .with_isolation_gaps(level.map(IsolationLevel::gaps).unwrap_or_default().iter().copied())
            .with_restarts(snap.restarts);
        if let Some(d) = snap.detail {
            status = status.with_detail(d);
        }
        Ok(status)
    }

    async fn run_stream(&self, code: &str, options: RunOptions) -> Result<EventStream> {
        // Unnamed, the language is the kernel's own.
        let language = options.language.as_deref().unwrap_or(&self.inner.config.kernel);
        let bash = is_bash(language);
        if !bash && !is_python(language) && language != self.inner.config.kernel {
            return Err(CodeBoxError::invalid(format!(
                "language {language:?} is not available in this box; use one of: {}",
                self.capabilities().languages.join(", ")
            )));
        }
        check_env(&options.env)?;
        let guard = self.inner.exec_lock.clone().lock_owned().await;
        let h = self.inner.handle().await?;
        // Each death is judged by what happened since the kernel was last seen alive.
        let kernel = h.kernel.clone();
        h.confinement.note_kernel_alive(|| kernel.is_running());
        let cwd = match options.cwd.as_deref() {
            Some(c) => Some(h.root.path().join(h.root.check_dir(c)?)),
            None => None,
        };
        let limits = self.inner.limits(options.timeout);
        if bash {
            let dir = cwd.unwrap_or_else(|| h.root.path().to_owned());
            let mut bash = h.process(&self.inner.config, "bash", Vec::new(), dir);
            bash.timeout = limits.timeout;
            bash.extra_env = options.env;
            return bash.stream_bash(code, guard);
        }
        // Known for sure once the box has started: Python code goes to a Python kernel only.
        if is_python(language) && language != self.inner.config.kernel {
            self.require_python(&format!("language {language:?}"))?;
        }
        let around = cwd.is_some() || !options.env.is_empty();
        if around {
            self.require_python("a per-execution cwd or env")?;
        }
        let around = around.then(|| around_code(cwd.as_deref(), &options.env));
        crate::exec::execute(&self.inner.id, h.kernel, code, limits, around, guard).await
    }

    async fn upload(&self, path: &str, content: ByteStream) -> Result<FileInfo> {
        let h = self.inner.handle().await?;
        h.root.upload(path, content).await
    }

    async fn download(&self, path: &str) -> Result<ByteStream> {
        let h = self.inner.handle().await?;
        h.root.download(path).await
    }

    // File work runs on the blocking pool: the box's code shapes the tree (deep, wide,
    // FIFOs), and an async worker must never wait on it.
    async fn list_files(&self, dir: &str, recursive: bool) -> Result<Vec<FileInfo>> {
        let h = self.inner.handle().await?;
        let dir = dir.to_owned();
        tokio::task::spawn_blocking(move || h.root.list(&dir, recursive))
            .await
            .map_err(|e| CodeBoxError::io("listing files", std::io::Error::other(e.to_string())))?
    }

    async fn delete_file(&self, path: &str) -> Result<()> {
        let h = self.inner.handle().await?;
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || h.root.delete(&path))
            .await
            .map_err(|e| CodeBoxError::io("deleting a file", std::io::Error::other(e.to_string())))?
    }

    async fn install(&self, packages: &[String]) -> Result<String> {
        install::install(&self.inner, packages).await
    }

    async fn restart(&self) -> Result<()> {
        self.inner.restart().await
    }

    async fn interrupt(&self) -> Result<()> {
        let h = self.inner.running().await?;
        h.kernel.interrupt().await
    }

    async fn run_command(&self, command: CommandSpec) -> Result<CommandOutput> {
        if command.program.trim().is_empty() {
            return Err(CodeBoxError::invalid("the command has no program"));
        }
        check_env(&command.env)?;
        let h = self.inner.handle().await?;
        let cwd = match command.cwd.as_deref() {
            Some(c) => h.root.path().join(h.root.check_dir(c)?),
            None => h.root.path().to_owned(),
        };
        let mut process = h.process(&self.inner.config, &command.program, command.args, cwd);
        process.timeout = command.timeout.or(process.timeout);
        process.extra_env = command.env;
        process.run().await
    }
}

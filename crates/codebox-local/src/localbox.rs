//! `LocalBox`: the `CodeBox` backed by a kernel on this machine. Its builder is here; the
//! lifecycle (start, restart, recovery) is in `supervisor`, `install` in its own module.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use codebox_core::{
    BoxMetrics, BoxState, BoxStatus, ByteStream, Capabilities, CodeBox, CodeBoxError, CodeBoxSettings, CommandOutput,
    CommandSpec, ContextInfo, DEFAULT_CONTEXT, EventStream, ExecutionRecord, ExecutionStats, FileInfo, PackageInfo,
    PauseReport, PortStream, ProcessId, ProcessInfo, ProcessSignal, ProcessSpec, ProcessStream, Result, RunOptions,
};

use crate::exec::{around_code, check_env};
use crate::kernelspec::is_python;
use codebox_sandbox::IsolationLevel;

mod builder;
mod contexts;

pub(crate) use self::builder::Config;
pub use self::builder::LocalBoxBuilder;

mod install;
mod packages;
mod pause;
mod ports;
mod processes;

pub use self::processes::DEFAULT_MAX_PROCESSES;
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

impl LocalBox {
    /// A builder with the defaults: kernel `python3-lean`, Python from `CODEBOX_PYTHON` or the
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

    /// A box named `id` (a resumed box keeps its name).
    fn from_config_named(config: Config, id: String) -> Self {
        Self { inner: Arc::new(Inner::with_id(config, id)) }
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

    /// The pool the box takes kernels from, if any.
    pub(crate) fn pool(&self) -> Option<&crate::KernelPool> {
        self.inner.config.pool.as_ref()
    }

    /// The launch spec of the running kernel, once started (a pool's key for its kind).
    pub(crate) async fn launch_spec(&self) -> Option<crate::kernelspec::LaunchSpec> {
        self.inner.state.lock().await.run.as_ref().map(|r| r.spec.clone())
    }

    /// The template the box is made from, if it is.
    pub fn template(&self) -> Option<&str> {
        self.inner.config.template.as_deref()
    }

    /// The box's working directory on this machine, once started.
    pub async fn working_dir(&self) -> Option<PathBuf> {
        self.inner.state.lock().await.workdir.as_ref().map(|w| w.path().to_owned())
    }

    /// The process id of the running kernel, if any.
    pub async fn kernel_pid(&self) -> Option<i32> {
        self.inner.state.lock().await.run.as_ref().map(|r| r.kernel.pid())
    }

    /// Whether the running kernel was forked from the fork server (see
    /// [`LocalBoxBuilder::with_fork_server`]) rather than started as a Python of its own.
    pub async fn kernel_forked(&self) -> Option<bool> {
        self.inner.state.lock().await.run.as_ref().map(|r| r.kernel.forked())
    }

    /// The process id of code context `id`'s kernel, while it has one (`"default"`: the
    /// box's own kernel).
    pub async fn context_kernel_pid(&self, id: &str) -> Option<i32> {
        if id == DEFAULT_CONTEXT {
            return self.kernel_pid().await;
        }
        contexts::kernel_pid(&self.inner, id).await
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
    /// An execution's stream, without what a resume has to say first.
    async fn run_stream_plain(&self, code: &str, options: RunOptions) -> Result<EventStream> {
        if let Some(context) = options.context.as_deref()
            && context != DEFAULT_CONTEXT
        {
            let context = context.to_owned();
            return contexts::run_stream(&self.inner, &context, code, options).await;
        }
        // Unnamed, the language is the box's default (its template's), else the kernel's own.
        let default_language = self.inner.config.language.as_deref();
        let language = options.language.as_deref().or(default_language).unwrap_or(&self.inner.config.kernel);
        let bash = is_bash(language);
        let kernel_takes = |l: &str| {
            l == self.inner.config.kernel
                || Some(l) == default_language
                || (self.inner.config.kernel == crate::kernelspec::DENO_KERNEL
                    && crate::kernelspec::DENO_LANGUAGES.contains(&l))
        };
        if !bash && !is_python(language) && !kernel_takes(language) {
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
        // Started before any of the code runs: the scan lists what changed since this moment.
        let tracking = self.inner.tracking(&h.root, options.save_images).await;
        if bash {
            let dir = cwd.unwrap_or_else(|| h.root.path().to_owned());
            let mut bash = h.process(&self.inner.config, "bash", Vec::new(), dir);
            bash.timeout = limits.timeout;
            bash.extra_env = options.env;
            return bash.stream_bash(code, guard, tracking);
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
        crate::exec::execute(&self.inner.id, h.kernel, code, limits, around, guard, tracking, None).await
    }

    /// Refuse what a box built without execution tracking does not keep.
    fn require_tracking(&self, what: &str) -> Result<()> {
        if self.inner.config.execution_tracking {
            Ok(())
        } else {
            Err(CodeBoxError::unsupported(format!("{what} (this box was built without execution tracking)")))
        }
    }

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
        match self.inner.config.kernel.as_str() {
            "python3" | "python" | crate::LEAN_KERNEL => {}
            crate::kernelspec::DENO_KERNEL => {
                languages.extend(crate::kernelspec::DENO_LANGUAGES.iter().map(|l| (*l).to_owned()));
            }
            other => languages.push(other.to_owned()),
        }
        if let Some(default) = &self.inner.config.language
            && !languages.contains(default)
        {
            languages.push(default.clone());
        }
        let mut capabilities = Capabilities::full(languages);
        // pip installs for the box's Python, which only a Python kernel imports from.
        capabilities.install = python;
        capabilities.packages = python;
        // Kernel and bash executions alike record history and list artifacts; `run_command`
        // does neither.
        capabilities.history = self.inner.config.execution_tracking;
        capabilities.artifacts = self.inner.config.execution_tracking;
        capabilities.contexts = true;
        capabilities.ports = ports::available(&self.inner);
        capabilities.metrics = true;
        capabilities.pause = self.inner.config.state_dir.is_some();
        // Every kernel's box runs programs (`run_command`), so background ones too.
        capabilities.processes = true;
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
        let stream = self.run_stream_plain(code, options).await?;
        Ok(pause::announce(&self.inner, stream))
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

    async fn stat(&self, path: &str) -> Result<FileInfo> {
        let h = self.inner.handle().await?;
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || h.root.stat(&path))
            .await
            .map_err(|e| CodeBoxError::io("reading metadata", std::io::Error::other(e.to_string())))?
    }

    async fn make_dir(&self, path: &str) -> Result<FileInfo> {
        let h = self.inner.handle().await?;
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || h.root.make_dir(&path))
            .await
            .map_err(|e| CodeBoxError::io("making a directory", std::io::Error::other(e.to_string())))?
    }

    async fn rename(&self, from: &str, to: &str) -> Result<FileInfo> {
        let h = self.inner.handle().await?;
        let (from, to) = (from.to_owned(), to.to_owned());
        tokio::task::spawn_blocking(move || h.root.rename(&from, &to))
            .await
            .map_err(|e| CodeBoxError::io("renaming", std::io::Error::other(e.to_string())))?
    }

    async fn list_dir(&self, dir: &str, depth: usize) -> Result<Vec<FileInfo>> {
        let h = self.inner.handle().await?;
        let dir = dir.to_owned();
        tokio::task::spawn_blocking(move || h.root.list_depth(&dir, depth))
            .await
            .map_err(|e| CodeBoxError::io("listing files", std::io::Error::other(e.to_string())))?
    }

    async fn install(&self, packages: &[String]) -> Result<String> {
        install::install(&self.inner, packages).await
    }

    async fn packages(&self) -> Result<Vec<PackageInfo>> {
        packages::packages(&self.inner).await
    }

    async fn history(&self, limit: usize) -> Result<Vec<ExecutionRecord>> {
        self.require_tracking("history")?;
        Ok(self.inner.history.lock().unwrap_or_else(|e| e.into_inner()).newest(limit))
    }

    async fn execution_stats(&self) -> Result<ExecutionStats> {
        self.require_tracking("execution_stats")?;
        Ok(self.inner.history.lock().unwrap_or_else(|e| e.into_inner()).stats())
    }

    async fn pause(&self) -> Result<PauseReport> {
        pause::pause(&self.inner).await
    }

    async fn create_context(&self, language: Option<&str>, cwd: Option<&str>) -> Result<ContextInfo> {
        contexts::create(&self.inner, language, cwd).await
    }

    async fn contexts(&self) -> Result<Vec<ContextInfo>> {
        let language = self.inner.config.language.clone().or_else(|| self.inner.kernel_language());
        let language = match language {
            Some(l) if crate::kernelspec::is_python(&l) => "python".to_owned(),
            Some(l) if !l.is_empty() => l,
            _ => self.inner.config.kernel.clone(),
        };
        let mut all = vec![ContextInfo::default_context(language)];
        all.extend(self.inner.contexts.list());
        Ok(all)
    }

    async fn restart_context(&self, id: &str) -> Result<()> {
        if id == DEFAULT_CONTEXT {
            return self.inner.restart().await;
        }
        contexts::restart(&self.inner, id).await
    }

    async fn delete_context(&self, id: &str) -> Result<()> {
        if id == DEFAULT_CONTEXT {
            return Err(codebox_core::default_context_kept());
        }
        contexts::delete(&self.inner, id).await
    }

    async fn interrupt_context(&self, id: &str) -> Result<()> {
        if id == DEFAULT_CONTEXT {
            return self.interrupt().await;
        }
        contexts::interrupt(&self.inner, id).await
    }

    async fn connect_port(&self, port: u16) -> Result<PortStream> {
        ports::connect_port(&self.inner, port).await
    }

    async fn port_url(&self, port: u16) -> Result<String> {
        codebox_core::check_port(port.into())?;
        // No URL of its own: a LocalBox lives in this process, which serves nothing. A server
        // hosting it gives `/v1/sessions/{id}/ports/{port}/`.
        Err(CodeBoxError::unsupported(
            "port_url: a LocalBox's ports have no URL of their own; reach them with connect_port, or through a \
             server's /v1/sessions/{id}/ports/{port}/ route",
        ))
    }

    async fn metrics(&self) -> Result<BoxMetrics> {
        let target = {
            let st = self.inner.state.lock().await;
            match (&st.run, &st.workdir) {
                (Some(run), Some(workdir)) if !run.kernel.is_dead() => crate::metrics::Target {
                    kernel_pid: run.kernel.pid(),
                    confinement: run.confinement.clone(),
                    work_dir: workdir.path().to_owned(),
                },
                _ => return Err(CodeBoxError::not_running("the box has no running kernel to measure")),
            }
        };
        let baseline = self.inner.cpu_baseline.clone();
        tokio::task::spawn_blocking(move || crate::metrics::sample(&target, &baseline))
            .await
            .map_err(|e| CodeBoxError::io("measuring the box", std::io::Error::other(e.to_string())))
    }

    async fn start_process(&self, spec: ProcessSpec) -> Result<ProcessStream> {
        let command = &spec.command;
        if command.program.trim().is_empty() {
            return Err(CodeBoxError::invalid("the process has no program"));
        }
        check_env(&command.env)?;
        let h = self.inner.handle().await?;
        let cwd = match command.cwd.as_deref() {
            Some(c) => h.root.path().join(h.root.check_dir(c)?),
            None => h.root.path().to_owned(),
        };
        let mut process = h.process(&self.inner.config, &command.program, command.args.clone(), cwd);
        // Only its own timeout: a background process is meant to outlive an execution's.
        process.timeout = command.timeout;
        process.extra_env = command.env.clone();
        self.inner.processes.start(process, spec, self.inner.config.max_processes).await
    }

    async fn connect_process(&self, pid: ProcessId) -> Result<ProcessStream> {
        self.inner.processes.connect(pid)
    }

    async fn processes(&self) -> Result<Vec<ProcessInfo>> {
        Ok(self.inner.processes.list())
    }

    async fn process_input(&self, pid: ProcessId, data: bytes::Bytes) -> Result<()> {
        self.inner.processes.input(pid, data).await
    }

    async fn close_process_input(&self, pid: ProcessId) -> Result<()> {
        self.inner.processes.close_input(pid).await
    }

    async fn signal_process(&self, pid: ProcessId, signal: ProcessSignal) -> Result<()> {
        self.inner.processes.signal(pid, signal)
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

//! `LocalBox`: the `CodeBox` backed by a kernel on this machine.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use codebox_core::{
    BoxState, BoxStatus, ByteStream, Capabilities, CodeBox, CodeBoxError, CodeBoxSettings, CommandOutput, CommandSpec,
    EventStream, FileInfo, Result, RunOptions,
};
use tokio::time::Instant;

use crate::exec::ExecLimits;
use crate::files::Root;
use crate::kernel::{ExitReason, Kernel, LaunchSpec};
use crate::rmtree::OwnedDir;
use codebox_sandbox::{Confinement, IsolationLevel};

mod builder;

pub(crate) use self::builder::Config;
pub use self::builder::LocalBoxBuilder;

/// How long one `install` may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(900);

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

enum WorkDir {
    Temp(OwnedDir),
    Given(PathBuf),
}

impl WorkDir {
    fn path(&self) -> &Path {
        match self {
            Self::Temp(t) => t.path(),
            Self::Given(p) => p,
        }
    }
}

/// A fresh working directory in `scratch` (default: the temporary directory).
pub(crate) fn new_temp_workdir(scratch: Option<&Path>) -> Result<OwnedDir> {
    // 0700: the box's files are its owner's alone.
    tempfile::Builder::new()
        .prefix(&crate::kernel::workdir_prefix())
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir_in(scratch.map_or_else(std::env::temp_dir, Path::to_path_buf))
        .map(OwnedDir::adopt)
        .map_err(|e| CodeBoxError::io("creating a working directory", e))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    NotStarted,
    Running,
    Stopped,
    Dead,
}

struct Running {
    kernel: Arc<Kernel>,
    root: Arc<Root>,
    python: PathBuf,
    spec: LaunchSpec,
    confinement: Arc<Confinement>,
}

struct State {
    phase: Phase,
    run: Option<Running>,
    workdir: Option<WorkDir>,
    restart_times: VecDeque<Instant>,
}

#[derive(Debug, Clone)]
struct Snapshot {
    state: BoxState,
    restarts: u32,
    detail: Option<String>,
    isolation: Option<IsolationLevel>,
}

struct Inner {
    id: String,
    config: Config,
    exec_lock: Arc<tokio::sync::Mutex<()>>,
    state: tokio::sync::Mutex<State>,
    snapshot: Mutex<Snapshot>,
}

/// What a call needs from a running box.
#[derive(Clone)]
struct Handle {
    kernel: Arc<Kernel>,
    root: Arc<Root>,
    python: PathBuf,
    env: Vec<(String, String)>,
    confinement: Arc<Confinement>,
}

/// Confine a box whose working directory is `dir` (blocking work: uid, image, cgroup).
pub(crate) async fn confine(spec: &LaunchSpec, dir: &Path) -> Result<Arc<Confinement>> {
    let (policy, dir) = (Arc::clone(&spec.sandbox), dir.to_owned());
    tokio::task::spawn_blocking(move || policy.confine(&dir).map(Arc::new))
        .await
        .map_err(|e| CodeBoxError::KernelStart { message: format!("the sandbox task failed: {e}") })?
}

/// Release a confinement off the async threads (it may wait for processes to die).
async fn release(confinement: Arc<Confinement>) {
    let _ = tokio::task::spawn_blocking(move || confinement.release()).await;
}

/// Drop a replaced kernel off the async threads: its runtime directory goes with its last
/// handle, and under Landlock that holds the box's TMPDIR, a tree of any shape.
fn retire(kernel: Arc<Kernel>) {
    drop(tokio::task::spawn_blocking(move || drop(kernel)));
}

fn fresh_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!("local-{}-{}", crate::util::random_hex(6), COUNTER.fetch_add(1, Ordering::Relaxed))
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
        let inner = Inner {
            id: fresh_id(),
            config,
            exec_lock: Arc::new(tokio::sync::Mutex::new(())),
            state: tokio::sync::Mutex::new(State {
                phase: Phase::NotStarted,
                run: None,
                workdir: None,
                restart_times: VecDeque::new(),
            }),
            snapshot: Mutex::new(Snapshot { state: BoxState::NotStarted, restarts: 0, detail: None, isolation: None }),
        };
        Self { inner: Arc::new(inner) }
    }

    /// Remove the working and kernel runtime directories of boxes whose owner process died
    /// without cleaning up (SIGKILL, a crash), and return how many. Every process does this
    /// once by itself before its first kernel starts; a long-lived process may call it again.
    /// Directories of live processes are never touched.
    pub fn sweep_stale_dirs() -> usize {
        crate::kernel::sweep_stale_dirs()
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

impl Inner {
    /// The isolation the box will run under, before it has started.
    fn set_snapshot(&self, f: impl FnOnce(&mut Snapshot)) {
        f(&mut self.snapshot.lock().unwrap_or_else(|e| e.into_inner()));
    }

    async fn start(self: &Arc<Self>) -> Result<()> {
        let mut st = self.state.lock().await;
        if st.phase == Phase::Running {
            return Ok(());
        }
        self.set_snapshot(|s| s.state = BoxState::Starting);
        let started = self.start_locked(&mut st).await;
        match &started {
            Ok(()) => self.set_snapshot(|s| {
                s.state = BoxState::Idle;
                s.detail = None;
            }),
            Err(e) => {
                let prev = st.phase;
                self.set_snapshot(|s| {
                    s.state = if prev == Phase::Stopped { BoxState::Stopped } else { BoxState::NotStarted };
                    s.detail = Some(e.to_string());
                })
            }
        }
        started
    }

    async fn start_locked(self: &Arc<Self>, st: &mut State) -> Result<()> {
        let python = self.config.python().await?;
        if self.config.sandbox.uids.is_some()
            && let Some(dir) = codebox_sandbox::unreachable_for_others(&python)
        {
            return Err(CodeBoxError::KernelStart {
                message: format!(
                    "the Python {} is inside {}, which session uids cannot enter: use a Python \
                     environment outside it (as root the managed one lives in /var/lib/codebox)",
                    python.display(),
                    dir.display()
                ),
            });
        }
        let spec = self.config.spec_for(&python)?;
        let warm = match (&self.config.pool, &self.config.working_dir) {
            (Some(pool), None) => pool.take(&spec),
            _ => None,
        };
        let (kernel, workdir) = match warm {
            Some(w) => {
                tracing::debug!(box_id = %self.id, "took a kernel from the pool");
                (w.kernel, WorkDir::Temp(w.dir))
            }
            None => {
                let workdir = match &self.config.working_dir {
                    Some(dir) => WorkDir::Given(dir.clone()),
                    None => WorkDir::Temp(new_temp_workdir(self.config.scratch_dir.as_deref())?),
                };
                let confinement = confine(&spec, workdir.path()).await?;
                match Kernel::start(&spec, confinement.clone()).await {
                    Ok(kernel) => (kernel, workdir),
                    Err(e) => {
                        release(confinement).await;
                        return Err(e);
                    }
                }
            }
        };
        let confinement = kernel.confinement().clone();
        let root = match Root::open(workdir.path(), confinement.uid()) {
            Ok(root) => Arc::new(root),
            Err(e) => {
                kernel.kill(ExitReason::Requested);
                release(confinement).await;
                return Err(e);
            }
        };
        if confinement.level() == IsolationLevel::None {
            tracing::warn!(box_id = %self.id, "this box runs code without isolation");
        }
        self.set_snapshot(|s| s.isolation = Some(confinement.level()));
        self.watch(&kernel);
        st.run = Some(Running { kernel, root, python, spec, confinement });
        st.workdir = Some(workdir);
        st.phase = Phase::Running;
        tracing::debug!(box_id = %self.id, "box started");
        Ok(())
    }

    /// Restart the kernel when it dies on its own.
    fn watch(self: &Arc<Self>, kernel: &Arc<Kernel>) {
        let weak: Weak<Inner> = Arc::downgrade(self);
        let mut death = kernel.death();
        let target = Arc::as_ptr(kernel) as usize;
        tokio::spawn(async move {
            if death.wait_for(Option::is_some).await.is_err() {
                return; // the kernel was dropped
            }
            if let Some(inner) = weak.upgrade() {
                let mut st = inner.state.lock().await;
                inner.recover(&mut st, target).await;
            }
        });
    }

    /// Replace the dead kernel `target` (if it is still the current one) within the restart
    /// budget.
    async fn recover(self: &Arc<Self>, st: &mut State, target: usize) {
        let Some(run) = st.run.as_ref() else { return };
        if st.phase != Phase::Running || Arc::as_ptr(&run.kernel) as usize != target || !run.kernel.is_dead() {
            return;
        }
        let reason = run.kernel.exit_reason();
        let cause = run.kernel.death().borrow().clone();
        if reason == ExitReason::Requested {
            return;
        }
        if reason == ExitReason::Unexpected {
            let now = Instant::now();
            let window = self.config.restart_window;
            st.restart_times.retain(|t| now.duration_since(*t) < window);
            if st.restart_times.len() >= self.config.max_restarts {
                let detail = format!(
                    "the kernel died {} times within {:?} (last: {}); call restart() to try again",
                    st.restart_times.len() + 1,
                    window,
                    cause.map(|c| c.to_string()).unwrap_or_default()
                );
                tracing::warn!(box_id = %self.id, "{detail}");
                st.phase = Phase::Dead;
                self.set_snapshot(|s| {
                    s.state = BoxState::Dead;
                    s.detail = Some(detail);
                });
                return;
            }
            st.restart_times.push_back(now);
            self.set_snapshot(|s| s.restarts += 1);
        }
        tracing::info!(box_id = %self.id, ?reason, "the kernel exited; restarting it");
        self.set_snapshot(|s| {
            s.state = BoxState::Restarting;
            s.detail = cause.map(|c| format!("the kernel {c}"));
        });
        let (spec, confinement) = {
            let run = st.run.as_ref().expect("checked above");
            (run.spec.clone(), run.confinement.clone())
        };
        match Kernel::start(&spec, confinement).await {
            Ok(kernel) => {
                self.watch(&kernel);
                if let Some(run) = st.run.as_mut() {
                    retire(std::mem::replace(&mut run.kernel, kernel));
                }
                self.set_snapshot(|s| s.state = BoxState::Idle);
            }
            Err(e) => {
                st.phase = Phase::Dead;
                self.set_snapshot(|s| {
                    s.state = BoxState::Dead;
                    s.detail = Some(format!("restarting the kernel failed: {e}"));
                });
            }
        }
    }

    /// The running kernel, starting the box on first use and replacing a dead kernel.
    async fn handle(self: &Arc<Self>) -> Result<Handle> {
        loop {
            let mut st = self.state.lock().await;
            match st.phase {
                Phase::NotStarted => {
                    drop(st);
                    self.start().await?;
                    continue;
                }
                Phase::Stopped => {
                    return Err(CodeBoxError::NotRunning { message: "the box was stopped".into() });
                }
                Phase::Dead => {
                    let detail = self.snapshot.lock().unwrap_or_else(|e| e.into_inner()).detail.clone();
                    return Err(CodeBoxError::NotRunning {
                        message: detail.unwrap_or_else(|| "the kernel is dead".into()),
                    });
                }
                Phase::Running => {}
            }
            let run = st.run.as_ref().expect("a running box has a kernel");
            if run.kernel.is_dead() {
                let target = Arc::as_ptr(&run.kernel) as usize;
                self.recover(&mut st, target).await;
                continue;
            }
            let env = self.config.child_env(&run.python);
            return Ok(Handle {
                kernel: run.kernel.clone(),
                root: run.root.clone(),
                python: run.python.clone(),
                env,
                confinement: run.confinement.clone(),
            });
        }
    }

    /// The handle of a running box, without starting it.
    async fn running(self: &Arc<Self>) -> Result<Handle> {
        if self.state.lock().await.phase == Phase::NotStarted {
            return Err(CodeBoxError::NotRunning { message: "the box has not been started".into() });
        }
        self.handle().await
    }

    fn limits(&self, timeout: Option<Duration>) -> ExecLimits {
        ExecLimits {
            timeout: timeout.or(self.config.timeout),
            output_limit: self.config.output_limit,
            interrupt_grace: self.config.interrupt_grace,
        }
    }
}

/// Python statements that set the working directory and environment of one execution, and
/// restore them afterwards. They run as separate silent requests, so the user's code is sent
/// unchanged (its last expression is still displayed, tracebacks keep their line numbers).
fn around_code(cwd: Option<&Path>, env: &BTreeMap<String, String>) -> (String, String) {
    let lit = |s: &str| serde_json::to_string(s).expect("a string serializes");
    let keys: Vec<String> = env.keys().map(|k| lit(k)).collect();
    let restore = "__codebox_os.chdir(__codebox_saved[0])\n\
                   for __codebox_k, __codebox_v in __codebox_saved[1].items():\n    \
                   if __codebox_v is None: __codebox_os.environ.pop(__codebox_k, None)\n    \
                   else: __codebox_os.environ[__codebox_k] = __codebox_v\n\
                   del __codebox_saved, __codebox_os\n";
    let mut apply = String::new();
    for (k, v) in env {
        apply.push_str(&format!("    __codebox_os.environ[{}] = {}\n", lit(k), lit(v)));
    }
    if let Some(cwd) = cwd {
        apply.push_str(&format!("    __codebox_os.chdir({})\n", lit(&cwd.to_string_lossy())));
    }
    // If applying fails half way (say the directory vanished), undo what was done.
    let indented: String = restore.lines().map(|l| format!("    {l}\n")).collect();
    let before = format!(
        "import os as __codebox_os\n\
         __codebox_saved = (__codebox_os.getcwd(), {{k: __codebox_os.environ.get(k) for k in [{}]}})\n\
         try:\n{apply}    pass\n\
         except BaseException:\n{indented}    raise\n",
        keys.join(", ")
    );
    (before, restore.to_owned())
}

/// Refuse environment variables the OS cannot represent.
fn check_env(env: &BTreeMap<String, String>) -> Result<()> {
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(CodeBoxError::invalid(format!(
                "environment variable {k:?} is not valid: names must be non-empty without `=` or NUL, values without NUL"
            )));
        }
    }
    Ok(())
}

fn is_bash(language: &str) -> bool {
    matches!(language, "bash" | "sh" | "shell")
}

#[async_trait]
impl CodeBox for LocalBox {
    fn id(&self) -> &str {
        &self.inner.id
    }

    fn capabilities(&self) -> Capabilities {
        let mut languages = vec!["python".to_owned(), "bash".to_owned()];
        if !matches!(self.inner.config.kernel.as_str(), "python3" | "python") {
            languages.push(self.inner.config.kernel.clone());
        }
        Capabilities::full(languages)
    }

    async fn start(&self) -> Result<()> {
        self.inner.start().await
    }

    async fn stop(&self) -> Result<()> {
        let mut st = self.inner.state.lock().await;
        if st.phase == Phase::Stopped {
            return Ok(());
        }
        if let Some(run) = st.run.take() {
            run.kernel.shutdown(Duration::from_secs(1)).await;
            // Before the working directory goes: its image is unmounted here.
            release(run.confinement).await;
            // The kernel's runtime directory goes with its last handle, off the async
            // threads: under Landlock it holds the box's TMPDIR, a tree of any shape.
            let kernel = run.kernel;
            let _ = tokio::task::spawn_blocking(move || drop(kernel)).await;
        }
        if let Some(WorkDir::Temp(dir)) = st.workdir.take() {
            if self.inner.config.keep_working_dir {
                let _ = dir.keep();
            } else {
                // The box's code shaped the tree: its removal is blocking work of any length.
                let removed = tokio::task::spawn_blocking(move || dir.close()).await;
                if let Ok(Err(e)) = removed {
                    tracing::warn!(box_id = %self.inner.id, "removing the working directory failed: {e}");
                }
            }
        }
        st.phase = Phase::Stopped;
        self.inner.set_snapshot(|s| {
            s.state = BoxState::Stopped;
            s.detail = None;
        });
        Ok(())
    }

    async fn status(&self) -> Result<BoxStatus> {
        let snap = self.inner.snapshot.lock().unwrap_or_else(|e| e.into_inner()).clone();
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
        let language = options.language.as_deref().unwrap_or("python");
        let bash = is_bash(language);
        if !bash && !matches!(language, "python" | "python3") && language != self.inner.config.kernel {
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
            return crate::command::run_bash(
                code,
                &dir,
                &h.env,
                &options.env,
                limits.timeout,
                limits.output_limit,
                guard,
                Some((&h.confinement, &h.python)),
            );
        }
        let around = (cwd.is_some() || !options.env.is_empty()).then(|| around_code(cwd.as_deref(), &options.env));
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
        if packages.is_empty() {
            return Err(CodeBoxError::invalid("no packages to install"));
        }
        // At every level, unsandboxed ones included: pip gets names, never a place to fetch
        // from or a source tree to build.
        for p in packages {
            crate::command::check_requirement(p)?;
        }
        let h = self.inner.handle().await?;
        let timeout = Some(INSTALL_TIMEOUT);
        let out = match h.confinement.packages_dir() {
            // A confined box installs into its own directory, under its own confinement.
            Some(target) => {
                let proxy_run_dir = h.confinement.has_network_allowlist().then(|| h.kernel.runtime_dir());
                crate::command::run_pip_install(
                    &h.confinement,
                    &h.python,
                    &target,
                    packages,
                    &h.env,
                    timeout,
                    self.inner.config.output_limit,
                    proxy_run_dir,
                )
                .await?
            }
            None => {
                let mut args: Vec<String> =
                    ["-m", "pip", "install", "--disable-pip-version-check", "--no-input"].map(str::to_owned).to_vec();
                args.extend(packages.iter().cloned());
                crate::command::run_command(
                    &h.python.to_string_lossy(),
                    &args,
                    h.root.path(),
                    &h.env,
                    &BTreeMap::new(),
                    timeout,
                    self.inner.config.output_limit,
                    None,
                )
                .await?
            }
        };
        let text = format!("{}{}", out.stdout, out.stderr);
        if !out.success() {
            return Err(CodeBoxError::Install { output: text });
        }
        // Let the running kernel see the new packages without a restart.
        let _guard = self.inner.exec_lock.lock().await;
        if let Ok(h) = self.inner.handle().await {
            crate::exec::run_silent(
                &h.kernel,
                "import importlib as __codebox_il\n__codebox_il.invalidate_caches()\ndel __codebox_il\n",
            )
            .await?;
        }
        Ok(text)
    }

    async fn restart(&self) -> Result<()> {
        let mut st = self.inner.state.lock().await;
        match st.phase {
            Phase::NotStarted => {
                drop(st);
                return self.inner.start().await;
            }
            Phase::Stopped => return Err(CodeBoxError::NotRunning { message: "the box was stopped".into() }),
            Phase::Running | Phase::Dead => {}
        }
        self.inner.set_snapshot(|s| s.state = BoxState::Restarting);
        let Some(run) = st.run.as_mut() else {
            return Err(CodeBoxError::NotRunning { message: "the box has no kernel".into() });
        };
        run.kernel.shutdown(Duration::from_secs(1)).await;
        let spec = run.spec.clone();
        match Kernel::start(&spec, run.confinement.clone()).await {
            Ok(kernel) => {
                self.inner.watch(&kernel);
                if let Some(run) = st.run.as_mut() {
                    retire(std::mem::replace(&mut run.kernel, kernel));
                }
                st.phase = Phase::Running;
                st.restart_times.clear();
                self.inner.set_snapshot(|s| {
                    s.state = BoxState::Idle;
                    s.detail = None;
                });
                Ok(())
            }
            Err(e) => {
                st.phase = Phase::Dead;
                self.inner.set_snapshot(|s| {
                    s.state = BoxState::Dead;
                    s.detail = Some(e.to_string());
                });
                Err(e)
            }
        }
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
        crate::command::run_command(
            &command.program,
            &command.args,
            &cwd,
            &h.env,
            &command.env,
            command.timeout.or(self.inner.config.timeout),
            self.inner.config.output_limit,
            Some((&h.confinement, &h.python)),
        )
        .await
    }
}

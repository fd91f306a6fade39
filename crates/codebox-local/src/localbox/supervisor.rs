//! The life of a box: starting it, handing its running kernel to calls, and replacing a
//! kernel that died (within the restart budget) or that `restart` shuts down. Both paths go
//! through one [`Inner::replace_kernel`].

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use codebox_core::{BoxState, CodeBoxError, Result};
use tokio::time::Instant;

use super::Config;
use crate::boxprocess::{BoxProcess, Placement};
use crate::confine::{confine, release};
use crate::exec::ExecLimits;
use crate::files::Root;
use crate::kernel::{ExitReason, Kernel};
use crate::kernelspec::LaunchSpec;
use crate::workdir::{WorkDir, new_temp_workdir};
use codebox_sandbox::{Confinement, IsolationLevel};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    NotStarted,
    Running,
    Stopped,
    Dead,
}

/// What a started box holds while it runs.
pub(super) struct Running {
    pub(super) kernel: Arc<Kernel>,
    pub(super) root: Arc<Root>,
    pub(super) python: PathBuf,
    pub(super) spec: LaunchSpec,
    pub(super) confinement: Arc<Confinement>,
}

pub(super) struct State {
    pub(super) phase: Phase,
    pub(super) run: Option<Running>,
    pub(super) workdir: Option<WorkDir>,
    restart_times: VecDeque<Instant>,
}

/// What `status` reports, readable without waiting for the state lock.
#[derive(Debug, Clone)]
pub(super) struct Snapshot {
    pub(super) state: BoxState,
    pub(super) restarts: u32,
    pub(super) detail: Option<String>,
    pub(super) isolation: Option<IsolationLevel>,
    /// The language of the kernel the box started, once it has.
    pub(super) language: Option<String>,
}

pub(super) struct Inner {
    pub(super) id: String,
    pub(super) config: Config,
    pub(super) exec_lock: Arc<tokio::sync::Mutex<()>>,
    pub(super) state: tokio::sync::Mutex<State>,
    pub(super) snapshot: Mutex<Snapshot>,
    /// The box's executions, kept across kernel restarts.
    pub(super) history: crate::history::SharedHistory,
    /// The box's code contexts besides its own kernel.
    pub(super) contexts: super::contexts::Contexts,
    /// The CPU reading of the box's previous metrics sample.
    pub(super) cpu_baseline: Arc<crate::metrics::CpuBaseline>,
    /// How the box follows its working directory for artifacts, across executions.
    pub(super) tracked_files: crate::artifacts::SharedFiles,
    /// The snapshot the box resumes from, until its first start has restored its files.
    pub(super) resume_from: Mutex<Option<Arc<crate::snapshot::store::Snapshot>>>,
    /// How many files that start restored.
    pub(super) files_restored: std::sync::atomic::AtomicU64,
    /// What the first execution after a resume says about what did not come back.
    pub(super) resume_notice: Mutex<Option<codebox_core::ResumeReport>>,
    /// The box's background processes.
    pub(super) processes: super::processes::Processes,
}

/// What a code context needs of a box: where its files are, how its kernels are confined
/// and how they start.
pub(super) struct BoxParts {
    pub(super) root: Arc<Root>,
    pub(super) confinement: Arc<Confinement>,
    pub(super) spec: LaunchSpec,
}

/// What a call needs from a running box.
#[derive(Clone)]
pub(super) struct Handle {
    pub(super) kernel: Arc<Kernel>,
    pub(super) root: Arc<Root>,
    pub(super) python: PathBuf,
    pub(super) env: Vec<(String, String)>,
    pub(super) confinement: Arc<Confinement>,
    scratch_dir: PathBuf,
}

impl Handle {
    /// `program args`, to run in the box's directory `cwd` (a path the box's root checked),
    /// confined like the box's kernels, with the box's environment and default limits.
    pub(super) fn process(&self, config: &Config, program: &str, args: Vec<String>, cwd: PathBuf) -> BoxProcess {
        BoxProcess {
            program: program.to_owned(),
            args,
            cwd,
            env: self.env.clone(),
            extra_env: BTreeMap::new(),
            timeout: config.timeout,
            output_limit: config.output_limit,
            placement: Placement::InBox,
            confinement: self.confinement.clone(),
            python: self.python.clone(),
            scratch_dir: self.scratch_dir.clone(),
        }
    }
}

/// Drop a replaced kernel off the async threads: its runtime directory goes with its last
/// handle, and under Landlock that holds the box's TMPDIR, a tree of any shape.
pub(super) fn retire(kernel: Arc<Kernel>) {
    drop(tokio::task::spawn_blocking(move || drop(kernel)));
}

/// Start a kernel exactly like the box's own: the same launch spec (kernel, Python,
/// environment, sandbox policy) in the same confinement (isolation, uid, cgroup, working
/// directory). Recovery, `restart` and code contexts all start their kernels here.
pub(super) async fn start_kernel_like(spec: &LaunchSpec, confinement: Arc<Confinement>) -> Result<Arc<Kernel>> {
    Kernel::start(spec, confinement).await
}

/// Whether a kernel that died unexpectedly may be restarted now: at most `max` restarts
/// within `window`. A restart allowed is counted in `times`.
pub(super) fn restart_allowed(times: &mut VecDeque<Instant>, max: usize, window: Duration) -> bool {
    let now = Instant::now();
    times.retain(|t| now.duration_since(*t) < window);
    if times.len() >= max {
        return false;
    }
    times.push_back(now);
    true
}

fn fresh_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!("local-{}-{}", crate::util::random_hex(6), COUNTER.fetch_add(1, Ordering::Relaxed))
}

impl Inner {
    /// What an execution starting now keeps of itself: its record in the history and the
    /// scan for its artifacts (started before any of its code runs, so that it lists what
    /// changed from this moment), or nothing in a box built without execution tracking.
    /// Executions of every code context share the box's history and working directory.
    pub(super) async fn tracking(&self, root: &Arc<Root>, save_images: bool) -> Option<crate::history::Tracking> {
        if !self.config.execution_tracking {
            return None;
        }
        let files = self.tracked_files.clone();
        let artifacts = crate::artifacts::ArtifactScan::starting(root.clone(), save_images, files).await;
        Some(crate::history::Tracking { history: self.history.clone(), artifacts: Some(artifacts) })
    }

    /// A box that has not started.
    pub(super) fn new(config: Config) -> Self {
        Self::with_id(config, fresh_id())
    }

    /// A box that has not started, named `id` (a resumed box keeps its name).
    pub(super) fn with_id(config: Config, id: String) -> Self {
        Self {
            id,
            config,
            exec_lock: Arc::new(tokio::sync::Mutex::new(())),
            state: tokio::sync::Mutex::new(State {
                phase: Phase::NotStarted,
                run: None,
                workdir: None,
                restart_times: VecDeque::new(),
            }),
            snapshot: Mutex::new(Snapshot {
                state: BoxState::NotStarted,
                restarts: 0,
                detail: None,
                isolation: None,
                language: None,
            }),
            history: crate::history::new_history(),
            contexts: super::contexts::Contexts::default(),
            cpu_baseline: Arc::default(),
            tracked_files: Default::default(),
            resume_from: Mutex::new(None),
            files_restored: std::sync::atomic::AtomicU64::new(0),
            resume_notice: Mutex::new(None),
            processes: super::processes::Processes::default(),
        }
    }

    pub(super) fn set_snapshot(&self, f: impl FnOnce(&mut Snapshot)) {
        f(&mut self.snapshot.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub(super) fn snapshot(&self) -> Snapshot {
        self.snapshot.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) async fn start(self: &Arc<Self>) -> Result<()> {
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
            return Err(CodeBoxError::kernel_start(format!(
                "the Python {} is inside {}, which session uids cannot enter: use a Python \
                     environment outside it (as root the managed one lives in /var/lib/codebox)",
                python.display(),
                dir.display()
            )));
        }
        let spec = self.config.spec_for(&python)?;
        let resume_from = self.resume_from.lock().unwrap_or_else(|e| e.into_inner()).clone();
        // A resumed box's files go in before its kernel starts: no warm kernel for it.
        let warm = match (&self.config.pool, &self.config.working_dir, &resume_from) {
            (Some(pool), None, None) => pool.take(&spec),
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
                    None => WorkDir::Temp(new_temp_workdir(&spec.scratch_dir)?),
                };
                let confinement = confine(&spec, workdir.path()).await?;
                // After the confinement: a size-limited image is mounted on the directory.
                if let Some(snapshot) = resume_from {
                    if let Err(e) = super::pause::restore_files(self, &snapshot, workdir.path(), &confinement).await {
                        release(confinement).await;
                        return Err(e);
                    }
                    *self.resume_from.lock().unwrap_or_else(|e| e.into_inner()) = None;
                }
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
        self.set_snapshot(|s| {
            s.isolation = Some(confinement.level());
            s.language = Some(spec.language.clone());
        });
        self.watch(&kernel);
        st.run = Some(Running { kernel, root, python, spec, confinement });
        st.workdir = Some(workdir);
        st.phase = Phase::Running;
        self.contexts.open();
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

    /// Start a kernel like the current one, in the same confinement, watch it and swap it in
    /// (the old one is dropped off the async threads). The box is then running and idle; if
    /// the new kernel does not start, the box is dead and says why.
    async fn replace_kernel(self: &Arc<Self>, st: &mut State) -> Result<()> {
        let Some(run) = st.run.as_ref() else {
            return Err(CodeBoxError::not_running("the box has no kernel"));
        };
        let (spec, confinement) = (run.spec.clone(), run.confinement.clone());
        match start_kernel_like(&spec, confinement).await {
            Ok(kernel) => {
                self.watch(&kernel);
                if let Some(run) = st.run.as_mut() {
                    retire(std::mem::replace(&mut run.kernel, kernel));
                }
                st.phase = Phase::Running;
                self.set_snapshot(|s| s.state = BoxState::Idle);
                Ok(())
            }
            Err(e) => {
                st.phase = Phase::Dead;
                self.set_snapshot(|s| {
                    s.state = BoxState::Dead;
                    s.detail = Some(format!("restarting the kernel failed: {e}"));
                });
                Err(e)
            }
        }
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
            let window = self.config.restart_window;
            if !restart_allowed(&mut st.restart_times, self.config.max_restarts, window) {
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
            self.set_snapshot(|s| s.restarts += 1);
        }
        tracing::info!(box_id = %self.id, ?reason, "the kernel exited; restarting it");
        self.set_snapshot(|s| {
            s.state = BoxState::Restarting;
            s.detail = cause.map(|c| format!("the kernel {c}"));
        });
        // A failure is recorded in the snapshot; the next call reports the box dead.
        let _ = self.replace_kernel(st).await;
    }

    /// Shut the kernel down and start a fresh one (`CodeBox::restart`); a box not started yet
    /// just starts.
    pub(super) async fn restart(self: &Arc<Self>) -> Result<()> {
        let mut st = self.state.lock().await;
        match st.phase {
            Phase::NotStarted => {
                drop(st);
                return self.start().await;
            }
            Phase::Stopped => return Err(CodeBoxError::not_running("the box was stopped")),
            Phase::Running | Phase::Dead => {}
        }
        self.set_snapshot(|s| s.state = BoxState::Restarting);
        let Some(run) = st.run.as_ref() else {
            return Err(CodeBoxError::not_running("the box has no kernel"));
        };
        run.kernel.shutdown(Duration::from_secs(1)).await;
        self.replace_kernel(&mut st).await?;
        // Asked for: the budget of crash restarts starts afresh, and no old cause lingers.
        st.restart_times.clear();
        self.set_snapshot(|s| s.detail = None);
        Ok(())
    }

    /// Shut the kernel down, release the confinement and remove (or keep) the working
    /// directory. Stopping twice is fine.
    pub(super) async fn stop(&self) {
        // Background processes end first: they run in the confinement released below.
        self.processes.close_all().await;
        // Every context's kernel ends with the box, before its confinement is released; and
        // before the state lock is taken, since a context restarting its kernel holds its
        // own lock while it asks for the state.
        self.contexts.close_all().await;
        let mut st = self.state.lock().await;
        if st.phase == Phase::Stopped {
            return;
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
            if self.config.keep_working_dir {
                let _ = dir.keep();
            } else {
                // The box's code shaped the tree: its removal is blocking work of any length.
                let removed = tokio::task::spawn_blocking(move || dir.close()).await;
                if let Ok(Err(e)) = removed {
                    tracing::warn!(box_id = %self.id, "removing the working directory failed: {e}");
                }
            }
        }
        st.phase = Phase::Stopped;
        self.set_snapshot(|s| {
            s.state = BoxState::Stopped;
            s.detail = None;
        });
    }

    /// The running kernel, starting the box on first use and replacing a dead kernel.
    pub(super) async fn handle(self: &Arc<Self>) -> Result<Handle> {
        loop {
            let mut st = self.state.lock().await;
            match st.phase {
                Phase::NotStarted => {
                    drop(st);
                    self.start().await?;
                    continue;
                }
                Phase::Stopped => {
                    return Err(CodeBoxError::not_running("the box was stopped"));
                }
                Phase::Dead => {
                    let detail = self.snapshot().detail;
                    return Err(CodeBoxError::not_running(detail.unwrap_or_else(|| "the kernel is dead".into())));
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
                scratch_dir: run.spec.scratch_dir.clone(),
            });
        }
    }

    /// What a code context needs of the box, starting it on first use: its root,
    /// confinement and launch spec. The box's own kernel may be dead (even past its budget):
    /// a context's kernel is its own, and runs on.
    pub(super) async fn context_parts(self: &Arc<Self>) -> Result<BoxParts> {
        loop {
            let st = self.state.lock().await;
            match st.phase {
                Phase::NotStarted => {
                    drop(st);
                    self.start().await?;
                    continue;
                }
                Phase::Stopped => return Err(CodeBoxError::not_running("the box was stopped")),
                Phase::Running | Phase::Dead => {}
            }
            let Some(run) = st.run.as_ref() else {
                return Err(CodeBoxError::not_running("the box has no kernel"));
            };
            return Ok(BoxParts {
                root: run.root.clone(),
                confinement: run.confinement.clone(),
                spec: run.spec.clone(),
            });
        }
    }

    /// The handle of a running box, without starting it.
    pub(super) async fn running(self: &Arc<Self>) -> Result<Handle> {
        if self.state.lock().await.phase == Phase::NotStarted {
            return Err(CodeBoxError::not_running("the box has not been started"));
        }
        self.handle().await
    }

    /// The language of the box's kernel: the one it started, else what its kernelspec
    /// declares (`None` when that cannot be told yet).
    pub(super) fn kernel_language(&self) -> Option<String> {
        self.snapshot()
            .language
            .or_else(|| crate::kernelspec::declared_language(&self.config.kernel, self.config.python.as_deref()))
    }

    /// Whether the box's kernel runs Python: only then does the box take Python code,
    /// per-execution `cwd` and `env` (set by Python statements) and `install`.
    pub(super) fn runs_python(&self) -> bool {
        self.kernel_language().is_some_and(|l| crate::kernelspec::is_python(&l))
    }

    pub(super) fn limits(&self, timeout: Option<Duration>) -> ExecLimits {
        ExecLimits {
            timeout: timeout.or(self.config.timeout),
            output_limit: self.config.output_limit,
            interrupt_grace: self.config.interrupt_grace,
        }
    }
}

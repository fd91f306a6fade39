//! `LocalBoxBuilder`: the settings of a [`LocalBox`] and their checks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use codebox_core::{CodeBoxError, CodeBoxSettings, Result};
use codebox_sandbox::{Isolation, SandboxPolicy};

use super::{DEFAULT_OUTPUT_LIMIT, LocalBox};
use crate::kernelspec::LaunchSpec;
use crate::pool::KernelPool;
use crate::progress::{ProgressFn, ProvisionEvent};
use crate::python::{Provision, PythonProfile};
use crate::template::Template;

/// Builds a [`LocalBox`]. Get one from [`LocalBox::builder`].
#[derive(Clone)]
pub struct LocalBoxBuilder {
    pub(super) config: Config,
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

/// Everything a [`LocalBoxBuilder`] sets.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) python: Option<PathBuf>,
    pub(crate) provision: Provision,
    pub(crate) profile: PythonProfile,
    pub(crate) progress: Option<ProgressFn>,
    pub(crate) kernel: String,
    pub(crate) timeout: Option<Duration>,
    pub(crate) output_limit: usize,
    pub(crate) interrupt_grace: Duration,
    pub(crate) start_timeout: Duration,
    pub(crate) working_dir: Option<PathBuf>,
    pub(crate) keep_working_dir: bool,
    pub(crate) pool: Option<KernelPool>,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) max_restarts: usize,
    pub(crate) restart_window: Duration,
    pub(crate) sandbox: SandboxPolicy,
    /// Where temporary working directories and kernel runtime directories go.
    pub(crate) scratch_dir: Option<PathBuf>,
    /// Fork lean kernels from a fork server where they can be (see `with_fork_server`).
    pub(crate) fork_server: bool,
    /// The language of executions that name none (`None`: the kernel's own).
    pub(crate) language: Option<String>,
    /// Packages of the template's own Python environment (empty: the managed one).
    pub(crate) packages: Vec<String>,
    /// The template the box is made from, when it is.
    pub(crate) template: Option<String>,
    /// A template name that is not a built-in: refused by `build`.
    pub(crate) unknown_template: Option<String>,
    /// How many code contexts the box may have besides its own kernel.
    pub(crate) max_contexts: usize,
    /// How many background processes the box may run at once.
    pub(crate) max_processes: usize,
    /// Whether executions are recorded in the history and list their artifacts.
    pub(crate) execution_tracking: bool,
    /// Where `save` and `pause` write the box's snapshot, and `resume` reads it.
    pub(crate) state_dir: Option<PathBuf>,
    /// How long a pause waits for a running execution before interrupting it.
    pub(crate) pause_wait: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            python: None,
            provision: Provision::Auto,
            profile: PythonProfile::Data,
            progress: None,
            kernel: crate::LEAN_KERNEL.into(),
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
            scratch_dir: None,
            fork_server: true,
            language: None,
            packages: Vec::new(),
            template: None,
            unknown_template: None,
            max_contexts: codebox_core::DEFAULT_MAX_CONTEXTS,
            max_processes: super::processes::DEFAULT_MAX_PROCESSES,
            execution_tracking: true,
            state_dir: None,
            pause_wait: super::pause::DEFAULT_PAUSE_WAIT,
        }
    }
}

impl Config {
    /// The box's Python, made ready first when needed. A deno box needs no ipykernel: its
    /// Python (for commands) is any python3, and Deno is what is made ready.
    pub(super) async fn python(&self) -> Result<PathBuf> {
        let (python, provision, profile, progress) =
            (self.python.clone(), self.provision, self.profile, self.progress.clone());
        let packages = self.packages.clone();
        let deno = self.kernel == crate::kernelspec::DENO_KERNEL;
        tokio::task::spawn_blocking(move || {
            if deno {
                let python = crate::deno::base_python(python.as_deref())?;
                crate::deno::resolve(provision, &python, progress.as_ref())?;
                return Ok(python);
            }
            if packages.is_empty() {
                crate::python::resolve(python.as_deref(), provision, profile, progress.as_ref())
            } else {
                crate::python::resolve_template(provision, profile, &packages, progress.as_ref())
            }
        })
        .await
        .map_err(|e| CodeBoxError::kernel_start(format!("provisioning task failed: {e}")))?
    }

    /// The environment of the kernel and of commands: ours, the environment's `bin` first on
    /// `PATH`, and the builder's variables.
    pub(super) fn child_env(&self, python: &Path) -> Vec<(String, String)> {
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

    pub(super) fn spec_for(&self, python: &Path) -> Result<LaunchSpec> {
        let mut spec =
            crate::kernelspec::launch_spec(&self.kernel, python, self.child_env(python), self.start_timeout)?;
        spec.sandbox = Arc::new(self.sandbox.clone());
        if let Some(dir) = &self.scratch_dir {
            spec.scratch_dir.clone_from(dir);
        }
        spec.fork = self.fork_server;
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

    /// The kernel to run: [`LEAN_KERNEL`](crate::LEAN_KERNEL) (the default: IPython over the
    /// box's Python without ipykernel: shorter round trips and starts, no widgets or
    /// debugger), `python3` (ipykernel over the box's Python), [`DENO_KERNEL`](crate::DENO_KERNEL)
    /// (JavaScript and TypeScript through `deno jupyter`; Deno is `CODEBOX_DENO` or fetched
    /// on first use, see [`managed_deno_dir`](crate::managed_deno_dir)), or the name of an
    /// installed kernelspec.
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
    /// killed and restarted (default 5 s). It is interrupted again each second of the grace,
    /// as is an execution whose caller dropped its stream.
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

    /// How many code contexts ([`CodeBox::create_context`](codebox_core::CodeBox::create_context))
    /// the box may have besides its own kernel (default 8). Each is a kernel process that
    /// counts against the box's memory and process limits.
    pub fn with_max_contexts(mut self, contexts: usize) -> Self {
        self.config.max_contexts = contexts;
        self
    }

    /// How many background processes ([`CodeBox::start_process`](codebox_core::CodeBox::start_process))
    /// the box may run at once (default 32); one more is refused with
    /// [`InvalidInput`](codebox_core::ErrorKind::InvalidInput) until one ends. They count
    /// against the box's memory and process limits too.
    pub fn with_max_processes(mut self, processes: usize) -> Self {
        self.config.max_processes = processes;
        self
    }

    /// How many crash restarts are allowed within `window` before the box is declared dead
    /// (default 3 within 60 s).
    pub fn with_restart_limit(mut self, restarts: usize, window: Duration) -> Self {
        self.config.max_restarts = restarts;
        self.config.restart_window = window;
        self
    }

    /// How the box's kernels, commands and `bash` cells are confined: isolation level,
    /// network, resource limits, session uids and cgroups (default
    /// [`SandboxPolicy::default`]: the strongest isolation this machine allows, no network,
    /// the local [`Limits`](codebox_sandbox::Limits), this process's uid). Boxes with equal
    /// policies share kernels from a [`KernelPool`].
    pub fn with_sandbox(mut self, policy: SandboxPolicy) -> Self {
        self.config.sandbox = policy;
        self
    }

    /// Fork the box's lean kernels from a fork server, a Python that has imported the
    /// kernel's modules once, instead of starting a Python for each (default on). A forked
    /// kernel starts in a fraction of the time and shares those modules' memory with every
    /// other kernel forked alike; it is confined exactly as an executed one, and it shares
    /// the fork server's address layout and string hash seed (see docs/security.md). Only
    /// the lean kernel at the bubblewrap isolation level is forked; other kernels and levels
    /// are always executed.
    pub fn with_fork_server(mut self, on: bool) -> Self {
        self.config.fork_server = on;
        self
    }

    /// Make the box's temporary working directory and its kernels' runtime directories in
    /// `dir` (default: the temporary directory; runtime directories prefer
    /// `XDG_RUNTIME_DIR`). A host of many boxes points this at a directory it sweeps.
    pub fn with_scratch_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.scratch_dir = Some(dir.into());
        self
    }

    /// Make the box from the built-in template `name` (see [`Template::builtins`]): its
    /// kernel, default language, Python environment, variables and limits. An unknown name
    /// is refused by [`build`](Self::build), naming the templates there are.
    pub fn with_template(self, name: &str) -> Self {
        match Template::builtin(name) {
            Ok(template) => self.with_template_def(template),
            Err(_) => {
                let mut builder = self;
                builder.config.unknown_template = Some(name.to_owned());
                builder
            }
        }
    }

    /// Make the box from `template`: its kernel and default language; its Python environment
    /// (the managed one of its profile, or, when it has packages, one of its own built on
    /// first use and shared by every box of the template); its environment variables over
    /// the builder's; and its limits over the builder's [`SandboxPolicy`] limits. Settings
    /// made after this one win.
    pub fn with_template_def(mut self, template: Template) -> Self {
        let c = &mut self.config;
        c.kernel = template.kernel().to_owned();
        c.language = Some(template.language().to_owned());
        c.profile = template.profile();
        c.packages = template.packages().to_vec();
        c.env.extend(template.env().iter().map(|(k, v)| (k.clone(), v.clone())));
        c.sandbox.limits = crate::factory::sandbox_limits(&c.sandbox.limits, template.limits());
        c.template = Some(template.name().to_owned());
        c.unknown_template = None;
        self
    }

    /// The language of executions that name none (default: the kernel's own). The
    /// [`bash`](Template::builtins) template sets `bash`.
    pub fn with_default_language(mut self, language: impl Into<String>) -> Self {
        self.config.language = Some(language.into());
        self
    }

    /// Whether the box keeps an execution history and lists each execution's artifacts
    /// (default on). Off, `history` and `execution_stats` answer `Unsupported`, executions
    /// list no artifacts, `save_images` saves nothing, and the capabilities say so: for a
    /// box that wants the bare round trip.
    pub fn with_execution_tracking(mut self, tracking: bool) -> Self {
        self.config.execution_tracking = tracking;
        self
    }

    /// Keep the box's snapshots in `dir` (made when missing): [`LocalBox::save`] and
    /// [`pause`](codebox_core::CodeBox::pause) write there, atomically (a crash mid-save
    /// leaves the previous snapshot or none), and [`LocalBoxBuilder::resume`] or
    /// [`LocalBox::resume`] bring the box back from there, in this process or a later one.
    pub fn with_state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.state_dir = Some(dir.into());
        self
    }

    /// How long a pause waits for a running execution to finish before it interrupts it
    /// (default 10 s); the report says when it did.
    pub fn with_pause_wait(mut self, wait: Duration) -> Self {
        self.config.pause_wait = wait;
        self
    }

    /// Take kernels from `pool`, or from none.
    pub(crate) fn set_pool(mut self, pool: Option<KernelPool>) -> Self {
        self.config.pool = pool;
        self
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// Check the settings and make the box. Nothing starts until
    /// [`CodeBox::start`](codebox_core::CodeBox::start) (or the first call that needs the
    /// kernel).
    pub fn build(self) -> Result<LocalBox> {
        self.check()?;
        Ok(LocalBox::from_config(self.config))
    }

    /// Check the settings and make the box under the name `id`.
    pub(super) fn build_named(self, id: String) -> Result<LocalBox> {
        self.check()?;
        Ok(LocalBox::from_config_named(self.config, id))
    }

    fn check(&self) -> Result<()> {
        let c = &self.config;
        if let Some(name) = &c.unknown_template {
            // Fails for the name `with_template` could not find, saying which there are.
            Template::builtin(name)?;
        }
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use codebox_sandbox::Limits;

    use super::*;

    /// A box's pool key: the launch spec its builder makes.
    fn key(builder: LocalBoxBuilder) -> LaunchSpec {
        builder.config().spec_for(Path::new("/usr/bin/python3")).unwrap()
    }

    #[test]
    fn boxes_confined_differently_have_different_pool_keys() {
        let plain = || LocalBox::builder();
        assert_eq!(key(plain()), key(plain().with_sandbox(SandboxPolicy::default())));
        assert_ne!(key(plain()), key(plain().with_sandbox(SandboxPolicy::default().with_network(true))));
        let half_cpu = SandboxPolicy::default().with_limits(Limits::default().with_cpu(Some(0.5)));
        assert_ne!(key(plain()), key(plain().with_sandbox(half_cpu)));
        assert_ne!(key(plain()), key(plain().with_scratch_dir("/var/tmp")));
    }
}

//! Code contexts of a box: kernels of their own beside the box's kernel (the default
//! context), each with its own variables and its own execution lock, so that executions in
//! different contexts run at the same time.
//!
//! A context's kernel is started like the box's (the same launch spec in the same
//! confinement, so the same uid, cgroup, limits, working directory and environment; but
//! `Kernel::start_sharing`: its death takes only its own process group along, never the box's
//! kernel), then moved to the context's starting directory. A context's
//! kernel that died is replaced on its next use, within the box's restart budget; past it the
//! context reports itself dead until `restart_context`. Stopping the box ends every context's
//! kernel; dropping it kills them (each `Kernel` kills its process group when dropped).

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use codebox_core::{CodeBoxError, ContextInfo, EventStream, Result, RunOptions, unknown_context};
use tokio::time::Instant;

use super::supervisor::{BoxParts, Inner, restart_allowed, retire};
use crate::exec::{around_code, check_env, run_silent};
use crate::kernel::{ExitReason, Kernel};
use crate::kernelspec::{DENO_KERNEL, DENO_LANGUAGES, LaunchSpec, is_python};

/// How long a context's kernel gets to shut down cleanly before it is signalled.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The box's contexts besides its default one.
#[derive(Default)]
pub(super) struct Contexts {
    registry: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    by_id: BTreeMap<String, Arc<Context>>,
    /// Contexts whose kernel is starting: they count against the bound already.
    starting: usize,
    /// Set when the box stops: no context may be added until it starts again.
    closed: bool,
}

/// One context: its kernel, and the lock that runs its executions one at a time.
struct Context {
    id: String,
    language: String,
    /// The starting directory as given (relative to the working directory), and as a path
    /// on this machine.
    cwd: Option<(String, PathBuf)>,
    exec_lock: Arc<tokio::sync::Mutex<()>>,
    kernel: tokio::sync::Mutex<ContextKernel>,
}

struct ContextKernel {
    /// `None` once the context was deleted or the box stopped.
    current: Option<Arc<Kernel>>,
    /// Crash restarts within the box's restart window.
    restart_times: VecDeque<Instant>,
    /// Why the context is dead, once its kernel died past the restart budget.
    dead: Option<String>,
}

/// A reserved place among the box's contexts, given back when dropped (the context is then
/// in the registry, or its start failed).
struct Reservation<'a>(&'a Contexts);

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.0.lock().starting -= 1;
    }
}

impl Contexts {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The box started: contexts may be made.
    pub(super) fn open(&self) {
        self.lock().closed = false;
    }

    /// End every context's kernel (the box stops). Contexts made meanwhile are refused.
    pub(super) async fn close_all(&self) {
        let all: Vec<Arc<Context>> = {
            let mut registry = self.lock();
            registry.closed = true;
            std::mem::take(&mut registry.by_id).into_values().collect()
        };
        futures::future::join_all(all.iter().map(|c| c.end())).await;
    }

    fn get(&self, id: &str) -> Result<Arc<Context>> {
        self.lock().by_id.get(id).cloned().ok_or_else(|| unknown_context(id))
    }

    fn reserve(&self, max: usize) -> Result<Reservation<'_>> {
        let mut registry = self.lock();
        if registry.by_id.len() + registry.starting >= max {
            return Err(CodeBoxError::invalid(format!(
                "this box has {max} code contexts besides its own kernel, its maximum: delete one first"
            )));
        }
        registry.starting += 1;
        Ok(Reservation(self))
    }

    /// The process ids of the contexts' running kernels, by context id.
    pub(super) async fn kernel_pids(&self) -> Vec<i32> {
        let all: Vec<Arc<Context>> = self.lock().by_id.values().cloned().collect();
        let mut pids = Vec::with_capacity(all.len());
        for context in all {
            if let Some(k) = context.kernel.lock().await.current.as_ref() {
                pids.push(k.pid());
            }
        }
        pids
    }

    /// The contexts, by id.
    pub(super) fn list(&self) -> Vec<ContextInfo> {
        self.lock().by_id.values().map(|c| c.info()).collect()
    }
}

impl Context {
    fn info(&self) -> ContextInfo {
        ContextInfo::new(self.id.clone(), self.language.clone()).with_cwd(self.cwd.as_ref().map(|(c, _)| c.clone()))
    }

    /// Whether code named `language` may run in this context.
    fn takes(&self, language: &str) -> bool {
        language == self.language
            || (is_python(language) && is_python(&self.language))
            || (DENO_LANGUAGES.contains(&language) && DENO_LANGUAGES.contains(&self.language.as_str()))
    }

    /// The context's kernel, replacing one that died (within the box's restart budget).
    async fn live_kernel(&self, inner: &Arc<Inner>) -> Result<Arc<Kernel>> {
        let mut k = self.kernel.lock().await;
        let Some(current) = k.current.clone() else {
            return Err(unknown_context(&self.id));
        };
        if !current.is_dead() {
            return Ok(current);
        }
        if let Some(detail) = &k.dead {
            return Err(CodeBoxError::not_running(detail.clone()));
        }
        let window = inner.config.restart_window;
        if current.exit_reason() == ExitReason::Unexpected
            && !restart_allowed(&mut k.restart_times, inner.config.max_restarts, window)
        {
            let cause = current.death().borrow().clone();
            let detail = format!(
                "the kernel of code context {:?} died {} times within {window:?} (last: {}); call \
                 restart_context to try again",
                self.id,
                k.restart_times.len() + 1,
                cause.map(|c| c.to_string()).unwrap_or_default()
            );
            tracing::warn!(box_id = %inner.id, context = %self.id, "{detail}");
            k.dead = Some(detail.clone());
            return Err(CodeBoxError::not_running(detail));
        }
        tracing::info!(box_id = %inner.id, context = %self.id, "a context's kernel exited; restarting it");
        let fresh = self.start_kernel(inner).await?;
        if let Some(old) = k.current.replace(fresh.clone()) {
            retire(old);
        }
        Ok(fresh)
    }

    /// A kernel started like the box's own, in the context's starting directory.
    async fn start_kernel(&self, inner: &Arc<Inner>) -> Result<Arc<Kernel>> {
        let parts = inner.context_parts().await?;
        start_in(&parts, self.cwd.as_ref().map(|(_, dir)| dir.as_path())).await
    }

    /// Shut the kernel down; the context is gone.
    async fn end(&self) {
        let kernel = self.kernel.lock().await.current.take();
        if let Some(kernel) = kernel {
            kernel.shutdown(SHUTDOWN_GRACE).await;
            retire(kernel);
        }
    }
}

/// Start a kernel from the box's launch spec and confinement, and move it to `dir`.
async fn start_in(parts: &BoxParts, dir: Option<&Path>) -> Result<Arc<Kernel>> {
    let chdir = match dir {
        Some(dir) => Some(chdir_code(&parts.spec, dir).ok_or_else(|| cwd_unsupported(&parts.spec))?),
        None => None,
    };
    // The box's kernel shares the confinement: this kernel's death must not take it along.
    let kernel = Kernel::start_sharing(&parts.spec, parts.confinement.clone()).await?;
    if let Some(code) = chdir
        && let Err(e) = run_silent(&kernel, &code).await
    {
        kernel.kill(ExitReason::Requested);
        retire(kernel);
        return Err(e);
    }
    Ok(kernel)
}

/// The statement that makes a kernel of `spec` change its directory to `dir`, when its
/// language has one codebox knows.
fn chdir_code(spec: &LaunchSpec, dir: &Path) -> Option<String> {
    let dir = serde_json::to_string(&dir.to_string_lossy()).ok()?;
    if is_python(&spec.language) {
        Some(format!("import os as __codebox_os\n__codebox_os.chdir({dir})\ndel __codebox_os"))
    } else if spec.name == DENO_KERNEL {
        // A JSON string is a JavaScript string literal.
        Some(format!("Deno.chdir({dir})"))
    } else {
        None
    }
}

fn cwd_unsupported(spec: &LaunchSpec) -> CodeBoxError {
    CodeBoxError::invalid(format!(
        "a code context's cwd needs a Python or Deno kernel; this box's kernel {:?} runs {:?}",
        spec.name, spec.language
    ))
}

/// The language of a new context: one the box's kernel runs (`None`: the box's own).
fn context_language(inner: &Inner, spec: &LaunchSpec, asked: Option<&str>) -> Result<String> {
    let deno = spec.name == DENO_KERNEL;
    let own = if is_python(&spec.language) {
        "python".to_owned()
    } else if deno {
        inner.config.language.clone().filter(|l| DENO_LANGUAGES.contains(&l.as_str())).unwrap_or(spec.language.clone())
    } else {
        spec.language.clone()
    };
    let Some(asked) = asked else { return Ok(own) };
    if super::is_bash(asked) {
        return Err(CodeBoxError::invalid(format!(
            "{asked:?} keeps no state between executions, so it runs in no code context; \
             a context runs the box's kernel language {own:?}"
        )));
    }
    if is_python(asked) && is_python(&spec.language) {
        return Ok("python".to_owned());
    }
    if (deno && DENO_LANGUAGES.contains(&asked)) || asked == spec.language || asked == spec.name {
        return Ok(asked.to_owned());
    }
    let choices = if deno { DENO_LANGUAGES.join(", ") } else { own };
    Err(CodeBoxError::invalid(format!(
        "a code context of this box runs its kernel's language, not {asked:?}: use one of {choices}"
    )))
}

fn fresh_id() -> String {
    format!("ctx-{}", crate::util::random_hex(8))
}

/// Make a context: a kernel like the box's own, in `cwd` (checked by the box's root).
pub(super) async fn create(inner: &Arc<Inner>, language: Option<&str>, cwd: Option<&str>) -> Result<ContextInfo> {
    create_named(inner, language, cwd, fresh_id()).await
}

/// Make a context named `id` (a resumed box's contexts keep their names).
pub(super) async fn create_named(
    inner: &Arc<Inner>,
    language: Option<&str>,
    cwd: Option<&str>,
    id: String,
) -> Result<ContextInfo> {
    let parts = inner.context_parts().await?;
    let language = context_language(inner, &parts.spec, language)?;
    let cwd = match cwd {
        Some(c) => {
            let rel = parts.root.check_dir(c)?;
            (!rel.as_os_str().is_empty()).then(|| (rel.to_string_lossy().into_owned(), parts.root.path().join(&rel)))
        }
        None => None,
    };
    if let Some((_, dir)) = &cwd {
        chdir_code(&parts.spec, dir).ok_or_else(|| cwd_unsupported(&parts.spec))?;
    }
    let _reserved = inner.contexts.reserve(inner.config.max_contexts)?;
    let kernel = start_in(&parts, cwd.as_ref().map(|(_, dir)| dir.as_path())).await?;
    let context = Arc::new(Context {
        id,
        language,
        cwd,
        exec_lock: Arc::new(tokio::sync::Mutex::new(())),
        kernel: tokio::sync::Mutex::new(ContextKernel {
            current: Some(kernel),
            restart_times: VecDeque::new(),
            dead: None,
        }),
    });
    let info = context.info();
    let refused = {
        let mut registry = inner.contexts.lock();
        if registry.closed {
            true
        } else {
            registry.by_id.insert(context.id.clone(), context.clone());
            false
        }
    };
    if refused {
        context.end().await;
        return Err(CodeBoxError::not_running("the box was stopped while the code context started"));
    }
    tracing::debug!(box_id = %inner.id, context = %info.id, "code context made");
    Ok(info)
}

/// Run code in context `id`, beside executions of the other contexts.
pub(super) async fn run_stream(inner: &Arc<Inner>, id: &str, code: &str, options: RunOptions) -> Result<EventStream> {
    let context = inner.contexts.get(id)?;
    if let Some(language) = options.language.as_deref()
        && !context.takes(language)
    {
        return Err(CodeBoxError::invalid(format!(
            "code context {id:?} runs {:?}, not {language:?} (bash runs in no context)",
            context.language
        )));
    }
    check_env(&options.env)?;
    let guard = context.exec_lock.clone().lock_owned().await;
    let kernel = context.live_kernel(inner).await?;
    let parts = inner.context_parts().await?;
    parts.confinement.note_kernel_alive(|| kernel.is_running());
    let cwd = match options.cwd.as_deref() {
        Some(c) => Some(parts.root.path().join(parts.root.check_dir(c)?)),
        None => None,
    };
    let around = cwd.is_some() || !options.env.is_empty();
    if around && !is_python(&context.language) {
        return Err(CodeBoxError::invalid(format!(
            "a per-execution cwd or env needs a Python kernel; code context {id:?} runs {:?}",
            context.language
        )));
    }
    let around = around.then(|| around_code(cwd.as_deref(), &options.env));
    let limits = inner.limits(options.timeout);
    let tracking = inner.tracking(&parts.root, options.save_images).await;
    crate::exec::execute(&inner.id, kernel, code, limits, around, guard, tracking, Some(context.id.clone())).await
}

/// Interrupt what context `id` runs.
pub(super) async fn interrupt(inner: &Arc<Inner>, id: &str) -> Result<()> {
    let context = inner.contexts.get(id)?;
    let kernel = context.live_kernel(inner).await?;
    kernel.interrupt().await
}

/// Shut context `id`'s kernel down and start a fresh one: its variables are gone, and its
/// restart budget starts afresh.
pub(super) async fn restart(inner: &Arc<Inner>, id: &str) -> Result<()> {
    let context = inner.contexts.get(id)?;
    let mut k = context.kernel.lock().await;
    let Some(old) = k.current.clone() else {
        return Err(unknown_context(id));
    };
    old.shutdown(SHUTDOWN_GRACE).await;
    match context.start_kernel(inner).await {
        Ok(fresh) => {
            if let Some(old) = k.current.replace(fresh) {
                retire(old);
            }
            k.restart_times.clear();
            k.dead = None;
            Ok(())
        }
        Err(e) => {
            k.dead = Some(format!("restarting the kernel of code context {id:?} failed: {e}"));
            Err(e)
        }
    }
}

/// End context `id` and its kernel.
pub(super) async fn delete(inner: &Arc<Inner>, id: &str) -> Result<()> {
    let context = inner.contexts.lock().by_id.remove(id).ok_or_else(|| unknown_context(id))?;
    context.end().await;
    tracing::debug!(box_id = %inner.id, context = %id, "code context deleted");
    Ok(())
}

/// The process id of context `id`'s kernel, while it has one.
/// A context held still for a pause: its executions wait behind `_guard`.
pub(super) struct Held {
    pub(super) info: ContextInfo,
    /// Its kernel, when it has a live one.
    pub(super) kernel: Option<Arc<Kernel>>,
    /// Whether a running execution had to be interrupted.
    pub(super) interrupted: bool,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

/// Hold every context still for a pause: wait for each one's running execution up to
/// `wait`, then interrupt it (and wait its grace again), and keep its lock.
pub(super) async fn hold_all(inner: &Arc<Inner>, wait: Duration) -> Result<Vec<Held>> {
    let all: Vec<Arc<Context>> = inner.contexts.lock().by_id.values().cloned().collect();
    let mut held = Vec::with_capacity(all.len());
    for context in all {
        let lock = || context.exec_lock.clone().lock_owned();
        let (guard, interrupted) = match tokio::time::timeout(wait, lock()).await {
            Ok(guard) => (guard, false),
            Err(_) => {
                if let Some(kernel) = context.kernel.lock().await.current.clone() {
                    let _ = kernel.interrupt().await;
                }
                let bound = inner.config.interrupt_grace + SHUTDOWN_GRACE + wait;
                let guard = tokio::time::timeout(bound, lock()).await.map_err(|_| {
                    CodeBoxError::invalid(format!(
                        "box {}: the execution in context {} did not end within {bound:?} of its interrupt; nothing \
                         was saved",
                        inner.id, context.id
                    ))
                })?;
                (guard, true)
            }
        };
        let kernel = context.kernel.lock().await.current.clone().filter(|k| !k.is_dead());
        held.push(Held { info: context.info(), kernel, interrupted, _guard: guard });
    }
    Ok(held)
}

/// Context `id`'s kernel, while it has one.
pub(super) async fn current_kernel(inner: &Inner, id: &str) -> Option<Arc<Kernel>> {
    let context = inner.contexts.get(id).ok()?;
    context.kernel.lock().await.current.clone()
}

pub(super) async fn kernel_pid(inner: &Inner, id: &str) -> Option<i32> {
    let context = inner.contexts.get(id).ok()?;
    context.kernel.lock().await.current.as_ref().map(|k| k.pid())
}

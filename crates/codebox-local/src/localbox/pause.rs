//! Saving a box to its state directory, pausing it (save, then stop: its uid, cgroup and
//! memory go back), and resuming it from there: files first (before the kernel starts, as
//! the box's uid), then each Python kernel's namespace, then the history. What cannot come
//! back is named in the resume's report and in a display of the first execution after it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use codebox_core::{
    CodeBoxError, ContextSnapshot, DEFAULT_CONTEXT, EventStream, ExecEvent, MimeBundle, PauseReport,
    RESUME_NOTICE_MIME, Result, ResumeReport, SnapshotRung,
};
use codebox_sandbox::Confinement;
use futures::StreamExt;

use super::supervisor::Inner;
use super::{LocalBox, LocalBoxBuilder};
use crate::snapshot::store::{self, Manifest, SavedContext, Snapshot, Writer};
use crate::snapshot::{PAUSE_DIR, SKIPPED, restore_namespace, save_namespace, stem};

/// How long a pause waits for a running execution before interrupting it.
pub(crate) const DEFAULT_PAUSE_WAIT: Duration = Duration::from_secs(10);

/// How long a pause waits for the box's confinement to be let go of (its uid freed).
const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// How long an interrupted execution may take to give the box back, beyond its own grace.
const AFTER_INTERRUPT: Duration = Duration::from_secs(5);

fn no_state_dir() -> CodeBoxError {
    CodeBoxError::invalid(
        "this box has no state directory to save to: build it with LocalBox::builder().with_state_dir(dir)",
    )
}

fn blocking_failed(what: &str, e: tokio::task::JoinError) -> CodeBoxError {
    CodeBoxError::io(what.to_owned(), std::io::Error::other(e.to_string()))
}

/// Why a snapshot cannot be resumed, naming the box and where its files still are.
fn cannot_resume(box_id: &str, files: Option<&Path>, e: store::SnapshotError) -> CodeBoxError {
    let files = files.filter(|f| f.is_dir()).map(|f| format!("; its files are still in {}", f.display()));
    let message = format!("cannot resume box {box_id}: {e}{}", files.unwrap_or_default());
    match e {
        store::SnapshotError::Missing(_) => CodeBoxError::not_found(message),
        _ => CodeBoxError::invalid(message),
    }
}

/// The weakest rung of `contexts` (files when there are none).
fn weakest<'a>(contexts: impl IntoIterator<Item = &'a ContextSnapshot>) -> SnapshotRung {
    contexts.into_iter().map(|c| c.rung).max().unwrap_or(SnapshotRung::Files)
}

/// Restore `snapshot`'s files into a resumed box's working directory, owned by its uid.
pub(super) async fn restore_files(
    inner: &Inner,
    snapshot: &Arc<Snapshot>,
    workdir: &Path,
    confinement: &Confinement,
) -> Result<()> {
    let (snap, to, uid) = (snapshot.clone(), workdir.to_owned(), confinement.uid());
    let restored = tokio::task::spawn_blocking(move || store::restore_tree(&snap, &to, uid))
        .await
        .map_err(|e| blocking_failed("restoring files", e))?;
    let files = restored.map_err(|e| cannot_resume(&inner.id, Some(&snapshot.files_dir()), e))?;
    inner.files_restored.store(files, Ordering::Relaxed);
    Ok(())
}

/// Take the box's execution lock, waiting for a running execution up to the box's bound,
/// then interrupting it. Says whether it interrupted.
async fn quiesce(inner: &Arc<Inner>) -> Result<(tokio::sync::OwnedMutexGuard<()>, bool)> {
    let lock = || inner.exec_lock.clone().lock_owned();
    if let Ok(guard) = tokio::time::timeout(inner.config.pause_wait, lock()).await {
        return Ok((guard, false));
    }
    tracing::info!(box_id = %inner.id, "an execution outlasted the pause's wait: interrupting it");
    if let Ok(h) = inner.running().await {
        let _ = h.kernel.interrupt().await;
    }
    // A kernel that ignores the interrupt is killed by its execution after the grace.
    let bound = inner.config.interrupt_grace + AFTER_INTERRUPT;
    let guard = tokio::time::timeout(bound, lock()).await.map_err(|_| {
        CodeBoxError::invalid(format!(
            "box {}: the running execution did not end within {bound:?} of its interrupt; nothing was saved",
            inner.id
        ))
    })?;
    Ok((guard, true))
}

/// Write the box's snapshot: its namespace, its files and its history.
pub(super) async fn save(inner: &Arc<Inner>) -> Result<PauseReport> {
    let started = Instant::now();
    let state_dir = inner.config.state_dir.clone().ok_or_else(no_state_dir)?;
    let (guard, interrupted) = quiesce(inner).await?;
    let h = inner.handle().await?;
    let workdir = h.root.path().to_owned();
    let mut report = PauseReport::new(inner.id.clone(), SnapshotRung::Files);
    report.interrupted = interrupted;
    if inner.runs_python() {
        let (context, lost) = save_namespace(&h.kernel, &workdir, DEFAULT_CONTEXT, "python", &stem(0)).await?;
        report.contexts.push(context);
        report.unrestored.extend(lost);
    } else {
        let language = inner.kernel_language().unwrap_or_else(|| inner.config.kernel.clone());
        let mut context = ContextSnapshot::new(DEFAULT_CONTEXT, language, SnapshotRung::Files);
        context.note = Some(if inner.config.kernel == crate::kernelspec::DENO_KERNEL {
            "JavaScript and TypeScript kernels keep their files only: their variables are not saved".to_owned()
        } else {
            "a kernel that does not run Python keeps its files only: its variables are not saved".to_owned()
        });
        report.contexts.push(context);
    }
    let held = super::contexts::hold_all(inner, inner.config.pause_wait).await?;
    let mut saved_contexts = Vec::with_capacity(held.len());
    for (index, context) in held.iter().enumerate() {
        let info = &context.info;
        report.interrupted |= context.interrupted;
        let mut saved =
            SavedContext { id: info.id.clone(), language: info.language.clone(), cwd: info.cwd.clone(), stem: None };
        match &context.kernel {
            Some(kernel) if crate::kernelspec::is_python(&info.language) => {
                let name = stem(index + 1);
                let (snapshot, lost) = save_namespace(kernel, &workdir, &info.id, &info.language, &name).await?;
                report.contexts.push(snapshot);
                report.unrestored.extend(lost);
                saved.stem = Some(name);
            }
            kernel => {
                let mut snapshot = ContextSnapshot::new(info.id.clone(), info.language.clone(), SnapshotRung::Files);
                snapshot.note = Some(if kernel.is_none() {
                    "the context had no live kernel: it is made again with no variables".to_owned()
                } else {
                    "a kernel that does not run Python keeps its files only: its variables are not saved".to_owned()
                });
                report.contexts.push(snapshot);
            }
        }
        saved_contexts.push(saved);
    }
    report.rung = weakest(&report.contexts);
    let mut manifest = Manifest::new(&inner.id, &inner.config.kernel, report);
    manifest.template.clone_from(&inner.config.template);
    manifest.language.clone_from(&inner.config.language);
    manifest.history = inner.history.lock().unwrap_or_else(|e| e.into_inner()).newest(usize::MAX);
    manifest.history.reverse();
    manifest.contexts = saved_contexts;
    let copied_from = workdir.clone();
    let written = tokio::task::spawn_blocking(move || -> std::result::Result<PauseReport, store::SnapshotError> {
        let mut writer = Writer::begin(&state_dir)?;
        manifest.entries = writer.copy_tree(&copied_from, SKIPPED)?;
        manifest.report.files = writer.files;
        manifest.report.bytes_on_disk = writer.bytes;
        manifest.report.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let dir = writer.commit(&manifest)?;
        let mut report = manifest.report;
        report.bytes_on_disk = store::size_on_disk(&dir);
        // The pickled namespaces live in the snapshot now, not in the running box.
        let _ = codebox_sandbox::rmtree::remove_tree(&copied_from.join(PAUSE_DIR));
        Ok(report)
    })
    .await
    .map_err(|e| blocking_failed("writing a snapshot", e))?;
    drop(held);
    drop(guard);
    let mut report = written.map_err(|e| {
        let _ = std::fs::remove_dir_all(workdir.join(PAUSE_DIR));
        CodeBoxError::from(e)
    })?;
    report.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    tracing::info!(box_id = %inner.id, rung = %report.rung, bytes = report.bytes_on_disk, "box saved");
    Ok(report)
}

/// Save the box, then stop it: its kernels end and its uid, cgroup and memory go back.
pub(super) async fn pause(inner: &Arc<Inner>) -> Result<PauseReport> {
    let report = save(inner).await?;
    let confinement = inner.state.lock().await.run.as_ref().map(|r| Arc::downgrade(&r.confinement));
    inner.stop().await;
    // The uid is free once the last handle of the confinement is gone, and the kernel's
    // read loops let go of theirs as they wind down: a pause returns once they have, so
    // the uid is there for the next box (this one resumed, or another).
    if let Some(confinement) = confinement {
        let deadline = Instant::now() + RELEASE_WAIT;
        while confinement.strong_count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if confinement.strong_count() > 0 {
            tracing::warn!(box_id = %inner.id, "the paused box's confinement is still held: its uid is not free yet");
        }
    }
    Ok(report)
}

/// Put the notice of what a resume left behind in front of the first execution after it.
pub(super) fn announce(inner: &Inner, stream: EventStream) -> EventStream {
    let Some(report) = inner.resume_notice.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return stream;
    };
    let Some(text) = report.notice() else { return stream };
    let mut data = MimeBundle::text_plain(text);
    data.insert(RESUME_NOTICE_MIME, serde_json::to_value(&report.unrestored).unwrap_or_default());
    let notice = ExecEvent::Display { data, display_id: None };
    futures::stream::once(async move { Ok(notice) }).chain(stream).boxed()
}

/// Make code context `saved` of a resumed box again, under its name, and load its namespace.
async fn resume_context(
    inner: &Arc<Inner>,
    manifest: &Manifest,
    saved: &SavedContext,
    workdir: &Path,
) -> Result<(ContextSnapshot, Vec<codebox_core::Unrestored>)> {
    let made = super::contexts::create_named(inner, Some(&saved.language), saved.cwd.as_deref(), saved.id.clone())
        .await
        .map_err(|e| {
            CodeBoxError::invalid(format!("box {}: making code context {} again failed: {e}", inner.id, saved.id))
        })?;
    let paused = manifest.report.contexts.iter().find(|c| c.context == saved.id);
    let (Some(name), Some(kernel)) = (&saved.stem, super::contexts::current_kernel(inner, &made.id).await) else {
        let mut snapshot = ContextSnapshot::new(saved.id.clone(), saved.language.clone(), SnapshotRung::Files);
        snapshot.note = paused.and_then(|c| c.note.clone());
        return Ok((snapshot, Vec::new()));
    };
    let (mut snapshot, lost) = restore_namespace(&kernel, workdir, &saved.id, &saved.language, name).await?;
    snapshot.note = paused.and_then(|c| c.note.clone());
    Ok((snapshot, lost))
}

impl LocalBox {
    /// Write the box's snapshot to its state directory
    /// ([`with_state_dir`](LocalBoxBuilder::with_state_dir)) and keep running: its working
    /// directory (installed packages included), its history, and its Python kernel's
    /// variables (imports are re-run on resume; what cannot be pickled is named in the
    /// report). Waits for a running execution up to the box's pause wait, then interrupts it.
    /// A new snapshot replaces the previous one only once completely written.
    pub async fn save(&self) -> Result<PauseReport> {
        save(&self.inner).await
    }

    /// Bring back the box whose snapshot is in `state_dir`, with its kernel (its template
    /// when it has a built-in one) and the default settings: see
    /// [`LocalBoxBuilder::resume`] to set others. The box is started.
    pub async fn resume(state_dir: impl Into<PathBuf>) -> Result<(LocalBox, ResumeReport)> {
        let state_dir = state_dir.into();
        let dir = state_dir.clone();
        let snapshot = tokio::task::spawn_blocking(move || store::read(&dir))
            .await
            .map_err(|e| blocking_failed("reading a snapshot", e))?;
        let snapshot = snapshot.map_err(|e| {
            let id = store::current_box_id(&state_dir).unwrap_or_else(|| "?".to_owned());
            cannot_resume(&id, store::current_files(&state_dir).as_deref(), e)
        })?;
        let m = &snapshot.manifest;
        let mut builder = match m.template.as_deref().filter(|t| crate::Template::builtin(t).is_ok()) {
            Some(template) => LocalBox::builder().with_template(template),
            None => LocalBox::builder().with_kernel(m.kernel.clone()),
        };
        if let Some(language) = &m.language {
            builder = builder.with_default_language(language.clone());
        }
        builder.with_state_dir(state_dir).resume().await
    }
}

impl LocalBoxBuilder {
    /// Build the box and bring it back from the snapshot in its state directory
    /// ([`with_state_dir`](Self::with_state_dir)): files byte for byte (checked against the
    /// hashes written), then the Python kernel's variables, then the history. The box is
    /// started, under the name it had. What did not come back is named in the report and
    /// in a display ([`RESUME_NOTICE_MIME`]) of the first execution. A damaged snapshot is
    /// an error naming the box and where its files still are.
    pub async fn resume(self) -> Result<(LocalBox, ResumeReport)> {
        let started = Instant::now();
        let state_dir = self.config.state_dir.clone().ok_or_else(no_state_dir)?;
        let dir = state_dir.clone();
        let snapshot = tokio::task::spawn_blocking(move || store::read(&dir))
            .await
            .map_err(|e| blocking_failed("reading a snapshot", e))?;
        let snapshot = Arc::new(snapshot.map_err(|e| {
            let id = store::current_box_id(&state_dir).unwrap_or_else(|| "?".to_owned());
            cannot_resume(&id, store::current_files(&state_dir).as_deref(), e)
        })?);
        let manifest = &snapshot.manifest;
        let lb = self.build_named(manifest.box_id.clone())?;
        let inner = &lb.inner;
        {
            let mut history = inner.history.lock().unwrap_or_else(|e| e.into_inner());
            for record in &manifest.history {
                history.push(record.clone());
            }
        }
        *inner.resume_from.lock().unwrap_or_else(|e| e.into_inner()) = Some(snapshot.clone());
        inner.start().await?;
        let guard = inner.exec_lock.clone().lock_owned().await;
        let h = inner.handle().await?;
        let workdir = h.root.path().to_owned();
        let mut report = ResumeReport::new(inner.id.clone(), SnapshotRung::Files);
        report.unrestored = manifest.report.unrestored.clone();
        for saved in &manifest.report.contexts {
            if saved.context != DEFAULT_CONTEXT {
                continue;
            }
            if saved.rung != SnapshotRung::Namespace {
                report.contexts.push(saved.clone());
                continue;
            }
            if !inner.runs_python() {
                let mut context = ContextSnapshot::new(DEFAULT_CONTEXT, saved.language.clone(), SnapshotRung::Files);
                context.note = Some("the box's kernel no longer runs Python: its variables were not loaded".into());
                report.unrestored.extend(saved.variables.iter().map(|name| {
                    codebox_core::Unrestored::new(DEFAULT_CONTEXT, name.clone(), "?", "the kernel does not run Python")
                }));
                report.contexts.push(context);
                continue;
            }
            let (mut context, lost) =
                restore_namespace(&h.kernel, &workdir, DEFAULT_CONTEXT, &saved.language, &stem(0)).await?;
            context.note.clone_from(&saved.note);
            report.contexts.push(context);
            report.unrestored.extend(lost);
        }
        for context in &manifest.contexts {
            let (snapshot, lost) = resume_context(inner, manifest, context, &workdir).await?;
            report.contexts.push(snapshot);
            report.unrestored.extend(lost);
        }
        let _ = std::fs::remove_dir_all(workdir.join(PAUSE_DIR));
        drop(guard);
        report.rung = weakest(&report.contexts);
        report.files = inner.files_restored.load(Ordering::Relaxed);
        report.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if !report.unrestored.is_empty() {
            *inner.resume_notice.lock().unwrap_or_else(|e| e.into_inner()) = Some(report.clone());
        }
        tracing::info!(box_id = %inner.id, rung = %report.rung, files = report.files, "box resumed");
        Ok((lb, report))
    }
}

//! Snapshots of a box: its working directory (files, `.codebox/site-packages`), its history
//! and its kernels' variables, written to a state directory so that the box can be resumed
//! later, by this process or another.
//!
//! `store` is the directory's layout and its atomic writes and checked reads. How much of a
//! kernel comes back is a ladder (`SnapshotRung`): a CRIU checkpoint where `criu` works for
//! a confined kernel (it does not on the kernels measured; [`criu::note`] says why, by name),
//! else a namespace snapshot taken inside a Python kernel by `save_namespace.py` (dill when
//! the kernel's Python has it, else pickle) and loaded by `restore_namespace.py`, else files
//! only (JavaScript, TypeScript and other kernels). The pickled namespaces are written into
//! the working directory's [`PAUSE_DIR`], so the files copy carries them and their hashes
//! check them.

use std::path::Path;

use codebox_core::{CodeBoxError, ContextSnapshot, Result, SnapshotRung, Unrestored};
use serde::Deserialize;

use crate::kernel::Kernel;

pub(crate) mod criu;
pub(crate) mod store;

/// Where kernels write their namespaces at a pause, relative to the working directory.
pub(crate) const PAUSE_DIR: &str = ".codebox/pause";
/// What a snapshot leaves out of the working directory: the box's scratch space.
pub(crate) const SKIPPED: &[&str] = &[".codebox/tmp"];

const SAVE_NAMESPACE: &str = include_str!("snapshot/save_namespace.py");
const RESTORE_NAMESPACE: &str = include_str!("snapshot/restore_namespace.py");

/// The file-name stem of context `index`'s namespace (0: the box's own kernel). Context
/// ids are the box's to choose; stems are ours.
pub(crate) fn stem(index: usize) -> String {
    format!("ns{index}")
}

#[derive(Deserialize)]
struct Saved {
    pickler: String,
    variables: Vec<String>,
    imports: std::collections::BTreeMap<String, String>,
    unrestored: Vec<Lost>,
}

#[derive(Deserialize)]
struct Lost {
    name: String,
    #[serde(rename = "type")]
    type_name: String,
    reason: String,
}

#[derive(Deserialize)]
struct Restored {
    imports: Vec<String>,
    variables: Vec<String>,
    unrestored: Vec<Lost>,
}

fn lost(context: &str, list: Vec<Lost>) -> Vec<Unrestored> {
    list.into_iter().map(|l| Unrestored::new(context, l.name, l.type_name, l.reason)).collect()
}

fn call(source: &str, function: &str, dir: &Path, stem: &str) -> Result<String> {
    let dir = serde_json::to_string(&dir.to_string_lossy())
        .map_err(|e| CodeBoxError::invalid(format!("a path codebox cannot quote: {e}")))?;
    Ok(format!("{source}\n{function}({dir}, {stem:?})\ndel {function}\n"))
}

/// Save the namespace of the Python `kernel` of context `context` into `workdir`'s
/// [`PAUSE_DIR`] under `stem`: what it kept, and what it could not by name.
pub(crate) async fn save_namespace(
    kernel: &Kernel,
    workdir: &Path,
    context: &str,
    language: &str,
    stem: &str,
) -> Result<(ContextSnapshot, Vec<Unrestored>)> {
    let dir = workdir.join(PAUSE_DIR);
    crate::exec::run_silent(kernel, &call(SAVE_NAMESPACE, "__codebox_save_namespace", &dir, stem)?)
        .await
        .map_err(|e| CodeBoxError::invalid(format!("saving the variables of context {context} failed: {e}")))?;
    let saved: Saved = read_json(workdir, &format!("{PAUSE_DIR}/{stem}.json"))?;
    let mut snapshot = ContextSnapshot::new(context, language, SnapshotRung::Namespace);
    snapshot.variables = saved.variables;
    snapshot.imports = saved.imports.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut note = criu::note().await;
    if saved.pickler != "dill" {
        note.push_str(&format!(" ({}; dill is not in this kernel's Python)", saved.pickler));
    }
    snapshot.note = Some(note);
    Ok((snapshot, lost(context, saved.unrestored)))
}

/// Load back into the fresh Python `kernel` of `context` the namespace saved under `stem`
/// in `workdir`'s [`PAUSE_DIR`] (restored with the files).
pub(crate) async fn restore_namespace(
    kernel: &Kernel,
    workdir: &Path,
    context: &str,
    language: &str,
    stem: &str,
) -> Result<(ContextSnapshot, Vec<Unrestored>)> {
    let dir = workdir.join(PAUSE_DIR);
    crate::exec::run_silent(kernel, &call(RESTORE_NAMESPACE, "__codebox_restore_namespace", &dir, stem)?)
        .await
        .map_err(|e| CodeBoxError::invalid(format!("loading the variables of context {context} failed: {e}")))?;
    let restored: Restored = read_json(workdir, &format!("{PAUSE_DIR}/{stem}.resumed.json"))?;
    let mut snapshot = ContextSnapshot::new(context, language, SnapshotRung::Namespace);
    snapshot.variables = restored.variables;
    snapshot.imports = restored.imports;
    Ok((snapshot, lost(context, restored.unrestored)))
}

/// Read what a kernel wrote at `rel` in `workdir`, never through a link: the box's code
/// may have put one there, and this process may be root.
fn read_json<T: serde::de::DeserializeOwned>(workdir: &Path, rel: &str) -> Result<T> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let path = workdir.join(rel);
    let failed = |e: rustix::io::Errno| CodeBoxError::io(format!("reading {}", path.display()), e.into());
    let root = rustix::fs::open(workdir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(failed)?;
    let fd = rustix::fs::openat2(
        &root,
        rel,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(failed)?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::fs::File::from(fd), &mut bytes)
        .map_err(|e| CodeBoxError::io(format!("reading {}", path.display()), e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| CodeBoxError::protocol(format!("the kernel wrote {} that does not parse: {e}", path.display())))
}

impl From<store::SnapshotError> for CodeBoxError {
    fn from(e: store::SnapshotError) -> Self {
        match e {
            store::SnapshotError::Missing(_) => CodeBoxError::not_found(e.to_string()),
            store::SnapshotError::Damaged { .. } => CodeBoxError::invalid(e.to_string()),
            store::SnapshotError::Io { context, source } => CodeBoxError::io(context, source),
        }
    }
}

//! The directories of boxes on this machine, and who owns them: a box's working directory
//! (a temporary one it owns, or one it was given) and its kernels' runtime directories, both
//! made under a scratch directory and named or tagged with the owner process (pid and start
//! time), so that a later process can remove what a dead owner left behind.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use codebox_core::{CodeBoxError, Result};

use codebox_sandbox::rmtree::OwnedDir;

/// The working directory of a box.
pub(crate) enum WorkDir {
    /// Made for the box, removed when it stops (unless kept).
    Temp(OwnedDir),
    /// Named by the builder; never removed.
    Given(PathBuf),
}

impl WorkDir {
    pub(crate) fn path(&self) -> &Path {
        match self {
            Self::Temp(t) => t.path(),
            Self::Given(p) => p,
        }
    }
}

/// A fresh temporary working directory in `scratch_dir`, readable by this process's user
/// alone.
pub(crate) fn new_temp_workdir(scratch_dir: &Path) -> Result<OwnedDir> {
    // 0700: the box's files are its owner's alone.
    tempfile::Builder::new()
        .prefix(&workdir_prefix())
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir_in(scratch_dir)
        .map(OwnedDir::adopt)
        .map_err(|e| CodeBoxError::io("creating a working directory", e))
}

/// Where kernels' runtime directories go under `scratch_dir`: `XDG_RUNTIME_DIR` when it is
/// short enough, else `scratch_dir` when it is, else `/tmp`.
pub(crate) fn runtime_base(scratch_dir: &Path) -> PathBuf {
    // Unix socket paths are limited to ~107 bytes: keep the directory short.
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from)
        && dir.is_dir()
        && dir.as_os_str().len() < 60
    {
        return dir;
    }
    if scratch_dir.as_os_str().len() < 60 { scratch_dir.to_owned() } else { PathBuf::from("/tmp") }
}

const OWNER_FILE: &str = "owner";

/// This process's pid and start time: a pid alone may be reused after a crash.
fn owner_tag() -> String {
    let pid = std::process::id();
    format!("{pid} {}", start_time(pid).unwrap_or_default())
}

fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22, counted after the parenthesised command name (which may hold spaces).
    stat.rsplit_once(')')?.1.split_whitespace().nth(19).map(str::to_owned)
}

/// The prefix of a temporary working directory made by this process: `codebox-`, then the
/// owner's pid and start time, so that a later process can tell when its owner is gone.
fn workdir_prefix() -> String {
    let pid = std::process::id();
    format!("codebox-{pid}.{}-", start_time(pid).unwrap_or_default())
}

/// Whether the process `pid` that started at `started` is gone.
fn owner_gone(pid: u32, started: &str) -> bool {
    start_time(pid).as_deref() != Some(started)
}

/// Remove the kernel runtime directories (`cbk-*` with an owner file) and temporary working
/// directories (`codebox-<pid>.<start>-*`) whose owner died without cleaning up (SIGKILL, a
/// crash): their kernels are already gone (PR_SET_PDEATHSIG). Directories of live owners,
/// of unknown owners and working directories with something mounted on them are left alone.
/// Looks in [`runtime_base`] and `scratch_dir` itself; returns how many were removed.
pub(crate) fn remove_stale_runtime_dirs(scratch_dir: &Path) -> usize {
    let mut removed = 0;
    let mut bases = vec![runtime_base(scratch_dir)];
    if !bases.iter().any(|b| b == scratch_dir) {
        bases.push(scratch_dir.to_owned());
    }
    for base in bases {
        let Ok(entries) = std::fs::read_dir(&base) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let stale = if name.starts_with("cbk-") {
                let Ok(tag) = std::fs::read_to_string(path.join(OWNER_FILE)) else { continue };
                let mut parts = tag.split_whitespace();
                match (parts.next().and_then(|p| p.parse::<u32>().ok()), parts.next()) {
                    (Some(pid), Some(started)) => owner_gone(pid, started),
                    _ => false,
                }
            } else if let Some(rest) = name.strip_prefix("codebox-") {
                let owner = rest.split_once('-').and_then(|(o, _)| o.split_once('.'));
                match owner.and_then(|(pid, started)| Some((pid.parse::<u32>().ok()?, started))) {
                    Some((pid, started)) => owner_gone(pid, started) && !is_mount_point(&path),
                    None => false,
                }
            } else {
                false
            };
            if stale && entry.file_type().is_ok_and(|t| t.is_dir()) {
                tracing::debug!(dir = %path.display(), "removing a directory of a box whose owner is gone");
                if codebox_sandbox::rmtree::remove_tree(&path).is_ok() {
                    removed += 1;
                }
            }
        }
    }
    removed
}

/// Whether something is mounted on `dir` (a working-directory image).
fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::symlink_metadata(dir), dir.parent().map(std::fs::metadata)) {
        (Ok(d), Some(Ok(p))) => d.dev() != p.dev(),
        _ => true,
    }
}

/// [`remove_stale_runtime_dirs`] once per process and scratch directory, before the first
/// kernel starts there.
pub(crate) fn remove_stale_runtime_dirs_once(scratch_dir: &Path) {
    static DONE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    {
        let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
        if done.iter().any(|d| d == scratch_dir) {
            return;
        }
        done.push(scratch_dir.to_owned());
    }
    remove_stale_runtime_dirs(scratch_dir);
}

/// A fresh runtime directory (`cbk-*`, 0700: it holds a signing key and sockets that accept
/// commands) under [`runtime_base`], with this process named as its owner.
pub(crate) fn new_runtime_dir(scratch_dir: &Path) -> std::io::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("cbk-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir_in(runtime_base(scratch_dir))?;
    std::fs::write(dir.path().join(OWNER_FILE), owner_tag())?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn directories_go_under_the_scratch_directory_and_only_dead_owners_lose_theirs() {
        let scratch = tempfile::tempdir().unwrap();
        let live = new_temp_workdir(scratch.path()).unwrap();
        assert_eq!(live.path().parent(), Some(scratch.path()));
        assert_eq!(std::fs::metadata(live.path()).unwrap().permissions().mode() & 0o777, 0o700);

        // This process's pid with another start time: an owner that is gone.
        let pid = std::process::id();
        let dead_workdir = scratch.path().join(format!("codebox-{pid}.0-abc"));
        std::fs::create_dir_all(dead_workdir.join("deep/er")).unwrap();
        let dead_runtime = scratch.path().join("cbk-dead");
        std::fs::create_dir(&dead_runtime).unwrap();
        std::fs::write(dead_runtime.join(OWNER_FILE), format!("{pid} 0")).unwrap();
        let live_runtime = scratch.path().join("cbk-live");
        std::fs::create_dir(&live_runtime).unwrap();
        std::fs::write(live_runtime.join(OWNER_FILE), owner_tag()).unwrap();
        let unknown = scratch.path().join("cbk-no-owner");
        std::fs::create_dir(&unknown).unwrap();

        remove_stale_runtime_dirs(scratch.path());
        assert!(!dead_workdir.exists() && !dead_runtime.exists());
        assert!(live.path().exists() && live_runtime.exists() && unknown.exists());
    }
}

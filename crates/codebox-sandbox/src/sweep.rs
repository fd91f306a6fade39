//! Clearing what a server that died without cleaning up (SIGKILL, a crash, a power cut)
//! left behind, before a new server takes its place.
//!
//! A server's sessions live in a *session root* it owns: their working directories, their
//! size-limited disk images and the loop mounts of those images all sit in
//! [`SessionRoot::scratch`]. Their kernels run under uids from the server's range and in
//! cgroups under codebox's cgroup directory. Normally each session takes all of that down
//! when it stops, and kernels die with the server (PR_SET_PDEATHSIG, bubblewrap's
//! `--die-with-parent`). [`SessionRoot::claim`] makes sure, at start, whatever happened:
//! it locks the root (one server per root: a second one is refused while the first runs),
//! SIGKILLs every process still running under a uid of the range, removes what those uids
//! left outside the root (SysV IPC objects, files in `/tmp` and the like), removes session cgroups
//! whose server is gone, unmounts every mount under the scratch directory and deletes what
//! is in it. What cannot be deleted (a tree a box's code made undeletable, say) is moved
//! aside into the root's quarantine directory, on the same file system, and the server
//! starts anyway; the next claim tries the quarantine again. Trees are removed without
//! recursion and without following links or crossing mounts (`rmtree`), however deep a
//! box made them.
//!
//! The uid range and the session root belong to one server: another server on the same
//! machine must use a range and a root of its own.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use codebox_core::{CodeBoxError, Result};

use super::uid::{kill_range, processes_in_range};

/// `n` random bytes as lowercase hex: a name no earlier entry of the quarantine has.
fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).expect("the operating system's random source is available");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

const LOCK: &str = "sweep.lock";
const SCRATCH: &str = "tmp";
/// Where the sweep moves what it cannot delete, to try again at the next claim.
const QUARANTINE: &str = "trash";

/// A session root claimed by this process; the claim lasts as long as the value.
#[derive(Debug)]
pub struct SessionRoot {
    path: PathBuf,
    scratch: PathBuf,
    _lock: File,
}

/// What [`SessionRoot::claim`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Swept {
    /// Processes killed because they ran under a session uid.
    pub processes: usize,
    /// Session cgroups removed (their server is gone).
    pub cgroups: usize,
    /// Mounts (working-directory images) unmounted.
    pub mounts: usize,
    /// Entries (session directories, images, kernel runtime directories) deleted.
    pub entries: usize,
    /// Entries that could not be deleted and were moved into the quarantine directory (or,
    /// when even that failed, left where they were), and earlier ones still there.
    pub quarantined: usize,
    /// SysV IPC objects and files in the host's world-writable directories that session
    /// uids left.
    pub leftovers: usize,
}

impl Swept {
    /// Whether anything was left behind.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

fn io_err(what: String) -> impl FnOnce(io::Error) -> CodeBoxError {
    move |e| CodeBoxError::io(what, e)
}

impl SessionRoot {
    /// Claim `path` as this server's session root (created if missing, mode 0711 so that
    /// session uids can reach their own directories in it but not list it) and sweep what a
    /// previous server left: processes under a uid of `uids`, session cgroups of servers
    /// that are gone (with `cgroups`), mounts and entries under the scratch directory.
    ///
    /// Fails when another live process holds the root, or when a leftover cannot be
    /// removed (a process that will not die, a mount that will not go).
    pub fn claim(path: &Path, uids: Option<Range<u32>>, cgroups: bool) -> Result<(Self, Swept)> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        if !path.is_absolute() {
            return Err(CodeBoxError::invalid(format!("the session root {} must be an absolute path", path.display())));
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(path)
            .map_err(io_err(format!("creating the session root {}", path.display())))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o711))
            .map_err(io_err(format!("setting the mode of {}", path.display())))?;
        if uids.is_some()
            && let Some(closed) = super::uid::unreachable_for_others(path)
        {
            return Err(CodeBoxError::invalid(format!(
                "session uids cannot reach the session root {}: {} is closed to other users",
                path.display(),
                closed.display()
            )));
        }
        let lock_path = path.join(LOCK);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(format!("opening {}", lock_path.display())))?;
        if let Err(e) = lock.try_lock() {
            return Err(match e {
                std::fs::TryLockError::WouldBlock => CodeBoxError::invalid(format!(
                    "another server is using the session root {}: give each server its own",
                    path.display()
                )),
                std::fs::TryLockError::Error(e) => CodeBoxError::io(format!("locking {}", lock_path.display()), e),
            });
        }
        let mut swept = Swept::default();
        if let Some(range) = &uids {
            swept.processes = kill_all_in(range)?;
            // Once no process of the range runs; the root's own entries are swept below.
            let removed = super::leftovers::remove_left_by(range, &[path]);
            swept.leftovers = removed.ipc_objects + removed.files;
        }
        if cgroups && let Ok(manager) = crate::cgroup::cgroup_manager() {
            swept.cgroups = crate::cgroup::sweep_orphans(manager);
        }
        let scratch = path.join(SCRATCH);
        swept.mounts = unmount_beneath(&scratch)?;
        let quarantine = path.join(QUARANTINE);
        // What an earlier claim could not delete first: it may go now.
        let (_, mut stuck) = empty_dir(&quarantine, None)?;
        let (entries, left) = empty_dir(&scratch, Some(&quarantine))?;
        stuck += left;
        swept.entries = entries;
        swept.quarantined = stuck;
        std::fs::DirBuilder::new()
            .mode(0o711)
            .create(&scratch)
            .or_else(|e| if e.kind() == io::ErrorKind::AlreadyExists { Ok(()) } else { Err(e) })
            .and_then(|()| std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o711)))
            .map_err(io_err(format!("creating {}", scratch.display())))?;
        if !swept.is_empty() {
            tracing::warn!(
                root = %path.display(),
                processes = swept.processes,
                cgroups = swept.cgroups,
                mounts = swept.mounts,
                entries = swept.entries,
                quarantined = swept.quarantined,
                leftovers = swept.leftovers,
                "removed what an earlier server left behind"
            );
        }
        Ok((Self { path: path.to_owned(), scratch, _lock: lock }, swept))
    }

    /// The root.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory for the sessions' working directories, images and kernel runtime
    /// directories (swept at every claim).
    pub fn scratch(&self) -> &Path {
        &self.scratch
    }
}

/// SIGKILL everything under a uid of `range` until nothing is left (a process may be
/// forking while we kill); an error if something survives for 5 s.
fn kill_all_in(range: &Range<u32>) -> Result<usize> {
    let start = Instant::now();
    let mut killed = 0;
    loop {
        let n = kill_range(range);
        killed += n;
        if n == 0 && processes_in_range(range).is_empty() {
            return Ok(killed);
        }
        if start.elapsed() > Duration::from_secs(5) {
            return Err(CodeBoxError::invalid(format!(
                "processes under session uids {}..{} survive SIGKILL: {:?}",
                range.start,
                range.end,
                processes_in_range(range)
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Undo the octal escapes of a path in `/proc/self/mountinfo` (`\040` for a space).
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(v) = bytes
                .get(i + 1..i + 4)
                .and_then(|d| std::str::from_utf8(d).ok())
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        {
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

/// The mount points at or beneath `dir`, deepest first.
fn mounts_beneath(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> =
        mountinfo.lines().filter_map(|l| l.split(' ').nth(4)).map(unescape).filter(|p| p.starts_with(dir)).collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
}

/// Unmount every mount beneath `dir` (lazily when busy); returns how many.
fn unmount_beneath(dir: &Path) -> Result<usize> {
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(io_err("reading /proc/self/mountinfo".to_owned()))?;
    let points = mounts_beneath(&info, dir);
    for point in &points {
        let umount = |lazy: bool| {
            let mut cmd = std::process::Command::new("umount");
            if lazy {
                cmd.arg("-l");
            }
            let out = cmd.arg(point).stdin(std::process::Stdio::null()).output()?;
            if out.status.success() {
                Ok(())
            } else {
                Err(io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_owned()))
            }
        };
        umount(false)
            .or_else(|_| umount(true))
            .map_err(io_err(format!("unmounting the leftover {}", point.display())))?;
    }
    Ok(points.len())
}

/// Delete everything in `dir` (which may not exist). What cannot be deleted is moved into
/// `quarantine` (created when needed) when given, else left in place. Returns how many
/// entries `dir` held and how many of them could not be deleted.
fn empty_dir(dir: &Path, quarantine: Option<&Path>) -> Result<(usize, usize)> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(CodeBoxError::io(format!("reading {}", dir.display()), e)),
    };
    let (mut n, mut stuck) = (0, 0);
    for entry in rd {
        let entry = entry.map_err(io_err(format!("reading {}", dir.display())))?;
        let path = entry.path();
        n += 1;
        let Err(e) = crate::rmtree::remove_tree(&path) else { continue };
        stuck += 1;
        let Some(quarantine) = quarantine else {
            tracing::warn!(entry = %path.display(), "a leftover still cannot be removed: {e}");
            continue;
        };
        match move_aside(&path, quarantine) {
            Ok(to) => tracing::warn!(
                entry = %path.display(),
                moved_to = %to.display(),
                "a leftover could not be removed ({e}); it is moved aside and tried again at the next start"
            ),
            Err(m) => tracing::warn!(
                entry = %path.display(),
                "a leftover could not be removed ({e}) nor moved aside ({m}); it stays"
            ),
        }
    }
    Ok((n, stuck))
}

/// Move `path` into `quarantine` under a name of its own; returns where it went.
fn move_aside(path: &Path, quarantine: &Path) -> io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(quarantine) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let to = quarantine.join(format!("{name}.{}", random_hex(6)));
    std::fs::rename(path, &to)?;
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_found_unescaped_and_deepest_first() {
        let info = "\
22 1 8:1 / / rw - ext4 /dev/sda1 rw
90 22 7:0 / /srv/root/tmp/codebox-a rw,nosuid - ext4 /dev/loop0 rw
91 90 7:1 / /srv/root/tmp/codebox-a/in\\040it rw - ext4 /dev/loop1 rw
92 22 7:2 / /srv/root/tmpx rw - ext4 /dev/loop2 rw
";
        let points = mounts_beneath(info, Path::new("/srv/root/tmp"));
        assert_eq!(points, [PathBuf::from("/srv/root/tmp/codebox-a/in it"), PathBuf::from("/srv/root/tmp/codebox-a")]);
    }

    #[test]
    fn a_relative_root_is_refused() {
        let err = SessionRoot::claim(Path::new("sessions"), None, false).unwrap_err().to_string();
        assert!(err.contains("absolute"), "{err}");
    }

    // Root, mkfs.ext4 and mount are there on this machine kind and in CI: a leftover image
    // mounted in the scratch directory, a directory and a process of a session uid are all
    // gone after the claim, and a second claim of a held root is refused.
    #[test]
    fn a_claim_sweeps_processes_mounts_and_directories() {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("sessions");
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let err = SessionRoot::claim(&root, Some(310_700..310_702), false).unwrap_err().to_string();
        assert!(err.contains("closed to other users"), "a 0700 parent is refused with session uids: {err}");
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let (first, swept) = SessionRoot::claim(&root, None, false).unwrap();
        assert!(swept.is_empty(), "{swept:?}");
        let err = SessionRoot::claim(&root, None, false).unwrap_err().to_string();
        assert!(err.contains("another server"), "{err}");
        let work = first.scratch().join("codebox-left");
        std::fs::create_dir(&work).unwrap();
        let disk = crate::disk::WorkDisk::mount(&work, 16 << 20, 64, Some(310_700)).unwrap();
        std::fs::write(work.join("file"), b"data").unwrap();
        std::fs::create_dir_all(first.scratch().join("cbk-left/deep")).unwrap();
        let range = 310_700..310_702;
        let mut child = std::process::Command::new("/bin/sleep").arg("60").uid(310_701).gid(310_701).spawn().unwrap();
        // As if the server had died: its disk is never released, its claim ends.
        std::mem::forget(disk);
        drop(first);

        let (second, swept) = SessionRoot::claim(&root, Some(range.clone()), false).unwrap();
        // At least the one: until this test reaps it, the killed child lingers as a zombie
        // under its uid, which a later round of the sweep may count again.
        assert!(swept.processes >= 1, "{swept:?}");
        assert_eq!(swept.mounts, 1, "{swept:?}");
        assert_eq!(swept.entries, 3, "the directory, its image and the runtime directory: {swept:?}");
        child.wait().unwrap();
        assert!(processes_in_range(&range).is_empty());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(&*second.scratch().to_string_lossy()), "nothing is mounted in the root");
        assert_eq!(std::fs::read_dir(second.scratch()).unwrap().count(), 0);
        assert_eq!(std::fs::metadata(second.path()).unwrap().permissions().mode() & 0o777, 0o711);
    }

    // Root and chattr are there on this machine kind and in CI. A tree 30 000 levels deep
    // (more than the descriptors a process may hold, deeper than a recursive walk's stack)
    // goes; an immutable file makes its directory undeletable: the claim moves it aside and
    // succeeds, and the next claim, once it can, deletes it from the quarantine.
    #[test]
    fn a_claim_removes_deep_trees_and_moves_aside_what_it_cannot_remove() {
        use rustix::fs::{Mode, OFlags};
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("sessions");
        let (first, _) = SessionRoot::claim(&root, None, false).unwrap();
        let deep = first.scratch().join("cbk-deep");
        std::fs::create_dir(&deep).unwrap();
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let mut cur = rustix::fs::open(&deep, flags, Mode::empty()).unwrap();
        for _ in 0..30_000 {
            rustix::fs::mkdirat(&cur, "a", Mode::from_raw_mode(0o755)).unwrap();
            cur = rustix::fs::openat(&cur, "a", flags, Mode::empty()).unwrap();
        }
        drop(cur);
        let stuck = first.scratch().join("codebox-stuck");
        std::fs::create_dir(&stuck).unwrap();
        let pinned = stuck.join("immutable");
        std::fs::write(&pinned, b"x").unwrap();
        let chattr = |flag: &str, file: &Path| {
            let status = std::process::Command::new("chattr").arg(flag).arg(file).status().unwrap();
            assert!(status.success(), "chattr {flag}");
        };
        chattr("+i", &pinned);
        drop(first);

        let (second, swept) = SessionRoot::claim(&root, None, false).unwrap();
        let trash: Vec<PathBuf> =
            std::fs::read_dir(root.join(QUARANTINE)).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(swept.entries, 2, "{swept:?}");
        assert_eq!(swept.quarantined, 1, "{swept:?}");
        assert_eq!(std::fs::read_dir(second.scratch()).unwrap().count(), 0, "the scratch directory is empty");
        assert_eq!(trash.len(), 1, "{trash:?}");
        assert!(trash[0].file_name().unwrap().to_string_lossy().starts_with("codebox-stuck."), "{trash:?}");
        chattr("-i", &trash[0].join("immutable"));
        drop(second);

        let (_third, swept) = SessionRoot::claim(&root, None, false).unwrap();
        assert_eq!(swept.quarantined, 0, "{swept:?}");
        assert_eq!(std::fs::read_dir(root.join(QUARANTINE)).unwrap().count(), 0, "the quarantine is emptied");
    }
}

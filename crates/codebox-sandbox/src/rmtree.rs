//! Removing a directory tree that a box's code may have shaped: without recursion, with a
//! bounded number of open descriptors, never following a symbolic link and never crossing
//! into another mount.
//!
//! A box makes a tree 30 000 directories deep in a second (`mkdir` and `chdir` in a loop).
//! std's `remove_dir_all`, which `tempfile::TempDir` calls when dropped, keeps one
//! descriptor open per level: such a tree runs the process out of descriptors (EMFILE),
//! and a recursive walk overflows a thread's stack. The `remove_dir_all` and `fs_extra`
//! crates walk the same way, and none of them refuses to descend into a mount point. So
//! the walk here holds the directory it is in and, for a moment, its parent or child: it
//! goes down by name with `O_NOFOLLOW`, and back up through `..`, checking that it arrived
//! where it came from (device and inode) so that a tree moved meanwhile is left alone
//! rather than followed. What it has yet to visit is kept as names, level by level, in
//! memory: bounded by the tree itself, never by the stack.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, StatxAttributes, StatxFlags};
use rustix::io::Errno;

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Where a directory entry lives and what it is, without following a link.
#[derive(Debug, Clone, Copy)]
struct Probe {
    is_dir: bool,
    dev: u64,
    ino: u64,
    /// Whether something is mounted here (a bind mount of the same filesystem included).
    mount_root: bool,
}

fn probe(dir: &OwnedFd, name: &OsStr) -> rustix::io::Result<Probe> {
    let flags = AtFlags::SYMLINK_NOFOLLOW | AtFlags::NO_AUTOMOUNT;
    match rustix::fs::statx(dir, name, flags, StatxFlags::TYPE | StatxFlags::INO) {
        Ok(st) => Ok(Probe {
            is_dir: FileType::from_raw_mode(st.stx_mode.into()) == FileType::Directory,
            dev: rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor),
            ino: st.stx_ino,
            mount_root: st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT)
                && st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT),
        }),
        Err(Errno::NOSYS) => {
            let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
            Ok(Probe {
                is_dir: FileType::from_raw_mode(st.st_mode) == FileType::Directory,
                dev: st.st_dev,
                ino: st.st_ino,
                mount_root: false,
            })
        }
        Err(e) => Err(e),
    }
}

fn identity(fd: &OwnedFd) -> rustix::io::Result<(u64, u64)> {
    let st = rustix::fs::fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

/// A directory on the way down: its name in its parent, who it is, and the names of the
/// subdirectories still to remove.
struct Frame {
    name: OsString,
    dev: u64,
    ino: u64,
    pending: Vec<OsString>,
}

/// What could not be removed: the first failure and how many there were.
#[derive(Default)]
struct Failures {
    first: Option<io::Error>,
    count: usize,
}

impl Failures {
    fn add(&mut self, what: impl FnOnce() -> String, e: impl Into<io::Error>) {
        let e = e.into();
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(io::Error::new(e.kind(), format!("{}: {e}", what())));
        }
    }
}

/// Unlink every entry of `dir` that is not a directory, and return the names of those that are.
fn take_entries(dir: &OwnedFd, failures: &mut Failures) -> rustix::io::Result<Vec<OsString>> {
    let mut subdirs = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir.as_fd())? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let name = OsStr::from_bytes(name).to_owned();
        if entry.file_type() == FileType::Directory {
            subdirs.push(name);
            continue;
        }
        match rustix::fs::unlinkat(dir, name.as_os_str(), AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            // A directory after all (a file system that gives no types, or a swap meanwhile).
            Err(Errno::ISDIR | Errno::PERM) if probe(dir, &name).is_ok_and(|p| p.is_dir) => subdirs.push(name),
            Err(e) => failures.add(|| format!("removing {name:?}"), e),
        }
    }
    Ok(subdirs)
}

/// Remove `path` and everything beneath it (a file or link is simply unlinked; a missing
/// path is not an error). Symbolic links are removed, never followed; a mount point inside
/// the tree is left in place with what is mounted on it, and so are the directories that
/// hold it, and the call fails saying so. On failure it still removes all it can.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no entry to remove", path.display()),
        ));
    };
    let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    let top = rustix::fs::open(parent, dir_flags(), Mode::empty()).map_err(|e| {
        io::Error::new(io::Error::from(e).kind(), format!("opening the parent of {}: {e}", path.display()))
    })?;
    remove_tree_at(&top, parent, name)
}

/// [`remove_tree`] of the entry `name` of the directory open as `top`, whose path `parent`
/// is only shown in messages: a caller that walked down by descriptors removes what it
/// found there even if a directory on the way was renamed or swapped for a link meanwhile.
pub(crate) fn remove_tree_at(top: &OwnedFd, parent: &Path, name: &OsStr) -> io::Result<()> {
    let path = parent.join(name);
    let path = path.as_path();
    let context =
        |e: Errno, what: &str| io::Error::new(io::Error::from(e).kind(), format!("{what} {}: {e}", path.display()));
    let root = match probe(top, name) {
        Ok(p) => p,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(context(e, "reading")),
    };
    if !root.is_dir {
        return match rustix::fs::unlinkat(top, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(context(e, "removing")),
        };
    }
    if root.mount_root || identity(top).map_err(|e| context(e, "reading the parent of"))?.0 != root.dev {
        return Err(io::Error::other(format!("{} is a mount point; it is not removed", path.display())));
    }
    let mut failures = Failures::default();
    let mut cur = rustix::fs::openat(top, name, dir_flags(), Mode::empty()).map_err(|e| context(e, "opening"))?;
    if identity(&cur).map_err(|e| context(e, "reading"))? != (root.dev, root.ino) {
        return Err(io::Error::other(format!("{} changed while it was being removed", path.display())));
    }
    let pending = take_entries(&cur, &mut failures).map_err(|e| context(e, "reading"))?;
    let mut stack = vec![Frame { name: name.to_owned(), dev: root.dev, ino: root.ino, pending }];
    // Where the walk is, for messages: the names from `path` down.
    let shown = |stack: &[Frame], last: &OsStr| -> PathBuf {
        let mut p = parent.to_path_buf();
        p.extend(stack.iter().map(|f| f.name.as_os_str()));
        p.push(last);
        p
    };
    loop {
        let next_child = stack.last_mut().expect("the walk ends when the stack is empty").pending.pop();
        if let Some(child) = next_child {
            let found = match probe(&cur, &child) {
                Ok(p) => p,
                Err(Errno::NOENT) => continue,
                Err(e) => {
                    failures.add(|| format!("reading {}", shown(&stack, &child).display()), e);
                    continue;
                }
            };
            if !found.is_dir {
                if let Err(e) = rustix::fs::unlinkat(&cur, child.as_os_str(), AtFlags::empty())
                    && e != Errno::NOENT
                {
                    failures.add(|| format!("removing {}", shown(&stack, &child).display()), e);
                }
                continue;
            }
            if found.mount_root || found.dev != root.dev {
                let e = io::Error::other("a mount point; it and what is mounted on it are left in place");
                failures.add(|| shown(&stack, &child).display().to_string(), e);
                continue;
            }
            let next = match rustix::fs::openat(&cur, child.as_os_str(), dir_flags(), Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => continue,
                Err(e) => {
                    failures.add(|| format!("opening {}", shown(&stack, &child).display()), e);
                    continue;
                }
            };
            if identity(&next).ok() != Some((found.dev, found.ino)) {
                let e = io::Error::other("it changed while the tree was being removed");
                failures.add(|| shown(&stack, &child).display().to_string(), e);
                continue;
            }
            match take_entries(&next, &mut failures) {
                Ok(pending) => {
                    stack.push(Frame { name: child, dev: found.dev, ino: found.ino, pending });
                    cur = next;
                }
                Err(e) => failures.add(|| format!("reading {}", shown(&stack, &child).display()), e),
            }
            continue;
        }
        // Everything beneath the top directory is gone (or could not go): remove it from
        // its parent.
        let done = stack.pop().expect("the stack is not empty here");
        let Some(up) = stack.last() else {
            if let Err(e) = rustix::fs::unlinkat(top, done.name.as_os_str(), AtFlags::REMOVEDIR)
                && e != Errno::NOENT
            {
                failures.add(|| format!("removing {}", path.display()), e);
            }
            break;
        };
        let up_fd =
            rustix::fs::openat(&cur, "..", dir_flags(), Mode::empty()).map_err(|e| context(e, "going back up in"))?;
        if identity(&up_fd).map_err(|e| context(e, "going back up in"))? != (up.dev, up.ino) {
            // Renamed or moved meanwhile: do not follow it elsewhere.
            return Err(io::Error::other(format!(
                "{} was moved while it was being removed; what is left of it stays",
                path.display()
            )));
        }
        if let Err(e) = rustix::fs::unlinkat(&up_fd, done.name.as_os_str(), AtFlags::REMOVEDIR)
            && e != Errno::NOENT
        {
            failures.add(|| format!("removing {}", shown(&stack, &done.name).display()), e);
        }
        cur = up_fd;
    }
    match failures.first {
        None => Ok(()),
        Some(first) if failures.count == 1 => Err(first),
        Some(first) => Err(io::Error::new(
            first.kind(),
            format!("{} entries of {} could not be removed; the first: {first}", failures.count, path.display()),
        )),
    }
}

/// A directory this process made, removed with [`remove_tree`] when dropped (unless kept):
/// the place of `tempfile::TempDir` for directories a box's code writes into.
#[derive(Debug)]
pub struct OwnedDir {
    path: Option<PathBuf>,
}

impl OwnedDir {
    /// Take over a temporary directory: it is removed by this value from now on.
    pub fn adopt(dir: tempfile::TempDir) -> Self {
        Self { path: Some(dir.keep()) }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.path.as_deref().expect("the path is there until the value goes")
    }

    /// Leave the directory in place; returns its path.
    pub fn keep(mut self) -> PathBuf {
        self.path.take().expect("the path is there until the value goes")
    }

    /// Remove the directory now, saying whether that worked.
    pub fn close(mut self) -> io::Result<()> {
        remove_tree(&self.path.take().expect("the path is there until the value goes"))
    }
}

impl Drop for OwnedDir {
    fn drop(&mut self) {
        if let Some(path) = self.path.take()
            && let Err(e) = remove_tree(&path)
        {
            tracing::warn!("removing {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }

    /// A chain of `depth` directories named `d` beneath `base`, made through descriptors
    /// (a path that long is over PATH_MAX), with a file every thousand levels.
    fn deep_chain(base: &Path, depth: usize) {
        let mut cur = rustix::fs::open(base, dir_flags(), Mode::empty()).unwrap();
        for level in 0..depth {
            rustix::fs::mkdirat(&cur, "d", Mode::from_raw_mode(0o755)).unwrap();
            if level % 1000 == 0 {
                let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC;
                drop(rustix::fs::openat(&cur, "f", flags, Mode::from_raw_mode(0o644)).unwrap());
            }
            cur = rustix::fs::openat(&cur, "d", dir_flags(), Mode::empty()).unwrap();
        }
    }

    #[test]
    fn a_tree_thirty_thousand_deep_goes_on_a_small_stack_and_few_descriptors() {
        let base = tempfile::tempdir().unwrap();
        let tree = base.path().join("tree");
        std::fs::create_dir(&tree).unwrap();
        deep_chain(&tree, 30_000);
        // A small stack and a descriptor limit far below the depth: recursion or one
        // descriptor per level would fail here.
        let before = open_fds();
        let path = tree.clone();
        let removed = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                let result = remove_tree(&path);
                (result, open_fds())
            })
            .unwrap()
            .join()
            .unwrap();
        removed.0.unwrap();
        assert!(removed.1 <= before + 8, "descriptors stay bounded: {before} before, {} at the end", removed.1);
        assert!(!tree.exists());
        assert!(base.path().exists());
    }

    #[test]
    fn links_are_removed_and_never_followed() {
        let base = tempfile::tempdir().unwrap();
        let outside = base.path().join("outside");
        std::fs::create_dir_all(outside.join("inner")).unwrap();
        std::fs::write(outside.join("inner/keep.txt"), "keep").unwrap();
        std::fs::write(base.path().join("precious"), "keep").unwrap();
        let tree = base.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("a/to_dir")).unwrap();
        std::os::unix::fs::symlink(base.path().join("precious"), tree.join("a/b/to_file")).unwrap();
        std::os::unix::fs::symlink("/", tree.join("root")).unwrap();
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        assert_eq!(std::fs::read_to_string(outside.join("inner/keep.txt")).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(base.path().join("precious")).unwrap(), "keep");
        // A link as the path itself: the link goes, its target stays.
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        remove_tree(&link).unwrap();
        assert!(std::fs::symlink_metadata(&link).is_err());
        assert!(outside.join("inner/keep.txt").exists());
        remove_tree(&base.path().join("missing")).unwrap();
    }

    // Root and mount are there on this machine kind and in CI (as for the disk image tests).
    /// A small tmpfs mounted on `point`.
    fn mount_tmpfs(point: &Path) {
        let status =
            std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"]).arg(point).status();
        assert!(status.unwrap().success(), "mounting a tmpfs on {}", point.display());
    }

    #[test]
    fn a_mount_point_inside_is_left_in_place_with_what_is_mounted() {
        let base = tempfile::tempdir().unwrap();
        let tree = base.path().join("tree");
        let point = tree.join("a/mnt");
        std::fs::create_dir_all(&point).unwrap();
        std::fs::write(tree.join("a/file"), "x").unwrap();
        std::fs::create_dir_all(tree.join("b/c")).unwrap();
        mount_tmpfs(&point);
        std::fs::write(point.join("mounted.txt"), "on the mount").unwrap();
        let err = remove_tree(&tree).unwrap_err().to_string();
        let mounted = std::fs::read_to_string(point.join("mounted.txt"));
        let _ = std::process::Command::new("umount").arg(&point).status();
        assert!(err.contains("mount point"), "{err}");
        assert_eq!(mounted.unwrap(), "on the mount");
        assert!(!tree.join("a/file").exists() && !tree.join("b").exists(), "the rest is gone");
        // Refused as the path itself too.
        std::fs::create_dir_all(&point).unwrap();
        mount_tmpfs(&point);
        let err = remove_tree(&point).unwrap_err().to_string();
        let _ = std::process::Command::new("umount").arg(&point).status();
        assert!(err.contains("mount point"), "{err}");
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
    }

    #[test]
    fn an_owned_dir_goes_when_dropped_unless_kept() {
        let made = OwnedDir::adopt(tempfile::tempdir().unwrap());
        let path = made.path().to_owned();
        std::fs::create_dir_all(path.join("x/y")).unwrap();
        drop(made);
        assert!(!path.exists());
        let kept = OwnedDir::adopt(tempfile::tempdir().unwrap());
        let path = kept.keep();
        assert!(path.exists());
        remove_tree(&path).unwrap();
    }
}

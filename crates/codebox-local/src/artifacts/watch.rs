//! inotify watches on every directory of a box's working directory: how a box normally
//! learns what an execution touched (see the parent module for why).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use codebox_core::{Artifact, ArtifactChange};
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::fs::{AtFlags, FileType, Mode};
use rustix::io::Errno;

use super::{Found, MAX_ARTIFACTS, MAX_SCAN_DEPTH, artifact_of, open_level, wanted_statx};
use crate::files::{RESERVED, Root, dir_flags};

/// Most directories one box watches; a larger tree is scanned instead (each watch counts
/// against the user's `max_user_watches`, shared by every box of this process).
pub const MAX_WATCHED_DIRS: usize = 8_192;
/// Most entries read while setting watches up (once per box, not per execution).
const MAX_SETUP_ENTRIES: usize = 4_000_000;
/// What a watch reports: entries made, written, moved in or with changed metadata, and its
/// own directory moved or deleted. Identical events in a row are merged by the kernel, so a
/// loop of writes to one file is one event.
fn watch_flags() -> WatchFlags {
    WatchFlags::CREATE
        | WatchFlags::MODIFY
        | WatchFlags::CLOSE_WRITE
        | WatchFlags::MOVED_TO
        | WatchFlags::MOVED_FROM
        | WatchFlags::ATTRIB
        | WatchFlags::MOVE_SELF
        | WatchFlags::DELETE_SELF
        | WatchFlags::EXCL_UNLINK
        | WatchFlags::ONLYDIR
}

/// Why a box's directory cannot be watched.
#[derive(Debug, thiserror::Error)]
pub(super) enum WatchError {
    #[error("inotify: {0}")]
    Inotify(#[from] Errno),
    #[error("the working directory is too large to watch")]
    TooLarge,
}

/// One event read from a box's inotify descriptor.
#[derive(Debug)]
pub(super) struct Noted {
    wd: i32,
    pub(super) mask: ReadFlags,
    name: Option<std::ffi::OsString>,
}

/// inotify watches on every directory of a box's working directory (but `.codebox/`).
#[derive(Debug)]
pub(super) struct Watcher {
    fd: OwnedFd,
    /// Each watch's directory, relative to the working directory.
    dirs: HashMap<i32, PathBuf>,
}

impl Watcher {
    /// Watch every directory below `root`. Blocking.
    pub(super) fn new(root: &Root) -> std::result::Result<Self, WatchError> {
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
        let mut watcher = Self { fd, dirs: HashMap::new() };
        watcher.watch_tree(root, Path::new(""), None)?;
        Ok(watcher)
    }

    /// The events waiting, without waiting for any.
    pub(super) fn read(&self) -> rustix::io::Result<Vec<Noted>> {
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 16 * 1024];
        let mut reader = inotify::Reader::new(&self.fd, &mut buf);
        let mut events = Vec::new();
        loop {
            match reader.next() {
                Ok(event) => events.push(Noted {
                    wd: event.wd(),
                    mask: event.events(),
                    name: event.file_name().map(|n| OsStr::from_bytes(n.to_bytes()).to_owned()),
                }),
                Err(Errno::AGAIN) => return Ok(events),
                Err(e) => return Err(e),
            }
        }
    }

    /// Watch the directory `rel` and every directory below it; its files go to `files` when
    /// given. Blocking.
    fn watch_tree(
        &mut self,
        root: &Root,
        rel: &Path,
        mut files: Option<&mut BTreeMap<PathBuf, bool>>,
    ) -> std::result::Result<(), WatchError> {
        let parts: Vec<&OsStr> = rel.iter().collect();
        let top = root.walk("", &parts, false).map_err(|_| Errno::NOENT)?;
        self.add(&top, rel)?;
        let Some(level) = open_level(top, rel.to_owned()) else { return Ok(()) };
        let mut stack = vec![level];
        let mut visited = 0usize;
        while let Some(level) = stack.last_mut() {
            let entry = match level.entries.next() {
                None => {
                    stack.pop();
                    continue;
                }
                Some(entry) => entry?,
            };
            let name = entry.file_name().to_bytes();
            let at_top = level.rel.as_os_str().is_empty();
            if name == b"." || name == b".." || (at_top && name == RESERVED.as_bytes()) {
                continue;
            }
            visited += 1;
            if visited > MAX_SETUP_ENTRIES {
                return Err(WatchError::TooLarge);
            }
            let name = OsStr::from_bytes(name);
            let kind = match entry.file_type() {
                FileType::Unknown => rustix::fs::statat(&level.fd, name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_or(FileType::Unknown, |st| FileType::from_raw_mode(st.st_mode)),
                kind => kind,
            };
            let path = level.rel.join(name);
            if kind == FileType::Directory {
                if path.iter().count() > MAX_SCAN_DEPTH {
                    return Err(WatchError::TooLarge);
                }
                if let Ok(fd) = rustix::fs::openat(&level.fd, name, dir_flags(), Mode::empty()) {
                    self.add(&fd, &path)?;
                    if let Some(next) = open_level(fd, path) {
                        stack.push(next);
                    }
                }
            } else if let Some(files) = files.as_deref_mut() {
                files.insert(path, true);
            }
        }
        Ok(())
    }

    /// Watch the open directory `fd`, at `rel`.
    fn add(&mut self, fd: &OwnedFd, rel: &Path) -> std::result::Result<(), WatchError> {
        if self.dirs.len() >= MAX_WATCHED_DIRS {
            return Err(WatchError::TooLarge);
        }
        // The descriptor's own name: the very directory opened without following links.
        let wd = inotify::add_watch(&self.fd, format!("/proc/self/fd/{}", fd.as_raw_fd()), watch_flags())?;
        self.dirs.insert(wd, rel.to_owned());
        Ok(())
    }

    /// The artifacts `events` point at (files touched at or after `since`), following the
    /// directories made meanwhile; `None` when the watches no longer match the tree, and a
    /// scan must answer instead. Blocking.
    pub(super) fn collect(
        &mut self,
        root: &Root,
        events: Vec<Noted>,
        since: SystemTime,
    ) -> Option<(Found, HashMap<String, SystemTime>)> {
        // Each path touched, and whether it was made (created or moved in) meanwhile.
        let mut touched = BTreeMap::new();
        for event in events {
            let mask = event.mask;
            if mask.contains(ReadFlags::QUEUE_OVERFLOW) || mask.contains(ReadFlags::MOVE_SELF) {
                return None;
            }
            if mask.contains(ReadFlags::IGNORED) {
                self.dirs.remove(&event.wd);
                continue;
            }
            let (Some(dir), Some(name)) = (self.dirs.get(&event.wd), event.name) else { continue };
            if dir.as_os_str().is_empty() && name == RESERVED {
                continue;
            }
            let path = dir.join(&name);
            if mask.contains(ReadFlags::ISDIR) {
                if mask.contains(ReadFlags::MOVED_FROM) {
                    // Its watches now name a path it no longer has.
                    return None;
                }
                if mask.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO) {
                    self.watch_tree(root, &path, Some(&mut touched)).ok()?;
                }
                continue;
            }
            if !mask.contains(ReadFlags::MOVED_FROM) {
                *touched.entry(path).or_insert(false) |= mask.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO);
            }
        }
        let mut found = Found::default();
        let mut listed = HashMap::new();
        for (path, made) in touched {
            if found.artifacts.len() >= MAX_ARTIFACTS {
                found.truncated = true;
                break;
            }
            if let Some((mut artifact, ctime)) = describe(root, &path, since) {
                // The events say it exactly, where a birth time in the start's clock tick
                // could belong to the execution before.
                artifact.change = if made { ArtifactChange::Created } else { ArtifactChange::Changed };
                listed.insert(artifact.path.clone(), ctime);
                found.artifacts.push(artifact);
            }
        }
        Some((found, listed))
    }
}

/// `path` as an artifact, with its ctime, when it is a regular file (reached without
/// following a link) touched at or after `since`.
fn describe(root: &Root, path: &Path, since: SystemTime) -> Option<(Artifact, SystemTime)> {
    let parts: Vec<&OsStr> = path.iter().collect();
    let (name, dirs) = parts.split_last()?;
    let parent = root.walk("", dirs, false).ok()?;
    let st = rustix::fs::statx(&parent, *name, AtFlags::SYMLINK_NOFOLLOW, wanted_statx()).ok()?;
    artifact_of(path, &st, since)
}

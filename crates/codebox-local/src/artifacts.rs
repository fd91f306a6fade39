//! The files an execution created or changed in the box's working directory, and the images
//! it displayed saved as files on request.
//!
//! How they are found, decided by measurement (`cargo xtask bench`, binary `tracking`, on a
//! 2-core VM shared with other builds; figures in the CHANGELOG's entry):
//!
//! - A scan at the end of each execution of the files whose mtime or ctime is at or after
//!   its start costs about 2 µs an entry: 42 ms for 100 000 files and 88 ms for 1 000 000
//!   even when capped at [`MAX_SCAN_ENTRIES`], on every execution; and even for a working
//!   directory of ten files the hop to the blocking pool put 90 µs (11 %) on the lean
//!   kernel's 0.8 ms `1 + 1`.
//! - inotify watches on every directory (set up once per box, on the blocking pool: a walk
//!   of the tree that reads entries but stats none, which made the first execution take
//!   70 ms with 100 000 files and 830 ms with 1 000 000) cost one non-blocking `read` of the
//!   inotify descriptor per execution that wrote nothing, on the async thread, whatever the
//!   tree's size; only an execution that touched files goes to the blocking pool, to stat
//!   exactly those. This is the way a box normally follows its directory ([`Watch`]).
//! - fanotify would need CAP_SYS_ADMIN and a filesystem of the box's own (only boxes with a
//!   disk limit have one).
//!
//! The scan stays as the fallback: when inotify is unavailable (its instances are capped per
//! user, `max_user_instances`, 128 by default), when the tree has more than
//! [`MAX_WATCHED_DIRS`] directories (watches count against `max_user_watches`, shared by
//! every box), and for the one execution after which the watches no longer match the tree
//! (the event queue overflowed, a watched directory moved); the watches are set up again
//! before the next execution. Directories made during an execution are watched at its end
//! and all their files listed; directories made between executions (an upload) before the
//! next one starts.
//!
//! Either way a file is listed when its modification or status-change time is at or after
//! the execution's start. The status-change time is what makes it trustworthy: the box's
//! code can set a file's mtime back (`touch -d`, `os.utime`), but every write, rename or
//! `utime` sets its ctime to now, which only the kernel sets. A file the watches saw made
//! or moved in was created, any other changed; a scan, which has no events, goes by the
//! statx birth time (at or after the start: created) unless the last execution listed it. Timestamps come from the
//! kernel's coarse clock, so the start is read from that same clock
//! (`CLOCK_REALTIME_COARSE`): a file written a moment after the start never looks older than
//! it. The price, for a scan, is that a file the previous execution wrote in the same clock
//! tick as this one started looks new again; so each box remembers what its last execution
//! listed (path and ctime), and a file unchanged since then is not listed twice.
//!
//! The walks (the scan's and the watches' set-up) follow the rules of `files`: every
//! directory is opened relative to its parent's descriptor with `O_NOFOLLOW` (a watch is put
//! on the descriptor's own `/proc/self/fd` name, the very directory opened), links are never
//! followed (nor listed), the box's own `.codebox/` is skipped, and the depth is capped, so
//! a walk holds at most [`MAX_SCAN_DEPTH`] + 1 open directories.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use codebox_core::{Artifact, ArtifactChange, ExecEvent, Image, MimeBundle};
use rustix::fs::inotify::ReadFlags;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, StatxFlags};
use rustix::io::Errno;

use crate::files::{RESERVED, Root, dir_flags};

mod watch;

pub use self::watch::MAX_WATCHED_DIRS;
use self::watch::{Noted, Watcher};

/// Most directory entries one scan visits; past it the list is marked truncated. At about
/// 2 µs an entry (more when the inodes are not cached), this bounds what a scan can add to an
/// execution to some tens of milliseconds.
pub(crate) const MAX_SCAN_ENTRIES: usize = 20_000;
/// Most directories one scan descends into.
pub(crate) const MAX_SCAN_DIRS: usize = 2_000;
/// How many directory levels below the working directory a scan descends (it holds one more
/// directory open than this, the working directory's own).
pub(crate) const MAX_SCAN_DEPTH: usize = 32;
/// Most artifacts one execution lists; past it the list is marked truncated.
pub(crate) const MAX_ARTIFACTS: usize = 1_000;
/// The directory, below the working directory, that saved images go to.
pub(crate) const IMAGES_DIR: &str = "images";
/// How many other names a saved image tries when its own is taken by a user's file.
const NAME_ATTEMPTS: usize = 100;

/// A box's tracking of its working directory, kept across its executions.
#[derive(Debug, Default)]
pub(crate) struct BoxFiles {
    /// What the last execution listed, path and ctime: a scan leaves those out when unchanged.
    last: HashMap<String, SystemTime>,
    watch: Watch,
}

/// How a box's working directory is being followed.
#[derive(Debug, Default)]
enum Watch {
    /// Not yet: the first execution sets it up.
    #[default]
    Unstarted,
    /// Every directory has an inotify watch.
    Watching(Watcher),
    /// The watches no longer match the tree (a directory moved, the queue overflowed): set up
    /// again before the next execution.
    Stale,
    /// inotify is unavailable or the tree is too large to watch: every execution scans.
    Scanning,
}

/// A box's [`BoxFiles`], shared by its executions.
pub(crate) type SharedFiles = Arc<Mutex<BoxFiles>>;

fn lock(files: &SharedFiles) -> std::sync::MutexGuard<'_, BoxFiles> {
    files.lock().unwrap_or_else(|e| e.into_inner())
}

/// What one execution's tracking of files needs: where to look, since when, and whether to
/// save its images.
#[derive(Debug)]
pub(crate) struct ArtifactScan {
    root: Arc<Root>,
    since: SystemTime,
    files: SharedFiles,
    save_images: bool,
    /// The images the execution displayed, kept only when they are to be saved.
    images: Vec<Image>,
}

/// What a scan found.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Found {
    pub(crate) artifacts: Vec<Artifact>,
    pub(crate) truncated: bool,
}

/// The kernel's coarse wall clock, the one file timestamps are taken from.
pub(crate) fn coarse_now() -> SystemTime {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    timestamp(ts.tv_sec, ts.tv_nsec as u32).unwrap_or(UNIX_EPOCH)
}

fn timestamp(secs: i64, nanos: u32) -> Option<SystemTime> {
    u64::try_from(secs).ok().map(|s| UNIX_EPOCH + Duration::new(s, nanos))
}

impl ArtifactScan {
    /// Tracking for an execution about to start in `root`; call it before the code is sent.
    /// What happened in the directory since the last execution is put aside here (on the
    /// blocking pool only when watches must be set up or added).
    pub(crate) async fn starting(root: Arc<Root>, save_images: bool, files: SharedFiles) -> Self {
        let pending = lock(&files).drain_between_executions();
        if let Some(pending) = pending {
            let (files, root) = (files.clone(), root.clone());
            // Should the task fail, the watches stay as they were and the execution is scanned.
            let _ = tokio::task::spawn_blocking(move || lock(&files).prepare(&root, pending)).await;
        }
        Self { root, since: coarse_now(), files, save_images, images: Vec::new() }
    }

    /// Note an event the execution produced (its images, when they are to be saved).
    pub(crate) fn note(&mut self, event: &ExecEvent) {
        if !self.save_images {
            return;
        }
        let data = match event {
            ExecEvent::Display { data, .. } | ExecEvent::Result { data, .. } => data,
            _ => return,
        };
        for mime in [MimeBundle::PNG, MimeBundle::JPEG] {
            if let Some(bytes) = data.binary(mime) {
                self.images.push(Image { mime: mime.to_owned(), bytes });
            }
        }
        if let Some(svg) = data.text_of(MimeBundle::SVG) {
            self.images.push(Image { mime: MimeBundle::SVG.to_owned(), bytes: svg.into_bytes() });
        }
    }

    /// Save the noted images (named after `execution_count`) and find what the execution
    /// created or changed. A watched directory in which nothing happened answers at once,
    /// without leaving the async thread; anything else is done on the blocking pool.
    pub(crate) async fn finish(self, execution_count: Option<u64>) -> Found {
        let mut pending = Vec::new();
        if self.images.is_empty() {
            let mut files = lock(&self.files);
            if let Watch::Watching(watcher) = &files.watch {
                match watcher.read() {
                    Ok(events) if events.is_empty() => {
                        files.last.clear();
                        return Found::default();
                    }
                    Ok(events) => pending = events,
                    Err(_) => files.watch = Watch::Stale,
                }
            }
        }
        tokio::task::spawn_blocking(move || self.finish_blocking(execution_count, pending))
            .await
            // A task that panicked found nothing certain: say the list is incomplete.
            .unwrap_or_else(|_| Found { artifacts: Vec::new(), truncated: true })
    }

    fn finish_blocking(self, execution_count: Option<u64>, mut pending: Vec<Noted>) -> Found {
        if !self.images.is_empty() {
            save_images(&self.root, execution_count.unwrap_or(0), &self.images);
        }
        let mut files = lock(&self.files);
        let watched = match &mut files.watch {
            Watch::Watching(watcher) => match watcher.read() {
                Ok(more) => {
                    pending.extend(more);
                    watcher.collect(&self.root, pending, self.since)
                }
                Err(_) => None,
            },
            _ => None,
        };
        let (found, listed) = match watched {
            Some(found) => found,
            None => {
                if matches!(files.watch, Watch::Watching(_)) {
                    files.watch = Watch::Stale;
                }
                scan(&self.root, self.since, &files.last)
            }
        };
        files.last = listed;
        found
    }
}

impl BoxFiles {
    /// Put aside what happened since the last execution; `Some` with what needs the blocking
    /// pool (setting up watches, watching new directories).
    fn drain_between_executions(&mut self) -> Option<Vec<Noted>> {
        match &self.watch {
            Watch::Unstarted | Watch::Stale => Some(Vec::new()),
            Watch::Scanning => None,
            Watch::Watching(watcher) => match watcher.read() {
                Ok(events) => {
                    let directories =
                        events.iter().any(|e| e.mask.intersects(ReadFlags::ISDIR | ReadFlags::QUEUE_OVERFLOW));
                    directories.then_some(events)
                }
                Err(_) => {
                    self.watch = Watch::Stale;
                    Some(Vec::new())
                }
            },
        }
    }

    /// Set the watches up when there are none, or follow the directories made since the last
    /// execution. Blocking.
    fn prepare(&mut self, root: &Root, pending: Vec<Noted>) {
        if let Watch::Watching(watcher) = &mut self.watch
            && watcher.collect(root, pending, UNIX_EPOCH).is_some()
        {
            return;
        }
        self.watch = match Watcher::new(root) {
            Ok(watcher) => Watch::Watching(watcher),
            Err(why) => {
                tracing::debug!("scanning for artifacts after every execution: {why}");
                Watch::Scanning
            }
        };
    }
}

fn wanted_statx() -> StatxFlags {
    StatxFlags::TYPE | StatxFlags::SIZE | StatxFlags::MTIME | StatxFlags::CTIME | StatxFlags::BTIME
}

/// The artifact `st` describes at `path`, with its ctime, when it is a regular file whose
/// mtime or ctime is at or after `since`. Born (statx birth time) at or after `since`, it
/// was created; else changed. Without a birth time (a filesystem that keeps none) a file
/// cannot be told new, and counts as changed.
fn artifact_of(path: &Path, st: &rustix::fs::Statx, since: SystemTime) -> Option<(Artifact, SystemTime)> {
    if FileType::from_raw_mode(u32::from(st.stx_mode)) != FileType::RegularFile {
        return None;
    }
    let mtime = timestamp(st.stx_mtime.tv_sec, st.stx_mtime.tv_nsec);
    let ctime = timestamp(st.stx_ctime.tv_sec, st.stx_ctime.tv_nsec);
    if mtime.max(ctime).is_none_or(|t| t < since) {
        return None;
    }
    let born = (st.stx_mask & StatxFlags::BTIME.bits() != 0)
        .then(|| timestamp(st.stx_btime.tv_sec, st.stx_btime.tv_nsec))
        .flatten();
    let change = if born.is_some_and(|b| b >= since) { ArtifactChange::Created } else { ArtifactChange::Changed };
    let artifact = Artifact::new(path.to_string_lossy().into_owned(), st.stx_size, mtime, change);
    Some((artifact, ctime.unwrap_or(UNIX_EPOCH)))
}

/// Write `images` as new files under [`IMAGES_DIR`], `<count>-<n>.<ext>` (n from 1), given to
/// the box's user. A name a file already has is never overwritten: the image takes the next
/// free `<count>-<n>-<k>.<ext>`. An image that cannot be written is left out, with a warning.
pub(crate) fn save_images(root: &Root, count: u64, images: &[Image]) {
    let dir = match root.walk(IMAGES_DIR, &[OsStr::new(IMAGES_DIR)], true) {
        Ok(dir) => dir,
        Err(e) => {
            tracing::warn!("not saving the execution's images: {e}");
            return;
        }
    };
    for (n, image) in images.iter().enumerate() {
        let ext = image.extension();
        let names = std::iter::once(format!("{count}-{}.{ext}", n + 1))
            .chain((1..NAME_ATTEMPTS).map(|k| format!("{count}-{}-{k}.{ext}", n + 1)));
        let mut saved = false;
        for name in names {
            match write_new(root, &dir, &name, &image.bytes) {
                Ok(()) => {
                    saved = true;
                    break;
                }
                Err(Errno::EXIST) => continue,
                Err(e) => {
                    tracing::warn!("saving an image as {IMAGES_DIR}/{name} failed: {e}");
                    break;
                }
            }
        }
        if !saved {
            tracing::warn!("image {} of execution {count} was not saved", n + 1);
        }
    }
}

/// Create `name` in `dir` (never opening an existing file or following a link) and write
/// `bytes` to it.
fn write_new(root: &Root, dir: &OwnedFd, name: &str, bytes: &[u8]) -> rustix::io::Result<()> {
    use std::io::Write as _;
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o644))?;
    let written = root.give(&fd, name).map_err(|_| Errno::PERM).and_then(|()| {
        let mut file = std::fs::File::from(fd);
        file.write_all(bytes).map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))
    });
    if written.is_err() {
        let _ = rustix::fs::unlinkat(dir, name, AtFlags::empty());
    }
    written
}

/// One open directory of the walk: its descriptor, its entries, its path below the root.
struct Level {
    fd: OwnedFd,
    entries: rustix::fs::Dir,
    rel: PathBuf,
}

/// The regular files below `root` whose mtime or ctime is at or after `since`, ordered by
/// path, within [`MAX_SCAN_ENTRIES`], [`MAX_SCAN_DIRS`], [`MAX_SCAN_DEPTH`] and
/// [`MAX_ARTIFACTS`], leaving out those `last` listed with the same ctime; and what it listed,
/// for the next scan's `last`. Blocking.
pub(crate) fn scan(
    root: &Root,
    since: SystemTime,
    last: &HashMap<String, SystemTime>,
) -> (Found, HashMap<String, SystemTime>) {
    let mut found = Found::default();
    let mut listed = HashMap::new();
    let Some(top) = root.walk("", &[], false).ok().and_then(|fd| open_level(fd, PathBuf::new())) else {
        return (found, listed);
    };
    let mut stack = vec![top];
    let (mut visited, mut dirs) = (0usize, 0usize);
    while let Some(level) = stack.last_mut() {
        let entry = match level.entries.next() {
            None => {
                stack.pop();
                continue;
            }
            Some(Err(_)) => {
                // A directory that cannot be read to its end: what it still held is unknown.
                found.truncated = true;
                stack.pop();
                continue;
            }
            Some(Ok(entry)) => entry,
        };
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." || (stack.len() == 1 && name == RESERVED.as_bytes()) {
            continue;
        }
        visited += 1;
        if visited > MAX_SCAN_ENTRIES {
            found.truncated = true;
            break;
        }
        let level = stack.last().expect("the level just read");
        let name = OsStr::from_bytes(name);
        let kind = match entry.file_type() {
            // A filesystem that leaves types out of its entries: ask the entry itself.
            FileType::Unknown => rustix::fs::statat(&level.fd, name, AtFlags::SYMLINK_NOFOLLOW)
                .map_or(FileType::Unknown, |st| FileType::from_raw_mode(st.st_mode)),
            kind => kind,
        };
        if kind == FileType::Directory {
            if stack.len() > MAX_SCAN_DEPTH || dirs >= MAX_SCAN_DIRS {
                found.truncated = true;
                continue;
            }
            dirs += 1;
            let rel = level.rel.join(name);
            // Replaced by a link or removed meanwhile: O_NOFOLLOW refuses it, and it is skipped.
            if let Ok(fd) = rustix::fs::openat(&level.fd, name, dir_flags(), Mode::empty())
                && let Some(next) = open_level(fd, rel)
            {
                stack.push(next);
            }
            continue;
        }
        if kind != FileType::RegularFile {
            continue;
        }
        let Ok(st) = rustix::fs::statx(&level.fd, name, AtFlags::SYMLINK_NOFOLLOW, wanted_statx()) else { continue };
        let path = level.rel.join(name);
        let Some((mut artifact, ctime)) = artifact_of(&path, &st, since) else { continue };
        match last.get(&artifact.path) {
            // Listed by the previous execution and untouched since.
            Some(before) if *before == ctime => continue,
            // It existed then, whatever its birth time's clock tick says.
            Some(_) => artifact.change = ArtifactChange::Changed,
            None => {}
        }
        if found.artifacts.len() >= MAX_ARTIFACTS {
            found.truncated = true;
            break;
        }
        listed.insert(artifact.path.clone(), ctime);
        found.artifacts.push(artifact);
    }
    found.artifacts.sort_by(|a, b| a.path.cmp(&b.path));
    (found, listed)
}

fn open_level(fd: OwnedFd, rel: PathBuf) -> Option<Level> {
    let entries = rustix::fs::Dir::read_from(&fd).ok()?;
    Some(Level { fd, entries, rel })
}

#[cfg(test)]
mod tests;

//! The files an execution created or changed in the box's working directory, and the images
//! it displayed saved as files on request.
//!
//! How they are found: once the execution ends (before its `End` is sent and before the next
//! execution may start), a scan on the blocking pool visits the working directory and keeps
//! every regular file whose modification or status-change time is at or after the
//! execution's start. The status-change time is what makes it trustworthy: the box's code can
//! set a file's mtime back (`touch -d`, `os.utime`), but every write, rename or `utime` sets
//! its ctime to now, which only the kernel sets. A file born (statx birth time) at or after
//! the start was created, any other was changed. Timestamps come from the kernel's coarse
//! clock, so the start is read from that same clock (`CLOCK_REALTIME_COARSE`): a file written
//! a moment after the start never looks older than it. The price is that a file the previous
//! execution wrote in the same clock tick as this one started looks new again; so each box
//! remembers what its last execution listed (path and ctime), and a file unchanged since
//! then is not listed twice. A later write of it still shows: the scan read its ctime, and
//! the kernel gives the next change of a file whose ctime was read a fine-grained time.
//!
//! Why a scan and not inotify or fanotify (measured with `cargo xtask bench`, binary
//! `tracking`, on a 2-core VM): the scan costs about a
//! microsecond per entry, nothing for a working directory of a few files (the common case,
//! well under 1 % of a warm `1 + 1`), and it is bounded by [`MAX_SCAN_ENTRIES`] and
//! [`MAX_SCAN_DIRS`], so a box of 100 000 or 1 000 000 files pays the same capped cost on
//! every execution and its list says `artifacts_truncated`. inotify would cost nothing per
//! execution even in a huge tree, but it needs a watch on every directory (made by walking
//! the whole tree when the box starts, and again for every directory the code makes, racing
//! the files made in it), its instances are capped per user (`max_user_instances`, 128 by
//! default: one per box would bound a server's sessions) and its queue overflows on a busy
//! box, which then needs this scan anyway. fanotify on the box's filesystem image needs
//! CAP_SYS_ADMIN and exists only for boxes with a disk limit. The scan is the one path that
//! works for every box; see ARCHITECTURE.md.
//!
//! The walk follows the rules of `files`: every directory is opened relative to its
//! parent's descriptor with `O_NOFOLLOW`, links are never followed (nor listed), the box's
//! own `.codebox/` is skipped, and the depth is capped, so the walk holds at most
//! [`MAX_SCAN_DEPTH`] + 1 open directories.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use codebox_core::{Artifact, ArtifactChange, ExecEvent, Image, MimeBundle};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, StatxFlags};
use rustix::io::Errno;

use crate::files::{RESERVED, Root, dir_flags};

/// Most directory entries one scan visits; past it the list is marked truncated. At about a
/// microsecond an entry, this bounds the cost an execution can be charged.
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

/// What a box's last execution listed: each path with its ctime then.
pub(crate) type LastListed = Arc<Mutex<HashMap<String, SystemTime>>>;

/// What one execution's tracking of files needs: where to look, since when, and whether to
/// save its images.
#[derive(Debug)]
pub(crate) struct ArtifactScan {
    root: Arc<Root>,
    since: SystemTime,
    last: LastListed,
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
    /// Tracking for an execution starting now in `root`. Call it before the code is sent.
    /// `last` is what the box's previous execution listed, replaced by this one's.
    pub(crate) fn starting_now(root: Arc<Root>, save_images: bool, last: LastListed) -> Self {
        Self { root, since: coarse_now(), last, save_images, images: Vec::new() }
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

    /// Save the noted images (named after `execution_count`) and scan for what the execution
    /// created or changed. Blocking: run it on the blocking pool.
    pub(crate) fn finish(self, execution_count: Option<u64>) -> Found {
        if !self.images.is_empty() {
            save_images(&self.root, execution_count.unwrap_or(0), &self.images);
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let (found, listed) = scan(&self.root, self.since, &last);
        *last = listed;
        found
    }
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
        let wanted = StatxFlags::TYPE | StatxFlags::SIZE | StatxFlags::MTIME | StatxFlags::CTIME | StatxFlags::BTIME;
        let Ok(st) = rustix::fs::statx(&level.fd, name, AtFlags::SYMLINK_NOFOLLOW, wanted) else { continue };
        if FileType::from_raw_mode(u32::from(st.stx_mode)) != FileType::RegularFile {
            continue;
        }
        let mtime = timestamp(st.stx_mtime.tv_sec, st.stx_mtime.tv_nsec);
        let ctime = timestamp(st.stx_ctime.tv_sec, st.stx_ctime.tv_nsec);
        if mtime.max(ctime).is_none_or(|t| t < since) {
            continue;
        }
        if found.artifacts.len() >= MAX_ARTIFACTS {
            found.truncated = true;
            break;
        }
        let born = (st.stx_mask & StatxFlags::BTIME.bits() != 0)
            .then(|| timestamp(st.stx_btime.tv_sec, st.stx_btime.tv_nsec))
            .flatten();
        // Without a birth time (a filesystem that keeps none) a file cannot be told new.
        let change = if born.is_some_and(|b| b >= since) { ArtifactChange::Created } else { ArtifactChange::Changed };
        let path = level.rel.join(name).to_string_lossy().into_owned();
        let ctime = ctime.unwrap_or(UNIX_EPOCH);
        if last.get(&path) == Some(&ctime) {
            // Listed by the previous execution and untouched since.
            continue;
        }
        listed.insert(path.clone(), ctime);
        found.artifacts.push(Artifact::new(path, st.stx_size, mtime, change));
    }
    found.artifacts.sort_by(|a, b| a.path.cmp(&b.path));
    (found, listed)
}

fn open_level(fd: OwnedFd, rel: PathBuf) -> Option<Level> {
    let entries = rustix::fs::Dir::read_from(&fd).ok()?;
    Some(Level { fd, entries, rel })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn since_now() -> SystemTime {
        // Let the coarse clock tick past whatever the test wrote before.
        std::thread::sleep(Duration::from_millis(20));
        coarse_now()
    }

    fn paths(found: &Found) -> Vec<(&str, ArtifactChange)> {
        found.artifacts.iter().map(|a| (a.path.as_str(), a.change)).collect()
    }

    #[test]
    fn a_scan_lists_created_and_changed_files_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("old.txt"), "old").unwrap();
        std::fs::write(dir.path().join("kept.txt"), "kept").unwrap();
        std::fs::create_dir_all(dir.path().join(".codebox/site-packages")).unwrap();
        let root = Root::open(dir.path(), None).unwrap();
        let since = since_now();
        assert_eq!(scan(&root, since, &HashMap::new()).0, Found::default(), "nothing written, nothing listed");
        std::fs::write(dir.path().join("old.txt"), "changed").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/new.csv"), "1,2").unwrap();
        std::fs::write(dir.path().join(".codebox/site-packages/x.py"), "").unwrap();
        let found = scan(&root, since, &HashMap::new()).0;
        assert_eq!(paths(&found), [("old.txt", ArtifactChange::Changed), ("sub/new.csv", ArtifactChange::Created)]);
        assert_eq!(found.artifacts[1].size, 3);
        assert!(!found.truncated);
    }

    #[test]
    fn what_the_last_scan_listed_is_listed_again_only_when_changed_since() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path(), None).unwrap();
        let since = since_now();
        std::fs::write(dir.path().join("a.txt"), "a").unwrap();
        let (found, listed) = scan(&root, since, &HashMap::new());
        assert_eq!(paths(&found), [("a.txt", ArtifactChange::Created)]);
        // A next execution that started in the same clock tick: nothing new.
        let (again, _) = scan(&root, since, &listed);
        assert_eq!(again, Found::default());
        // Past the tick, so the rewrite has a ctime of its own on any kernel.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(dir.path().join("a.txt"), "b").unwrap();
        assert_eq!(paths(&scan(&root, since, &listed).0), [("a.txt", ArtifactChange::Created)]);
    }

    #[test]
    fn setting_the_mtime_back_does_not_hide_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.txt");
        std::fs::write(&file, "a").unwrap();
        let root = Root::open(dir.path(), None).unwrap();
        let since = since_now();
        std::fs::write(&file, "b").unwrap();
        std::fs::File::options().write(true).open(&file).unwrap().set_modified(UNIX_EPOCH).unwrap();
        assert_eq!(paths(&scan(&root, since, &HashMap::new()).0), [("f.txt", ArtifactChange::Changed)]);
    }

    #[test]
    fn links_are_never_followed_out() {
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).unwrap();
        let root = Root::open(dir.path(), None).unwrap();
        let since = since_now();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).unwrap();
        assert_eq!(scan(&root, since, &HashMap::new()).0, Found::default());
    }

    #[test]
    fn a_large_tree_is_cut_at_the_caps_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path(), None).unwrap();
        let since = since_now();
        for i in 0..=MAX_ARTIFACTS {
            std::fs::write(dir.path().join(format!("f{i}")), "").unwrap();
        }
        let found = scan(&root, since, &HashMap::new()).0;
        assert!(found.truncated);
        assert_eq!(found.artifacts.len(), MAX_ARTIFACTS);
        let other = tempfile::tempdir().unwrap();
        let deep_only = (0..=MAX_SCAN_DEPTH).fold(other.path().to_owned(), |p, i| p.join(format!("d{i}")));
        std::fs::create_dir_all(&deep_only).unwrap();
        std::fs::write(deep_only.join("bottom.txt"), "").unwrap();
        let found = scan(&Root::open(other.path(), None).unwrap(), since, &HashMap::new()).0;
        assert!(found.truncated && found.artifacts.is_empty(), "{found:?}");
    }

    #[test]
    fn saved_images_never_overwrite_a_users_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(IMAGES_DIR)).unwrap();
        std::fs::write(dir.path().join("images/3-1.png"), "mine").unwrap();
        let root = Root::open(dir.path(), None).unwrap();
        let png = Image { mime: MimeBundle::PNG.to_owned(), bytes: b"\x89PNG".to_vec() };
        let svg = Image { mime: MimeBundle::SVG.to_owned(), bytes: b"<svg/>".to_vec() };
        save_images(&root, 3, &[png, svg]);
        assert_eq!(std::fs::read(dir.path().join("images/3-1.png")).unwrap(), b"mine");
        assert_eq!(std::fs::read(dir.path().join("images/3-1-1.png")).unwrap(), b"\x89PNG");
        assert_eq!(std::fs::read(dir.path().join("images/3-2.svg")).unwrap(), b"<svg/>");
    }

    #[test]
    fn images_go_nowhere_when_their_directory_is_a_link() {
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join(IMAGES_DIR)).unwrap();
        let root = Root::open(dir.path(), None).unwrap();
        save_images(&root, 1, &[Image { mime: MimeBundle::PNG.to_owned(), bytes: vec![1] }]);
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
    }
}

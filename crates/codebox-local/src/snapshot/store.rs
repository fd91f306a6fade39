//! The snapshot directory on disk, and how it is written so that a crash never leaves a
//! half that resumes wrong.
//!
//! ```text
//! <state dir>/CURRENT           "<snapshot> <sha256 of its manifest> <box id>", replaced by rename
//! <state dir>/snap-<hex>/manifest.json
//! <state dir>/snap-<hex>/files/  the working directory (packages, pickled namespaces included)
//! ```
//!
//! A save writes a new `snap-<hex>` beside the current one, syncs every file and directory,
//! then replaces `CURRENT` (temporary, fsync, rename, fsync of the directory) and only then
//! removes the older snapshot. A crash before the rename leaves the previous snapshot (or
//! none) current; an unfinished `snap-<hex>` is removed by the next save. Every byte a resume
//! reads is checked: the manifest against the hash in `CURRENT`, each file against its size and
//! hash in the manifest.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use codebox_core::{ExecutionRecord, PauseReport};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The file naming the current snapshot.
const CURRENT: &str = "CURRENT";
/// The snapshot's description, inside it.
const MANIFEST: &str = "manifest.json";
/// The copy of the working directory, inside a snapshot.
pub(crate) const FILES: &str = "files";
/// The version of the layout this code writes and reads.
const FORMAT: u32 = 1;
/// Bytes copied (and hashed) at a time.
const CHUNK: usize = 1 << 20;

/// What goes wrong reading or writing a snapshot.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SnapshotError {
    /// The state directory holds no snapshot.
    #[error("{0} holds no snapshot")]
    Missing(PathBuf),
    /// A snapshot's bytes are not what was written.
    #[error("the snapshot in {dir} is damaged: {what}")]
    Damaged { dir: PathBuf, what: String },
    /// The file system refused.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let context = context.into();
    move |source| SnapshotError::Io { context, source }
}

/// One thing of the working directory, as the snapshot keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Entry {
    /// A directory (made before anything inside it).
    Dir { path: String, mode: u32 },
    /// A regular file, its bytes checked on resume.
    File { path: String, mode: u32, size: u64, sha256: String, mtime_ns: i64 },
    /// A symbolic link, kept as a link (never followed).
    Symlink { path: String, target: String },
}

/// A snapshot's description: what box it is, how to start it again, and its contents.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub(crate) format: u32,
    pub(crate) box_id: String,
    pub(crate) kernel: String,
    #[serde(default)]
    pub(crate) template: Option<String>,
    #[serde(default)]
    pub(crate) language: Option<String>,
    /// What the pause reported (rungs, what it kept and what it could not).
    pub(crate) report: PauseReport,
    /// The box's execution history, oldest first.
    pub(crate) history: Vec<ExecutionRecord>,
    /// The code contexts besides the default one, made again on resume.
    #[serde(default)]
    pub(crate) contexts: Vec<SavedContext>,
    pub(crate) entries: Vec<Entry>,
}

/// A code context as a snapshot keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SavedContext {
    pub(crate) id: String,
    pub(crate) language: String,
    /// Its starting directory, relative to the working directory.
    #[serde(default)]
    pub(crate) cwd: Option<String>,
    /// The stem of its pickled namespace, when it has one.
    #[serde(default)]
    pub(crate) stem: Option<String>,
}

impl Manifest {
    /// A manifest of `box_id`, run by `kernel`, with nothing in it yet.
    pub(crate) fn new(box_id: &str, kernel: &str, report: PauseReport) -> Self {
        Self {
            format: FORMAT,
            box_id: box_id.to_owned(),
            kernel: kernel.to_owned(),
            template: None,
            language: None,
            report,
            history: Vec::new(),
            contexts: Vec::new(),
            entries: Vec::new(),
        }
    }
}

/// A snapshot read back and checked (its files are checked as they are restored).
pub(crate) struct Snapshot {
    /// The snapshot's own directory.
    pub(crate) dir: PathBuf,
    pub(crate) manifest: Manifest,
}

impl Snapshot {
    /// Where the snapshot's copy of the working directory is: reachable even when the
    /// snapshot cannot be resumed.
    pub(crate) fn files_dir(&self) -> PathBuf {
        self.dir.join(FILES)
    }
}

/// The box id `CURRENT` in `state_dir` names, when it can be read: an error about a damaged
/// manifest still names its box.
pub(crate) fn current_box_id(state_dir: &Path) -> Option<String> {
    let current = std::fs::read_to_string(state_dir.join(CURRENT)).ok()?;
    current.split_whitespace().nth(2).map(str::to_owned)
}

/// The directory of the current snapshot in `state_dir` (its files are there even when the
/// snapshot is damaged).
pub(crate) fn current_dir(state_dir: &Path) -> Option<PathBuf> {
    let current = std::fs::read_to_string(state_dir.join(CURRENT)).ok()?;
    let name = current.split_whitespace().next()?;
    is_snapshot_name(name).then(|| state_dir.join(name))
}

/// The copy of the working directory in the current snapshot of `state_dir`, when there is one.
pub(crate) fn current_files(state_dir: &Path) -> Option<PathBuf> {
    current_dir(state_dir).map(|d| d.join(FILES)).filter(|f| f.is_dir())
}

fn is_snapshot_name(name: &str) -> bool {
    name.strip_prefix("snap-").is_some_and(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Read the current snapshot of `state_dir` and check its manifest.
pub(crate) fn read(state_dir: &Path) -> Result<Snapshot, SnapshotError> {
    let current_path = state_dir.join(CURRENT);
    let current = match std::fs::read(&current_path) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SnapshotError::Missing(state_dir.to_owned()));
        }
        Err(e) => return Err(io(format!("reading {}", current_path.display()))(e)),
    };
    let damaged = |what: String| SnapshotError::Damaged { dir: state_dir.to_owned(), what };
    let current = String::from_utf8(current).map_err(|_| damaged("CURRENT is not text".into()))?;
    let mut words = current.split_whitespace();
    let (Some(name), Some(hash)) = (words.next(), words.next()) else {
        return Err(damaged("CURRENT does not name a snapshot".into()));
    };
    if !is_snapshot_name(name) {
        return Err(damaged(format!("CURRENT names {name:?}, not a snapshot")));
    }
    let dir = state_dir.join(name);
    let bytes = std::fs::read(dir.join(MANIFEST)).map_err(|e| damaged(format!("its manifest cannot be read ({e})")))?;
    if hex(&Sha256::digest(&bytes)) != hash {
        return Err(damaged("its manifest is not the one written (hash mismatch)".into()));
    }
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| damaged(format!("its manifest does not parse: {e}")))?;
    if manifest.format != FORMAT {
        return Err(damaged(format!("format {} (this codebox reads {FORMAT})", manifest.format)));
    }
    Ok(Snapshot { dir, manifest })
}

/// A snapshot being written into `state_dir`; it becomes current on [`Writer::commit`] and
/// is removed if dropped before.
pub(crate) struct Writer {
    state_dir: PathBuf,
    dir: PathBuf,
    /// Directories written, synced before the commit.
    dirs: Vec<PathBuf>,
    /// Bytes written so far.
    pub(crate) bytes: u64,
    pub(crate) files: u64,
    committed: bool,
}

impl Writer {
    /// Start a new snapshot in `state_dir` (made if missing), removing what an earlier save
    /// left unfinished.
    pub(crate) fn begin(state_dir: &Path) -> Result<Self, SnapshotError> {
        std::fs::create_dir_all(state_dir).map_err(io(format!("making {}", state_dir.display())))?;
        remove_unreferenced(state_dir);
        let dir = state_dir.join(format!("snap-{}", crate::util::random_hex(8)));
        std::fs::create_dir(&dir).map_err(io(format!("making {}", dir.display())))?;
        Ok(Self { state_dir: state_dir.to_owned(), dir, dirs: Vec::new(), bytes: 0, files: 0, committed: false })
    }

    /// Copy the tree at `from` into the snapshot's `files/`, leaving out the relative paths
    /// `skip` names (and sockets, FIFOs and devices, which are not data). Returns its entries.
    pub(crate) fn copy_tree(&mut self, from: &Path, skip: &[&str]) -> Result<Vec<Entry>, SnapshotError> {
        let to = self.dir.join(FILES);
        // Files are opened beneath this descriptor without following any link: the box's
        // code may still be running, and may swap a file for a link to one of the host's.
        let root = rustix::fs::open(from, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| io(format!("opening {}", from.display()))(e.into()))?;
        std::fs::create_dir(&to).map_err(io(format!("making {}", to.display())))?;
        self.dirs.push(to.clone());
        let mut entries = Vec::new();
        // Iterative: the box's code shapes the tree, which may be deeper than any stack.
        let mut pending = vec![String::new()];
        while let Some(rel) = pending.pop() {
            let dir = from.join(&rel);
            let mut children: Vec<_> = std::fs::read_dir(&dir)
                .map_err(io(format!("listing {}", dir.display())))?
                .filter_map(std::result::Result::ok)
                .collect();
            children.sort_by_key(std::fs::DirEntry::file_name);
            for child in children {
                let Some(name) = child.file_name().to_str().map(str::to_owned) else {
                    tracing::warn!(path = %child.path().display(), "a file name that is not UTF-8 is not kept");
                    continue;
                };
                let path = if rel.is_empty() { name } else { format!("{rel}/{name}") };
                if skip.contains(&path.as_str()) {
                    continue;
                }
                let source = child.path();
                let meta = std::fs::symlink_metadata(&source).map_err(io(format!("reading {}", source.display())))?;
                let target = to.join(&path);
                let kind = meta.file_type();
                if kind.is_dir() {
                    std::fs::create_dir(&target).map_err(io(format!("making {}", target.display())))?;
                    self.dirs.push(target);
                    entries.push(Entry::Dir { path: path.clone(), mode: meta.mode() & 0o7777 });
                    pending.push(path);
                } else if kind.is_symlink() {
                    let link = std::fs::read_link(&source).map_err(io(format!("reading {}", source.display())))?;
                    let link = link.to_string_lossy().into_owned();
                    std::os::unix::fs::symlink(&link, &target).map_err(io(format!("making {}", target.display())))?;
                    entries.push(Entry::Symlink { path, target: link });
                } else if kind.is_file() {
                    let file = rustix::fs::openat2(
                        &root,
                        path.as_str(),
                        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
                        Mode::empty(),
                        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
                    )
                    .map_err(|e| io(format!("opening {}", source.display()))(e.into()))?;
                    let (size, sha256) = copy_file(File::from(file), &source, &target, None, true)?;
                    self.bytes += size;
                    self.files += 1;
                    let mtime_ns = meta.mtime().saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec());
                    entries.push(Entry::File { path, mode: meta.mode() & 0o7777, size, sha256, mtime_ns });
                }
            }
        }
        Ok(entries)
    }

    /// Write the manifest, sync everything and make the snapshot current. The previous
    /// snapshot is removed after.
    pub(crate) fn commit(mut self, manifest: &Manifest) -> Result<PathBuf, SnapshotError> {
        let bytes = serde_json::to_vec(manifest).map_err(|e| io("writing the manifest")(std::io::Error::other(e)))?;
        write_synced(&self.dir.join(MANIFEST), &bytes)?;
        self.bytes += bytes.len() as u64;
        // Innermost first: each directory's entries are durable before the directory above.
        for dir in self.dirs.iter().rev() {
            sync_dir(dir)?;
        }
        sync_dir(&self.dir)?;
        let name = self.dir.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        let current = format!("{name} {} {}\n", hex(&Sha256::digest(&bytes)), manifest.box_id);
        let tmp = self.state_dir.join(format!(".{CURRENT}.{}", crate::util::random_hex(4)));
        write_synced(&tmp, current.as_bytes())?;
        std::fs::rename(&tmp, self.state_dir.join(CURRENT)).map_err(io("making the snapshot current"))?;
        sync_dir(&self.state_dir)?;
        self.committed = true;
        remove_unreferenced(&self.state_dir);
        Ok(self.dir.clone())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.committed {
            let _ = codebox_sandbox::rmtree::remove_tree(&self.dir);
        }
    }
}

/// Remove every snapshot directory `CURRENT` does not name: older ones and unfinished ones.
fn remove_unreferenced(state_dir: &Path) {
    let current = current_dir(state_dir);
    let Ok(children) = std::fs::read_dir(state_dir) else { return };
    for child in children.filter_map(std::result::Result::ok) {
        let name = child.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = child.path();
        if is_snapshot_name(name) && Some(&path) != current.as_ref() {
            if let Err(e) = codebox_sandbox::rmtree::remove_tree(&path) {
                tracing::warn!(path = %path.display(), "removing an old snapshot failed: {e}");
            }
        } else if name.starts_with(&format!(".{CURRENT}.")) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Restore `snapshot`'s files into `to`, checking each against the manifest, owned by `uid`
/// when given. Returns how many files came back.
pub(crate) fn restore_tree(snapshot: &Snapshot, to: &Path, uid: Option<u32>) -> Result<u64, SnapshotError> {
    let from = snapshot.files_dir();
    let damaged = |what: String| SnapshotError::Damaged { dir: snapshot.dir.clone(), what };
    let own = |path: &Path| -> Result<(), SnapshotError> {
        if let Some(uid) = uid {
            std::os::unix::fs::lchown(path, Some(uid), Some(uid)).map_err(io(format!("owning {}", path.display())))?;
        }
        Ok(())
    };
    let mut files = 0;
    for entry in &snapshot.manifest.entries {
        let rel = match entry {
            Entry::Dir { path, .. } | Entry::File { path, .. } | Entry::Symlink { path, .. } => path,
        };
        // The manifest was checked against its hash, but a path leading out is refused
        // all the same: restoring writes as this process.
        if rel.is_empty() || rel.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return Err(damaged(format!("the path {rel:?} is not inside a box")));
        }
        let target = to.join(rel);
        match entry {
            Entry::Dir { mode, .. } => {
                match std::fs::create_dir(&target) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && target.is_dir() => {}
                    Err(e) => return Err(io(format!("making {}", target.display()))(e)),
                }
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(*mode))
                    .map_err(io(format!("setting the mode of {}", target.display())))?;
                own(&target)?;
            }
            Entry::Symlink { target: link, .. } => {
                let _ = std::fs::remove_file(&target);
                std::os::unix::fs::symlink(link, &target).map_err(io(format!("making {}", target.display())))?;
                own(&target)?;
            }
            Entry::File { mode, size, sha256, mtime_ns, .. } => {
                let source = from.join(rel);
                if !std::fs::symlink_metadata(&source).is_ok_and(|m| m.is_file()) {
                    return Err(damaged(format!("{rel} is missing")));
                }
                let file = File::open(&source).map_err(io(format!("opening {}", source.display())))?;
                // Not synced: a working directory is scratch, rebuilt from the snapshot if lost.
                let (got_size, got_hash) = copy_file(file, &source, &target, Some(*mode), false)?;
                if got_size != *size {
                    return Err(damaged(format!("{rel} has {got_size} bytes, not the {size} written")));
                }
                if &got_hash != sha256 {
                    return Err(damaged(format!("{rel} is not the file written (hash mismatch)")));
                }
                let mtime = u64::try_from(*mtime_ns)
                    .ok()
                    .map(|ns| SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(ns));
                if let Some(mtime) = mtime
                    && let Ok(file) = File::options().write(true).open(&target)
                {
                    let _ = file.set_modified(mtime);
                }
                own(&target)?;
                files += 1;
            }
        }
    }
    Ok(files)
}

/// Copy `source` (opened from `from`) to a new file `to` (replacing one there), hashing as it
/// goes, and sync it when `sync`. Returns its size and hex SHA-256.
fn copy_file(
    mut source: File,
    from: &Path,
    to: &Path,
    mode: Option<u32>,
    sync: bool,
) -> Result<(u64, String), SnapshotError> {
    let _ = std::fs::remove_file(to);
    let mut target =
        File::options().write(true).create_new(true).open(to).map_err(io(format!("creating {}", to.display())))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = source.read(&mut buf).map_err(io(format!("reading {}", from.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        target.write_all(&buf[..n]).map_err(io(format!("writing {}", to.display())))?;
        size += n as u64;
    }
    if let Some(mode) = mode {
        target
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io(format!("setting the mode of {}", to.display())))?;
    }
    if sync {
        target.sync_all().map_err(io(format!("syncing {}", to.display())))?;
    }
    Ok((size, hex(&hasher.finalize())))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    let mut file = File::create(path).map_err(io(format!("creating {}", path.display())))?;
    file.write_all(bytes).map_err(io(format!("writing {}", path.display())))?;
    file.sync_all().map_err(io(format!("syncing {}", path.display())))
}

fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(format!("syncing {}", dir.display())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes the tree at `dir` takes (file sizes, not following links).
pub(crate) fn size_on_disk(dir: &Path) -> u64 {
    let mut total = 0;
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(children) = std::fs::read_dir(&dir) else { continue };
        for child in children.filter_map(std::result::Result::ok) {
            let Ok(meta) = child.path().symlink_metadata() else { continue };
            if meta.is_dir() {
                pending.push(child.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use codebox_core::SnapshotRung;

    fn save(state: &Path, work: &Path) -> PathBuf {
        let mut writer = Writer::begin(state).unwrap();
        let entries = writer.copy_tree(work, &[".codebox/tmp"]).unwrap();
        let mut manifest = Manifest::new("box-1", "python3", PauseReport::new("box-1", SnapshotRung::Files));
        manifest.entries = entries;
        writer.commit(&manifest).unwrap()
    }

    #[test]
    fn a_tree_comes_back_byte_for_byte_and_links_stay_links() {
        let (work, state, back) =
            (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::create_dir_all(work.path().join("a/b")).unwrap();
        std::fs::create_dir_all(work.path().join(".codebox/tmp")).unwrap();
        std::fs::write(work.path().join("a/b/data.bin"), (0..=255u8).cycle().take(3 << 20).collect::<Vec<_>>())
            .unwrap();
        std::fs::write(work.path().join(".codebox/tmp/scratch"), "gone").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", work.path().join("link")).unwrap();
        save(state.path(), work.path());
        let snapshot = read(state.path()).unwrap();
        assert_eq!(restore_tree(&snapshot, back.path(), None).unwrap(), 1);
        assert_eq!(
            std::fs::read(back.path().join("a/b/data.bin")).unwrap(),
            std::fs::read(work.path().join("a/b/data.bin")).unwrap()
        );
        assert_eq!(std::fs::read_link(back.path().join("link")).unwrap(), Path::new("/etc/passwd"));
        assert!(!back.path().join(".codebox/tmp").exists());
    }

    #[test]
    fn a_second_save_replaces_the_first_and_leaves_one_snapshot() {
        let (work, state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(work.path().join("f"), "one").unwrap();
        let first = save(state.path(), work.path());
        std::fs::write(work.path().join("f"), "two").unwrap();
        let second = save(state.path(), work.path());
        assert!(!first.exists() && second.exists());
        // An unfinished save (a crash before the commit) is not current and goes on the next.
        let unfinished = Writer::begin(state.path()).unwrap();
        let leftover = unfinished.dir.clone();
        std::mem::forget(unfinished);
        assert_eq!(read(state.path()).unwrap().dir, second);
        save(state.path(), work.path());
        assert!(!leftover.exists());
    }

    #[test]
    fn flipped_or_cut_bytes_are_found() {
        let (work, state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(work.path().join("f"), "some bytes").unwrap();
        let dir = save(state.path(), work.path());
        std::fs::write(dir.join("files/f"), "some bytez").unwrap();
        let back = tempfile::tempdir().unwrap();
        let err = restore_tree(&read(state.path()).unwrap(), back.path(), None).err().unwrap();
        assert!(err.to_string().contains("f is not the file written"), "{err}");
        std::fs::write(dir.join("files/f"), "some").unwrap();
        let err = restore_tree(&read(state.path()).unwrap(), back.path(), None).err().unwrap();
        assert!(err.to_string().contains("has 4 bytes"), "{err}");
        let mut manifest = std::fs::read(dir.join(MANIFEST)).unwrap();
        manifest[10] ^= 0x20;
        std::fs::write(dir.join(MANIFEST), manifest).unwrap();
        let err = read(state.path()).err().unwrap();
        assert!(err.to_string().contains("manifest is not the one written"), "{err}");
        assert_eq!(current_box_id(state.path()).as_deref(), Some("box-1"));
    }
}

//! File access beneath a box's working directory.
//!
//! Every path is checked lexically by [`normalize_box_path`] and then opened one component
//! at a time relative to a directory descriptor, with `O_NOFOLLOW` on every step: a symlink
//! anywhere on the way (planted by user code, say to `/etc/shadow`) is refused rather than
//! followed, and there is no check-then-use race as with `canonicalize`.
//!
//! The box's code shapes what is found here, so nothing may block or grow without bound:
//! a download refuses anything but a regular file before opening it, and opens it with
//! `O_NONBLOCK` (a FIFO swapped in meanwhile would otherwise block the open until a writer
//! comes); every call does its file work on the blocking pool, never on an async worker; a
//! listing walks without recursion, within caps on entries, depth and the bytes of its
//! paths, and answers `TooLarge` past them.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use codebox_core::{ByteStream, CodeBoxError, FileInfo, FileKind, Result, normalize_box_path};
use futures::StreamExt;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use tokio::io::AsyncWriteExt;

/// Bytes per chunk when reading a file.
const READ_CHUNK: usize = 256 * 1024;

/// Most entries in one listing.
pub(crate) const MAX_LIST_ENTRIES: usize = 100_000;
/// How many levels below the listed directory a recursive listing goes.
pub(crate) const MAX_LIST_DEPTH: usize = 128;
/// Most bytes of paths in one listing (a deep tree's paths grow with every level).
pub(crate) const MAX_LIST_PATH_BYTES: usize = 16 << 20;

/// Run blocking file work on the blocking pool.
async fn blocking<T: Send + 'static>(what: &str, work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| CodeBoxError::io(what.to_owned(), std::io::Error::other(e.to_string())))?
}

fn listing_too_large(dir: &str, cap: &str) -> CodeBoxError {
    let shown = if dir.is_empty() { "the working directory" } else { dir };
    CodeBoxError::too_large(format!("the listing of {shown:?} {cap}; list a subdirectory, or list without recursion"))
}

/// A box's working directory, opened once.
#[derive(Debug)]
pub(crate) struct Root {
    fd: OwnedFd,
    path: PathBuf,
    /// The session uid (and gid) that files put in the box are given to, so that the
    /// box's code can change them.
    owner: Option<u32>,
}

fn unsafe_path(path: &str, reason: &str) -> CodeBoxError {
    CodeBoxError::unsafe_path(path.to_owned(), reason.to_owned())
}

fn errno_to_error(path: &str, e: Errno, what: &str) -> CodeBoxError {
    match e {
        Errno::LOOP | Errno::XDEV => unsafe_path(path, "a symbolic link is on the way; links are not followed"),
        Errno::NOENT => CodeBoxError::not_found(format!("file {path:?}")),
        Errno::NOTDIR => CodeBoxError::invalid(format!("a component of {path:?} is not a directory")),
        Errno::ISDIR => CodeBoxError::invalid(format!("{path:?} is a directory")),
        Errno::NOTEMPTY => CodeBoxError::invalid(format!("directory {path:?} is not empty")),
        Errno::EXIST => CodeBoxError::invalid(format!("{path:?} already exists")),
        other => CodeBoxError::io(format!("{what} {path:?}"), other.into()),
    }
}

pub(crate) fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

impl Root {
    pub(crate) fn open(path: &Path, owner: Option<u32>) -> Result<Self> {
        let fd = rustix::fs::open(path, dir_flags(), Mode::empty())
            .map_err(|e| CodeBoxError::io(format!("opening the working directory {}", path.display()), e.into()))?;
        Ok(Self { fd, path: path.to_owned(), owner })
    }

    /// Give a file or directory made through `fd` to the box's uid.
    pub(crate) fn give(&self, fd: &OwnedFd, shown: &str) -> Result<()> {
        match self.owner {
            Some(uid) => {
                rustix::fs::fchown(fd, Some(rustix::fs::Uid::from_raw(uid)), Some(rustix::fs::Gid::from_raw(uid)))
                    .map_err(|e| errno_to_error(shown, e, "giving to the box's user"))
            }
            None => Ok(()),
        }
    }

    /// The directory's path on this machine.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Open the directory `components` beneath the root, creating missing ones when asked.
    pub(crate) fn walk(&self, shown: &str, components: &[&OsStr], create: bool) -> Result<OwnedFd> {
        let mut cur = rustix::fs::openat(&self.fd, ".", dir_flags(), Mode::empty())
            .map_err(|e| errno_to_error(shown, e, "opening"))?;
        for part in components {
            let mut made = false;
            if create {
                match rustix::fs::mkdirat(&cur, *part, Mode::from_raw_mode(0o755)) {
                    Ok(()) => made = true,
                    Err(Errno::EXIST) => {}
                    Err(e) => return Err(errno_to_error(shown, e, "creating a directory for")),
                }
            }
            cur = match rustix::fs::openat(&cur, *part, dir_flags(), Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOTDIR) if is_symlink(&cur, part) => {
                    return Err(unsafe_path(shown, "a symbolic link is on the way; links are not followed"));
                }
                Err(e) => return Err(errno_to_error(shown, e, "opening")),
            };
            if made {
                self.give(&cur, shown)?;
            }
        }
        Ok(cur)
    }

    /// Split a checked path into its parent directory (opened) and its last component.
    fn parent_of(&self, path: &str, create: bool) -> Result<(OwnedFd, Vec<u8>)> {
        let rel = normalize_box_path(path)?;
        let parts: Vec<&OsStr> = rel.iter().collect();
        let (name, dirs) = parts.split_last().ok_or_else(|| unsafe_path(path, "the path names no file"))?;
        let parent = self.walk(path, dirs, create)?;
        Ok((parent, name.as_bytes().to_vec()))
    }

    /// Resolve a directory given by a caller (`""` and `"."` mean the root) to its
    /// normalized relative path, checking it exists and is a real directory.
    pub(crate) fn check_dir(&self, dir: &str) -> Result<PathBuf> {
        if dir.is_empty() || dir == "." {
            return Ok(PathBuf::new());
        }
        let rel = normalize_box_path(dir)?;
        let parts: Vec<&OsStr> = rel.iter().collect();
        self.walk(dir, &parts, false)?;
        Ok(rel)
    }

    /// Write a file from a stream of chunks. The content goes to a temporary file that
    /// replaces the target only once complete.
    pub(crate) async fn upload(self: &Arc<Self>, path: &str, mut content: ByteStream) -> Result<FileInfo> {
        let (root, shown) = (Arc::clone(self), path.to_owned());
        let (parent, name, tmp_name, fd) = blocking("preparing an upload", move || root.begin_upload(&shown)).await?;
        let parent = Arc::new(parent);
        let mut file = tokio::fs::File::from_std(std::fs::File::from(fd));
        let written = async {
            while let Some(chunk) = content.next().await {
                let chunk = chunk?;
                file.write_all(&chunk).await.map_err(|e| CodeBoxError::io(format!("writing {path:?}"), e))?;
            }
            file.flush().await.map_err(|e| CodeBoxError::io(format!("writing {path:?}"), e))?;
            Ok::<_, CodeBoxError>(())
        }
        .await;
        drop(file);
        let shown = path.to_owned();
        blocking("finishing an upload", move || {
            if let Err(e) = written {
                let _ = rustix::fs::unlinkat(&*parent, tmp_name.as_str(), AtFlags::empty());
                return Err(e);
            }
            rustix::fs::renameat(&*parent, tmp_name.as_str(), &*parent, name.as_slice()).map_err(|e| {
                let _ = rustix::fs::unlinkat(&*parent, tmp_name.as_str(), AtFlags::empty());
                errno_to_error(&shown, e, "writing")
            })?;
            let st = rustix::fs::statat(&*parent, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| errno_to_error(&shown, e, "reading metadata of"))?;
            let rel = normalize_box_path(&shown)?;
            Ok(info(&rel, &st))
        })
        .await
    }

    /// The blocking start of an upload: the parent directory, the target's name, and the
    /// temporary file the content goes to (already given to the box's user).
    fn begin_upload(&self, path: &str) -> Result<(OwnedFd, Vec<u8>, String, OwnedFd)> {
        let (parent, name) = self.parent_of(path, true)?;
        match rustix::fs::statat(&parent, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                return Err(unsafe_path(path, "the target is a symbolic link; links are not followed"));
            }
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                return Err(CodeBoxError::invalid(format!("{path:?} is a directory")));
            }
            _ => {}
        }
        let tmp_name = format!(".codebox-upload-{}", crate::util::random_hex(8));
        let fd = rustix::fs::openat(
            &parent,
            tmp_name.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .map_err(|e| errno_to_error(path, e, "creating"))?;
        if let Err(e) = self.give(&fd, path) {
            let _ = rustix::fs::unlinkat(&parent, tmp_name.as_str(), AtFlags::empty());
            return Err(e);
        }
        Ok((parent, name, tmp_name, fd))
    }

    /// Open a regular file for reading and stream it in chunks.
    pub(crate) async fn download(self: &Arc<Self>, path: &str) -> Result<ByteStream> {
        let (root, shown) = (Arc::clone(self), path.to_owned());
        let fd = blocking("opening a download", move || root.open_regular(&shown)).await?;
        let file = tokio::fs::File::from_std(std::fs::File::from(fd));
        let shown = path.to_owned();
        let stream = tokio_util::io::ReaderStream::with_capacity(file, READ_CHUNK)
            .map(move |r| r.map_err(|e| CodeBoxError::io(format!("reading {shown:?}"), e)));
        Ok(Box::pin(stream))
    }

    /// Open the regular file at `path` for reading (blocking, but never waiting on the
    /// box): anything else (a FIFO, a device, a socket, a link, a directory) is refused
    /// before it is opened, and the open does not wait even if a FIFO was swapped in
    /// after the check.
    pub(crate) fn open_regular(&self, path: &str) -> Result<OwnedFd> {
        let (parent, name) = self.parent_of(path, false)?;
        let not_regular = |kind: FileType| -> CodeBoxError {
            match kind {
                FileType::Symlink => unsafe_path(path, "it is a symbolic link; links are not followed"),
                FileType::Directory => CodeBoxError::invalid(format!("{path:?} is a directory")),
                _ => CodeBoxError::invalid(format!("{path:?} is not a regular file")),
            }
        };
        let st = rustix::fs::statat(&parent, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| errno_to_error(path, e, "opening"))?;
        let kind = FileType::from_raw_mode(st.st_mode);
        if kind != FileType::RegularFile {
            return Err(not_regular(kind));
        }
        let fd = rustix::fs::openat(
            &parent,
            name.as_slice(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| errno_to_error(path, e, "opening"))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| errno_to_error(path, e, "reading metadata of"))?;
        let kind = FileType::from_raw_mode(st.st_mode);
        if kind != FileType::RegularFile {
            return Err(not_regular(kind));
        }
        // Reads of a regular file never wait on O_NONBLOCK; clear it all the same, so the
        // file reads as any other.
        rustix::fs::fcntl_setfl(&fd, OFlags::empty()).map_err(|e| errno_to_error(path, e, "opening"))?;
        Ok(fd)
    }

    /// List a directory, descending into subdirectories (never through links) on request,
    /// within [`MAX_LIST_ENTRIES`], [`MAX_LIST_DEPTH`] and [`MAX_LIST_PATH_BYTES`].
    pub(crate) fn list(&self, dir: &str, recursive: bool) -> Result<Vec<FileInfo>> {
        self.list_to(dir, if recursive { None } else { Some(1) })
    }

    /// List a directory down to `depth` levels (1: its own entries), within the same caps.
    pub(crate) fn list_depth(&self, dir: &str, depth: usize) -> Result<Vec<FileInfo>> {
        codebox_core::check_list_depth(depth)?;
        self.list_to(dir, Some(depth))
    }

    /// The walk behind [`Root::list`] and [`Root::list_depth`]: `depth` levels, or all
    /// (up to the cap) when `None`.
    fn list_to(&self, dir: &str, depth_limit: Option<usize>) -> Result<Vec<FileInfo>> {
        let rel = self.check_dir(dir)?;
        let mut out = Vec::new();
        let mut path_bytes = 0usize;
        // Directories still to read, as paths below the root with their depth below the
        // listed one: each is opened again from the root, one component at a time with
        // O_NOFOLLOW, so the walk holds two descriptors at most, however deep it goes.
        let mut todo = vec![(rel, 0usize)];
        while let Some((here, depth)) = todo.pop() {
            let parts: Vec<&OsStr> = here.iter().collect();
            let fd = match self.walk(dir, &parts, false) {
                Ok(fd) => fd,
                // Gone or replaced by a link meanwhile: below the listed directory, skip it.
                Err(_) if depth > 0 => continue,
                Err(e) => return Err(e),
            };
            let before = out.len();
            read_dir_into(fd, &here, &mut out).map_err(|e| errno_to_error(dir, e, "listing"))?;
            if out.len() > before && depth >= MAX_LIST_DEPTH {
                return Err(listing_too_large(dir, &format!("goes deeper than {MAX_LIST_DEPTH} levels")));
            }
            if out.len() > MAX_LIST_ENTRIES {
                return Err(listing_too_large(dir, &format!("has more than {MAX_LIST_ENTRIES} entries")));
            }
            for fi in &out[before..] {
                path_bytes += fi.path.len();
                if fi.is_dir && depth_limit.is_none_or(|limit| depth + 1 < limit) {
                    todo.push((PathBuf::from(&fi.path), depth + 1));
                }
            }
            if path_bytes > MAX_LIST_PATH_BYTES {
                return Err(listing_too_large(dir, &format!("has more than {MAX_LIST_PATH_BYTES} bytes of paths")));
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// Describe one path without following a link at its end (a link on the way is refused).
    pub(crate) fn stat(&self, path: &str) -> Result<FileInfo> {
        let (parent, name) = self.parent_of(path, false)?;
        let st = rustix::fs::statat(&parent, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| errno_to_error(path, e, "reading metadata of"))?;
        Ok(info(&normalize_box_path(path)?, &st))
    }

    /// Make a directory and its missing parents, each given to the box's user. An existing
    /// directory is fine; a file or link anywhere on the way is refused by the walk.
    pub(crate) fn make_dir(&self, path: &str) -> Result<FileInfo> {
        let rel = normalize_box_path(path)?;
        refuse_reserved(path, &rel)?;
        let parts: Vec<&OsStr> = rel.iter().collect();
        let fd = self.walk(path, &parts, true)?;
        let st = rustix::fs::fstat(&fd).map_err(|e| errno_to_error(path, e, "reading metadata of"))?;
        Ok(info(&rel, &st))
    }

    /// Move `from` to `to`, both beneath the root and both parents reached without links.
    /// A file at `to` is replaced; a directory there never is.
    pub(crate) fn rename(&self, from: &str, to: &str) -> Result<FileInfo> {
        let (from_rel, to_rel) = (normalize_box_path(from)?, normalize_box_path(to)?);
        refuse_reserved(from, &from_rel)?;
        refuse_reserved(to, &to_rel)?;
        if to_rel != from_rel && to_rel.starts_with(&from_rel) {
            return Err(CodeBoxError::invalid(format!("{from:?} cannot move into itself ({to:?})")));
        }
        let (from_parent, from_name) = self.parent_of(from, false)?;
        let (to_parent, to_name) = self.parent_of(to, false)?;
        let st = rustix::fs::statat(&from_parent, from_name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| errno_to_error(from, e, "renaming"))?;
        let onto_dir = || CodeBoxError::invalid(format!("{to:?} is a directory; rename never overwrites one"));
        if let Ok(target) = rustix::fs::statat(&to_parent, to_name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
            && FileType::from_raw_mode(target.st_mode) == FileType::Directory
        {
            return Err(onto_dir());
        }
        // A directory moved with NOREPLACE cannot land on one made meanwhile; a file moved
        // onto a directory fails with EISDIR by itself.
        let flags = if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            rustix::fs::RenameFlags::NOREPLACE
        } else {
            rustix::fs::RenameFlags::empty()
        };
        match rustix::fs::renameat_with(&from_parent, from_name.as_slice(), &to_parent, to_name.as_slice(), flags) {
            Ok(()) => {}
            Err(Errno::ISDIR) => return Err(onto_dir()),
            Err(e) => return Err(errno_to_error(to, e, "renaming to")),
        }
        let st = rustix::fs::statat(&to_parent, to_name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| errno_to_error(to, e, "reading metadata of"))?;
        Ok(info(&to_rel, &st))
    }

    /// Delete a file, a link (not its target) or an empty directory.
    pub(crate) fn delete(&self, path: &str) -> Result<()> {
        let (parent, name) = self.parent_of(path, false)?;
        let st = rustix::fs::statat(&parent, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| errno_to_error(path, e, "deleting"))?;
        let flags = if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        rustix::fs::unlinkat(&parent, name.as_slice(), flags).map_err(|e| errno_to_error(path, e, "deleting"))
    }
}

fn is_symlink(dir: &OwnedFd, name: &OsStr) -> bool {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink)
}

/// Refuse moving or making the box's own state directory (installed packages live there).
fn refuse_reserved(path: &str, rel: &Path) -> Result<()> {
    if rel.iter().next().is_some_and(|first| first == RESERVED) {
        return Err(CodeBoxError::invalid(format!("{path:?} is the box's own state ({RESERVED}/); leave it be")));
    }
    Ok(())
}

fn info(rel: &Path, st: &rustix::fs::Stat) -> FileInfo {
    let file_type = FileType::from_raw_mode(st.st_mode);
    let is_dir = file_type == FileType::Directory;
    let kind = match file_type {
        FileType::RegularFile => FileKind::File,
        FileType::Directory => FileKind::Dir,
        FileType::Symlink => FileKind::Symlink,
        _ => FileKind::Other,
    };
    let secs = st.st_mtime;
    let modified = (secs >= 0).then(|| UNIX_EPOCH + Duration::new(secs as u64, st.st_mtime_nsec as u32));
    FileInfo {
        path: rel.to_string_lossy().into_owned(),
        name: rel.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        size: if is_dir { 0 } else { st.st_size as u64 },
        is_dir,
        modified: modified.or(Some(SystemTime::UNIX_EPOCH)).filter(|_| secs >= 0),
        file_kind: Some(kind),
        mode: Some(st.st_mode & 0o7777),
    }
}

/// The top-level directory of the box's own state, left out of listings.
pub(crate) const RESERVED: &str = ".codebox";

/// Append the entries of the directory `fd` (at `rel` below the root) to `out`.
fn read_dir_into(fd: OwnedFd, rel: &Path, out: &mut Vec<FileInfo>) -> rustix::io::Result<()> {
    for entry in rustix::fs::Dir::read_from(fd.as_fd())? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        // The box's own state (installed packages) is not part of the user's files.
        if rel.as_os_str().is_empty() && name == RESERVED.as_bytes() {
            continue;
        }
        let name = OsStr::from_bytes(name);
        let st = match rustix::fs::statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => continue, // deleted meanwhile
            Err(e) => return Err(e),
        };
        out.push(info(&rel.join(name), &st));
        // Past the cap the caller refuses the listing; stop reading a huge directory here.
        if out.len() > MAX_LIST_ENTRIES {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn listings_leave_out_the_boxs_own_state_at_the_top_only() {
        assert!(codebox_sandbox::PACKAGES_DIR.starts_with(&format!("{RESERVED}/")));
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(codebox_sandbox::PACKAGES_DIR).join("pkg")).unwrap();
        std::fs::create_dir_all(dir.path().join("sub/.codebox")).unwrap();
        std::fs::write(dir.path().join("data.csv"), "1").unwrap();
        let root = Root::open(dir.path(), None).unwrap();
        let names: Vec<String> = root.list("", true).unwrap().into_iter().map(|f| f.path).collect();
        assert_eq!(names, ["data.csv", "sub", "sub/.codebox"]);
    }

    #[tokio::test]
    async fn only_regular_files_download_and_a_fifo_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("data.txt"), "hello").unwrap();
        rustix::fs::mknodat(rustix::fs::CWD, dir.path().join("pipe"), FileType::Fifo, Mode::from_raw_mode(0o644), 0)
            .unwrap();
        std::os::unix::fs::symlink(dir.path().join("data.txt"), dir.path().join("link")).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let root = Arc::new(Root::open(dir.path(), None).unwrap());
        let mut stream = root.download("data.txt").await.unwrap();
        assert_eq!(&stream.next().await.unwrap().unwrap()[..], b"hello");
        // No writer ever opens the FIFO: an open that waited for one would hang here.
        let err = root.download("pipe").await.err().unwrap();
        assert_eq!(err.kind(), codebox_core::ErrorKind::InvalidInput, "{err}");
        assert!(err.to_string().contains("not a regular file"), "{err}");
        assert_eq!(root.download("link").await.err().unwrap().kind(), codebox_core::ErrorKind::UnsafePath);
        assert_eq!(root.download("sub").await.err().unwrap().kind(), codebox_core::ErrorKind::InvalidInput);
        assert_eq!(root.download("missing").await.err().unwrap().kind(), codebox_core::ErrorKind::NotFound);
    }

    #[test]
    fn stat_make_dir_and_rename_keep_to_the_root() {
        use codebox_core::ErrorKind;
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f.txt"), "abc").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).unwrap();
        let root = Root::open(dir.path(), None).unwrap();

        let f = root.stat("f.txt").unwrap();
        assert_eq!((f.kind(), f.size, f.path.as_str()), (FileKind::File, 3, "f.txt"));
        assert_eq!(f.mode, Some(std::fs::metadata(dir.path().join("f.txt")).unwrap().permissions().mode() & 0o7777));
        assert_eq!(root.stat("out").unwrap().kind(), FileKind::Symlink, "a link is described, not followed");
        assert_eq!(root.stat("missing").unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(root.stat("out/x").unwrap_err().kind(), ErrorKind::UnsafePath);
        assert_eq!(root.stat("../x").unwrap_err().kind(), ErrorKind::UnsafePath);

        assert_eq!(root.make_dir("a/b/c").unwrap().kind(), FileKind::Dir);
        assert_eq!(root.make_dir("a/b").unwrap().path, "a/b", "an existing directory is fine");
        assert_eq!(root.make_dir("f.txt").unwrap_err().kind(), ErrorKind::InvalidInput);
        assert_eq!(root.make_dir("out/made").unwrap_err().kind(), ErrorKind::UnsafePath);
        assert_eq!(root.make_dir(".codebox/x").unwrap_err().kind(), ErrorKind::InvalidInput);
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none(), "nothing was made outside");

        assert_eq!(root.rename("f.txt", "a/b").unwrap_err().kind(), ErrorKind::InvalidInput, "onto a directory");
        assert_eq!(root.rename("a", "a/b/c/d").unwrap_err().kind(), ErrorKind::InvalidInput, "into itself");
        assert_eq!(root.rename("f.txt", "out/f.txt").unwrap_err().kind(), ErrorKind::UnsafePath);
        assert_eq!(root.rename("f.txt", "nowhere/f.txt").unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(root.rename("f.txt", ".codebox").unwrap_err().kind(), ErrorKind::InvalidInput);
        std::fs::write(dir.path().join("g.txt"), "old").unwrap();
        assert_eq!(root.rename("f.txt", "g.txt").unwrap().size, 3, "a file is replaced");
        assert_eq!(std::fs::read(dir.path().join("g.txt")).unwrap(), b"abc");
        assert_eq!(root.rename("a/b", "a/moved").unwrap().kind(), FileKind::Dir);
        assert!(dir.path().join("a/moved/c").is_dir());
    }

    #[test]
    fn a_listing_goes_as_deep_as_asked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("top")).unwrap();
        chain(&dir.path().join("top"), 4);
        let root = Root::open(dir.path(), None).unwrap();
        let paths = |depth| root.list_depth("top", depth).unwrap().into_iter().map(|f| f.path).collect::<Vec<_>>();
        assert_eq!(paths(1), ["top/a"]);
        assert_eq!(paths(3), ["top/a", "top/a/a", "top/a/a/a"]);
        assert_eq!(paths(MAX_LIST_DEPTH).len(), 4);
        for depth in [0, MAX_LIST_DEPTH + 1] {
            let err = root.list_depth("top", depth).unwrap_err();
            assert_eq!(err.kind(), codebox_core::ErrorKind::InvalidInput, "{err}");
        }
    }

    /// A chain of `depth` directories named `a` beneath `base`.
    fn chain(base: &Path, depth: usize) {
        let flags = dir_flags();
        let mut cur = rustix::fs::open(base, flags, Mode::empty()).unwrap();
        for _ in 0..depth {
            rustix::fs::mkdirat(&cur, "a", Mode::from_raw_mode(0o755)).unwrap();
            cur = rustix::fs::openat(&cur, "a", flags, Mode::empty()).unwrap();
        }
    }

    #[test]
    fn a_recursive_listing_stops_at_the_depth_cap_without_recursing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("ok")).unwrap();
        chain(&dir.path().join("ok"), MAX_LIST_DEPTH);
        let root = Root::open(dir.path(), None).unwrap();
        assert_eq!(root.list("ok", true).unwrap().len(), MAX_LIST_DEPTH, "exactly the cap is listed");
        std::fs::create_dir(dir.path().join("deep")).unwrap();
        chain(&dir.path().join("deep"), 3000);
        // On a small stack: a recursive walk 3000 levels deep would overflow it.
        let path = dir.path().to_owned();
        let err = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || Root::open(&path, None).unwrap().list("", true).unwrap_err())
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(err.kind(), codebox_core::ErrorKind::TooLarge, "{err}");
        assert!(err.to_string().contains("deeper than 128 levels"), "{err}");
        assert!(err.to_string().contains("list a subdirectory"), "{err}");
        assert_eq!(root.list("", false).unwrap().len(), 2, "a listing without recursion still works");
    }

    #[test]
    fn a_listing_stops_at_the_entry_cap() {
        let dir = tempfile::tempdir().unwrap();
        let fd = rustix::fs::open(dir.path(), dir_flags(), Mode::empty()).unwrap();
        for i in 0..=MAX_LIST_ENTRIES {
            let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC;
            drop(rustix::fs::openat(&fd, format!("f{i}").as_str(), flags, Mode::from_raw_mode(0o644)).unwrap());
        }
        let err = Root::open(dir.path(), None).unwrap().list("", false).unwrap_err();
        assert_eq!(err.kind(), codebox_core::ErrorKind::TooLarge, "{err}");
        assert!(err.to_string().contains("more than 100000 entries"), "{err}");
    }
}

//! File access beneath a box's working directory.
//!
//! Every path is checked lexically by [`normalize_box_path`] and then opened one component
//! at a time relative to a directory descriptor, with `O_NOFOLLOW` on every step: a symlink
//! anywhere on the way (planted by user code, say to `/etc/shadow`) is refused rather than
//! followed, and there is no check-then-use race as with `canonicalize`.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use codebox_core::{ByteStream, CodeBoxError, FileInfo, Result, normalize_box_path};
use futures::StreamExt;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use tokio::io::AsyncWriteExt;

/// Bytes per chunk when reading a file.
const READ_CHUNK: usize = 256 * 1024;

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
    CodeBoxError::UnsafePath { path: path.to_owned(), reason: reason.to_owned() }
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

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

impl Root {
    pub(crate) fn open(path: &Path, owner: Option<u32>) -> Result<Self> {
        let fd = rustix::fs::open(path, dir_flags(), Mode::empty())
            .map_err(|e| CodeBoxError::io(format!("opening the working directory {}", path.display()), e.into()))?;
        Ok(Self { fd, path: path.to_owned(), owner })
    }

    /// Give a file or directory made through `fd` to the box's uid.
    fn give(&self, fd: &OwnedFd, shown: &str) -> Result<()> {
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
    fn walk(&self, shown: &str, components: &[&OsStr], create: bool) -> Result<OwnedFd> {
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
    pub(crate) async fn upload(&self, path: &str, mut content: ByteStream) -> Result<FileInfo> {
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
        if let Err(e) = written {
            let _ = rustix::fs::unlinkat(&parent, tmp_name.as_str(), AtFlags::empty());
            return Err(e);
        }
        rustix::fs::renameat(&parent, tmp_name.as_str(), &parent, name.as_slice()).map_err(|e| {
            let _ = rustix::fs::unlinkat(&parent, tmp_name.as_str(), AtFlags::empty());
            errno_to_error(path, e, "writing")
        })?;
        let st = rustix::fs::statat(&parent, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| errno_to_error(path, e, "reading metadata of"))?;
        let rel = normalize_box_path(path)?;
        Ok(info(&rel, &st))
    }

    /// Open a regular file for reading and stream it in chunks.
    pub(crate) fn download(&self, path: &str) -> Result<ByteStream> {
        let (parent, name) = self.parent_of(path, false)?;
        let fd = rustix::fs::openat(
            &parent,
            name.as_slice(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| errno_to_error(path, e, "opening"))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| errno_to_error(path, e, "reading metadata of"))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(CodeBoxError::invalid(format!("{path:?} is not a regular file")));
        }
        let file = tokio::fs::File::from_std(std::fs::File::from(fd));
        let shown = path.to_owned();
        let stream = tokio_util::io::ReaderStream::with_capacity(file, READ_CHUNK)
            .map(move |r| r.map_err(|e| CodeBoxError::io(format!("reading {shown:?}"), e)));
        Ok(Box::pin(stream))
    }

    /// List a directory, descending into subdirectories (never through links) on request.
    pub(crate) fn list(&self, dir: &str, recursive: bool) -> Result<Vec<FileInfo>> {
        let rel = self.check_dir(dir)?;
        let parts: Vec<&OsStr> = rel.iter().collect();
        let fd = self.walk(dir, &parts, false)?;
        let mut out = Vec::new();
        list_into(fd, &rel, recursive, &mut out).map_err(|e| errno_to_error(dir, e, "listing"))?;
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
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

fn info(rel: &Path, st: &rustix::fs::Stat) -> FileInfo {
    let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
    let secs = st.st_mtime;
    let modified = (secs >= 0).then(|| UNIX_EPOCH + Duration::new(secs as u64, st.st_mtime_nsec as u32));
    FileInfo {
        path: rel.to_string_lossy().into_owned(),
        name: rel.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        size: if is_dir { 0 } else { st.st_size as u64 },
        is_dir,
        modified: modified.or(Some(SystemTime::UNIX_EPOCH)).filter(|_| secs >= 0),
    }
}

/// The top-level directory of the box's own state, left out of listings.
const RESERVED: &str = ".codebox";

fn list_into(fd: OwnedFd, rel: &Path, recursive: bool, out: &mut Vec<FileInfo>) -> rustix::io::Result<()> {
    let mut subdirs = Vec::new();
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
        let name = OsStr::from_bytes(name).to_owned();
        let st = match rustix::fs::statat(&fd, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => continue, // deleted meanwhile
            Err(e) => return Err(e),
        };
        let child = rel.join(&name);
        let fi = info(&child, &st);
        if recursive && fi.is_dir {
            subdirs.push((name, child.clone()));
        }
        out.push(fi);
    }
    for (name, child) in subdirs {
        match rustix::fs::openat(&fd, name.as_os_str(), dir_flags(), Mode::empty()) {
            Ok(sub) => list_into(sub, &child, true, out)?,
            Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_leave_out_the_boxs_own_state_at_the_top_only() {
        assert!(crate::sandbox::PACKAGES_DIR.starts_with(&format!("{RESERVED}/")));
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(crate::sandbox::PACKAGES_DIR).join("pkg")).unwrap();
        std::fs::create_dir_all(dir.path().join("sub/.codebox")).unwrap();
        std::fs::write(dir.path().join("data.csv"), "1").unwrap();
        let root = Root::open(dir.path(), None).unwrap();
        let names: Vec<String> = root.list("", true).unwrap().into_iter().map(|f| f.path).collect();
        assert_eq!(names, ["data.csv", "sub", "sub/.codebox"]);
    }
}

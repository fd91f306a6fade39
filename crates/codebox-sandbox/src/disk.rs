//! A size limit for a working directory: a sparse ext4 image mounted over it.
//!
//! RLIMIT_FSIZE caps one file; this caps them all (bytes and inodes). The image is sparse, so
//! the host pays only for what is written, and at most the limit. Needs root (mount) and
//! `mkfs.ext4`; the image sits next to the directory and is deleted when the disk is
//! released.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

/// A mounted working-directory image.
#[derive(Debug)]
pub(crate) struct WorkDisk {
    image: PathBuf,
    mount: PathBuf,
    released: AtomicBool,
}

fn run(cmd: &mut Command, what: &str) -> io::Result<()> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| io::Error::new(e.kind(), format!("{what}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl WorkDisk {
    /// Mount a fresh `bytes`-sized filesystem with at most `inodes` files over the empty
    /// directory `dir`, owned by `owner` (uid = gid) when given.
    pub(crate) fn mount(dir: &Path, bytes: u64, inodes: u64, owner: Option<u32>) -> io::Result<Self> {
        if bytes < 8 << 20 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a working directory limit is at least 8 MiB"));
        }
        let name = dir.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no directory name"))?;
        let image = dir.with_file_name(format!(".{}.img", name.to_string_lossy()));
        // Only this process may read the image: it holds the box's files, and its name is
        // the mount point's, which every process can read in /proc/self/mountinfo.
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&image)?;
        file.set_len(bytes)?;
        drop(file);
        let disk = Self { image: image.clone(), mount: dir.to_owned(), released: AtomicBool::new(true) };
        let mut extended = "lazy_itable_init=1,nodiscard".to_owned();
        if let Some(uid) = owner {
            extended.push_str(&format!(",root_owner={uid}:{uid}"));
        }
        run(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0", "-N", &inodes.to_string(), "-E", &extended])
                .arg(&image),
            "mkfs.ext4",
        )?;
        run(Command::new("mount").args(["-o", "loop,nosuid,nodev"]).arg(&image).arg(dir), "mount")?;
        disk.released.store(false, Ordering::Release);
        let _ = std::fs::remove_dir(dir.join("lost+found"));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(disk)
    }

    /// Unmount and delete the image (idempotent). Files in the directory are gone after.
    pub(crate) fn release(&self) -> io::Result<()> {
        if self.released.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let umounted = run(Command::new("umount").arg(&self.mount), "umount")
            .or_else(|_| run(Command::new("umount").arg("-l").arg(&self.mount), "umount -l"));
        let removed = std::fs::remove_file(&self.image);
        umounted?;
        removed
    }
}

impl Drop for WorkDisk {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::warn!("releasing the working-directory image {}: {e}", self.image.display());
        }
        let _ = std::fs::remove_file(&self.image);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Root and mkfs.ext4 are there on this machine kind and in CI.
    #[test]
    fn the_limit_holds_and_everything_is_released() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("work");
        std::fs::create_dir(&dir).unwrap();
        let disk = WorkDisk::mount(&dir, 16 << 20, 64, Some(310_500)).unwrap();
        let st = std::fs::metadata(&dir).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&st), 310_500);
        let image = std::fs::metadata(base.path().join(".work.img")).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::mode(&image) & 0o777, 0o600, "the image is the server's alone");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "lost+found is removed");
        let big = vec![0u8; 32 << 20];
        let err = std::fs::write(dir.join("big"), &big).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        std::fs::remove_file(dir.join("big")).unwrap();
        let mut made = 0;
        let err = loop {
            match std::fs::write(dir.join(format!("f{made}")), b"") {
                Ok(()) => made += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "inodes run out");
        assert!(made < 64);
        disk.release().unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "unmounted: the directory is empty again");
        assert!(!base.path().join(".work.img").exists());
        disk.release().unwrap();
    }

    #[test]
    fn tiny_limits_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(WorkDisk::mount(dir.path(), 1024, 10, None).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }
}

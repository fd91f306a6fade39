//! Removing what a session uid leaves outside its working directory once its processes are
//! dead, so that nothing of one tenant passes to the next session given the same uid.
//!
//! A box's code can create objects that outlive its processes and that its working
//! directory's size limit does not bound:
//!
//! - SysV IPC objects (shared memory segments, message queues, semaphore sets) in the host's
//!   IPC namespace, at every level but bubblewrap (which gives the box an IPC namespace of its
//!   own). A segment holds its memory until it is removed, whoever ran it is gone, unless the
//!   host sets `kernel.shm_rmid_forced`, and it is readable by the next process of the same
//!   uid. The kernel lists them in `/proc/sysvipc/{shm,msg,sem}` with their owner and creator;
//!   they go with `shmctl`/`msgctl`/`semctl(IPC_RMID)` (rustix has no SysV IPC, so libc).
//! - Files in the host's world-writable directories (`/tmp`, `/var/tmp`, `/dev/shm`,
//!   `/run/lock`, and POSIX message queues in `/dev/mqueue`), where the none level lets code
//!   write. They are found by a walk that never follows a link nor crosses a mount, and that
//!   goes only into directories other users may enter (the uid could reach nothing else);
//!   each entry the uid owns is removed whole with the crate's `rmtree`, from the directory
//!   descriptor the walk holds (never through a path another uid could swap meanwhile).
//!
//! - POSIX message queues, files of the IPC namespace's `mqueue` file system, looked at
//!   through a mount of it attached nowhere (`fsopen`/`fsmount`), since `/dev/mqueue` is
//!   often not mounted.
//!
//! Both run after the uid's processes are dead (else they could make new ones meanwhile):
//! when a session's confinement is released, and in the sweep at server start over the
//! whole uid range.

use std::ffi::OsStr;
use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

/// The host directories any user may write to, where a box at the none level can leave files.
pub(crate) const WORLD_WRITABLE_DIRS: &[&str] = &["/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue"];

/// How deep the walk of a world-writable directory goes through directories the uid does not
/// own (what it owns is removed whole, however deep): it bounds the descriptors held.
const MAX_DEPTH: usize = 32;

/// How many entries one walk looks at before giving up, so that a host's crowded `/tmp`
/// cannot stall a session's release.
const MAX_ENTRIES: usize = 200_000;

/// What [`remove_left_by`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) struct Removed {
    /// SysV shared memory segments, message queues and semaphore sets.
    pub ipc_objects: usize,
    /// Files and directories (each counted once, with what is beneath it).
    pub files: usize,
    /// What could not be removed (each logged as a warning).
    pub failures: usize,
}

impl Removed {
    /// Whether nothing was found.
    pub(crate) fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Remove what the uids of `uids` left outside their working directories: SysV IPC objects
/// and entries in [`WORLD_WRITABLE_DIRS`]; entries at or beneath a path of `skip` (the
/// session's working directory, the session root) are not looked at. Call it only when no
/// process of those uids runs.
pub(crate) fn remove_left_by(uids: &Range<u32>, skip: &[&Path]) -> Removed {
    let (ipc_objects, ipc_failures) = remove_ipc_of(uids);
    let mut removed = Removed { ipc_objects, files: 0, failures: ipc_failures };
    let mut seen = Vec::new();
    for dir in WORLD_WRITABLE_DIRS {
        let (files, failures) = remove_files_of(Path::new(dir), uids, skip, &mut seen);
        removed.files += files;
        removed.failures += failures;
    }
    // POSIX message queues when `/dev/mqueue` is not mounted (when it is, `seen` has it).
    match detached_mqueue() {
        Ok(root) => {
            let (queues, failures) = remove_files_beneath(root, Path::new("mqueue:"), uids, skip, &mut seen);
            removed.files += queues;
            removed.failures += failures;
        }
        // Without root (no session uids to clean up anyway) or a kernel without the mount API.
        Err(e) => tracing::debug!("cannot look at the POSIX message queues: {e}"),
    }
    if !removed.is_empty() {
        tracing::info!(
            uids = %format!("{}..{}", uids.start, uids.end),
            ipc_objects = removed.ipc_objects,
            files = removed.files,
            failures = removed.failures,
            "removed what session uids left outside their working directories"
        );
    }
    removed
}

/// The kinds of SysV IPC object, with the table the kernel lists them in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IpcKind {
    SharedMemory,
    MessageQueue,
    Semaphores,
}

impl IpcKind {
    const ALL: [Self; 3] = [Self::SharedMemory, Self::MessageQueue, Self::Semaphores];

    fn table(self) -> &'static str {
        match self {
            Self::SharedMemory => "/proc/sysvipc/shm",
            Self::MessageQueue => "/proc/sysvipc/msg",
            Self::Semaphores => "/proc/sysvipc/sem",
        }
    }

    /// `IPC_RMID` on the object `id`.
    #[allow(unsafe_code)]
    fn remove(self, id: i32) -> io::Result<()> {
        // SAFETY: IPC_RMID reads no buffer (a null one is what the manual pages pass), and an
        // id that is stale or of another kind only makes the call fail.
        let rc = unsafe {
            match self {
                Self::SharedMemory => libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()),
                Self::MessageQueue => libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()),
                Self::Semaphores => libc::semctl(id, 0, libc::IPC_RMID),
            }
        };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        // Removed meanwhile.
        if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EIDRM)) { Ok(()) } else { Err(e) }
    }
}

/// The ids of the objects in a `/proc/sysvipc` table whose owner or creator is in `uids`.
/// Columns are found by the header's names (their order differs between tables); the id is
/// the second column in every table.
fn ids_of(table: &str, uids: &Range<u32>) -> Vec<i32> {
    let mut lines = table.lines();
    let Some(header) = lines.next() else { return Vec::new() };
    let names: Vec<&str> = header.split_whitespace().collect();
    let column = |name: &str| names.iter().position(|n| *n == name);
    let (Some(uid), Some(cuid)) = (column("uid"), column("cuid")) else { return Vec::new() };
    lines
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let id = fields.get(1)?.parse::<i32>().ok()?;
            let of_range =
                |i: usize| fields.get(i).and_then(|f| f.parse::<u32>().ok()).is_some_and(|u| uids.contains(&u));
            (of_range(uid) || of_range(cuid)).then_some(id)
        })
        .collect()
}

/// Remove the SysV IPC objects owned or created by a uid of `uids`; returns how many went
/// and how many could not.
fn remove_ipc_of(uids: &Range<u32>) -> (usize, usize) {
    let (mut removed, mut failed) = (0, 0);
    for kind in IpcKind::ALL {
        // A kernel without SysV IPC has no table: nothing to remove.
        let Ok(table) = std::fs::read_to_string(kind.table()) else { continue };
        for id in ids_of(&table, uids) {
            match kind.remove(id) {
                Ok(()) => removed += 1,
                Err(e) => {
                    failed += 1;
                    tracing::warn!(table = kind.table(), id, "could not remove a session's SysV IPC object: {e}");
                }
            }
        }
    }
    (removed, failed)
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Remove every entry beneath `top` owned by a uid of `uids`, walking without following
/// links, without crossing mounts and only into directories other users may enter; `seen`
/// holds the directories already walked (`/var/tmp` may be `/tmp`). Returns how many entries
/// went and how many could not.
fn remove_files_of(top: &Path, uids: &Range<u32>, skip: &[&Path], seen: &mut Vec<(u64, u64)>) -> (usize, usize) {
    // The top may be a link the host made (`/var/tmp` to `/tmp`): it is followed.
    let Ok(root) = rustix::fs::open(top, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()) else {
        return (0, 0);
    };
    remove_files_beneath(root, top, uids, skip, seen)
}

/// This process's IPC namespace's POSIX message queue file system, mounted nowhere: a queue
/// is a file there, owned by its creator, whether `/dev/mqueue` is mounted or not.
fn detached_mqueue() -> io::Result<OwnedFd> {
    use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags};
    let context = rustix::mount::fsopen("mqueue", FsOpenFlags::FSOPEN_CLOEXEC)?;
    rustix::mount::fsconfig_create(&context)?;
    let mount = rustix::mount::fsmount(&context, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())?;
    // fsmount gives a path-only descriptor: open the root for reading its entries.
    Ok(rustix::fs::openat(&mount, ".", dir_flags(), Mode::empty())?)
}

/// [`remove_files_of`] the directory open as `root`, whose path `top` is only shown in
/// messages.
fn remove_files_beneath(
    root: OwnedFd,
    top: &Path,
    uids: &Range<u32>,
    skip: &[&Path],
    seen: &mut Vec<(u64, u64)>,
) -> (usize, usize) {
    let skipped: Vec<(u64, u64)> =
        skip.iter().filter_map(|p| rustix::fs::stat(*p).ok()).map(|st| (st.st_dev, st.st_ino)).collect();
    let Ok(st) = rustix::fs::fstat(&root) else { return (0, 0) };
    let (dev, ino) = (st.st_dev, st.st_ino);
    if seen.contains(&(dev, ino)) || skipped.contains(&(dev, ino)) {
        return (0, 0);
    }
    seen.push((dev, ino));
    let (mut removed, mut failed, mut looked_at) = (0, 0, 0);
    // Each level: the open directory and the names of its subdirectories still to walk.
    let mut stack: Vec<(OwnedFd, Vec<Vec<u8>>)> = vec![(root, Vec::new())];
    let mut fresh = true;
    loop {
        let depth = stack.len();
        let Some((dir, pending)) = stack.last_mut() else { break };
        if fresh {
            fresh = false;
            let Ok(entries) = rustix::fs::Dir::read_from(dir.as_fd()) else { continue };
            for entry in entries.flatten() {
                let name = entry.file_name().to_bytes();
                if name == b"." || name == b".." {
                    continue;
                }
                looked_at += 1;
                if looked_at > MAX_ENTRIES {
                    break;
                }
                let name = OsStr::from_bytes(name);
                let Ok(st) = rustix::fs::statat(&*dir, name, AtFlags::SYMLINK_NOFOLLOW) else { continue };
                if st.st_dev != dev || skipped.contains(&(st.st_dev, st.st_ino)) {
                    continue;
                }
                if uids.contains(&st.st_uid) {
                    match crate::rmtree::remove_tree_at(dir, top, name) {
                        Ok(()) => removed += 1,
                        Err(e) => {
                            failed += 1;
                            tracing::warn!(dir = %top.display(), "could not remove a session's leftover: {e}");
                        }
                    }
                    continue;
                }
                let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
                // Only a directory other users may enter can hold what the uid made.
                if is_dir && st.st_mode & 0o001 != 0 && depth < MAX_DEPTH {
                    pending.push(name.as_bytes().to_vec());
                }
            }
            if looked_at > MAX_ENTRIES {
                tracing::warn!(dir = %top.display(), "too many entries to look for a session's leftovers: stopped");
                break;
            }
            continue;
        }
        let Some(name) = pending.pop() else {
            stack.pop();
            continue;
        };
        let Ok(child) = rustix::fs::openat(&*dir, OsStr::from_bytes(&name), dir_flags(), Mode::empty()) else {
            continue;
        };
        // Swapped for something on another file system meanwhile: not walked.
        if rustix::fs::fstat(&child).is_ok_and(|st| st.st_dev == dev) {
            stack.push((child, Vec::new()));
            fresh = true;
        }
    }
    (removed, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_found_by_owner_or_creator() {
        let shm = "\
       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap
 213772058          5   600               1048576  1234  1234      0 400001 400001 400001 400001          0          0 1700000000                     0                     0
         0          6   600                  4096  1234  1234      0     0     0 400002     0          0          0 1700000000                     0                     0
         0          7   600                  4096  1234  1234      0     0     0     0     0          0          0 1700000000                     0                     0
";
        assert_eq!(ids_of(shm, &(400_000..400_003)), [5, 6]);
        let sem = "\
       key      semid perms      nsems   uid   gid  cuid  cgid      otime      ctime
         0         11   600          1 400001 400001 400001 400001          0 1700000000
";
        assert_eq!(ids_of(sem, &(400_001..400_002)), [11]);
        assert!(ids_of(sem, &(400_002..400_003)).is_empty());
        assert!(ids_of("", &(0..10)).is_empty());
    }

    // Root is there on this machine kind and in CI: a queue handed to a uid of the range
    // goes, whether or not /dev/mqueue is mounted.
    #[test]
    #[allow(unsafe_code)]
    fn posix_message_queues_of_the_uids_are_removed() {
        let name = format!("/codebox-test-{}\0", std::process::id());
        // SAFETY: mq_open on a NUL-terminated name with no attributes; the descriptor is ours.
        let mq = unsafe {
            libc::mq_open(name.as_ptr().cast(), libc::O_CREAT | libc::O_RDWR, 0o600, std::ptr::null::<libc::mq_attr>())
        };
        assert!(mq >= 0, "{}", io::Error::last_os_error());
        rustix::fs::fchown(
            // SAFETY: `mq` is an open descriptor on Linux, closed below.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(mq) },
            Some(rustix::fs::Uid::from_raw(310_830)),
            None,
        )
        .unwrap();
        // SAFETY: closing the descriptor opened above.
        unsafe { libc::mq_close(mq) };
        let (removed, failed) = remove_files_beneath(
            detached_mqueue().unwrap(),
            Path::new("mqueue:"),
            &(310_830..310_831),
            &[],
            &mut Vec::new(),
        );
        assert_eq!((removed, failed), (1, 0));
        // SAFETY: as above.
        let again = unsafe { libc::mq_open(name.as_ptr().cast(), libc::O_RDONLY) };
        assert_eq!(again, -1, "the queue is gone");
        assert_eq!(io::Error::last_os_error().raw_os_error(), Some(libc::ENOENT));
    }

    /// A SysV object made as root and handed to `uid` (`IPC_SET`), as a session's would be.
    #[allow(unsafe_code)]
    fn objects_of(uid: u32) -> [i32; 3] {
        // SAFETY: plain syscalls on objects this test creates; the ds buffers are ours and
        // filled by IPC_STAT before IPC_SET writes them back.
        unsafe {
            let shm = libc::shmget(libc::IPC_PRIVATE, 1 << 16, libc::IPC_CREAT | 0o600);
            let msg = libc::msgget(libc::IPC_PRIVATE, libc::IPC_CREAT | 0o600);
            let sem = libc::semget(libc::IPC_PRIVATE, 1, libc::IPC_CREAT | 0o600);
            assert!(shm >= 0 && msg >= 0 && sem >= 0, "{}", io::Error::last_os_error());
            let mut ds: libc::shmid_ds = std::mem::zeroed();
            assert_eq!(libc::shmctl(shm, libc::IPC_STAT, &mut ds), 0);
            ds.shm_perm.uid = uid;
            assert_eq!(libc::shmctl(shm, libc::IPC_SET, &mut ds), 0);
            let mut ds: libc::msqid_ds = std::mem::zeroed();
            assert_eq!(libc::msgctl(msg, libc::IPC_STAT, &mut ds), 0);
            ds.msg_perm.uid = uid;
            assert_eq!(libc::msgctl(msg, libc::IPC_SET, &mut ds), 0);
            let mut ds: libc::semid_ds = std::mem::zeroed();
            assert_eq!(libc::semctl(sem, 0, libc::IPC_STAT, &mut ds as *mut libc::semid_ds), 0);
            ds.sem_perm.uid = uid;
            assert_eq!(libc::semctl(sem, 0, libc::IPC_SET, &mut ds as *mut libc::semid_ds), 0);
            [shm, msg, sem]
        }
    }

    fn listed(kind: IpcKind, id: i32) -> bool {
        let table = std::fs::read_to_string(kind.table()).unwrap();
        table.lines().skip(1).any(|l| l.split_whitespace().nth(1) == Some(&id.to_string()))
    }

    // Root is there on this machine kind and in CI: objects handed to a uid of the range go,
    // another uid's stay.
    #[test]
    fn ipc_objects_of_the_uids_are_removed_and_others_kept() {
        let ours = objects_of(310_800);
        let theirs = objects_of(310_810);
        let (removed, failed) = remove_ipc_of(&(310_800..310_802));
        assert_eq!((removed, failed), (3, 0));
        for (kind, (ours, theirs)) in IpcKind::ALL.into_iter().zip(ours.into_iter().zip(theirs)) {
            assert!(!listed(kind, ours), "{kind:?} {ours} is removed");
            assert!(listed(kind, theirs), "{kind:?} {theirs} stays");
        }
        assert_eq!(remove_ipc_of(&(310_810..310_811)), (3, 0));
    }

    // Files of the uid go wherever they are under the top (nested in a directory of another
    // owner that others may enter, or a whole directory of theirs); a link is removed, not
    // followed; another uid's files, a closed directory and skipped paths stay.
    #[test]
    fn files_of_the_uids_are_removed_without_following_links() {
        use std::os::unix::fs::{PermissionsExt, chown, symlink};
        let base = tempfile::tempdir().unwrap();
        let top = base.path();
        let uid = 310_820;
        let mine = |p: &Path| chown(p, Some(uid), Some(uid)).unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("target"), b"keep").unwrap();
        mine(&outside.path().join("target"));

        std::fs::write(top.join("secret"), b"s").unwrap();
        mine(&top.join("secret"));
        std::fs::create_dir_all(top.join("own/deep/er")).unwrap();
        mine(&top.join("own"));
        let shared = top.join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        std::fs::write(shared.join("nested"), b"n").unwrap();
        mine(&shared.join("nested"));
        symlink(outside.path(), shared.join("link")).unwrap();
        rustix::fs::chownat(
            rustix::fs::CWD,
            shared.join("link"),
            Some(rustix::fs::Uid::from_raw(uid)),
            None,
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
        symlink(outside.path(), shared.join("root-link")).unwrap();
        std::fs::write(shared.join("other"), b"o").unwrap();
        let work = top.join("work");
        std::fs::create_dir(&work).unwrap();
        mine(&work);
        let closed = top.join("closed");
        std::fs::create_dir(&closed).unwrap();
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(closed.join("unreachable"), b"u").unwrap();
        mine(&closed.join("unreachable"));

        let (removed, failed) = remove_files_of(top, &(uid..uid + 1), &[&work], &mut Vec::new());
        assert_eq!((removed, failed), (4, 0), "secret, own, nested, link");
        for gone in ["secret", "own", "shared/nested", "shared/link"] {
            assert!(std::fs::symlink_metadata(top.join(gone)).is_err(), "{gone} is removed");
        }
        for kept in ["shared/other", "shared/root-link", "work", "closed/unreachable"] {
            assert!(std::fs::symlink_metadata(top.join(kept)).is_ok(), "{kept} stays");
        }
        assert_eq!(std::fs::read(outside.path().join("target")).unwrap(), b"keep", "a link is not followed");
        let (again, _) = remove_files_of(top, &(uid..uid + 1), &[&work], &mut vec![]);
        assert_eq!(again, 0);
        let mut seen = Vec::new();
        std::fs::write(top.join("secret"), b"s").unwrap();
        mine(&top.join("secret"));
        assert_eq!(remove_files_of(top, &(uid..uid + 1), &[], &mut seen).0, 2, "secret and work");
        assert_eq!(remove_files_of(top, &(uid..uid + 1), &[], &mut seen), (0, 0), "a directory is walked once");
    }
}

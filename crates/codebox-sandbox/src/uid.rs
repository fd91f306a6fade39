//! Per-session unprivileged uids.
//!
//! A user namespace does not lower a root caller's identity for file permission checks, so a
//! server running as root gives each session's kernel its own uid (and gid of the same
//! number) from a range, switched to before bubblewrap starts. A uid is handed out only when
//! no process runs under it, and returns to the pool when its [`SessionUid`] is dropped.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The default range of session uids, half-open like every `Range`: 65 536 uids, from
/// 200 000 to 265 535 inclusive (what `codebox serve --session-uids` writes as
/// `200000-265535`).
pub const DEFAULT_UID_RANGE: Range<u32> = 200_000..265_536;

/// Hands out session uids from a range.
///
/// Clones share what is handed out. Two allocators are equal when they are clones of one
/// another: two allocators made separately over the same range would each hand out the
/// same uids, so boxes confined by them are not confined alike.
#[derive(Debug, Clone)]
pub struct UidAllocator {
    range: Range<u32>,
    taken: Arc<Mutex<BTreeSet<u32>>>,
}

impl PartialEq for UidAllocator {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.taken, &other.taken)
    }
}

impl Eq for UidAllocator {}

impl std::hash::Hash for UidAllocator {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Equal allocators share their state and so their range: hashing the range agrees
        // with `eq`.
        self.range.hash(state);
    }
}

/// A uid held by one session; dropping it frees the uid.
#[derive(Debug)]
pub struct SessionUid {
    uid: u32,
    taken: Arc<Mutex<BTreeSet<u32>>>,
}

impl SessionUid {
    /// The uid (and gid).
    pub fn uid(&self) -> u32 {
        self.uid
    }
}

impl Drop for SessionUid {
    fn drop(&mut self) {
        self.taken.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.uid);
    }
}

impl UidAllocator {
    /// An allocator over `range`, which must be non-empty and must not include uid 0.
    pub fn new(range: Range<u32>) -> codebox_core::Result<Self> {
        if range.is_empty() || range.start == 0 {
            return Err(codebox_core::CodeBoxError::invalid(format!(
                "session uid range {}..{} must be non-empty and above 0",
                range.start, range.end
            )));
        }
        Ok(Self { range, taken: Arc::default() })
    }

    /// The range.
    pub fn range(&self) -> Range<u32> {
        self.range.clone()
    }

    /// A uid no other session holds and no process runs under.
    pub fn allocate(&self) -> codebox_core::Result<SessionUid> {
        let busy = uids_with_processes();
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        // Every uid in use is the server being full, not a caller's mistake: try later.
        let uid = self
            .range
            .clone()
            .find(|u| !taken.contains(u) && !busy.contains(u))
            .ok_or(codebox_core::CodeBoxError::rate_limited(None))?;
        taken.insert(uid);
        Ok(SessionUid { uid, taken: self.taken.clone() })
    }
}

/// Whether this process runs as root (session uids, cgroups and size-limited working
/// directories need it).
pub fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The first directory on the way to `path` (or through the links it resolves through)
/// that other users cannot enter, if any: a session uid could not run a program there.
pub fn unreachable_for_others(path: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let real = std::fs::canonicalize(path).ok();
    for p in std::iter::once(path.to_path_buf()).chain(real) {
        for dir in p.ancestors().skip(1) {
            let Ok(meta) = std::fs::metadata(dir) else { continue };
            if meta.permissions().mode() & 0o001 == 0 {
                return Some(dir.to_path_buf());
            }
        }
    }
    None
}

/// The real uids of every live process on the machine. A zombie is left out: it runs
/// nothing and holds nothing, and a box that just stopped leaves its kernel's until the
/// process that started it reaps it, which must not keep the uid from the next box (a
/// paused box resuming, say).
pub(crate) fn uids_with_processes() -> BTreeSet<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else { return BTreeSet::new() };
    rd.flatten()
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .filter(|s| {
            let state = s.lines().find(|l| l.starts_with("State:")).and_then(|l| l.split_whitespace().nth(1));
            !matches!(state, Some("Z" | "X"))
        })
        .filter_map(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .collect()
}

/// The live (not zombie) processes whose real uid is in `range`.
pub fn processes_in_range(range: &Range<u32>) -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()).map(|pid| (pid, e.path())))
        .filter(|(_, path)| {
            let Ok(status) = std::fs::read_to_string(path.join("status")) else { return false };
            let field = |name: &str| {
                status
                    .lines()
                    .find(|l| l.starts_with(name))
                    .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
            };
            let live = field("State:").is_some_and(|s| s != "Z" && s != "X");
            live && field("Uid:").and_then(|u| u.parse::<u32>().ok()).is_some_and(|uid| range.contains(&uid))
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// SIGKILL every process whose uid is in `range` (a sweep after a crash); returns how many.
pub(crate) fn kill_range(range: &Range<u32>) -> usize {
    let pids = processes_in_range(range);
    for pid in &pids {
        if let Some(pid) = rustix::process::Pid::from_raw(*pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
    pids.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_unique_and_come_back_on_drop() {
        let a = UidAllocator::new(300_000..300_003).unwrap();
        let u1 = a.allocate().unwrap();
        let u2 = a.allocate().unwrap();
        let u3 = a.allocate().unwrap();
        assert_eq!([u1.uid(), u2.uid(), u3.uid()], [300_000, 300_001, 300_002]);
        let err = a.allocate().unwrap_err();
        assert_eq!(err.kind(), codebox_core::ErrorKind::RateLimited, "{err}");
        drop(u2);
        assert_eq!(a.allocate().unwrap().uid(), 300_001);
    }

    #[test]
    fn closed_directories_on_the_way_are_found() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let closed = base.path().join("closed");
        std::fs::create_dir_all(closed.join("bin")).unwrap();
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(unreachable_for_others(&closed.join("bin/python")), Some(closed.clone()));
        assert_eq!(unreachable_for_others(std::path::Path::new("/usr/bin/python3")), None);
    }

    #[test]
    fn the_default_range_is_the_documented_one() {
        // Documented (and taken by `--session-uids`) as `200000-265535`, first and last
        // inclusive; the constant is half-open.
        assert_eq!(DEFAULT_UID_RANGE.start, 200_000);
        assert_eq!(DEFAULT_UID_RANGE.clone().next_back(), Some(265_535));
        assert_eq!(DEFAULT_UID_RANGE.len(), 65_536);
    }

    #[test]
    fn bad_ranges_are_refused() {
        assert!(UidAllocator::new(0..10).is_err());
        assert!(UidAllocator::new(5..5).is_err());
    }

    #[test]
    fn a_uid_with_a_running_process_is_skipped() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("/bin/sleep").arg("30").uid(300_100).gid(300_100).spawn().unwrap();
        let a = UidAllocator::new(300_100..300_102).unwrap();
        assert_eq!(a.allocate().unwrap().uid(), 300_101);
        assert_eq!(processes_in_range(&(300_100..300_101)), vec![child.id() as i32]);
        assert_eq!(kill_range(&(300_100..300_101)), 1);
        child.wait().unwrap();
        assert!(processes_in_range(&(300_100..300_101)).is_empty());
    }
}

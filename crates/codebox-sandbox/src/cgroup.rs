//! Per-session cgroups (v1 or v2, whichever controllers the host gives us).
//!
//! Each session gets `<our cgroup>/codebox/<name>` in every controller it needs: memory (hard
//! limit, OOM counter), pids (`pids.max`) and cpu (quota), plus the freezer on v1 so that a
//! teardown can stop everything before killing it (a fork bomb cannot outrun the kill), and
//! cpuacct on v1 where it is mounted, for the session's CPU time (v2's `cpu.stat` has it).
//! [`SessionCgroup::counters`] reads what the controllers counted, for a box's metrics. The
//! kernel enters its cgroup between fork and exec (it writes `0` to `cgroup.procs` through a
//! descriptor opened beforehand), so nothing it starts escapes the limits.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use super::Limits;

mod counters;

pub use self::counters::CgroupCounters;
use self::counters::{counters_v1, counters_v2};

/// The cgroup hierarchy sessions live in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CgroupManager {
    /// cgroup v1: one directory per controller (the parent of every session's cgroup).
    V1 {
        /// `…/memory/<ours>/codebox`.
        memory: PathBuf,
        /// `…/pids/<ours>/codebox`.
        pids: PathBuf,
        /// `…/cpu/<ours>/codebox`.
        cpu: PathBuf,
        /// `…/freezer/<ours>/codebox`, when mounted.
        freezer: Option<PathBuf>,
        /// `…/cpuacct/<ours>/codebox`, when mounted (the session's CPU time).
        cpuacct: Option<PathBuf>,
    },
    /// cgroup v2: one directory with the memory, pids and cpu controllers enabled.
    V2 {
        /// `/sys/fs/cgroup/<ours>/codebox`.
        base: PathBuf,
    },
}

/// The name of the directory holding every session cgroup, under our own cgroup.
pub(crate) const BASE_NAME: &str = "codebox";

/// The session cgroups that the process `pid` made and that are still there (each session
/// cgroup is named after its server's process id): what a server killed without cleaning
/// up leaves until the next one sweeps. An error when this machine gives no cgroups.
pub fn session_cgroups_of(pid: u32) -> io::Result<Vec<PathBuf>> {
    let manager = CgroupManager::detect(Path::new("/sys/fs/cgroup"))?;
    let prefix = format!("{pid}-");
    Ok(manager
        .bases()
        .iter()
        .filter_map(|b| std::fs::read_dir(b).ok())
        .flat_map(|rd| rd.flatten())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect())
}

fn own_cgroups() -> io::Result<Vec<(String, String)>> {
    Ok(parse_proc_cgroup(&std::fs::read_to_string("/proc/self/cgroup")?))
}

/// The `(controllers, path)` of each line of a `/proc/<pid>/cgroup`: lines are
/// `id:controllers:path`, and v2's is `0::path` (no controllers).
pub(crate) fn parse_proc_cgroup(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let (_, ctrls, path) = (it.next()?, it.next()?, it.next()?);
            Some((ctrls.to_owned(), path.to_owned()))
        })
        .collect()
}

fn join(root: &Path, cgroup_path: &str) -> PathBuf {
    root.join(cgroup_path.trim_start_matches('/'))
}

impl CgroupManager {
    /// Find the hierarchy to use under `root` (normally `/sys/fs/cgroup`): v2 when its root
    /// has the memory and pids controllers, else v1 when memory, pids and cpu are mounted.
    /// Creates the `codebox` parent directories (needs root or a delegated subtree).
    pub(crate) fn detect(root: &Path) -> io::Result<Self> {
        let own = own_cgroups()?;
        let v2_controllers = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let v2_has = |c: &str| v2_controllers.split_whitespace().any(|x| x == c);
        if v2_has("memory") && v2_has("pids") {
            let path = own.iter().find(|(c, _)| c.is_empty()).map(|(_, p)| p.clone()).unwrap_or_else(|| "/".into());
            let ours = join(root, &path);
            let base = ours.join(BASE_NAME);
            std::fs::create_dir_all(&base)?;
            // Controllers must be enabled on the way down; `ours` may refuse it when it holds
            // processes itself (the "no internal processes" rule): then use a child of root.
            let enable = |dir: &Path| {
                let mut want = vec!["+memory", "+pids"];
                if v2_has("cpu") {
                    want.push("+cpu");
                }
                std::fs::write(dir.join("cgroup.subtree_control"), want.join(" "))
            };
            enable(&ours).and_then(|()| enable(&base)).map_err(|e| {
                io::Error::new(e.kind(), format!("enabling cgroup v2 controllers under {}: {e}", ours.display()))
            })?;
            return Ok(Self::V2 { base });
        }
        let dir_of = |ctrl: &str| -> Option<PathBuf> {
            let mount = root.join(ctrl);
            if !mount.join("cgroup.procs").exists() {
                return None;
            }
            let path = own
                .iter()
                .find(|(c, _)| c.split(',').any(|x| x == ctrl))
                .map(|(_, p)| p.clone())
                .unwrap_or_else(|| "/".into());
            Some(join(&mount, &path).join(BASE_NAME))
        };
        let (Some(memory), Some(pids), Some(cpu)) = (dir_of("memory"), dir_of("pids"), dir_of("cpu")) else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "no usable cgroups under {}: need v2 with memory and pids, or v1 memory, pids and cpu",
                    root.display()
                ),
            ));
        };
        let freezer = dir_of("freezer");
        let cpuacct = dir_of("cpuacct");
        for d in [Some(&memory), Some(&pids), Some(&cpu), freezer.as_ref(), cpuacct.as_ref()].into_iter().flatten() {
            std::fs::create_dir_all(d)
                .map_err(|e| io::Error::new(e.kind(), format!("creating cgroup {}: {e}", d.display())))?;
        }
        Ok(Self::V1 { memory, pids, cpu, freezer, cpuacct })
    }

    /// `v1` or `v2`.
    pub(crate) fn version(&self) -> &'static str {
        match self {
            Self::V1 { .. } => "v1",
            Self::V2 { .. } => "v2",
        }
    }

    /// The parent directories of session cgroups.
    pub(crate) fn bases(&self) -> Vec<PathBuf> {
        match self {
            Self::V1 { memory, pids, cpu, freezer, cpuacct } => {
                [Some(memory), Some(pids), Some(cpu), freezer.as_ref(), cpuacct.as_ref()]
                    .into_iter()
                    .flatten()
                    .cloned()
                    .collect()
            }
            Self::V2 { base } => vec![base.clone()],
        }
    }

    /// Create the cgroup of session `name` with `limits` (memory, swap 0, pids, cpu).
    pub(crate) fn create(&self, name: &str, limits: &Limits) -> io::Result<SessionCgroup> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad cgroup name {name:?}")));
        }
        let cg = match self {
            Self::V1 { memory, pids, cpu, freezer, cpuacct } => SessionCgroup {
                version: Version::V1,
                memory: memory.join(name),
                pids: pids.join(name),
                cpu: cpu.join(name),
                freezer: freezer.as_ref().map(|f| f.join(name)),
                cpuacct: cpuacct.as_ref().map(|c| c.join(name)),
            },
            Self::V2 { base } => {
                let dir = base.join(name);
                SessionCgroup {
                    version: Version::V2,
                    memory: dir.clone(),
                    pids: dir.clone(),
                    cpu: dir,
                    freezer: None,
                    cpuacct: None,
                }
            }
        };
        for d in cg.dirs() {
            std::fs::create_dir(&d)
                .or_else(|e| if e.kind() == io::ErrorKind::AlreadyExists { Ok(()) } else { Err(e) })?;
        }
        if let Err(e) = cg.set_limits(limits) {
            let _ = cg.remove();
            return Err(e);
        }
        Ok(cg)
    }
}

/// The CPU accounting period, in microseconds (the kernel's default).
const PERIOD: u64 = 100_000;

/// The CPU quota per [`PERIOD`], in microseconds, for the limits' CPU share.
fn cpu_quota(limits: &Limits) -> Option<u64> {
    limits.cpu_millis.map(|m| u64::from(m) * PERIOD / 1000)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// The cgroup of one session. Dropping it does not remove it: call [`SessionCgroup::remove`]
/// once its processes are gone (after [`SessionCgroup::kill_all`]).
#[derive(Debug)]
pub struct SessionCgroup {
    version: Version,
    memory: PathBuf,
    pids: PathBuf,
    cpu: PathBuf,
    freezer: Option<PathBuf>,
    cpuacct: Option<PathBuf>,
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    std::fs::write(path, value)
        .map_err(|e| io::Error::new(e.kind(), format!("writing {value:?} to {}: {e}", path.display())))
}

/// A value from a flat-keyed cgroup file (`key value` lines).
pub(super) fn keyed(path: &Path, key: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

impl SessionCgroup {
    fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![self.memory.clone()];
        for d in [Some(&self.pids), Some(&self.cpu), self.freezer.as_ref(), self.cpuacct.as_ref()].into_iter().flatten()
        {
            if !dirs.contains(d) {
                dirs.push(d.clone());
            }
        }
        dirs
    }

    fn set_limits(&self, limits: &Limits) -> io::Result<()> {
        match self.version {
            Version::V1 => {
                if let Some(m) = limits.memory {
                    write(&self.memory.join("memory.limit_in_bytes"), &m.to_string())?;
                    // Swap: only where swap accounting exists (no swap on this machine kind).
                    let memsw = self.memory.join("memory.memsw.limit_in_bytes");
                    if memsw.exists() {
                        write(&memsw, &m.to_string())?;
                    }
                    let _ = write(&self.memory.join("memory.swappiness"), "0");
                }
                if let Some(p) = limits.pids {
                    write(&self.pids.join("pids.max"), &p.to_string())?;
                }
                if let Some(quota) = cpu_quota(limits) {
                    write(&self.cpu.join("cpu.cfs_period_us"), &PERIOD.to_string())?;
                    write(&self.cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
                }
            }
            Version::V2 => {
                if let Some(m) = limits.memory {
                    write(&self.memory.join("memory.max"), &m.to_string())?;
                    let _ = write(&self.memory.join("memory.swap.max"), "0");
                    write(&self.memory.join("memory.oom.group"), "1")?;
                }
                if let Some(p) = limits.pids {
                    write(&self.pids.join("pids.max"), &p.to_string())?;
                }
                if let Some(quota) = cpu_quota(limits) {
                    let _ = write(&self.cpu.join("cpu.max"), &format!("{quota} {PERIOD}"));
                }
            }
        }
        Ok(())
    }

    /// Descriptors of every `cgroup.procs` of this session, for [`Entry`].
    pub fn entry(&self) -> io::Result<Entry> {
        let fds = self
            .dirs()
            .iter()
            .map(|d| OpenOptions::new().write(true).open(d.join("cgroup.procs")).map(OwnedFd::from))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Entry { fds })
    }

    /// How many times the OOM killer killed a process of this session.
    pub fn oom_kills(&self) -> u64 {
        match self.version {
            Version::V1 => keyed(&self.memory.join("memory.oom_control"), "oom_kill").unwrap_or(0),
            Version::V2 => keyed(&self.memory.join("memory.events"), "oom_kill").unwrap_or(0),
        }
    }

    /// How many processes and threads the session has now.
    pub fn pids_current(&self) -> u64 {
        std::fs::read_to_string(self.pids.join("pids.current")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
    }

    /// How many times a fork failed at `pids.max`.
    pub fn pids_limit_hits(&self) -> u64 {
        keyed(&self.pids.join("pids.events"), "max").unwrap_or(0)
    }

    /// The process ids in the session (from the pids controller).
    pub fn procs(&self) -> Vec<i32> {
        std::fs::read_to_string(self.pids.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Kill every process of the session: `cgroup.kill` on v2; on v1 freeze, SIGKILL each
    /// process, thaw (so nothing forks in between), repeated until empty (at most ~2 s).
    pub fn kill_all(&self) {
        if self.version == Version::V2 && write(&self.pids.join("cgroup.kill"), "1").is_ok() {
            self.wait_empty(Duration::from_secs(2));
            return;
        }
        let freezer_state = self.freezer.as_ref().map(|f| f.join("freezer.state"));
        for _ in 0..200 {
            let procs = self.procs();
            if procs.is_empty() {
                return;
            }
            if let Some(state) = &freezer_state {
                let _ = write(state, "FROZEN");
            }
            for pid in procs {
                if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
            if let Some(state) = &freezer_state {
                let _ = write(state, "THAWED");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_empty(&self, limit: Duration) {
        let start = std::time::Instant::now();
        while !self.procs().is_empty() && start.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Remove the session's directories (they must hold no process).
    pub fn remove(&self) -> io::Result<()> {
        let mut first_err = None;
        for d in self.dirs() {
            // An exiting process may linger for a moment: retry briefly.
            let mut result = std::fs::remove_dir(&d);
            for _ in 0..50 {
                match &result {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(Duration::from_millis(10));
                        result = std::fs::remove_dir(&d);
                    }
                    _ => break,
                }
            }
            match result {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    first_err.get_or_insert(io::Error::new(e.kind(), format!("removing {}: {e}", d.display())));
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// The session's directories, one per controller.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.dirs()
    }

    /// What the session's controllers have counted so far (see [`CgroupCounters`]).
    pub fn counters(&self) -> CgroupCounters {
        match self.version {
            Version::V1 => counters_v1(&self.memory, &self.pids, &self.cpu, self.cpuacct.as_deref()),
            Version::V2 => counters_v2(&self.memory),
        }
    }
}

/// Open `cgroup.procs` descriptors; [`Entry::enter`] moves the calling process in.
#[derive(Debug)]
pub struct Entry {
    fds: Vec<OwnedFd>,
}

impl Entry {
    /// The raw descriptors, to be used between fork and exec by [`enter_raw`].
    pub fn raw_fds(&self) -> Vec<RawFd> {
        self.fds.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// The descriptors, for a process that enters the session by itself.
    pub fn into_fds(self) -> Vec<OwnedFd> {
        self.fds
    }

    /// Move the calling process into the session.
    pub fn enter(&self) -> io::Result<()> {
        for fd in &self.fds {
            let mut f = std::fs::File::from(fd.try_clone()?);
            f.write_all(b"0")?;
        }
        Ok(())
    }
}

/// Move the calling process into the cgroups whose `cgroup.procs` are open on `fds`.
/// Async-signal-safe: one `write` per descriptor, no allocation.
pub(crate) fn enter_raw(fds: &[RawFd]) -> io::Result<()> {
    for fd in fds {
        // SAFETY: the descriptors belong to an `Entry` that outlives the spawn.
        #[allow(unsafe_code)]
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(*fd) };
        rustix::io::write(fd, b"0")?;
    }
    Ok(())
}

/// Why sessions cannot have cgroups on this machine: no usable hierarchy, or no right to
/// make cgroups in it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub struct CgroupUnavailable {
    reason: String,
}

/// The process-wide cgroup manager, detected once under `/sys/fs/cgroup` (sweeping the
/// session cgroups of processes that are gone on the way).
pub(crate) fn cgroup_manager() -> std::result::Result<&'static CgroupManager, CgroupUnavailable> {
    static MANAGER: OnceLock<std::result::Result<CgroupManager, CgroupUnavailable>> = OnceLock::new();
    MANAGER
        .get_or_init(|| {
            let m = CgroupManager::detect(Path::new("/sys/fs/cgroup"))
                .map_err(|e| CgroupUnavailable { reason: e.to_string() })?;
            let swept = sweep_orphans(&m);
            if swept > 0 {
                tracing::info!(swept, "removed session cgroups of processes that are gone");
            }
            Ok(m)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Whether sessions can have cgroups here, and of which version (`"v1"` or `"v2"`). The
/// first call detects the hierarchy and removes the session cgroups of processes that are
/// gone.
pub fn cgroup_version() -> std::result::Result<&'static str, CgroupUnavailable> {
    cgroup_manager().map(CgroupManager::version)
}

/// Remove session cgroups whose owning process (the number before the first `-` of the
/// name) no longer exists, killing what is left in them. Sessions of live processes, this
/// one or others, are left alone.
pub(crate) fn sweep_orphans(manager: &CgroupManager) -> usize {
    let mut removed = 0;
    for base in manager.bases() {
        let Ok(rd) = std::fs::read_dir(&base) else { continue };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let owner = name.split('-').next().and_then(|p| p.parse::<i32>().ok());
            let alive = owner.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
            if owner.is_none() || alive {
                continue;
            }
            if let Ok(cg) = manager.create(&name, &Limits::unlimited()) {
                cg.kill_all();
                if cg.remove().is_ok() {
                    removed += 1;
                }
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_files_are_parsed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("memory.oom_control");
        std::fs::write(&f, "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n").unwrap();
        assert_eq!(keyed(&f, "oom_kill"), Some(3));
        assert_eq!(keyed(&f, "under_oom"), Some(0));
        assert_eq!(keyed(&f, "missing"), None);
    }

    #[test]
    fn an_unusable_root_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let err = CgroupManager::detect(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no usable cgroups"), "{err}");
    }

    #[test]
    fn bad_session_names_are_refused() {
        let m = CgroupManager::V2 { base: "/nonexistent".into() };
        for bad in ["", "a/b", "..", ".x"] {
            assert_eq!(m.create(bad, &Limits::server()).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        }
    }

    // This machine kind runs as root with v1 memory, pids and cpu controllers (CI too): a
    // real session cgroup holds a real process, counts its OOM kill and is removed.
    #[test]
    fn a_session_cgroup_limits_and_kills_a_real_process() {
        let manager = CgroupManager::detect(Path::new("/sys/fs/cgroup")).expect("cgroups usable here (root)");
        let name = format!("unit-{}", std::process::id());
        let limits = Limits { memory: Some(64 << 20), pids: Some(8), ..Limits::server() };
        let cg = manager.create(&name, &limits).unwrap();
        let entry = cg.entry().unwrap();
        let fds = entry.raw_fds();
        let mut cmd = std::process::Command::new("/bin/sh");
        // A hog: grows a shell variable until the OOM killer stops it.
        cmd.args(["-c", "x=aaaaaaaaaaaaaaaa; while :; do x=$x$x; done"]);
        #[allow(unsafe_code)]
        // SAFETY: enter_raw only writes to open descriptors.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || enter_raw(&fds))
        };
        let status = cmd.status().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "{status:?}");
        assert!(cg.oom_kills() >= 1);
        let counted = cg.counters();
        assert_eq!(counted.memory_limit, Some(64 << 20));
        assert!(counted.cpu_usage_ns.is_some_and(|ns| ns > 0), "the hog's CPU time is counted: {counted:?}");
        cg.kill_all();
        assert!(cg.procs().is_empty());
        cg.remove().unwrap();
        assert!(cg.paths().iter().all(|p| !p.exists()));
    }
}

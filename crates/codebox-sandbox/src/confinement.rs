//! The confinement of one kernel: its level, its uid and its cgroup, from start to teardown.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use codebox_core::{CodeBoxError, KernelDeath, Result};

use crate::cgroup::{SessionCgroup, cgroup_manager};
use crate::disk::WorkDisk;
use crate::launch::{Prepared, SandboxSpec, python_paths};
use crate::netproxy::{Allowlist, NetProxy};
use crate::policy::SandboxPolicy;
use crate::uid::SessionUid;
use crate::{IsolationLevel, Limits, probe};

impl SandboxPolicy {
    /// Confine a box whose working directory is `work_dir`: allocate its uid (and hand it
    /// the directory), mount the size-limited image over the directory when `workdir_size`
    /// is set and this process is root, create its cgroup. Every kernel and command of the
    /// box then runs under this confinement.
    pub fn confine(&self, work_dir: &Path) -> Result<Confinement> {
        let level = self.level()?;
        let root = rustix::process::geteuid().is_root();
        let uid = match &self.uids {
            Some(_) if !root => return Err(CodeBoxError::invalid("per-session uids need the process to run as root")),
            Some(a) => Some(a.allocate()?),
            None => None,
        };
        let uid_raw = uid.as_ref().map(SessionUid::uid);
        let disk = match self.limits.workdir_size {
            Some(bytes) if root => Some(
                WorkDisk::mount(work_dir, bytes, self.limits.workdir_inodes, uid_raw)
                    .map_err(|e| CodeBoxError::io("limiting the working directory's size", e))?,
            ),
            Some(_) => {
                tracing::debug!("the working directory size limit needs root; not applied");
                None
            }
            None => None,
        };
        if let Some(u) = uid_raw {
            hand_over(work_dir, u)
                .map_err(|e| CodeBoxError::io("giving the working directory to the session uid", e))?;
        }
        let cgroup = if self.cgroups {
            let manager = cgroup_manager().map_err(|e| CodeBoxError::kernel_start(e.to_string()))?;
            let name = format!("{}-{}", std::process::id(), next_serial());
            Some(manager.create(&name, &self.limits).map_err(|e| CodeBoxError::io("creating the session cgroup", e))?)
        } else {
            None
        };
        Ok(Confinement {
            level,
            network: self.network,
            network_allowlist: self.network_allowlist.clone(),
            limits: self.limits.clone(),
            uid,
            cgroup,
            disk,
            oom_base: AtomicU64::new(0),
            work_dir: work_dir.to_owned(),
            released: AtomicBool::new(false),
        })
    }
}

/// Where a confined box's installer (pip) reaches the network. Each level has its one way:
/// pip never gets the host network in a sandbox, only a proxy to the package indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallerNetwork<'a> {
    /// The host network: the `None` level, which cannot hold pip to anything
    /// (`install_network` in [`IsolationLevel::gaps`]).
    Host,
    /// Bubblewrap: the box's private network namespace, and the proxy on the Unix socket
    /// `net.sock` of this directory, which the sandbox mounts (`python/net_forwarder.py`
    /// serves it inside as `127.0.0.1:3128`).
    ProxySocket(&'a Path),
    /// Landlock: no TCP but connections to this port (the proxy's, on host loopback), and
    /// stream sockets only.
    ProxyPort(u16),
}

/// What waits in a box made for a forked kernel, with the argument `infinity`: it only
/// holds the box's namespaces.
pub const FORK_PLACEHOLDER: &str = "/usr/bin/sleep";

/// A box made for a forked kernel ([`Confinement::prepare_fork_target`]).
#[derive(Debug)]
pub struct ForkTarget {
    /// Bubblewrap running the placeholder; spawn it, then drop `info_write`.
    pub prepared: Prepared,
    /// Bubblewrap's `--info-fd` output: `{"child-pid": N}`, the host pid of the box's init,
    /// whose first child (pid 2 in the box) is the placeholder.
    pub info: OwnedFd,
    /// The write end of `info`: close it once bubblewrap is spawned, so that a bubblewrap
    /// that fails gives end of file rather than a wait.
    pub info_write: OwnedFd,
    /// What the forked kernel must do to itself.
    pub plan: ForkPlan,
}

/// What a kernel forked into a box must take on, in the box's namespaces, before any code
/// of the box runs: what bubblewrap does to a kernel it executes.
#[derive(Debug)]
#[non_exhaustive]
pub struct ForkPlan {
    /// The uid and gid to take (the box's, as bubblewrap maps them in the box).
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
    /// The working directory.
    pub cwd: PathBuf,
    /// The whole environment.
    pub env: Vec<(String, String)>,
    /// `(RLIMIT_*, value)`: set as both soft and hard limits (never raised).
    pub rlimits: Vec<(i32, u64)>,
    /// Seccomp programs (arrays of `struct sock_filter`) in memory files, in order.
    pub seccomp: Vec<OwnedFd>,
    /// The session cgroup's `cgroup.procs` files, opened here: write `0` to each to enter it.
    pub cgroup: Vec<OwnedFd>,
}

/// The directory of a confined box's installed packages, relative to its working directory.
/// `.codebox/` is reserved for the box's own state and left out of file listings.
pub const PACKAGES_DIR: &str = ".codebox/site-packages";

/// `env` with `packages` first on `PYTHONPATH` (before any `PYTHONPATH` the box sets).
fn with_packages(env: &[(String, String)], packages: Option<&Path>) -> Vec<(String, String)> {
    let Some(dir) = packages else { return env.to_vec() };
    let dir = dir.to_string_lossy().into_owned();
    let mut out: Vec<(String, String)> = env.iter().filter(|(k, _)| k != "PYTHONPATH").cloned().collect();
    let value = match env.iter().find(|(k, _)| k == "PYTHONPATH") {
        Some((_, v)) if !v.is_empty() => format!("{dir}:{v}"),
        _ => dir,
    };
    out.push(("PYTHONPATH".to_owned(), value));
    out
}

fn next_serial() -> u64 {
    static SERIAL: AtomicU64 = AtomicU64::new(0);
    SERIAL.fetch_add(1, Ordering::Relaxed)
}

/// `chown` a directory (not what is in it) to `uid:uid`, mode 0700.
fn hand_over(dir: &Path, uid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    rustix::fs::chown(dir, Some(rustix::fs::Uid::from_raw(uid)), Some(rustix::fs::Gid::from_raw(uid)))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// A box's confinement: its level, uid, cgroup and working-directory image, shared by its
/// kernels (one after another) and commands. [`Confinement::release`] (or dropping it)
/// kills whatever is left in its cgroup and under its uid, removes the cgroup, unmounts the
/// image and frees the uid.
#[derive(Debug)]
pub struct Confinement {
    level: IsolationLevel,
    network: bool,
    network_allowlist: Allowlist,
    limits: Limits,
    uid: Option<SessionUid>,
    cgroup: Option<SessionCgroup>,
    disk: Option<WorkDisk>,
    oom_base: AtomicU64,
    work_dir: PathBuf,
    released: AtomicBool,
}

impl Confinement {
    /// The isolation level.
    pub fn level(&self) -> IsolationLevel {
        self.level
    }

    /// For a box with a network allowlist: start the proxy of a kernel whose runtime
    /// directory is `run_dir` ([`proxy_env`](crate::proxy_env) points the kernel at it).
    pub fn start_net_proxy(&self, run_dir: &Path) -> Result<Option<NetProxy>> {
        if self.network_allowlist.is_empty() {
            return Ok(None);
        }
        NetProxy::start(&run_dir.join("net.sock"), self.network_allowlist.clone()).map(Some)
    }

    /// Whether the box's kernels and commands share this machine's network: asked for, or the
    /// `None` level, which cannot keep them off it. Otherwise they have a private network
    /// namespace (bubblewrap) or no IP sockets at all (Landlock).
    pub fn has_host_network(&self) -> bool {
        self.network || self.level == IsolationLevel::None
    }

    /// The session uid, if any.
    pub fn uid(&self) -> Option<u32> {
        self.uid.as_ref().map(SessionUid::uid)
    }

    /// The cgroup, if any.
    pub fn cgroup(&self) -> Option<&SessionCgroup> {
        self.cgroup.as_ref()
    }

    /// Give a kernel's socket directory to the session uid (mode 0700).
    pub fn adopt_run_dir(&self, run_dir: &Path) -> Result<()> {
        match self.uid() {
            Some(u) => {
                hand_over(run_dir, u).map_err(|e| CodeBoxError::io("giving the socket directory to the session uid", e))
            }
            None => Ok(()),
        }
    }

    /// Whether the box is confined (a sandbox level, or a uid of its own): then `install`
    /// runs pip inside the confinement, into [`Confinement::packages_dir`].
    pub fn is_confined(&self) -> bool {
        self.level != IsolationLevel::None || self.uid.is_some()
    }

    /// Where a confined box's packages go: `.codebox/site-packages` in its working directory,
    /// so they count against the disk limit and go with the box. Every kernel and command of
    /// the box has it first on `PYTHONPATH`. `None` for an unconfined box.
    pub fn packages_dir(&self) -> Option<PathBuf> {
        self.is_confined().then(|| self.work_dir.join(PACKAGES_DIR))
    }

    /// The sandboxed command for `argv` (a kernel, or a command run in the box) with the
    /// box's own environment `env`, reading the Python environment of `python`, in `cwd`
    /// (inside the working directory; default: the working directory), with the kernel's
    /// socket directory `run_dir` writable.
    pub fn prepare(
        &self,
        argv: &[String],
        env: &[(String, String)],
        python: Option<&Path>,
        cwd: Option<&Path>,
        run_dir: Option<&Path>,
    ) -> Result<Prepared> {
        self.prepare_with(argv, env, python, cwd, run_dir, self.network, None, &[], None).map(|(prepared, _)| prepared)
    }

    /// A box for a kernel that a fork server forks into it, rather than a command to run:
    /// bubblewrap holding the box's namespaces with a placeholder that only waits (its
    /// command writes the host pid of the box's init to `info`'s other end), and the
    /// [`ForkPlan`] the forked kernel must take on itself, which is what bubblewrap would
    /// have done to an executed kernel. Bubblewrap level only; `python` is the kernel's
    /// interpreter, readable in the box.
    pub fn prepare_fork_target(&self, env: &[(String, String)], python: &Path, run_dir: &Path) -> Result<ForkTarget> {
        if self.level != IsolationLevel::Bubblewrap {
            return Err(CodeBoxError::unsupported("kernels are forked into boxes at the bubblewrap level only"));
        }
        let (info_read, info_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| CodeBoxError::io("making bubblewrap's info pipe", e.into()))?;
        let argv = [FORK_PLACEHOLDER.to_owned(), "infinity".to_owned()];
        let (prepared, spec) = self.prepare_with(
            &argv,
            env,
            Some(python),
            None,
            Some(run_dir),
            self.network,
            None,
            &[],
            Some(info_write.as_raw_fd()),
        )?;
        let seccomp = crate::seccomp::bubblewrap_filters()
            .map_err(|e| CodeBoxError::kernel_start(format!("the box's seccomp filters: {e}")))?;
        let cgroup = match &self.cgroup {
            Some(cg) => cg.entry().map_err(|e| CodeBoxError::io("opening the session cgroup", e))?.into_fds(),
            None => Vec::new(),
        };
        let (uid, gid) = match spec.uid {
            Some(uid) => (uid, uid),
            None => (rustix::process::geteuid().as_raw(), rustix::process::getegid().as_raw()),
        };
        let plan = ForkPlan {
            uid,
            gid,
            cwd: spec.cwd.clone().unwrap_or_else(|| spec.work_dir.clone()),
            env: spec.kernel_env(),
            rlimits: crate::rlimits::RlimitSet::from_limits(&spec.limits)
                .entries()
                .map(|(resource, value)| (resource as i32, value))
                .collect(),
            seccomp,
            cgroup,
        };
        Ok(ForkTarget { prepared, info: info_read, info_write, plan })
    }

    /// The sandboxed `pip` (or any installer) command for `argv`: like [`Confinement::prepare`]
    /// for a command in the working directory, with `read_only` (say a local wheel directory)
    /// readable, and the network `network` (which must fit the box's level: see
    /// [`InstallerNetwork`]).
    pub fn prepare_installer(
        &self,
        argv: &[String],
        env: &[(String, String)],
        python: &Path,
        read_only: &[PathBuf],
        network: InstallerNetwork<'_>,
    ) -> Result<Prepared> {
        let (run_dir, host_network, proxy_port) = match (network, self.level) {
            (InstallerNetwork::Host, IsolationLevel::None) => (None, true, None),
            (InstallerNetwork::ProxySocket(dir), IsolationLevel::Bubblewrap) => (Some(dir), false, None),
            (InstallerNetwork::ProxyPort(port), IsolationLevel::Landlock) => {
                // Older Landlock cannot say "this port only": pip would have the host network.
                match probe().landlock {
                    Ok(abi) if abi >= 4 => {}
                    _ => {
                        return Err(CodeBoxError::unsupported(
                            "install at the Landlock isolation level needs Landlock network rules \
                             (ABI 4, Linux 6.7) to keep pip to the package indexes",
                        ));
                    }
                }
                (None, false, Some(port))
            }
            (network, level) => {
                return Err(CodeBoxError::invalid(format!(
                    "an installer network {network:?} does not fit the {level:?} isolation level"
                )));
            }
        };
        self.prepare_with(argv, env, Some(python), None, run_dir, host_network, proxy_port, read_only, None)
            .map(|(prepared, _)| prepared)
    }

    /// Whether the box may reach only the hosts of a network allowlist.
    pub fn has_network_allowlist(&self) -> bool {
        !self.network_allowlist.is_empty()
    }

    /// The command for `argv` in this box, and the sandbox it was prepared for.
    #[allow(clippy::too_many_arguments, reason = "the three public entry points above name them")]
    fn prepare_with(
        &self,
        argv: &[String],
        env: &[(String, String)],
        python: Option<&Path>,
        cwd: Option<&Path>,
        run_dir: Option<&Path>,
        network: bool,
        proxy_port: Option<u16>,
        extra_read_only: &[PathBuf],
        info_fd: Option<std::os::fd::RawFd>,
    ) -> Result<(Prepared, SandboxSpec)> {
        if self.released.load(Ordering::Acquire) {
            return Err(CodeBoxError::not_running("the box's sandbox was released"));
        }
        let env = &with_packages(env, self.packages_dir().as_deref());
        let program = argv.first().map(PathBuf::from).unwrap_or_default();
        let mut read_only = python.map(python_paths).unwrap_or_default();
        read_only.extend(extra_read_only.iter().cloned());
        // A kernel's program comes from its kernelspec (the operator's, started without a
        // box Python): when it is elsewhere, its directory must be readable too. A command's
        // program is the tenant's: it never adds to what the sandbox shows (a `pyvenv.cfg`
        // next to it would otherwise bind any host directory it names).
        if program.is_absolute() && python.is_none() {
            read_only.extend(python_paths(&program));
        }
        let bin = python.or(Some(program.as_path()).filter(|p| p.is_absolute())).and_then(Path::parent);
        let path = match self.level {
            // Inside the sandbox only the Python's directory and the system's make sense.
            IsolationLevel::Bubblewrap | IsolationLevel::Landlock => {
                let sys = "/usr/local/bin:/usr/bin:/bin";
                bin.map_or_else(|| sys.to_owned(), |b| format!("{}:{sys}", b.display()))
            }
            IsolationLevel::None => env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.clone()).unwrap_or_default(),
        };
        let box_env: Vec<(String, String)> = env.iter().filter(|(k, _)| k != "PATH").cloned().collect();
        let spec = SandboxSpec {
            level: self.level,
            bwrap: probe().bubblewrap.as_ref().ok().cloned(),
            network,
            limits: self.limits.clone(),
            work_dir: self.work_dir.clone(),
            run_dir: run_dir.map(Path::to_path_buf),
            read_only,
            path,
            env: if self.level == IsolationLevel::None { env.to_vec() } else { box_env },
            uid: self.uid(),
            cwd: cwd.map(Path::to_path_buf),
            proxy_port,
            info_fd,
        };
        let entry = match &self.cgroup {
            Some(cg) => Some(cg.entry().map_err(|e| CodeBoxError::io("opening the session cgroup", e))?),
            None => None,
        };
        if let Some(cg) = &self.cgroup {
            self.oom_base.store(cg.oom_kills(), Ordering::Release);
        }
        let prepared =
            spec.prepare(argv, entry.as_ref()).map_err(|e| CodeBoxError::kernel_start(e.to_string()).with_source(e))?;
        // The cgroup descriptors must stay open until the spawn: keep them with the guard.
        Ok((Prepared { command: prepared.command, guard: prepared.guard.with_entry(entry) }, spec))
    }

    /// Whether the OOM killer struck in the box since the last baseline (the kernel's start,
    /// the start of an execution, the last judged death).
    pub fn oom_killed(&self) -> bool {
        self.cgroup.as_ref().is_some_and(|cg| cg.oom_kills() > self.oom_base.load(Ordering::Acquire))
    }

    /// An execution starts: when `kernel_running` says the kernel still runs, the OOM kills
    /// counted so far struck other processes of the box (its children, commands), not the
    /// kernel, and must not be taken for the cause of a later death. The counter is read
    /// before the kernel is looked at, so a kill of the kernel in between still counts.
    pub fn note_kernel_alive(&self, kernel_running: impl FnOnce() -> bool) {
        if let Some(cg) = &self.cgroup {
            let kills = cg.oom_kills();
            if kernel_running() {
                self.oom_base.store(kills, Ordering::Release);
            }
        }
    }

    /// Why the kernel died, from its (bwrap's) exit status and the cgroup's OOM counter.
    /// bwrap reports a kernel killed by signal N as exit code 128 + N. Out of memory is the
    /// cause only of a death by SIGKILL (what the OOM killer sends) with an OOM kill in the
    /// box since the kernel was last seen alive; each death is judged on its own (the counter
    /// is taken as the new baseline).
    pub fn death_cause(&self, status: std::process::ExitStatus) -> KernelDeath {
        let cause = match (status.code(), status.signal()) {
            (Some(code), _) if self.level == IsolationLevel::Bubblewrap && code > 128 && code < 128 + 65 => {
                KernelDeath::Signaled { signal: code - 128 }
            }
            (Some(code), _) => KernelDeath::Exited { code },
            (None, Some(signal)) => KernelDeath::Signaled { signal },
            _ => KernelDeath::Unknown { detail: format!("exited with status {status}") },
        };
        let killed = cause == KernelDeath::Signaled { signal: libc::SIGKILL };
        let out_of_memory = killed && self.oom_killed();
        if let Some(cg) = &self.cgroup {
            self.oom_base.store(cg.oom_kills(), Ordering::Release);
        }
        if out_of_memory { KernelDeath::OutOfMemory } else { cause }
    }

    /// Kill every process left in the cgroup and under the uid.
    pub fn kill_all(&self) {
        if let Some(cg) = &self.cgroup {
            cg.kill_all();
        }
        if let Some(uid) = self.uid() {
            for _ in 0..100 {
                if super::uid::kill_range(&(uid..uid + 1)) == 0 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }

    /// Kill everything left, remove what the uid left outside the working directory (SysV
    /// IPC objects, files in the host's world-writable directories), remove the cgroup,
    /// unmount the working-directory image (its files are gone after) and free the uid when
    /// dropped. Idempotent.
    pub fn release(&self) {
        if self.released.swap(true, Ordering::AcqRel) {
            return;
        }
        self.kill_all();
        // Only now: a process of the uid could make new ones meanwhile. Without a uid of its
        // own, nothing tells the session's leftovers from its owner's.
        if let Some(uid) = self.uid() {
            super::leftovers::remove_left_by(&(uid..uid + 1), &[&self.work_dir]);
        }
        if let Some(cg) = &self.cgroup
            && let Err(e) = cg.remove()
        {
            tracing::warn!("could not remove a session cgroup: {e}");
        }
        if let Some(d) = &self.disk
            && let Err(e) = d.release()
        {
            tracing::warn!("could not release the working-directory image: {e}");
        }
    }
}

impl Drop for Confinement {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UidAllocator;

    fn status(code: i32) -> std::process::ExitStatus {
        std::process::ExitStatus::from_raw(code << 8)
    }

    fn bare(level: IsolationLevel) -> Confinement {
        Confinement {
            level,
            network: false,
            network_allowlist: Allowlist::default(),
            limits: Limits::default(),
            uid: None,
            cgroup: None,
            disk: None,
            oom_base: AtomicU64::new(0),
            work_dir: "/w".into(),
            released: AtomicBool::new(false),
        }
    }

    #[test]
    fn bwrap_exit_codes_above_128_are_signals() {
        let c = bare(IsolationLevel::Bubblewrap);
        assert_eq!(c.death_cause(status(139)), KernelDeath::Signaled { signal: 11 });
        assert_eq!(c.death_cause(status(137)), KernelDeath::Signaled { signal: 9 });
        assert_eq!(c.death_cause(status(1)), KernelDeath::Exited { code: 1 });
        let plain = bare(IsolationLevel::None);
        assert_eq!(plain.death_cause(status(139)), KernelDeath::Exited { code: 139 });
        assert_eq!(plain.death_cause(std::process::ExitStatus::from_raw(11)), KernelDeath::Signaled { signal: 11 });
    }

    #[test]
    fn sessions_get_their_own_uid_and_cgroup_and_leave_nothing() {
        let policy = SandboxPolicy {
            uids: Some(UidAllocator::new(300_400..300_410).unwrap()),
            cgroups: true,
            limits: Limits::server(),
            ..SandboxPolicy::default()
        };
        let base = tempfile::tempdir().unwrap();
        let (work, run) = (base.path().join("w"), base.path().join("r"));
        std::fs::create_dir(&work).unwrap();
        std::fs::create_dir(&run).unwrap();
        let c = policy.confine(&work).unwrap();
        c.adopt_run_dir(&run).unwrap();
        let uid = c.uid().unwrap();
        assert!((300_400..300_410).contains(&uid));
        for d in [&work, &run] {
            let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(d).unwrap());
            assert_eq!(owner, uid);
        }
        // The working directory is a size-limited image now.
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(mounts.contains(&*work.to_string_lossy()), "no image mounted on the working directory");
        let paths = c.cgroup().unwrap().paths();
        assert!(paths.iter().all(|p| p.exists()));
        let prepared = c.prepare(&["/usr/bin/sleep".into(), "60".into()], &[], None, None, Some(&run)).unwrap();
        let mut cmd = prepared.command;
        let child = cmd.spawn().unwrap();
        drop(prepared.guard);
        // bwrap forks the kernel in its own time: poll, with a deadline for a loaded machine.
        let start = std::time::Instant::now();
        while c.cgroup().unwrap().pids_current() < 2 {
            assert!(start.elapsed().as_secs() < 30, "bwrap and the kernel are in the cgroup");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(!crate::uid::processes_in_range(&(uid..uid + 1)).is_empty());
        drop(c);
        let mut child = child;
        child.wait().unwrap();
        let start = std::time::Instant::now();
        while !crate::uid::processes_in_range(&(uid..uid + 1)).is_empty() {
            assert!(start.elapsed().as_secs() < 5, "something still runs under the uid");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(paths.iter().all(|p| !p.exists()), "the cgroup is gone");
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(!mounts.contains(&*work.to_string_lossy()), "the image is unmounted");
    }
}

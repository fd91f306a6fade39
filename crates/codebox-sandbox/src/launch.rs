//! Turning a kernel command line into a sandboxed `Command`.
//!
//! Everything that allocates or opens files happens here, in the parent: the seccomp
//! programs are compiled into memory files, the Landlock ruleset is created, the cgroup's
//! `cgroup.procs` files are opened. Between fork and exec the child then only makes plain
//! system calls: enter the cgroup, set rlimits, and either let bwrap inherit the seccomp
//! descriptors or enforce Landlock and seccomp itself.
//!
//! At every level the kernel gets only the box's environment and what the sandbox sets (never
//! the server's), and its `HOME` and `TMPDIR` are directories of the working directory's
//! reserved `.codebox/` ([`HOME_DIR`], [`TMP_DIR`]), so the working directory's size limit
//! bounds them too and they survive kernel restarts.
#![allow(unsafe_code)] // pre_exec closures: the SAFETY comments say what each one does

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::bwrap::{BwrapConfig, sandbox_env};
use super::cgroup::{Entry, enter_raw};
use super::landlock::LandlockConfig;
use super::rlimits::RlimitSet;
use super::seccomp::Network;
use super::{IsolationLevel, Limits};
use crate::error::SandboxError;

/// The box's reserved state directory, relative to the working directory (left out of file
/// listings).
const STATE_DIR: &str = ".codebox";
/// The kernel's `HOME`, relative to the working directory.
pub(crate) const HOME_DIR: &str = ".codebox/home";
/// The kernel's `TMPDIR`, relative to the working directory.
pub(crate) const TMP_DIR: &str = ".codebox/tmp";

/// Everything needed to sandbox one kernel.
#[derive(Debug, Clone)]
pub(crate) struct SandboxSpec {
    /// The level to run under.
    pub level: IsolationLevel,
    /// The `bwrap` binary (needed for [`IsolationLevel::Bubblewrap`]).
    pub bwrap: Option<PathBuf>,
    /// Give the kernel the host network.
    pub network: bool,
    /// Resource limits (rlimits and tmpfs sizes here; cgroup limits are in the cgroup).
    pub limits: Limits,
    /// The working directory: read-write, the kernel's current directory.
    pub work_dir: PathBuf,
    /// The kernel's socket directory: read-write (none for a command).
    pub run_dir: Option<PathBuf>,
    /// Paths the kernel may read: its Python environment (see [`python_paths`]).
    pub read_only: Vec<PathBuf>,
    /// `PATH` inside the sandbox.
    pub path: String,
    /// The box's own environment variables (the host's never reach a sandboxed kernel).
    pub env: Vec<(String, String)>,
    /// Run as this uid and gid (the caller must be root).
    pub uid: Option<u32>,
    /// The current directory, inside `work_dir` (default: `work_dir`).
    pub cwd: Option<PathBuf>,
    /// Landlock level without `network`: the port of host loopback where an install's proxy
    /// listens. TCP connections to it stay allowed, and only stream sockets can be made.
    pub proxy_port: Option<u16>,
    /// Bubblewrap level: give bubblewrap this descriptor for `--info-fd`.
    pub info_fd: Option<RawFd>,
}

/// A command ready to spawn, and the descriptors it needs until it has been spawned.
#[derive(Debug)]
pub struct Prepared {
    /// The command.
    pub command: Command,
    /// Keep until the spawn returned.
    pub guard: SpawnGuard,
}

/// Descriptors the child inherits or uses before exec; drop after spawning.
#[derive(Debug, Default)]
pub struct SpawnGuard {
    _fds: Vec<OwnedFd>,
    _entry: Option<Entry>,
}

impl SpawnGuard {
    /// Also keep the cgroup entry descriptors open until the spawn.
    pub fn with_entry(mut self, entry: Option<Entry>) -> Self {
        self._entry = entry;
        self
    }
}

/// The paths a Python interpreter needs: its virtual environment (the parent of `bin/`
/// when `pyvenv.cfg` is there), the base install named by `pyvenv.cfg`'s `home`, and the
/// prefix of the real interpreter the executable resolves to (when it has `lib/python3*`);
/// for any other program, its own directory.
pub(crate) fn python_paths(python: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let venv = python.parent().and_then(Path::parent);
    if let Some(venv) = venv {
        let cfg = venv.join("pyvenv.cfg");
        if let Ok(text) = std::fs::read_to_string(&cfg) {
            out.push(venv.to_path_buf());
            let home = text.lines().find_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k.trim() == "home").then(|| PathBuf::from(v.trim()))
            });
            if let Some(base) = home.as_deref().and_then(Path::parent).filter(|b| is_python_prefix(b)) {
                out.push(base.to_path_buf());
            }
        }
    }
    if let Ok(real) = std::fs::canonicalize(python) {
        match real.parent().and_then(Path::parent) {
            Some(prefix) if is_python_prefix(prefix) => out.push(prefix.to_path_buf()),
            _ => out.extend(real.parent().map(Path::to_path_buf)),
        }
    }
    if out.is_empty()
        && let Some(dir) = python.parent()
    {
        out.push(dir.to_path_buf());
    }
    out.retain(|p| p.is_absolute() && p != Path::new("/"));
    out.dedup();
    out
}

/// Whether `prefix` holds a Python installation (`lib/python3*`).
fn is_python_prefix(prefix: &Path) -> bool {
    std::fs::read_dir(prefix.join("lib"))
        .map(|rd| rd.flatten().any(|e| e.file_name().to_string_lossy().starts_with("python3")))
        .unwrap_or(false)
}

fn clear_cloexec(fds: &[RawFd]) -> std::io::Result<()> {
    for fd in fds {
        // SAFETY: the descriptors are owned by the `SpawnGuard`, open until after the spawn.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(*fd) };
        rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
    }
    Ok(())
}

impl SandboxSpec {
    /// The environment the kernel gets, at every level: the sandbox's base (see
    /// [`sandbox_env`]) and the box's own variables, with `HOME` and `TMPDIR` in the working
    /// directory.
    pub(crate) fn kernel_env(&self) -> Vec<(String, String)> {
        let home = self.work_dir.join(HOME_DIR).to_string_lossy().into_owned();
        let mut env = sandbox_env(&self.path, &home, &self.env);
        env.retain(|(k, _)| k != "TMPDIR");
        env.push(("TMPDIR".into(), self.work_dir.join(TMP_DIR).to_string_lossy().into_owned()));
        env
    }

    /// `program` run without bubblewrap (Landlock or no isolation): the box's environment
    /// only, in the box's directory.
    fn direct_command(&self, program: &str, args: &[String]) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(args).env_clear().envs(self.kernel_env()).current_dir(self.cwd.as_ref().unwrap_or(&self.work_dir));
        cmd
    }

    /// The sandboxed command for `argv`, entering `cgroup` when given.
    pub(crate) fn prepare(&self, argv: &[String], cgroup: Option<&Entry>) -> Result<Prepared, SandboxError> {
        let (program, args) = argv.split_first().ok_or(SandboxError::EmptyCommand)?;
        self.limits.validate().map_err(SandboxError::Limits)?;
        let rlimits = RlimitSet::from_limits(&self.limits);
        let cgroup_fds: Vec<RawFd> = cgroup.map(Entry::raw_fds).unwrap_or_default();
        make_private_dirs(&self.work_dir, self.uid)
            .map_err(|source| SandboxError::PrivateDirs { work_dir: self.work_dir.clone(), source })?;
        let mut guard = SpawnGuard::default();
        let mut cmd;
        match self.level {
            IsolationLevel::Bubblewrap => {
                let bwrap = self.bwrap.clone().ok_or(SandboxError::NoBwrap)?;
                // The private network namespace keeps IP sockets off the host, and code in the
                // box may use its own loopback.
                let fds = super::seccomp::bubblewrap_filters()?;
                let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
                let inherited: Vec<RawFd> = raw.iter().copied().chain(self.info_fd).collect();
                let config = BwrapConfig {
                    bwrap: bwrap.clone(),
                    work_dir: self.work_dir.clone(),
                    run_dir: self.run_dir.clone(),
                    read_only: self.read_only.clone(),
                    network: self.network,
                    limits: self.limits.clone(),
                    env: self.kernel_env(),
                    seccomp_fds: raw.clone(),
                    info_fd: self.info_fd,
                    chdir: self.cwd.clone(),
                };
                config.validate()?;
                guard._fds = fds;
                cmd = Command::new(bwrap);
                cmd.args(config.args(argv));
                cmd.env_clear().current_dir("/");
                // SAFETY: runs between fork and exec and only makes system calls (write,
                // prlimit64, fcntl) on descriptors opened before the fork; no allocation.
                unsafe {
                    cmd.pre_exec(move || {
                        enter_raw(&cgroup_fds)?;
                        rlimits.apply()?;
                        clear_cloexec(&inherited)
                    });
                }
            }
            IsolationLevel::Landlock => {
                let ruleset = LandlockConfig {
                    read_write: std::iter::once(self.work_dir.clone()).chain(self.run_dir.clone()).collect(),
                    read_only: self.read_only.clone(),
                    network: self.network,
                    connect_port: self.proxy_port,
                }
                .build()?;
                // No network namespace here: without network, IP sockets are refused outright
                // (Landlock's network rules cover TCP only). Kernels speak IPC at this level. An
                // installer reaches its proxy on host loopback: stream sockets only, and Landlock
                // lets them connect to the proxy's port alone.
                let network =
                    if self.network || self.proxy_port.is_some() { Network::Allowed } else { Network::Denied };
                let mut filters = super::seccomp::deny_list(network)?;
                filters.push(super::seccomp::no_host_ipc_objects()?);
                if self.proxy_port.is_some() && !self.network {
                    filters.push(super::seccomp::stream_sockets_only()?);
                }
                let mut ruleset = Some(ruleset);
                cmd = self.direct_command(program, args);
                // SAFETY: runs between fork and exec; the ruleset and filters were built
                // before the fork. restrict_self and apply_filter make only open, prctl,
                // landlock and seccomp system calls and allocate nothing on success.
                unsafe {
                    cmd.pre_exec(move || {
                        enter_raw(&cgroup_fds)?;
                        rlimits.apply()?;
                        if let Some(r) = ruleset.take() {
                            super::landlock::restrict_self(r)?;
                        }
                        for f in &filters {
                            seccompiler::apply_filter(f).map_err(|_| std::io::Error::other("seccomp failed"))?;
                        }
                        Ok(())
                    });
                }
            }
            _ => {
                // No sandbox, but not the server's environment either (API keys, operator
                // secrets): the same environment as at the other levels.
                cmd = self.direct_command(program, args);
                // SAFETY: as above: only system calls on pre-opened descriptors.
                unsafe {
                    cmd.pre_exec(move || {
                        enter_raw(&cgroup_fds)?;
                        rlimits.apply()
                    });
                }
            }
        }
        if let Some(uid) = self.uid {
            cmd.uid(uid).gid(uid);
        }
        Ok(Prepared { command: cmd, guard })
    }
}

/// Make [`HOME_DIR`] and [`TMP_DIR`] in `work_dir` (mode 0700, given to `uid`), or take them
/// as they are. The box can write its working directory and the caller may be root, so no
/// symlink is followed: each directory is made and opened relative to its parent's descriptor
/// with `O_NOFOLLOW`, and handed over by that descriptor.
fn make_private_dirs(work_dir: &Path, uid: Option<u32>) -> std::io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let subdir = |parent: &OwnedFd, name: &Path| -> std::io::Result<OwnedFd> {
        match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        let dir = rustix::fs::openat(parent, name, flags, Mode::empty())?;
        if let Some(u) = uid {
            rustix::fs::fchown(&dir, Some(rustix::fs::Uid::from_raw(u)), Some(rustix::fs::Gid::from_raw(u)))?;
        }
        Ok(dir)
    };
    let root = rustix::fs::open(work_dir, flags, Mode::empty())?;
    let state = subdir(&root, Path::new(STATE_DIR))?;
    for dir in [HOME_DIR, TMP_DIR] {
        subdir(&state, Path::new(dir).strip_prefix(STATE_DIR).expect("HOME_DIR and TMP_DIR are in STATE_DIR"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A probe run inside the sandbox: one `key=value` line per fact.
    const PROBE: &str = r#"
import ctypes, errno, os, socket
libc = ctypes.CDLL(None, use_errno=True)
def err(f):
    try:
        f(); return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
def sys_errno(nr, *args):
    r = libc.syscall(nr, *args)
    return "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()]
st = {l.split(":")[0]: l.split(":")[1].strip() for l in open("/proc/self/status")}
print("uid=%d" % os.getuid())
print("capeff=" + st["CapEff"])
print("nnp=" + st["NoNewPrivs"])
print("seccomp=" + st["Seccomp"])
print("ifaces=" + ",".join(n for _, n in socket.if_nameindex()))
print("vsock=" + err(lambda: socket.socket(40, socket.SOCK_STREAM)))
print("packet=" + err(lambda: socket.socket(17, socket.SOCK_RAW)))
print("netlink=" + err(lambda: socket.socket(16, socket.SOCK_RAW, 0)))
print("io_uring=" + sys_errno(425, 1, ctypes.c_void_p(0)))
print("unshare=" + sys_errno(272, 0x10000000))
print("ptrace=" + sys_errno(101, 16, 1, 0, 0))
print("keyctl=" + sys_errno(250, 0, 0, 0, 0))
print("shadow=" + err(lambda: open("/etc/shadow").read()))
print("root_write=" + err(lambda: open("/x", "w")))
print("dev_write=" + err(lambda: open("/dev/x", "w")))
print("tmp_write=" + err(lambda: open("/tmp/x", "w").write("1")))
print("cwd_write=" + err(lambda: open("x", "w").write("1")))
print("home=" + os.environ.get("HOME", ""))
print("secret=" + os.environ.get("CODEBOX_TEST_SECRET", "absent"))
print("envkeys=" + ",".join(sorted(os.environ)))
print("tmpdir=" + os.environ.get("TMPDIR", ""))
print("inet=" + err(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()))
print("inet6=" + err(lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()))
print("own_proc=" + err(lambda: open("/proc/self/status").read()))
print("init_proc=" + err(lambda: open("/proc/1/cmdline").read()))
print("cpuinfo=" + err(lambda: open("/proc/cpuinfo").read()))
print("home_write=" + err(lambda: open(os.path.join(os.environ["HOME"], "h"), "w").write("1")))
print("tmpdir_write=" + err(lambda: open(os.path.join(os.environ["TMPDIR"], "t"), "w").write("1")))
try:
    print("pids=%d" % len([p for p in os.listdir("/proc") if p.isdigit()]))
except OSError as e:
    print("pids=" + errno.errorcode[e.errno])
"#;

    fn facts(out: &std::process::Output) -> std::collections::BTreeMap<String, String> {
        assert!(out.status.success(), "probe failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect()
    }

    fn spec(level: IsolationLevel, work: &Path, run: &Path) -> SandboxSpec {
        SandboxSpec {
            level,
            bwrap: crate::probe::find_bwrap(),
            network: false,
            limits: Limits::default(),
            work_dir: work.to_owned(),
            run_dir: Some(run.to_owned()),
            read_only: python_paths(Path::new("/usr/bin/python3")),
            path: "/usr/bin:/bin".into(),
            env: vec![("BOX_VAR".into(), "1".into())],
            uid: None,
            cwd: None,
            proxy_port: None,
            info_fd: None,
        }
    }

    const ENV_KEYS: &str = "BOX_VAR,HOME,LANG,LOGNAME,PATH,PYTHONUNBUFFERED,TMPDIR,USER";

    fn run(spec: &SandboxSpec) -> std::process::Output {
        let prepared = spec.prepare(&["/usr/bin/python3".into(), "-c".into(), PROBE.into()], None).unwrap();
        let mut cmd = prepared.command;
        if spec.level == IsolationLevel::Bubblewrap {
            // Even a variable put on bwrap's own command is cleared before the kernel starts.
            cmd.env("CODEBOX_TEST_SECRET", "hunter2");
        }
        let out = cmd.output().unwrap();
        drop(prepared.guard);
        out
    }

    #[test]
    fn bubblewrap_confines_a_real_process() {
        let work = tempfile::tempdir().unwrap();
        let run_dir = tempfile::tempdir().unwrap();
        let f = facts(&run(&spec(IsolationLevel::Bubblewrap, work.path(), run_dir.path())));
        assert_eq!(f["capeff"], "0000000000000000");
        assert_eq!(f["nnp"], "1");
        assert_eq!(f["seccomp"], "2");
        assert_eq!(f["ifaces"], "lo");
        assert_eq!(f["vsock"], "EAFNOSUPPORT");
        assert_eq!(f["packet"], "EAFNOSUPPORT");
        assert_eq!(f["netlink"], "ok", "netlink must stay allowed for libzmq");
        assert_eq!(f["io_uring"], "EPERM");
        assert_eq!(f["unshare"], "EPERM");
        assert_eq!(f["ptrace"], "EPERM");
        assert_eq!(f["keyctl"], "EPERM");
        assert_eq!(f["shadow"], "ENOENT");
        assert_eq!(f["root_write"], "EROFS");
        assert_eq!(f["dev_write"], "EROFS");
        assert_eq!(f["tmp_write"], "ok");
        assert_eq!(f["cwd_write"], "ok");
        assert_eq!(f["home"], work.path().join(HOME_DIR).to_string_lossy());
        assert_eq!(f["tmpdir"], work.path().join(TMP_DIR).to_string_lossy());
        assert_eq!((f["home_write"].as_str(), f["tmpdir_write"].as_str()), ("ok", "ok"));
        assert_eq!(f["inet"], "ok", "the private network namespace confines IP sockets");
        assert_eq!((f["own_proc"].as_str(), f["cpuinfo"].as_str()), ("ok", "ok"));
        assert_eq!(f["secret"], "absent", "the host environment must not reach the kernel");
        // bwrap adds PWD for --chdir.
        assert_eq!(f["envkeys"], ENV_KEYS.replace("PATH,", "PATH,PWD,"));
        assert!(f["pids"].parse::<u32>().unwrap() <= 3, "{}", f["pids"]);
        assert!(work.path().join("x").exists(), "the working directory is the host's");
    }

    #[test]
    fn network_opt_in_shows_the_host_interfaces() {
        let work = tempfile::tempdir().unwrap();
        let run_dir = tempfile::tempdir().unwrap();
        let f = facts(&run(&SandboxSpec {
            network: true,
            ..spec(IsolationLevel::Bubblewrap, work.path(), run_dir.path())
        }));
        assert_ne!(f["ifaces"], "lo");
        assert_eq!(f["vsock"], "EAFNOSUPPORT", "vsock stays denied with network");
    }

    #[test]
    fn landlock_confines_a_real_process() {
        let work = tempfile::tempdir().unwrap();
        let run_dir = tempfile::tempdir().unwrap();
        let f = facts(&run(&spec(IsolationLevel::Landlock, work.path(), run_dir.path())));
        assert_eq!(f["nnp"], "1");
        assert_eq!(f["seccomp"], "2");
        assert_eq!(f["vsock"], "EAFNOSUPPORT");
        assert_eq!(f["io_uring"], "EPERM");
        assert_eq!(f["shadow"], "EACCES");
        assert_eq!(f["root_write"], "EACCES");
        assert_eq!(f["tmp_write"], "EACCES", "the host /tmp is out of reach");
        assert_eq!(f["cwd_write"], "ok");
        assert_eq!(f["envkeys"], ENV_KEYS, "only the box's environment reaches the kernel");
        assert_eq!(f["home"], work.path().join(HOME_DIR).to_string_lossy());
        assert_eq!(f["tmpdir"], work.path().join(TMP_DIR).to_string_lossy());
        assert_eq!((f["home_write"].as_str(), f["tmpdir_write"].as_str()), ("ok", "ok"));
        assert_eq!(f["inet"], "EAFNOSUPPORT", "no network: no IP sockets");
        assert_eq!(f["inet6"], "EAFNOSUPPORT");
        assert_eq!(f["netlink"], "ok", "netlink must stay allowed for libzmq");
        assert_eq!((f["own_proc"].as_str(), f["cpuinfo"].as_str()), ("ok", "ok"));
        assert_eq!(f["init_proc"], "EACCES", "other processes' /proc entries are out of reach");
        assert_eq!(f["pids"], "EACCES", "/proc cannot be listed");
    }

    #[test]
    fn landlock_with_network_allows_ip_sockets() {
        let work = tempfile::tempdir().unwrap();
        let run_dir = tempfile::tempdir().unwrap();
        let f =
            facts(&run(&SandboxSpec { network: true, ..spec(IsolationLevel::Landlock, work.path(), run_dir.path()) }));
        assert_eq!(f["inet"], "ok");
    }

    #[test]
    fn no_isolation_still_passes_only_the_box_environment() {
        let work = tempfile::tempdir().unwrap();
        let run_dir = tempfile::tempdir().unwrap();
        let f = facts(&run(&spec(IsolationLevel::None, work.path(), run_dir.path())));
        assert_eq!(f["envkeys"], ENV_KEYS, "the server's environment must not reach the kernel");
        assert_eq!(f["tmpdir"], work.path().join(TMP_DIR).to_string_lossy());
    }

    #[test]
    fn home_and_tmpdir_are_made_without_following_symlinks() {
        let work = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::create_dir(work.path().join(".codebox")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), work.path().join(HOME_DIR)).unwrap();
        let err = make_private_dirs(work.path(), None).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTDIR), "{err}");
        assert!(std::fs::read_dir(elsewhere.path()).unwrap().next().is_none());
        std::fs::remove_file(work.path().join(HOME_DIR)).unwrap();
        make_private_dirs(work.path(), None).unwrap();
        assert!(work.path().join(HOME_DIR).is_dir() && work.path().join(TMP_DIR).is_dir());
    }

    #[test]
    fn a_session_uid_runs_the_sandbox_unprivileged() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let (work, run_dir) = (base.path().join("work"), base.path().join("run"));
        for d in [&work, &run_dir] {
            std::fs::create_dir(d).unwrap();
            rustix::fs::chown(d, Some(rustix::fs::Uid::from_raw(300_300)), Some(rustix::fs::Gid::from_raw(300_300)))
                .unwrap();
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        let f = facts(&run(&SandboxSpec { uid: Some(300_300), ..spec(IsolationLevel::Bubblewrap, &work, &run_dir) }));
        assert_eq!(f["uid"], "300300");
        assert_eq!(f["capeff"], "0000000000000000");
        assert_eq!(f["cwd_write"], "ok");
        let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(work.join("x")).unwrap());
        assert_eq!(owner, 300_300, "files made in the box belong to the session uid on the host");
    }

    #[test]
    fn python_paths_cover_a_venv_and_its_base() {
        let venv = tempfile::tempdir().unwrap();
        std::fs::create_dir(venv.path().join("bin")).unwrap();
        let base = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(base.path().join("bin")).unwrap();
        std::fs::create_dir_all(base.path().join("lib/python3.11")).unwrap();
        let cfg = format!("home = {}/bin\nversion = 3.11\n", base.path().display());
        std::fs::write(venv.path().join("pyvenv.cfg"), cfg).unwrap();
        std::os::unix::fs::symlink("/usr/bin/python3", venv.path().join("bin/python")).unwrap();
        let paths = python_paths(&venv.path().join("bin/python"));
        assert_eq!(paths, [venv.path(), base.path(), Path::new("/usr")]);
        // Any other program: its own directory, never its parent (which may be /tmp).
        let script = venv.path().join("bin/kernel.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("k"), "").unwrap();
        assert_eq!(python_paths(&other.path().join("k")), [other.path()]);
    }

    #[test]
    fn an_empty_command_line_is_refused() {
        let s = spec(IsolationLevel::None, Path::new("/tmp"), Path::new("/tmp"));
        assert!(matches!(s.prepare(&[], None).unwrap_err(), SandboxError::EmptyCommand));
    }

    #[test]
    fn a_missing_working_directory_is_reported_with_its_cause() {
        let base = tempfile::tempdir().unwrap();
        let missing = base.path().join("gone");
        let err = spec(IsolationLevel::None, &missing, base.path()).prepare(&["/bin/true".into()], None).unwrap_err();
        assert!(err.to_string().starts_with("making the kernel's HOME and TMPDIR in"), "{err}");
        let cause = std::error::Error::source(&err).and_then(|e| e.downcast_ref::<std::io::Error>());
        assert_eq!(cause.map(std::io::Error::kind), Some(std::io::ErrorKind::NotFound), "{err:?}");
    }
}

//! Turning a kernel command line into a sandboxed `Command`.
//!
//! Everything that allocates or opens files happens here, in the parent: the seccomp
//! programs are compiled into memory files, the Landlock ruleset is created, the cgroup's
//! `cgroup.procs` files are opened. Between fork and exec the child then only makes plain
//! system calls: enter the cgroup, set rlimits, and either let bwrap inherit the seccomp
//! descriptors or enforce Landlock and seccomp itself.
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::bwrap::{BwrapConfig, SANDBOX_HOME, sandbox_env};
use super::cgroup::{Entry, enter_raw};
use super::landlock::LandlockConfig;
use super::rlimits::RlimitSet;
use super::{IsolationLevel, Limits};

/// Everything needed to sandbox one kernel.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
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
pub fn python_paths(python: &Path) -> Vec<PathBuf> {
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
    /// The environment the kernel gets.
    pub fn kernel_env(&self) -> Vec<(String, String)> {
        // Under Landlock, HOME and TMPDIR are private directories of the socket directory
        // (for a command without one: the working directory).
        let private = |sub: &str| match &self.run_dir {
            Some(r) => r.join(sub).to_string_lossy().into_owned(),
            None => self.work_dir.to_string_lossy().into_owned(),
        };
        let home = match self.level {
            IsolationLevel::Bubblewrap => SANDBOX_HOME.to_owned(),
            _ => private("home"),
        };
        let mut env = sandbox_env(&self.path, &home, &self.env);
        if self.level != IsolationLevel::Bubblewrap {
            env.retain(|(k, _)| k != "TMPDIR");
            env.push(("TMPDIR".into(), private("tmp")));
        }
        env
    }

    /// The sandboxed command for `argv`, entering `cgroup` when given.
    pub fn prepare(&self, argv: &[String], cgroup: Option<&Entry>) -> Result<Prepared, String> {
        let (program, args) = argv.split_first().ok_or("empty kernel command line")?;
        self.limits.validate().map_err(|e| e.to_string())?;
        let rlimits = RlimitSet::from_limits(&self.limits);
        let cgroup_fds: Vec<RawFd> = cgroup.map(Entry::raw_fds).unwrap_or_default();
        let mut guard = SpawnGuard::default();
        let mut cmd;
        match self.level {
            IsolationLevel::Bubblewrap => {
                let bwrap = self.bwrap.clone().ok_or("bubblewrap was chosen but no bwrap binary is known")?;
                let fds = super::seccomp::deny_list()?
                    .iter()
                    .map(super::seccomp::memfd)
                    .collect::<std::io::Result<Vec<_>>>()
                    .map_err(|e| format!("writing the seccomp filter: {e}"))?;
                let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
                let config = BwrapConfig {
                    bwrap: bwrap.clone(),
                    work_dir: self.work_dir.clone(),
                    run_dir: self.run_dir.clone(),
                    read_only: self.read_only.clone(),
                    network: self.network,
                    limits: self.limits.clone(),
                    env: self.kernel_env(),
                    seccomp_fds: raw.clone(),
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
                        clear_cloexec(&raw)
                    });
                }
            }
            IsolationLevel::Landlock => {
                if let Some(run) = &self.run_dir {
                    for sub in ["home", "tmp"] {
                        std::fs::create_dir_all(run.join(sub))
                            .map_err(|e| format!("creating the kernel's {sub} directory: {e}"))?;
                        if let Some(u) = self.uid {
                            let id = (Some(rustix::fs::Uid::from_raw(u)), Some(rustix::fs::Gid::from_raw(u)));
                            rustix::fs::chown(run.join(sub), id.0, id.1)
                                .map_err(|e| format!("giving the kernel's {sub} directory to its uid: {e}"))?;
                        }
                    }
                }
                let ruleset = LandlockConfig {
                    read_write: std::iter::once(self.work_dir.clone()).chain(self.run_dir.clone()).collect(),
                    read_only: self.read_only.clone(),
                    network: self.network,
                    connect_port: self.proxy_port,
                }
                .build()?;
                let mut filters = super::seccomp::deny_list()?;
                if self.proxy_port.is_some() && !self.network {
                    filters.push(super::seccomp::stream_sockets_only()?);
                }
                let mut ruleset = Some(ruleset);
                cmd = Command::new(program);
                cmd.args(args)
                    .env_clear()
                    .envs(self.kernel_env())
                    .current_dir(self.cwd.as_ref().unwrap_or(&self.work_dir));
                // SAFETY: runs between fork and exec; the ruleset and filters were built
                // before the fork. restrict_self and apply_filter make only prctl, landlock
                // and seccomp system calls and allocate nothing on success.
                unsafe {
                    cmd.pre_exec(move || {
                        enter_raw(&cgroup_fds)?;
                        rlimits.apply()?;
                        if let Some(r) = ruleset.take() {
                            r.restrict_self().map_err(|_| std::io::Error::other("Landlock restrict_self failed"))?;
                        }
                        for f in &filters {
                            seccompiler::apply_filter(f).map_err(|_| std::io::Error::other("seccomp failed"))?;
                        }
                        Ok(())
                    });
                }
            }
            _ => {
                cmd = Command::new(program);
                cmd.args(args)
                    .envs(self.env.iter().map(|(k, v)| (k, v)))
                    .current_dir(self.cwd.as_ref().unwrap_or(&self.work_dir));
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

/// The argument list of a prepared command, for logs and tests.
pub fn argv_of(cmd: &Command) -> Vec<OsString> {
    std::iter::once(cmd.get_program().to_owned()).chain(cmd.get_args().map(ToOwned::to_owned)).collect()
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
print("pids=%d" % len([p for p in os.listdir("/proc") if p.isdigit()]))
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
            bwrap: super::super::probe::find_bwrap(),
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
        assert_eq!(f["home"], SANDBOX_HOME);
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
        assert!(f["home"].starts_with(&*run_dir.path().to_string_lossy()));
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
        assert!(s.prepare(&[], None).unwrap_err().contains("empty"));
    }
}

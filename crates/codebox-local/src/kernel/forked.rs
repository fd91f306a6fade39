//! Lean kernels forked from a fork server into boxes that bubblewrap made.
//!
//! A lean kernel's cost is Python importing IPython: about 150 ms and 15 MiB of heap that
//! every kernel builds alike. The fork server (`python/forkserver.py`) imports it once, and
//! each kernel is a fork of it, so those pages are shared between kernels (copy on write)
//! and a kernel is ready in a fraction of the time.
//!
//! Bubblewrap still makes each box, exactly as for an executed kernel, but runs a
//! placeholder there that only holds the box's namespaces. The fork server's child (the
//! kernel's keeper) joins them and forks the kernel into the box's pid namespace; the kernel
//! then does to itself what bubblewrap does to a kernel it executes (uid, capabilities,
//! no-new-privileges, rlimits, seccomp, cgroup, environment: the [`ForkPlan`] of the box)
//! before any code of the box runs. The fork server never reads a request (a box's
//! environment may hold its secrets, and every later kernel inherits the server's memory):
//! its fork does. The kernel reads its signing key from its own connection file.
//!
//! Only the lean kernel at the bubblewrap level is forked, and only when the box's
//! environment sets nothing the interpreter reads at start (`PYTHON*` beyond `PYTHONPATH`
//! and `PYTHONUNBUFFERED`): anything else is executed as before. A fork that fails falls
//! back to executing the kernel, with a warning.
#![allow(unsafe_code, reason = "descriptor passing and the fork server's pre_exec: see the SAFETY notes")]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use codebox_core::{CodeBoxError, Result};
use codebox_sandbox::{Confinement, ForkPlan, IsolationLevel};
use serde_json::{Value, json};

use crate::kernelspec::{LEAN_KERNEL, LEAN_KERNEL_PROGRAM, LaunchSpec, NET_FORWARDER};

const FORKSERVER: &str = include_str!("../python/forkserver.py");

/// How long the fork server may take to import the kernel's modules.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(60);

/// Variables of the box's environment that a forked kernel honours as an executed one
/// would: everything else starting with `PYTHON` acts only when an interpreter starts.
const FORKABLE_PYTHON_VARS: &[&str] = &["PYTHONPATH", "PYTHONUNBUFFERED"];

/// The Python to fork `spec`'s kernel from, when it can be forked into its box.
pub(super) fn forkable<'a>(
    spec: &'a LaunchSpec,
    confinement: &Confinement,
    env: &[(String, String)],
) -> Option<&'a Path> {
    let startup_env = env.iter().any(|(k, _)| k.starts_with("PYTHON") && !FORKABLE_PYTHON_VARS.contains(&k.as_str()));
    if !spec.fork || spec.name != LEAN_KERNEL || confinement.level() != IsolationLevel::Bubblewrap || startup_env {
        return None;
    }
    spec.argv.first().map(Path::new)
}

/// A kernel forked into its box.
pub(super) struct Forked {
    /// Bubblewrap, holding the box.
    pub(super) holder: Child,
    /// The kernel, on the host.
    pub(super) pid: i32,
    /// The keeper's socket: it reports the kernel's end, and closing it kills the kernel.
    pub(super) keeper: UnixStream,
    /// The read end of the kernel's stderr.
    pub(super) stderr: OwnedFd,
}

/// Make the box, fork the kernel into it and wait for its pid. Blocking.
pub(super) fn start(
    python: &Path,
    spec: &LaunchSpec,
    conn_file: &Path,
    env: &[(String, String)],
    confinement: &Confinement,
    runtime_dir: &Path,
) -> Result<Forked> {
    let deadline = Instant::now() + spec.start_timeout;
    // Before the box: a fork server that cannot start leaves nothing to undo.
    let server = server_for(python)?;
    let target = confinement.prepare_fork_target(env, python, runtime_dir)?;
    let mut cmd = target.prepared.command;
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let holder = crate::spawn::spawn(cmd).map_err(|e| start_error(format!("could not run bubblewrap: {e}")))?;
    drop(target.prepared.guard);
    drop(target.info_write);
    let mut holder = KillOnDrop(Some(holder));
    let init = read_init_pid(target.info)?;
    let namespaces = wait_for_placeholder(init, deadline)?;
    let (stderr_read, stderr_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| CodeBoxError::io("making the kernel's stderr pipe", e.into()))?;
    let devnull = std::fs::File::open("/dev/null").map_err(|e| CodeBoxError::io("opening /dev/null", e))?;
    let fork = |server: &ForkServer| {
        server.fork(&target.plan, &namespaces, devnull.as_fd(), stderr_write.as_fd(), conn_file, deadline)
    };
    // A fork server that died since (it is replaced; its kernels live on) is asked once more.
    let (keeper, pid) = match fork(&server) {
        Err(_) if server.lost() => fork(&*server_for(python)?)?,
        forked => forked?,
    };
    drop(stderr_write);
    let holder = holder.0.take().expect("the holder is still ours");
    Ok(Forked { holder, pid, keeper, stderr: stderr_read })
}

fn start_error(message: impl Into<String>) -> CodeBoxError {
    CodeBoxError::kernel_start(message)
}

/// A spawned bubblewrap that is killed (and reaped) unless handed on.
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.take() {
            if let Some(pid) = i32::try_from(child.id()).ok().and_then(rustix::process::Pid::from_raw) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            crate::spawn::reap(child);
        }
    }
}

/// Bubblewrap's `--info-fd` output: the host pid of the box's init.
fn read_init_pid(info: OwnedFd) -> Result<i32> {
    let mut text = String::new();
    std::fs::File::from(info)
        .read_to_string(&mut text)
        .map_err(|e| CodeBoxError::io("reading what bubblewrap made", e))?;
    let value: Value = serde_json::from_str(text.trim())
        .map_err(|_| start_error(format!("bubblewrap did not make the box (it said {:?})", text.trim())))?;
    value["child-pid"]
        .as_i64()
        .and_then(|p| i32::try_from(p).ok())
        .ok_or_else(|| start_error(format!("bubblewrap named no init in {value}")))
}

/// The namespaces of a box, opened from its placeholder.
pub(super) struct Namespaces {
    fds: Vec<(&'static str, OwnedFd)>,
}

/// The namespaces the placeholder joins, in the order of the request.
const NAMESPACES: [&str; 7] = ["user", "mnt", "pid", "net", "ipc", "uts", "cgroup"];

/// Wait until the placeholder (pid 2 in the box, seen through the init's root) has been
/// executed, which bubblewrap does last, and open its namespaces.
fn wait_for_placeholder(init: i32, deadline: Instant) -> Result<Namespaces> {
    let proc_dir = PathBuf::from(format!("/proc/{init}/root/proc/2"));
    let expected = format!("{}\0infinity\0", codebox_sandbox::FORK_PLACEHOLDER);
    loop {
        if std::fs::read(proc_dir.join("cmdline")).is_ok_and(|c| c == expected.as_bytes()) {
            let mut fds = Vec::new();
            for name in NAMESPACES {
                let file = std::fs::File::open(proc_dir.join("ns").join(name))
                    .map_err(|e| CodeBoxError::io(format!("opening the box's {name} namespace"), e))?;
                fds.push((name, OwnedFd::from(file)));
            }
            // Still the same placeholder: a box whose init died in between is not joined.
            if std::fs::read(proc_dir.join("cmdline")).is_ok_and(|c| c == expected.as_bytes()) {
                return Ok(Namespaces { fds });
            }
        }
        if Instant::now() >= deadline {
            return Err(start_error("the kernel's box was not ready in time"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// One fork server, of one Python.
struct ForkServer {
    python: PathBuf,
    control: Mutex<UnixStream>,
    process: Mutex<Child>,
    /// Its socket failed: it is gone, whether or not it has been reaped yet.
    lost: std::sync::atomic::AtomicBool,
}

impl ForkServer {
    /// Start it and wait until it has imported the kernel's modules.
    fn start(python: &Path) -> Result<Self> {
        let (ours, theirs) = UnixStream::pair().map_err(|e| CodeBoxError::io("making the fork server's socket", e))?;
        let fd = theirs.as_raw_fd();
        let program = format!("_CODEBOX_FORKSERVER = True\n{LEAN_KERNEL_PROGRAM}\n{FORKSERVER}");
        let mut cmd = Command::new(python);
        // No environment of ours (the server's keys): kernels inherit this process.
        cmd.args(["-c", &program, NET_FORWARDER])
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LANG", "C.UTF-8")
            .env("HOME", "/nonexistent")
            .env("CODEBOX_FORKSERVER_FD", fd.to_string())
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: runs between fork and exec; one fcntl on a descriptor open in the parent.
        unsafe {
            cmd.pre_exec(move || {
                let fd = BorrowedFd::borrow_raw(fd);
                rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty()).map_err(Into::into)
            });
        }
        let mut process =
            crate::spawn::spawn(cmd).map_err(|e| start_error(format!("could not run the fork server: {e}")))?;
        drop(theirs);
        let stderr = process.stderr.take();
        let tail = Arc::new(Mutex::new(String::new()));
        if let Some(stderr) = stderr {
            let tail = tail.clone();
            let _ = std::thread::Builder::new().name("codebox-forkserver-stderr".into()).spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(std::result::Result::ok) {
                    tracing::debug!(target: "codebox_local::forkserver", "{line}");
                    let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                    t.push_str(&line);
                    t.push('\n');
                    let excess = t.len().saturating_sub(4096);
                    t.drain(..excess);
                }
            });
        }
        let mut ready = [0u8; 1];
        let _ = ours.set_read_timeout(Some(IMPORT_TIMEOUT));
        let got = (&ours).read(&mut ready);
        if !matches!(got, Ok(1)) || ready[0] != b'R' {
            let _ = process.kill();
            crate::spawn::reap(process);
            std::thread::sleep(Duration::from_millis(50));
            let tail = tail.lock().unwrap_or_else(|e| e.into_inner()).clone();
            return Err(start_error(format!("the kernel fork server did not start: {}", tail.trim())));
        }
        let _ = ours.set_read_timeout(None);
        tracing::debug!(python = %python.display(), pid = process.id(), "kernel fork server ready");
        Ok(Self {
            python: python.to_owned(),
            control: Mutex::new(ours),
            process: Mutex::new(process),
            lost: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn alive(&self) -> bool {
        !self.lost() && matches!(self.process.lock().unwrap_or_else(|e| e.into_inner()).try_wait(), Ok(None))
    }

    fn lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Fork a kernel into the box of `namespaces`; its keeper's socket and its host pid.
    fn fork(
        &self,
        plan: &ForkPlan,
        namespaces: &Namespaces,
        stdout: BorrowedFd<'_>,
        stderr: BorrowedFd<'_>,
        conn_file: &Path,
        deadline: Instant,
    ) -> Result<(UnixStream, i32)> {
        let io = |what: &str, e: std::io::Error| CodeBoxError::io(format!("{what} (kernel fork server)"), e);
        let (keeper, theirs) = UnixStream::pair().map_err(|e| io("making a keeper's socket", e))?;
        {
            let control = self.control.lock().unwrap_or_else(|e| e.into_inner());
            send_with_fds(&control, b"F", &[theirs.as_fd()]).map_err(|e| {
                self.lost.store(true, std::sync::atomic::Ordering::Release);
                io("asking for a fork", e)
            })?;
        }
        drop(theirs);
        let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
        let mut roles = serde_json::Map::new();
        for (name, fd) in &namespaces.fds {
            roles.insert((*name).to_owned(), json!(index(&mut fds, fd.as_fd())));
        }
        roles.insert("stdout".into(), json!(index(&mut fds, stdout)));
        roles.insert("stderr".into(), json!(index(&mut fds, stderr)));
        let seccomp: Vec<usize> = plan.seccomp.iter().map(|fd| index(&mut fds, fd.as_fd())).collect();
        roles.insert("seccomp".into(), json!(seccomp));
        let procs: Vec<usize> = plan.cgroup.iter().map(|fd| index(&mut fds, fd.as_fd())).collect();
        roles.insert("cgroup_procs".into(), json!(procs));
        let request = json!({
            "fds": roles,
            "uid": plan.uid,
            "gid": plan.gid,
            "cwd": plan.cwd,
            "env": plan.env,
            "rlimits": plan.rlimits,
            "connection_file": conn_file,
        });
        let body = serde_json::to_vec(&request).expect("JSON serializes");
        let length = u32::try_from(body.len()).map_err(|_| start_error("the kernel's environment is too large"))?;
        send_with_fds(&keeper, &length.to_le_bytes(), &fds).map_err(|e| io("sending the request", e))?;
        (&keeper).write_all(&body).map_err(|e| io("sending the request", e))?;
        let _ = keeper
            .set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))));
        let mut line = String::new();
        BufReader::new(&keeper).read_line(&mut line).map_err(|e| io("waiting for the kernel's pid", e))?;
        let _ = keeper.set_read_timeout(None);
        let answer: Value = serde_json::from_str(line.trim()).map_err(|_| {
            start_error(format!("the kernel fork server ({}) answered {line:?}", self.python.display()))
        })?;
        if let Some(error) = answer["error"].as_str() {
            return Err(start_error(format!("the kernel could not be forked into its box: {error}")));
        }
        let pid = answer["pid"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| start_error(format!("the kernel fork server answered {answer}")))?;
        Ok((keeper, pid))
    }
}

/// Add `fd` to the descriptors of a request; its index there.
fn index<'a>(fds: &mut Vec<BorrowedFd<'a>>, fd: BorrowedFd<'a>) -> usize {
    fds.push(fd);
    fds.len() - 1
}

/// Send `bytes` with `fds` attached.
fn send_with_fds(socket: &UnixStream, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut space = vec![std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut ancillary = SendAncillaryBuffer::new(&mut space);
    if !ancillary.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(std::io::Error::other("too many descriptors for one message"));
    }
    let sent = rustix::net::sendmsg(socket, &[std::io::IoSlice::new(bytes)], &mut ancillary, SendFlags::NOSIGNAL)?;
    if sent < bytes.len() {
        // The descriptors went with the first bytes; the rest follows plainly.
        let mut s = socket;
        s.write_all(&bytes[sent..])?;
    }
    Ok(())
}

/// The running fork server of `python`, started when there is none (or it died).
fn server_for(python: &Path) -> Result<Arc<ForkServer>> {
    static SERVERS: Mutex<Vec<Arc<ForkServer>>> = Mutex::new(Vec::new());
    let mut servers = SERVERS.lock().unwrap_or_else(|e| e.into_inner());
    servers.retain(|s| s.alive());
    if let Some(server) = servers.iter().find(|s| s.python == python) {
        return Ok(server.clone());
    }
    let server = Arc::new(ForkServer::start(python)?);
    servers.push(server.clone());
    Ok(server)
}

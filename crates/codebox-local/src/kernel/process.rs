//! The kernel's process: its pid held until it is reaped, a pidfd that tells the moment it
//! exits (and why), and the tail of what it wrote to stderr.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use codebox_core::{CodeBoxError, KernelDeath, Result};
use tokio::io::AsyncReadExt;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::relay::Oversize;
use codebox_sandbox::Confinement;

/// How many bytes of the kernel's stderr are kept for error messages.
const STDERR_TAIL: usize = 4096;

/// Why the kernel exited, when we caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum ExitReason {
    /// Not asked for: a crash.
    Unexpected = 0,
    /// Killed because it ignored an interrupt after a timeout.
    TimeoutKill = 1,
    /// Shut down by its owner (stop, restart, drop).
    Requested = 2,
}

/// The kernel process, the leader of its own process group.
pub(super) struct Process {
    /// What we spawned: the kernel (or the bubblewrap that runs it), or for a forked kernel
    /// the bubblewrap that holds its box.
    pub(super) child: Mutex<Option<Child>>,
    /// The kernel (for an executed kernel, the spawned child).
    pub(super) pid: rustix::process::Pid,
    /// A forked kernel's box: the spawned bubblewrap, which leads its own process group.
    pub(super) holder: Option<rustix::process::Pid>,
    /// The kernel's pid may be reused: it has been reaped (for a forked kernel, its keeper
    /// was told it may reap it).
    pub(super) reaped: AtomicBool,
    /// A forked kernel's keeper kills it when its socket closes: this copy closes with the
    /// process (the kernel's owner), not with the task watching it, which ends with its
    /// runtime.
    pub(super) _keeper: Option<OwnedFd>,
}

impl Process {
    pub(super) fn signal_group(&self, signal: rustix::process::Signal) {
        // While the leader is unreaped its pid (and so its group id) cannot be reused.
        if !self.reaped.load(Ordering::Acquire) {
            let _ = rustix::process::kill_process_group(self.pid, signal);
        }
        if let Some(holder) = self.holder
            && self.child.lock().unwrap_or_else(|e| e.into_inner()).is_some()
        {
            let _ = rustix::process::kill_process_group(holder, signal);
        }
    }

    /// Kill the whole group and hand the leader to the reaper (a start that failed).
    pub(super) fn kill_and_reap(&self) {
        self.signal_group(rustix::process::Signal::KILL);
        if let Some(c) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
            crate::spawn::reap(c);
        }
    }
}

/// A spawned kernel process under watch: its death is announced on `death`, its stderr
/// kept in `stderr_tail`, by the `tasks`.
pub(super) struct Watched {
    pub(super) process: Arc<Process>,
    pub(super) death: watch::Receiver<Option<KernelDeath>>,
    pub(super) stderr_tail: Arc<Mutex<VecDeque<u8>>>,
    pub(super) tasks: Vec<JoinHandle<()>>,
}

impl Watched {
    /// Watch a forked kernel through its keeper and drain its stderr.
    pub(super) fn start_forked(
        forked: super::forked::Forked,
        confinement: Arc<Confinement>,
        why: Cause,
    ) -> Result<Self> {
        let holder = rustix::process::Pid::from_raw(forked.holder.id() as i32);
        let pid = rustix::process::Pid::from_raw(forked.pid)
            .ok_or_else(|| CodeBoxError::kernel_start(format!("the fork server named pid {}", forked.pid)))?;
        let hold = forked
            .keeper
            .try_clone()
            .map_err(|e| CodeBoxError::kernel_start(format!("holding the forked kernel's keeper: {e}")))?;
        let process = Arc::new(Process {
            child: Mutex::new(Some(forked.holder)),
            pid,
            holder,
            reaped: AtomicBool::new(false),
            _keeper: Some(OwnedFd::from(hold)),
        });
        let stderr_tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL)));
        let (death_tx, death) = watch::channel(None);
        let keeper = forked.keeper;
        let keeper = match keeper.set_nonblocking(true).and_then(|()| tokio::net::UnixStream::from_std(keeper)) {
            Ok(k) => k,
            Err(e) => {
                process.kill_and_reap();
                return Err(CodeBoxError::kernel_start(format!("watching the forked kernel failed: {e}")));
            }
        };
        let tasks = vec![
            tokio::spawn(watch_keeper(keeper, process.clone(), confinement, why, death_tx)),
            tokio::spawn(drain_stderr(std::process::ChildStderr::from(forked.stderr), stderr_tail.clone())),
        ];
        Ok(Self { process, death, stderr_tail, tasks })
    }

    /// Watch `child` through a pidfd and drain its stderr. On failure the process is killed.
    pub(super) fn start(mut child: Child, confinement: Arc<Confinement>, why: Cause) -> Result<Self> {
        let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("a child has a positive pid");
        let stderr = child.stderr.take();
        let process = Arc::new(Process {
            child: Mutex::new(Some(child)),
            pid,
            holder: None,
            reaped: AtomicBool::new(false),
            _keeper: None,
        });
        let stderr_tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL)));
        let (death_tx, death) = watch::channel(None);
        let pidfd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(e) => {
                process.kill_and_reap();
                return Err(CodeBoxError::kernel_start(format!("pidfd_open failed: {e}")));
            }
        };
        let mut tasks = vec![tokio::spawn(watch_process(pidfd, process.clone(), confinement, why, death_tx))];
        if let Some(stderr) = stderr {
            tasks.push(tokio::spawn(drain_stderr(stderr, stderr_tail.clone())));
        }
        Ok(Self { process, death, stderr_tail, tasks })
    }
}

/// The text of a stderr tail.
pub(super) fn tail_text(tail: &Mutex<VecDeque<u8>>) -> String {
    let bytes: Vec<u8> = tail.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().collect();
    String::from_utf8_lossy(&bytes).trim().to_owned()
}

// Registering a raw descriptor with the reactor is unsafe in tokio's API; see SAFETY.
#[allow(unsafe_code)]
fn register(pidfd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: `pidfd` is an open descriptor owned by the AsyncFd for its whole life; it is
    // neither closed nor replaced while registered.
    unsafe { AsyncFd::register(pidfd) }.map_err(|e| e.into_parts().1)
}

/// What tells why a kernel died, besides its exit status.
pub(super) struct Cause {
    /// A message over `max_message` tripped a relay, which killed the kernel.
    pub(super) oversize: Arc<Oversize>,
    pub(super) max_message: u64,
    /// A channel closed while the kernel ran, and the links supervisor killed it.
    pub(super) link_lost: Arc<AtomicBool>,
    /// Whether the confinement is the kernel's alone, so that what is left in it dies with
    /// the kernel (a code context's kernel shares the box's).
    pub(super) owns_confinement: bool,
}

async fn watch_process(
    pidfd: OwnedFd,
    process: Arc<Process>,
    confinement: Arc<Confinement>,
    why: Cause,
    death: watch::Sender<Option<KernelDeath>>,
) {
    let cause = match register(pidfd) {
        Ok(fd) => {
            let _ = fd.readable().await;
            None
        }
        Err(e) => Some(KernelDeath::Unknown { detail: format!("cannot watch the kernel: {e}") }),
    };
    let status = {
        let mut guard = process.child.lock().unwrap_or_else(|e| e.into_inner());
        let status = guard.as_mut().and_then(|c| c.try_wait().ok().flatten());
        if status.is_some() {
            guard.take();
            // Take the kernel's children (same group) along; the group id is still ours.
            let _ = rustix::process::kill_process_group(process.pid, rustix::process::Signal::KILL);
            process.reaped.store(true, Ordering::Release);
        }
        status
    };
    report(cause, status, &process, &confinement, &why, &death).await;
}

/// Watch a forked kernel: its keeper says how it ended (or, gone, that it did). The box's
/// bubblewrap goes with it, then the keeper may reap it.
async fn watch_keeper(
    keeper: tokio::net::UnixStream,
    process: Arc<Process>,
    confinement: Arc<Confinement>,
    why: Cause,
    death: watch::Sender<Option<KernelDeath>>,
) {
    use std::os::unix::process::ExitStatusExt;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut keeper = tokio::io::BufReader::new(keeper);
    let mut line = String::new();
    let _ = keeper.read_line(&mut line).await;
    let said: Option<serde_json::Value> = serde_json::from_str(line.trim()).ok();
    let status = said.as_ref().and_then(|v| match (v["exited"].as_i64(), v["signal"].as_i64()) {
        (Some(code), _) => Some(std::process::ExitStatus::from_raw(((code & 0xff) << 8) as i32)),
        (None, Some(signal)) => Some(std::process::ExitStatus::from_raw(signal as i32)),
        _ => None,
    });
    // The kernel is a zombie until its keeper hears from us: its group id is still its own.
    let _ = rustix::process::kill_process_group(process.pid, rustix::process::Signal::KILL);
    if let Some(holder) = process.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
        if let Some(pid) = process.holder {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        crate::spawn::reap(holder);
    }
    process.reaped.store(true, Ordering::Release);
    let _ = keeper.get_mut().write_all(b"k").await;
    drop(keeper);
    let cause = status.is_none().then(|| KernelDeath::Unknown { detail: "its keeper is gone".into() });
    report(cause, status, &process, &confinement, &why, &death).await;
}

/// Judge a kernel's death and announce it, once what it left in its box is dead too.
async fn report(
    cause: Option<KernelDeath>,
    status: Option<std::process::ExitStatus>,
    process: &Process,
    confinement: &Arc<Confinement>,
    why: &Cause,
    death: &watch::Sender<Option<KernelDeath>>,
) {
    let cause = cause.unwrap_or_else(|| match (why.oversize.get(), status) {
        (Some(size), _) => KernelDeath::OutputLimitExceeded { size, limit: why.max_message },
        (None, _) if why.link_lost.load(Ordering::Acquire) => {
            KernelDeath::Unknown { detail: "closed a channel to codebox while it ran, and was recycled".into() }
        }
        (None, Some(status)) => confinement.death_cause(status),
        (None, None) => KernelDeath::Unknown { detail: "the kernel process is gone".into() },
    });
    // What the kernel left in its cgroup or under its uid dies with it, before anyone
    // hears of the death (and starts a replacement).
    if why.owns_confinement {
        let c = Arc::clone(confinement);
        let _ = tokio::task::spawn_blocking(move || c.kill_all()).await;
    }
    tracing::debug!(pid = process.pid.as_raw_nonzero().get(), %cause, "kernel exited");
    let _ = death.send(Some(cause));
}

async fn drain_stderr(stderr: std::process::ChildStderr, tail: Arc<Mutex<VecDeque<u8>>>) {
    let Ok(mut stderr) = tokio::process::ChildStderr::from_std(stderr) else { return };
    let mut buf = vec![0u8; 4096];
    loop {
        match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                tracing::trace!(target: "codebox_local::kernel_stderr", "{}", String::from_utf8_lossy(&buf[..n]));
                let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                t.extend(&buf[..n]);
                let excess = t.len().saturating_sub(STDERR_TAIL);
                t.drain(..excess);
            }
        }
    }
}

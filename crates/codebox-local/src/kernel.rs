//! One kernel process and the ZeroMQ client that talks to it.
//!
//! The kernel is spawned from the dedicated spawner thread (see `spawn`), watched through a
//! pidfd so its death is seen at once, and reached over IPC sockets in a private 0700
//! directory (TCP on 127.0.0.1 for kernels that cannot do IPC).
//!
//! Nothing of a kernel outlives it. A `zeromq` SUB socket runs a reconnect task that retries
//! a lost peer forever (backing off to every 30 s) and ends only when the socket is dropped,
//! and a socket's `recv` waits forever once its peer is gone. Our peers are the relays, which
//! accept exactly one connection each, so a lost link never comes back: when the kernel dies,
//! or one of its channels closes while it runs (the kernel is then unreachable and is
//! recycled), the links supervisor ends the relays and read loops and closes our sockets,
//! whoever still holds the [`Kernel`].

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use codebox_core::{CodeBoxError, KernelDeath, Result};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::io::unix::AsyncFd;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use zeromq::{DealerSendHalf, Socket, SocketEvent, SocketRecv, SocketSend, ZmqMessage};

use crate::protocol::{Incoming, Signer};
use crate::relay::{Oversize, Target};
use crate::util::random_hex;
use codebox_sandbox::{Confinement, IsolationLevel, NetProxy, SandboxPolicy, proxy_env};

/// How an interrupt reaches the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum InterruptMode {
    /// `interrupt_request` on the control channel (works for ipykernel, even sandboxed).
    Message,
    /// SIGINT to the kernel process.
    Signal,
}

/// How the client reaches the kernel's sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Transport {
    Ipc,
    Tcp,
}

/// Everything needed to start one kernel.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct LaunchSpec {
    pub(crate) name: String,
    /// The command line; `{connection_file}` is replaced.
    pub(crate) argv: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) interrupt_mode: InterruptMode,
    pub(crate) transport: Transport,
    pub(crate) start_timeout: Duration,
    /// How kernels of this kind are confined.
    pub(crate) sandbox: Arc<SandboxPolicy>,
    /// Where the kernel's runtime directory goes (the builder's scratch directory); `None`:
    /// `XDG_RUNTIME_DIR` or the temporary directory.
    pub(crate) scratch_dir: Option<PathBuf>,
}

/// Which socket a message came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Channel {
    Shell,
    IoPub,
    Control,
}

/// A message routed to the request it answers.
#[derive(Debug)]
pub(crate) struct Routed {
    pub(crate) channel: Channel,
    pub(crate) msg: Incoming,
}

#[derive(Default)]
struct Routes {
    map: Mutex<HashMap<String, mpsc::Sender<Routed>>>,
    iopub_seen: AtomicBool,
    iopub_notify: Notify,
}

impl Routes {
    async fn dispatch(&self, channel: Channel, msg: Incoming) {
        if channel == Channel::IoPub && !self.iopub_seen.swap(true, Ordering::AcqRel) {
            self.iopub_notify.notify_waiters();
        }
        let Some(parent) = msg.parent_id.as_deref() else { return };
        let tx = self.map.lock().unwrap_or_else(|e| e.into_inner()).get(parent).cloned();
        match tx {
            // Backpressure: a slow consumer slows this kernel's reader, never grows a buffer.
            Some(tx) => {
                let _ = tx.send(Routed { channel, msg }).await;
            }
            None => tracing::trace!(msg_type = %msg.msg_type, "no one waits for this kernel message"),
        }
    }
}

/// A request in flight: its replies and outputs arrive on `rx` until it is dropped.
pub(crate) struct Request {
    pub(crate) id: String,
    pub(crate) rx: mpsc::Receiver<Routed>,
    routes: Arc<Routes>,
}

impl Drop for Request {
    fn drop(&mut self) {
        self.routes.map.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
    }
}

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

struct Process {
    child: Mutex<Option<Child>>,
    pid: rustix::process::Pid,
    reaped: AtomicBool,
}

impl Process {
    fn signal_group(&self, signal: rustix::process::Signal) {
        // While the leader is unreaped its pid (and so its group id) cannot be reused.
        if !self.reaped.load(Ordering::Acquire) {
            let _ = rustix::process::kill_process_group(self.pid, signal);
        }
    }
}

/// Our sending halves of the kernel's shell and control sockets, taken (closed) when the
/// kernel is gone.
struct Senders {
    shell: tokio::sync::Mutex<Option<DealerSendHalf>>,
    control: tokio::sync::Mutex<Option<DealerSendHalf>>,
}

impl Senders {
    async fn close(&self) {
        drop(self.shell.lock().await.take());
        drop(self.control.lock().await.take());
    }
}

/// Tasks that are aborted when this is dropped.
#[derive(Default)]
struct Tasks(Vec<JoinHandle<()>>);

impl Tasks {
    /// Wait until one of the tasks ends (forever when there are none), and forget it.
    async fn one_ends(&mut self) {
        if self.0.is_empty() {
            return std::future::pending().await;
        }
        let (_, index, _) = futures::future::select_all(self.0.iter_mut()).await;
        drop(self.0.swap_remove(index));
    }

    async fn all_end(&mut self) {
        while !self.0.is_empty() {
            self.one_ends().await;
        }
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.0.iter().for_each(JoinHandle::abort);
    }
}

/// How long a kernel whose channel closed may take to exit by itself (a kernel closes its
/// sockets on the way out), and how long the read loops of a dead kernel may take to read
/// what it sent before it went, before they are ended.
const LINK_GRACE: Duration = Duration::from_secs(2);

/// A running kernel.
pub(crate) struct Kernel {
    pub(crate) name: String,
    signer: Signer,
    senders: Arc<Senders>,
    routes: Arc<Routes>,
    death: watch::Receiver<Option<KernelDeath>>,
    process: Arc<Process>,
    stderr_tail: Arc<Mutex<VecDeque<u8>>>,
    tasks: Vec<JoinHandle<()>>,
    interrupt_mode: InterruptMode,
    exit_reason: AtomicU8,
    confinement: Arc<Confinement>,
    /// The allowlist proxy of a box with one; it lives and dies with this kernel.
    _net_proxy: Option<NetProxy>,
    /// Removed without recursion: under Landlock the box's TMPDIR and HOME are in it.
    runtime_dir: crate::rmtree::OwnedDir,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel").field("name", &self.name).field("pid", &self.process.pid.as_raw_nonzero()).finish()
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.process.signal_group(rustix::process::Signal::KILL);
        if let Some(child) = self.process.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
            crate::spawn::reap(child);
        }
    }
}

const STDERR_TAIL: usize = 4096;

/// Where kernel runtime directories go: `scratch` when one is given, else `XDG_RUNTIME_DIR`,
/// else the temporary directory.
fn runtime_base_in(scratch: Option<&Path>) -> PathBuf {
    // Unix socket paths are limited to ~107 bytes: keep the directory short.
    if let Some(dir) = scratch
        && dir.as_os_str().len() < 60
    {
        return dir.to_owned();
    }
    runtime_base()
}

fn runtime_base() -> PathBuf {
    // Unix socket paths are limited to ~107 bytes: keep the directory short.
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from)
        && dir.is_dir()
        && dir.as_os_str().len() < 60
    {
        return dir;
    }
    let tmp = std::env::temp_dir();
    if tmp.as_os_str().len() < 60 { tmp } else { PathBuf::from("/tmp") }
}

const OWNER_FILE: &str = "owner";

/// This process's pid and start time: a pid alone may be reused after a crash.
fn owner_tag() -> String {
    let pid = std::process::id();
    format!("{pid} {}", start_time(pid).unwrap_or_default())
}

fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22, counted after the parenthesised command name (which may hold spaces).
    stat.rsplit_once(')')?.1.split_whitespace().nth(19).map(str::to_owned)
}

/// The prefix of a temporary working directory made by this process: `codebox-`, then the
/// owner's pid and start time, so that a later process can tell when its owner is gone.
pub(crate) fn workdir_prefix() -> String {
    let pid = std::process::id();
    format!("codebox-{pid}.{}-", start_time(pid).unwrap_or_default())
}

/// Whether the process `pid` that started at `started` is gone.
fn owner_gone(pid: u32, started: &str) -> bool {
    start_time(pid).as_deref() != Some(started)
}

/// Remove the kernel runtime directories (`cbk-*` with an owner file) and temporary working
/// directories (`codebox-<pid>.<start>-*`) whose owner died without cleaning up (SIGKILL, a
/// crash): their kernels are already gone (PR_SET_PDEATHSIG). Directories of live owners,
/// of unknown owners and working directories with something mounted on them are left alone.
/// Returns how many were removed.
pub(crate) fn sweep_stale_dirs() -> usize {
    let mut removed = 0;
    let mut bases = vec![runtime_base()];
    if !bases.contains(&std::env::temp_dir()) {
        bases.push(std::env::temp_dir());
    }
    for base in bases {
        let Ok(entries) = std::fs::read_dir(&base) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let stale = if name.starts_with("cbk-") {
                let Ok(tag) = std::fs::read_to_string(path.join(OWNER_FILE)) else { continue };
                let mut parts = tag.split_whitespace();
                match (parts.next().and_then(|p| p.parse::<u32>().ok()), parts.next()) {
                    (Some(pid), Some(started)) => owner_gone(pid, started),
                    _ => false,
                }
            } else if let Some(rest) = name.strip_prefix("codebox-") {
                let owner = rest.split_once('-').and_then(|(o, _)| o.split_once('.'));
                match owner.and_then(|(pid, started)| Some((pid.parse::<u32>().ok()?, started))) {
                    Some((pid, started)) => owner_gone(pid, started) && !is_mount_point(&path),
                    None => false,
                }
            } else {
                false
            };
            if stale && entry.file_type().is_ok_and(|t| t.is_dir()) {
                tracing::debug!(dir = %path.display(), "removing a directory of a box whose owner is gone");
                if crate::rmtree::remove_tree(&path).is_ok() {
                    removed += 1;
                }
            }
        }
    }
    removed
}

/// Whether something is mounted on `dir` (a working-directory image).
fn is_mount_point(dir: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::symlink_metadata(dir), dir.parent().map(std::fs::metadata)) {
        (Ok(d), Some(Ok(p))) => d.dev() != p.dev(),
        _ => true,
    }
}

/// [`sweep_stale_dirs`] once per process, before its first kernel starts.
fn sweep_stale_dirs_once() {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| {
        sweep_stale_dirs();
    });
}

/// Whether Unix sockets can be made where kernels' IPC sockets go (checked once).
pub(crate) fn ipc_works() -> bool {
    static WORKS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WORKS.get_or_init(|| {
        let probe = tempfile::Builder::new().prefix("cbk-probe-").tempdir_in(runtime_base());
        let works = probe.is_ok_and(|dir| std::os::unix::net::UnixListener::bind(dir.path().join("s")).is_ok());
        if !works {
            tracing::warn!(
                "Unix sockets are unavailable in {}; kernels use TCP on 127.0.0.1",
                runtime_base().display()
            );
        }
        works
    })
}

fn free_tcp_ports(n: usize) -> std::io::Result<Vec<u16>> {
    // Bind them all at once so they differ, then release them for the kernel.
    let listeners: Vec<_> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<std::io::Result<_>>()?;
    listeners.iter().map(|l| l.local_addr().map(|a| a.port())).collect()
}

fn start_error(message: impl Into<String>) -> CodeBoxError {
    CodeBoxError::KernelStart { message: message.into() }
}

impl Kernel {
    /// Spawn a kernel in the working directory of `confinement`, sandboxed by it, and wait
    /// until it answers `kernel_info` and its IOPub subscription is live.
    ///
    /// Under bubblewrap the kernel always speaks IPC (TCP cannot cross the private network
    /// namespace) and is always interrupted by message (bwrap does not forward signals);
    /// under Landlock it always speaks IPC too (a kernel without network may not make IP
    /// sockets there).
    pub(crate) async fn start(spec: &LaunchSpec, confinement: Arc<Confinement>) -> Result<Arc<Kernel>> {
        let started = Instant::now();
        // Off the async threads: a dead owner's directories may hold trees of any size.
        let _ = tokio::task::spawn_blocking(sweep_stale_dirs_once).await;
        let sandboxed = confinement.level() == IsolationLevel::Bubblewrap;
        // Under Landlock, a kernel without network cannot make IP sockets at all (seccomp):
        // there too it speaks IPC.
        let ipc_only = sandboxed || confinement.level() == IsolationLevel::Landlock;
        let spec = &LaunchSpec {
            transport: if ipc_only { Transport::Ipc } else { spec.transport },
            interrupt_mode: if sandboxed { InterruptMode::Message } else { spec.interrupt_mode },
            ..spec.clone()
        };
        // 0700: the connection file holds the signing key, and the sockets accept commands.
        let runtime_dir = tempfile::Builder::new()
            .prefix("cbk-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir_in(runtime_base_in(spec.scratch_dir.as_deref()))
            .map(crate::rmtree::OwnedDir::adopt)
            .map_err(|e| CodeBoxError::io("creating the kernel's runtime directory", e))?;
        std::fs::write(runtime_dir.path().join(OWNER_FILE), owner_tag())
            .map_err(|e| CodeBoxError::io("writing the kernel's owner file", e))?;
        confinement.adopt_run_dir(runtime_dir.path())?;
        let mut env = spec.env.clone();
        let net_proxy = confinement.start_net_proxy(runtime_dir.path())?;
        if let Some(proxy) = &net_proxy {
            env.extend(proxy_env(proxy.socket()));
        }
        let key = random_hex(32);
        let (transport, ip, ports) = match spec.transport {
            Transport::Ipc => ("ipc", runtime_dir.path().join("k").to_string_lossy().into_owned(), vec![1, 2, 3, 4, 5]),
            Transport::Tcp => (
                "tcp",
                "127.0.0.1".to_owned(),
                free_tcp_ports(5).map_err(|e| CodeBoxError::io("choosing kernel ports", e))?,
            ),
        };
        let conn = json!({
            "transport": transport, "ip": ip,
            "shell_port": ports[0], "iopub_port": ports[1], "stdin_port": ports[2],
            "control_port": ports[3], "hb_port": ports[4],
            "key": key, "signature_scheme": "hmac-sha256", "kernel_name": spec.name,
        });
        let conn_file = runtime_dir.path().join("connection.json");
        std::fs::write(&conn_file, serde_json::to_vec(&conn).expect("JSON serializes"))
            .map_err(|e| CodeBoxError::io("writing the connection file", e))?;

        let argv: Vec<String> =
            spec.argv.iter().map(|a| a.replace("{connection_file}", &conn_file.to_string_lossy())).collect();
        let Some(program) = argv.first() else {
            return Err(start_error(format!("kernel {:?} has an empty command line", spec.name)));
        };
        let prepared = confinement.prepare(&argv, &env, None, None, Some(runtime_dir.path()))?;
        let mut cmd = prepared.command;
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let program_name = program.clone();
        let spawned = tokio::task::spawn_blocking(move || crate::spawn::spawn(cmd))
            .await
            .map_err(|e| start_error(format!("the spawn task failed: {e}")))?;
        drop(prepared.guard);
        let mut child = spawned.map_err(|e| start_error(format!("could not run {program_name}: {e}")))?;
        let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("a child has a positive pid");
        tracing::debug!(kernel = %spec.name, pid = child.id(), "kernel spawned");

        let stderr = child.stderr.take();
        let oversize = Arc::new(Oversize::default());
        let link_lost = Arc::new(AtomicBool::new(false));
        let process = Arc::new(Process { child: Mutex::new(Some(child)), pid, reaped: AtomicBool::new(false) });
        let stderr_tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL)));
        let mut tasks = Vec::new();
        let (death_tx, death_rx) = watch::channel(None);
        let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
            .map_err(|e| start_error(format!("pidfd_open failed: {e}")));
        let pidfd = match pidfd {
            Ok(fd) => fd,
            Err(e) => {
                process.signal_group(rustix::process::Signal::KILL);
                if let Some(c) = process.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    crate::spawn::reap(c);
                }
                return Err(e);
            }
        };
        tasks.push(tokio::spawn(watch_process(
            pidfd,
            process.clone(),
            confinement.clone(),
            Cause {
                oversize: oversize.clone(),
                max_message: spec.sandbox.limits.max_message,
                link_lost: link_lost.clone(),
            },
            death_tx,
        )));
        if let Some(stderr) = stderr {
            tasks.push(tokio::spawn(drain_stderr(stderr, stderr_tail.clone())));
        }

        let fail = |tasks: Vec<JoinHandle<()>>, process: &Arc<Process>| {
            let tasks = tasks;
            let process = process.clone();
            let tail = stderr_tail.clone();
            async move {
                process.signal_group(rustix::process::Signal::KILL);
                // Let the last stderr lines arrive.
                tokio::time::sleep(Duration::from_millis(100)).await;
                for t in &tasks {
                    t.abort();
                }
                if let Some(c) = process.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    crate::spawn::reap(c);
                }
                let bytes: Vec<u8> = tail.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().collect();
                String::from_utf8_lossy(&bytes).trim().to_owned()
            }
        };
        let deadline = started + spec.start_timeout;

        let guard =
            RelayGuard { limit: spec.sandbox.limits.max_message, oversize: oversize.clone(), process: process.clone() };
        let connected = connect_all(spec.transport, &ip, &ports, &death_rx, deadline, &guard).await;
        let (sockets, relays) = match connected {
            Ok(connected) => connected,
            Err(what) => {
                let tail = fail(tasks, &process).await;
                return Err(start_error(format!("{what}{}", fmt_tail(&tail))));
            }
        };

        let signer = Signer::new(&key, random_hex(16));
        let routes = Arc::new(Routes::default());
        let Sockets { shell: (shell_tx, shell_rx), control: (control_tx, control_rx), iopub } = sockets;
        let mut links = Tasks(relays);
        for (socket, channel) in [(shell_rx, Channel::Shell), (control_rx, Channel::Control)] {
            links.0.push(tokio::spawn(read_loop(socket.0, socket.1, signer.clone(), routes.clone(), channel)));
        }
        links.0.push(tokio::spawn(read_loop(iopub.0, iopub.1, signer.clone(), routes.clone(), Channel::IoPub)));
        let senders = Arc::new(Senders {
            shell: tokio::sync::Mutex::new(Some(shell_tx)),
            control: tokio::sync::Mutex::new(Some(control_tx)),
        });
        tasks.push(tokio::spawn(supervise_links(links, death_rx.clone(), process.clone(), link_lost, senders.clone())));

        let kernel = Kernel {
            name: spec.name.clone(),
            signer,
            senders: senders.clone(),
            routes,
            death: death_rx,
            process,
            stderr_tail,
            tasks,
            interrupt_mode: spec.interrupt_mode,
            exit_reason: AtomicU8::new(ExitReason::Unexpected as u8),
            confinement,
            _net_proxy: net_proxy,
            runtime_dir,
        };
        match kernel.wait_ready(deadline, spec.start_timeout).await {
            Ok(()) => {
                tracing::debug!(kernel = %spec.name, elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "kernel ready");
                Ok(Arc::new(kernel))
            }
            Err(e) => {
                kernel.exit_reason.store(ExitReason::Requested as u8, Ordering::Release);
                kernel.process.signal_group(rustix::process::Signal::KILL);
                tokio::time::sleep(Duration::from_millis(100)).await;
                let tail = kernel.stderr_tail();
                Err(start_error(format!("{e}{}", fmt_tail(&tail))))
            }
        }
    }

    async fn wait_ready(&self, deadline: Instant, limit: Duration) -> std::result::Result<(), String> {
        let mut death = self.death.clone();
        loop {
            let mut req = self
                .request(Channel::Shell, "kernel_info_request", json!({}), 4)
                .await
                .map_err(|e| format!("sending kernel_info_request failed: {e}"))?;
            let got_reply = async {
                while let Some(m) = req.rx.recv().await {
                    if m.msg.msg_type == "kernel_info_reply" {
                        return;
                    }
                }
                std::future::pending::<()>().await
            };
            tokio::select! {
                _ = got_reply => {}
                cause = death.wait_for(Option::is_some) => {
                    let cause = cause.ok().and_then(|c| c.clone()).map(|c| c.to_string()).unwrap_or_default();
                    return Err(format!("the kernel {cause} before it was ready"));
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(format!("the kernel did not answer kernel_info within {limit:?}"));
                }
            }
            if self.routes.iopub_seen.load(Ordering::Acquire) {
                return Ok(());
            }
            // The reply came, but our IOPub subscription may not be live yet: outputs sent now
            // would be lost. Wait for any IOPub message (ipykernel 7 sends iopub_welcome).
            let notified = self.routes.iopub_notify.notified();
            if self.routes.iopub_seen.load(Ordering::Acquire) {
                return Ok(());
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
            if self.routes.iopub_seen.load(Ordering::Acquire) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err("the kernel's IOPub channel never delivered a message".into());
            }
        }
    }

    /// Send a request on `channel`; its answers arrive on the returned request.
    pub(crate) async fn request(
        &self,
        channel: Channel,
        msg_type: &str,
        content: Value,
        capacity: usize,
    ) -> Result<Request> {
        let (msg_id, frames) = self.signer.request(msg_type, content);
        let (tx, rx) = mpsc::channel(capacity);
        self.routes.map.lock().unwrap_or_else(|e| e.into_inner()).insert(msg_id.clone(), tx);
        let req = Request { id: msg_id, rx, routes: self.routes.clone() };
        self.send(channel, frames).await?;
        Ok(req)
    }

    async fn send(&self, channel: Channel, frames: Vec<Bytes>) -> Result<()> {
        let msg = ZmqMessage::try_from(frames).map_err(|e| CodeBoxError::protocol(e.to_string()))?;
        let mut sender = match channel {
            Channel::Shell => self.senders.shell.lock().await,
            Channel::Control => self.senders.control.lock().await,
            Channel::IoPub => return Err(CodeBoxError::protocol("cannot send on IOPub")),
        };
        let Some(sender) = sender.as_mut() else {
            return Err(CodeBoxError::Connection {
                message: format!("the connection to kernel {} is closed", self.name),
                source: None,
            });
        };
        sender.send(msg).await.map_err(|e| CodeBoxError::Connection {
            message: format!("sending to kernel {} failed", self.name),
            source: Some(Box::new(e)),
        })
    }

    /// Ask the kernel to interrupt what it runs. Does not wait for it to comply.
    pub(crate) async fn interrupt(&self) -> Result<()> {
        match self.interrupt_mode {
            InterruptMode::Message => {
                let (_, frames) = self.signer.request("interrupt_request", json!({}));
                self.send(Channel::Control, frames).await
            }
            InterruptMode::Signal => rustix::process::kill_process(self.process.pid, rustix::process::Signal::INT)
                .map_err(|e| CodeBoxError::io("interrupting the kernel", e.into())),
        }
    }

    /// The cause of death, once the kernel has died.
    pub(crate) fn death(&self) -> watch::Receiver<Option<KernelDeath>> {
        self.death.clone()
    }

    /// Whether the kernel process has exited.
    pub(crate) fn is_dead(&self) -> bool {
        self.death.borrow().is_some()
    }

    pub(crate) fn exit_reason(&self) -> ExitReason {
        match self.exit_reason.load(Ordering::Acquire) {
            1 => ExitReason::TimeoutKill,
            2 => ExitReason::Requested,
            _ => ExitReason::Unexpected,
        }
    }

    /// Kill at once (SIGKILL to the whole process group).
    pub(crate) fn kill(&self, reason: ExitReason) {
        self.exit_reason.store(reason as u8, Ordering::Release);
        self.process.signal_group(rustix::process::Signal::KILL);
    }

    /// Wait until the process has exited.
    pub(crate) async fn wait_dead(&self) -> KernelDeath {
        let mut death = self.death.clone();
        match death.wait_for(Option::is_some).await {
            Ok(d) => d.clone().unwrap_or(KernelDeath::Unknown { detail: "gone".into() }),
            Err(_) => KernelDeath::Unknown { detail: "the kernel's watcher stopped".into() },
        }
    }

    /// Graceful shutdown: `shutdown_request`, then SIGTERM, then SIGKILL.
    pub(crate) async fn shutdown(&self, grace: Duration) {
        self.exit_reason.store(ExitReason::Requested as u8, Ordering::Release);
        if self.is_dead() {
            return;
        }
        let (_, frames) = self.signer.request("shutdown_request", json!({"restart": false}));
        let _ = self.send(Channel::Control, frames).await;
        if tokio::time::timeout(grace, self.wait_dead()).await.is_ok() {
            return;
        }
        self.process.signal_group(rustix::process::Signal::TERM);
        if tokio::time::timeout(grace, self.wait_dead()).await.is_ok() {
            return;
        }
        self.process.signal_group(rustix::process::Signal::KILL);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.wait_dead()).await;
    }

    /// The last lines the kernel wrote to stderr.
    pub(crate) fn stderr_tail(&self) -> String {
        let bytes: Vec<u8> = self.stderr_tail.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().collect();
        String::from_utf8_lossy(&bytes).trim().to_owned()
    }

    /// Whether the kernel process still runs: not reaped, and not a zombie waiting to be.
    pub(crate) fn is_running(&self) -> bool {
        if self.process.reaped.load(Ordering::Acquire) {
            return false;
        }
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // The state follows the command name, which may itself hold ") ".
        stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with(['Z', 'X']))
    }

    /// The kernel's process id.
    pub(crate) fn pid(&self) -> i32 {
        self.process.pid.as_raw_nonzero().get()
    }

    /// The directory of the kernel's sockets and connection file.
    pub(crate) fn runtime_dir(&self) -> &Path {
        self.runtime_dir.path()
    }

    /// How the kernel is confined.
    pub(crate) fn confinement(&self) -> &Arc<Confinement> {
        &self.confinement
    }
}

fn fmt_tail(tail: &str) -> String {
    if tail.is_empty() { String::new() } else { format!("\n--- kernel stderr (last lines) ---\n{tail}") }
}

/// A socket's events; its read loop ends at the disconnect.
type Monitor = futures::channel::mpsc::Receiver<SocketEvent>;

/// Our sockets toward one kernel, each receiving end with its monitor.
struct Sockets {
    shell: (DealerSendHalf, (zeromq::DealerRecvHalf, Monitor)),
    control: (DealerSendHalf, (zeromq::DealerRecvHalf, Monitor)),
    iopub: (zeromq::SubSocket, Monitor),
}

/// What the relays in front of a kernel's sockets need: the message size limit, where to
/// record a message over it, and the process to kill then.
struct RelayGuard {
    limit: u64,
    oversize: Arc<Oversize>,
    process: Arc<Process>,
}

impl RelayGuard {
    /// A relay to the kernel's socket on `port`, listening in `private`.
    async fn relay(
        &self,
        transport: Transport,
        ip: &str,
        port: u16,
        private: &std::path::Path,
    ) -> std::result::Result<crate::relay::Relay, String> {
        let target = match transport {
            Transport::Ipc => Target::Ipc(PathBuf::from(format!("{ip}-{port}"))),
            Transport::Tcp => Target::Tcp(port),
        };
        let process = self.process.clone();
        crate::relay::start(target, private, &port.to_string(), self.limit, self.oversize.clone(), move || {
            process.signal_group(rustix::process::Signal::KILL)
        })
        .await
        .map_err(|e| format!("listening for the kernel's sockets failed: {e}"))
    }
}

async fn connect_all(
    transport: Transport,
    ip: &str,
    ports: &[u16],
    death: &watch::Receiver<Option<KernelDeath>>,
    deadline: Instant,
    guard: &RelayGuard,
) -> std::result::Result<(Sockets, Vec<JoinHandle<()>>), String> {
    let mut death = death.clone();
    let work = async {
        if transport == Transport::Ipc {
            // Wait for the kernel to bind its sockets; the library's own retry backs off too slowly.
            let paths: Vec<PathBuf> =
                [ports[0], ports[1], ports[3]].iter().map(|p| PathBuf::from(format!("{ip}-{p}"))).collect();
            while !paths.iter().all(|p| p.exists()) {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        // Our sockets reach the kernel through relays that bound the size of one message
        // (see `relay`); their listeners live in a private directory only until we connected.
        let private = tempfile::Builder::new()
            .prefix("cbk-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir_in(runtime_base())
            .map_err(|e| format!("creating a private socket directory failed: {e}"))?;
        std::fs::write(private.path().join(OWNER_FILE), owner_tag())
            .map_err(|e| format!("writing the owner file failed: {e}"))?;
        let mut relays = crate::relay::Relays::default();
        let iopub_relay = guard.relay(transport, ip, ports[1], private.path()).await?;
        let shell_relay = guard.relay(transport, ip, ports[0], private.path()).await?;
        let control_relay = guard.relay(transport, ip, ports[3], private.path()).await?;
        let (iopub_ep, shell_ep, control_ep) =
            (iopub_relay.endpoint.clone(), shell_relay.endpoint.clone(), control_relay.endpoint.clone());
        for task in [iopub_relay.task, shell_relay.task, control_relay.task] {
            relays.push(task);
        }
        let connected = async {
            // Monitors first: a disconnect is reported to them, and it is the only sign a
            // socket gives that its peer is gone.
            let mut iopub = zeromq::SubSocket::new();
            let iopub_events = iopub.monitor();
            iopub.connect(&iopub_ep).await.map_err(|e| format!("connecting to IOPub failed: {e}"))?;
            iopub.subscribe("").await.map_err(|e| format!("subscribing to IOPub failed: {e}"))?;
            let mut shell = zeromq::DealerSocket::new();
            let shell_events = shell.monitor();
            shell.connect(&shell_ep).await.map_err(|e| format!("connecting to the shell failed: {e}"))?;
            let mut control = zeromq::DealerSocket::new();
            let control_events = control.monitor();
            control.connect(&control_ep).await.map_err(|e| format!("connecting to control failed: {e}"))?;
            let (shell_tx, shell_rx) = shell.split();
            let (control_tx, control_rx) = control.split();
            Ok::<_, String>(Sockets {
                shell: (shell_tx, (shell_rx, shell_events)),
                control: (control_tx, (control_rx, control_events)),
                iopub: (iopub, iopub_events),
            })
        }
        .await;
        // On failure (or when the deadline drops this future) the relays are aborted.
        connected.map(|sockets| (sockets, relays.into_tasks()))
    };
    tokio::select! {
        r = work => r,
        cause = death.wait_for(Option::is_some) => {
            let cause = cause.ok().and_then(|c| c.clone()).map(|c| c.to_string()).unwrap_or_default();
            Err(format!("the kernel {cause} before it was ready"))
        }
        _ = tokio::time::sleep_until(deadline) => Err("the kernel did not open its sockets in time".to_owned()),
    }
}

/// Route what arrives on `socket` until its peer disconnects; the socket is dropped (closed,
/// its reconnect task stopped) on return.
async fn read_loop(
    mut socket: impl SocketRecv,
    mut events: Monitor,
    signer: Signer,
    routes: Arc<Routes>,
    channel: Channel,
) {
    loop {
        tokio::select! {
            // Messages first: the disconnect is reported only after the peer's last message
            // was received.
            biased;
            received = socket.recv() => match received {
                Ok(msg) => match signer.parse(&msg.into_vec()) {
                    Ok(m) => routes.dispatch(channel, m).await,
                    Err(e) => tracing::warn!(?channel, "dropping a kernel message: {e}"),
                },
                Err(e) => {
                    tracing::debug!(?channel, "kernel socket closed: {e}");
                    return;
                }
            },
            event = events.next() => match event {
                Some(SocketEvent::Disconnected(_)) | None => {
                    tracing::debug!(?channel, "the kernel's end of the channel is gone");
                    return;
                }
                Some(_) => {}
            },
        }
    }
}

/// Keep a kernel's links (relays and read loops) no longer than the kernel: when it dies,
/// let the read loops take what it sent before it went, then end whatever is left and close
/// our sockets. When a link ends while the process runs, the kernel cannot be reached on
/// that channel any more: unless it exits by itself, it is recycled.
async fn supervise_links(
    mut links: Tasks,
    death: watch::Receiver<Option<KernelDeath>>,
    process: Arc<Process>,
    link_lost: Arc<AtomicBool>,
    senders: Arc<Senders>,
) {
    // An error too means the kernel is gone: its watcher was dropped with it.
    let dead = || {
        let mut death = death.clone();
        async move {
            let _ = death.wait_for(Option::is_some).await;
        }
    };
    let link_ended = tokio::select! {
        () = dead() => false,
        () = links.one_ends() => true,
    };
    if link_ended && tokio::time::timeout(LINK_GRACE, dead()).await.is_err() {
        tracing::warn!(
            pid = process.pid.as_raw_nonzero().get(),
            "a channel to the kernel closed while it runs; recycling the kernel"
        );
        link_lost.store(true, Ordering::Release);
        process.signal_group(rustix::process::Signal::KILL);
    }
    let _ = tokio::time::timeout(LINK_GRACE, links.all_end()).await;
    drop(links);
    senders.close().await;
}

#[allow(unsafe_code)]
fn register(pidfd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: `pidfd` is an open descriptor owned by the AsyncFd for its whole life; it is
    // neither closed nor replaced while registered.
    unsafe { AsyncFd::register(pidfd) }.map_err(|e| e.into_parts().1)
}

/// What tells why a kernel died, besides its exit status.
struct Cause {
    /// A message over `max_message` tripped a relay, which killed the kernel.
    oversize: Arc<Oversize>,
    max_message: u64,
    /// A channel closed while the kernel ran, and the links supervisor killed it.
    link_lost: Arc<AtomicBool>,
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
    let c = confinement.clone();
    let _ = tokio::task::spawn_blocking(move || c.kill_all()).await;
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

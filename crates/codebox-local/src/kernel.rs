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

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use codebox_core::{CodeBoxError, KernelDeath, Result};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use zeromq::{SocketSend, ZmqMessage};

use crate::kernelspec::{InterruptMode, LaunchSpec, Transport};
use crate::protocol::Signer;
use crate::relay::Oversize;
use crate::util::random_hex;
use codebox_sandbox::rmtree::OwnedDir;
use codebox_sandbox::{Confinement, IsolationLevel};
use codebox_sandbox::{NetProxy, proxy_env};

mod channels;
mod forked;
mod process;

pub(crate) use channels::{Channel, Request, Routed};
use channels::{Endpoints, RelayGuard, Routes, Senders};
pub(crate) use process::ExitReason;
use process::{Cause, Process, Watched};

/// Why a spawned kernel did not become ready.
#[derive(Debug, thiserror::Error)]
enum NotReady {
    #[error("the kernel {cause} before it was ready")]
    Died { cause: String },
    #[error("the kernel did not open its sockets in time")]
    SocketsTimedOut,
    #[error("the kernel did not answer kernel_info within {0:?}")]
    NoKernelInfo(Duration),
    #[error("the kernel's IOPub channel never delivered a message")]
    IoPubSilent,
    #[error("sending kernel_info_request failed: {0}")]
    KernelInfoRequest(#[source] CodeBoxError),
    #[error("{what} failed: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed: {source}")]
    Zmq {
        what: &'static str,
        #[source]
        source: zeromq::ZmqError,
    },
}

impl NotReady {
    fn died(cause: Option<KernelDeath>) -> Self {
        Self::Died { cause: cause.map(|c| c.to_string()).unwrap_or_default() }
    }
}

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
    /// Interrupts sent so far (see [`Kernel::interrupts_sent`]).
    interrupts: AtomicU64,
    confinement: Arc<Confinement>,
    /// The allowlist proxy of a box with one; it lives and dies with this kernel.
    _net_proxy: Option<NetProxy>,
    /// Removed without recursion: under Landlock the box's TMPDIR and HOME are in it.
    runtime_dir: codebox_sandbox::rmtree::OwnedDir,
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

fn start_error(message: impl Into<String>) -> CodeBoxError {
    CodeBoxError::kernel_start(message)
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
        Self::start_with(spec, confinement, true).await
    }

    /// Like [`start`](Self::start), for a kernel that shares its confinement with the box's
    /// own kernel (a code context's): when it dies, only its own process group goes with it,
    /// not everything else in the confinement (the box's kernel and its other contexts).
    pub(crate) async fn start_sharing(spec: &LaunchSpec, confinement: Arc<Confinement>) -> Result<Arc<Kernel>> {
        Self::start_with(spec, confinement, false).await
    }

    async fn start_with(
        spec: &LaunchSpec,
        confinement: Arc<Confinement>,
        owns_confinement: bool,
    ) -> Result<Arc<Kernel>> {
        let started = Instant::now();
        // Deno's kernel speaks only TCP, and under Landlock a box without network may make
        // no IP socket, not even on loopback.
        if spec.name == crate::kernelspec::DENO_KERNEL && confinement.level() == IsolationLevel::Landlock {
            return Err(start_error(
                "the deno kernel cannot run under Landlock (Deno's Jupyter kernel needs loopback TCP, \
                 which Landlock's seccomp filter forbids): use bubblewrap or no isolation",
            ));
        }
        // Off the async threads: a dead owner's directories may hold trees of any size.
        let scratch_dir = spec.scratch_dir.clone();
        let _ = tokio::task::spawn_blocking(move || crate::workdir::remove_stale_runtime_dirs_once(&scratch_dir)).await;
        let spec = &fit_to(spec, &confinement);
        let runtime_dir = crate::workdir::new_runtime_dir(&spec.scratch_dir)
            .map(OwnedDir::adopt)
            .map_err(|e| CodeBoxError::io("creating the kernel's runtime directory", e))?;
        confinement.adopt_run_dir(runtime_dir.path())?;
        let mut env = spec.env.clone();
        let net_proxy = confinement.start_net_proxy(runtime_dir.path())?;
        if let Some(proxy) = &net_proxy {
            env.extend(proxy_env(proxy.socket()));
        }
        let key = random_hex(32);
        let (endpoints, conn_file) = write_connection_file(spec, runtime_dir.path(), &key)?;
        let spawned = spawn_kernel(spec, &conn_file, &env, &confinement, runtime_dir.path()).await?;

        let max_message = spec.sandbox.limits.max_message;
        let oversize = Arc::new(Oversize::default());
        let link_lost = Arc::new(AtomicBool::new(false));
        let why = Cause { oversize: oversize.clone(), max_message, link_lost: link_lost.clone(), owns_confinement };
        let Watched { process, death, stderr_tail, mut tasks } = match spawned {
            Spawned::Executed(child) => Watched::start(child, confinement.clone(), why)?,
            Spawned::Forked(f) => Watched::start_forked(f, confinement.clone(), why)?,
        };

        let deadline = started + spec.start_timeout;
        let guard = RelayGuard { limit: max_message, oversize, process: process.clone() };
        let (sockets, relays) =
            match channels::connect_all(&endpoints, &spec.scratch_dir, &death, deadline, &guard).await {
                Ok(connected) => connected,
                Err(e) => {
                    let tail = abandon(tasks, &process, &stderr_tail).await;
                    return Err(start_error(format!("{e}{}", fmt_tail(&tail))));
                }
            };
        let signer = Signer::new(&key, random_hex(16));
        let routes = Arc::new(Routes::default());
        let (links, senders) = channels::start_links(sockets, relays, &signer, &routes);
        tasks.push(tokio::spawn(channels::supervise_links(
            links,
            death.clone(),
            process.clone(),
            link_lost,
            senders.clone(),
        )));

        let kernel = Kernel {
            name: spec.name.clone(),
            signer,
            senders,
            routes,
            death,
            process,
            stderr_tail,
            tasks,
            interrupt_mode: spec.interrupt_mode,
            exit_reason: AtomicU8::new(ExitReason::Unexpected as u8),
            interrupts: AtomicU64::new(0),
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

    async fn wait_ready(&self, deadline: Instant, limit: Duration) -> std::result::Result<(), NotReady> {
        let mut death = self.death.clone();
        loop {
            let mut req = self
                .request(Channel::Shell, "kernel_info_request", json!({}), 4)
                .await
                .map_err(NotReady::KernelInfoRequest)?;
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
                    return Err(NotReady::died(cause.ok().and_then(|c| c.clone())));
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(NotReady::NoKernelInfo(limit));
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
                return Err(NotReady::IoPubSilent);
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
            return Err(CodeBoxError::connection(format!("the connection to kernel {} is closed", self.name)));
        };
        sender
            .send(msg)
            .await
            .map_err(|e| CodeBoxError::connection(format!("sending to kernel {} failed", self.name)).with_source(e))
    }

    /// Whether the kernel may publish an execution's outputs after its `idle` status
    /// (Deno's does), so that an execution must collect them with a marker request.
    pub(crate) fn outputs_trail_idle(&self) -> bool {
        self.name == crate::kernelspec::DENO_KERNEL
    }

    /// Whether an execution this kernel was asked to interrupt ends with a plain error reply
    /// rather than a `KeyboardInterrupt` (Deno's does).
    pub(crate) fn interrupt_is_plain_error(&self) -> bool {
        self.name == crate::kernelspec::DENO_KERNEL
    }

    /// How many interrupts the kernel has been sent: an execution compares the count at its
    /// start and end to know whether it was interrupted.
    pub(crate) fn interrupts_sent(&self) -> u64 {
        self.interrupts.load(Ordering::Acquire)
    }

    /// Ask the kernel to interrupt what it runs. Does not wait for it to comply.
    pub(crate) async fn interrupt(&self) -> Result<()> {
        self.interrupts.fetch_add(1, Ordering::AcqRel);
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

    /// Whether the kernel was forked from the fork server rather than executed.
    pub(crate) fn forked(&self) -> bool {
        self.process.holder.is_some()
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

/// `spec` as it runs under `confinement`: IPC under bubblewrap and Landlock (under Landlock
/// a kernel without network cannot make IP sockets at all: seccomp), else TCP where Unix
/// sockets cannot be made; interrupts by message under bubblewrap.
fn fit_to(spec: &LaunchSpec, confinement: &Confinement) -> LaunchSpec {
    let sandboxed = confinement.level() == IsolationLevel::Bubblewrap;
    let ipc_only = sandboxed || confinement.level() == IsolationLevel::Landlock;
    let transport = match spec.transport {
        _ if ipc_only => Transport::Ipc,
        Transport::Ipc if !crate::kernelspec::ipc_works(&spec.scratch_dir) => Transport::Tcp,
        chosen => chosen,
    };
    LaunchSpec {
        transport,
        interrupt_mode: if sandboxed { InterruptMode::Message } else { spec.interrupt_mode },
        ..spec.clone()
    }
}

/// Choose the kernel's endpoints and write its connection file (with the signing `key`)
/// into `runtime_dir`.
fn write_connection_file(spec: &LaunchSpec, runtime_dir: &Path, key: &str) -> Result<(Endpoints, PathBuf)> {
    let (transport, ip, ports) = match spec.transport {
        Transport::Ipc => ("ipc", runtime_dir.join("k").to_string_lossy().into_owned(), vec![1, 2, 3, 4, 5]),
        Transport::Tcp => (
            "tcp",
            "127.0.0.1".to_owned(),
            channels::free_tcp_ports(5).map_err(|e| CodeBoxError::io("choosing kernel ports", e))?,
        ),
    };
    let conn = json!({
        "transport": transport, "ip": ip,
        "shell_port": ports[0], "iopub_port": ports[1], "stdin_port": ports[2],
        "control_port": ports[3], "hb_port": ports[4],
        "key": key, "signature_scheme": "hmac-sha256", "kernel_name": spec.name,
    });
    let conn_file = runtime_dir.join("connection.json");
    std::fs::write(&conn_file, serde_json::to_vec(&conn).expect("JSON serializes"))
        .map_err(|e| CodeBoxError::io("writing the connection file", e))?;
    Ok((Endpoints { transport: spec.transport, ip, ports }, conn_file))
}

/// A started kernel process.
enum Spawned {
    Executed(std::process::Child),
    Forked(forked::Forked),
}

/// Fork the kernel into its box where it can be, else execute it.
async fn spawn_kernel(
    spec: &LaunchSpec,
    conn_file: &Path,
    env: &[(String, String)],
    confinement: &Arc<Confinement>,
    runtime_dir: &Path,
) -> Result<Spawned> {
    if let Some(python) = forked::forkable(spec, confinement, env) {
        let (python, spec, conn_file, env, confinement, runtime_dir) = (
            python.to_owned(),
            spec.clone(),
            conn_file.to_owned(),
            env.to_vec(),
            confinement.clone(),
            runtime_dir.to_owned(),
        );
        let started = tokio::task::spawn_blocking(move || {
            forked::start(&python, &spec, &conn_file, &env, &confinement, &runtime_dir)
        })
        .await
        .map_err(|e| start_error(format!("the fork task failed: {e}")))?;
        match started {
            Ok(f) => return Ok(Spawned::Forked(f)),
            Err(e) => tracing::warn!(error = %e, "the kernel could not be forked; starting a Python for it instead"),
        }
    }
    spawn_process(spec, conn_file, env, confinement, runtime_dir).await.map(Spawned::Executed)
}

/// Spawn the kernel's command line, confined, from the spawner thread.
async fn spawn_process(
    spec: &LaunchSpec,
    conn_file: &Path,
    env: &[(String, String)],
    confinement: &Confinement,
    runtime_dir: &Path,
) -> Result<std::process::Child> {
    let argv: Vec<String> =
        spec.argv.iter().map(|a| a.replace("{connection_file}", &conn_file.to_string_lossy())).collect();
    let Some(program) = argv.first().cloned() else {
        return Err(start_error(format!("kernel {:?} has an empty command line", spec.name)));
    };
    let prepared = confinement.prepare(&argv, env, None, None, Some(runtime_dir))?;
    let mut cmd = prepared.command;
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let spawned = tokio::task::spawn_blocking(move || crate::spawn::spawn(cmd))
        .await
        .map_err(|e| start_error(format!("the spawn task failed: {e}")))?;
    drop(prepared.guard);
    let child = spawned.map_err(|e| start_error(format!("could not run {program}: {e}")))?;
    tracing::debug!(kernel = %spec.name, pid = child.id(), "kernel spawned");
    Ok(child)
}

/// Give up on a kernel that did not connect: kill it, stop its watchers and return the last
/// lines it wrote to stderr.
async fn abandon(tasks: Vec<JoinHandle<()>>, process: &Process, stderr_tail: &Mutex<VecDeque<u8>>) -> String {
    process.signal_group(rustix::process::Signal::KILL);
    // Let the last stderr lines arrive.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for t in &tasks {
        t.abort();
    }
    if let Some(c) = process.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
        crate::spawn::reap(c);
    }
    process::tail_text(stderr_tail)
}

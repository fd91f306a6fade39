//! The ZeroMQ side of a kernel: our sockets to its shell, control and IOPub channels (each
//! behind a relay that bounds one message), the read loops that route what arrives to the
//! request it answers, and the supervisor that keeps these links no longer than the kernel.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use codebox_core::KernelDeath;
use futures::StreamExt;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use zeromq::{DealerSendHalf, Socket, SocketEvent, SocketRecv};

use super::NotReady;
use super::process::Process;
use crate::kernelspec::Transport;
use crate::protocol::{Incoming, Signer};
use crate::relay::{Oversize, Target};

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
pub(super) struct Routes {
    pub(super) map: Mutex<HashMap<String, mpsc::Sender<Routed>>>,
    pub(super) iopub_seen: AtomicBool,
    pub(super) iopub_notify: Notify,
}

impl Routes {
    pub(super) async fn dispatch(&self, channel: Channel, msg: Incoming) {
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
    pub(super) routes: Arc<Routes>,
}

impl Drop for Request {
    fn drop(&mut self) {
        self.routes.map.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
    }
}

/// Our sending halves of the kernel's shell and control sockets, taken (closed) when the
/// kernel is gone.
pub(super) struct Senders {
    pub(super) shell: tokio::sync::Mutex<Option<DealerSendHalf>>,
    pub(super) control: tokio::sync::Mutex<Option<DealerSendHalf>>,
}

impl Senders {
    pub(super) async fn close(&self) {
        drop(self.shell.lock().await.take());
        drop(self.control.lock().await.take());
    }
}

/// Tasks that are aborted when this is dropped.
#[derive(Default)]
pub(super) struct Tasks(pub(super) Vec<JoinHandle<()>>);

impl Tasks {
    /// Wait until one of the tasks ends (forever when there are none), and forget it.
    pub(super) async fn one_ends(&mut self) {
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

/// A socket's events; its read loop ends at the disconnect.
pub(super) type Monitor = futures::channel::mpsc::Receiver<SocketEvent>;

/// Our sockets toward one kernel, each receiving end with its monitor.
pub(super) struct Sockets {
    pub(super) shell: (DealerSendHalf, (zeromq::DealerRecvHalf, Monitor)),
    pub(super) control: (DealerSendHalf, (zeromq::DealerRecvHalf, Monitor)),
    pub(super) iopub: (zeromq::SubSocket, Monitor),
}

/// What the relays in front of a kernel's sockets need: the message size limit, where to
/// record a message over it, and the process to kill then.
pub(super) struct RelayGuard {
    pub(super) limit: u64,
    pub(super) oversize: Arc<Oversize>,
    pub(super) process: Arc<Process>,
}

impl RelayGuard {
    /// A relay to the kernel's socket on `port`, listening in `private`.
    async fn relay(&self, at: &Endpoints, port: u16, private: &Path) -> Result<crate::relay::Relay, NotReady> {
        let (transport, ip) = (at.transport, &at.ip);
        let target = match transport {
            Transport::Ipc => Target::Ipc(PathBuf::from(format!("{ip}-{port}"))),
            Transport::Tcp => Target::Tcp(port),
        };
        let process = self.process.clone();
        crate::relay::start(target, private, &port.to_string(), self.limit, self.oversize.clone(), move || {
            process.signal_group(rustix::process::Signal::KILL)
        })
        .await
        .map_err(|source| NotReady::Io { what: "listening for the kernel's sockets", source })
    }
}

/// Where a kernel's sockets are, as its connection file says.
pub(super) struct Endpoints {
    pub(super) transport: Transport,
    /// The IP address, or the path prefix of IPC sockets.
    pub(super) ip: String,
    /// Shell, IOPub, stdin, control and heartbeat.
    pub(super) ports: Vec<u16>,
}

/// Connect our sockets to the kernel's shell, IOPub and control channels through relays
/// listening in a private directory under `scratch_dir`, once the kernel made its sockets;
/// returns them with the relays' tasks.
pub(super) async fn connect_all(
    at: &Endpoints,
    scratch_dir: &Path,
    death: &watch::Receiver<Option<KernelDeath>>,
    deadline: Instant,
    guard: &RelayGuard,
) -> Result<(Sockets, Vec<JoinHandle<()>>), NotReady> {
    let (transport, ip, ports) = (at.transport, &at.ip, &at.ports);
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
        let private = crate::workdir::new_runtime_dir(scratch_dir)
            .map_err(|source| NotReady::Io { what: "creating a private socket directory", source })?;
        let mut relays = crate::relay::Relays::default();
        let iopub_relay = guard.relay(at, ports[1], private.path()).await?;
        let shell_relay = guard.relay(at, ports[0], private.path()).await?;
        let control_relay = guard.relay(at, ports[3], private.path()).await?;
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
            iopub.connect(&iopub_ep).await.map_err(|source| NotReady::Zmq { what: "connecting to IOPub", source })?;
            iopub.subscribe("").await.map_err(|source| NotReady::Zmq { what: "subscribing to IOPub", source })?;
            let mut shell = zeromq::DealerSocket::new();
            let shell_events = shell.monitor();
            shell
                .connect(&shell_ep)
                .await
                .map_err(|source| NotReady::Zmq { what: "connecting to the shell", source })?;
            let mut control = zeromq::DealerSocket::new();
            let control_events = control.monitor();
            control
                .connect(&control_ep)
                .await
                .map_err(|source| NotReady::Zmq { what: "connecting to control", source })?;
            let (shell_tx, shell_rx) = shell.split();
            let (control_tx, control_rx) = control.split();
            Ok::<_, NotReady>(Sockets {
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
            Err(NotReady::died(cause.ok().and_then(|c| c.clone())))
        }
        _ = tokio::time::sleep_until(deadline) => Err(NotReady::SocketsTimedOut),
    }
}

/// Route what arrives on `socket` until its peer disconnects; the socket is dropped (closed,
/// its reconnect task stopped) on return.
pub(super) async fn read_loop(
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
pub(super) async fn supervise_links(
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

pub(super) fn free_tcp_ports(n: usize) -> std::io::Result<Vec<u16>> {
    // Bind them all at once so they differ, then release them for the kernel.
    let listeners: Vec<_> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<std::io::Result<_>>()?;
    listeners.iter().map(|l| l.local_addr().map(|a| a.port())).collect()
}

/// Start the read loops of our sockets, which route what arrives through `routes`; returns
/// the links (read loops and `relays`) and our sending halves.
pub(super) fn start_links(
    sockets: Sockets,
    relays: Vec<JoinHandle<()>>,
    signer: &Signer,
    routes: &Arc<Routes>,
) -> (Tasks, Arc<Senders>) {
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
    (links, senders)
}

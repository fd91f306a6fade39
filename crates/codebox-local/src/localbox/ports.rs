//! `connect_port`: a TCP connection to a program listening in the box, on the box's own
//! loopback.
//!
//! Where the box's loopback is depends on its confinement:
//! - bubblewrap without host network: a private network namespace per kernel (a `bash` cell
//!   or a command runs in a sandbox of its own, and ends with its call). The box's own kernel's
//!   is tried first, then each code context's, and the first with a listener on the port is
//!   used. codebox-sandbox's `BoxNamespace` enters one on a thread of its own and connects there.
//! - the host network (the `none` level, or a box given network): the box's loopback is this
//!   machine's, where the host's own services listen too. Only a listener owned by the box's
//!   uid (its session uid, else the uid it runs as, ours) is connected to, so the route can
//!   never reach a service the box could not already reach as itself: a box with a uid of its
//!   own gets nothing of another uid's. docs/security.md says the same.
//! - Landlock without network: seccomp refuses the box IP sockets, so nothing in it can
//!   listen on a port: `ports` is false and the call is `Unsupported`, saying why.

use std::sync::Arc;

use codebox_core::{CodeBoxError, PortStream, Result, check_port};
use codebox_sandbox::{BoxNamespace, IsolationLevel, PortConnectError, check_listener_owner, connect_loopback};
use tokio_util::compat::TokioAsyncReadCompatExt;

use super::supervisor::Inner;

/// Why a Landlock box without network has no ports.
const LANDLOCK_NO_NETWORK: &str = "connect_port: a box at the Landlock isolation level without network cannot \
                                   listen on a port (its seccomp filter refuses IP sockets); give the box network, \
                                   or run it under bubblewrap, whose private network namespace it may listen in";

/// Whether the box's programs can listen on ports that `connect_port` reaches: all but a
/// Landlock box without network. Before the box starts, the level its policy would get.
pub(super) fn available(inner: &Inner) -> bool {
    let level = inner.snapshot().isolation.or_else(|| inner.config.sandbox.level().ok());
    level != Some(IsolationLevel::Landlock) || inner.config.sandbox.network
}

/// Connect to `port` on the box's loopback.
pub(super) async fn connect_port(inner: &Arc<Inner>, port: u16) -> Result<PortStream> {
    let port = check_port(port.into())?;
    let h = inner.running().await?;
    let confinement = h.confinement.clone();
    if confinement.level() == IsolationLevel::Landlock && !confinement.has_host_network() {
        return Err(CodeBoxError::unsupported(LANDLOCK_NO_NETWORK));
    }
    let stream = if confinement.has_host_network() {
        // Our loopback: only a listener of the box's own uid (see the module docs).
        let uid = confinement.uid().unwrap_or_else(|| rustix::process::geteuid().as_raw());
        tokio::task::spawn_blocking(move || {
            check_listener_owner(port, uid)?;
            connect_loopback(port)
        })
        .await
        .map_err(|e| CodeBoxError::connection(format!("connecting to port {port} of the box: {e}")))?
    } else {
        let mut kernels = vec![h.kernel.pid()];
        kernels.extend(inner.contexts.kernel_pids().await);
        connect_in_kernels(kernels, port).await
    }
    .map_err(|e| port_error(port, e))?;
    stream.set_nonblocking(true).map_err(|e| CodeBoxError::io("making the port's socket non-blocking", e))?;
    let stream = tokio::net::TcpStream::from_std(stream)
        .map_err(|e| CodeBoxError::io("registering the port's socket with the runtime", e))?;
    // Small writes (a WebSocket frame, a prompt) go out at once.
    let _ = stream.set_nodelay(true);
    Ok(Box::pin(stream.compat()))
}

/// Connect to `port` in the network namespace of the first of `kernels` (process ids of the
/// box's kernels, its own first) where something listens on it.
async fn connect_in_kernels(
    kernels: Vec<i32>,
    port: u16,
) -> std::result::Result<std::net::TcpStream, PortConnectError> {
    let mut not_listening = PortConnectError::NotListening { port };
    for pid in kernels {
        let namespace = tokio::task::spawn_blocking(move || BoxNamespace::of_process_tree(pid))
            .await
            .map_err(|e| PortConnectError::Io {
                context: "finding the box's network namespace",
                source: std::io::Error::other(e.to_string()),
            })??
            // A kernel without host network whose processes all share ours would make its
            // "loopback" the host's: refuse rather than connect there.
            .ok_or(PortConnectError::NoNamespace)?;
        match namespace.connect(port).await {
            Err(e @ PortConnectError::NotListening { .. }) => not_listening = e,
            done => return done,
        }
    }
    Err(not_listening)
}

/// A port failure as the box's error: nothing (of the box's) listening is `Connection`,
/// which a server answers with 502.
fn port_error(port: u16, e: PortConnectError) -> CodeBoxError {
    match e {
        PortConnectError::NotPermitted(_) => CodeBoxError::unsupported(format!("connect_port: {e}")),
        e => CodeBoxError::connection(format!("port {port} of the box: {e}")),
    }
}

//! Reaching a TCP port of a box from this process.
//!
//! A bubblewrap box without host network has a private network namespace: its loopback is
//! not ours. [`BoxNamespace::of_process_tree`] finds a process of the box inside that
//! namespace (the pid codebox holds is bubblewrap's own, which stays outside it) and opens
//! its `/proc/<pid>/ns/net`; [`BoxNamespace::connect`] enters it on a short-lived thread of
//! its own (never an async worker: a thread's namespace is its own, and a worker would carry
//! it into every task it runs), makes and connects the socket there and hands it back. A
//! socket stays in the namespace it was made in, so the stream reaches the box's loopback
//! from any thread afterwards.
//!
//! A box that shares this machine's network is another matter: its loopback is ours, where
//! the host's own services listen. [`loopback_listeners`] reads who owns the listening
//! sockets of a port (`/proc/net/tcp` and `tcp6`), so a caller can allow only a listener
//! owned by the box's uid.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

/// How long connecting on the box's loopback may take: it answers at once or refuses, unless
/// the box's listener has a full backlog.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How deep below the box's first process the search for one in its namespace goes.
const MAX_DEPTH: usize = 4;

/// Why a port of a box could not be reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PortConnectError {
    /// No process of the box is in a network namespace other than ours.
    #[error("no process of the box runs in a network namespace of its own (is the box running?)")]
    NoNamespace,
    /// This process may not enter the box's network namespace (`setns` needs
    /// `CAP_SYS_ADMIN`; a server running as root has it).
    #[error("entering the box's network namespace is not permitted to this process (it needs CAP_SYS_ADMIN): {0}")]
    NotPermitted(#[source] io::Error),
    /// Nothing listens on the port.
    #[error("nothing in the box listens on port {port} (on 127.0.0.1 or ::1)")]
    NotListening {
        /// The port.
        port: u16,
    },
    /// On a loopback the box shares with this machine, the port's listener is not the box's.
    #[error(
        "port {port} is not the box's: the box shares this machine's network, and only a listener owned by \
         the box's uid {uid} may be reached there (owners found: {owners:?})"
    )]
    NotTheBoxs {
        /// The port.
        port: u16,
        /// The box's uid.
        uid: u32,
        /// The uids of the port's listeners.
        owners: Vec<u32>,
    },
    /// Another I/O failure.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

fn io_error(context: &'static str) -> impl FnOnce(io::Error) -> PortConnectError {
    move |source| PortConnectError::Io { context, source }
}

/// The network namespace of a box, held open by a descriptor of `/proc/<pid>/ns/net`.
#[derive(Debug)]
pub struct BoxNamespace {
    ns: File,
}

/// The (device, inode) naming a namespace.
fn namespace_id(file: &File) -> io::Result<(u64, u64)> {
    let meta = file.metadata()?;
    Ok((meta.dev(), meta.ino()))
}

/// The children of every process in `parents`, each with its parent, by one pass over `/proc`.
fn children_of(parents: &[i32]) -> Vec<(i32, Option<i32>)> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut children: Vec<(i32, Option<i32>)> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| crate::proctree::parent_of(pid).filter(|p| parents.contains(p)).map(|p| (pid, Some(p))))
        .collect();
    children.sort_unstable();
    children
}

impl BoxNamespace {
    /// The network namespace of the box whose first process is `root_pid` (a kernel codebox
    /// started, which it has not reaped): `root_pid`'s own when that differs from ours, else
    /// that of the nearest descendant whose differs. `Ok(None)` when the whole tree shares
    /// ours, which a box with host network does.
    pub fn of_process_tree(root_pid: i32) -> Result<Option<Self>, PortConnectError> {
        let ours = File::open("/proc/thread-self/ns/net").map_err(io_error("opening our own network namespace"))?;
        let ours = namespace_id(&ours).map_err(io_error("reading our own network namespace"))?;
        // Each process of the search with the parent it was found under.
        let mut level: Vec<(i32, Option<i32>)> = vec![(root_pid, None)];
        for _ in 0..=MAX_DEPTH {
            for &(pid, parent) in &level {
                let Ok(ns) = File::open(format!("/proc/{pid}/ns/net")) else { continue };
                let Ok(id) = namespace_id(&ns) else { continue };
                // The descriptor holds the namespace from here on; a pid checked again after
                // opening cannot have been reused by a process outside the tree in between.
                let still_in_tree = parent.is_none_or(|p| crate::proctree::parent_of(pid) == Some(p));
                if id != ours && still_in_tree {
                    return Ok(Some(Self { ns }));
                }
            }
            let parents: Vec<i32> = level.iter().map(|(pid, _)| *pid).collect();
            level = children_of(&parents);
            if level.is_empty() {
                break;
            }
        }
        Ok(None)
    }

    /// Connect to `port` on the namespace's loopback (127.0.0.1, else ::1), from a thread
    /// that enters the namespace and ends with the connection made.
    pub async fn connect(self, port: u16) -> Result<TcpStream, PortConnectError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("codebox-netns".into())
            .spawn(move || {
                let result = move_into_link_name_space(self.ns.as_fd(), Some(LinkNameSpaceType::Network))
                    .map_err(|e| match e {
                        rustix::io::Errno::PERM => PortConnectError::NotPermitted(e.into()),
                        e => PortConnectError::Io { context: "entering the box's network namespace", source: e.into() },
                    })
                    .and_then(|()| connect_loopback(port));
                // The thread ends here, its namespace with it; a dropped receiver (the caller
                // gave up) only drops the stream.
                let _ = tx.send(result);
            })
            .map_err(io_error("starting a thread to enter the box's network namespace"))?;
        rx.await.map_err(|_| PortConnectError::Io {
            context: "entering the box's network namespace",
            source: io::Error::other("the thread ended without an answer"),
        })?
    }
}

/// Connect to `port` on this thread's loopback: 127.0.0.1, else ::1 (a listener bound to
/// IPv6 only). Refused on both is [`PortConnectError::NotListening`].
pub fn connect_loopback(port: u16) -> Result<TcpStream, PortConnectError> {
    let mut last = None;
    for ip in [SocketAddr::from((Ipv4Addr::LOCALHOST, port)), SocketAddr::from((Ipv6Addr::LOCALHOST, port))] {
        match TcpStream::connect_timeout(&ip, CONNECT_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            // No ::1 at all (a namespace whose loopback has only IPv4) says nothing listens.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::AddrNotAvailable | io::ErrorKind::Unsupported
                ) || e.raw_os_error() == Some(rustix::io::Errno::NETUNREACH.raw_os_error()) =>
            {
                last = Some(e);
            }
            Err(source) => return Err(PortConnectError::Io { context: "connecting on the box's loopback", source }),
        }
    }
    drop(last);
    Err(PortConnectError::NotListening { port })
}

/// The uids owning the listening TCP sockets of `port` in this process's network namespace,
/// on any address, IPv4 and IPv6 (from `/proc/net/tcp` and `/proc/net/tcp6`).
pub fn loopback_listeners(port: u16) -> Result<Vec<u32>, PortConnectError> {
    let mut owners = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = match std::fs::read_to_string(table) {
            Ok(t) => t,
            // A kernel without IPv6 has no tcp6 table.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(PortConnectError::Io { context: "reading the listening sockets", source }),
        };
        owners.extend(listeners_in_table(&text, port));
    }
    owners.sort_unstable();
    owners.dedup();
    Ok(owners)
}

/// The uids of the `LISTEN` (state `0A`) lines of a `/proc/net/tcp{,6}` table on `port`.
fn listeners_in_table(text: &str, port: u16) -> Vec<u32> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let state = fields.get(3)?;
            let uid = fields.get(7)?;
            let local_port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            (local_port == port && *state == "0A").then(|| uid.parse().ok()).flatten()
        })
        .collect()
}

/// Check that every listener of `port` on the loopback this process shares with a box is
/// owned by the box's `uid`, and that there is one.
pub fn check_listener_owner(port: u16, uid: u32) -> Result<(), PortConnectError> {
    let owners = loopback_listeners(port)?;
    if owners.is_empty() {
        return Err(PortConnectError::NotListening { port });
    }
    if owners.iter().any(|o| *o != uid) {
        return Err(PortConnectError::NotTheBoxs { port, uid, owners });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1 0 100 0 0 10 0
   1: 00000000:1F41 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
   2: 0100007F:1F40 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  4242        0 3 1 0 100 0 0 10 0
";

    #[test]
    fn listeners_are_read_by_port_and_state() {
        assert_eq!(listeners_in_table(TCP, 8000), [1000], "the established line is not a listener");
        assert_eq!(listeners_in_table(TCP, 8001), [0]);
        assert!(listeners_in_table(TCP, 8002).is_empty());
    }

    #[test]
    fn a_listener_of_this_process_is_found_with_its_owner() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = rustix::process::geteuid().as_raw();
        assert_eq!(loopback_listeners(port).unwrap(), [me]);
        check_listener_owner(port, me).unwrap();
        let err = check_listener_owner(port, me + 1).unwrap_err();
        assert!(matches!(err, PortConnectError::NotTheBoxs { .. }), "{err}");
        drop(listener);
        assert!(matches!(check_listener_owner(port, me), Err(PortConnectError::NotListening { .. })));
    }

    #[test]
    fn our_own_process_tree_has_no_namespace_of_its_own() {
        let me = i32::try_from(std::process::id()).unwrap();
        assert!(BoxNamespace::of_process_tree(me).unwrap().is_none());
    }
}

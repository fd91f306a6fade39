//! Network allowlists: a box without the host network that may still reach chosen hosts.
//!
//! A bubblewrap box has a network namespace of its own with only `lo`, so nothing it does
//! can reach the outside directly. When the box is given an allowlist, the host side runs
//! an HTTP proxy on a Unix socket in the kernel's runtime directory (which the sandbox
//! already mounts), and a thread in the kernel forwards `127.0.0.1:PROXY_PORT` inside the box
//! to that socket (`python/net_forwarder.py`). `HTTP_PROXY` and `HTTPS_PROXY` point there,
//! so pip, requests and urllib go through it; the proxy answers `CONNECT host:port` and
//! absolute-URI requests for allowed hosts and refuses the rest with 403. Names are
//! resolved on the host, never in the box.
//!
//! An allowed name still never leads to this host or its neighbourhood: the proxy connects
//! only to the addresses a name resolves to that are not loopback, unspecified, link-local,
//! multicast, broadcast, private (RFC 1918, shared, unique-local) or one of this host's own,
//! and an IP literal of such a range is refused as an entry. An operator who means a box to
//! reach such a service says so with [`Allowlist::parse_allowing_local`].
//!
//! A confined `install` runs pip behind a proxy of its own whose allowlist is the package
//! index hosts ([`Allowlist::package_indexes`]): on a Unix socket for a bubblewrap box (as
//! for a kernel), on a host loopback port ([`LoopbackProxy`]) for a Landlock box, whose
//! ruleset then lets pip connect to that one port only.

mod allowlist;
mod head;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use codebox_core::{CodeBoxError, Result};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

pub use self::allowlist::Allowlist;
use self::allowlist::is_local_address;
use self::head::{Head, MAX_HEAD, read_head};

/// The port inside the box where the proxy is reachable.
pub(crate) const PROXY_PORT: u16 = 3128;

/// The environment a kernel needs to use the proxy at `socket`.
pub fn proxy_env(socket: &Path) -> Vec<(String, String)> {
    let url = format!("http://127.0.0.1:{PROXY_PORT}");
    let mut env = vec![("CODEBOX_PROXY_SOCKET".to_owned(), socket.to_string_lossy().into_owned())];
    for name in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
        env.push((name.to_owned(), url.clone()));
    }
    env
}

/// Connections one box may hold open through the proxy at once.
const MAX_CONNECTIONS: usize = 128;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The proxy of one kernel (or one install); stops, and removes its socket, when dropped.
#[derive(Debug)]
pub struct NetProxy {
    socket: PathBuf,
    task: JoinHandle<()>,
}

impl NetProxy {
    /// Listen on `socket` (created world-connectable: the directory around it is what keeps
    /// other users out) and serve `allowlist`.
    pub fn start(socket: &Path, allowlist: Allowlist) -> Result<Self> {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket).map_err(|e| CodeBoxError::io("binding the network proxy", e))?;
        std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .map_err(|e| CodeBoxError::io("opening the network proxy to the box", e))?;
        let task = spawn_accept_loop(allowlist, Listener::Unix(listener));
        Ok(Self { socket: socket.to_owned(), task })
    }

    /// Where the proxy listens.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for NetProxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// A proxy on a port of host loopback, for a box without a network namespace of its own
/// (a Landlock box's install), whose sandbox lets it connect to this port only. Stops when
/// dropped.
#[derive(Debug)]
pub struct LoopbackProxy {
    port: u16,
    task: JoinHandle<()>,
}

impl LoopbackProxy {
    /// Listen on a free port of `127.0.0.1` and serve `allowlist`.
    pub async fn start(allowlist: Allowlist) -> Result<Self> {
        let bound = TcpListener::bind("127.0.0.1:0").await;
        let listener = bound.map_err(|e| CodeBoxError::io("binding the network proxy", e))?;
        let port = listener.local_addr().map_err(|e| CodeBoxError::io("binding the network proxy", e))?.port();
        let task = spawn_accept_loop(allowlist, Listener::Tcp(listener));
        Ok(Self { port, task })
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The environment that points HTTP clients (pip) at the proxy.
    pub fn env(&self) -> Vec<(String, String)> {
        let url = format!("http://127.0.0.1:{}", self.port);
        ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"].map(|k| (k.to_owned(), url.clone())).to_vec()
    }
}

impl Drop for LoopbackProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where a proxy listens.
enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

/// A connection to the proxy, whichever kind of listener took it.
trait Connection: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Connection for T {}

impl Listener {
    async fn accept(&self) -> std::io::Result<Box<dyn Connection>> {
        Ok(match self {
            Self::Unix(l) => Box::new(l.accept().await?.0),
            Self::Tcp(l) => Box::new(l.accept().await?.0),
        })
    }
}

/// Accept connections and serve each (at most [`MAX_CONNECTIONS`] at once).
fn spawn_accept_loop(allowlist: Allowlist, listener: Listener) -> JoinHandle<()> {
    let allowlist = Arc::new(allowlist);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(conn) = listener.accept().await else { continue };
            let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                drop(conn); // Over the limit: the box sees the connection close.
                continue;
            };
            let allowlist = Arc::clone(&allowlist);
            tokio::spawn(async move {
                if let Err(e) = serve(conn, &allowlist).await {
                    tracing::debug!("network proxy connection ended: {e}");
                }
                drop(permit);
            });
        }
    })
}
async fn answer(conn: &mut (impl AsyncWrite + Unpin), status: &str, message: &str) -> std::io::Result<()> {
    let body = format!("codebox: {message}\n");
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body.as_bytes()).await?;
    conn.shutdown().await
}

async fn serve(mut conn: impl AsyncRead + AsyncWrite + Unpin, allowlist: &Allowlist) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let (head_end, target) = loop {
        match read_head(&buf) {
            Head::Complete { len, target } => break (len, target),
            Head::Invalid => break (0, None),
            Head::Partial => {}
        }
        if buf.len() >= MAX_HEAD {
            return answer(&mut conn, "431 Request Header Fields Too Large", "request head too large").await;
        }
        let mut chunk = [0u8; 4096];
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let Some(target) = target else {
        return answer(&mut conn, "400 Bad Request", "only CONNECT and absolute http:// requests are proxied").await;
    };
    if !allowlist.allows(&target.host, target.port) {
        let message = format!("{}:{} is not on this box's network allowlist", target.host, target.port);
        return answer(&mut conn, "403 Forbidden", &message).await;
    }
    let host = target.host.trim_start_matches('[').trim_end_matches(']');
    let connect = async {
        // Resolve once, keep the addresses a box may reach, and connect to those: a name
        // checked and then resolved again could lead elsewhere the second time.
        let resolved: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host, target.port)).await?.collect();
        let reachable: Vec<std::net::SocketAddr> =
            resolved.iter().copied().filter(|a| allowlist.local || !is_local_address(a.ip())).collect();
        if reachable.is_empty() && !resolved.is_empty() {
            return Ok(None);
        }
        TcpStream::connect(&reachable[..]).await.map(Some)
    };
    let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(Some(s))) => s,
        Ok(Ok(None)) => {
            let message = format!("{host}:{} resolves only to local addresses, which a box may not reach", target.port);
            return answer(&mut conn, "403 Forbidden", &message).await;
        }
        Ok(Err(e)) => return answer(&mut conn, "502 Bad Gateway", &format!("{host}:{}: {e}", target.port)).await,
        Err(_) => return answer(&mut conn, "504 Gateway Timeout", &format!("{host}:{}", target.port)).await,
    };
    let _ = upstream.set_nodelay(true);
    let mut upstream = upstream;
    if target.tunnel {
        conn.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await?;
        upstream.write_all(&buf[head_end..]).await?;
    } else {
        // Servers must accept the absolute form, so the request goes on unchanged.
        upstream.write_all(&buf).await?;
    }
    tokio::io::copy_bidirectional(&mut conn, &mut upstream).await.map(|_| ())
}
#[cfg(test)]
mod tests {
    use super::*;

    async fn request(socket: &Path, head: &str) -> String {
        let mut s = tokio::net::UnixStream::connect(socket).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    /// A real upstream on loopback: reached when allowed, refused with 403 when not.
    #[tokio::test]
    async fn the_proxy_connects_allowed_hosts_and_refuses_the_rest() {
        let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = upstream.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = upstream.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let n = s.read(&mut buf).await.unwrap();
                    let first = String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or_default().to_owned();
                    let body = format!("upstream saw: {first}");
                    let reply =
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                    s.write_all(reply.as_bytes()).await.unwrap();
                });
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("net.sock");
        let list = Allowlist::parse_allowing_local(&[format!("127.0.0.1:{port}")]).unwrap();
        let proxy = NetProxy::start(&socket, list).unwrap();

        let plain = request(&socket, &format!("GET http://127.0.0.1:{port}/x HTTP/1.1\r\nHost: h\r\n\r\n")).await;
        assert!(plain.ends_with(&format!("upstream saw: GET http://127.0.0.1:{port}/x HTTP/1.1")), "{plain}");

        let tunnel = request(
            &socket,
            &format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\nGET /inside HTTP/1.1\r\nHost: h\r\n\r\n"),
        )
        .await;
        assert!(tunnel.starts_with("HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 200 OK"), "{tunnel}");
        assert!(tunnel.ends_with("upstream saw: GET /inside HTTP/1.1"), "{tunnel}");

        let other = port.wrapping_add(1);
        let denied = request(&socket, &format!("CONNECT 127.0.0.1:{other} HTTP/1.1\r\n\r\n")).await;
        assert!(denied.starts_with("HTTP/1.1 403 Forbidden"), "{denied}");
        assert!(denied.contains(&format!("127.0.0.1:{other} is not on this box's network allowlist")), "{denied}");

        let relative = request(&socket, "GET / HTTP/1.1\r\n\r\n").await;
        assert!(relative.starts_with("HTTP/1.1 400 Bad Request"), "{relative}");

        drop(proxy);
        assert!(!socket.exists(), "the socket goes with the proxy");
    }

    /// A name on the list that resolves to loopback is still refused: the box never reaches
    /// this host through the proxy. The upstream counts what reaches it.
    #[tokio::test]
    async fn an_allowed_name_that_resolves_to_loopback_is_refused() {
        let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = upstream.local_addr().unwrap().port();
        upstream.set_nonblocking(true).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("net.sock");
        let _proxy = NetProxy::start(&socket, Allowlist::parse(&["localhost"]).unwrap()).unwrap();
        for head in [
            format!("CONNECT localhost:{port} HTTP/1.1\r\n\r\n"),
            format!("GET http://localhost:{port}/x HTTP/1.1\r\nHost: localhost\r\n\r\n"),
        ] {
            let reply = request(&socket, &head).await;
            assert!(reply.starts_with("HTTP/1.1 403 Forbidden"), "{reply}");
            assert!(reply.contains("resolves only to local addresses"), "{reply}");
        }
        let tcp = LoopbackProxy::start(Allowlist::parse(&["localhost"]).unwrap()).await.unwrap();
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", tcp.port())).await.unwrap();
        s.write_all(format!("CONNECT localhost:{port} HTTP/1.1\r\n\r\n").as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 403 Forbidden"));
        assert!(upstream.accept().is_err(), "nothing reached the upstream");
    }
}

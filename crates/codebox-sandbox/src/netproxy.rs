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

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use codebox_core::{CodeBoxError, Result};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

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

/// The largest request head the proxy reads before deciding.
const MAX_HEAD: usize = 16 * 1024;
/// Connections one box may hold open through the proxy at once.
const MAX_CONNECTIONS: usize = 128;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One allowed destination: a host name (or `*.suffix` for its subdomains), or an IP
/// address, with an optional port (any port when absent).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Rule {
    host: String,
    port: Option<u16>,
}

/// The hosts a box may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Allowlist {
    rules: Vec<Rule>,
    /// Whether the listed hosts may be reached at local addresses (see [`is_local_address`]).
    local: bool,
}

impl Allowlist {
    /// Parse entries like `pypi.org`, `files.pythonhosted.org:443`, `*.example.com` or
    /// `203.0.113.7:8080`. The hosts are reached at public addresses only: an entry that is a
    /// loopback, link-local, private or otherwise local address is refused, and a name that
    /// resolves to one only is refused when the box asks for it.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self> {
        let list = Self::parse_allowing_local(entries)?;
        let local = list.rules.iter().find(|r| r.host.parse::<IpAddr>().is_ok_and(is_local_address));
        if let Some(r) = local {
            return Err(CodeBoxError::invalid(format!(
                "network allowlist entry {:?}: a local address (loopback, link-local, private or this host's); \
                 a box reaches public addresses only",
                r.host
            )));
        }
        Ok(Self { local: false, ..list })
    }

    /// Like [`Allowlist::parse`], but the hosts may be reached at any address, local ones
    /// included (`[::1]:80`, `10.0.0.5:8080`, a name resolving to `127.0.0.1`): for an
    /// operator who means a box to reach a service on this host or its network.
    pub fn parse_allowing_local<S: AsRef<str>>(entries: &[S]) -> Result<Self> {
        let mut rules = Vec::new();
        for entry in entries {
            let entry = entry.as_ref().trim();
            let bad = |why: &str| CodeBoxError::invalid(format!("network allowlist entry {entry:?}: {why}"));
            let (host, port) = split_host_port(entry).ok_or_else(|| bad("expected host or host:port"))?;
            let port = match port {
                Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| bad("bad port"))?),
                None => None,
            };
            let host = host.to_ascii_lowercase();
            let name = host.strip_prefix("*.").unwrap_or(&host);
            let valid_name = !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|l| {
                    !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !(valid_name || host.parse::<IpAddr>().is_ok()) {
                return Err(bad("not a host name or IP address"));
            }
            rules.push(Rule { host, port });
        }
        Ok(Self { rules, local: true })
    }

    /// The package index hosts pip reaches with the settings `pip` (`PIP_INDEX_URL`,
    /// `PIP_EXTRA_INDEX_URL`, `PIP_FIND_LINKS`, as `(name, value)`): the host and port of
    /// each `http(s)://` URL among them; with no index URL, PyPI (`pypi.org` and
    /// `files.pythonhosted.org`, where its files are). At public addresses only.
    pub fn package_indexes(pip: &[(String, String)]) -> Result<Self> {
        let value = |name: &str| pip.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let mut entries: Vec<String> = Vec::new();
        if value("PIP_INDEX_URL").is_none_or(|v| v.trim().is_empty()) {
            entries.extend(["pypi.org:443", "files.pythonhosted.org:443"].map(str::to_owned));
        }
        for name in ["PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS"] {
            let urls = value(name).unwrap_or_default().split_whitespace();
            entries.extend(urls.filter_map(url_authority));
        }
        Self::parse(&entries)
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether `host:port` may be reached.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.rules.iter().any(|r| {
            let host_ok = match r.host.strip_prefix("*.") {
                Some(suffix) => {
                    host.len() > suffix.len() && host.ends_with(suffix) && {
                        host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
                    }
                }
                None => r.host == host,
            };
            host_ok && r.port.is_none_or(|p| p == port)
        })
    }
}

/// `host:port` of an `http://` or `https://` URL (the scheme's port when it names none);
/// `None` for anything else (a local path, `file:`).
fn url_authority(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let default = match scheme.to_ascii_lowercase().as_str() {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = split_host_port(authority)?;
    let port = port.map_or(Some(default), |p| p.parse().ok())?;
    Some(if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") })
}

/// Whether a box must not reach `ip` through the proxy (unless its allowlist allows local
/// addresses): loopback, unspecified, link-local, multicast, broadcast, private (RFC 1918,
/// shared address space, unique-local), an IPv4 address inside IPv6 (mapped, compatible,
/// NAT64) that is one of these, or an address of this host's own interfaces (which reach
/// whatever listens on all of them, this server included).
pub(crate) fn is_local_address(ip: IpAddr) -> bool {
    let v4_local = |v4: std::net::Ipv4Addr| {
        let [a, b, ..] = v4.octets();
        v4.is_loopback()
            || v4.is_unspecified()
            || v4.is_link_local()
            || v4.is_multicast()
            || v4.is_broadcast()
            || v4.is_private()
            || a == 0
            || (a == 100 && (64..128).contains(&b))
            || a >= 240
    };
    let by_range = match ip {
        IpAddr::V4(v4) => v4_local(v4),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded = match s {
                [0, 0, 0, 0, 0, 0xffff, ..] | [0, 0, 0, 0, 0, 0, ..] => {
                    Some(v6.to_ipv4().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED))
                }
                [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => {
                    Some(std::net::Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)))
                }
                _ => None,
            };
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                || embedded.is_some_and(v4_local)
        }
    };
    // An address this host can bind is one of its own.
    by_range || std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`; a bare IPv6 address has no port.
fn split_host_port(s: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            _ => Some((host, Some(after.strip_prefix(':')?))),
        };
    }
    if s.parse::<IpAddr>().is_ok() {
        return Some((s, None));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !h.contains(':') => Some((h, Some(p))),
        Some(_) => None,
        None if !s.is_empty() => Some((s, None)),
        None => None,
    }
}

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

/// Where one request wants to go.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    host: String,
    port: u16,
    tunnel: bool,
}

/// What the bytes read so far say about a request head.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// Not all of it has arrived.
    Partial,
    /// Not an HTTP/1 request head.
    Invalid,
    /// A whole head of `len` bytes, and where it wants to go when the proxy serves that.
    Complete { len: usize, target: Option<Target> },
}

/// Parse the request head at the start of `buf` with `httparse`.
fn read_head(buf: &[u8]) -> Head {
    // Every header ends a line, so the lines seen bound the headers: no head within MAX_HEAD
    // is refused for having many of them.
    let lines = buf.iter().filter(|&&b| b == b'\n').count();
    let mut headers = vec![httparse::EMPTY_HEADER; lines + 1];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Partial) => Head::Partial,
        Ok(httparse::Status::Complete(len)) => {
            let target = request.method.zip(request.path).and_then(|(method, uri)| parse_target(method, uri));
            Head::Complete { len, target }
        }
        Err(_) => Head::Invalid,
    }
}

/// The destination of an HTTP/1 request for `uri` by `method`: `CONNECT host:port` or an
/// absolute `http://` URI. `None` for anything else.
fn parse_target(method: &str, uri: &str) -> Option<Target> {
    let (authority, default_port, tunnel) = if method.eq_ignore_ascii_case("CONNECT") {
        (uri, None, true)
    } else {
        let rest = uri.strip_prefix("http://").or_else(|| uri.strip_prefix("HTTP://"))?;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        (&rest[..end], Some(80), false)
    };
    if authority.contains('@') {
        return None;
    }
    let (host, port) = split_host_port(authority)?;
    let port = match (port, default_port) {
        (Some(p), _) => p.parse().ok()?,
        (None, Some(d)) => d,
        (None, None) => return None,
    };
    Some(Target { host: host.to_owned(), port, tunnel })
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

    #[test]
    fn entries_parse_and_match() {
        let entries = ["PyPI.org", "files.pythonhosted.org:443", "*.example.com", "10.0.0.5:8080", "[::1]:80"];
        let a = Allowlist::parse_allowing_local(&entries).unwrap();
        assert!(a.allows("pypi.org", 443) && a.allows("pypi.org", 80) && a.allows("PYPI.ORG.", 1));
        assert!(a.allows("files.pythonhosted.org", 443) && !a.allows("files.pythonhosted.org", 80));
        assert!(a.allows("a.example.com", 1) && a.allows("a.b.example.com", 1));
        assert!(!a.allows("example.com", 1) && !a.allows("badexample.com", 1));
        assert!(a.allows("10.0.0.5", 8080) && !a.allows("10.0.0.5", 22));
        assert!(a.allows("::1", 80));
        assert!(!a.allows("evil.org", 443) && !a.allows("pypi.org.evil.org", 443));
        assert!(Allowlist::parse::<&str>(&[]).unwrap().is_empty());
    }

    #[test]
    fn bad_entries_are_refused_with_the_entry_named() {
        for bad in ["", "host:0", "host:99999", "a b", "x:y:z", "http://x", "-.-/", "*."] {
            let err = Allowlist::parse(&[bad]).unwrap_err().to_string();
            assert!(err.contains("network allowlist entry"), "{bad}: {err}");
        }
    }

    #[test]
    fn targets_come_from_connect_and_absolute_requests_only() {
        let t = |s: &str| match read_head(s.as_bytes()) {
            Head::Complete { len, target } if len == s.len() => target,
            other => panic!("{s:?} is a whole head: {other:?}"),
        };
        assert_eq!(
            t("CONNECT pypi.org:443 HTTP/1.1\r\n\r\n"),
            Some(Target { host: "pypi.org".into(), port: 443, tunnel: true })
        );
        assert_eq!(
            t("GET http://h.org/x?y HTTP/1.1\r\n\r\n"),
            Some(Target { host: "h.org".into(), port: 80, tunnel: false })
        );
        assert_eq!(
            t("GET http://h.org:8080 HTTP/1.0\r\n\r\n"),
            Some(Target { host: "h.org".into(), port: 8080, tunnel: false })
        );
        assert_eq!(t("GET /relative HTTP/1.1\r\n\r\n"), None);
        assert_eq!(t("CONNECT pypi.org HTTP/1.1\r\n\r\n"), None, "CONNECT needs a port");
        assert_eq!(t("GET http://user@h.org/ HTTP/1.1\r\n\r\n"), None);
        assert_eq!(t("GET https://h.org/ HTTP/1.1\r\n\r\n"), None);
    }

    #[test]
    fn heads_are_read_whole_or_refused() {
        assert_eq!(read_head(b"CONNECT pypi.org:443 HTTP/1.1\r\nHost: pypi.org"), Head::Partial);
        for bad in
            [&b"CONNECT pypi.org:443 HTTP/2.0\r\n\r\n"[..], b"GET  http://h.org/ HTTP/1.1\r\n\r\n", b"\x16\x03\x01"]
        {
            assert_eq!(read_head(bad), Head::Invalid, "{:?}", String::from_utf8_lossy(bad));
        }
        // As many headers as fit in the largest head the proxy reads.
        let mut many = b"GET http://h.org/ HTTP/1.1\r\n".to_vec();
        while many.len() < MAX_HEAD - 16 {
            many.extend_from_slice(b"X-A: b\r\n");
        }
        many.extend_from_slice(b"\r\n");
        let target = Some(Target { host: "h.org".into(), port: 80, tunnel: false });
        assert_eq!(read_head(&many), Head::Complete { len: many.len(), target });
    }

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

    #[test]
    fn local_addresses_are_refused_as_entries_unless_the_operator_allows_them() {
        for entry in [
            "127.0.0.1",
            "127.0.0.1:8080",
            "[::1]:80",
            "10.0.0.5",
            "169.254.169.254",
            "0.0.0.0",
            "[fe80::1]",
            "[::ffff:127.0.0.1]:1",
            "192.168.1.1",
            "100.64.0.1",
            "[fd00::1]",
        ] {
            let err = Allowlist::parse(&[entry]).unwrap_err().to_string();
            assert!(err.contains("a local address"), "{entry}: {err}");
            assert!(Allowlist::parse_allowing_local(&[entry]).is_ok(), "{entry}");
        }
        assert!(Allowlist::parse(&["203.0.113.80:443", "8.8.8.8", "[2001:4860:4860::8888]:443", "localhost"]).is_ok());
        for ip in ["127.0.0.2", "::1", "224.0.0.1", "255.255.255.255", "172.16.0.1", "[64:ff9b::7f00:1]"] {
            let ip: IpAddr = ip.trim_matches(['[', ']']).parse().unwrap();
            assert!(is_local_address(ip), "{ip}");
        }
        for ip in ["8.8.8.8", "2001:4860:4860::8888", "203.0.113.80"] {
            assert!(!is_local_address(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn package_indexes_come_from_the_pip_settings() {
        let set = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        let pypi = Allowlist::package_indexes(&[]).unwrap();
        assert!(pypi.allows("pypi.org", 443) && pypi.allows("files.pythonhosted.org", 443));
        assert!(!pypi.allows("pypi.org", 80) && !pypi.allows("example.org", 443));
        let own = Allowlist::package_indexes(&set(&[
            ("PIP_INDEX_URL", "https://user:pw@mirror.example.org:8443/simple"),
            ("PIP_EXTRA_INDEX_URL", "http://extra.example.org/simple https://third.example.org"),
            ("PIP_FIND_LINKS", "/opt/wheels file:///srv/w https://wheels.example.org/w/"),
        ]))
        .unwrap();
        assert!(own.allows("mirror.example.org", 8443) && own.allows("extra.example.org", 80));
        assert!(own.allows("third.example.org", 443) && own.allows("wheels.example.org", 443));
        assert!(!own.allows("pypi.org", 443), "an index of its own replaces PyPI");
        let local = Allowlist::package_indexes(&set(&[("PIP_INDEX_URL", "http://127.0.0.1:3141/simple")]));
        assert!(local.is_err(), "an index on a local address is refused like any entry");
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

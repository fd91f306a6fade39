//! The accept loop: TCP_NODELAY on every connection, HTTP/1.1 and HTTP/2 on the same port,
//! a cap on open connections, an idle timeout, graceful shutdown.
//!
//! Every connection holds a file descriptor, and the server's descriptors are shared with
//! what its sessions open (files, kernels' sockets). So connections are capped: one over
//! the cap is answered 503 at once and closed, never kept waiting with its descriptor. A
//! connection is also closed once it has had no request in flight and no byte in either
//! direction for the idle timeout: that covers a client that connects and never sends a
//! byte, which hyper's header read timeout does not (its clock starts with the first byte
//! of a request), and a keep-alive connection left open. A connection with a request in
//! flight is never closed for idleness: an execution may stream for minutes, and a stalled
//! upload is cut by the request body's own idle timeout.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use codebox_core::CodeBoxError;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::body::Body;

/// The default idle timeout of a connection.
pub const DEFAULT_CONNECTION_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What a connection over the cap is told before it is closed.
const FULL_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n\
Content-Type: application/json\r\nContent-Length: 91\r\n\r\n\
{\"error\":{\"kind\":\"rate_limited\",\"message\":\"too many open connections; retry in a moment\"}}\n";

/// Per-connection protocol limits.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionLimits {
    /// How long a client may take to send a request's headers (HTTP/1.1).
    pub header_read_timeout: Duration,
    /// The most concurrent streams one HTTP/2 connection may open.
    pub max_concurrent_streams: u32,
    /// The most connections open at once; one more is answered 503 and closed at once.
    pub max_connections: usize,
    /// A connection with no request in flight that sends and receives nothing for this
    /// long is closed, and so is one whose client has not read what it is sent for this
    /// long.
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            // Each stream may hold a file open (a download): a few per connection suffice
            // for a client, and keep one connection from holding hundreds.
            max_concurrent_streams: 32,
            max_connections: default_max_connections(),
            idle_timeout: DEFAULT_CONNECTION_IDLE_TIMEOUT,
        }
    }
}

impl ConnectionLimits {
    /// Set the header read timeout.
    pub fn with_header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// Allow at most `max` connections open at once (at least 1).
    pub fn with_max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// Close connections idle for `timeout`.
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }
}

/// The default cap on open connections: a quarter of this process's soft limit on open
/// files, so that connections can never take the descriptors that sessions' files and
/// kernels need. Read when called, so a limit raised at start-up counts.
pub fn default_max_connections() -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits").ok().and_then(|text| soft_nofile(&text));
    connections_for_nofile(soft.unwrap_or(1024))
}

/// A quarter of `nofile`, at least 16 and at most 16384 (an unlimited soft limit, or one
/// in the millions, would otherwise let connections take memory without bound).
fn connections_for_nofile(nofile: u64) -> usize {
    (nofile / 4).clamp(16, 16384) as usize
}

/// The soft limit on open files from the text of `/proc/self/limits`.
fn soft_nofile(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    if soft == "unlimited" { Some(u64::MAX) } else { soft.parse().ok() }
}

/// When a connection last moved a byte, and how many of its requests are in flight.
#[derive(Debug)]
struct Activity {
    start: Instant,
    /// Milliseconds from `start` to the last byte read or written.
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
    /// One more than the milliseconds from `start` to the moment a write began to wait for
    /// the client to read; 0 while writes go through.
    blocked_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            blocked_ms: AtomicU64::new(0),
        }
    }

    /// Note a write's outcome: waiting for the client (from when, if it just began) or gone through.
    fn wrote(&self, polled: &Poll<io::Result<usize>>) {
        match polled {
            Poll::Pending => {
                let now = self.start.elapsed().as_millis() as u64 + 1;
                let _ = self.blocked_ms.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
            }
            Poll::Ready(Ok(n)) if *n > 0 => {
                self.blocked_ms.store(0, Ordering::Relaxed);
                self.touch();
            }
            Poll::Ready(_) => {}
        }
    }

    /// Resolve once a write has waited `timeout` for a client that does not read. A request
    /// in flight keeps a quiet connection open, but not one whose client stopped reading
    /// what it asked for (say a download left unread): that would hold the connection's
    /// slot and the response's file for as long as the client likes.
    async fn stalled_for(&self, timeout: Duration) {
        loop {
            let since = self.blocked_ms.load(Ordering::Relaxed);
            let waited = if since == 0 {
                Duration::ZERO
            } else {
                self.start.elapsed().saturating_sub(Duration::from_millis(since - 1))
            };
            if since != 0 && waited >= timeout {
                return;
            }
            tokio::time::sleep(if since == 0 { timeout } else { timeout - waited }).await;
        }
    }

    fn touch(&self) {
        self.last_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(self))
    }

    /// Resolve once the connection has had no request in flight and no byte for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let quiet = last.elapsed();
            if quiet >= timeout && self.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            // A request in flight keeps the connection; look again a timeout later.
            let wait = if quiet >= timeout { timeout } else { timeout - quiet };
            tokio::time::sleep(wait).await;
        }
    }
}

/// One request in flight, from the moment its headers are in until its response body is
/// sent (or dropped); when the last one ends the connection counts as quiet from then on.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as in flight while it is being sent.
struct TrackedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = CodeBoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, CodeBoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A socket that records in [`Activity`] every time a byte moves.
struct TrackedStream {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for TrackedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.activity.wrote(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.activity.wrote(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Whether an accept error means this process (or the system) is out of descriptors.
fn out_of_descriptors(e: &io::Error) -> bool {
    // EMFILE and ENFILE on Linux.
    matches!(e.raw_os_error(), Some(24 | 23))
}

/// Serve connections from `listener` until `shutdown` resolves, then stop accepting, ask
/// every connection to finish its in-flight requests and close, and wait for them until
/// `drain` resolves; connections still open then are dropped.
///
/// `handler` answers each request; it gets the peer's address. Every accepted socket gets
/// TCP_NODELAY. HTTP/1.1 and HTTP/2 (prior knowledge) are detected per connection. At most
/// `limits.max_connections` are open at once, and idle ones are closed (see the module docs).
pub async fn serve<H, Fut, S, D>(listener: TcpListener, handler: H, limits: ConnectionLimits, shutdown: S, drain: D)
where
    H: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
    S: Future<Output = ()>,
    D: Future<Output = ()>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).keep_alive(true);
    builder.http2().timer(TokioTimer::new()).max_concurrent_streams(limits.max_concurrent_streams);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let idle_timeout = limits.idle_timeout;
    // Said once each time the cap is reached, not once per refused connection.
    let mut full_reported = false;
    tokio::pin!(shutdown);

    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning,
                    // longer when descriptors ran out, so that connections can close first.
                    let pause = if out_of_descriptors(&e) { Duration::from_millis(250) } else { Duration::from_millis(50) };
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(pause).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            if !full_reported {
                tracing::warn!(max = limits.max_connections, %peer, "connection cap reached; refusing new connections");
                full_reported = true;
            }
            // A best-effort answer that never waits: the socket buffer of a fresh
            // connection takes it whole, and dropping the stream closes it.
            let _ = stream.try_write(FULL_RESPONSE);
            continue;
        };
        full_reported = false;
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, %peer, "could not set TCP_NODELAY");
        }
        let activity = Arc::new(Activity::new());
        let handler = handler.clone();
        let service_activity = Arc::clone(&activity);
        let service = service_fn(move |req| {
            let in_flight = service_activity.begin();
            let fut = handler(req, peer);
            async move {
                let response = fut.await;
                Ok::<_, Infallible>(response.map(|inner| TrackedBody { inner, _in_flight: in_flight }))
            }
        });
        let io = TokioIo::new(TrackedStream { inner: stream, activity: Arc::clone(&activity) });
        // With upgrades: a request to a box's port may switch protocols (a WebSocket), and
        // the connection is then handed to whoever answered it.
        let conn = builder.serve_connection_with_upgrades(io, service).into_owned();
        let watched = graceful.watcher().watch(conn);
        connections.spawn(async move {
            let _slot = slot;
            tokio::select! {
                ended = watched => {
                    if let Err(e) = ended {
                        tracing::debug!(error = %e, %peer, "connection ended with an error");
                    }
                }
                () = activity.idle_for(idle_timeout) => {
                    tracing::debug!(%peer, "closing an idle connection");
                }
                () = activity.stalled_for(idle_timeout) => {
                    tracing::debug!(%peer, "closing a connection whose client stopped reading");
                }
            }
        });
    }

    drop(listener);
    tracing::info!(connections = connections.len(), "stopped accepting; draining connections");
    tokio::select! {
        () = graceful.shutdown() => {}
        () = drain => {
            tracing::warn!(connections = connections.len(), "connections still open after the drain period; closing them");
        }
    }
    connections.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_is_a_quarter_of_the_open_files_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             95000                95000                processes \n\
                      Max open files            400                  524288               files     \n";
        assert_eq!(soft_nofile(limits), Some(400));
        assert_eq!(connections_for_nofile(400), 100);
        assert_eq!(connections_for_nofile(20), 16, "never below a usable floor");
        assert_eq!(
            soft_nofile("Max open files            unlimited            unlimited            files"),
            Some(u64::MAX)
        );
        assert_eq!(connections_for_nofile(u64::MAX), 16384);
        assert!(default_max_connections() >= 16);
    }

    #[test]
    fn the_refusal_is_a_whole_http_response() {
        let text = std::str::from_utf8(FULL_RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).unwrap().parse().unwrap();
        assert_eq!(body.len(), length);
        assert!(serde_json::from_str::<serde_json::Value>(body).is_ok());
    }

    /// Read until the peer closes: true when it did, false when still open after a minute.
    async fn closed(stream: &mut TcpStream) -> bool {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(60), stream.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => continue,
            }
        }
    }

    #[tokio::test]
    async fn one_connection_over_the_cap_is_refused_and_an_idle_one_closed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = ConnectionLimits::default().with_max_connections(1).with_idle_timeout(Duration::from_millis(200));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            |_req, _peer| async { Response::new(Body::full("ok")) },
            limits,
            async move {
                let _ = stop_rx.await;
            },
            std::future::ready(()),
        ));
        let mut first = TcpStream::connect(addr).await.unwrap();
        let mut second = TcpStream::connect(addr).await.unwrap();
        let mut refusal = Vec::new();
        let _ = second.read_to_end(&mut refusal).await;
        assert!(refusal.is_empty() || refusal.starts_with(b"HTTP/1.1 503"), "{}", String::from_utf8_lossy(&refusal));
        assert!(closed(&mut first).await, "a connection that never sent a byte was kept open");
        // Its slot is free again: a request is answered.
        let mut third = TcpStream::connect(addr).await.unwrap();
        third.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        third.read_to_end(&mut answer).await.unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
        let _ = stop_tx.send(());
        server.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_without_requests_in_flight() {
        let activity = Arc::new(Activity::new());
        let request = activity.begin();
        let timeout = Duration::from_secs(60);
        let waited = tokio::time::timeout(Duration::from_secs(600), activity.idle_for(timeout)).await;
        assert!(waited.is_err(), "a request in flight keeps the connection");
        drop(request);
        let quiet_from = Instant::now();
        activity.idle_for(timeout).await;
        assert!(quiet_from.elapsed() >= timeout, "the quiet time counts from the end of the last request");
    }
}

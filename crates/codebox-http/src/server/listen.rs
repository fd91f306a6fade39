//! The accept loop: TCP_NODELAY on every connection, HTTP/1.1 and HTTP/2 on the same port,
//! graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::body::Body;

/// Per-connection protocol limits.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionLimits {
    /// How long a client may take to send a request's headers (HTTP/1.1).
    pub header_read_timeout: Duration,
    /// The most concurrent streams one HTTP/2 connection may open.
    pub max_concurrent_streams: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self { header_read_timeout: Duration::from_secs(30), max_concurrent_streams: 256 }
    }
}

impl ConnectionLimits {
    /// Set the header read timeout.
    pub fn with_header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }
}

/// Serve connections from `listener` until `shutdown` resolves, then stop accepting, ask
/// every connection to finish its in-flight requests and close, and wait for them until
/// `drain` resolves; connections still open then are dropped.
///
/// `handler` answers each request; it gets the peer's address. Every accepted socket gets
/// TCP_NODELAY. HTTP/1.1 and HTTP/2 (prior knowledge) are detected per connection.
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
    tokio::pin!(shutdown);

    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, %peer, "could not set TCP_NODELAY");
        }
        let handler = handler.clone();
        let service = service_fn(move |req| {
            let fut = handler(req, peer);
            async move { Ok::<_, Infallible>(fut.await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        let watched = graceful.watcher().watch(conn);
        connections.spawn(async move {
            if let Err(e) = watched.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
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

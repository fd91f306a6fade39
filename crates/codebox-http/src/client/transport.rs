//! The client itself: one pooled hyper client, deadlines, retries.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use http::HeaderValue;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tracing::{debug, warn};

use codebox_core::{CodeBoxError, Result, TimeoutKind};

use super::config::ClientConfig;
use super::connector::{ConnectTimedOut, Connector};
use super::request::{HyperBody, Request};
use super::response::{Response, into_error};
use super::retry::{Sent, delay, should_retry};

/// A connection [`HttpClient::upgrade`] switched to another protocol, as Tokio I/O.
pub type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

/// A pooled HTTP/1.1 and HTTP/2 client with deadlines and retries. Cheap to clone: clones
/// share the connection pool.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<Connector, HyperBody>,
    config: ClientConfig,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient").field("config", &self.config).finish_non_exhaustive()
    }
}

impl HttpClient {
    /// A client with these settings. Needs a Tokio runtime when requests are sent, not here.
    pub fn new(config: ClientConfig) -> Result<Self> {
        if config.read_timeout.is_zero() || config.connect_timeout.is_zero() {
            return Err(CodeBoxError::invalid("connect and read timeouts must be longer than zero"));
        }
        let connector = Connector::new(config.connect_timeout, &config.extra_root_certificates)?;
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(config.http2_prior_knowledge)
            .http2_keep_alive_interval(Some(Duration::from_secs(30)))
            .http2_keep_alive_while_idle(false);
        let inner = builder.build(connector);
        Ok(Self { inner, config })
    }

    /// The settings.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Send a request, retrying as its [`Retry`](super::Retry) policy allows, and return
    /// the response when its status is 2xx. Any other status becomes the error that
    /// [`error_from_response`](crate::wire::error_from_response) makes of it.
    pub async fn send(&self, request: Request) -> Result<Response> {
        let mut request = request;
        let mut attempt = 0u32;
        loop {
            let replay = if attempt < self.config.retry.max_retries { request.try_clone() } else { None };
            let retry = request.retry;
            let method = request.method.clone();
            let uri = request.uri.clone();
            let (err, sent) = match self.send_once(request).await {
                Ok(response) => return Ok(response),
                Err(failure) => failure,
            };
            let Some(next) = replay.filter(|_| should_retry(retry, &err, sent)) else {
                debug!(%method, %uri, attempt, error = %err, "request failed");
                return Err(err);
            };
            let Some(wait) = delay(&self.config.retry, attempt, &err) else {
                debug!(%method, %uri, "the server asked for a longer wait than allowed; not retrying");
                return Err(err);
            };
            warn!(%method, %uri, attempt, error = %err, wait_ms = wait.as_millis() as u64, "retrying");
            tokio::time::sleep(wait).await;
            request = next;
            attempt += 1;
        }
    }

    /// Send `request` asking to switch its connection to `protocol` (`Connection: upgrade`,
    /// `Upgrade: protocol`), and return the connection once the server answered 101: from
    /// then on it carries whatever the protocol says, both ways. Never retried; a failure
    /// status is the error [`send`](Self::send) would give; a 2xx answer is a protocol error
    /// (the server did not switch). Needs HTTP/1.1: over HTTP/2 prior knowledge it is
    /// `Unsupported`.
    pub async fn upgrade(&self, request: Request, protocol: &str) -> Result<Upgraded> {
        if self.config.http2_prior_knowledge {
            return Err(CodeBoxError::unsupported(format!(
                "upgrading a connection to {protocol} (it needs HTTP/1.1, and this client speaks HTTP/2 only)"
            )));
        }
        let value = HeaderValue::from_str(protocol)
            .map_err(|e| CodeBoxError::invalid(format!("{protocol:?} is not a protocol name: {e}")))?;
        let mut request = request;
        request.headers.insert(http::header::CONNECTION, HeaderValue::from_static("upgrade"));
        request.headers.insert(http::header::UPGRADE, value);
        let request_timeout = request.timeout.unwrap_or(self.config.request_timeout);
        let read_timeout = request.read_timeout.unwrap_or(self.config.read_timeout);
        let (req, _, _) = request.into_hyper(&self.config.user_agent)?;
        let deadline = request_timeout.map_or(read_timeout, |t| t.min(read_timeout));
        let response = match tokio::time::timeout(deadline, self.inner.request(req)).await {
            Err(_) => return Err(timeout(TimeoutKind::Read, deadline)),
            Ok(Err(e)) => return Err(classify(&e).0),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if status == http::StatusCode::SWITCHING_PROTOCOLS {
            let upgraded = hyper::upgrade::on(response)
                .await
                .map_err(|e| CodeBoxError::connection(format!("switching the connection to {protocol}: {e}")))?;
            return Ok(TokioIo::new(upgraded));
        }
        if status.is_success() {
            return Err(CodeBoxError::protocol(format!(
                "the server answered {status} instead of switching the connection to {protocol}"
            )));
        }
        Err(into_error(response, read_timeout).await)
    }

    async fn send_once(&self, request: Request) -> std::result::Result<Response, (CodeBoxError, Sent)> {
        let request_timeout = request.timeout.unwrap_or(self.config.request_timeout);
        let read_timeout = request.read_timeout.unwrap_or(self.config.read_timeout);
        let head_deadline = request.head_deadline;
        let (req, body_sent, body_error) = request.into_hyper(&self.config.user_agent).map_err(|e| (e, Sent::No))?;
        let response = self.inner.request(req);
        let read_deadline = async {
            if !head_deadline {
                return std::future::pending().await;
            }
            if let Some(sent) = body_sent {
                // Counting starts once the request body is handed over; a failed body ends it too.
                let _ = sent.await;
            }
            tokio::time::sleep(read_timeout).await;
        };
        let request_deadline = async {
            match request_timeout.filter(|_| head_deadline) {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let result = tokio::select! {
            r = response => r,
            () = read_deadline => {
                return Err((timeout(TimeoutKind::Read, read_timeout), Sent::Maybe));
            }
            () = request_deadline => {
                return Err((timeout(TimeoutKind::Request, request_timeout.unwrap_or_default()), Sent::Maybe));
            }
        };
        match result {
            Ok(response) if response.status().is_success() => Ok(Response::new(response, read_timeout)),
            Ok(response) => Err((into_error(response, read_timeout).await, Sent::Maybe)),
            Err(e) => {
                if let Some(original) = body_error.take() {
                    return Err((original, Sent::Maybe));
                }
                Err(classify(&e))
            }
        }
    }
}

fn timeout(kind: TimeoutKind, after: Duration) -> CodeBoxError {
    CodeBoxError::timeout(kind, Some(after))
}

fn classify(e: &hyper_util::client::legacy::Error) -> (CodeBoxError, Sent) {
    let mut source: Option<&(dyn StdError + 'static)> = e.source();
    while let Some(s) = source {
        if let Some(t) = s.downcast_ref::<ConnectTimedOut>() {
            return (timeout(TimeoutKind::Connect, t.0), Sent::No);
        }
        source = s.source();
    }
    let sent = if e.is_connect() { Sent::No } else { Sent::Maybe };
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    (CodeBoxError::connection(message), sent)
}

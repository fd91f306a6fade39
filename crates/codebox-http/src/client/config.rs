//! Client settings: timeouts, pooling, retries.

use std::time::Duration;

/// How an [`HttpClient`](super::HttpClient) connects, waits and retries.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The longest time to open a connection (DNS, TCP and TLS together).
    pub connect_timeout: Duration,
    /// The longest time from sending a request to receiving the response head. Requests
    /// can override it ([`Request::with_timeout`](super::Request::with_timeout)).
    pub request_timeout: Option<Duration>,
    /// The longest silence while waiting for the next bytes of a response, counted from the
    /// moment the request body was fully sent.
    pub read_timeout: Duration,
    /// Idle pooled connections are closed after this long.
    pub pool_idle_timeout: Duration,
    /// At most this many idle connections are kept per host.
    pub pool_max_idle_per_host: usize,
    /// Speak HTTP/2 without negotiation (`h2c` prior knowledge) on plain connections. Over
    /// TLS, HTTP/2 is chosen by ALPN whatever this says.
    pub http2_prior_knowledge: bool,
    /// When and how often to retry.
    pub retry: RetryPolicy,
    /// The `User-Agent` header.
    pub user_agent: String,
    /// Certificates trusted for TLS in addition to the webpki roots (with the `rustls`
    /// feature), e.g. a private CA's.
    pub extra_root_certificates: Vec<PemCertificates>,
}

/// One or more PEM-encoded certificates.
#[derive(Clone, PartialEq, Eq)]
pub struct PemCertificates(pub Vec<u8>);

impl std::fmt::Debug for PemCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PemCertificates({} bytes)", self.0.len())
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Some(Duration::from_secs(60)),
            read_timeout: Duration::from_secs(60),
            // Below `codebox serve`'s idle-connection timeout (60 s): the client lets a pooled
            // connection go before the server closes it under a request that cannot be retried.
            pool_idle_timeout: Duration::from_secs(50),
            pool_max_idle_per_host: 32,
            http2_prior_knowledge: false,
            retry: RetryPolicy::default(),
            user_agent: concat!("codebox/", env!("CARGO_PKG_VERSION")).to_owned(),
            extra_root_certificates: Vec::new(),
        }
    }
}

impl ClientConfig {
    /// The defaults: 10 s to connect, 60 s per request and per read, 3 retries.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set the connect timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Set the request timeout (`None`: no limit).
    pub fn with_request_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Set the read timeout.
    pub fn with_read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// Set the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Trust the PEM certificates in `pem` for TLS, besides the webpki roots.
    pub fn with_root_certificates_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.extra_root_certificates.push(PemCertificates(pem.into()));
        self
    }

    /// Speak HTTP/2 with prior knowledge on plain connections.
    pub fn with_http2_prior_knowledge(mut self, yes: bool) -> Self {
        self.http2_prior_knowledge = yes;
        self
    }
}

/// Exponential backoff with jitter.
///
/// The wait before retry `n` (from 0) is a random duration between half and all of
/// `min(initial_backoff * 2^n, max_backoff)`. A `Retry-After` from the server replaces it;
/// one longer than `max_retry_after` is not waited for and the error is returned instead.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// How many times a request is repeated after its first attempt.
    pub max_retries: u32,
    /// The base wait before the first retry.
    pub initial_backoff: Duration,
    /// The cap on the computed backoff.
    pub max_backoff: Duration,
    /// The longest `Retry-After` the client waits for.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        Self { max_retries: 0, ..Self::default() }
    }

    /// Set the number of retries.
    pub fn with_max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// Set the base and the cap of the backoff.
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max;
        self
    }

    /// Set the longest `Retry-After` waited for.
    pub fn with_max_retry_after(mut self, max: Duration) -> Self {
        self.max_retry_after = max;
        self
    }
}

//! Building a [`RemoteBox`]: from code or from [`CodeBoxSettings`].

use std::time::Duration;

use codebox_core::{ApiKey, CodeBoxError, CodeBoxSettings, ResourceLimits, Result};
use codebox_http::client::{ClientConfig, HttpClient, RetryPolicy};

use crate::codeboxapi_0_2::{CodeboxApiSession, Host};
use crate::connection::Connection;
use crate::connection::new_session_id;
use crate::native::NativeSession;
use crate::remote_box::RemoteBox;
use crate::request::SessionRequest;
use crate::session::{Protocol, Session};

/// Builds a [`RemoteBox`]. Start from [`RemoteBox::builder`].
#[derive(Debug, Clone)]
pub struct RemoteBoxBuilder {
    base_url: String,
    api_key: Option<ApiKey>,
    session_id: Option<String>,
    factory_id: Option<String>,
    /// What a new session asks for (the kernel included).
    create: SessionRequest,
    protocol: Option<Protocol>,
    execution_timeout: Option<Duration>,
    client: ClientConfig,
    /// A connection pool to share (a [`Client`](crate::Client)'s), instead of a new one.
    shared_http: Option<HttpClient>,
}

impl Default for RemoteBoxBuilder {
    fn default() -> Self {
        Self {
            base_url: CodeBoxSettings::DEFAULT_BASE_URL.to_owned(),
            api_key: None,
            session_id: None,
            factory_id: None,
            create: SessionRequest::default(),
            protocol: None,
            execution_timeout: None,
            client: ClientConfig::default(),
            shared_http: None,
        }
    }
}

impl RemoteBoxBuilder {
    /// A builder with the defaults: `http://127.0.0.1:8069`, the native protocol, a new session.
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder filled from `CODEBOX_*` settings: API key, base URL, execution timeout,
    /// session id (attach instead of create), factory id and kernel. A base URL whose path
    /// ends in `/v2` (like `https://codeboxapi.com/api/v2`) selects [`Protocol::CodeboxApi`].
    pub fn from_settings(settings: &CodeBoxSettings) -> Self {
        let mut b = Self::new().with_base_url(settings.base_url.clone());
        b.api_key = settings.api_key.clone();
        b.session_id = settings.session_id.clone();
        b.factory_id = settings.factory_id.clone();
        b.create.kernel = settings.kernel.clone();
        b.execution_timeout = settings.timeout;
        if settings.base_url.trim_end_matches('/').ends_with("/v2") {
            b.protocol = Some(Protocol::CodeboxApi);
        }
        b
    }

    /// The server's base URL, e.g. `http://127.0.0.1:8069`.
    pub fn with_base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into();
        self
    }

    /// The API key sent as `Authorization: Bearer`.
    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(ApiKey::new(key));
        self
    }

    /// Attach to this existing session instead of creating one.
    pub fn with_session_id(mut self, id: impl Into<String>) -> Self {
        self.session_id = Some(id.into());
        self
    }

    /// The factory id sent to hosted codebox-api 0.2 services.
    pub fn with_factory_id(mut self, id: impl Into<String>) -> Self {
        self.factory_id = Some(id.into());
        self
    }

    /// The kernel the server starts for a new session, when not its default.
    pub fn with_kernel(mut self, kernel: impl Into<String>) -> Self {
        self.create.kernel = Some(kernel.into());
        self
    }

    /// The template of the server's catalogue a new session is made from.
    pub fn with_template(mut self, template: impl Into<String>) -> Self {
        self.create.template = Some(template.into());
        self
    }

    /// The language a new session runs, for the server to pick a template by.
    pub fn with_language(mut self, language: impl Into<String>) -> Self {
        self.create.language = Some(language.into());
        self
    }

    /// An environment variable of every execution and command in a new session.
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.create.env.insert(key.into(), value.into());
        self
    }

    /// A label of a new session, echoed in its [`info`](RemoteBox::info).
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.create.metadata.insert(key.into(), value.into());
        self
    }

    /// The resource limits of a new session, each at most the server's maximum.
    pub fn with_limits(mut self, limits: ResourceLimits) -> Self {
        self.create.limits = limits;
        self
    }

    /// The lifetime of a new session: the server stops it this long after creation (see
    /// [`RemoteBox::set_timeout`]). Not the timeout of an execution
    /// ([`with_execution_timeout`](Self::with_execution_timeout)).
    pub fn with_session_timeout(mut self, timeout: Duration) -> Self {
        self.create.timeout = Some(timeout);
        self
    }

    /// Idle time after which the server stops a new session (at most the server's).
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Self {
        self.create.idle_timeout = Some(timeout);
        self
    }

    /// Every parameter of a new session at once.
    pub fn with_session_request(mut self, request: SessionRequest) -> Self {
        self.create = request;
        self
    }

    /// The protocol the server speaks.
    pub fn with_protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = Some(protocol);
        self
    }

    /// The timeout of an execution whose [`RunOptions`](codebox_core::RunOptions) set none.
    pub fn with_execution_timeout(mut self, timeout: Duration) -> Self {
        self.execution_timeout = Some(timeout);
        self
    }

    /// The longest time to open a connection.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.client.connect_timeout = timeout;
        self
    }

    /// The longest time from sending a request to its response head (`None`: no limit).
    /// Uploads, installs and commands are not bounded by it.
    pub fn with_request_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.client.request_timeout = timeout;
        self
    }

    /// The longest silence while waiting for response bytes. The native server sends a
    /// keepalive line every 10 s during an execution, so keep this above that.
    pub fn with_read_timeout(mut self, timeout: Duration) -> Self {
        self.client.read_timeout = timeout;
        self
    }

    /// The retry policy for requests that may be repeated. Executions are never retried.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.client.retry = retry;
        self
    }

    /// Trust these PEM certificates for `https://` servers besides the webpki roots (needs
    /// the `rustls` feature), e.g. a private CA.
    pub fn with_root_certificates_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.client = self.client.with_root_certificates_pem(pem);
        self
    }

    /// Every HTTP client setting at once.
    pub fn with_client_config(mut self, config: ClientConfig) -> Self {
        self.client = config;
        self
    }

    /// Make boxes over this connection pool.
    pub(crate) fn with_shared_http(mut self, http: HttpClient) -> Self {
        self.shared_http = Some(http);
        self
    }

    /// The API key, when one is set.
    pub(crate) fn api_key(&self) -> Option<&ApiKey> {
        self.api_key.as_ref()
    }

    /// Check the settings and make the box. No request is sent until
    /// [`start`](codebox_core::CodeBox::start) (or, when attaching by id, the first call).
    pub fn build(self) -> Result<RemoteBox> {
        let base = self.base_url.trim().trim_end_matches('/').to_owned();
        if base.is_empty() {
            return Err(CodeBoxError::invalid("the base URL is empty"));
        }
        // Validates scheme and host (and TLS availability for https).
        codebox_http::client::Request::new(http::Method::GET, &format!("{base}/"))?;
        let protocol = self.protocol.unwrap_or_default();
        if protocol == Protocol::Native && self.api_key.is_none() {
            return Err(CodeBoxError::invalid(
                "an API key is required for a CodeBox server (set CODEBOX_API_KEY or use with_api_key)",
            ));
        }
        if let Some(key) = &self.api_key
            && (key.expose().is_empty() || key.expose().chars().any(|c| c.is_control() || c == ' '))
        {
            return Err(CodeBoxError::invalid("the API key is empty or contains spaces or control characters"));
        }
        if let Some(id) = &self.session_id
            && (id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(CodeBoxError::invalid(format!(
                "session id {id:?} must be non-empty ASCII letters, digits, '-', '_' or '.'"
            )));
        }
        // The codebox-api protocols have never sent a kernel either; anything more is refused.
        let only_kernel = SessionRequest { kernel: self.create.kernel.clone(), ..SessionRequest::default() };
        if protocol != Protocol::Native && self.create != only_kernel {
            return Err(CodeBoxError::unsupported(
                "session parameters (template, language, env, metadata, limits, timeouts) need the native protocol",
            ));
        }
        let http = match self.shared_http {
            Some(http) => http,
            None => HttpClient::new(self.client)?,
        };
        let (id, attached) = match self.session_id {
            Some(id) => (id, true),
            None => (new_session_id(), false),
        };
        let conn = Connection::new(id, attached, base, http, self.api_key, self.execution_timeout);
        let session: Box<dyn Session> = match protocol {
            Protocol::Native => Box::new(NativeSession::new(conn, self.create)),
            Protocol::CodeboxApi => Box::new(CodeboxApiSession::new(conn, Host::Service, self.factory_id)),
            Protocol::CodeboxApiServer => Box::new(CodeboxApiSession::new(conn, Host::SingleBox, self.factory_id)),
        };
        Ok(RemoteBox::with_session(session))
    }
}

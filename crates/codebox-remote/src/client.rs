//! [`Client`]: the sessions of one CodeBox server and API key — create, attach, list — and
//! the server's templates and pools.

use std::fmt;
use std::time::Duration;

use http::Method;

use codebox_core::{CodeBox, CodeBoxError, CodeBoxSettings, PoolStats, Result, ResumeReport, TemplateInfo};
use codebox_http::client::{ClientConfig, HttpClient, Request, Retry};
use codebox_http::wire::{API_PREFIX, NEXT_TOKEN_HEADER, ResumeResponse, SessionInfo};

use crate::builder::RemoteBoxBuilder;
use crate::remote_box::RemoteBox;
use crate::request::{SessionFilter, SessionRequest};
use crate::session::Protocol;

/// The most pages [`Client::list`] follows: a server that keeps answering with a next
/// token (a bug, or one listing sessions created as fast as it pages) must not loop forever.
const MAX_PAGES: usize = 10_000;

/// The sessions of one server, as one API key sees them. Only the native protocol of
/// `codebox serve` manages sessions; a client for the codebox-api protocols answers
/// `Unsupported` to everything but [`get`](Self::get).
///
/// ```no_run
/// # async fn demo() -> codebox_core::Result<()> {
/// use std::time::Duration;
/// use codebox_core::CodeBoxExt;
/// use codebox_remote::{Client, SessionFilter, SessionRequest};
///
/// let client = Client::builder().with_base_url("http://127.0.0.1:8069").with_api_key("sk-...").build()?;
/// let sandbox = client
///     .create(SessionRequest::new().with_metadata("user", "alice").with_timeout(Duration::from_secs(300)))
///     .await?;
/// println!("{}", sandbox.exec("print(1 + 1)").await?.stdout());
/// let mine = client.list(SessionFilter::new().with_metadata("user", "alice")).await?;
/// assert_eq!(mine.len(), 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    builder: RemoteBoxBuilder,
    base: String,
    protocol: Protocol,
    http: HttpClient,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The builder's Debug redacts the key.
        f.debug_struct("Client").field("base_url", &self.base).field("protocol", &self.protocol).finish_non_exhaustive()
    }
}

impl Client {
    /// A builder with the defaults of [`RemoteBoxBuilder`].
    pub fn builder() -> ClientBuilder {
        ClientBuilder { boxes: RemoteBoxBuilder::new() }
    }

    /// A client from `CODEBOX_*` settings (base URL, API key, execution timeout, kernel).
    /// A session id in the settings is ignored: use [`get`](Self::get) to attach.
    pub fn from_settings(settings: &CodeBoxSettings) -> Result<Self> {
        let mut settings = settings.clone();
        settings.session_id = None;
        ClientBuilder { boxes: RemoteBoxBuilder::from_settings(&settings) }.build()
    }

    /// The base URL of the server.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn native_only(&self, what: &str) -> Result<()> {
        if self.protocol == Protocol::Native {
            Ok(())
        } else {
            Err(CodeBoxError::unsupported(format!("{what} (only the native protocol of `codebox serve` has it)")))
        }
    }

    fn request(&self, method: Method, path: &str) -> Result<Request> {
        let mut req = Request::new(method, &format!("{}{API_PREFIX}{path}", self.base))?;
        if let Some(key) = self.builder.api_key() {
            req = req.bearer(key)?;
        }
        Ok(req)
    }

    /// Create a session as `request` says and start it: the box it returns deletes the
    /// session on [`stop`](CodeBox::stop) or when dropped.
    pub async fn create(&self, request: SessionRequest) -> Result<RemoteBox> {
        self.native_only("creating sessions with parameters")?;
        let sandbox = self.builder.clone().with_session_request(request).build()?;
        sandbox.start().await?;
        Ok(sandbox)
    }

    /// Attach to the key's existing session `id`: checked to exist, and left alone when the
    /// box is dropped (stop it to delete it).
    pub async fn get(&self, id: &str) -> Result<RemoteBox> {
        let sandbox = self.builder.clone().with_session_id(id).build()?;
        sandbox.start().await?;
        Ok(sandbox)
    }

    /// The key's sessions that pass `filter`, oldest first, every page of them.
    pub async fn list(&self, filter: SessionFilter) -> Result<Vec<SessionInfo>> {
        self.native_only("listing sessions")?;
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let query = filter.query(token.as_deref());
            let path = if query.is_empty() { "/sessions".to_owned() } else { format!("/sessions?{query}") };
            let resp = self.http.send(self.request(Method::GET, &path)?.retry(Retry::Idempotent)).await?;
            let next = resp.headers().get(NEXT_TOKEN_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let page: Vec<SessionInfo> = resp.json().await?;
            out.extend(page);
            match next {
                Some(next) => token = Some(next),
                None => return Ok(out),
            }
        }
        Err(CodeBoxError::protocol(format!("the server's listing went on for more than {MAX_PAGES} pages")))
    }

    /// Resume the key's paused session `id` (`POST /v1/sessions/{id}/resume`) and attach to
    /// it, with what came back of it and what did not, by name. Any request to a paused
    /// session resumes it too; this one says what the resume brought back.
    pub async fn resume(&self, id: &str) -> Result<(RemoteBox, ResumeReport)> {
        self.native_only("resuming sessions")?;
        let path = format!("/sessions/{}/resume", crate::path::encode_component(id));
        let answer: ResumeResponse = self.http.send(self.request(Method::POST, &path)?).await?.json().await?;
        let resumed = self.get(id).await?;
        Ok((resumed, answer.report))
    }

    /// The templates the server makes sessions from (`GET /v1/templates`).
    pub async fn templates(&self) -> Result<Vec<TemplateInfo>> {
        self.native_only("templates")?;
        self.http.send(self.request(Method::GET, "/templates")?.retry(Retry::Idempotent)).await?.json().await
    }

    /// The server's pools of ready boxes, per template (`GET /v1/pool`).
    pub async fn pool(&self) -> Result<Vec<PoolStats>> {
        self.native_only("pool statistics")?;
        self.http.send(self.request(Method::GET, "/pool")?.retry(Retry::Idempotent)).await?.json().await
    }
}

/// Builds a [`Client`]; the connection settings are those of [`RemoteBoxBuilder`], and
/// every box the client makes shares its connection pool.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    boxes: RemoteBoxBuilder,
}

impl ClientBuilder {
    /// The server's base URL, e.g. `http://127.0.0.1:8069`.
    pub fn with_base_url(mut self, url: impl Into<String>) -> Self {
        self.boxes = self.boxes.with_base_url(url);
        self
    }

    /// The API key sent as `Authorization: Bearer`.
    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.boxes = self.boxes.with_api_key(key);
        self
    }

    /// The protocol the server speaks.
    pub fn with_protocol(mut self, protocol: Protocol) -> Self {
        self.boxes = self.boxes.with_protocol(protocol);
        self
    }

    /// The timeout of an execution, in every box the client makes, whose options set none.
    pub fn with_execution_timeout(mut self, timeout: Duration) -> Self {
        self.boxes = self.boxes.with_execution_timeout(timeout);
        self
    }

    /// Every HTTP client setting at once.
    pub fn with_client_config(mut self, config: ClientConfig) -> Self {
        self.boxes = self.boxes.with_client_config(config);
        self
    }

    /// Everything else a box needs, from a box builder (its session id and parameters are
    /// replaced by each call's).
    pub fn with_box_builder(mut self, boxes: RemoteBoxBuilder) -> Self {
        self.boxes = boxes;
        self
    }

    /// Check the settings and make the client.
    pub fn build(self) -> Result<Client> {
        let probe = self.boxes.clone().with_session_id("client").build()?;
        let http = probe.http_client().clone();
        let base = probe.base_url().to_owned();
        let protocol = probe.protocol();
        drop(probe);
        Ok(Client { builder: self.boxes.with_shared_http(http.clone()), base, protocol, http })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_never_shows_its_key_and_needs_one_for_the_native_protocol() {
        let client = Client::builder().with_api_key("sk-top-secret").build().unwrap();
        assert!(!format!("{client:?}").contains("top-secret"));
        assert!(!format!("{:?}", Client::builder().with_api_key("sk-top-secret")).contains("top-secret"));
        let err = Client::builder().build().unwrap_err();
        assert!(err.to_string().contains("API key"), "{err}");
        let settings = CodeBoxSettings::new().with_api_key("k").with_session_id("ignored");
        assert_eq!(Client::from_settings(&settings).unwrap().base_url(), CodeBoxSettings::DEFAULT_BASE_URL);
    }
}

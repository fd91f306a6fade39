//! [`RemoteBox`]: the state shared by both protocols and the `CodeBox` implementation that
//! dispatches to them.

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use codebox_core::{
    ApiKey, BoxState, BoxStatus, ByteStream, Capabilities, CodeBox, CodeBoxError, CodeBoxSettings, CommandOutput,
    CommandSpec, EventStream, FileInfo, Result, RunOptions,
};
use codebox_http::client::{HttpClient, Request};

use crate::builder::{Protocol, RemoteBoxBuilder};
use crate::{native, v2};

/// A box that is a session on a CodeBox server.
///
/// Make one with [`RemoteBox::builder`], [`RemoteBox::from_settings`] or
/// [`RemoteBox::from_id`]. A box that created its session deletes it on
/// [`stop`](CodeBox::stop), and also when dropped inside a Tokio runtime; a box attached by
/// id leaves the session alone when dropped. The API key never appears in `Debug`, errors or
/// logs.
pub struct RemoteBox {
    pub(crate) inner: Inner,
}

pub(crate) struct Inner {
    /// Where the session lives and how to reach it; fixed for the box's life.
    pub(crate) conn: Connection,
    /// Whether the session is believed to exist on the server.
    pub(crate) running: AtomicBool,
    /// Whether `stop` was called.
    pub(crate) stopped: AtomicBool,
    pub(crate) capabilities: Mutex<Option<Capabilities>>,
}

/// The settings a box is built from.
pub(crate) struct Connection {
    pub(crate) id: String,
    /// The session was attached by id rather than created by this box.
    pub(crate) attached: bool,
    pub(crate) base: String,
    pub(crate) http: HttpClient,
    pub(crate) api_key: Option<ApiKey>,
    pub(crate) factory_id: Option<String>,
    pub(crate) kernel: Option<String>,
    pub(crate) protocol: Protocol,
    pub(crate) execution_timeout: Option<Duration>,
}

impl fmt::Debug for RemoteBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("RemoteBox")
            .field("id", &i.conn.id)
            .field("base_url", &i.conn.base)
            .field("protocol", &i.conn.protocol)
            .field("api_key", &i.conn.api_key)
            .field("attached", &i.conn.attached)
            .field("running", &i.running.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl RemoteBox {
    /// A builder with the defaults.
    pub fn builder() -> RemoteBoxBuilder {
        RemoteBoxBuilder::new()
    }

    /// A box from `CODEBOX_*` settings (see [`RemoteBoxBuilder::from_settings`]).
    pub fn from_settings(settings: &CodeBoxSettings) -> Result<Self> {
        RemoteBoxBuilder::from_settings(settings).build()
    }

    /// Attach to the existing session `id` on the server the settings name. The box is
    /// usable at once; [`start`](CodeBox::start) checks that the session exists.
    pub fn from_id(id: impl Into<String>, settings: &CodeBoxSettings) -> Result<Self> {
        RemoteBoxBuilder::from_settings(settings).with_session_id(id).build()
    }

    pub(crate) fn assemble(conn: Connection) -> Self {
        Self {
            inner: Inner {
                running: AtomicBool::new(conn.attached),
                conn,
                stopped: AtomicBool::new(false),
                capabilities: Mutex::new(None),
            },
        }
    }

    /// The base URL of the server.
    pub fn base_url(&self) -> &str {
        &self.inner.conn.base
    }

    /// The protocol spoken.
    pub fn protocol(&self) -> Protocol {
        self.inner.conn.protocol
    }

    /// The HTTP client (shared connection pool).
    pub fn http_client(&self) -> &HttpClient {
        &self.inner.conn.http
    }
}

impl Inner {
    /// A request with the credentials of this box.
    pub(crate) fn request(&self, method: http::Method, url: &str) -> Result<Request> {
        let mut req = Request::new(method, url)?;
        if let Some(key) = &self.conn.api_key {
            req = req.bearer(key)?;
        }
        Ok(req)
    }

    pub(crate) fn ensure_running(&self) -> Result<()> {
        if self.running.load(Ordering::Acquire) {
            Ok(())
        } else if self.stopped.load(Ordering::Acquire) {
            Err(CodeBoxError::not_running(format!("box {} was stopped", self.conn.id)))
        } else {
            Err(CodeBoxError::not_running(format!("box {} is not started; call start() first", self.conn.id)))
        }
    }

    pub(crate) fn not_running_status(&self) -> BoxStatus {
        if self.stopped.load(Ordering::Acquire) {
            BoxStatus::new(BoxState::Stopped)
        } else {
            BoxStatus::new(BoxState::NotStarted)
        }
    }

    /// The execution options with the box's default timeout filled in.
    pub(crate) fn with_default_timeout(&self, mut options: RunOptions) -> RunOptions {
        if options.timeout.is_none() {
            options.timeout = self.conn.execution_timeout;
        }
        options
    }
}

impl Drop for RemoteBox {
    fn drop(&mut self) {
        let i = &self.inner;
        if i.conn.protocol != Protocol::Native || i.conn.attached || !i.running.load(Ordering::Acquire) {
            return;
        }
        // A created session must not outlive its owner: delete it in the background.
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(session = %i.conn.id, "RemoteBox dropped outside a Tokio runtime; its session stays until the server reaps it");
            return;
        };
        let Ok(req) = native::delete_session_request(i) else { return };
        let http = i.conn.http.clone();
        let id = i.conn.id.clone();
        handle.spawn(async move {
            if let Err(e) = http.send(req).await {
                tracing::debug!(session = %id, error = %e, "deleting the session of a dropped RemoteBox failed");
            }
        });
    }
}

#[async_trait]
impl CodeBox for RemoteBox {
    fn id(&self) -> &str {
        &self.inner.conn.id
    }

    fn capabilities(&self) -> Capabilities {
        match self.inner.conn.protocol {
            Protocol::Native => {
                self.inner.capabilities.lock().ok().and_then(|c| c.clone()).unwrap_or_else(native::default_capabilities)
            }
            Protocol::CodeboxApi | Protocol::CodeboxApiServer => v2::capabilities(),
        }
    }

    async fn start(&self) -> Result<()> {
        match self.inner.conn.protocol {
            Protocol::Native => native::start(&self.inner).await,
            _ => v2::start(&self.inner).await,
        }
    }

    async fn stop(&self) -> Result<()> {
        match self.inner.conn.protocol {
            Protocol::Native => native::stop(&self.inner).await,
            _ => v2::stop(&self.inner).await,
        }
    }

    async fn status(&self) -> Result<BoxStatus> {
        match self.inner.conn.protocol {
            Protocol::Native => native::status(&self.inner).await,
            _ => v2::status(&self.inner).await,
        }
    }

    async fn run_stream(&self, code: &str, options: RunOptions) -> Result<EventStream> {
        let options = self.inner.with_default_timeout(options);
        match self.inner.conn.protocol {
            Protocol::Native => native::run_stream(&self.inner, code, options).await,
            _ => v2::run_stream(&self.inner, code, options).await,
        }
    }

    async fn upload(&self, path: &str, content: ByteStream) -> Result<FileInfo> {
        match self.inner.conn.protocol {
            Protocol::Native => native::upload(&self.inner, path, content).await,
            _ => v2::upload(&self.inner, path, content).await,
        }
    }

    async fn download(&self, path: &str) -> Result<ByteStream> {
        match self.inner.conn.protocol {
            Protocol::Native => native::download(&self.inner, path).await,
            _ => v2::download(&self.inner, path).await,
        }
    }

    async fn list_files(&self, dir: &str, recursive: bool) -> Result<Vec<FileInfo>> {
        match self.inner.conn.protocol {
            Protocol::Native => native::list_files(&self.inner, dir, recursive).await,
            _ => Err(v2::unsupported("list_files")),
        }
    }

    async fn delete_file(&self, path: &str) -> Result<()> {
        match self.inner.conn.protocol {
            Protocol::Native => native::delete_file(&self.inner, path).await,
            _ => Err(v2::unsupported("delete_file")),
        }
    }

    async fn install(&self, packages: &[String]) -> Result<String> {
        match self.inner.conn.protocol {
            Protocol::Native => native::install(&self.inner, packages).await,
            _ => Err(v2::unsupported("install")),
        }
    }

    async fn restart(&self) -> Result<()> {
        match self.inner.conn.protocol {
            Protocol::Native => native::post_empty(&self.inner, "restart").await,
            _ => Err(v2::unsupported("restart")),
        }
    }

    async fn interrupt(&self) -> Result<()> {
        match self.inner.conn.protocol {
            Protocol::Native => native::post_empty(&self.inner, "interrupt").await,
            _ => Err(v2::unsupported("interrupt")),
        }
    }

    async fn run_command(&self, command: CommandSpec) -> Result<CommandOutput> {
        match self.inner.conn.protocol {
            Protocol::Native => native::run_command(&self.inner, command).await,
            _ => Err(v2::unsupported("run_command")),
        }
    }
}

/// A fresh random session id: 32 hex digits from the standard library's random hasher keys.
pub(crate) fn new_session_id() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::with_capacity(32);
    for salt in 0..2u64 {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(salt);
        if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            h.write_u128(now.as_nanos());
        }
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_fresh_hex() {
        let (a, b) = (new_session_id(), new_session_id());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn the_key_is_never_shown_and_bad_settings_are_refused() {
        let b = RemoteBox::builder().with_api_key("sk-top-secret").build().unwrap();
        let dbg = format!("{b:?}");
        assert!(!dbg.contains("top-secret"), "{dbg}");
        let err = RemoteBox::builder().build().unwrap_err();
        assert!(err.to_string().contains("API key"), "{err}");
        let err = RemoteBox::builder().with_api_key("k").with_base_url("ftp://x").build().unwrap_err();
        assert_eq!(err.kind(), codebox_core::ErrorKind::InvalidInput);
        let err = RemoteBox::builder().with_api_key("k").with_session_id("a/b").build().unwrap_err();
        assert_eq!(err.kind(), codebox_core::ErrorKind::InvalidInput);
    }

    #[test]
    fn settings_pick_the_protocol_and_attach_by_id() {
        let s = CodeBoxSettings::new().with_api_key("k").with_base_url("https://codeboxapi.com/api/v2");
        let b = RemoteBoxBuilder::from_settings(&s);
        assert!(format!("{b:?}").contains("CodeboxApi"));
        let s = CodeBoxSettings::new().with_api_key("k").with_session_id("abc");
        let b = RemoteBox::from_settings(&s).unwrap();
        assert_eq!(b.id(), "abc");
        assert!(b.inner.conn.attached);
    }
}

//! Where the MCP service gets its boxes: [`SessionHost`], and [`OneBox`], the host of a
//! single box (a local kernel behind `codebox mcp` without a server).
//!
//! One service serves three homes through this trait: a stdio server over one local box, a
//! stdio server over a CodeBox server's sessions, and the server's own sessions at `/mcp`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use codebox_core::{CodeBox, CodeBoxError, Result};
use serde::Serialize;
use tokio::sync::Mutex;

/// Who a tool call comes from, as its transport tells it: the HTTP request (whose extensions
/// hold whatever the server put there when it authenticated the caller), or nothing over
/// stdio.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallContext<'a> {
    /// The request's head, for a call over Streamable HTTP.
    pub http: Option<&'a http::request::Parts>,
}

impl<'a> CallContext<'a> {
    /// The value of type `T` the server put in the HTTP request's extensions.
    pub fn extension<T: Send + Sync + 'static>(&self) -> Option<&'a T> {
        self.http.and_then(|parts| parts.extensions.get::<T>())
    }
}

/// What `create_session` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewSession {
    /// The language or kernel to run.
    pub language: Option<String>,
    /// A template of the server's catalogue.
    pub template: Option<String>,
    /// Environment variables of the box.
    pub env: BTreeMap<String, String>,
    /// The session's lifetime in seconds.
    pub timeout_secs: Option<u64>,
}

/// One session as `list_sessions` and `create_session` report it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionSummary {
    /// Its id: the `session_id` the other tools take.
    pub session_id: String,
    /// The language it runs, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// The template it was made from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// When it was created, in Unix seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<f64>,
    /// When it was last used, in Unix seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<f64>,
    /// Where it is in its life (`running`, ...).
    pub state: String,
}

/// A session's box, held for the length of one tool call.
pub struct Lease {
    /// The session's id.
    pub id: String,
    /// Its box, started.
    pub codebox: Arc<dyn CodeBox>,
    /// When the session started: files changed since are its artifacts.
    pub started_at: SystemTime,
    /// What the host knows of the session besides its box (limits, template...), shown by
    /// `get_execution_info`.
    pub details: serde_json::Value,
    /// Whatever the host keeps alive while the call uses the box (a server counts the
    /// session as in use, so its idle reaper leaves it alone).
    pub guard: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease").field("id", &self.id).field("codebox", &self.codebox.id()).finish_non_exhaustive()
    }
}

/// The boxes an MCP service works on.
#[async_trait]
pub trait SessionHost: Send + Sync + fmt::Debug + 'static {
    /// Whether callers may create, list and close sessions (a server is behind the host);
    /// otherwise there is only the default box and those tools are not offered.
    fn manages_sessions(&self) -> bool;

    /// The session `id`, or the caller's default box when `id` is `None` (made on first
    /// use).
    async fn get(&self, call: &CallContext<'_>, id: Option<&str>) -> Result<Lease>;

    /// Create a session.
    async fn create(&self, call: &CallContext<'_>, request: NewSession) -> Result<SessionSummary> {
        let _ = (call, request);
        Err(CodeBoxError::unsupported("create_session"))
    }

    /// The caller's sessions.
    async fn list(&self, call: &CallContext<'_>) -> Result<Vec<SessionSummary>> {
        let _ = call;
        Err(CodeBoxError::unsupported("list_sessions"))
    }

    /// Stop and remove the session `id`.
    async fn close(&self, call: &CallContext<'_>, id: &str) -> Result<()> {
        let _ = (call, id);
        Err(CodeBoxError::unsupported("close_session"))
    }
}

/// The id [`OneBox`] gives its box.
pub const DEFAULT_SESSION: &str = "default";

type MakeBox = dyn Fn() -> Result<Arc<dyn CodeBox>> + Send + Sync;

/// A host of one box, made and started on first use and stopped by [`shutdown`](Self::shutdown):
/// `codebox mcp` over a local kernel, one box per connection.
pub struct OneBox {
    make: Box<MakeBox>,
    current: Mutex<Option<(Arc<dyn CodeBox>, SystemTime)>>,
}

impl fmt::Debug for OneBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OneBox").finish_non_exhaustive()
    }
}

impl OneBox {
    /// A host whose box `make` builds (not yet started) when it is first needed.
    pub fn new(make: impl Fn() -> Result<Arc<dyn CodeBox>> + Send + Sync + 'static) -> Self {
        Self { make: Box::new(make), current: Mutex::new(None) }
    }

    /// Stop the box, if one was made: the end of the connection.
    pub async fn shutdown(&self) -> Result<()> {
        let current = self.current.lock().await.take();
        match current {
            Some((b, _)) => b.stop().await,
            None => Ok(()),
        }
    }
}

#[async_trait]
impl SessionHost for OneBox {
    fn manages_sessions(&self) -> bool {
        false
    }

    async fn get(&self, _call: &CallContext<'_>, id: Option<&str>) -> Result<Lease> {
        if let Some(id) = id
            && id != DEFAULT_SESSION
        {
            return Err(CodeBoxError::not_found(format!(
                "session {id}: this server has one box, `{DEFAULT_SESSION}`; leave session_id out"
            )));
        }
        let mut current = self.current.lock().await;
        let (codebox, started_at) = match &*current {
            Some((b, at)) => (Arc::clone(b), *at),
            None => {
                let b = (self.make)()?;
                b.start().await?;
                let at = SystemTime::now();
                *current = Some((Arc::clone(&b), at));
                (b, at)
            }
        };
        Ok(Lease { id: DEFAULT_SESSION.to_owned(), codebox, started_at, details: serde_json::Value::Null, guard: None })
    }
}

//! The codebox MCP server: a box's tools for AI agents over the Model Context Protocol,
//! built on the official Rust SDK (`rmcp`).
//!
//! [`McpService`] is the server handler; it works on the boxes a [`SessionHost`] gives it, so
//! one service serves `codebox mcp` over stdio (a local box, [`OneBox`], or a CodeBox
//! server's sessions) and the server's own sessions at `/mcp` (Streamable HTTP). The tools
//! and their arguments are described in `docs/mcp.md`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use codebox_mcp::{McpService, OneBox, serve_stdio};
//!
//! let host = Arc::new(OneBox::new(|| Err(codebox_core::CodeBoxError::unsupported("a box"))));
//! serve_stdio(McpService::new(host.clone())).await?;
//! host.shutdown().await?;
//! # Ok(()) }
//! ```

mod args;
mod host;
mod output;
mod service;
mod tools;

pub use crate::args::{DEFAULT_TIMEOUT_SECS, MAX_TIMEOUT_SECS};
pub use crate::host::{CallContext, DEFAULT_SESSION, Lease, NewSession, OneBox, SessionHost, SessionSummary};
pub use crate::output::{MAX_IMAGE_BYTES, MAX_IMAGES, MAX_TEXT_CHARS, cap_text};
pub use crate::service::McpService;
pub use crate::tools::{DEFAULT_LIST_ENTRIES, DEFAULT_READ_BYTES, MAX_LIST_ENTRIES, MAX_READ_BYTES};

/// Why serving MCP stopped short.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    /// The client's handshake failed or the transport closed before it.
    #[error("starting the MCP session: {0}")]
    Start(#[source] Box<rmcp::service::ServerInitializeError>),
    /// The task serving the connection failed.
    #[error("serving MCP: {0}")]
    Serve(#[from] tokio::task::JoinError),
}

/// Serve `service` on this process's stdin and stdout until the client goes away.
pub async fn serve_stdio(service: McpService) -> Result<(), McpError> {
    use rmcp::ServiceExt as _;
    let running = service.serve(rmcp::transport::stdio()).await.map_err(|e| McpError::Start(Box::new(e)))?;
    running.waiting().await?;
    Ok(())
}

/// Streamable HTTP: the service behind `/mcp` of a server, and its configuration.
pub mod http_service {
    use std::sync::Arc;

    pub use rmcp::transport::streamable_http_server::StreamableHttpServerConfig;
    use rmcp::transport::streamable_http_server::StreamableHttpService;
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;

    use crate::{McpService, SessionHost};

    /// The tower service a server mounts at `/mcp`.
    pub type McpHttpService = StreamableHttpService<McpService, LocalSessionManager>;

    /// A Streamable HTTP service over `host`'s boxes. The `Host` header check of `rmcp`
    /// (a guard against DNS rebinding of servers without authentication) is left to the
    /// caller's `config`.
    pub fn new(host: Arc<dyn SessionHost>, config: StreamableHttpServerConfig) -> McpHttpService {
        let service = McpService::new(host);
        StreamableHttpService::new(move || Ok(service.clone()), Arc::new(LocalSessionManager::default()), config)
    }
}

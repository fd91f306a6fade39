//! [`McpService`]: the MCP server handler. It lists the tools and runs a call on the box its
//! [`SessionHost`] gives it.

use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, Implementation, ListToolsResult, PaginatedRequestParams,
    ServerCapabilities, ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};

use crate::args::{self, schema};
use crate::host::{CallContext, SessionHost};
use crate::tools;

/// What the server tells a client about itself when it connects.
const INSTRUCTIONS: &str = "Run code in an isolated box that keeps its state between calls: \
`execute` runs code (Python by default) and returns its output and images; the file tools work \
in the box's working directory. Without `session_id` every tool works on this connection's \
default box.";

/// The MCP service over the boxes of a [`SessionHost`]. Cheap to clone: an HTTP server makes
/// one per MCP session or request.
#[derive(Debug, Clone)]
pub struct McpService {
    host: Arc<dyn SessionHost>,
    tools: Arc<Vec<Tool>>,
}

impl McpService {
    /// A service over `host`'s boxes.
    pub fn new(host: Arc<dyn SessionHost>) -> Self {
        let tools = Arc::new(tool_list(host.manages_sessions()));
        Self { host, tools }
    }

    /// The tools this service offers.
    pub fn tools(&self) -> &[Tool] {
        &self.tools
    }
}

fn tool(name: &'static str, description: &'static str, schema: serde_json::Map<String, serde_json::Value>) -> Tool {
    Tool::new(name, description, schema)
}

/// Every tool, with the session tools when a server is behind the host.
fn tool_list(sessions: bool) -> Vec<Tool> {
    let read_only = || ToolAnnotations::new().read_only(true);
    let mut list = vec![
        tool(
            "execute",
            "Run code in the box (Python unless `language` says otherwise). State is kept between \
             calls. Returns stdout, stderr, the last expression's value and displayed images; \
             isError when the code raised or timed out.",
            schema::<args::Execute>(),
        ),
        tool(
            "shell_execute",
            "Run a shell command line in the box with `bash -c`. Returns its exit code, stdout and \
             stderr; isError when it exits non-zero or times out.",
            schema::<args::ShellExecute>(),
        ),
        tool(
            "write_file",
            "Write a file in the box (text, or bytes in base64), creating or replacing it.",
            schema::<args::WriteFile>(),
        )
        .with_annotations(ToolAnnotations::new().idempotent(true)),
        tool(
            "read_file",
            "Read a file of the box: text comes back as text (cut past max_bytes), images as images; \
             other binary files are refused with their size and type.",
            schema::<args::ReadFile>(),
        )
        .with_annotations(read_only()),
        tool(
            "list_files",
            "List a directory of the box (capped at max_entries, with a truncated flag).",
            schema::<args::ListFiles>(),
        )
        .with_annotations(read_only()),
        tool("delete_file", "Delete a file of the box.", schema::<args::DeleteFile>())
            .with_annotations(ToolAnnotations::new().destructive(true)),
        tool("install_packages", "Install Python packages into the box with pip.", schema::<args::InstallPackages>()),
        tool(
            "restart",
            "Restart the box's kernel: every variable and import is lost; files stay.",
            schema::<args::SessionOnly>(),
        )
        .with_annotations(ToolAnnotations::new().destructive(true)),
        tool(
            "list_artifacts",
            "List the files created or changed in the box since its session started.",
            schema::<args::SessionOnly>(),
        )
        .with_annotations(read_only()),
        tool(
            "cleanup_artifacts",
            "Delete files created or changed since the session started (all of them, or those named).",
            schema::<args::CleanupArtifacts>(),
        )
        .with_annotations(ToolAnnotations::new().destructive(true)),
        tool(
            "get_execution_info",
            "Describe the box's environment: kernel and language versions, installed packages, \
             limits, isolation, capabilities.",
            schema::<args::SessionOnly>(),
        )
        .with_annotations(read_only()),
    ];
    if sessions {
        list.extend([
            tool(
                "create_session",
                "Create a new box (a session of the server); pass its session_id to the other tools.",
                schema::<args::CreateSession>(),
            ),
            tool("list_sessions", "List your sessions.", schema::<args::NoArgs>()).with_annotations(read_only()),
            tool("close_session", "Stop a session and delete its box.", schema::<args::CloseSession>())
                .with_annotations(ToolAnnotations::new().destructive(true)),
        ]);
    }
    list
}

impl ServerHandler for McpService {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("codebox", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.tools.to_vec()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tools.iter().find(|t| t.name == name).cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if !self.tools.iter().any(|t| t.name == request.name) {
            return Err(ErrorData::invalid_params(format!("no tool named `{}`", request.name), None));
        }
        let parts = context.extensions.get::<http::request::Parts>().cloned();
        let call = CallContext { http: parts.as_ref() };
        let result = tools::call(&*self.host, &call, &request, &context).await?;
        Ok(result.into())
    }
}

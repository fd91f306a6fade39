//! `codebox mcp`: the MCP server over stdio, for an MCP client (an agent's host) to start as
//! a subprocess. Its box is chosen as `codebox run` chooses: a local kernel without
//! CODEBOX_API_KEY (one box, started on first use), else sessions of the CodeBox server the
//! settings name (one default session per connection, or the one CODEBOX_SESSION_ID names,
//! plus any the client creates). Boxes this command made are stopped when the client goes.
//! Stdout carries the protocol alone: logs and progress go to stderr.

// The one error report of a command whose stdout is the protocol goes to stderr.
#![allow(clippy::print_stderr)]

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use async_trait::async_trait;
use codebox::{CodeBox, CodeBoxSettings, LocalBox, Result, SessionFilter, SessionInfo, SessionRequest};
use codebox_mcp::{CallContext, Lease, McpService, NewSession, OneBox, SessionHost, SessionSummary};
use tokio::sync::Mutex;

use crate::progress::ProgressView;

/// Exit status when the server cannot start or its box cannot be had.
const EXIT_FAILED: u8 = 2;

/// Arguments of `codebox mcp` (the box comes from the CODEBOX_* settings, as for `codebox run`).
#[derive(Debug, clap::Args)]
pub(crate) struct McpArgs {}

pub(crate) fn main(_args: McpArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("codebox mcp: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match runtime.block_on(serve()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("codebox mcp: {e:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

async fn serve() -> anyhow::Result<()> {
    let settings = codebox::settings_from_env_and_file(".env").context("reading the CODEBOX_* settings")?;
    if settings.verbose {
        crate::run::log_to_stderr();
    }
    if settings.wants_local() {
        let local = settings.clone();
        let host = Arc::new(OneBox::new(move || {
            let view = ProgressView::for_stderr();
            let b = LocalBox::builder().with_settings(&local).with_progress(move |event| view.show(event)).build()?;
            Ok(Arc::new(b) as Arc<dyn CodeBox>)
        }));
        let served = codebox_mcp::serve_stdio(McpService::new(host.clone())).await;
        host.shutdown().await.context("stopping the box")?;
        served?;
    } else {
        let host = Arc::new(RemoteHost::new(&settings)?);
        let served = codebox_mcp::serve_stdio(McpService::new(host.clone())).await;
        host.shutdown().await;
        served?;
    }
    Ok(())
}

/// The sessions of a CodeBox server, as the settings' API key sees them.
#[derive(Debug)]
struct RemoteHost {
    client: codebox::Client,
    /// A session to use as the default one, named by CODEBOX_SESSION_ID (never stopped here).
    attach: Option<String>,
    /// The default session's id, once there is one.
    default: Mutex<Option<String>>,
    /// Boxes of sessions in use: those this connection created end with it.
    boxes: Mutex<HashMap<String, Remote>>,
}

/// A session's box as this connection holds it.
#[derive(Debug)]
struct Remote {
    codebox: Arc<codebox::RemoteBox>,
    /// When this connection first used it.
    since: SystemTime,
    /// Whether this connection created it (and so ends it).
    created: bool,
}

impl Remote {
    fn created(b: codebox::RemoteBox) -> Self {
        Self { codebox: Arc::new(b), since: SystemTime::now(), created: true }
    }
}

fn summary(info: &SessionInfo) -> SessionSummary {
    SessionSummary {
        session_id: info.id.clone(),
        language: info.language.clone(),
        template: info.template.clone(),
        created_at: Some(info.created_at),
        last_used_at: Some(info.last_used_at),
        state: info.state.to_string(),
    }
}

impl RemoteHost {
    fn new(settings: &CodeBoxSettings) -> Result<Self> {
        Ok(Self {
            client: codebox::Client::from_settings(settings)?,
            attach: settings.session_id.clone(),
            default: Mutex::new(None),
            boxes: Mutex::new(HashMap::new()),
        })
    }

    /// The box of session `id`, attached on first use.
    async fn attached(&self, id: &str) -> Result<(Arc<codebox::RemoteBox>, SystemTime)> {
        let mut boxes = self.boxes.lock().await;
        if let Some(r) = boxes.get(id) {
            return Ok((Arc::clone(&r.codebox), r.since));
        }
        let b = Arc::new(self.client.get(id).await?);
        let since = SystemTime::now();
        boxes.insert(id.to_owned(), Remote { codebox: Arc::clone(&b), since, created: false });
        Ok((b, since))
    }

    /// Stop the sessions this connection created (its default one among them); those it
    /// only attached to stay.
    async fn shutdown(&self) {
        let created: Vec<_> = self.boxes.lock().await.drain().filter(|(_, r)| r.created).collect();
        for (id, r) in created {
            match tokio::time::timeout(Duration::from_secs(10), r.codebox.stop()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(session = %id, error = %e, "stopping a session failed"),
                Err(_) => tracing::warn!(session = %id, "stopping a session took too long"),
            }
        }
    }
}

#[async_trait]
impl SessionHost for RemoteHost {
    fn manages_sessions(&self) -> bool {
        true
    }

    async fn get(&self, _call: &CallContext<'_>, id: Option<&str>) -> Result<Lease> {
        let id = match id {
            Some(id) => id.to_owned(),
            None => {
                let mut default = self.default.lock().await;
                match &*default {
                    Some(id) => id.clone(),
                    None => {
                        let id = match &self.attach {
                            Some(id) => id.clone(),
                            None => {
                                let b = self.client.create(SessionRequest::new()).await?;
                                let id = b.id().to_owned();
                                self.boxes.lock().await.insert(id.clone(), Remote::created(b));
                                id
                            }
                        };
                        *default = Some(id.clone());
                        id
                    }
                }
            }
        };
        let (b, started_at) = self.attached(&id).await?;
        Ok(Lease { id, codebox: b, started_at, details: serde_json::Value::Null, guard: None })
    }

    async fn create(&self, _call: &CallContext<'_>, request: NewSession) -> Result<SessionSummary> {
        let mut req = SessionRequest::new();
        if let Some(language) = request.language {
            req = req.with_language(language);
        }
        if let Some(template) = request.template {
            req = req.with_template(template);
        }
        for (k, v) in request.env {
            req = req.with_env(k, v);
        }
        if let Some(secs) = request.timeout_secs {
            req = req.with_timeout(Duration::from_secs(secs));
        }
        let b = self.client.create(req).await?;
        let id = b.id().to_owned();
        self.boxes.lock().await.insert(id.clone(), Remote::created(b));
        let listed = self.client.list(SessionFilter::new()).await?;
        Ok(listed.iter().find(|s| s.id == id).map(summary).unwrap_or(SessionSummary {
            session_id: id,
            language: None,
            template: None,
            created_at: None,
            last_used_at: None,
            state: "running".to_owned(),
        }))
    }

    async fn list(&self, _call: &CallContext<'_>) -> Result<Vec<SessionSummary>> {
        Ok(self.client.list(SessionFilter::new()).await?.iter().map(summary).collect())
    }

    async fn close(&self, _call: &CallContext<'_>, id: &str) -> Result<()> {
        let known = self.boxes.lock().await.remove(id);
        let mut default = self.default.lock().await;
        if default.as_deref() == Some(id) {
            *default = None;
        }
        drop(default);
        // Stopping a remote box deletes its session, attached or created.
        let b = match known {
            Some(r) => r.codebox,
            None => Arc::new(self.client.get(id).await?),
        };
        b.stop().await
    }
}

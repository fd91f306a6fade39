//! E2B's control plane (`X-API-KEY`): create, connect (resuming a paused sandbox), kill,
//! set_timeout, get_info, list with metadata and state filters and pages, get_metrics,
//! pause. A sandbox is a session of the caller's key; another key's is not found.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use codebox_core::{BoxMetrics, ErrorKind};
use codebox_http::server::{ApiError, Body, json_response};
use codebox_http::wire::{CreateSession, SessionInfo, SessionState};
use http::{HeaderValue, Method};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};

use super::{DOMAIN, ENVD_VERSION, no_content, no_route, read_json};
use crate::auth::Owner;
use crate::params::{SessionSpec, check_timeout};
use crate::sessions::Session;
use crate::state::{ApiResult, AppState};

/// The template names E2B's SDKs ask for by default: both are the server's default template.
const DEFAULT_TEMPLATES: [&str; 2] = ["code-interpreter-v1", "base"];
/// The `clientID` of every sandbox (E2B's names the machine; one server is one here).
const CLIENT_ID: &str = "codebox";
/// The header of the next page's token in a listing.
const NEXT_TOKEN_HEADER: &str = "x-next-token";
/// The page size of a listing that asks for none, and the largest one.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// `POST /v2/sandboxes`. Keys the SDK may send and this server does not use (network,
/// volume mounts, MCP, ...) are ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateBody {
    #[serde(rename = "templateID")]
    template_id: Option<String>,
    timeout: Option<u64>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    env_vars: Option<BTreeMap<String, String>>,
    auto_pause: Option<bool>,
}

/// `POST /sandboxes/{id}/timeout`.
#[derive(Debug, Deserialize)]
struct TimeoutBody {
    timeout: u64,
}

/// `POST /v2/sandboxes/{id}/connect`.
#[derive(Debug, Default, Deserialize)]
struct ConnectBody {
    timeout: Option<u64>,
}

/// The answer of create and connect.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SandboxAnswer {
    #[serde(rename = "templateID")]
    template_id: String,
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
    #[serde(rename = "clientID")]
    client_id: &'static str,
    envd_version: &'static str,
    envd_access_token: String,
    traffic_access_token: String,
    domain: &'static str,
}

/// The answer of get_info, and one item of a listing.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SandboxDetail {
    #[serde(rename = "templateID")]
    template_id: String,
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
    #[serde(rename = "clientID")]
    client_id: &'static str,
    started_at: String,
    end_at: String,
    envd_version: &'static str,
    cpu_count: u32,
    #[serde(rename = "memoryMB")]
    memory_mb: u64,
    #[serde(rename = "diskSizeMB")]
    disk_size_mb: u64,
    state: &'static str,
    metadata: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    envd_access_token: Option<String>,
    domain: &'static str,
}

/// One sample of get_metrics.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SandboxMetric {
    timestamp: String,
    timestamp_unix: u64,
    cpu_count: u32,
    cpu_used_pct: f64,
    mem_used: u64,
    mem_total: u64,
    mem_cache: u64,
    disk_used: u64,
    disk_total: u64,
}

/// Answer a control-plane request of `owner`.
pub(super) async fn handle(state: &Arc<AppState>, owner: Owner, req: Request<Incoming>) -> ApiResult<Response<Body>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let rest = path.strip_prefix("/v2").unwrap_or(&path);
    let Some(rest) = rest.strip_prefix("/sandboxes") else { return Err(no_route(&method, &path)) };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match (&method, segments.as_slice()) {
        (&Method::POST, []) => create(state, owner, req).await,
        (&Method::GET, []) => list(state, owner, req.uri().query()).await,
        (&Method::GET, [id]) => get_info(state, owner, id).await,
        (&Method::DELETE, [id]) => kill(state, owner, id).await,
        (&Method::POST, [id, "timeout"]) => set_timeout(state, owner, id, req).await,
        // `resume` is the deprecated name of connect-to-resume.
        (&Method::POST, [id, "connect" | "resume"]) => connect(state, owner, id, req).await,
        (&Method::POST, [id, "pause"]) => pause(state, owner, id).await,
        (&Method::GET, [id, "metrics"]) => metrics(state, owner, id, req.uri().query()).await,
        _ => Err(no_route(&method, &path)),
    }
}

/// The codebox template an E2B template name means: `None` for the server's default.
fn template_for(state: &AppState, name: Option<&str>) -> ApiResult<Option<String>> {
    match name {
        None => Ok(None),
        Some(name) if DEFAULT_TEMPLATES.contains(&name) => Ok(None),
        Some(name) if state.factory.templates().iter().any(|t| t.name == name) => Ok(Some(name.to_owned())),
        Some(name) => {
            let mut known: Vec<String> = DEFAULT_TEMPLATES.iter().map(|t| (*t).to_owned()).collect();
            known.extend(state.factory.templates().into_iter().map(|t| t.name));
            Err(ApiError::new(
                404,
                ErrorKind::NotFound,
                format!("template {name:?} not found; this server has: {}", known.join(", ")),
            ))
        }
    }
}

async fn create(state: &Arc<AppState>, owner: Owner, req: Request<Incoming>) -> ApiResult<Response<Body>> {
    let body: CreateBody = read_json(state, req)
        .await?
        .ok_or_else(|| ApiError::new(400, ErrorKind::InvalidInput, "create needs a JSON body {\"templateID\": ...}"))?;
    let template = template_for(state, body.template_id.as_deref())?;
    let e2b_template = body.template_id.clone().unwrap_or_else(|| DEFAULT_TEMPLATES[0].to_owned());
    let wire = serde_json::json!({
        "template": template,
        "env": body.env_vars.unwrap_or_default(),
        "metadata": body.metadata.unwrap_or_default(),
        "timeout": body.timeout,
        "auto_pause": body.auto_pause,
    });
    let wire: CreateSession = serde_json::from_value(wire)
        .map_err(|e| ApiError::new(400, ErrorKind::InvalidInput, format!("malformed create body: {e}")))?;
    let spec = SessionSpec::from_body(&state.config, &wire)?;
    let (session, _) = state.registry.get_or_create_with(owner, None, spec).await?;
    forget_gone(state);
    tracing::info!(session = %session.id, %owner, template = %e2b_template, "E2B sandbox created");
    let answer = sandbox_answer(state, &session, &e2b_template);
    Ok(json_response(StatusCode::CREATED, &answer))
}

/// Forget the tokens of sessions that are gone.
fn forget_gone(state: &AppState) {
    state.e2b.tokens.retain(|owner, id, created_at| {
        state.registry.get(owner, id).is_some_and(|s| {
            let gap = s.created_at().duration_since(created_at).or_else(|_| created_at.duration_since(s.created_at()));
            gap.is_ok_and(|g| g < Duration::from_millis(1))
        })
    });
}

fn sandbox_answer(state: &AppState, session: &Session, template: &str) -> SandboxAnswer {
    let (token, template) = state.e2b.tokens.issue(session, template);
    SandboxAnswer {
        template_id: template,
        sandbox_id: session.id.clone(),
        client_id: CLIENT_ID,
        envd_version: ENVD_VERSION,
        envd_access_token: token.clone(),
        traffic_access_token: token,
        domain: DOMAIN,
    }
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

fn unix_time(secs: f64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs_f64(secs.max(0.0))
}

/// The E2B view of `session`.
async fn detail(state: &AppState, session: &Session) -> (SandboxDetail, SessionInfo) {
    let info = session.info(state.config.max_upload_bytes).await;
    let known = state.e2b.tokens.of(session);
    let template = known
        .as_ref()
        .map(|(_, t)| t.clone())
        .or_else(|| info.template.clone())
        .unwrap_or_else(|| DEFAULT_TEMPLATES[0].to_owned());
    let started = unix_time(info.created_at);
    // A session without a lifetime lives until it idles out: that is its end as far as
    // anyone can say now.
    let end = info
        .expires_at
        .map_or_else(|| unix_time(info.last_used_at) + Duration::from_secs(info.idle_timeout), unix_time);
    let limits = &info.limits;
    let detail = SandboxDetail {
        template_id: template,
        sandbox_id: session.id.clone(),
        client_id: CLIENT_ID,
        started_at: rfc3339(started),
        end_at: rfc3339(end),
        envd_version: ENVD_VERSION,
        cpu_count: limits.cpus.map_or(1, |c| c.ceil().max(1.0) as u32),
        memory_mb: limits.memory_bytes.map_or(0, |b| b >> 20),
        disk_size_mb: limits.disk_bytes.map_or(0, |b| b >> 20),
        state: if info.state == SessionState::Paused { "paused" } else { "running" },
        metadata: info.metadata.clone(),
        envd_access_token: known.map(|(token, _)| token),
        domain: DOMAIN,
    };
    (detail, info)
}

async fn get_info(state: &Arc<AppState>, owner: Owner, id: &str) -> ApiResult<Response<Body>> {
    let session = state.registry.require(owner, id)?;
    let (detail, _) = detail(state, &session).await;
    Ok(json_response(StatusCode::OK, &detail))
}

async fn kill(state: &Arc<AppState>, owner: Owner, id: &str) -> ApiResult<Response<Body>> {
    if state.registry.stop(owner, id).await {
        state.e2b.tokens.forget(owner, id);
        state.e2b.counts.forget(owner, id);
        tracing::info!(session = %id, %owner, "E2B sandbox killed");
        Ok(no_content())
    } else {
        Err(state.registry.missing(owner, id))
    }
}

async fn set_timeout(
    state: &Arc<AppState>,
    owner: Owner,
    id: &str,
    req: Request<Incoming>,
) -> ApiResult<Response<Body>> {
    let session = state.registry.require(owner, id)?;
    let body: TimeoutBody = read_json(state, req)
        .await?
        .ok_or_else(|| ApiError::new(400, ErrorKind::InvalidInput, "set_timeout needs a JSON body {\"timeout\": N}"))?;
    let timeout = check_timeout(&state.config, body.timeout)?;
    session.set_timeout(timeout);
    session.touch();
    Ok(no_content())
}

async fn connect(state: &Arc<AppState>, owner: Owner, id: &str, req: Request<Incoming>) -> ApiResult<Response<Body>> {
    let body: ConnectBody = read_json(state, req).await?.unwrap_or_default();
    let timeout = body.timeout.map(|t| check_timeout(&state.config, t)).transpose()?;
    let session = state.registry.require(owner, id)?;
    let (session, status) = if session.is_paused() {
        let (session, _) = state.registry.resume(owner, id).await?;
        (session, StatusCode::CREATED)
    } else {
        (session, StatusCode::OK)
    };
    // Connecting only ever extends a sandbox's lifetime.
    if let Some(timeout) = timeout
        && session.expires_at().is_some_and(|at| at < SystemTime::now() + timeout)
    {
        session.set_timeout(timeout);
    }
    session.touch();
    let template = session.info(state.config.max_upload_bytes).await.template;
    let answer = sandbox_answer(state, &session, template.as_deref().unwrap_or(DEFAULT_TEMPLATES[0]));
    Ok(json_response(status, &answer))
}

async fn pause(state: &Arc<AppState>, owner: Owner, id: &str) -> ApiResult<Response<Body>> {
    let session = state.registry.require(owner, id)?;
    if session.is_paused() {
        return Err(ApiError::new(409, ErrorKind::InvalidInput, format!("sandbox {id} is already paused")));
    }
    state.registry.pause(owner, id).await?;
    Ok(no_content())
}

/// A listing's query: metadata filters (`metadata=k%3Dv%26k2%3Dv2`), states, a page.
#[derive(Debug, Default, PartialEq)]
struct ListQuery {
    metadata: BTreeMap<String, String>,
    /// The states asked for; empty for every state.
    states: Vec<String>,
    limit: usize,
    /// Where the page starts, in the listing's order.
    offset: usize,
}

fn decode(s: &str) -> ApiResult<String> {
    let plus_as_space = s.replace('+', " ");
    percent_decode_str(&plus_as_space)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| ApiError::new(400, ErrorKind::InvalidInput, format!("{s:?} is not percent-encoded UTF-8")))
}

impl ListQuery {
    fn parse(query: Option<&str>) -> ApiResult<Self> {
        let bad = |m: String| ApiError::new(400, ErrorKind::InvalidInput, m);
        let mut out = Self { limit: DEFAULT_PAGE, ..Self::default() };
        for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode(value)?;
            match key {
                "metadata" => {
                    for filter in value.split('&').filter(|f| !f.is_empty()) {
                        let (k, v) = filter.split_once('=').unwrap_or((filter, ""));
                        out.metadata.insert(decode(k)?, decode(v)?);
                    }
                }
                "state" => {
                    for s in value.split(',').filter(|s| !s.is_empty()) {
                        if s != "running" && s != "paused" {
                            return Err(bad(format!("state {s:?} is not `running` or `paused`")));
                        }
                        out.states.push(s.to_owned());
                    }
                }
                "limit" => {
                    out.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|l| (1..=MAX_PAGE).contains(l))
                        .ok_or_else(|| bad(format!("limit {value:?} is not a number from 1 to {MAX_PAGE}")))?;
                }
                "nextToken" => {
                    out.offset = value.parse().map_err(|_| bad(format!("nextToken {value:?} is not one of ours")))?;
                }
                // Ordering and filters this server does not keep are accepted and ignored.
                _ => {}
            }
        }
        Ok(out)
    }
}

async fn list(state: &Arc<AppState>, owner: Owner, query: Option<&str>) -> ApiResult<Response<Body>> {
    let query = ListQuery::parse(query)?;
    let mut matching = Vec::new();
    for session in state.registry.list_in(crate::sessions::Scope::Owner(owner)) {
        if !query.metadata.iter().all(|(k, v)| session.metadata().get(k) == Some(v)) {
            continue;
        }
        let state_name = if session.is_paused() { "paused" } else { "running" };
        if !query.states.is_empty() && !query.states.iter().any(|s| s == state_name) {
            continue;
        }
        matching.push(session);
    }
    let page: Vec<&Arc<Session>> = matching.iter().skip(query.offset).take(query.limit).collect();
    let mut details = Vec::with_capacity(page.len());
    for session in &page {
        details.push(detail(state, session).await.0);
    }
    let mut resp = json_response(StatusCode::OK, &details);
    let next = query.offset + page.len();
    if next < matching.len()
        && let Ok(value) = HeaderValue::from_str(&next.to_string())
    {
        resp.headers_mut().insert(NEXT_TOKEN_HEADER, value);
    }
    Ok(resp)
}

/// `start` and `end` of a metrics query, Unix seconds.
fn metrics_window(query: Option<&str>) -> ApiResult<(Option<u64>, Option<u64>)> {
    let (mut start, mut end) = (None, None);
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let secs = || {
            value.parse::<u64>().map_err(|_| {
                ApiError::new(400, ErrorKind::InvalidInput, format!("{key}={value:?}: expected Unix seconds"))
            })
        };
        match key {
            "start" => start = Some(secs()?),
            "end" => end = Some(secs()?),
            _ => {}
        }
    }
    Ok((start, end))
}

fn metric(sample: &BoxMetrics) -> SandboxMetric {
    let at = UNIX_EPOCH + Duration::from_millis(sample.timestamp_ms);
    SandboxMetric {
        timestamp: rfc3339(at),
        timestamp_unix: sample.timestamp_ms / 1000,
        cpu_count: sample.cpu_count.unwrap_or(1),
        cpu_used_pct: sample.cpu_percent.unwrap_or_default(),
        mem_used: sample.memory_used_bytes.unwrap_or_default(),
        mem_total: sample.memory_limit_bytes.unwrap_or_default(),
        mem_cache: 0,
        disk_used: sample.disk_used_bytes.unwrap_or_default(),
        disk_total: sample.disk_limit_bytes.unwrap_or_default(),
    }
}

async fn metrics(state: &Arc<AppState>, owner: Owner, id: &str, query: Option<&str>) -> ApiResult<Response<Body>> {
    let (start, end) = metrics_window(query)?;
    // Not touched: watching a sandbox is not using it.
    let session = state.registry.require(owner, id)?;
    if session.is_paused() || !session.codebox.capabilities().metrics {
        return Ok(json_response(StatusCode::OK, &Vec::<SandboxMetric>::new()));
    }
    let rings = &state.metrics_rings;
    if rings.latest(&session).is_none() {
        // A series starts with a sample: a caller asking at once gets the one taken now.
        crate::sampler::measure(rings, &session).await?;
    }
    let since_ms = start.map_or(0, |s| (s * 1000).saturating_sub(1));
    let samples: Vec<SandboxMetric> = rings
        .since(&session, since_ms)
        .iter()
        .filter(|s| end.is_none_or(|end| s.timestamp_ms / 1000 <= end))
        .map(metric)
        .collect();
    Ok(json_response(StatusCode::OK, &samples))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refuses(query: &str) -> bool {
        ListQuery::parse(Some(query)).is_err()
    }

    #[test]
    fn list_queries_read_the_sdks_double_encoded_metadata() {
        // The SDK url-encodes `{"user": "a b", "k": "v"}` and then the parameter itself.
        let q =
            ListQuery::parse(Some("metadata=user%3Da%2Bb%26k%3Dv&state=running%2Cpaused&limit=2&nextToken=4")).unwrap();
        assert_eq!(q.metadata.get("user").map(String::as_str), Some("a b"));
        assert_eq!(q.metadata.get("k").map(String::as_str), Some("v"));
        assert_eq!(q.states, ["running", "paused"]);
        assert_eq!((q.limit, q.offset), (2, 4));
        for bad in ["state=gone", "limit=0", "limit=x", "nextToken=abc", "metadata=%FF"] {
            assert!(refuses(bad), "{bad}");
        }
    }

    #[test]
    fn metric_windows_are_unix_seconds() {
        assert_eq!(metrics_window(Some("start=10&end=20")).unwrap(), (Some(10), Some(20)));
        assert!(metrics_window(Some("start=-1")).is_err());
    }
}

//! The native API (`/v1`) handlers.

mod catalogue;
mod contexts;
mod execute;
mod files;
mod history;
mod metrics;
mod ports;
mod processes;
mod sessions;

use std::sync::Arc;

use codebox_core::{CodeBoxError, CommandSpec, ErrorKind, Result};
use codebox_http::server::{ApiError, Body, json_response, read_budgeted};
use codebox_http::wire::{InstallRequest, InstallResponse, PackagesResponse};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::de::DeserializeOwned;

use crate::auth::Owner;
use crate::routes::{Params, Route};
use crate::sessions::Session;
use crate::state::{ApiResult, AppState};

pub(crate) use files::percent_decode;
pub(crate) use ports::Peer;

/// Answer a native API request for an authenticated caller.
pub(crate) async fn dispatch(
    state: &Arc<AppState>,
    route: Route,
    params: Params<'_>,
    owner: Owner,
    req: Request<Incoming>,
) -> ApiResult<Response<Body>> {
    let id = params.id.map(percent_decode).transpose()?;
    let id = id.as_deref().unwrap_or_default();
    let ctx = params.ctx.map(percent_decode).transpose()?;
    let ctx = ctx.as_deref().unwrap_or_default();
    // Any request to a paused session resumes it first (as E2B's `connect` does); deleting
    // it, describing it and pausing or resuming it act on it as it is.
    if !id.is_empty()
        && !matches!(
            route,
            Route::GetSession | Route::DeleteSession | Route::PauseSession | Route::ResumeSession | Route::ListSessions
        )
        && state.registry.get(owner, id).is_some_and(|s| s.is_paused())
        && let Err(e) = state.registry.resume(owner, id).await
    {
        // A snapshot that cannot be resumed still has its files: listing and downloading
        // them read the snapshot itself.
        let reads_files = matches!(route, Route::ListFiles | Route::GetFile);
        if !(reads_files && e.kind == ErrorKind::InvalidInput) {
            return Err(e);
        }
        tracing::info!(session = %id, error = %e, "serving a paused session's files from its snapshot");
    }
    match route {
        Route::Health | Route::Ready | Route::Metrics | Route::OpenApi => Err(CodeBoxError::not_found("route").into()),
        Route::CreateSession => sessions::create(state, owner, req).await,
        Route::ListSessions => sessions::list(state, owner, &req).await,
        Route::GetSession => sessions::get(state, owner, id).await,
        Route::SetTimeout => sessions::set_timeout(state, owner, id, req).await,
        Route::DeleteSession => sessions::delete(state, state.session_owner(owner, id)?, id).await,
        Route::Execute => execute::execute(state, owner, id, req).await,
        Route::Interrupt => {
            let session = state.registry.require(owner, id)?;
            session.touch();
            session.codebox.interrupt().await?;
            Ok(no_content())
        }
        Route::Restart => {
            let session = state.registry.require(owner, id)?;
            let _use = session.use_guard();
            session.codebox.restart().await?;
            Ok(no_content())
        }
        Route::Install => {
            let session = state.registry.require(owner, id)?;
            let body: InstallRequest = json_body(state, req).await?;
            check_packages(&body.packages)?;
            let _use = session.use_guard();
            let output = session.codebox.install(&body.packages).await?;
            Ok(json_response(StatusCode::OK, &InstallResponse { output }))
        }
        Route::Packages => {
            let session = state.registry.require(owner, id)?;
            let _use = session.use_guard();
            let packages = session.codebox.packages().await?;
            Ok(json_response(StatusCode::OK, &PackagesResponse { packages }))
        }
        Route::History => history::history(state, owner, id, &req).await,
        Route::ExecutionStats => history::stats(state, owner, id).await,
        Route::SessionMetrics => metrics::metrics(state, owner, id, &req).await,
        Route::Commands => {
            let session = state.registry.require(owner, id)?;
            let spec: CommandSpec = json_body(state, req).await?;
            if spec.program.is_empty() {
                return Err(CodeBoxError::invalid("`program` must name a program").into());
            }
            let _use = session.use_guard();
            let output = session.codebox.run_command(spec).await?;
            Ok(json_response(StatusCode::OK, &output))
        }
        Route::ListFiles => files::list(state, owner, id, &req).await,
        Route::PutFile => files::put(state, owner, id, params.path.unwrap_or_default(), req).await,
        Route::GetFile => files::get(state, owner, id, params.path.unwrap_or_default(), &req).await,
        Route::DeleteFile => files::delete(state, owner, id, params.path.unwrap_or_default()).await,
        Route::StatFile => files::stat_route(state, owner, id, params.path.unwrap_or_default()).await,
        Route::MakeDir => files::make_dir(state, owner, id, params.path.unwrap_or_default()).await,
        Route::Rename => files::rename(state, owner, id, req).await,
        Route::ListTemplates => catalogue::templates(state),
        Route::PoolStats => catalogue::pool(state),
        Route::CreateContext => contexts::create(state, owner, id, req).await,
        Route::ListContexts => contexts::list(state, owner, id).await,
        Route::RestartContext => contexts::restart(state, owner, id, ctx).await,
        Route::InterruptContext => contexts::interrupt(state, owner, id, ctx).await,
        Route::DeleteContext => contexts::delete(state, owner, id, ctx).await,
        Route::PauseSession => sessions::pause(state, state.session_owner(owner, id)?, id).await,
        Route::ResumeSession => sessions::resume(state, state.session_owner(owner, id)?, id).await,
        Route::StartProcess => processes::start(state, owner, id, req).await,
        Route::ListProcesses => processes::list(state, owner, id).await,
        Route::ConnectProcess => processes::connect(state, owner, id, params.pid.unwrap_or_default()).await,
        Route::ProcessInput => processes::input(state, owner, id, params.pid.unwrap_or_default(), req).await,
        Route::CloseProcessInput => processes::close_input(state, owner, id, params.pid.unwrap_or_default()).await,
        Route::SignalProcess => processes::signal(state, owner, id, params.pid.unwrap_or_default(), req).await,
        Route::Port | Route::PortPath => {
            let port = params.port.unwrap_or_default();
            ports::proxy(state, owner, id, port, params.path, req).await
        }
    }
}

/// A 204.
pub(crate) fn no_content() -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

/// Whether the request says its body is JSON.
fn is_json(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            let mime = mime.trim();
            mime.eq_ignore_ascii_case("application/json")
                || (mime.len() > 5
                    && mime[..mime.len() - 5].contains('/')
                    && mime.to_ascii_lowercase().ends_with("+json"))
        })
}

/// Read and parse a JSON request body: 415 unless it is `application/json`, 413 over the
/// JSON limit (at once when `Content-Length` says so), 503 when the server's budget of
/// buffered body bytes stays spent, 400 when malformed.
pub(crate) async fn json_body<T: DeserializeOwned>(state: &AppState, req: Request<Incoming>) -> ApiResult<T> {
    if !is_json(&req) {
        return Err(ApiError::new(
            415,
            ErrorKind::InvalidInput,
            "this route takes a JSON body: send `Content-Type: application/json`",
        ));
    }
    let limit = state.config.max_json_bytes;
    let body = read_budgeted(req.into_body(), limit, state.config.body_idle_timeout, &state.body_budget).await?;
    serde_json::from_slice(&body.bytes)
        .map_err(|e| CodeBoxError::invalid(format!("malformed JSON body: {e}")).with_source(e).into())
}

/// Like [`json_body`], but an empty body without a content type means `T::default()`.
pub(crate) async fn optional_json_body<T: DeserializeOwned + Default>(
    state: &AppState,
    req: Request<Incoming>,
) -> ApiResult<T> {
    let empty = req.headers().get(http::header::CONTENT_TYPE).is_none()
        && req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .is_none_or(|v| v.to_str().ok().and_then(|v| v.parse::<u64>().ok()) == Some(0))
        && hyper::body::Body::is_end_stream(req.body());
    if empty { Ok(T::default()) } else { json_body(state, req).await }
}

/// Package specs must not look like installer options.
fn check_packages(packages: &[String]) -> Result<()> {
    if packages.is_empty() {
        return Err(CodeBoxError::invalid("`packages` must name at least one package"));
    }
    if let Some(bad) =
        packages.iter().find(|p| p.trim().is_empty() || p.trim_start().starts_with('-') || p.contains(['\n', '\0']))
    {
        return Err(CodeBoxError::invalid(format!("{bad:?} is not a package specification")));
    }
    Ok(())
}

/// The session, touched.
pub(crate) fn session_for(state: &AppState, owner: Owner, id: &str) -> ApiResult<Arc<Session>> {
    let session = state.registry.require(owner, id)?;
    session.touch();
    Ok(session)
}

//! The route table of the native API and the operational endpoints. Requests are matched
//! against this table, and a test checks it against `openapi.json` both ways, so the
//! document cannot drift from what the server does.

use http::Method;

/// One route of the server (the compatibility routes under `/api/` are not in this table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    Health,
    /// `/ready`: readiness, failing once the server drains.
    Ready,
    Metrics,
    OpenApi,
    CreateSession,
    ListSessions,
    GetSession,
    DeleteSession,
    SetTimeout,
    Execute,
    Interrupt,
    Restart,
    Install,
    Packages,
    History,
    ExecutionStats,
    SessionMetrics,
    Commands,
    ListFiles,
    PutFile,
    GetFile,
    DeleteFile,
    StatFile,
    MakeDir,
    Rename,
    ListTemplates,
    PoolStats,
    CreateContext,
    ListContexts,
    RestartContext,
    InterruptContext,
    DeleteContext,
    /// `/v1/sessions/{id}/ports/{port}`: any method, proxied to the box's port.
    Port,
    /// `/v1/sessions/{id}/ports/{port}/{rest}`: any method, proxied to the box's port.
    PortPath,
    PauseSession,
    ResumeSession,
    StartProcess,
    ListProcesses,
    ConnectProcess,
    ProcessInput,
    CloseProcessInput,
    SignalProcess,
}

impl Route {
    /// Every route.
    pub(crate) const ALL: [Route; 42] = [
        Route::Health,
        Route::Ready,
        Route::Metrics,
        Route::OpenApi,
        Route::CreateSession,
        Route::ListSessions,
        Route::GetSession,
        Route::DeleteSession,
        Route::SetTimeout,
        Route::Execute,
        Route::Interrupt,
        Route::Restart,
        Route::Install,
        Route::Packages,
        Route::History,
        Route::ExecutionStats,
        Route::SessionMetrics,
        Route::Commands,
        Route::ListFiles,
        Route::PutFile,
        Route::GetFile,
        Route::DeleteFile,
        Route::StatFile,
        Route::MakeDir,
        Route::Rename,
        Route::ListTemplates,
        Route::PoolStats,
        Route::CreateContext,
        Route::ListContexts,
        Route::RestartContext,
        Route::InterruptContext,
        Route::DeleteContext,
        Route::Port,
        Route::PortPath,
        Route::PauseSession,
        Route::ResumeSession,
        Route::StartProcess,
        Route::ListProcesses,
        Route::ConnectProcess,
        Route::ProcessInput,
        Route::CloseProcessInput,
        Route::SignalProcess,
    ];

    /// The methods the proxied port routes document (they take any method).
    pub(crate) const PORT_METHODS: [Method; 7] =
        [Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::PATCH, Method::DELETE, Method::OPTIONS];

    /// Whether the route takes any method (a box's port: its program decides).
    pub(crate) fn any_method(self) -> bool {
        matches!(self, Route::Port | Route::PortPath)
    }

    /// Every method and path template served, as the OpenAPI document lists them.
    pub(crate) fn all_specs() -> Vec<(Method, &'static str)> {
        Route::ALL
            .iter()
            .flat_map(|r| {
                let (method, template) = r.spec();
                let methods = if r.any_method() { Route::PORT_METHODS.to_vec() } else { vec![method] };
                methods.into_iter().map(move |m| (m, template))
            })
            .collect()
    }

    /// The method and the path template (`{id}`, `{ctx}` and `{pid}` are one segment each,
    /// `{path}` the rest).
    pub(crate) fn spec(self) -> (Method, &'static str) {
        match self {
            Route::Health => (Method::GET, "/health"),
            Route::Ready => (Method::GET, "/ready"),
            Route::Metrics => (Method::GET, "/metrics"),
            Route::OpenApi => (Method::GET, "/openapi.json"),
            Route::CreateSession => (Method::POST, "/v1/sessions"),
            Route::ListSessions => (Method::GET, "/v1/sessions"),
            Route::GetSession => (Method::GET, "/v1/sessions/{id}"),
            Route::DeleteSession => (Method::DELETE, "/v1/sessions/{id}"),
            Route::SetTimeout => (Method::POST, "/v1/sessions/{id}/timeout"),
            Route::Execute => (Method::POST, "/v1/sessions/{id}/execute"),
            Route::Interrupt => (Method::POST, "/v1/sessions/{id}/interrupt"),
            Route::Restart => (Method::POST, "/v1/sessions/{id}/restart"),
            Route::Install => (Method::POST, "/v1/sessions/{id}/install"),
            Route::Packages => (Method::GET, "/v1/sessions/{id}/packages"),
            Route::History => (Method::GET, "/v1/sessions/{id}/history"),
            Route::ExecutionStats => (Method::GET, "/v1/sessions/{id}/stats"),
            Route::SessionMetrics => (Method::GET, "/v1/sessions/{id}/metrics"),
            Route::Commands => (Method::POST, "/v1/sessions/{id}/commands"),
            Route::ListFiles => (Method::GET, "/v1/sessions/{id}/files"),
            Route::PutFile => (Method::PUT, "/v1/sessions/{id}/files/{path}"),
            Route::GetFile => (Method::GET, "/v1/sessions/{id}/files/{path}"),
            Route::DeleteFile => (Method::DELETE, "/v1/sessions/{id}/files/{path}"),
            Route::StatFile => (Method::GET, "/v1/sessions/{id}/stat/{path}"),
            Route::MakeDir => (Method::POST, "/v1/sessions/{id}/dirs/{path}"),
            Route::Rename => (Method::POST, "/v1/sessions/{id}/rename"),
            Route::ListTemplates => (Method::GET, "/v1/templates"),
            Route::PoolStats => (Method::GET, "/v1/pool"),
            Route::CreateContext => (Method::POST, "/v1/sessions/{id}/contexts"),
            Route::ListContexts => (Method::GET, "/v1/sessions/{id}/contexts"),
            Route::RestartContext => (Method::POST, "/v1/sessions/{id}/contexts/{ctx}/restart"),
            Route::InterruptContext => (Method::POST, "/v1/sessions/{id}/contexts/{ctx}/interrupt"),
            Route::DeleteContext => (Method::DELETE, "/v1/sessions/{id}/contexts/{ctx}"),
            Route::Port => (Method::GET, "/v1/sessions/{id}/ports/{port}"),
            Route::PortPath => (Method::GET, "/v1/sessions/{id}/ports/{port}/{rest}"),
            Route::PauseSession => (Method::POST, "/v1/sessions/{id}/pause"),
            Route::ResumeSession => (Method::POST, "/v1/sessions/{id}/resume"),
            Route::StartProcess => (Method::POST, "/v1/sessions/{id}/processes"),
            Route::ListProcesses => (Method::GET, "/v1/sessions/{id}/processes"),
            Route::ConnectProcess => (Method::GET, "/v1/sessions/{id}/processes/{pid}"),
            Route::ProcessInput => (Method::POST, "/v1/sessions/{id}/processes/{pid}/input"),
            Route::CloseProcessInput => (Method::POST, "/v1/sessions/{id}/processes/{pid}/close-input"),
            Route::SignalProcess => (Method::POST, "/v1/sessions/{id}/processes/{pid}/signal"),
        }
    }

    /// Whether the route needs an API key.
    pub(crate) fn needs_auth(self) -> bool {
        !matches!(self, Route::Health | Route::Ready)
    }
}

/// The variable parts of a matched path, still percent-encoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Params<'a> {
    /// `{id}`.
    pub(crate) id: Option<&'a str>,
    /// `{path}`: the rest of the path, segments joined with `/`; `{rest}` too, which may be
    /// empty.
    pub(crate) path: Option<&'a str>,
    /// `{ctx}`: a code context's id.
    pub(crate) ctx: Option<&'a str>,
    /// `{port}`.
    pub(crate) port: Option<&'a str>,
    /// `{pid}`: a background process's id.
    pub(crate) pid: Option<&'a str>,
}

/// The result of matching a request against the table.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Matched<'a> {
    /// A route and its parameters.
    Route(Route, Params<'a>),
    /// The path exists, with other methods.
    WrongMethod(Vec<Method>),
    /// No route has this path.
    NotFound,
}

/// Find the route for a request.
pub(crate) fn find<'a>(method: &Method, path: &'a str) -> Matched<'a> {
    let mut allowed = Vec::new();
    for route in Route::ALL {
        let (route_method, template) = route.spec();
        if let Some(params) = match_template(template, path) {
            if route_method == method || route.any_method() || (method == Method::HEAD && route_method == Method::GET) {
                return Matched::Route(route, params);
            }
            allowed.push(route_method);
        }
    }
    if allowed.is_empty() { Matched::NotFound } else { Matched::WrongMethod(allowed) }
}

fn match_template<'a>(template: &str, path: &'a str) -> Option<Params<'a>> {
    let mut params = Params::default();
    let mut rest = path.strip_prefix('/')?;
    let mut parts = template.trim_start_matches('/').split('/').peekable();
    while let Some(part) = parts.next() {
        if part == "{path}" {
            // The rest, which must name something: no empty tail.
            if rest.is_empty() || parts.peek().is_some() {
                return None;
            }
            params.path = Some(rest);
            return Some(params);
        }
        if part == "{rest}" {
            // The rest of a port's path, which may be empty (`/ports/8000/`).
            if parts.peek().is_some() {
                return None;
            }
            params.path = Some(rest);
            return Some(params);
        }
        let (segment, tail) = match rest.split_once('/') {
            Some((s, t)) => (s, Some(t)),
            None => (rest, None),
        };
        if part == "{id}" || part == "{ctx}" {
            if segment.is_empty() {
                return None;
            }
            if part == "{id}" {
                params.id = Some(segment);
            } else {
                params.ctx = Some(segment);
            }
        } else if part == "{port}" || part == "{pid}" {
            if segment.is_empty() {
                return None;
            }
            if part == "{port}" {
                params.port = Some(segment);
            } else {
                params.pid = Some(segment);
            }
        } else if part != segment {
            return None;
        }
        match (tail, parts.peek()) {
            (None, None) => return Some(params),
            (Some(t), Some(_)) => rest = t,
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_their_routes() {
        assert_eq!(find(&Method::GET, "/health"), Matched::Route(Route::Health, Params::default()));
        let Matched::Route(r, p) = find(&Method::GET, "/v1/sessions/abc") else { panic!() };
        assert_eq!((r, p.id), (Route::GetSession, Some("abc")));
        let Matched::Route(r, p) = find(&Method::PUT, "/v1/sessions/abc/files/a/b%20c.txt") else { panic!() };
        assert_eq!((r, p.id, p.path), (Route::PutFile, Some("abc"), Some("a/b%20c.txt")));
        let Matched::Route(r, _) = find(&Method::GET, "/v1/sessions/abc/files") else { panic!() };
        assert_eq!(r, Route::ListFiles);
        assert_eq!(find(&Method::GET, "/v1/templates"), Matched::Route(Route::ListTemplates, Params::default()));
        assert_eq!(find(&Method::GET, "/v1/pool"), Matched::Route(Route::PoolStats, Params::default()));
        assert_eq!(find(&Method::POST, "/v1/pool"), Matched::WrongMethod(vec![Method::GET]));
        let Matched::Route(r, p) = find(&Method::POST, "/v1/sessions/abc/contexts/ctx-1/restart") else { panic!() };
        assert_eq!((r, p.id, p.ctx), (Route::RestartContext, Some("abc"), Some("ctx-1")));
        let Matched::Route(r, p) = find(&Method::DELETE, "/v1/sessions/abc/contexts/ctx-1") else { panic!() };
        assert_eq!((r, p.ctx), (Route::DeleteContext, Some("ctx-1")));
        let Matched::Route(r, _) = find(&Method::GET, "/v1/sessions/abc/contexts") else { panic!() };
        assert_eq!(r, Route::ListContexts);
        assert_eq!(find(&Method::POST, "/v1/sessions/abc/contexts/"), Matched::NotFound);
        assert_eq!(find(&Method::GET, "/v1/sessions/abc/contexts/ctx-1"), Matched::WrongMethod(vec![Method::DELETE]));
        let Matched::Route(r, p) = find(&Method::POST, "/v1/sessions/abc/ports/8000") else { panic!() };
        assert_eq!((r, p.id, p.port, p.path), (Route::Port, Some("abc"), Some("8000"), None));
        let Matched::Route(r, p) = find(&Method::PATCH, "/v1/sessions/abc/ports/8000/") else { panic!() };
        assert_eq!((r, p.port, p.path), (Route::PortPath, Some("8000"), Some("")));
        let method = Method::from_bytes(b"PROPFIND").unwrap();
        let Matched::Route(r, p) = find(&method, "/v1/sessions/abc/ports/8000/a/b.css") else { panic!() };
        assert_eq!((r, p.port, p.path), (Route::PortPath, Some("8000"), Some("a/b.css")));
        assert_eq!(find(&Method::GET, "/v1/sessions/abc/ports/"), Matched::NotFound);
        let Matched::Route(r, p) = find(&Method::GET, "/v1/sessions/abc/processes/7") else { panic!() };
        assert_eq!((r, p.id, p.pid), (Route::ConnectProcess, Some("abc"), Some("7")));
        let Matched::Route(r, p) = find(&Method::POST, "/v1/sessions/abc/processes/7/close-input") else { panic!() };
        assert_eq!((r, p.pid), (Route::CloseProcessInput, Some("7")));
        let Matched::Route(r, _) = find(&Method::POST, "/v1/sessions/abc/processes") else { panic!() };
        assert_eq!(r, Route::StartProcess);
        assert_eq!(find(&Method::GET, "/v1/sessions/abc/processes/"), Matched::NotFound);
        assert_eq!(find(&Method::GET, "/v1/sessions/abc/processes/7/signal"), Matched::WrongMethod(vec![Method::POST]));
    }

    #[test]
    fn near_misses_do_not_match() {
        assert_eq!(find(&Method::GET, "/v1/sessions/"), Matched::NotFound);
        assert_eq!(find(&Method::GET, "/v1/sessions/abc/files/"), Matched::NotFound);
        assert_eq!(find(&Method::GET, "/v1/sessions/abc/nope"), Matched::NotFound);
        assert_eq!(find(&Method::GET, "/v1/sessionsx"), Matched::NotFound);
        assert_eq!(find(&Method::GET, "health"), Matched::NotFound);
        assert_eq!(find(&Method::PATCH, "/v1/sessions/a"), Matched::WrongMethod(vec![Method::GET, Method::DELETE]));
    }
}

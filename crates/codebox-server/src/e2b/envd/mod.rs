//! envd, E2B's in-sandbox daemon (port 49983 traffic): `/health`, `/files`, and the
//! `filesystem.Filesystem` and `process.Process` Connect RPC services, in JSON.

use std::sync::Arc;

use codebox_http::server::Body;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use crate::sessions::Session;
use crate::state::AppState;

/// Answer one envd request for `session` (already authenticated and resolved: the caller's
/// own, running).
pub(crate) async fn handle(state: &Arc<AppState>, session: Arc<Session>, req: Request<Incoming>) -> Response<Body> {
    let _ = (state, session, req);
    let mut resp = Response::new(Body::full(r#"{"code":"unimplemented","message":"envd is not served yet"}"#));
    *resp.status_mut() = StatusCode::NOT_IMPLEMENTED;
    resp
}

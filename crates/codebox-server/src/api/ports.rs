//! `/v1/sessions/{id}/ports/{port}/…`: HTTP to a program listening in a box, through the
//! box's [`connect_port`](codebox_core::CodeBox::connect_port).
//!
//! Each request gets its own connection to the box's port, an HTTP/1.1 client connection
//! (hyper's `client::conn::http1`) over it: the request goes with the route's prefix
//! stripped, hop-by-hop headers and the caller's API key (`Authorization`) dropped, and
//! `X-Forwarded-Prefix`/`X-Forwarded-For` set; the response streams back as the box sends
//! it, nothing buffered. An `Upgrade` (a WebSocket) upgrades both sides and copies bytes both
//! ways until either closes. `Upgrade: codebox-tcp` is ours: the server answers 101 itself and
//! splices the caller's connection to the box's port, raw TCP (how a RemoteBox's
//! `connect_port` works).

use std::net::SocketAddr;
use std::sync::Arc;

use codebox_core::{CodeBoxError, PortStream, check_port};
use codebox_http::server::{ApiError, Body};
use futures::{StreamExt, TryStreamExt};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_util::compat::FuturesAsyncReadCompatExt;

use super::session_for;
use crate::auth::Owner;
use crate::downloads::DownloadSlot;
use crate::sessions::SessionUse;
use crate::state::{ApiResult, AppState};

/// The `Upgrade` protocol that asks for the box's port as a raw byte stream.
pub(crate) const RAW_TCP_PROTOCOL: &str = "codebox-tcp";

/// The caller's address, which the service puts in each request's extensions for
/// `X-Forwarded-For`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub(crate) SocketAddr);

/// Headers of one hop only (RFC 9110 7.6.1), never forwarded, besides those `Connection`
/// names.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Any method on `/v1/sessions/{id}/ports/{port}` (`rest` `None`) or
/// `/v1/sessions/{id}/ports/{port}/{rest}`.
pub(super) async fn proxy(
    state: &Arc<AppState>,
    owner: Owner,
    id: &str,
    port: &str,
    rest: Option<&str>,
    mut req: Request<Incoming>,
) -> ApiResult<Response<Body>> {
    let port = port
        .parse::<u32>()
        .map_err(|_| CodeBoxError::invalid(format!("port {port:?} is not a number")))
        .and_then(check_port)?;
    let session = session_for(state, owner, id)?;
    let upgrade = upgrade_protocol(req.headers());
    // An upgraded connection leaves the server's connection cap: it takes a tunnel slot
    // first (429 past the key's share, 503 when the server's are all taken).
    let tunnel = upgrade.as_ref().map(|_| state.tunnels.take(owner)).transpose()?;
    let conn = session.codebox.connect_port(port).await?;
    if upgrade.as_deref().is_some_and(|p| p.eq_ignore_ascii_case(RAW_TCP_PROTOCOL)) {
        return Ok(splice_raw(req, conn, (session.use_guard(), tunnel)));
    }
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(conn.compat()))
        .await
        .map_err(|e| bad_gateway(port, "did not speak HTTP/1.1", &e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "a connection to a box's port ended with an error");
        }
    });

    let caller_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let peer = req.extensions().get::<Peer>().map(|p| p.0);
    let prefix = format!("/v1/sessions/{id}/ports/{port}");
    let forwarded = forward_request(req, rest.unwrap_or_default(), &prefix, peer, upgrade.as_deref(), port)?;
    let mut resp = sender.send_request(forwarded).await.map_err(|e| bad_gateway(port, "failed the request", &e))?;

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(caller_upgrade) = caller_upgrade else {
            return Err(ApiError::new(
                502,
                codebox_core::ErrorKind::Connection,
                format!("the program on port {port} of the box switched protocols unasked"),
            ));
        };
        let box_upgrade = hyper::upgrade::on(&mut resp);
        // The session counts as in use while the connection lasts: the idle reaper waits.
        let in_use = (session.use_guard(), tunnel);
        tokio::spawn(async move {
            let _in_use = in_use;
            let (caller, boxed) = match tokio::try_join!(caller_upgrade, box_upgrade) {
                Ok(both) => both,
                Err(e) => {
                    tracing::debug!(error = %e, "an upgrade through a box's port failed");
                    return;
                }
            };
            let (mut caller, mut boxed) = (TokioIo::new(caller), TokioIo::new(boxed));
            if let Err(e) = tokio::io::copy_bidirectional(&mut caller, &mut boxed).await {
                tracing::debug!(error = %e, "an upgraded connection through a box's port ended with an error");
            }
        });
        let (parts, _) = resp.into_parts();
        let mut out = Response::from_parts(parts, Body::empty());
        drop_hop_by_hop(out.headers_mut(), true);
        return Ok(out);
    }

    let (parts, body) = resp.into_parts();
    // The session counts as in use until the response has been sent (or dropped).
    let in_use = session.use_guard();
    let stream = body
        .into_data_stream()
        .map_err(move |e| CodeBoxError::connection(format!("the response from port {port} of the box was cut: {e}")))
        .inspect(move |_| {
            let _ = &in_use;
        });
    let mut out = Response::from_parts(parts, Body::from_stream(stream));
    drop_hop_by_hop(out.headers_mut(), false);
    Ok(out)
}

/// The protocol a request asks to upgrade to (`Connection: upgrade` and `Upgrade: …`).
fn upgrade_protocol(headers: &HeaderMap) -> Option<String> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let protocol = headers.get(header::UPGRADE)?.to_str().ok()?.trim();
    (asks && !protocol.is_empty()).then(|| protocol.to_owned())
}

/// The request for the box: the path after the prefix, the caller's headers without
/// hop-by-hop ones or the API key, and where it came from. An upgrade keeps its
/// `Connection: upgrade` and `Upgrade`.
fn forward_request(
    req: Request<Incoming>,
    rest: &str,
    prefix: &str,
    peer: Option<SocketAddr>,
    upgrade: Option<&str>,
    port: u16,
) -> ApiResult<Request<Incoming>> {
    let (mut parts, body) = req.into_parts();
    let path_and_query = match parts.uri.query() {
        Some(q) => format!("/{rest}?{q}"),
        None => format!("/{rest}"),
    };
    parts.uri = path_and_query
        .parse::<Uri>()
        .map_err(|e| CodeBoxError::invalid(format!("the path {path_and_query:?} is not a valid URI: {e}")))?;
    if !parts.headers.contains_key(header::HOST) {
        // HTTP/2 callers name the host in the URI; HTTP/1.1 needs the header.
        let host = parts.uri.authority().map_or_else(|| format!("127.0.0.1:{port}"), ToString::to_string);
        if let Ok(v) = HeaderValue::from_str(&host) {
            parts.headers.insert(header::HOST, v);
        }
    }
    parts.version = http::Version::HTTP_11;
    let headers = &mut parts.headers;
    drop_hop_by_hop(headers, false);
    // The caller's key is for this server, never for the program in the box.
    headers.remove(header::AUTHORIZATION);
    if let Some(protocol) = upgrade.and_then(|p| HeaderValue::from_str(p).ok()) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
    if let Ok(v) = HeaderValue::from_str(prefix) {
        headers.insert(HeaderName::from_static("x-forwarded-prefix"), v);
    }
    if let Some(peer) = peer {
        let xff = HeaderName::from_static("x-forwarded-for");
        let chain = match headers.get(&xff).and_then(|v| v.to_str().ok()) {
            Some(earlier) => format!("{earlier}, {}", peer.ip()),
            None => peer.ip().to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&chain) {
            headers.insert(xff, v);
        }
    }
    Ok(Request::from_parts(parts, body))
}

/// Remove the hop-by-hop headers and those `Connection` names; with `keep_upgrade`, a 101's
/// `Connection: upgrade` and `Upgrade` stay.
fn drop_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    let upgrade = headers.get(header::UPGRADE).cloned();
    for name in named.iter().chain(HOP_BY_HOP.iter().map(|n| HeaderName::from_static(n)).collect::<Vec<_>>().iter()) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
    if keep_upgrade && let Some(upgrade) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, upgrade);
    }
}

/// Answer `Upgrade: codebox-tcp` with 101 and copy bytes between the caller's connection and
/// the box's port until either side closes, holding `in_use` (the session's use and the
/// tunnel slot) until then.
fn splice_raw(
    mut req: Request<Incoming>,
    conn: PortStream,
    in_use: (SessionUse, Option<DownloadSlot>),
) -> Response<Body> {
    let caller_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let _in_use = in_use;
        let caller = match caller_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "a raw connection to a box's port was not upgraded");
                return;
            }
        };
        let (mut caller, mut boxed) = (TokioIo::new(caller), conn.compat());
        if let Err(e) = tokio::io::copy_bidirectional(&mut caller, &mut boxed).await {
            tracing::debug!(error = %e, "a raw connection to a box's port ended with an error");
        }
    });
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    resp.headers_mut().insert(header::UPGRADE, HeaderValue::from_static(RAW_TCP_PROTOCOL));
    resp
}

/// A 502 for a program on the box's port that failed the HTTP exchange.
fn bad_gateway(port: u16, what: &str, e: &hyper::Error) -> ApiError {
    ApiError::new(
        502,
        codebox_core::ErrorKind::Connection,
        format!("the program on port {port} of the box {what}: {e}"),
    )
}

//! File routes: list (recursive or to a depth), streamed upload, streamed download, delete,
//! stat, make a directory, rename.

use std::sync::{Arc, Mutex};

use codebox_core::{CodeBoxError, ErrorKind, FileInfo, Result, normalize_box_path};
use codebox_http::percent::DecodeError;
use codebox_http::server::{ApiError, Body, json_response, stream_limited};
use codebox_http::wire::RenameRequest;
use futures::StreamExt;
use http::{HeaderValue, header};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use super::{no_content, session_for};
use crate::auth::Owner;
use crate::state::{ApiResult, AppState};

/// Decode one percent-encoded URL component. Malformed escapes and non-UTF-8 are refused.
pub(crate) fn percent_decode(s: &str) -> Result<String> {
    codebox_http::percent::decode_component(s).map_err(|e| match e {
        DecodeError::Malformed => CodeBoxError::invalid(format!("malformed percent-encoding in {:?}", truncate(s))),
        DecodeError::NotUtf8 => CodeBoxError::invalid(format!("{:?} does not decode to UTF-8", truncate(s))),
    })
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(200) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The box path named by the `{path}` part of a URL: each segment decoded, then checked
/// (no `..`, no absolute paths).
fn box_path(raw: &str) -> Result<String> {
    let decoded: Vec<String> = raw.split('/').map(percent_decode).collect::<Result<_>>()?;
    let joined = decoded.join("/");
    let normalized = normalize_box_path(&joined)?;
    normalized.to_str().map(|s| s.to_owned()).ok_or_else(|| CodeBoxError::invalid("the path does not decode to UTF-8"))
}

/// The query parameters, decoded (`+` is a space).
fn query_pairs(req: &Request<Incoming>) -> Result<Vec<(String, String)>> {
    let Some(query) = req.uri().query() else { return Ok(Vec::new()) };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((percent_decode(&k.replace('+', " "))?, percent_decode(&v.replace('+', " "))?))
        })
        .collect()
}

pub(super) async fn list(
    state: &Arc<AppState>,
    owner: Owner,
    id: &str,
    req: &Request<Incoming>,
) -> ApiResult<Response<Body>> {
    let session = session_for(state, owner, id)?;
    let mut dir = String::new();
    let mut recursive = false;
    let mut depth = None;
    for (k, v) in query_pairs(req)? {
        match k.as_str() {
            "dir" => dir = v,
            "depth" => {
                let n: usize =
                    v.parse().map_err(|_| CodeBoxError::invalid(format!("depth={v:?}: expected a number")))?;
                codebox_core::check_list_depth(n)?;
                depth = Some(n);
            }
            "recursive" => {
                recursive = match v.as_str() {
                    "true" | "1" | "" => true,
                    "false" | "0" => false,
                    other => {
                        return Err(
                            CodeBoxError::invalid(format!("recursive={other:?}: expected true or false")).into()
                        );
                    }
                }
            }
            other => return Err(CodeBoxError::invalid(format!("unknown query parameter {other:?}")).into()),
        }
    }
    let dir = if dir.is_empty() || dir == "." { String::new() } else { box_path_str(&dir)? };
    let _use = session.use_guard();
    let files = match depth {
        Some(_) if recursive => {
            return Err(CodeBoxError::invalid("give `depth` or `recursive`, not both").into());
        }
        Some(depth) => session.codebox.list_dir(&dir, depth).await?,
        None => session.codebox.list_files(&dir, recursive).await?,
    };
    Ok(json_response(StatusCode::OK, &files))
}

fn box_path_str(decoded: &str) -> Result<String> {
    let normalized = normalize_box_path(decoded)?;
    normalized.to_str().map(str::to_owned).ok_or_else(|| CodeBoxError::invalid("the path does not decode to UTF-8"))
}

/// What went wrong with an upload's request body, remembered so the response says so even
/// when the box reports it in its own words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFailure {
    TooLarge,
    Stalled,
    /// The client framed the body wrongly (a malformed chunk size): its mistake, 400.
    Malformed,
    Cut,
}

pub(super) async fn put(
    state: &Arc<AppState>,
    owner: Owner,
    id: &str,
    raw_path: &str,
    req: Request<Incoming>,
) -> ApiResult<Response<Body>> {
    let session = session_for(state, owner, id)?;
    let path = box_path(raw_path)?;
    let limit = state.config.max_upload_bytes;
    let too_large =
        || ApiError::new(413, ErrorKind::TooLarge, format!("the upload exceeds the server's limit of {limit} bytes"));
    if let Some(len) = req.headers().get(header::CONTENT_LENGTH) {
        let len: u64 = len
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| CodeBoxError::invalid("malformed Content-Length"))?;
        if len > limit {
            return Err(too_large());
        }
    }
    let failure: Arc<Mutex<Option<BodyFailure>>> = Arc::default();
    let seen = Arc::clone(&failure);
    let metrics = Arc::clone(&state.metrics);
    let chunks = stream_limited(req.into_body(), limit, state.config.body_idle_timeout).map(move |chunk| {
        match &chunk {
            Ok(bytes) => metrics.uploaded(bytes.len() as u64),
            Err(e) => {
                let kind = match e.kind() {
                    ErrorKind::TooLarge => BodyFailure::TooLarge,
                    ErrorKind::Timeout => BodyFailure::Stalled,
                    ErrorKind::InvalidInput => BodyFailure::Malformed,
                    _ => BodyFailure::Cut,
                };
                *seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(kind);
            }
        }
        chunk
    });
    let _use = session.use_guard();
    let result = session.codebox.upload(&path, Box::pin(chunks)).await;
    let failure = *failure.lock().unwrap_or_else(|p| p.into_inner());
    match (result, failure) {
        (Ok(info), None) => {
            let mut resp = json_response(StatusCode::CREATED, &info);
            if let Ok(location) = HeaderValue::from_str(&format!("/v1/sessions/{id}/files/{raw_path}")) {
                resp.headers_mut().insert(header::LOCATION, location);
            }
            Ok(resp)
        }
        (result, Some(failure)) => {
            if result.is_ok() {
                // The box kept what it got before the body failed: remove the partial file.
                let _ = session.codebox.delete_file(&path).await;
            }
            Err(match failure {
                BodyFailure::TooLarge => too_large(),
                BodyFailure::Stalled => ApiError::new(
                    408,
                    ErrorKind::Timeout,
                    format!(
                        "the client sent no bytes for {:.1}s; the upload was abandoned",
                        state.config.body_idle_timeout.as_secs_f64()
                    ),
                ),
                BodyFailure::Malformed => ApiError::new(
                    400,
                    ErrorKind::InvalidInput,
                    "the upload's body is malformed (its chunked framing could not be read)",
                ),
                BodyFailure::Cut => CodeBoxError::connection("the upload was cut off by the client").into(),
            })
        }
        (Err(e), None) => Err(e.into()),
    }
}

/// The size of the file at `path`, from a listing of its directory.
async fn stat(session: &crate::sessions::Session, path: &str) -> Result<Option<FileInfo>> {
    let (dir, name) = match path.rsplit_once('/') {
        Some((dir, name)) => (dir, name),
        None => ("", path),
    };
    let listing = session.codebox.list_files(dir, false).await?;
    Ok(listing.into_iter().find(|f| f.name == name || f.path == path))
}

pub(super) async fn get(
    state: &Arc<AppState>,
    owner: Owner,
    id: &str,
    raw_path: &str,
    req: &Request<Incoming>,
) -> ApiResult<Response<Body>> {
    let session = session_for(state, owner, id)?;
    let path = box_path(raw_path)?;
    let use_guard = session.use_guard();
    let info = match stat(&session, &path).await {
        Ok(info) => info,
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(CodeBoxError::not_found(format!("file {path}")).into()),
        // A directory too large to list: the download goes on without a size.
        Err(e) if e.kind() == ErrorKind::TooLarge => None,
        Err(e) => return Err(e.into()),
    };
    if info.as_ref().is_some_and(|i| i.is_dir) {
        return Err(CodeBoxError::invalid(format!("{path} is a directory; list it instead")).into());
    }
    let size = info.map(|i| i.size);
    let metrics = Arc::clone(&state.metrics);
    // HEAD opens the file as GET does, so that it answers what GET would (404 for a
    // missing file, 400 for a link, a FIFO or a device), and sends nothing of it.
    let slot = state.downloads.take(owner)?;
    let stream = session.codebox.download(&path).await?;
    let mut resp = if req.method() == http::Method::HEAD {
        drop(stream);
        Response::new(Body::empty())
    } else {
        let stream = stream.map(move |chunk| {
            let _held = (&use_guard, &slot);
            if let Ok(bytes) = &chunk {
                metrics.downloaded(bytes.len() as u64);
            }
            chunk
        });
        match size {
            Some(len) => Response::new(Body::sized_stream(stream, len)),
            None => Response::new(Body::from_stream(stream)),
        }
    };
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    if let Some(len) = size {
        resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    Ok(resp)
}

pub(super) async fn delete(state: &Arc<AppState>, owner: Owner, id: &str, raw_path: &str) -> ApiResult<Response<Body>> {
    let session = session_for(state, owner, id)?;
    let path = box_path(raw_path)?;
    let _use = session.use_guard();
    session.codebox.delete_file(&path).await?;
    Ok(no_content())
}

/// `GET /v1/sessions/{id}/stat/{path}`: one path's metadata; 404 when it does not exist.
pub(super) async fn stat_route(
    state: &Arc<AppState>,
    owner: Owner,
    id: &str,
    raw_path: &str,
) -> ApiResult<Response<Body>> {
    let session = session_for(state, owner, id)?;
    let path = box_path(raw_path)?;
    let _use = session.use_guard();
    let info = session.codebox.stat(&path).await?;
    Ok(json_response(StatusCode::OK, &info))
}

/// `POST /v1/sessions/{id}/dirs/{path}`: make a directory with its parents.
pub(super) async fn make_dir(
    state: &Arc<AppState>,
    owner: Owner,
    id: &str,
    raw_path: &str,
) -> ApiResult<Response<Body>> {
    let session = session_for(state, owner, id)?;
    let path = box_path(raw_path)?;
    let _use = session.use_guard();
    let info = session.codebox.make_dir(&path).await?;
    Ok(json_response(StatusCode::OK, &info))
}

/// `POST /v1/sessions/{id}/rename` with `{"from": .., "to": ..}`.
pub(super) async fn rename(
    state: &Arc<AppState>,
    owner: Owner,
    id: &str,
    req: Request<Incoming>,
) -> ApiResult<Response<Body>> {
    let session = session_for(state, owner, id)?;
    let body: RenameRequest = super::json_body(state, req).await?;
    let (from, to) = (box_path_str(&body.from)?, box_path_str(&body.to)?);
    let _use = session.use_guard();
    let info = session.codebox.rename(&from, &to).await?;
    Ok(json_response(StatusCode::OK, &info))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_paths_decode_and_are_checked() {
        assert_eq!(box_path("a/b%20c.txt").unwrap(), "a/b c.txt");
        assert_eq!(box_path("a%2Fb").unwrap(), "a/b");
        for bad in ["..%2Fetc", "%2E%2E/x", "%2Fetc%2Fpasswd", "a/../../b", "%zz", "%c3%28"] {
            assert!(box_path(bad).is_err(), "{bad}");
        }
        assert_eq!(box_path("..%2Fx").unwrap_err().kind(), ErrorKind::UnsafePath);
    }
}

//! envd's plain HTTP file routes: `GET /files?path=` (raw bytes, streamed; gzip when the
//! client asks) and `POST /files` (multipart, one or several files; or the raw bytes of one,
//! gzipped or not). Errors are E2B's `{"code": <status>, "message"}`.

use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use codebox_core::{ByteStream, CodeBoxError, ErrorKind, FileKind};
use codebox_http::server::{ApiError, Body, stream_limited};
use flate2::Compression;
use flate2::write::{GzDecoder, GzEncoder};
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, header};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use crate::compat::multipart;
use crate::e2b::paths;
use crate::sessions::Session;
use crate::state::AppState;

/// How much compressed input is inflated at a time: a gzip bomb grows each piece at most
/// about a thousandfold, so what one piece makes stays small before the limit is checked.
const INFLATE_PIECE: usize = 4096;

/// A failed file request, as envd answers it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub(super) struct FileError {
    status: StatusCode,
    message: String,
}

impl FileError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// `{"code": <status>, "message"}` with the status.
    pub(super) fn response(&self) -> Response<Body> {
        tracing::debug!(status = %self.status, message = %self.message, "envd file request failed");
        let body = serde_json::json!({ "code": self.status.as_u16(), "message": self.message });
        let mut resp = Response::new(Body::full(body.to_string()));
        *resp.status_mut() = self.status;
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        resp
    }
}

impl From<CodeBoxError> for FileError {
    fn from(err: CodeBoxError) -> Self {
        ApiError::from(err).into()
    }
}

impl From<ApiError> for FileError {
    fn from(err: ApiError) -> Self {
        let status = StatusCode::from_u16(err.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self::new(status, err.message)
    }
}

type FileResult<T> = std::result::Result<T, FileError>;

/// The query of a file request: `path`, and `username` (accepted, ignored: a box has one
/// user).
fn query_path(req: &Request<Incoming>) -> FileResult<Option<String>> {
    let mut path = None;
    for pair in req.uri().query().unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = crate::api::percent_decode(&v.replace('+', " "))?;
        match k {
            "path" => path = Some(v),
            "username" | "signature" | "signature_expiration" => {}
            other => return Err(FileError::bad_request(format!("unknown query parameter {other:?}"))),
        }
    }
    Ok(path)
}

/// The box path of an E2B path, or 400.
fn box_path(path: &str) -> FileResult<String> {
    paths::box_path(path).map_err(|e| FileError::bad_request(e.to_string()))
}

/// `GET /files?path=`: the file's bytes, streamed.
pub(super) async fn download(state: &Arc<AppState>, session: &Arc<Session>, req: Request<Incoming>) -> Response<Body> {
    download_inner(state, session, &req).await.unwrap_or_else(|e| e.response())
}

async fn download_inner(
    state: &Arc<AppState>,
    session: &Arc<Session>,
    req: &Request<Incoming>,
) -> FileResult<Response<Body>> {
    let raw = query_path(req)?.ok_or_else(|| FileError::bad_request("`path` is required"))?;
    let path = box_path(&raw)?;
    if path.is_empty() {
        return Err(FileError::bad_request(format!("{raw} is a directory")));
    }
    let use_guard = session.use_guard();
    let info = match session.codebox.stat(&path).await {
        Ok(info) => info,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(FileError::new(StatusCode::NOT_FOUND, format!("path '{raw}' does not exist")));
        }
        Err(e) => return Err(e.into()),
    };
    if info.kind() == FileKind::Dir {
        return Err(FileError::bad_request(format!("path '{raw}' is a directory")));
    }
    let slot = state.downloads.take(session.owner)?;
    let stream = session.codebox.download(&path).await?;
    let metrics = Arc::clone(&state.metrics);
    let stream = stream.inspect(move |chunk| {
        let _held = (&use_guard, &slot);
        if let Ok(bytes) = chunk {
            metrics.downloaded(bytes.len() as u64);
        }
    });
    let mut resp = if accepts_gzip(req.headers()) {
        let mut resp = Response::new(Body::from_stream(gzip(Box::pin(stream))));
        resp.headers_mut().insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        resp
    } else {
        let mut resp = Response::new(Body::sized_stream(stream, info.size));
        resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(info.size));
        resp
    };
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    Ok(resp)
}

/// Whether `Accept-Encoding` names gzip (with a non-zero weight).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(
        |coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts
                .any(|p| matches!(p.trim().strip_prefix("q="), Some(q) if q.trim().parse::<f32>().ok() == Some(0.0)));
            name.eq_ignore_ascii_case("gzip") && !refused
        },
    )
}

/// `stream` gzipped as it goes.
fn gzip(mut stream: ByteStream) -> ByteStream {
    Box::pin(super::channel_stream(move |tx| async move {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            encoder.write_all(&chunk).map_err(|e| CodeBoxError::io("gzipping the download", e))?;
            let out = std::mem::take(encoder.get_mut());
            if !out.is_empty() && tx.send(Ok(Bytes::from(out))).await.is_err() {
                return Ok(());
            }
        }
        let out = encoder.finish().map_err(|e| CodeBoxError::io("gzipping the download", e))?;
        let _ = tx.send(Ok(Bytes::from(out))).await;
        Ok(())
    }))
}

/// `POST /files`: multipart (one entry per file part, in order) or the raw bytes of one file
/// (`?path=` required; `Content-Encoding: gzip` is inflated). Parents are created.
pub(super) async fn upload(state: &Arc<AppState>, session: &Arc<Session>, req: Request<Incoming>) -> Response<Body> {
    match upload_inner(state, session, req).await {
        Ok(written) => {
            let entries: Vec<serde_json::Value> = written
                .iter()
                .map(|path| {
                    let name = path.rsplit('/').next().unwrap_or(path);
                    serde_json::json!({ "name": name, "type": "file", "path": paths::e2b_path(path) })
                })
                .collect();
            codebox_http::server::json_response(StatusCode::OK, &entries)
        }
        Err(e) => e.response(),
    }
}

/// The box paths written, in order.
async fn upload_inner(
    state: &Arc<AppState>,
    session: &Arc<Session>,
    req: Request<Incoming>,
) -> FileResult<Vec<String>> {
    let query = query_path(&req)?;
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let encoding = req
        .headers()
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    let gzipped = match encoding.as_str() {
        "" | "identity" => false,
        "gzip" | "x-gzip" => true,
        other => {
            return Err(FileError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Encoding {other:?} is not supported (gzip is)"),
            ));
        }
    };
    let limit = state.config.max_upload_bytes;
    let idle = state.config.body_idle_timeout;
    let _use = session.use_guard();
    if mime == "multipart/form-data" {
        let boundary = multipart::boundary(&content_type).map_err(|e| FileError::bad_request(e.to_string()))?;
        // The framing around the files adds a little; allow for it on top of the limit.
        let mut body = stream_limited(req.into_body(), limit.saturating_add(64 * 1024), idle);
        if gzipped {
            body = gunzip(body, limit.saturating_add(64 * 1024));
        }
        let mut parts = multipart::FileParts::new(body, &boundary);
        let mut written: Vec<String> = Vec::new();
        while let Some(part) = parts.next().await.map_err(|e| FileError::from(ApiError::from_body_error(&e)))? {
            if part.field != "file" {
                // envd reads only the parts named `file`; the rest are read past.
                drop(part);
                continue;
            }
            let target = match &query {
                Some(path) => path.clone(),
                None => part.file_name.clone(),
            };
            let path = box_path(&target)?;
            if path.is_empty() {
                return Err(FileError::bad_request(format!("{target} is a directory")));
            }
            if written.contains(&path) {
                return Err(FileError::bad_request(format!("several files are uploaded to {target}")));
            }
            write_file(state, session, &path, part.content, limit).await?;
            written.push(path);
        }
        if written.is_empty() {
            return Err(FileError::bad_request("the multipart body has no file part named `file`"));
        }
        Ok(written)
    } else {
        let target =
            query.ok_or_else(|| FileError::bad_request("`path` is required for a raw (non-multipart) upload"))?;
        let path = box_path(&target)?;
        if path.is_empty() {
            return Err(FileError::bad_request(format!("{target} is a directory")));
        }
        if let Some(len) = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            && !gzipped
            && len > limit
        {
            return Err(too_large(limit));
        }
        // A gzipped body is bounded twice: as it comes (it may not be larger than the file
        // may be) and once inflated.
        let mut body = stream_limited(req.into_body(), limit, idle);
        if gzipped {
            body = gunzip(body, limit);
        }
        write_file(state, session, &path, body, limit).await?;
        Ok(vec![path])
    }
}

fn too_large(limit: u64) -> FileError {
    FileError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the upload exceeds the server's limit of {limit} bytes"))
}

/// Write `content` to `path`, at most `limit` bytes. When the body fails (too large, cut,
/// stalled, not gzip), the partial file is removed and the body's failure is the answer.
async fn write_file(
    state: &Arc<AppState>,
    session: &Arc<Session>,
    path: &str,
    content: ByteStream,
    limit: u64,
) -> FileResult<()> {
    let metrics = Arc::clone(&state.metrics);
    let failure: Arc<Mutex<Option<FileError>>> = Arc::default();
    let record = Arc::clone(&failure);
    let mut seen = 0u64;
    let content: ByteStream = Box::pin(content.map(move |chunk| {
        let checked = chunk.and_then(|bytes| {
            seen += bytes.len() as u64;
            if seen > limit {
                return Err(CodeBoxError::too_large(format!("the upload exceeds the server's limit of {limit} bytes")));
            }
            Ok(bytes)
        });
        match checked {
            Ok(bytes) => {
                metrics.uploaded(bytes.len() as u64);
                Ok(bytes)
            }
            Err(e) => {
                let mut slot = record.lock().unwrap_or_else(|p| p.into_inner());
                slot.get_or_insert_with(|| ApiError::from_body_error(&e).into());
                Err(e)
            }
        }
    }));
    let result = session.codebox.upload(path, content).await;
    let failure = failure.lock().unwrap_or_else(|p| p.into_inner()).take();
    match (result, failure) {
        (Ok(_), None) => Ok(()),
        (result, Some(failure)) => {
            if result.is_ok() {
                // The box kept what it got before the body failed.
                let _ = session.codebox.delete_file(path).await;
            }
            Err(failure)
        }
        (Err(e), None) => Err(e.into()),
    }
}

/// `body` inflated, refused (`too_large`) once the inflated bytes pass `limit`, and refused
/// (`invalid_input`) when it is not gzip.
fn gunzip(mut body: ByteStream, limit: u64) -> ByteStream {
    Box::pin(super::channel_stream(move |tx| async move {
        let not_gzip = |e: std::io::Error| CodeBoxError::invalid(format!("the body is not valid gzip: {e}"));
        let mut decoder = GzDecoder::new(Vec::new());
        let mut inflated = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            for piece in chunk.chunks(INFLATE_PIECE) {
                decoder.write_all(piece).map_err(not_gzip)?;
                let out = std::mem::take(decoder.get_mut());
                inflated += out.len() as u64;
                if inflated > limit {
                    return Err(CodeBoxError::too_large(format!(
                        "the upload inflates to more than the server's limit of {limit} bytes"
                    )));
                }
                if !out.is_empty() && tx.send(Ok(Bytes::from(out))).await.is_err() {
                    return Ok(());
                }
            }
        }
        decoder.try_finish().map_err(not_gzip)?;
        let out = decoder.finish().map_err(not_gzip)?;
        inflated += out.len() as u64;
        if inflated > limit {
            return Err(CodeBoxError::too_large(format!(
                "the upload inflates to more than the server's limit of {limit} bytes"
            )));
        }
        if !out.is_empty() {
            let _ = tx.send(Ok(Bytes::from(out))).await;
        }
        Ok(())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use codebox_core::Result;
    use futures::TryStreamExt;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn chunks(data: Vec<u8>, size: usize) -> ByteStream {
        let parts: Vec<Result<Bytes>> = data.chunks(size).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        Box::pin(futures::stream::iter(parts))
    }

    #[tokio::test]
    async fn gzip_round_trips_and_bombs_stop_at_the_limit() {
        let data: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let inflated: Vec<Bytes> = gunzip(chunks(gz(&data), 1000), 1 << 20).try_collect().await.unwrap();
        assert_eq!(inflated.concat(), data);
        let zipped: Vec<Bytes> = gzip(chunks(data.clone(), 7000)).try_collect().await.unwrap();
        let back: Vec<Bytes> = gunzip(chunks(zipped.concat(), 333), 1 << 20).try_collect().await.unwrap();
        assert_eq!(back.concat(), data);

        let bomb = gz(&vec![0u8; 50 << 20]);
        let err = gunzip(chunks(bomb, 64 * 1024), 1 << 20).try_collect::<Vec<Bytes>>().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TooLarge);
        let err =
            gunzip(chunks(b"not gzip at all".to_vec(), 4), 1 << 20).try_collect::<Vec<Bytes>>().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        let mut cut = gz(&data);
        cut.truncate(cut.len() / 2);
        assert!(gunzip(chunks(cut, 1000), 1 << 20).try_collect::<Vec<Bytes>>().await.is_err());
    }

    #[test]
    fn gzip_is_used_when_asked_for() {
        let mut headers = HeaderMap::new();
        assert!(!accepts_gzip(&headers));
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        assert!(!accepts_gzip(&headers));
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("br, GZIP;q=0.8"));
        assert!(accepts_gzip(&headers));
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip;q=0"));
        assert!(!accepts_gzip(&headers));
    }
}

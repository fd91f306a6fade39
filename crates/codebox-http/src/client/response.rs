//! A successful response whose body is read with a deadline on every wait.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream;
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use codebox_core::{ByteStream, CodeBoxError, Result, TimeoutKind};

/// The largest error body kept when a request fails.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// A response with a 2xx status. Its body is read lazily; every wait for more bytes is
/// bounded by the read timeout.
#[derive(Debug)]
pub struct Response {
    status: StatusCode,
    headers: HeaderMap,
    body: Incoming,
    read_timeout: Duration,
}

impl Response {
    pub(crate) fn new(response: http::Response<Incoming>, read_timeout: Duration) -> Self {
        let (parts, body) = response.into_parts();
        Self { status: parts.status, headers: parts.headers, body, read_timeout }
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The response headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The body as a stream of chunks. Dropping the stream before its end closes the
    /// connection (HTTP/1.1) or resets the stream (HTTP/2), which tells the server the
    /// client is gone.
    pub fn into_stream(self) -> ByteStream {
        let read_timeout = self.read_timeout;
        Box::pin(stream::unfold(Some(self.body), move |body| async move {
            let mut body = body?;
            loop {
                match next_frame(&mut body, read_timeout).await {
                    Err(e) => return Some((Err(e), None)),
                    Ok(None) => return None,
                    Ok(Some(data)) if data.is_empty() => continue,
                    Ok(Some(data)) => return Some((Ok(data), Some(body))),
                }
            }
        }))
    }

    /// The whole body in memory, refusing more than `limit` bytes.
    pub async fn bytes_limited(mut self, limit: usize) -> Result<Bytes> {
        let mut buf = BytesMut::new();
        while let Some(data) = next_frame(&mut self.body, self.read_timeout).await? {
            if buf.len() + data.len() > limit {
                return Err(CodeBoxError::protocol(format!("the response body is larger than {limit} bytes")));
            }
            buf.extend_from_slice(&data);
        }
        Ok(buf.freeze())
    }

    /// The whole body decoded as JSON (at most 64 MiB).
    pub async fn json<T: serde::de::DeserializeOwned>(self) -> Result<T> {
        let bytes = self.bytes_limited(64 << 20).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| CodeBoxError::protocol(format!("malformed JSON response: {e}")).with_source(e))
    }

    /// Drain and drop the body so the connection can go back to the pool.
    pub async fn discard(self) -> Result<()> {
        self.bytes_limited(MAX_ERROR_BODY).await.map(drop)
    }
}

/// Turn a failure response into the error it stands for.
pub(crate) async fn into_error(response: http::Response<Incoming>, read_timeout: Duration) -> CodeBoxError {
    let (parts, mut body) = response.into_parts();
    let headers = parts
        .headers
        .iter()
        .filter(|(_, v)| !v.is_sensitive())
        .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let mut buf = BytesMut::new();
    // A body that cannot be read completely is reported with what arrived.
    while let Ok(Some(data)) = next_frame(&mut body, read_timeout).await {
        let room = MAX_ERROR_BODY.saturating_sub(buf.len());
        buf.extend_from_slice(&data[..data.len().min(room)]);
        if room <= data.len() {
            break;
        }
    }
    crate::wire::error_from_response(parts.status.as_u16(), headers, &buf)
}

/// The next data frame (trailers are skipped), `None` at the end.
async fn next_frame(body: &mut Incoming, read_timeout: Duration) -> Result<Option<Bytes>> {
    loop {
        match tokio::time::timeout(read_timeout, body.frame()).await {
            Err(_) => {
                return Err(CodeBoxError::timeout(TimeoutKind::Read, Some(read_timeout)));
            }
            Ok(None) => return Ok(None),
            Ok(Some(Err(e))) => return Err(body_error(&e)),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
}

fn body_error(e: &hyper::Error) -> CodeBoxError {
    let message = if e.is_incomplete_message() {
        "the connection closed before the response was complete".to_owned()
    } else {
        let mut message = format!("reading the response failed: {e}");
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            message.push_str(&format!(": {s}"));
            source = s.source();
        }
        message
    };
    CodeBoxError::connection(message)
}

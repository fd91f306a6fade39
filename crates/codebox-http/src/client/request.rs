//! A request to send: method, URL, headers, body, and how it may be retried.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Uri};
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::Frame;
use tokio::sync::oneshot;

use codebox_core::{ApiKey, ByteStream, CodeBoxError, Result};

/// The body type the client sends.
pub(crate) type HyperBody = UnsyncBoxBody<Bytes, BodyError>;

/// When a request may be sent again after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Retry {
    /// Never: the request may have had an effect that must not happen twice (an execution).
    Never,
    /// Only when the server certainly did not act on it: the connection could not be made,
    /// or the answer was 429 or 503.
    OnRefusal,
    /// Whenever a retry may help: connection failures, 429, 502, 503 and 504. For requests
    /// whose repetition is harmless (reads, deletes, puts of the same bytes).
    Idempotent,
}

/// What a request carries.
pub enum RequestBody {
    /// Nothing.
    Empty,
    /// Bytes held in memory; can be sent again on a retry.
    Bytes(Bytes),
    /// A stream of chunks, sent as it is read. Cannot be replayed, so never retried.
    Stream(ByteStream),
}

impl fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("Empty"),
            Self::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            Self::Stream(_) => f.write_str("Stream"),
        }
    }
}

/// An HTTP request for [`HttpClient::send`](super::HttpClient::send).
pub struct Request {
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) headers: HeaderMap,
    pub(crate) body: RequestBody,
    pub(crate) retry: Retry,
    pub(crate) timeout: Option<Option<Duration>>,
    pub(crate) read_timeout: Option<Duration>,
    pub(crate) head_deadline: bool,
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values are left out: they may carry credentials.
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("uri", &self.uri)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("body", &self.body)
            .field("retry", &self.retry)
            .finish()
    }
}

impl Request {
    /// A request with no body. `url` must be an absolute `http` or `https` URL.
    pub fn new(method: Method, url: &str) -> Result<Self> {
        let uri: Uri =
            url.parse().map_err(|e| CodeBoxError::invalid(format!("invalid URL {url:?}: {e}")).with_source(e))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") if cfg!(feature = "rustls") => {}
            Some("https") => {
                return Err(CodeBoxError::invalid(format!(
                    "{url:?} needs TLS; build codebox with the `rustls` feature (codebox-remote and codebox-http have it too)"
                )));
            }
            _ => return Err(CodeBoxError::invalid(format!("{url:?} is not an http:// or https:// URL"))),
        }
        if uri.host().is_none() {
            return Err(CodeBoxError::invalid(format!("{url:?} has no host")));
        }
        let retry = if matches!(method, Method::GET | Method::HEAD | Method::DELETE | Method::PUT | Method::OPTIONS) {
            Retry::Idempotent
        } else {
            Retry::OnRefusal
        };
        Ok(Self {
            method,
            uri,
            headers: HeaderMap::new(),
            body: RequestBody::Empty,
            retry,
            timeout: None,
            read_timeout: None,
            head_deadline: true,
        })
    }

    /// The method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The URL.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// Add a header.
    pub fn header(mut self, name: HeaderName, value: &str) -> Result<Self> {
        let value = HeaderValue::from_str(value)
            .map_err(|_| CodeBoxError::invalid(format!("the value of header {name} is not valid")))?;
        self.headers.append(name, value);
        Ok(self)
    }

    /// Authenticate with `Authorization: Bearer <key>`. The header is marked sensitive and
    /// never shown.
    pub fn bearer(mut self, key: &ApiKey) -> Result<Self> {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
            .map_err(|_| CodeBoxError::invalid("the API key contains characters not allowed in a header"))?;
        value.set_sensitive(true);
        self.headers.insert(AUTHORIZATION, value);
        Ok(self)
    }

    /// Send a JSON body.
    pub fn json<T: serde::Serialize + ?Sized>(mut self, value: &T) -> Result<Self> {
        let body = serde_json::to_vec(value)
            .map_err(|e| CodeBoxError::invalid(format!("cannot encode JSON: {e}")).with_source(e))?;
        self.headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        self.body = RequestBody::Bytes(body.into());
        Ok(self)
    }

    /// Send these bytes with this content type.
    pub fn bytes(mut self, content_type: &'static str, body: Bytes) -> Self {
        self.headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        self.body = RequestBody::Bytes(body);
        self
    }

    /// Stream this body with this content type. A streamed request is never retried.
    pub fn stream(mut self, content_type: &str, body: ByteStream) -> Result<Self> {
        let value = HeaderValue::from_str(content_type)
            .map_err(|_| CodeBoxError::invalid(format!("invalid content type {content_type:?}")))?;
        self.headers.insert(CONTENT_TYPE, value);
        self.body = RequestBody::Stream(body);
        Ok(self)
    }

    /// Set the retry policy (by default: [`Retry::Idempotent`] for GET, HEAD, PUT, DELETE
    /// and OPTIONS, [`Retry::OnRefusal`] otherwise).
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// Override the client's request timeout for this request (`None`: no limit).
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Override the client's read timeout for this request.
    pub fn with_read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = Some(timeout);
        self
    }

    /// Wait for the response head as long as it takes (the read timeout still bounds every
    /// wait for body bytes). For requests the server may legitimately hold, such as an
    /// execution queued behind another one in the same box.
    pub fn without_head_deadline(mut self) -> Self {
        self.head_deadline = false;
        self
    }

    /// A copy for a retry, when the body can be sent again.
    pub(crate) fn try_clone(&self) -> Option<Self> {
        let body = match &self.body {
            RequestBody::Empty => RequestBody::Empty,
            RequestBody::Bytes(b) => RequestBody::Bytes(b.clone()),
            RequestBody::Stream(_) => return None,
        };
        Some(Self {
            method: self.method.clone(),
            uri: self.uri.clone(),
            headers: self.headers.clone(),
            body,
            retry: self.retry,
            timeout: self.timeout,
            read_timeout: self.read_timeout,
            head_deadline: self.head_deadline,
        })
    }

    /// The hyper request, a receiver that completes once the body is fully handed over,
    /// and the slot where a failing body stream leaves its error.
    pub(crate) fn into_hyper(
        self,
        user_agent: &str,
    ) -> Result<(http::Request<HyperBody>, Option<oneshot::Receiver<()>>, BodyErrorSlot)> {
        let slot = BodyErrorSlot::default();
        let (body, sent) = match self.body {
            RequestBody::Empty => (Empty::new().map_err(|never| match never {}).boxed_unsync(), None),
            RequestBody::Bytes(b) => (Full::new(b).map_err(|never| match never {}).boxed_unsync(), None),
            RequestBody::Stream(s) => {
                let (tx, rx) = oneshot::channel();
                let failed = slot.clone();
                let frames = s
                    .map_err(move |e| {
                        let message = e.to_string();
                        failed.put(e);
                        BodyError(message)
                    })
                    .map_ok(Frame::data)
                    .chain(
                        stream::once(async move {
                            let _ = tx.send(());
                        })
                        .filter_map(|()| async { None }),
                    );
                (BodyExt::boxed_unsync(StreamBody::new(frames)), Some(rx))
            }
        };
        let mut builder = http::Request::builder().method(self.method).uri(self.uri);
        if let Some(headers) = builder.headers_mut() {
            *headers = self.headers;
            if !headers.contains_key(http::header::USER_AGENT)
                && let Ok(ua) = HeaderValue::from_str(user_agent)
            {
                headers.insert(http::header::USER_AGENT, ua);
            }
        }
        let req =
            builder.body(body).map_err(|e| CodeBoxError::invalid(format!("invalid request: {e}")).with_source(e))?;
        Ok((req, sent, slot))
    }
}

/// The error a request body stream failed with, as hyper sees it.
#[derive(Debug)]
pub(crate) struct BodyError(String);

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the request body failed: {}", self.0)
    }
}

impl std::error::Error for BodyError {}

/// Keeps the original error of a failing request body so the caller gets it back intact.
#[derive(Clone, Default)]
pub(crate) struct BodyErrorSlot(Arc<Mutex<Option<CodeBoxError>>>);

impl BodyErrorSlot {
    fn put(&self, e: CodeBoxError) {
        if let Ok(mut slot) = self.0.lock() {
            slot.get_or_insert(e);
        }
    }

    pub(crate) fn take(&self) -> Option<CodeBoxError> {
        self.0.lock().ok().and_then(|mut slot| slot.take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codebox_core::ErrorKind;

    #[test]
    fn the_key_never_shows_and_is_marked_sensitive() {
        let req = Request::new(Method::GET, "http://127.0.0.1:1/x").unwrap().bearer(&ApiKey::new("sk-hidden")).unwrap();
        assert!(!format!("{req:?}").contains("sk-hidden"));
        assert!(req.headers.get(AUTHORIZATION).unwrap().is_sensitive());
    }

    #[test]
    fn bad_urls_are_refused_clearly() {
        for (url, needle) in [("ftp://h/x", "not an http"), ("not a url", "invalid URL"), ("http:///x", "invalid URL")]
        {
            let err = Request::new(Method::GET, url).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{url}");
            assert!(err.to_string().contains(needle), "{url}: {err}");
        }
        let err = Request::new(Method::GET, "http://h/x").unwrap().bearer(&ApiKey::new("bad\nkey")).unwrap_err();
        assert!(!err.to_string().contains("bad\nkey"));
    }

    #[test]
    fn only_replayable_bodies_can_be_retried() {
        let get = Request::new(Method::GET, "http://h/x").unwrap();
        assert_eq!(get.retry, Retry::Idempotent);
        assert!(get.try_clone().is_some());
        let post = Request::new(Method::POST, "http://h/x").unwrap().json(&serde_json::json!({"a": 1})).unwrap();
        assert_eq!(post.retry, Retry::OnRefusal);
        assert!(post.try_clone().is_some());
        let body: ByteStream = Box::pin(stream::empty());
        let put = Request::new(Method::PUT, "http://h/x").unwrap().stream("application/octet-stream", body).unwrap();
        assert!(put.try_clone().is_none());
    }
}

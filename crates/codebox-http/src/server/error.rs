//! The server's own error type: what a request that failed is answered with.
//!
//! A server answers; it is not "answered with a failure" itself, so it does not build
//! [`CodeBoxError::Http`] (that variant is the client's: a server told it no). Every path
//! of a server builds its error response from an [`ApiError`], and an error a box returned
//! becomes one through `From<CodeBoxError>`, which keeps the box's typed detail for the
//! wire.

use std::time::Duration;

use codebox_core::{CodeBoxError, ErrorKind, TimeoutKind};
use http::{HeaderValue, Response, StatusCode, header};

use super::body::{Body, json_response};
use crate::wire::{ErrorBody, ErrorDetail, ErrorResponse, status_for_kind};

/// A failed request as the server answers it: `{"error": {...}}` with `status`, and
/// `Retry-After` when there is a delay to wait.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{status} {kind}: {message}")]
#[non_exhaustive]
pub struct ApiError {
    /// The HTTP status.
    pub status: u16,
    /// The category, stable on the wire.
    pub kind: ErrorKind,
    /// A human-readable message.
    pub message: String,
    /// How long the client should wait before trying again.
    pub retry_after: Option<Duration>,
    /// What a client needs to rebuild the box's error (a kernel's death, a timeout).
    pub detail: Option<ErrorDetail>,
}

impl ApiError {
    /// An error answered with `status` and `kind`, for the statuses a kind does not imply
    /// on its own (405, 408, 415, a 503 `rate_limited`, ...).
    pub fn new(status: u16, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { status, kind, message: message.into(), retry_after: None, detail: None }
    }

    /// An error of `kind` with the status that fits it ([`status_for_kind`]).
    pub fn of_kind(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::new(status_for_kind(kind), kind, message)
    }

    /// This error asking the client to wait `after` before trying again.
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// The answer to a request whose body failed while it was being read, from the error
    /// the body's stream (see [`stream_limited`](super::stream_limited)) failed with: a
    /// client that stalled gets 408 (its own slowness, not a gateway's), the rest the
    /// status of their kind (413 over the limit, 400 for a malformed body, ...).
    pub fn from_body_error(err: &CodeBoxError) -> Self {
        match err {
            CodeBoxError::Timeout { kind: TimeoutKind::Transfer, after, .. } => {
                let waited = after.map(|d| format!(" for {:.1}s", d.as_secs_f64())).unwrap_or_default();
                Self::new(
                    408,
                    ErrorKind::Timeout,
                    format!("the client sent no body bytes{waited}; the request was abandoned"),
                )
            }
            other => Self::of_kind(other.kind(), body_message(other)),
        }
    }

    /// The `error` object of the response.
    pub fn body(&self) -> ErrorBody {
        ErrorBody::new(self.kind, self.message.clone())
            .with_retry_after(self.retry_after)
            .with_detail(self.detail.clone())
    }

    /// The response: the JSON error with the status, and `Retry-After` when the error
    /// carries a delay (a `rate_limited` error without one says 1 second).
    pub fn to_response(&self) -> Response<Body> {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = json_response(status, &ErrorResponse { error: self.body() });
        let retry_after = self.retry_after.or(match self.kind {
            ErrorKind::RateLimited => Some(Duration::from_secs(1)),
            _ => None,
        });
        if let Some(after) = retry_after {
            let secs = after.as_secs_f64().ceil().max(1.0) as u64;
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// A request body's failure in words, without the category prefix the display of a
/// [`CodeBoxError`] adds where the message already says it.
fn body_message(err: &CodeBoxError) -> String {
    match err {
        CodeBoxError::TooLarge { message, .. } | CodeBoxError::InvalidInput { message, .. } => message.clone(),
        CodeBoxError::Http(http) => http.message.clone(),
        other => other.to_string(),
    }
}

impl From<CodeBoxError> for ApiError {
    /// The answer to an error a box (or anything below the server) returned: the status
    /// that fits its kind, its message, its retry delay and its typed detail.
    fn from(err: CodeBoxError) -> Self {
        let message = match &err {
            // A server behind this one already said it in its words.
            CodeBoxError::Http(http) => http.message.clone(),
            other => other.to_string(),
        };
        Self {
            status: status_for_kind(err.kind()),
            kind: err.kind(),
            message,
            retry_after: err.retry_after(),
            detail: ErrorDetail::of(&err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codebox_core::KernelDeath;
    use http_body_util::BodyExt;

    async fn body_of(resp: Response<Body>) -> ErrorBody {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice::<ErrorResponse>(&bytes).unwrap().error
    }

    #[tokio::test]
    async fn errors_carry_status_kind_and_retry_after() {
        let full = ApiError::new(503, ErrorKind::RateLimited, "full");
        let resp = full.to_response();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        assert_eq!(body_of(resp).await.kind, ErrorKind::RateLimited);

        let later = ApiError::new(429, ErrorKind::RateLimited, "yours").with_retry_after(Duration::from_millis(2500));
        let resp = later.to_response();
        assert_eq!(resp.headers()[header::RETRY_AFTER], "3");
        assert_eq!(body_of(resp).await.retry_after, Some(2.5));

        let resp = ApiError::from(CodeBoxError::not_found("session x")).to_response();
        assert_eq!(resp.status(), 404);
        assert!(resp.headers().get(header::RETRY_AFTER).is_none());
    }

    #[tokio::test]
    async fn a_box_error_keeps_its_status_and_detail() {
        let died = ApiError::from(CodeBoxError::kernel_died(KernelDeath::Signaled { signal: 9 }));
        assert_eq!((died.status, died.kind), (500, ErrorKind::KernelDied));
        let body = body_of(died.to_response()).await;
        assert_eq!(body.cause, Some(KernelDeath::Signaled { signal: 9 }));

        let timeout = CodeBoxError::timeout_state_lost(TimeoutKind::Execution, Some(Duration::from_secs(2)));
        let body = body_of(ApiError::from(timeout).to_response()).await;
        assert_eq!(
            (body.kind, body.timeout, body.state_lost, body.after),
            (ErrorKind::Timeout, Some(TimeoutKind::Execution), Some(true), Some(2.0))
        );

        let too_large = ApiError::from(CodeBoxError::too_large("the listing has over 10000 entries"));
        assert_eq!((too_large.status, too_large.kind), (413, ErrorKind::TooLarge));
        assert_eq!(ApiError::from(CodeBoxError::rate_limited(Some(Duration::from_secs(4)))).status, 429);
    }

    #[test]
    fn a_stalled_body_is_408_and_an_oversized_one_413() {
        let stalled = CodeBoxError::timeout(TimeoutKind::Transfer, Some(Duration::from_secs(30)));
        assert_eq!(ApiError::from_body_error(&stalled).status, 408);
        let big = ApiError::from_body_error(&CodeBoxError::too_large("the request body exceeds the limit of 5 bytes"));
        assert_eq!((big.status, big.message.as_str()), (413, "the request body exceeds the limit of 5 bytes"));
        assert_eq!(ApiError::from_body_error(&CodeBoxError::invalid("malformed")).status, 400);
    }
}

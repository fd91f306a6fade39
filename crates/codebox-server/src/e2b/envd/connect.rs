//! The Connect protocol as E2B's SDK speaks it: JSON only (its codec is ProtoJSON, never
//! protobuf binary), no compression. A unary call is one `application/json` body answered
//! by one; a server-streaming call is one `application/connect+json` envelope answered by
//! envelopes and an end-of-stream envelope. Errors are `{"code","message"}` with Connect's
//! codes: the SDK branches on them (`not_found`, `already_exists`).

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use codebox_core::{CodeBoxError, ErrorKind};
use codebox_http::server::{ApiError, Body, read_budgeted};
use http::{HeaderMap, HeaderValue, header};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::state::AppState;

/// The content type of a unary call and of its answer.
pub(super) const UNARY_JSON: &str = "application/json";
/// The content type of a server-streaming call and of its answer.
pub(super) const STREAM_JSON: &str = "application/connect+json";

/// The envelope flag of a compressed message (compression is never negotiated here).
const FLAG_COMPRESSED: u8 = 0x01;
/// The envelope flag of the end-of-stream message.
const FLAG_END_STREAM: u8 = 0x02;
/// The bytes before an envelope's message: one flag byte and a big-endian length.
const ENVELOPE_HEADER: usize = 5;

/// Connect's error codes (those this service answers with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Code {
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    ResourceExhausted,
    FailedPrecondition,
    Unimplemented,
    Internal,
    Unavailable,
    Unauthenticated,
}

impl Code {
    /// The code as it is written on the wire.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::Unauthenticated => "unauthenticated",
        }
    }

    /// The HTTP status of a unary answer with this code (Connect's mapping).
    pub(super) fn http_status(self) -> StatusCode {
        match self {
            Code::InvalidArgument => StatusCode::BAD_REQUEST,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists => StatusCode::CONFLICT,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::FailedPrecondition => StatusCode::BAD_REQUEST,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        }
    }

    /// The code for an error of `kind`.
    fn of_kind(kind: ErrorKind) -> Self {
        match kind {
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::InvalidInput | ErrorKind::UnsafePath | ErrorKind::Protocol | ErrorKind::Install => {
                Code::InvalidArgument
            }
            ErrorKind::Authentication => Code::Unauthenticated,
            ErrorKind::Timeout => Code::DeadlineExceeded,
            ErrorKind::TooLarge | ErrorKind::RateLimited | ErrorKind::StorageFull => Code::ResourceExhausted,
            ErrorKind::Unsupported => Code::Unimplemented,
            ErrorKind::NotRunning => Code::FailedPrecondition,
            ErrorKind::Connection | ErrorKind::SessionLost | ErrorKind::Expired | ErrorKind::KernelStart => {
                Code::Unavailable
            }
            _ => Code::Internal,
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed call, as Connect answers it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub(super) struct ConnectError {
    /// What kind of failure.
    pub(super) code: Code,
    /// In words.
    pub(super) message: String,
}

/// What a handler of a call returns.
pub(super) type ConnectResult<T> = std::result::Result<T, ConnectError>;

impl ConnectError {
    /// An error with `code`.
    pub(super) fn new(code: Code, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    /// An `invalid_argument` error.
    pub(super) fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    /// The error's JSON: `{"code","message"}`.
    fn json(&self) -> serde_json::Value {
        serde_json::json!({ "code": self.code.as_str(), "message": self.message })
    }

    /// The answer to a unary call that failed: Connect's status for the code, the error as
    /// JSON.
    pub(super) fn unary_response(&self) -> Response<Body> {
        tracing::debug!(code = %self.code, message = %self.message, "envd call failed");
        let mut resp = Response::new(Body::full(self.json().to_string()));
        *resp.status_mut() = self.code.http_status();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(UNARY_JSON));
        resp
    }
}

impl From<CodeBoxError> for ConnectError {
    fn from(err: CodeBoxError) -> Self {
        let message = match &err {
            CodeBoxError::InvalidInput { message, .. } | CodeBoxError::TooLarge { message, .. } => message.clone(),
            other => other.to_string(),
        };
        Self::new(Code::of_kind(err.kind()), message)
    }
}

impl From<ApiError> for ConnectError {
    /// A request body that could not be read: over the limit, stalled, over the server's
    /// budget of buffered bytes.
    fn from(err: ApiError) -> Self {
        let code = match (err.status, err.kind) {
            (408, _) => Code::DeadlineExceeded,
            (503, _) => Code::Unavailable,
            (_, kind) => Code::of_kind(kind),
        };
        Self::new(code, err.message)
    }
}

/// Whether a call is unary or server-streaming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    /// One message each way.
    Unary,
    /// One message in, a stream of messages out.
    ServerStream,
}

/// The shape a request's content type asks for; JSON only.
pub(super) fn shape_of(headers: &HeaderMap) -> ConnectResult<Shape> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match mime.as_str() {
        UNARY_JSON => Ok(Shape::Unary),
        STREAM_JSON => Ok(Shape::ServerStream),
        "application/proto" | "application/connect+proto" => {
            Err(ConnectError::new(Code::Unimplemented, "only the JSON codec is served (E2B's SDK sends JSON)"))
        }
        other => Err(ConnectError::invalid(format!(
            "content type {other:?}: a Connect call is `{UNARY_JSON}` (unary) or `{STREAM_JSON}` (server stream)"
        ))),
    }
}

/// The deadline a call carries (`Connect-Timeout-Ms`): at most ten digits, as Connect says.
pub(super) fn timeout_of(headers: &HeaderMap) -> ConnectResult<Option<Duration>> {
    let Some(value) = headers.get("connect-timeout-ms") else { return Ok(None) };
    let text = value.to_str().unwrap_or("");
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ConnectError::invalid(format!("Connect-Timeout-Ms {text:?} is not a number of milliseconds")));
    }
    let ms: u64 = text.parse().map_err(|_| ConnectError::invalid("Connect-Timeout-Ms is not a number"))?;
    Ok(Some(Duration::from_millis(ms)))
}

/// Read a call's request message: the whole body for a unary call, the one envelope of a
/// server-streaming call. Bounded by the server's JSON limit (`resource_exhausted` past
/// it); a malformed envelope or message is `invalid_argument`.
pub(super) async fn read_message<T: DeserializeOwned>(
    state: &AppState,
    shape: Shape,
    req: Request<Incoming>,
) -> ConnectResult<T> {
    let limit = state.config.max_json_bytes;
    let framing = if shape == Shape::ServerStream { ENVELOPE_HEADER as u64 } else { 0 };
    let body =
        read_budgeted(req.into_body(), limit + framing, state.config.body_idle_timeout, &state.body_budget).await?;
    let message = match shape {
        Shape::Unary => &body.bytes[..],
        Shape::ServerStream => unwrap_envelope(&body.bytes, limit)?,
    };
    decode(message)
}

/// The message of a request that is exactly one envelope.
fn unwrap_envelope(bytes: &[u8], limit: u64) -> ConnectResult<&[u8]> {
    if bytes.len() < ENVELOPE_HEADER {
        return Err(ConnectError::invalid(format!(
            "the request is {} bytes: a Connect envelope starts with a flag byte and a 4-byte length",
            bytes.len()
        )));
    }
    let flags = bytes[0];
    let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as u64;
    if flags & FLAG_COMPRESSED != 0 {
        return Err(ConnectError::invalid("the request message is compressed; compression is not negotiated here"));
    }
    if flags != 0 {
        return Err(ConnectError::invalid(format!("the request envelope has flags {flags:#04x}; expected 0")));
    }
    if len > limit {
        return Err(ConnectError::new(
            Code::ResourceExhausted,
            format!("the request message is {len} bytes, over the server's limit of {limit}"),
        ));
    }
    let rest = &bytes[ENVELOPE_HEADER..];
    if rest.len() as u64 != len {
        return Err(ConnectError::invalid(format!(
            "the request envelope says {len} bytes but {} follow; a server-streaming call sends exactly one message",
            rest.len()
        )));
    }
    Ok(rest)
}

/// A ProtoJSON message. An empty body is the empty message, as Connect allows.
fn decode<T: DeserializeOwned>(message: &[u8]) -> ConnectResult<T> {
    let message = if message.iter().all(u8::is_ascii_whitespace) { b"{}".as_slice() } else { message };
    serde_json::from_slice(message).map_err(|e| ConnectError::invalid(format!("malformed request message: {e}")))
}

/// A successful unary answer.
pub(super) fn unary_ok<T: Serialize>(message: &T) -> Response<Body> {
    match serde_json::to_vec(message) {
        Ok(json) => {
            let mut resp = Response::new(Body::full(json));
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(UNARY_JSON));
            resp
        }
        Err(e) => ConnectError::new(Code::Internal, format!("encoding the answer: {e}")).unary_response(),
    }
}

/// One message of a stream, enveloped.
pub(super) fn envelope<T: Serialize>(message: &T) -> ConnectResult<Bytes> {
    let json = serde_json::to_vec(message)
        .map_err(|e| ConnectError::new(Code::Internal, format!("encoding a stream message: {e}")))?;
    Ok(framed(0, &json))
}

/// The end-of-stream envelope: `{}`, or `{"error":{..}}` when the call failed.
pub(super) fn end_of_stream(error: Option<&ConnectError>) -> Bytes {
    let json = match error {
        None => serde_json::json!({}),
        Some(e) => serde_json::json!({ "error": e.json() }),
    };
    framed(FLAG_END_STREAM, json.to_string().as_bytes())
}

fn framed(flags: u8, message: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(ENVELOPE_HEADER + message.len());
    buf.put_u8(flags);
    // Messages are ours and small (a chunk of output); far below 4 GiB.
    buf.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    buf.put_slice(message);
    buf.freeze()
}

/// The answer to a server-streaming call: 200, `application/connect+json`, `body` (its
/// envelopes, then the end of stream). Errors go in the end-of-stream envelope, so even a
/// call that failed at once is answered this way.
pub(super) fn stream_response(body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(STREAM_JSON));
    resp
}

/// A server-streaming call that failed before it produced anything.
pub(super) fn stream_error(error: &ConnectError) -> Response<Body> {
    tracing::debug!(code = %error.code, message = %error.message, "envd stream failed");
    stream_response(Body::full(end_of_stream(Some(error))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_are_a_flag_a_length_and_the_message() {
        let env = envelope(&serde_json::json!({"a": 1})).unwrap();
        assert_eq!(&env[..5], &[0, 0, 0, 0, 7]);
        assert_eq!(&env[5..], br#"{"a":1}"#);
        let end = end_of_stream(Some(&ConnectError::new(Code::NotFound, "gone")));
        assert_eq!(end[0], FLAG_END_STREAM);
        let json: serde_json::Value = serde_json::from_slice(&end[5..]).unwrap();
        assert_eq!(json["error"]["code"], "not_found");
        assert_eq!(&end_of_stream(None)[5..], b"{}");
    }

    #[test]
    fn a_request_is_exactly_one_plain_envelope_within_the_limit() {
        let one = framed(0, b"{}");
        assert_eq!(unwrap_envelope(&one, 10).unwrap(), b"{}");
        assert_eq!(unwrap_envelope(&one[..3], 10).unwrap_err().code, Code::InvalidArgument);
        assert_eq!(unwrap_envelope(&one[..6], 10).unwrap_err().code, Code::InvalidArgument);
        assert_eq!(unwrap_envelope(&framed(FLAG_COMPRESSED, b"{}"), 10).unwrap_err().code, Code::InvalidArgument);
        assert_eq!(unwrap_envelope(&framed(0, b"{\"path\":\"x\"}"), 4).unwrap_err().code, Code::ResourceExhausted);
        let two = [one.clone(), one].concat();
        assert_eq!(unwrap_envelope(&two, 10).unwrap_err().code, Code::InvalidArgument);
    }

    #[test]
    fn timeouts_are_milliseconds_of_at_most_ten_digits() {
        let mut headers = HeaderMap::new();
        assert_eq!(timeout_of(&headers).unwrap(), None);
        headers.insert("connect-timeout-ms", HeaderValue::from_static("60000"));
        assert_eq!(timeout_of(&headers).unwrap(), Some(Duration::from_secs(60)));
        for bad in ["", "-1", "1.5", "12345678901", "soon"] {
            headers.insert("connect-timeout-ms", HeaderValue::from_str(bad).unwrap());
            assert!(timeout_of(&headers).is_err(), "{bad}");
        }
    }

    #[test]
    fn box_errors_map_to_the_codes_the_sdk_branches_on() {
        assert_eq!(ConnectError::from(CodeBoxError::not_found("f")).code, Code::NotFound);
        assert_eq!(ConnectError::from(CodeBoxError::invalid("f")).code, Code::InvalidArgument);
        assert_eq!(ConnectError::from(CodeBoxError::unsupported("pty")).code, Code::Unimplemented);
        assert_eq!(Code::AlreadyExists.http_status(), StatusCode::CONFLICT);
        assert_eq!(Code::ResourceExhausted.http_status(), StatusCode::TOO_MANY_REQUESTS);
    }
}

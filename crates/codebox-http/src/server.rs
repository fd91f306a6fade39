//! The hyper server plumbing: an accept loop with TCP_NODELAY that speaks HTTP/1.1 and
//! HTTP/2 and shuts down gracefully, the response [`Body`] type with its helpers (JSON,
//! NDJSON streams with keepalive lines, streamed raw bodies), size-limited request body
//! readers, request ids, and [`ApiError`], what a failed request is answered with.
//!
//! The server crate builds its routes on top of this; nothing here knows about sessions.

mod body;
mod error;
mod listen;
mod request_body;
mod request_id;

pub use body::{Body, KEEPALIVE_LINE, json_response, ndjson_body, ndjson_response};
pub use error::ApiError;
pub use listen::{ConnectionLimits, DEFAULT_CONNECTION_IDLE_TIMEOUT, default_max_connections, serve};
pub use request_body::{BodyBudget, BufferedBody, read_budgeted, read_limited, stream_limited};
pub use request_id::{REQUEST_ID_HEADER, RequestId};

//! The hyper client shared by every remote backend: pooling, timeouts, retries.
//!
//! [`HttpClient`] wraps the hyper-util pooled client (HTTP/1.1 and HTTP/2, `TCP_NODELAY`,
//! TLS through rustls behind the `rustls` feature) and adds what a CodeBox client needs:
//!
//! - three separate deadlines: opening a connection ([`TimeoutKind::Connect`]), getting the
//!   response head ([`TimeoutKind::Request`]) and waiting for the next bytes of a response
//!   once the request is sent ([`TimeoutKind::Read`]);
//! - streaming request and response bodies ([`RequestBody::Stream`], [`Response::into_stream`]);
//! - retries with exponential backoff and jitter, by the request's [`Retry`] policy, honouring
//!   `Retry-After`. An execution uses [`Retry::Never`] and is never repeated;
//! - failure statuses turned into [`CodeBoxError`] by [`crate::wire::error_from_response`],
//!   keeping status, JSON body and headers.
//!
//! [`TimeoutKind::Connect`]: codebox_core::TimeoutKind::Connect
//! [`TimeoutKind::Request`]: codebox_core::TimeoutKind::Request
//! [`TimeoutKind::Read`]: codebox_core::TimeoutKind::Read
//! [`CodeBoxError`]: codebox_core::CodeBoxError

mod config;
mod connector;
mod request;
mod response;
mod retry;
mod transport;

pub use config::{ClientConfig, PemCertificates, RetryPolicy};
pub use request::{Request, RequestBody, Retry};
pub use response::Response;
pub use transport::{HttpClient, Upgraded};

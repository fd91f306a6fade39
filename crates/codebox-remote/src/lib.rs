//! RemoteBox: a session on a CodeBox server, driven over HTTP.
//!
//! [`RemoteBox`] implements [`codebox_core::CodeBox`] against two protocols:
//!
//! - [`Protocol::Native`]: the native API of `codebox serve` (`/v1`, see
//!   `docs/native-api.md`). Every operation of the trait works; execution events stream as
//!   NDJSON lines arrive, and dropping an execution stream closes its connection, which makes
//!   the server interrupt the execution.
//! - [`Protocol::CodeboxApi`] and [`Protocol::CodeboxApiServer`]: the codebox-api 0.2 service
//!   protocol, either hosted (`{base}/codebox/{session}/exec`, Bearer and `Factory-Id`
//!   headers) or the single-box server of the `codeboxapi` Python package
//!   (`uvicorn codeboxapi.api:app`, the same routes at its root). Execution, upload and
//!   download work; [`capabilities`](codebox_core::CodeBox::capabilities) reports the rest
//!   as missing and those calls return [`CodeBoxError::Unsupported`](codebox_core::CodeBoxError::Unsupported).
//!   The wire carries labelled text only: exceptions are recognized from the tracebacks the
//!   servers print and reported as [`ExecEvent::Error`](codebox_core::ExecEvent::Error) with
//!   outcome `Error`, and [`Capabilities::unreported`](codebox_core::Capabilities::unreported)
//!   names what the protocol cannot tell (a kernel death's cause, the execution counter, ...).
//!
//! [`Client`] manages a server's sessions: create them with parameters
//! ([`SessionRequest`]: template, kernel, environment, metadata, limits, lifetime), attach to
//! them, list them ([`SessionFilter`]), and read the server's templates and pools.
//!
//! ```no_run
//! # async fn demo() -> codebox_core::Result<()> {
//! use codebox_core::{CodeBox, CodeBoxExt};
//! use codebox_remote::RemoteBox;
//!
//! let remote = RemoteBox::builder().with_base_url("http://127.0.0.1:8069").with_api_key("sk-...").build()?;
//! remote.start().await?;
//! let ex = remote.exec("print(1 + 1)").await?;
//! assert_eq!(ex.stdout(), "2\n");
//! remote.stop().await?;
//! # Ok(()) }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
mod client;
mod codeboxapi_0_2;
mod connection;
mod native;
mod ndjson;
mod path;
mod remote_box;
mod request;
mod session;

pub use builder::RemoteBoxBuilder;
pub use client::{Client, ClientBuilder};
pub use codebox_http::client::{ClientConfig, RetryPolicy};
pub use codebox_http::wire::{SessionInfo, SessionState};
pub use remote_box::RemoteBox;
pub use request::{SessionFilter, SessionRequest};
pub use session::Protocol;

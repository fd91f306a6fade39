//! End-to-end tests across the codebox crates.

mod api;
mod compat;
mod deps;
mod tls;
// The TLS server codebox-remote's tests use.
#[path = "../../../crates/codebox-remote/tests/it/tls_server.rs"]
mod tls_server;

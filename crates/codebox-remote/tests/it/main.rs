//! Integration tests for RemoteBox: transport edge cases against wiremock and raw sockets,
//! the codebox-api 0.2 mode against the real `codeboxapi` server, and the conformance suite
//! against a real in-process `codebox serve`.

mod codeboxapi_0_2;
mod end_to_end;
mod pause;
mod ports;
mod python_server;
mod rate_limits;
mod sessions;
mod support;
mod templates;
mod tls;
mod tls_server;
mod transport;
mod typed_errors;

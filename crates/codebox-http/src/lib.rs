//! HTTP plumbing shared by the CodeBox client (`codebox-remote`) and server
//! (`codebox-server`), and the wire types of the native API described in
//! `docs/native-api.md`.
//!
//! Features: `client` (the hyper client: pooling, timeouts, retries), `server` (the hyper
//! server plumbing). The wire types and the percent-encoding rule for URL components are
//! always available.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub mod client;
pub mod percent;
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub mod server;
pub mod wire;

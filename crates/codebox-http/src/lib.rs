//! HTTP plumbing shared by the CodeBox client ([`codebox-remote`]) and server
//! ([`codebox-server`]), and the wire types of the native API.
//!
//! [`codebox-remote`]: https://docs.rs/codebox-remote
//! [`codebox-server`]: https://docs.rs/codebox-server

//! End-to-end tests across the codebox crates.

mod api;
mod compat;
mod deps;
mod tls;

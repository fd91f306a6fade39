//! End-to-end tests across the codebox crates.

mod compat;
mod deps;

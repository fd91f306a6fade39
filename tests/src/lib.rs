//! End-to-end tests across the codebox crates live in `tests/it/`.

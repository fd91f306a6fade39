//! The dependency rules of ARCHITECTURE.md, checked against `cargo metadata`.

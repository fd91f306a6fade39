//! Examples for codebox; each lives in `examples/examples/`.

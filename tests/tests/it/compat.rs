//! codebox-api Python clients, unchanged, against `codebox serve`.

//! codebox facade.

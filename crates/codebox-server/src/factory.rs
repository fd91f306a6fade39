//! Where the server gets its boxes: the [`BoxFactory`] of codebox-core (a factory is only
//! "make me a box", so a backend can offer one without depending on the server),
//! re-exported here so that code written against codebox-server keeps compiling.

pub use codebox_core::{BoxFactory, BoxRequest, factory_fn};

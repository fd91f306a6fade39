//! Where the server gets its boxes.

use std::sync::Arc;

use async_trait::async_trait;
use codebox_core::{CodeBox, Result};

/// Makes a box for each new session. The server knows boxes only through the [`CodeBox`]
/// trait; `codebox serve` plugs in a factory of local Jupyter kernels.
///
/// The server calls [`CodeBox::start`] on the box it gets and [`CodeBox::stop`] when the
/// session ends (deleted, idle, or server shutdown).
#[async_trait]
pub trait BoxFactory: Send + Sync + std::fmt::Debug {
    /// A new box running `kernel` (the factory's default when `None`).
    async fn create(&self, kernel: Option<&str>) -> Result<Arc<dyn CodeBox>>;
}

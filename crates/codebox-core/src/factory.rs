//! Where a server gets its boxes: a factory that makes one per session.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use crate::{CodeBox, Result};
use async_trait::async_trait;

/// Makes a box for each new session. A server (codebox-server) knows boxes only through the
/// [`CodeBox`] trait and this factory; codebox-local's `LocalFactory` makes confined local
/// Jupyter kernels, and [`factory_fn`] turns a closure into a factory.
///
/// The server calls [`CodeBox::start`] on the box it gets and [`CodeBox::stop`] when the
/// session ends (deleted, idle, or server shutdown).
#[async_trait]
pub trait BoxFactory: Send + Sync + std::fmt::Debug {
    /// A new box running `kernel` (the factory's default when `None`).
    async fn create(&self, kernel: Option<&str>) -> Result<Arc<dyn CodeBox>>;
}

/// A factory from a closure that gets the requested kernel name and returns a box, for
/// embedding the server (tests, benchmarks) without a factory type of one's own.
///
/// ```
/// # use std::sync::Arc;
/// # fn make_box(kernel: Option<String>) -> codebox_core::Result<Arc<dyn codebox_core::CodeBox>> { unimplemented!() }
/// let factory = codebox_core::factory_fn(|kernel| async move { make_box(kernel) });
/// ```
pub fn factory_fn<F, Fut>(f: F) -> Arc<dyn BoxFactory>
where
    F: Fn(Option<String>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Arc<dyn CodeBox>>> + Send + 'static,
{
    Arc::new(FnFactory(f))
}

struct FnFactory<F>(F);

impl<F> fmt::Debug for FnFactory<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnFactory")
    }
}

#[async_trait]
impl<F, Fut> BoxFactory for FnFactory<F>
where
    F: Fn(Option<String>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Arc<dyn CodeBox>>> + Send + 'static,
{
    async fn create(&self, kernel: Option<&str>) -> Result<Arc<dyn CodeBox>> {
        (self.0)(kernel.map(str::to_owned)).await
    }
}

//! A pool of kernels started ahead of time, so that `start()` takes one that is ready.

use std::sync::{Arc, Mutex, Weak};

use codebox_core::Result;

use crate::kernel::Kernel;
use crate::kernelspec::LaunchSpec;

/// A kernel waiting in the pool, with the working directory it was started in.
#[derive(Debug)]
pub(crate) struct WarmKernel {
    pub(crate) kernel: Arc<Kernel>,
    pub(crate) dir: codebox_sandbox::rmtree::OwnedDir,
}

/// Kernels started ahead of time. Off unless you make one and give it to
/// [`LocalBoxBuilder::with_pool`](crate::LocalBoxBuilder::with_pool).
///
/// When a box with a pool starts, it takes a ready kernel of the same kind (same Python,
/// kernel and environment) when one is waiting, and the pool starts a replacement in the
/// background. The first box of a kind starts its own kernel and sets the pool filling for
/// that kind; [`prewarm`](Self::prewarm) fills it up front. Kernels still waiting when the
/// last handle to the pool is dropped are killed.
///
/// ```no_run
/// # async fn demo() -> codebox_core::Result<()> {
/// use codebox_core::CodeBox;
/// use codebox_local::{KernelPool, LocalBox};
///
/// let pool = KernelPool::new(2);
/// let builder = LocalBox::builder().with_pool(pool.clone());
/// pool.prewarm(&builder).await?;
/// let lb = builder.build()?;
/// lb.start().await?; // takes a ready kernel
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct KernelPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    size: usize,
    ready: Mutex<Vec<(LaunchSpec, WarmKernel)>>,
    filling: Mutex<Vec<LaunchSpec>>,
}

impl std::fmt::Debug for KernelPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelPool").field("size", &self.inner.size).field("ready", &self.ready()).finish()
    }
}

impl KernelPool {
    /// A pool that keeps up to `size` ready kernels of each kind it is asked for.
    pub fn new(size: usize) -> Self {
        Self { inner: Arc::new(PoolInner { size, ready: Mutex::new(Vec::new()), filling: Mutex::new(Vec::new()) }) }
    }

    /// How many kernels the pool keeps ready.
    pub fn size(&self) -> usize {
        self.inner.size
    }

    /// How many kernels are ready now.
    pub fn ready(&self) -> usize {
        self.inner.ready.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Start kernels for boxes built by `builder` until the pool is full, and wait for them.
    pub async fn prewarm(&self, builder: &crate::LocalBoxBuilder) -> Result<()> {
        let spec = builder.config().launch_spec().await?;
        fill(Arc::downgrade(&self.inner), spec).await
    }

    /// Take a live kernel started from `spec`, and refill in the background.
    pub(crate) fn take(&self, spec: &LaunchSpec) -> Option<WarmKernel> {
        let taken = {
            let mut ready = self.inner.ready.lock().unwrap_or_else(|e| e.into_inner());
            ready.retain(|(_, w)| !w.kernel.is_dead());
            ready.iter().position(|(s, _)| s == spec).map(|i| ready.swap_remove(i).1)
        };
        self.refill(spec.clone());
        taken
    }

    /// Fill the pool for `spec` in the background, unless that is already under way.
    pub(crate) fn refill(&self, spec: LaunchSpec) {
        if self.inner.size == 0 {
            return;
        }
        {
            let mut filling = self.inner.filling.lock().unwrap_or_else(|e| e.into_inner());
            if filling.contains(&spec) {
                return;
            }
            filling.push(spec.clone());
        }
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            if let Err(e) = fill(weak.clone(), spec.clone()).await {
                tracing::warn!("filling the kernel pool failed: {e}");
            }
            if let Some(inner) = weak.upgrade() {
                inner.filling.lock().unwrap_or_else(|e| e.into_inner()).retain(|s| s != &spec);
            }
        });
    }
}

async fn fill(weak: Weak<PoolInner>, spec: LaunchSpec) -> Result<()> {
    loop {
        {
            let Some(inner) = weak.upgrade() else { return Ok(()) };
            let ready = inner.ready.lock().unwrap_or_else(|e| e.into_inner());
            if ready.iter().filter(|(s, _)| s == &spec).count() >= inner.size {
                return Ok(());
            }
        }
        let dir = crate::workdir::new_temp_workdir(&spec.scratch_dir)?;
        let confinement = crate::confine::confine(&spec, dir.path()).await?;
        let kernel = Kernel::start(&spec, confinement).await?;
        let Some(inner) = weak.upgrade() else { return Ok(()) };
        inner.ready.lock().unwrap_or_else(|e| e.into_inner()).push((spec.clone(), WarmKernel { kernel, dir }));
    }
}

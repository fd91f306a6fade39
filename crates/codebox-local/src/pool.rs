//! A pool of kernels started ahead of time, so that `start()` takes one that is ready, and
//! the acquire / release / stats API over it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use codebox_core::{CodeBox, CodeBoxError, Result};

use crate::kernel::Kernel;
use crate::kernelspec::LaunchSpec;

/// A kernel waiting in the pool, with the working directory it was started in.
#[derive(Debug)]
pub(crate) struct WarmKernel {
    pub(crate) kernel: Arc<Kernel>,
    pub(crate) dir: codebox_sandbox::rmtree::OwnedDir,
}

/// Kernels started ahead of time. Off unless you make one and give it to
/// [`LocalBoxBuilder::with_pool`](crate::LocalBoxBuilder::with_pool), or take boxes from it
/// with [`acquire`](Self::acquire).
///
/// When a box with a pool starts, it takes a ready kernel of the same kind (same Python,
/// kernel and environment) when one is waiting, and the pool starts a replacement in the
/// background. The first box of a kind starts its own kernel and sets the pool filling for
/// that kind; [`prewarm`](Self::prewarm) fills it up front. Kernels still waiting when the
/// last handle to the pool is dropped are killed.
///
/// [`acquire`](Self::acquire) gives a started box (a ready kernel when there is one) and
/// [`release`](Self::release) gives it back. Releasing **retires** the box: its kernel and
/// every process it started are killed, its sandbox, working directory and private `/tmp`
/// go, and the next box gets a kernel started fresh (the pool starts one in the background).
/// A kernel is never cleaned and handed on: nothing in a Python process can be trusted to
/// be as new once someone's code ran in it (modules patched, threads left, descriptors
/// open), so correctness is chosen over the speed of reuse. [`stats`](Self::stats) counts
/// ready and starting kernels, and the boxes that found a ready kernel (hits) or not
/// (misses).
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
    starting: AtomicUsize,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// How a [`KernelPool`] is doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KernelPoolStats {
    /// Ready kernels it keeps of each kind.
    pub size: usize,
    /// Kernels ready now.
    pub ready: usize,
    /// Kernels being started now.
    pub starting: usize,
    /// Boxes that started with a ready kernel.
    pub hits: u64,
    /// Boxes that had to start their own.
    pub misses: u64,
}

impl std::fmt::Debug for KernelPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelPool").field("size", &self.inner.size).field("ready", &self.ready()).finish()
    }
}

impl KernelPool {
    /// A pool that keeps up to `size` ready kernels of each kind it is asked for.
    pub fn new(size: usize) -> Self {
        Self {
            inner: Arc::new(PoolInner {
                size,
                ready: Mutex::new(Vec::new()),
                filling: Mutex::new(Vec::new()),
                starting: AtomicUsize::new(0),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
            }),
        }
    }

    /// A started box built by `builder`, with a ready kernel of its kind when the pool has
    /// one (a hit), else with one it starts (a miss); either way the pool starts another in
    /// the background. Give it back with [`release`](Self::release).
    pub async fn acquire(&self, builder: &crate::LocalBoxBuilder) -> Result<crate::LocalBox> {
        let lb = builder.clone().with_pool(self.clone()).build()?;
        lb.start().await?;
        Ok(lb)
    }

    /// Give back a box from [`acquire`](Self::acquire): it is retired (stopped: its kernel,
    /// its code contexts' kernels, processes, working directory and sandbox go; a box with
    /// contexts is never handed on either), so nothing of its user reaches the next
    /// one, and the pool is refilled with a fresh kernel of its kind. A box of another pool,
    /// or of none, is refused.
    pub async fn release(&self, lb: crate::LocalBox) -> Result<()> {
        if !lb.pool().is_some_and(|p| Arc::ptr_eq(&p.inner, &self.inner)) {
            return Err(CodeBoxError::invalid("release: the box was not acquired from this pool"));
        }
        let spec = lb.launch_spec().await;
        lb.stop().await?;
        if let Some(spec) = spec {
            self.refill(spec);
        }
        Ok(())
    }

    /// Ready and starting kernels, hits and misses.
    pub fn stats(&self) -> KernelPoolStats {
        KernelPoolStats {
            size: self.inner.size,
            ready: self.ready(),
            starting: self.inner.starting.load(Ordering::Relaxed),
            hits: self.inner.hits.load(Ordering::Relaxed),
            misses: self.inner.misses.load(Ordering::Relaxed),
        }
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
        let counter = if taken.is_some() { &self.inner.hits } else { &self.inner.misses };
        counter.fetch_add(1, Ordering::Relaxed);
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
        let started = {
            let Some(inner) = weak.upgrade() else { return Ok(()) };
            let _starting = Starting::new(inner);
            start_one(&spec).await
        };
        let (kernel, dir) = started?;
        let Some(inner) = weak.upgrade() else { return Ok(()) };
        inner.ready.lock().unwrap_or_else(|e| e.into_inner()).push((spec.clone(), WarmKernel { kernel, dir }));
    }
}

async fn start_one(spec: &LaunchSpec) -> Result<(Arc<Kernel>, codebox_sandbox::rmtree::OwnedDir)> {
    let dir = crate::workdir::new_temp_workdir(&spec.scratch_dir)?;
    let confinement = crate::confine::confine(spec, dir.path()).await?;
    let kernel = Kernel::start(spec, confinement).await?;
    Ok((kernel, dir))
}

/// Counts a kernel as starting while it lives.
struct Starting(Arc<PoolInner>);

impl Starting {
    fn new(inner: Arc<PoolInner>) -> Self {
        inner.starting.fetch_add(1, Ordering::Relaxed);
        Self(inner)
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        self.0.starting.fetch_sub(1, Ordering::Relaxed);
    }
}

//! Putting a box under its sandbox and taking it out again, off the async threads: both may
//! block (allocating a uid, mounting a working-directory image, making a cgroup, waiting for
//! processes to die).

use std::path::Path;
use std::sync::Arc;

use codebox_core::{CodeBoxError, Result};

use crate::kernelspec::LaunchSpec;
use codebox_sandbox::Confinement;

/// Confine a box whose working directory is `dir` under the policy of `spec`.
pub(crate) async fn confine(spec: &LaunchSpec, dir: &Path) -> Result<Arc<Confinement>> {
    let (policy, dir) = (Arc::clone(&spec.sandbox), dir.to_owned());
    tokio::task::spawn_blocking(move || policy.confine(&dir).map(Arc::new))
        .await
        .map_err(|e| CodeBoxError::kernel_start(format!("the sandbox task failed: {e}")))?
}

/// Release a confinement (it may wait for processes to die).
pub(crate) async fn release(confinement: Arc<Confinement>) {
    let _ = tokio::task::spawn_blocking(move || confinement.release()).await;
}

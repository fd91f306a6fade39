//! `install`: pip for the box's Python, under the box's confinement when it has one, then
//! the running kernel told to look for the new packages.

use std::sync::Arc;
use std::time::Duration;

use codebox_core::{CodeBoxError, Result};

use super::supervisor::Inner;
use crate::boxprocess::Placement;

/// How long one `install` may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(900);

/// Install `packages` (names only) for the box's kernels and return pip's output.
pub(super) async fn install(inner: &Arc<Inner>, packages: &[String]) -> Result<String> {
    if packages.is_empty() {
        return Err(CodeBoxError::invalid("no packages to install"));
    }
    // At every level, unsandboxed ones included: pip gets names, never a place to fetch
    // from or a source tree to build.
    for p in packages {
        crate::pip::check_requirement(p)?;
    }
    let h = inner.handle().await?;
    // Checked once started: a kernelspec's language is sure once its kernel runs.
    if !inner.runs_python() {
        return Err(CodeBoxError::unsupported(format!(
            "install: kernel {:?} does not run Python, which pip installs for",
            inner.config.kernel
        )));
    }
    let mut pip = h.process(&inner.config, &h.python.to_string_lossy(), Vec::new(), h.root.path().to_owned());
    pip.timeout = Some(INSTALL_TIMEOUT);
    let out = match h.confinement.packages_dir() {
        // A confined box installs into its own directory, under its own confinement.
        Some(target) => {
            let proxy_run_dir = h.confinement.has_network_allowlist().then(|| h.kernel.runtime_dir());
            crate::pip::run_pip_install(&pip, &target, packages, proxy_run_dir).await?
        }
        // An unconfined box installs into its Python environment, on this machine.
        None => {
            pip.args =
                ["-m", "pip", "install", "--disable-pip-version-check", "--no-input"].map(str::to_owned).to_vec();
            pip.args.extend(packages.iter().cloned());
            pip.placement = Placement::OnHost;
            pip.run().await?
        }
    };
    let text = format!("{}{}", out.stdout, out.stderr);
    if !out.success() {
        return Err(CodeBoxError::install(text));
    }
    // Let the running kernel see the new packages without a restart.
    let _guard = inner.exec_lock.lock().await;
    if let Ok(h) = inner.handle().await {
        crate::exec::run_silent(
            &h.kernel,
            "import importlib as __codebox_il\n__codebox_il.invalidate_caches()\ndel __codebox_il\n",
        )
        .await?;
    }
    Ok(text)
}

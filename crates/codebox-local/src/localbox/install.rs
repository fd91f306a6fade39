//! `install`: pip for the box's Python, under the box's confinement when it has one, then
//! the running kernel told to look for the new packages.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use codebox_core::{CodeBoxError, Result};

use super::supervisor::Inner;

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
        crate::command::check_requirement(p)?;
    }
    let h = inner.handle().await?;
    let timeout = Some(INSTALL_TIMEOUT);
    let out = match h.confinement.packages_dir() {
        // A confined box installs into its own directory, under its own confinement.
        Some(target) => {
            let proxy_run_dir = h.confinement.has_network_allowlist().then(|| h.kernel.runtime_dir());
            crate::command::run_pip_install(
                &h.confinement,
                &h.python,
                &target,
                packages,
                &h.env,
                timeout,
                inner.config.output_limit,
                proxy_run_dir,
            )
            .await?
        }
        None => {
            let mut args: Vec<String> =
                ["-m", "pip", "install", "--disable-pip-version-check", "--no-input"].map(str::to_owned).to_vec();
            args.extend(packages.iter().cloned());
            crate::command::run_command(
                &h.python.to_string_lossy(),
                &args,
                h.root.path(),
                &h.env,
                &BTreeMap::new(),
                timeout,
                inner.config.output_limit,
                None,
            )
            .await?
        }
    };
    let text = format!("{}{}", out.stdout, out.stderr);
    if !out.success() {
        return Err(CodeBoxError::Install { output: text });
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

//! `cargo xtask publish [--dry-run]`: publishes every publishable crate in dependency order,
//! skipping a crate whose version the registry already has, so a failed run can be resumed by
//! running it again. Never run in CI.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::workspace::{Metadata, Package, cargo, display, in_ci, run as run_cmd};

/// Options of `cargo xtask publish`.
#[derive(Debug)]
pub(crate) struct Options {
    /// Package and verify, upload nothing.
    pub(crate) dry_run: bool,
}

/// Whether the registry has a crate version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Registry {
    Has,
    Lacks,
}

/// Publishes, or with `--dry-run` shows the plan and packages what would be published.
pub(crate) fn run(opts: &Options) -> Result<()> {
    if !opts.dry_run && in_ci(std::env::var("CI").ok().as_deref()) {
        bail!("`cargo xtask publish` does not run in CI (CI is set); publish from a maintainer's machine");
    }
    let meta = Metadata::load()?;
    let order = meta.publish_order()?;
    let mut todo: Vec<&Package> = Vec::new();
    eprintln!("==> publish order:");
    for pkg in &order {
        let state = registry_has(&pkg.name, &pkg.version)?;
        let note = match state {
            Registry::Has => "already on the registry, skipped",
            Registry::Lacks => "to publish",
        };
        eprintln!("    {} {}: {note}", pkg.name, pkg.version);
        if state == Registry::Lacks {
            todo.push(pkg);
        }
    }
    if todo.is_empty() {
        eprintln!("==> nothing to publish");
        return Ok(());
    }
    if opts.dry_run {
        // One invocation, so crates that depend on not-yet-published siblings still resolve.
        let mut cmd = cargo();
        cmd.args(["publish", "--dry-run", "--locked"]);
        for pkg in &todo {
            cmd.args(["--package", &pkg.name]);
        }
        return run_cmd(&mut cmd);
    }
    for (i, pkg) in todo.iter().enumerate() {
        eprintln!("\n==> [{}/{}] publishing {} {}", i + 1, todo.len(), pkg.name, pkg.version);
        // cargo waits until the registry index serves the new version before returning, so
        // the next crate can depend on it.
        run_cmd(cargo().args(["publish", "--locked", "--package", &pkg.name])).with_context(|| {
            format!("publishing {} failed; fix the cause and run `cargo xtask publish` again to resume", pkg.name)
        })?;
    }
    eprintln!("\n==> published {} crate(s)", todo.len());
    Ok(())
}

/// Asks the registry (through `cargo info NAME@VERSION`) whether it has this version.
fn registry_has(name: &str, version: &str) -> Result<Registry> {
    let mut cmd = info_command(name, version);
    let out = cmd.output().with_context(|| format!("could not run `{}`", display(&cmd)))?;
    classify(out.status.success(), &String::from_utf8_lossy(&out.stderr), name, version)
}

fn info_command(name: &str, version: &str) -> Command {
    let mut cmd = cargo();
    // Outside the workspace, or cargo would describe the local package instead of the registry's.
    cmd.current_dir(std::env::temp_dir())
        .args(["info", "--quiet", "--registry", "crates-io"])
        .arg(format!("{name}@{version}"));
    cmd
}

fn classify(success: bool, stderr: &str, name: &str, version: &str) -> Result<Registry> {
    if success {
        Ok(Registry::Has)
    } else if stderr.contains("could not find") {
        Ok(Registry::Lacks)
    } else {
        bail!("could not ask the registry about {name}@{version}: {}", stderr.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_answers_are_classified() {
        assert_eq!(classify(true, "", "a", "1.0.0").unwrap(), Registry::Has);
        let missing = "error: could not find `a@9.0.0` in registry `https://github.com/rust-lang/crates.io-index`";
        assert_eq!(classify(false, missing, "a", "9.0.0").unwrap(), Registry::Lacks);
        // A network failure must stop the run, not be taken for "not published".
        let err =
            classify(false, "error: failed to download from `https://index.crates.io/`", "a", "1.0.0").unwrap_err();
        assert!(err.to_string().contains("could not ask the registry about a@1.0.0"), "{err}");
    }

    #[test]
    fn info_asks_crates_io_from_outside_the_workspace() {
        let cmd = info_command("codebox-core", "0.1.0");
        assert_eq!(display(&cmd), "cargo info --quiet --registry crates-io codebox-core@0.1.0");
        assert_eq!(cmd.get_current_dir(), Some(std::env::temp_dir().as_path()));
    }
}

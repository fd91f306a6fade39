//! `cargo xtask dist-assets`: the shell completions (`clap_complete`) and man pages
//! (`clap_mangen`) of the `codebox` command, for packagers. The binary writes them itself
//! (a hidden `codebox dist-assets DIR`), from the same definition that parses its command
//! line, so they never drift from it; xtask depends on no workspace crate, so it runs it.

use std::path::PathBuf;

use anyhow::Result;

use crate::workspace::{cargo, root, run};

/// Where the assets go by default, under the workspace root.
const DEFAULT_OUT: &str = "target/dist-assets";

/// Options of `cargo xtask dist-assets`.
#[derive(Debug)]
pub(crate) struct Options {
    pub(crate) out: Option<PathBuf>,
}

pub(crate) fn run_dist_assets(options: &Options) -> Result<()> {
    let out = options.out.clone().unwrap_or_else(|| root().join(DEFAULT_OUT));
    run(cargo()
        .args(["run", "--quiet", "--locked", "--package", "codebox-cli", "--bin", "codebox", "--", "dist-assets"])
        .arg(&out))?;
    println!("completions in {}, man pages in {}", out.join("completions").display(), out.join("man").display());
    Ok(())
}

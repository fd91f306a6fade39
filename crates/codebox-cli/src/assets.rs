//! `codebox dist-assets DIR` (hidden; `cargo xtask dist-assets` runs it): the shell
//! completions and man pages a package ships, made from the command's own definition so
//! that they never drift from it.

// A failure is reported on stderr, as every command's is.
#![allow(clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

/// Arguments of `codebox dist-assets`.
#[derive(Debug, clap::Args)]
pub(crate) struct AssetsArgs {
    /// Where to write `completions/` and `man/`.
    out: PathBuf,
}

pub(crate) fn main(args: AssetsArgs) -> ExitCode {
    match write_assets(&args.out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("codebox: {e:#}");
            ExitCode::from(crate::api::EXIT_FAILED)
        }
    }
}

fn write_assets(out: &Path) -> anyhow::Result<()> {
    let completions = out.join("completions");
    std::fs::create_dir_all(&completions).with_context(|| format!("creating {}", completions.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish, Shell::Elvish, Shell::PowerShell] {
        let mut cmd = crate::Cli::command();
        clap_complete::generate_to(shell, &mut cmd, "codebox", &completions)
            .with_context(|| format!("writing the {shell} completions"))?;
    }
    let man = out.join("man");
    std::fs::create_dir_all(&man).with_context(|| format!("creating {}", man.display()))?;
    // One page for `codebox` and one per subcommand (`codebox-sessions.1`, ...).
    clap_mangen::generate_to(crate::Cli::command(), &man).context("writing the man pages")?;
    Ok(())
}

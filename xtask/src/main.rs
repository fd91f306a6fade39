//! Project automation for the codebox workspace, run as `cargo xtask <command>`:
//!
//! - `ci`: the system packages the tests need (installed when missing, as root or with
//!   passwordless sudo), formatting, clippy, tests, a leak check after them, docs and the facade's feature
//!   matrix, failing fast;
//! - `bench`: builds and runs the benchmark binaries of `codebox-bench`, one JSON report;
//! - `release VERSION`: bumps every crate and internal pin together, moves the changelog's
//!   Unreleased section under the version, checks that every publishable crate packages;
//! - `publish`: publishes the crates in dependency order, resuming after a failure;
//! - `dist-assets`: the `codebox` command's shell completions and man pages;
//! - `deploy`: the nginx configuration and Kubernetes manifests under `deploy/` are
//!   consistent, accepted by nginx, render with kustomize and validate against the schemas.
//!
//! xtask depends on no workspace crate, so it works while the workspace does not build.

// A command-line tool: progress and results go to the terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod bench;
mod changelog;
mod ci;
mod date;
mod deploy;
mod dist_assets;
mod leaks;
mod prereqs;
mod publish;
mod release;
mod tidy;
mod workspace;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Project automation for the codebox workspace.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Everything CI checks: fmt, tidy, clippy, test, a leak check, doc, and every feature
    /// combination of the facade.
    Ci {
        /// Skip a step (setup, fmt, tidy, deploy, clippy, test, leaks, doc, features); repeatable.
        #[arg(long, value_name = "STEP")]
        skip: Vec<String>,
        /// Same as `--skip test --skip leaks`.
        #[arg(long)]
        skip_tests: bool,
    },
    /// Check deploy/: the nginx ConfigMap is generated from deploy/nginx/, nginx accepts the
    /// configuration, and the Kubernetes manifests render and validate offline.
    Deploy {
        /// Regenerate deploy/kubernetes/base/nginx-config.yaml instead of checking it.
        #[arg(long)]
        write: bool,
    },
    /// The house rules rustc and clippy do not check: module comments, reasons for `allow`,
    /// typed errors in libraries, file length, unused dependencies.
    Tidy,
    /// Build codebox-bench in release, run its binaries, write one JSON report.
    Bench {
        /// Run only this benchmark binary; repeatable.
        #[arg(long, value_name = "NAME")]
        only: Vec<String>,
        /// Where to write the report [default: target/bench/report.json].
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Stop a benchmark binary that runs longer than this many seconds.
        #[arg(long, value_name = "SECS", default_value_t = 1800)]
        timeout: u64,
        /// Arguments passed to every benchmark binary.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Prepare release VERSION: bump versions and pins, move the changelog, check packaging.
    Release {
        /// The new version, e.g. 0.2.0.
        version: String,
        /// Also commit the result and create the tag vVERSION.
        #[arg(long)]
        commit: bool,
        /// Package without building each crate.
        #[arg(long)]
        no_verify: bool,
        /// The release date for the changelog [default: today, UTC].
        #[arg(long, value_name = "YYYY-MM-DD")]
        date: Option<String>,
    },
    /// Publish every publishable crate in dependency order, skipping versions already published.
    Publish {
        /// Show the plan and package the crates, upload nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Write the `codebox` command's shell completions and man pages (for packagers).
    DistAssets {
        /// The directory to write `completions/` and `man/` in [default: target/dist-assets].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Ci { mut skip, skip_tests } => {
            if skip_tests {
                skip.extend(["test".into(), "leaks".into()]);
            }
            ci::run(&ci::Options { skip })
        }
        Cmd::Tidy => tidy::run(),
        Cmd::Deploy { write } => deploy::run(&deploy::Options { write }),
        Cmd::Bench { only, out, timeout, args } => {
            bench::run(&bench::Options { only, out, timeout: Duration::from_secs(timeout), args })
        }
        Cmd::Release { version, commit, no_verify, date } => {
            release::run(&release::Options { version, commit, no_verify, date })
        }
        Cmd::Publish { dry_run } => publish::run(&publish::Options { dry_run }),
        Cmd::DistAssets { out } => dist_assets::run_dist_assets(&dist_assets::Options { out }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nerror: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bench_passes_trailing_arguments_through() {
        let cli = Cli::try_parse_from(["xtask", "bench", "--only", "local", "--", "--quick"]).unwrap();
        let Cmd::Bench { only, args, .. } = cli.command else { panic!("not bench: {cli:?}") };
        assert_eq!((only, args), (vec!["local".to_owned()], vec!["--quick".to_owned()]));
    }
}

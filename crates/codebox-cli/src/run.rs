//! `codebox run`.

use std::process::ExitCode;

/// Arguments of `codebox run`.
#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {}

pub(crate) fn main(_args: RunArgs) -> ExitCode {
    ExitCode::from(2)
}

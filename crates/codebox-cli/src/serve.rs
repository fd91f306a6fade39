//! `codebox serve`.

use std::process::ExitCode;

/// Arguments of `codebox serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {}

pub(crate) fn main(_args: ServeArgs) -> ExitCode {
    ExitCode::from(2)
}

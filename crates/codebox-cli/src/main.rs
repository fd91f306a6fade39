//! The `codebox` command: run code in a box (`codebox run`) or host a CodeBox server
//! (`codebox serve`).

use clap::{Parser, Subcommand};

mod progress;
mod run;
mod serve;

/// Run code in an isolated box, locally or on a CodeBox server.
#[derive(Debug, Parser)]
#[command(name = "codebox", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run code in a box chosen from the environment (no CODEBOX_API_KEY: a local kernel).
    Run(run::RunArgs),
    /// Host a CodeBox server.
    Serve(serve::ServeArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run::main(args),
        Command::Serve(args) => serve::main(args),
    }
}

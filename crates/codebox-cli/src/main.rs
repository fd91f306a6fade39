//! The `codebox` command: run code in a box (`codebox run`), host a CodeBox server
//! (`codebox serve`), or serve a box's tools to an MCP client over stdio (`codebox mcp`).

use clap::{Parser, Subcommand};

mod mcp;
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
    /// Serve a box's tools over MCP on stdin/stdout (the box chosen as for `run`).
    Mcp(mcp::McpArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run::main(args),
        Command::Serve(args) => serve::main(args),
        Command::Mcp(args) => mcp::main(args),
    }
}

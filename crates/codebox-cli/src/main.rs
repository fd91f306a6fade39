//! The `codebox` command: run code in a box (`codebox run`), host a CodeBox server
//! (`codebox serve`), or serve a box's tools to an MCP client over stdio (`codebox mcp`).

use clap::{Parser, Subcommand};

mod api;
mod assets;
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
    /// Create, list, describe and end sessions on a server.
    Sessions(api::sessions::SessionsArgs),
    /// Run code in a session, its output streamed (exit 1 when the code raised).
    Exec(api::exec::ExecArgs),
    /// Run a program in a session: codebox sh SESSION -- CMD ARGS…
    Sh(api::exec::ShArgs),
    /// A session's background processes: ls, start, logs, input, kill.
    Processes(api::processes::ProcessesArgs),
    /// A session's files: ls, put, get, rm, mkdir.
    Files(api::files::FilesArgs),
    /// Install packages into a session.
    Install(api::info::InstallArgs),
    /// The templates the server makes sessions from.
    Templates(api::info::TemplatesArgs),
    /// What a session uses now: CPU, memory, disk.
    Metrics(api::info::MetricsArgs),
    /// A session's newest executions.
    History(api::info::HistoryArgs),
    /// A session's code contexts.
    Contexts(api::info::ContextsArgs),
    /// Write shell completions and man pages into a directory (`cargo xtask dist-assets`).
    #[command(hide = true)]
    DistAssets(assets::AssetsArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run::main(args),
        Command::Serve(args) => serve::main(args),
        Command::Mcp(args) => mcp::main(args),
        Command::Sessions(args) => api::finish(args.conn.json, api::sessions::main(args)),
        Command::Exec(args) => api::finish(args.conn.json, api::exec::exec(args)),
        Command::Sh(args) => api::finish(args.conn.json, api::exec::sh(args)),
        Command::Processes(args) => api::finish(args.conn.json, api::processes::main(args)),
        Command::Files(args) => api::finish(args.conn.json, api::files::main(args)),
        Command::Install(args) => api::finish(args.conn.json, api::info::install(args)),
        Command::Templates(args) => api::finish(args.conn.json, api::info::templates(args)),
        Command::Metrics(args) => api::finish(args.conn.json, api::info::metrics(args)),
        Command::History(args) => api::finish(args.conn.json, api::info::history(args)),
        Command::Contexts(args) => api::finish(args.conn.json, api::info::contexts(args)),
        Command::DistAssets(args) => assets::main(args),
    }
}

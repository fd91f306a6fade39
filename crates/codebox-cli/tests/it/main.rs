//! The `codebox` binary, run as a user would: real processes, real kernels.

mod cli;
mod e2b;
mod hostile;
mod mcp;
mod pause;
mod run;
mod run_env;
mod scaling;
mod serve;
mod serve_options;
mod venv;

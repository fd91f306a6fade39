//! The `codebox` binary, run as a user would: real processes, real kernels.

mod run;
mod serve;

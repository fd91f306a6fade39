//! The `codebox` binary, run as a user would: real processes, real kernels.

mod hostile;
mod run;
mod serve;

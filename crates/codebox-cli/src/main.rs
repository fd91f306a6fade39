//! The `codebox` command.
fn main() {}

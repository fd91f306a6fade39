//! Integration tests for LocalBox against real ipykernel processes.
//!
//! Python comes from `CODEBOX_PYTHON` when set; otherwise the tests provision the managed
//! environment through the same code users run, so they work on a fresh machine.

mod adversarial;
mod artifacts;
mod basics;
mod conformance;
mod contexts;
mod deno;
mod factory;
mod faults;
mod files;
mod history;
mod lean;
mod metrics;
mod network;
mod orphans;
mod pause;
mod pool;
mod ports;
mod processes;
mod tasks;
mod templates;

use codebox_core::CodeBox;
use codebox_local::{LocalBox, LocalBoxBuilder};

/// The builder every test starts from.
// Provisioning can take minutes on a fresh machine: show why the first test waits.
#[allow(clippy::print_stderr)]
pub(crate) fn builder() -> LocalBoxBuilder {
    LocalBox::builder().with_progress(|line| eprintln!("[provision] {line}"))
}

/// A started box with the default settings.
pub(crate) async fn started() -> LocalBox {
    let lb = builder().build().expect("builder");
    lb.start().await.expect("start");
    lb
}

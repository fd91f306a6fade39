//! Stream an execution's events as they happen, and stop a long one with a timeout.
//!
//! `cargo run -p codebox-examples --example streaming`
#![allow(clippy::print_stdout, reason = "an example shows its results on stdout")]

use std::time::Duration;

use codebox::{CodeBox, ExecEvent, LocalBox, RunOptions};
use futures::StreamExt;

#[tokio::main]
async fn main() -> codebox::Result<()> {
    let lb = LocalBox::new()?;
    lb.start().await?;
    let code = "import time\nfor i in range(5):\n    print(f'step {i}', flush=True)\n    time.sleep(0.3)\n'finished'";
    let mut events = lb.run_stream(code, RunOptions::new()).await?;
    while let Some(event) = events.next().await {
        match event? {
            ExecEvent::Stdout { text } => print!("[stdout] {text}"),
            ExecEvent::Result { data, .. } => println!("[result] {}", data.plain().unwrap_or_default()),
            ExecEvent::End { duration_ms, outcome, .. } => println!("[end] {outcome:?} after {duration_ms:.0} ms"),
            other => println!("[event] {other:?}"),
        }
    }
    // A timeout interrupts the code; the box keeps its state.
    let ex = lb.run("while True: pass", RunOptions::new().with_timeout(Duration::from_millis(500))).await?;
    println!("endless loop: {:?}", ex.outcome);
    lb.stop().await
}

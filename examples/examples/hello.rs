//! Run Python in a local box: state persists between executions, values come back.
//!
//! `cargo run -p codebox-examples --example hello`
#![allow(clippy::print_stdout, reason = "an example shows its results on stdout")]

use codebox::{CodeBox, CodeBoxExt, LocalBox};

#[tokio::main]
async fn main() -> codebox::Result<()> {
    let lb = LocalBox::new()?;
    // The first start may create the managed Python environment (ipykernel, matplotlib,
    // numpy, pandas); later starts take a fraction of a second.
    lb.start().await?;
    lb.exec("greeting = 'hello from a Jupyter kernel'").await?;
    let ex = lb.exec("print(greeting)\nsum(range(10))").await?;
    print!("{}", ex.stdout());
    println!("value: {}", ex.result().and_then(|r| r.plain()).unwrap_or_default());
    let ex = lb.exec("1 / 0").await?;
    if let Some(err) = ex.error() {
        println!("raised {err}");
    }
    lb.stop().await
}

//! Move files in and out of a box; code in the box sees them in its working directory.
//!
//! `cargo run -p codebox-examples --example files`
#![allow(clippy::print_stdout, reason = "an example shows its results on stdout")]

use codebox::{CodeBox, CodeBoxExt, LocalBox};

#[tokio::main]
async fn main() -> codebox::Result<()> {
    let lb = LocalBox::new()?;
    lb.start().await?;
    lb.upload_bytes("data/numbers.csv", "n\n1\n2\n3\n").await?;
    let ex = lb
        .exec("import csv\nrows = list(csv.DictReader(open('data/numbers.csv')))\nopen('data/total.txt', 'w').write(str(sum(int(r['n']) for r in rows)))")
        .await?;
    assert!(ex.is_ok(), "{ex:?}");
    for file in lb.list_files("data", true).await? {
        println!("{:<20} {:>6} bytes", file.path, file.size);
    }
    let total = lb.download_bytes("data/total.txt").await?;
    println!("total computed in the box: {}", String::from_utf8_lossy(&total));
    // Paths are confined to the working directory.
    let refused = lb.upload_bytes("../outside.txt", "no").await.unwrap_err();
    println!("refused: {refused}");
    lb.stop().await
}

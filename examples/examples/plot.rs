//! Plot with matplotlib in a box and save the figure as a PNG on this machine.
//!
//! `cargo run -p codebox-examples --example plot` writes `plot.png` in the current directory.
#![allow(clippy::print_stdout, reason = "an example shows its results on stdout")]

use codebox::{CodeBox, CodeBoxExt, LocalBox};

#[tokio::main]
async fn main() -> codebox::Result<()> {
    let lb = LocalBox::new()?;
    lb.start().await?;
    let code = "import numpy as np, matplotlib.pyplot as plt\n\
                x = np.linspace(0, 2 * np.pi, 200)\n\
                plt.plot(x, np.sin(x), label='sin')\nplt.plot(x, np.cos(x), label='cos')\n\
                plt.legend(); plt.title('made in a codebox')\nplt.show()";
    let ex = lb.exec(code).await?;
    if let Some(err) = ex.error() {
        println!("the plot failed: {err}\n{}", err.traceback.join("\n"));
        return lb.stop().await;
    }
    for (i, image) in ex.images().iter().enumerate() {
        let name = if i == 0 { "plot.png".to_owned() } else { format!("plot-{i}.{}", image.extension()) };
        std::fs::write(&name, &image.bytes).map_err(|e| codebox::CodeBoxError::io(format!("writing {name}"), e))?;
        println!("saved {name} ({} bytes)", image.bytes.len());
    }
    lb.stop().await
}

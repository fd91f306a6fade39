//! Start a CodeBox server in this process, then use it through RemoteBox.
//!
//! Run with `cargo run -p codebox-examples --example remote`. The server hands every session
//! its own LocalBox (a Jupyter kernel on this machine); RemoteBox reaches it over HTTP on
//! 127.0.0.1 exactly as it would reach a server on another machine.

use std::sync::Arc;

use codebox::local::LocalFactory;
use codebox::server::{Server, ServerConfig};
use codebox::{CodeBox, CodeBoxExt, CodeBoxSettings, LocalBox, RemoteBox, Result, RunOptions};
use futures::StreamExt;

#[tokio::main]
#[allow(clippy::print_stdout)]
async fn main() -> Result<()> {
    // The server: a random port on loopback, one API key.
    let config = ServerConfig::new().with_addr("127.0.0.1:0".parse().expect("address")).with_api_key("example-key");
    // Every session gets its own LocalBox, sandboxed as a LocalBox is by default.
    let factory = LocalFactory::builder(LocalBox::builder()).build()?;
    let server = Server::bind(config, Arc::new(factory)).await?;
    let base_url = format!("http://{}", server.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run_until(async {
        let _ = stopped.await;
    }));

    // The client: the same settings `CODEBOX_API_KEY` and `CODEBOX_BASE_URL` would give.
    let settings = CodeBoxSettings::new().with_api_key("example-key").with_base_url(&base_url);
    let remote = RemoteBox::from_settings(&settings)?;
    remote.start().await?;
    println!("session {} on {base_url}", remote.id());

    let ex = remote.exec("import platform\nprint('python', platform.python_version())\n6 * 7").await?;
    println!("stdout: {}value: {}", ex.stdout(), ex.result().and_then(|r| r.plain()).unwrap_or_default());

    // Events arrive as they happen.
    let mut stream = remote
        .run_stream(
            "import time\nfor i in range(3):\n    print('tick', i, flush=True)\n    time.sleep(0.2)",
            RunOptions::new(),
        )
        .await?;
    while let Some(event) = stream.next().await {
        println!("event: {:?}", event?);
    }

    // Files move as streams; code in the box sees them.
    remote.upload_bytes("data/hello.txt", "hello from the client").await?;
    let ex = remote.exec("print(open('data/hello.txt').read().upper())").await?;
    print!("{}", ex.stdout());
    for file in remote.list_files("data", false).await? {
        println!("file: {} ({} bytes)", file.path, file.size);
    }

    // Exceptions are data, not errors.
    let ex = remote.exec("1 / 0").await?;
    if let Some(err) = ex.error() {
        println!("raised: {err}");
    }

    remote.stop().await?;
    let _ = stop.send(());
    let _ = serving.await;
    Ok(())
}

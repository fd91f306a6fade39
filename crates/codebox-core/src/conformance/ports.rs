//! The conformance check of a box's ports: a program in the box serves a file over HTTP on
//! its loopback, and [`CodeBox::connect_port`] fetches it; bad ports are refused.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::io::{AsyncReadExt, AsyncWriteExt};

use super::{CheckOutcome, Checked, Dialect, ensure, exec, expect_kind};
use crate::{CodeBox, CodeBoxExt, ErrorKind, check_port};

/// How long the box's server may take to start listening.
const LISTEN_WAIT: Duration = Duration::from_secs(30);

/// The file the box's server serves, under the working directory.
const SERVED: &str = "conformance/port.bin";

/// A box with the `ports` capability serves a file it was given on a free port, and
/// `connect_port` reads it byte for byte; a port nobody listens on is `Connection` (502 from
/// a server); ports outside 1024–65535 are `InvalidInput`. A box without the capability
/// refuses loudly.
pub(super) async fn ports_reach_the_box(b: &dyn CodeBox, d: &Dialect) -> CheckOutcome {
    for bad in [0u16, 80, 1023] {
        expect_kind(b.connect_port(bad).await.map(|_| ()), ErrorKind::InvalidInput, &format!("connect_port({bad})"))?;
    }
    expect_kind(check_port(70_000).map(|_| ()), ErrorKind::InvalidInput, "check_port(70000)")?;
    if !b.capabilities().ports {
        expect_kind(b.connect_port(8000).await.map(|_| ()), ErrorKind::Unsupported, "connect_port")?;
        return Ok("ports unsupported".into());
    }
    // Bytes of every value, so that a server or proxy that mangled text would show.
    let content: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 256) as u8).collect();
    b.upload_bytes(SERVED, content.clone()).await.map_err(|e| format!("upload {SERVED}: {e}"))?;

    // A port from the clock, so that boxes checked side by side on one network pick apart;
    // a port that is taken (the box may share this machine's network) moves on to the next.
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    let mut tried = Vec::new();
    for attempt in 0..3u32 {
        let port = 20_000 + u16::try_from((seed / 7 + attempt * 7919) % 40_000).unwrap_or(0);
        tried.push(port);
        exec(b, &d.serve_files.replace("{port}", &port.to_string())).await?;
        let Some(body) = fetch_when_listening(b, port).await? else { continue };
        ensure(body == content, || {
            format!("port {port} served {} bytes, not the {} uploaded", body.len(), content.len())
        })?;
        exec(b, &d.stop_serving).await?;
        let gone = b.connect_port(port).await.map(|_| ());
        expect_kind(gone, ErrorKind::Connection, &format!("connect_port({port}) after its server stopped"))?;
        return Ok(format!("served on port {port}"));
    }
    Err(format!("no server in the box answered on ports {tried:?} within {LISTEN_WAIT:?} each").into())
}

/// `GET /conformance/port.bin` on `port` once something listens there; `None` when nothing
/// does within [`LISTEN_WAIT`].
async fn fetch_when_listening(b: &dyn CodeBox, port: u16) -> Checked<Option<Vec<u8>>> {
    let deadline = Instant::now() + LISTEN_WAIT;
    let mut conn = loop {
        match b.connect_port(port).await {
            Ok(conn) => break conn,
            Err(e) if e.kind() == ErrorKind::Connection && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) if e.kind() == ErrorKind::Connection => return Ok(None),
            Err(e) => return Err(format!("connect_port({port}): {e} ({})", e.kind()).into()),
        }
    };
    let request = format!("GET /{SERVED} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.map_err(|e| format!("writing to port {port}: {e}"))?;
    conn.flush().await.map_err(|e| format!("writing to port {port}: {e}"))?;
    let mut response = Vec::new();
    conn.read_to_end(&mut response).await.map_err(|e| format!("reading from port {port}: {e}"))?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("port {port} answered no HTTP head: {:?}", String::from_utf8_lossy(&response)))?;
    let head = String::from_utf8_lossy(&response[..split]);
    ensure(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), || {
        format!("port {port} answered {:?}", head.lines().next().unwrap_or_default())
    })?;
    Ok(Some(response[split + 4..].to_vec()))
}

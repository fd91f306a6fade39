//! `connect_port` at each isolation level: a bubblewrap box's port is reached inside its own
//! network namespace (and host loopback never is), a box on the host network reaches only
//! listeners of its own uid, and a Landlock box without network has no ports, saying why.

use std::net::TcpListener;
use std::time::Duration;

use codebox_core::{CodeBox, CodeBoxExt, ErrorKind, PortStream};
use codebox_local::{Isolation, LocalBox, SandboxPolicy, UidAllocator};
use futures::io::{AsyncReadExt, AsyncWriteExt};

use crate::builder;

/// Session uids of these tests.
fn uids() -> UidAllocator {
    static ALLOC: std::sync::OnceLock<UidAllocator> = std::sync::OnceLock::new();
    ALLOC.get_or_init(|| UidAllocator::new(343_000..343_020).unwrap()).clone()
}

/// A port nobody on this machine listens on right now (the OS's pick, released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Start `python -m http.server` on `port` in the box, serving its working directory.
async fn serve(lb: &LocalBox, port: u16) {
    let code = format!(
        "import subprocess, sys\nsrv = subprocess.Popen([sys.executable, '-m', 'http.server', '{port}', '--bind', \
         '127.0.0.1'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)"
    );
    let ex = lb.exec(&code).await.unwrap();
    assert!(ex.error().is_none(), "{ex:?}");
}

/// Connect to `port` once the box's server listens there (it starts in the background).
async fn connect_when_listening(lb: &LocalBox, port: u16) -> PortStream {
    for _ in 0..300 {
        match lb.connect_port(port).await {
            Ok(conn) => return conn,
            Err(e) if e.kind() == ErrorKind::Connection => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("connect_port({port}): {e}"),
        }
    }
    panic!("nothing listened on port {port} of the box within 30 s");
}

/// `GET /{path}` over `conn`: the status line and the body.
async fn get(mut conn: PortStream, path: &str) -> (String, Vec<u8>) {
    conn.write_all(format!("GET /{path} HTTP/1.0\r\nHost: box\r\n\r\n").as_bytes()).await.unwrap();
    let mut response = Vec::new();
    conn.read_to_end(&mut response).await.unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP head");
    let status = String::from_utf8_lossy(&response[..split]).lines().next().unwrap_or_default().to_owned();
    (status, response[split + 4..].to_vec())
}

#[tokio::test]
async fn a_bubblewrap_box_serves_from_its_own_namespace_and_never_reaches_host_loopback() {
    let lb = builder()
        .with_sandbox(SandboxPolicy::default().with_isolation(Isolation::Bubblewrap).with_require_isolation(true))
        .build()
        .unwrap();
    lb.start().await.unwrap();
    assert!(lb.capabilities().ports);
    lb.upload_bytes("page.html", "<h1>from the box</h1>").await.unwrap();
    // A host service on a port: the box's loopback is its own, so the port is not found there.
    let host = TcpListener::bind("127.0.0.1:0").unwrap();
    let host_port = host.local_addr().unwrap().port();
    let err = lb.connect_port(host_port).await.err().expect("host loopback must not be reached");
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(err.to_string().contains("nothing in the box listens on port"), "{err}");

    // The same port number inside the box is the box's.
    serve(&lb, host_port).await;
    let (status, body) = get(connect_when_listening(&lb, host_port).await, "page.html").await;
    assert!(status.contains("200"), "{status}");
    assert_eq!(body, b"<h1>from the box</h1>");

    let err = lb.connect_port(80).await.err().unwrap();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("1024-65535"), "{err}");
    let err = lb.port_url(8000).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    lb.stop().await.unwrap();
    drop(host);
}

#[tokio::test]
async fn a_box_on_the_host_network_reaches_only_listeners_of_its_own_uid() {
    if !codebox_core::conformance::requires("root (session uids)", codebox_local::running_as_root()) {
        return;
    }
    let lb = builder()
        .with_sandbox(SandboxPolicy::default().with_isolation(Isolation::None).with_session_uids(Some(uids())))
        .build()
        .unwrap();
    lb.start().await.unwrap();
    assert!(lb.capabilities().ports);
    lb.upload_bytes("page.txt", "on the host network").await.unwrap();
    let port = free_port();
    serve(&lb, port).await;
    let (status, body) = get(connect_when_listening(&lb, port).await, "page.txt").await;
    assert!(status.contains("200"), "{status}");
    assert_eq!(body, b"on the host network");

    // A service of this process's uid (root) on host loopback is not the box's.
    let host = TcpListener::bind("127.0.0.1:0").unwrap();
    let host_port = host.local_addr().unwrap().port();
    let err = lb.connect_port(host_port).await.err().expect("a root listener must not be reached");
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(err.to_string().contains("only a listener owned by the box's uid"), "{err}");
    lb.stop().await.unwrap();
    drop(host);
}

#[tokio::test]
async fn a_landlock_box_without_network_has_no_ports_and_says_why() {
    let lb = builder()
        .with_sandbox(SandboxPolicy::default().with_isolation(Isolation::Landlock).with_require_isolation(true))
        .build()
        .unwrap();
    lb.start().await.unwrap();
    assert!(!lb.capabilities().ports);
    let err = lb.connect_port(8000).await.err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.to_string().contains("refuses IP sockets"), "{err}");
    lb.stop().await.unwrap();
}

// A program started from a code context's kernel listens in that kernel's namespace: it is
// reached too, after the box's own kernel's, and stops being reachable with its context.
#[tokio::test]
async fn a_port_opened_from_a_code_context_is_reached() {
    let lb = builder()
        .with_sandbox(SandboxPolicy::default().with_isolation(Isolation::Bubblewrap).with_require_isolation(true))
        .build()
        .unwrap();
    lb.start().await.unwrap();
    lb.upload_bytes("page.html", "<h1>from a context</h1>").await.unwrap();
    let context = lb.create_context(None, None).await.unwrap();
    let port = free_port();
    let code = format!(
        "import subprocess, sys\nsrv = subprocess.Popen([sys.executable, '-m', 'http.server', '{port}', '--bind', \
         '127.0.0.1'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)"
    );
    let ex = lb.run(&code, codebox_core::RunOptions::new().with_context(&context.id)).await.unwrap();
    assert!(ex.error().is_none(), "{ex:?}");
    let (status, body) = get(connect_when_listening(&lb, port).await, "page.html").await;
    assert!(status.contains("200"), "{status}");
    assert_eq!(body, b"<h1>from a context</h1>");

    lb.delete_context(&context.id).await.unwrap();
    let err = lb.connect_port(port).await.err().expect("the context's server ended with it");
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    lb.stop().await.unwrap();
}

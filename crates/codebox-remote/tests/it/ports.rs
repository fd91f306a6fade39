//! A RemoteBox's ports through a real in-process server backed by LocalBox: `port_url` is the
//! server's route (fetched here with a plain HTTP client and the key), `connect_port` a raw
//! TCP connection upgraded on that route; a quiet port is `Connection` (the server's 502);
//! over HTTP/2 prior knowledge and in the codebox-api modes ports are refused loudly.

use std::sync::Arc;
use std::time::Duration;

use codebox_core::{CodeBox, CodeBoxExt, ErrorKind};
use codebox_http::client::{ClientConfig, HttpClient, Request};
use codebox_local::{LocalBox, LocalFactory};
use codebox_remote::{Protocol, RemoteBox};
use codebox_server::{Server, ServerConfig};
use futures::io::{AsyncReadExt, AsyncWriteExt};
use http::Method;
use tokio::sync::oneshot;

const KEY: &str = "sk-ports";

/// A running server's base URL; the server stops when the sender drops.
async fn serve() -> (String, oneshot::Sender<()>) {
    let config = ServerConfig::new().with_addr("127.0.0.1:0".parse().unwrap()).with_api_key(KEY);
    let factory = LocalFactory::builder(LocalBox::builder()).build().unwrap();
    let server = Server::bind(config, Arc::new(factory)).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run_until(async {
        let _ = stopped.await;
    }));
    (base, stop)
}

/// Start `python -m http.server` in the box on `port` and wait until it listens.
async fn serve_in_box(remote: &RemoteBox, port: u16) {
    let code = format!(
        "import subprocess, sys\nsrv = subprocess.Popen([sys.executable, '-m', 'http.server', '{port}', '--bind', \
         '127.0.0.1'], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)"
    );
    assert!(remote.exec(&code).await.unwrap().error().is_none());
    for _ in 0..300 {
        match remote.connect_port(port).await {
            Ok(_) => return,
            Err(e) if e.kind() == ErrorKind::Connection => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("connect_port({port}): {e}"),
        }
    }
    panic!("nothing listened on {port} in the box within 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_url_and_connect_port_reach_a_server_in_the_box() {
    let (base, _stop) = serve().await;
    let remote = RemoteBox::builder().with_base_url(&base).with_api_key(KEY).build().unwrap();
    remote.start().await.unwrap();
    assert!(remote.capabilities().ports);
    remote.upload_bytes("site/hello.txt", "hello through the server").await.unwrap();
    let port = 8765;
    serve_in_box(&remote, port).await;

    let url = remote.port_url(port).await.unwrap();
    assert_eq!(url, format!("{base}/v1/sessions/{}/ports/{port}/", remote.id()));
    let http = HttpClient::new(ClientConfig::new()).unwrap();
    let req = Request::new(Method::GET, &format!("{url}site/hello.txt"))
        .unwrap()
        .header(http::header::AUTHORIZATION, &format!("Bearer {KEY}"))
        .unwrap();
    let body = http.send(req).await.unwrap().bytes_limited(1 << 20).await.unwrap();
    assert_eq!(&body[..], b"hello through the server");
    // Without the key the URL is the server's 401, not the box's page.
    let anonymous = http.send(Request::new(Method::GET, &format!("{url}site/hello.txt")).unwrap()).await;
    assert_eq!(anonymous.unwrap_err().kind(), ErrorKind::Authentication);

    let mut conn = remote.connect_port(port).await.unwrap();
    conn.write_all(b"GET /site/hello.txt HTTP/1.0\r\n\r\n").await.unwrap();
    let mut response = Vec::new();
    conn.read_to_end(&mut response).await.unwrap();
    assert!(response.ends_with(b"hello through the server"), "{}", String::from_utf8_lossy(&response));

    let quiet = remote.connect_port(port + 1).await.err().unwrap();
    assert_eq!(quiet.kind(), ErrorKind::Connection, "{quiet}");
    assert!(quiet.to_string().contains("nothing in the box listens on port"), "{quiet}");
    for bad in [80, 1023] {
        assert_eq!(remote.connect_port(bad).await.err().unwrap().kind(), ErrorKind::InvalidInput);
        assert_eq!(remote.port_url(bad).await.unwrap_err().kind(), ErrorKind::InvalidInput);
    }
    remote.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_are_refused_loudly_over_http2_and_in_the_codebox_api_modes() {
    let (base, _stop) = serve().await;
    let config = ClientConfig::new().with_http2_prior_knowledge(true);
    let h2 = RemoteBox::builder().with_base_url(&base).with_api_key(KEY).with_client_config(config).build().unwrap();
    h2.start().await.unwrap();
    assert!(!h2.capabilities().ports);
    let err = h2.connect_port(8000).await.err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.to_string().contains("HTTP/1.1"), "{err}");
    // The URL is still the server's route: any HTTP/1.1 client reaches it.
    assert!(h2.port_url(8000).await.unwrap().ends_with("/ports/8000/"));
    h2.stop().await.unwrap();

    for protocol in [Protocol::CodeboxApi, Protocol::CodeboxApiServer] {
        let api = RemoteBox::builder()
            .with_base_url(&base)
            .with_api_key(KEY)
            .with_session_id("s1")
            .with_protocol(protocol)
            .build()
            .unwrap();
        assert!(!api.capabilities().ports);
        assert_eq!(api.connect_port(8000).await.err().unwrap().kind(), ErrorKind::Unsupported);
        assert_eq!(api.port_url(8000).await.unwrap_err().kind(), ErrorKind::Unsupported);
    }
}

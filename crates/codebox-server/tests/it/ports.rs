//! `/v1/sessions/{id}/ports/{port}/…` in front of real LocalBoxes: `python -m http.server`
//! fetched with a real HTTP client, what is forwarded (and what never is), a streamed
//! response arriving piece by piece, a WebSocket echo, raw TCP through `Upgrade:
//! codebox-tcp`, another key's 404, and bad ports.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use codebox_core::{CodeBox, CodeBoxExt, ErrorKind};
use codebox_local::LocalBox;
use codebox_server::{Server, factory_fn};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{KEY, OTHER_KEY, Reply, client, request, test_config};

/// The test's HTTP server, run in the box.
const BOX_SERVER: &str = include_str!("ports/box_server.py");

/// A server whose sessions are LocalBoxes, kept for the tests to drive directly.
struct PortServer {
    addr: SocketAddr,
    boxes: Arc<Mutex<Vec<LocalBox>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl PortServer {
    async fn start() -> Self {
        Self::with_config(test_config()).await
    }

    async fn with_config(config: codebox_server::ServerConfig) -> Self {
        let boxes: Arc<Mutex<Vec<LocalBox>>> = Arc::default();
        let made = Arc::clone(&boxes);
        let factory = factory_fn(move |_request| {
            let made = Arc::clone(&made);
            async move {
                let lb = LocalBox::builder().build()?;
                made.lock().unwrap().push(lb.clone());
                Ok(Arc::new(lb) as Arc<dyn CodeBox>)
            }
        });
        let server = Server::bind(config, factory).await.unwrap();
        let addr = server.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        tokio::spawn(server.run_until(async {
            let _ = stopped.await;
        }));
        Self { addr, boxes, stop: Some(stop) }
    }

    async fn send(&self, method: Method, path: &str, key: &str) -> Reply {
        request(&client(), self.addr, method, path, Some(key), None, Bytes::new()).await
    }

    /// A session with the test's server listening on a port in its box: the session id,
    /// its box and the port.
    async fn serving_session(&self) -> (String, LocalBox, u16) {
        let reply = request(&client(), self.addr, Method::POST, "/v1/sessions", Some(KEY), Some("application/json"), {
            Bytes::from(json!({}).to_string())
        })
        .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        let id = reply.json()["id"].as_str().unwrap().to_owned();
        let lb = self.boxes.lock().unwrap().last().cloned().unwrap();
        lb.start().await.unwrap();
        lb.upload_bytes("box_server.py", BOX_SERVER).await.unwrap();
        lb.upload_bytes("site/index.html", "<h1>served from the box</h1>").await.unwrap();
        let port = 20_000 + u16::try_from(std::process::id() % 20_000).unwrap();
        let code = format!(
            "import subprocess, sys\nsrv = subprocess.Popen([sys.executable, 'box_server.py', '{port}'], \
             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)"
        );
        let ex = lb.exec(&code).await.unwrap();
        assert!(ex.error().is_none(), "{ex:?}");
        for _ in 0..300 {
            match lb.connect_port(port).await {
                Ok(_) => return (id, lb, port),
                Err(e) if e.kind() == ErrorKind::Connection => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => panic!("connect_port: {e}"),
            }
        }
        panic!("the box's server did not listen on {port} within 30 s");
    }
}

impl Drop for PortServer {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        for lb in self.boxes.lock().unwrap().drain(..) {
            drop(lb);
        }
    }
}

/// Read one HTTP/1.1 response head from `conn`, byte by byte (what follows it stays unread).
async fn read_head(conn: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(conn.read(&mut byte).await.unwrap(), 1, "the connection closed in the head: {head:?}");
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test]
async fn a_page_of_python_http_server_in_the_box_is_fetched_through_the_server() {
    let server = PortServer::start().await;
    let (id, lb, _) = server.serving_session().await;
    // `python -m http.server` itself, on a port of its own.
    lb.upload_bytes("page.html", "<p>python -m http.server</p>").await.unwrap();
    let port = 20_000 + u16::try_from((std::process::id() + 7) % 20_000).unwrap();
    let code = format!(
        "import subprocess, sys\nplain = subprocess.Popen([sys.executable, '-m', 'http.server', '{port}', \
         '--bind', '127.0.0.1'], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)"
    );
    assert!(lb.exec(&code).await.unwrap().error().is_none());
    let path = format!("/v1/sessions/{id}/ports/{port}/page.html");
    let mut reply = server.send(Method::GET, &path, KEY).await;
    for _ in 0..300 {
        if reply.status != StatusCode::BAD_GATEWAY {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        reply = server.send(Method::GET, &path, KEY).await;
    }
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.text(), "<p>python -m http.server</p>");
    assert_eq!(reply.headers["content-type"], "text/html");

    // A directory listing at the port's root, with and without the trailing slash.
    for root in [format!("/v1/sessions/{id}/ports/{port}/"), format!("/v1/sessions/{id}/ports/{port}")] {
        let reply = server.send(Method::GET, &root, KEY).await;
        assert_eq!(reply.status, StatusCode::OK, "{root}: {}", reply.text());
        assert!(reply.text().contains("page.html"), "{}", reply.text());
    }
    let missing = server.send(Method::GET, &format!("/v1/sessions/{id}/ports/{port}/nope.html"), KEY).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "the box's own 404 comes through");
}

#[tokio::test]
async fn the_box_gets_the_path_without_the_prefix_and_never_the_api_key() {
    let server = PortServer::start().await;
    let (id, _lb, port) = server.serving_session().await;
    let reply = server.send(Method::GET, &format!("/v1/sessions/{id}/ports/{port}/headers"), KEY).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen = reply.json();
    assert_eq!(seen["path"], "/headers");
    let headers = seen["headers"].as_object().unwrap();
    assert!(!headers.contains_key("authorization"), "the API key reached the box: {headers:?}");
    assert!(!reply.text().contains(KEY), "the API key reached the box: {}", reply.text());
    assert_eq!(headers["x-forwarded-prefix"], format!("/v1/sessions/{id}/ports/{port}"));
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");

    // A query string goes along.
    let reply = server.send(Method::GET, &format!("/v1/sessions/{id}/ports/{port}/site/index.html?x=1"), KEY).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "<h1>served from the box</h1>");
}

#[tokio::test]
async fn a_streamed_response_arrives_piece_by_piece() {
    let server = PortServer::start().await;
    let (id, lb, port) = server.serving_session().await;
    let req = Request::get(format!("http://{}/v1/sessions/{id}/ports/{port}/stream", server.addr))
        .header("authorization", format!("Bearer {KEY}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    // The box sends its second piece only once `release` exists, which is made only after the
    // first piece arrived here: a proxy that buffered the response would never finish.
    let mut received = Vec::new();
    while !received.ends_with(b"first;") {
        let frame = body.frame().await.expect("the first piece").unwrap();
        received.extend_from_slice(&frame.into_data().unwrap_or_default());
    }
    assert_eq!(received, b"first;");
    lb.upload_bytes("release", "").await.unwrap();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"second;");
}

#[tokio::test]
async fn a_websocket_to_the_box_echoes_both_ways() {
    let server = PortServer::start().await;
    let (id, _lb, port) = server.serving_session().await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    let handshake = format!(
        "GET /v1/sessions/{id}/ports/{port}/ws HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {KEY}\r\n\
         Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        server.addr
    );
    conn.write_all(handshake.as_bytes()).await.unwrap();
    let head = read_head(&mut conn).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // RFC 6455's own example key and answer.
    assert!(head.to_ascii_lowercase().contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="), "{head}");
    assert!(head.to_ascii_lowercase().contains("upgrade: websocket"), "{head}");
    for message in ["hello", "through the server"] {
        // A masked text frame, as a client sends.
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x81, 0x80 | u8::try_from(message.len()).unwrap()];
        frame.extend_from_slice(&mask);
        frame.extend(message.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        conn.write_all(&frame).await.unwrap();
        let mut header = [0u8; 2];
        conn.read_exact(&mut header).await.unwrap();
        assert_eq!(header[0], 0x81, "a final text frame");
        let mut echoed = vec![0u8; usize::from(header[1] & 0x7F)];
        conn.read_exact(&mut echoed).await.unwrap();
        assert_eq!(echoed, message.as_bytes());
    }
}

/// Ask for a raw connection to `port` of session `id`; the head of the answer.
async fn raw_upgrade(addr: SocketAddr, id: &str, port: u16) -> (TcpStream, String) {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let upgrade = format!(
        "GET /v1/sessions/{id}/ports/{port} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {KEY}\r\n\
         Connection: Upgrade\r\nUpgrade: codebox-tcp\r\n\r\n"
    );
    conn.write_all(upgrade.as_bytes()).await.unwrap();
    let head = read_head(&mut conn).await;
    (conn, head)
}

#[tokio::test]
async fn upgraded_connections_are_bounded_per_key() {
    // Two connections and two keys: one upgraded connection for each key at a time.
    let server = PortServer::with_config(test_config().with_max_connections(2)).await;
    let (id, _lb, port) = server.serving_session().await;
    let (first, head) = raw_upgrade(server.addr, &id, port).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (_, head) = raw_upgrade(server.addr, &id, port).await;
    assert!(head.starts_with("HTTP/1.1 429"), "a second tunnel of the key: {head}");
    assert!(head.to_ascii_lowercase().contains("retry-after"), "{head}");
    // Closing the first gives its slot back once both sides of it have ended.
    drop(first);
    for _ in 0..100 {
        let (_, head) = raw_upgrade(server.addr, &id, port).await;
        if head.starts_with("HTTP/1.1 101") {
            return;
        }
        assert!(head.starts_with("HTTP/1.1 429"), "{head}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the closed tunnel's slot never came back");
}

#[tokio::test]
async fn raw_tcp_reaches_the_port_through_an_upgrade() {
    let server = PortServer::start().await;
    let (id, _lb, port) = server.serving_session().await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    let upgrade = format!(
        "GET /v1/sessions/{id}/ports/{port} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {KEY}\r\n\
         Connection: Upgrade\r\nUpgrade: codebox-tcp\r\n\r\n",
        server.addr
    );
    conn.write_all(upgrade.as_bytes()).await.unwrap();
    let head = read_head(&mut conn).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // Now the bytes are the box's port's: speak HTTP to the program there ourselves.
    conn.write_all(b"GET /site/index.html HTTP/1.0\r\nHost: box\r\n\r\n").await.unwrap();
    let mut response = Vec::new();
    conn.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"), "{response}");
    assert!(response.ends_with("<h1>served from the box</h1>"), "{response}");
}

#[tokio::test]
async fn another_key_cannot_reach_the_port_and_bad_ports_are_refused() {
    let server = PortServer::start().await;
    let (id, _lb, port) = server.serving_session().await;
    let theirs = server.send(Method::GET, &format!("/v1/sessions/{id}/ports/{port}/headers"), OTHER_KEY).await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND, "{}", theirs.text());
    assert!(!theirs.text().contains("x-forwarded"), "{}", theirs.text());
    let none = request(
        &client(),
        server.addr,
        Method::GET,
        &format!("/v1/sessions/{id}/ports/{port}/headers"),
        None,
        None,
        Bytes::new(),
    )
    .await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    let unknown = server.send(Method::GET, &format!("/v1/sessions/nope/ports/{port}/"), KEY).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    for bad in ["80", "1023", "0", "70000", "65536", "http", "-1"] {
        let reply = server.send(Method::GET, &format!("/v1/sessions/{id}/ports/{bad}/"), KEY).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}: {}", reply.text());
        assert_eq!(reply.error_kind(), "invalid_input", "{bad}");
    }
    // A port nobody listens on in the box.
    let quiet = if port == 65_000 { 65_001 } else { 65_000 };
    let reply = server.send(Method::POST, &format!("/v1/sessions/{id}/ports/{quiet}/x"), KEY).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    assert_eq!(reply.error_kind(), "connection");
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains("nothing in the box listens on port"));
}

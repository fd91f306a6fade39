//! RemoteBox and a server's refusals: a 429 or 503 with `Retry-After` (seconds or an HTTP
//! date) is waited out for session creation and idempotent requests, never for an execution;
//! against wiremock and against a real server's per-key request rate.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use codebox_core::{CodeBox, CodeBoxExt, ErrorKind};
use codebox_local::{LocalBox, LocalFactory};
use codebox_remote::RemoteBox;
use codebox_server::{Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::support::{KEY, answer, session_info};

/// A 201 for `POST /v1/sessions` that describes the session the client asked for.
fn created(req: &Request) -> ResponseTemplate {
    let asked: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    let mut info = session_info();
    info["id"] = asked["id"].clone();
    ResponseTemplate::new(201).set_body_json(info)
}

#[tokio::test]
async fn session_creation_waits_out_a_retry_after_given_as_an_http_date() {
    let server = MockServer::start().await;
    let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(1));
    let refused = ResponseTemplate::new(429)
        .insert_header("retry-after", later.as_str())
        .set_body_json(serde_json::json!({"error": {"kind": "rate_limited", "message": "slow down"}}));
    Mock::given(method("POST"))
        .and(path("/v1/sessions"))
        .respond_with(refused)
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST")).and(path("/v1/sessions")).respond_with(created).expect(1).mount(&server).await;
    let b = RemoteBox::builder().with_base_url(server.uri()).with_api_key(KEY).build().unwrap();
    b.start().await.unwrap();
}

#[tokio::test]
async fn a_rate_limited_execution_is_not_retried_and_says_when_to_come_back() {
    let server = MockServer::start().await;
    let refused = ResponseTemplate::new(429)
        .insert_header("retry-after", "0")
        .set_body_json(serde_json::json!({"error": {"kind": "rate_limited", "message": "slow down"}}));
    answer(&server, "POST", "/v1/sessions/s1/execute", refused, 1).await;
    let b = crate::support::attached(&server.uri());
    let err = b.exec("1").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RateLimited);
    assert_eq!(err.http().unwrap().status, 429);
    assert_eq!(err.retry_after(), Some(Duration::ZERO));
}

const OTHER_KEY: &str = "sk-rate-other";

/// A real server with real kernels, each key allowed one request a second in bursts of
/// `burst`; stops when dropped.
struct Running {
    addr: std::net::SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn serve(burst: u32) -> Running {
    let config = ServerConfig::new()
        .with_addr("127.0.0.1:0".parse().unwrap())
        .with_api_key(KEY)
        .with_api_key(OTHER_KEY)
        .with_rate_limit(1, burst);
    let factory = LocalFactory::builder(LocalBox::builder()).build().unwrap();
    let server = Server::bind(config, Arc::new(factory)).await.unwrap();
    let addr = server.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run_until(async {
        let _ = stopped.await;
    }));
    Running { addr, _stop: stop }
}

/// `GET path` as `key` on a connection of its own; the whole response as text.
async fn raw_get(addr: std::net::SocketAddr, path: &str, key: &str) -> String {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\nconnection: close\r\n\r\n");
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    conn.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Spend `KEY`'s bucket: requests until one is refused.
async fn drain(addr: std::net::SocketAddr) {
    for _ in 0..100 {
        let reply = raw_get(addr, "/v1/sessions", KEY).await;
        if reply.starts_with("HTTP/1.1 429") {
            assert!(reply.to_ascii_lowercase().contains("retry-after: 1\r\n"), "{reply}");
            return;
        }
    }
    panic!("the key was never over its rate");
}

/// How many requests the server has refused for their key's rate.
async fn rate_limited(addr: std::net::SocketAddr) -> u64 {
    let metrics = raw_get(addr, "/metrics", OTHER_KEY).await;
    let line = metrics.lines().find(|l| l.starts_with("codebox_requests_rate_limited_total ")).expect(&metrics);
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_box_waits_out_the_servers_rate_limit_for_creation_but_never_for_an_execution() {
    let server = serve(3).await;
    let base = format!("http://{}", server.addr);
    let b = RemoteBox::builder().with_base_url(&base).with_api_key(KEY).build().unwrap();

    drain(server.addr).await;
    assert_eq!(rate_limited(server.addr).await, 1);
    // Creation is refused once, waits the second the server asks for, and goes through.
    b.start().await.unwrap();
    assert_eq!(rate_limited(server.addr).await, 2, "the first creation was refused, the retry was not");

    drain(server.addr).await;
    let err = b.exec("1 + 1").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RateLimited, "{err}");
    assert_eq!(err.http().map(|h| h.status), Some(429));
    assert!(err.retry_after().is_some_and(|d| d >= Duration::from_secs(1)), "{err:?}");
    assert_eq!(rate_limited(server.addr).await, 4, "the execution was sent once");

    // Once the bucket has refilled, the session works; stopping it is retried as needed.
    let mut result = None;
    for _ in 0..20 {
        match b.exec("1 + 1").await {
            Err(e) if e.kind() == ErrorKind::RateLimited => tokio::time::sleep(Duration::from_millis(500)).await,
            other => {
                result = Some(other);
                break;
            }
        }
    }
    assert_eq!(result.expect("the rate came back").unwrap().text(), "2");
    b.stop().await.unwrap();
}

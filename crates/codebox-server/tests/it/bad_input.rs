//! Bad input never crashes the server or leaks data.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use codebox_server::{BoxFactory, Server, ServerConfig};
use hyper::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{KEY, ScriptedFactory, TestServer, eventually, test_config};

#[tokio::test]
async fn malformed_json_is_a_400() {
    let server = TestServer::start().await;
    let id = server.session().await;
    let save_images_not_a_bool = r#"{"code": "1", "options": {"save_images": "yes"}}"#;
    for body in ["{", "[]", r#"{"code": 5}"#, "\u{0}", save_images_not_a_bool] {
        let reply = server
            .send(Method::POST, &format!("/v1/sessions/{id}/execute"), Some(KEY), Some("application/json"), body)
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body:?}");
        assert_eq!(reply.error_kind(), "invalid_input");
        assert!(reply.json()["error"]["message"].as_str().unwrap().contains("malformed JSON"));
    }
    let reply = server.post_json("/v1/sessions", json!({"id": "../etc"})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let reply = server.post_json("/v1/sessions", json!({"kernel": "a b"})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let reply = server.post_json(&format!("/v1/sessions/{id}/install"), json!({"packages": ["--index-url=x"]})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let reply = server.post_json(&format!("/v1/sessions/{id}/install"), json!({"packages": []})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_json_route_refuses_other_content_types() {
    let server = TestServer::start().await;
    let id = server.session().await;
    for ct in [None, Some("text/plain"), Some("application/x-www-form-urlencoded")] {
        let reply = server
            .send(Method::POST, &format!("/v1/sessions/{id}/execute"), Some(KEY), ct, r#"{"code":"print x"}"#)
            .await;
        assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct:?}");
        assert_eq!(reply.error_kind(), "invalid_input");
    }
    let ok = server
        .send(
            Method::POST,
            &format!("/v1/sessions/{id}/execute"),
            Some(KEY),
            Some("application/json; charset=utf-8"),
            r#"{"code":"print x"}"#,
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
}

#[tokio::test]
async fn json_bodies_have_a_size_limit() {
    let server = TestServer::with_config(test_config().with_max_json_bytes(1000)).await;
    let id = server.session().await;
    let code = "x".repeat(2000);
    let reply = server.post_json(&format!("/v1/sessions/{id}/execute"), json!({"code": code})).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.error_kind(), "too_large");
}

#[tokio::test]
async fn uploads_over_the_limit_get_413_and_write_nothing() {
    let server = TestServer::with_config(test_config().with_max_upload_bytes(1000)).await;
    let id = server.session().await;
    // Announced too large: refused before the box sees anything.
    let reply =
        server.send(Method::PUT, &format!("/v1/sessions/{id}/files/big"), Some(KEY), None, vec![0u8; 1001]).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.error_kind(), "too_large");
    assert_eq!(server.factory.probe(0).uploads_started.load(Ordering::SeqCst), 0);

    // Chunked, with no length: cut off once it passes the limit.
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "PUT /v1/sessions/{id}/files/big HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..3 {
        conn.write_all(b"200\r\n").await.unwrap();
        conn.write_all(&[1u8; 0x200]).await.unwrap();
        conn.write_all(b"\r\n").await.unwrap();
    }
    let response = read_response_head(&mut conn).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    let listed = server.get(&format!("/v1/sessions/{id}/files")).await.json();
    assert_eq!(listed, json!([]), "nothing was written");

    // Exactly at the limit is fine.
    let reply =
        server.send(Method::PUT, &format!("/v1/sessions/{id}/files/fits"), Some(KEY), None, vec![0u8; 1000]).await;
    assert_eq!(reply.status, StatusCode::CREATED);
}

#[tokio::test]
async fn paths_leading_outside_are_refused() {
    let server = TestServer::start().await;
    let id = server.session().await;
    for path in ["..%2Fsecret", "a/%2E%2E/%2E%2E/secret", "%2Fetc%2Fpasswd", "a%00b", "%ff"] {
        for method in [Method::GET, Method::PUT, Method::DELETE] {
            let reply =
                server.send(method.clone(), &format!("/v1/sessions/{id}/files/{path}"), Some(KEY), None, "x").await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{method} {path}");
            assert!(["unsafe_path", "invalid_input"].contains(&reply.error_kind().as_str()), "{}", reply.text());
        }
    }
    let reply = server.get(&format!("/v1/sessions/{id}/files?dir=..")).await;
    assert_eq!(reply.error_kind(), "unsafe_path");
    let reply = server.get(&format!("/v1/sessions/{id}/files?dir=%2Fetc")).await;
    assert_eq!(reply.error_kind(), "unsafe_path");
    assert_eq!(server.factory.probe(0).uploads_started.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn unknown_sessions_and_routes_are_404() {
    let server = TestServer::start().await;
    for path in ["/v1/sessions/nope", "/v1/sessions/nope/files", "/v1/nothing", "/"] {
        let reply = server.get(path).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(reply.error_kind(), "not_found");
    }
    let reply = server.post_json("/v1/sessions/nope/execute", json!({"code": "print x"})).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = server.send(Method::PATCH, "/v1/sessions", Some(KEY), None, Bytes::new()).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.headers["allow"], "POST, GET");
}

#[tokio::test]
async fn missing_or_wrong_keys_are_401_and_never_echoed() {
    let server = TestServer::start().await;
    let id = server.session().await;
    for key in [None, Some("wrong-key-value"), Some("")] {
        for path in ["/v1/sessions".to_owned(), format!("/v1/sessions/{id}"), "/metrics".into()] {
            let reply = server.send(Method::GET, &path, key, None, Bytes::new()).await;
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{key:?} {path}");
            assert_eq!(reply.error_kind(), "authentication");
            assert_eq!(reply.headers["www-authenticate"], "Bearer");
            assert!(!reply.text().contains("wrong-key-value"));
        }
    }
    let basic = server.send(Method::GET, "/v1/sessions", None, None, Bytes::new()).await;
    assert_eq!(basic.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_stalled_upload_times_out() {
    let server = TestServer::start().await;
    let id = server.session().await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "PUT /v1/sessions/{id}/files/slow HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\ncontent-length: 100\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&[b'a'; 10]).await.unwrap();
    // ...and nothing more. The server gives up after its body idle timeout (500 ms here).
    let response = read_response_head(&mut conn).await;
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("\"kind\":\"timeout\""), "{response}");
    assert_eq!(server.get(&format!("/v1/sessions/{id}/files")).await.json(), json!([]));
    // The server still answers.
    assert_eq!(server.get("/health").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_client_that_leaves_mid_execution_gets_it_cancelled() {
    let server = TestServer::start().await;
    let id = server.session().await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    let body = r#"{"code":"wait"}"#;
    let req = format!(
        "POST /v1/sessions/{id}/execute HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("waiting") {
        let mut buf = [0u8; 1024];
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "the stream ended early");
        seen.extend_from_slice(&buf[..n]);
    }
    drop(conn);
    let probe = server.factory.probe(0);
    eventually("the execution to be cancelled", || probe.cancelled.load(Ordering::SeqCst) == 1).await;
    let metrics = server.get("/metrics").await.text();
    assert!(metrics.contains("codebox_executions_total{outcome=\"disconnected\"} 1"), "{metrics}");
    assert!(metrics.contains("codebox_executions_running 0"), "{metrics}");
}

#[tokio::test]
async fn a_client_that_leaves_mid_download_does_not_hurt_the_server() {
    let server = TestServer::start().await;
    let id = server.session().await;
    let size = 32 << 20;
    let put = server.send(Method::PUT, &format!("/v1/sessions/{id}/files/big"), Some(KEY), None, vec![3u8; size]).await;
    assert_eq!(put.status, StatusCode::CREATED);
    for _ in 0..3 {
        let mut conn = TcpStream::connect(server.addr).await.unwrap();
        let req = format!("GET /v1/sessions/{id}/files/big HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n\r\n");
        conn.write_all(req.as_bytes()).await.unwrap();
        let head = read_response_head(&mut conn).await;
        assert!(head.contains(&format!("content-length: {size}")), "{head}");
        drop(conn);
    }
    let whole = server.get(&format!("/v1/sessions/{id}/files/big")).await;
    assert_eq!(whole.body.len(), size);
    // The session is not held in use by the abandoned transfers: it can still be reaped or deleted.
    let deleted = server.send(Method::DELETE, &format!("/v1/sessions/{id}"), Some(KEY), None, Bytes::new()).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_full_server_refuses_new_sessions_with_retry_after() {
    // One key may take every slot here: this is the server-wide cap.
    let server = TestServer::with_config(test_config().with_max_sessions(2).with_max_sessions_per_key(2)).await;
    let _a = server.session().await;
    let b = server.session().await;
    let full = server.post_json("/v1/sessions", json!({})).await;
    assert_eq!(full.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(full.error_kind(), "rate_limited");
    assert_eq!(full.headers["retry-after"], "5");
    // Attaching to an existing session is still fine, and a freed slot is usable again.
    assert_eq!(server.post_json("/v1/sessions", json!({"id": b})).await.status, StatusCode::OK);
    server.send(Method::DELETE, &format!("/v1/sessions/{b}"), Some(KEY), None, Bytes::new()).await;
    assert_eq!(server.post_json("/v1/sessions", json!({})).await.status, StatusCode::CREATED);
    assert!(server.get("/metrics").await.text().contains("codebox_sessions_rejected_total 1"));
}

#[tokio::test]
async fn a_burst_of_new_sessions_starts_a_few_boxes_at_a_time() {
    let server = TestServer::with_config(test_config().with_max_concurrent_starts(2)).await;
    let replies =
        futures::future::join_all((0..6).map(|_| server.post_json("/v1/sessions", json!({"kernel": "slow"})))).await;
    assert!(replies.iter().all(|r| r.status == StatusCode::CREATED), "{replies:?}");
    assert_eq!(server.factory.created.load(Ordering::SeqCst), 6);
    let most = server.factory.most_starting.load(Ordering::SeqCst);
    assert!((1..=2).contains(&most), "{most} boxes were starting at once");
}

#[tokio::test]
async fn a_factory_failure_frees_its_slot() {
    let server = TestServer::with_config(test_config().with_max_sessions(1)).await;
    let reply = server.post_json("/v1/sessions", json!({"kernel": "broken"})).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.error_kind(), "kernel_start");
    assert_eq!(server.post_json("/v1/sessions", json!({})).await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn no_auth_is_refused_off_loopback_unless_forced() {
    let factory = || std::sync::Arc::new(ScriptedFactory::default()) as std::sync::Arc<dyn BoxFactory>;
    let public = ServerConfig::new().with_addr("0.0.0.0:0".parse().unwrap()).with_no_auth(true, false);
    let err = Server::bind(public.clone(), factory()).await.unwrap_err();
    assert_eq!(err.kind(), codebox_core::ErrorKind::InvalidInput);
    assert!(Server::bind(public.with_no_auth(true, true), factory()).await.is_ok());
    let no_keys = ServerConfig::new().with_addr("127.0.0.1:0".parse().unwrap());
    assert!(Server::bind(no_keys, factory()).await.is_err());
}

/// Read a response's head and whatever body arrived with it: waits up to 10 s for the first
/// bytes, then reads until the connection closes or goes quiet for a second.
async fn read_response_head(conn: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    loop {
        let mut buf = [0u8; 4096];
        let wait = if seen.is_empty() { Duration::from_secs(10) } else { Duration::from_secs(1) };
        match tokio::time::timeout(wait, conn.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                seen.extend_from_slice(&buf[..n]);
                if seen.len() > 8192 {
                    break;
                }
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn timeouts_no_duration_can_hold_are_a_400() {
    let server = TestServer::start().await;
    let id = server.session().await;
    for timeout in ["1e300", "1.9e19", "-1", "NaN"] {
        for (route, body) in [
            ("execute", format!(r#"{{"code": "1", "options": {{"timeout": {timeout}}}}}"#)),
            ("commands", format!(r#"{{"program": "true", "timeout": {timeout}}}"#)),
        ] {
            let path = format!("/v1/sessions/{id}/{route}");
            let reply = server.send(Method::POST, &path, Some(KEY), Some("application/json"), body).await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{route} {timeout}: {}", reply.text());
        }
        let body = format!(r#"{{"code": "1", "kernel": "ipython", "timeout": {timeout}}}"#);
        let path = format!("/api/v2/codebox/{id}/exec");
        let reply = server.send(Method::POST, &path, Some(KEY), Some("application/json"), body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "v2 exec {timeout}: {}", reply.text());
    }
    assert_eq!(server.get("/health").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_json_body_announced_over_the_limit_is_refused_before_it_is_sent() {
    let server = TestServer::start().await;
    let id = server.session().await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /v1/sessions/{id}/execute HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\ncontent-type: application/json\r\ncontent-length: 999999999999\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    // No body follows: a server that waited for it would answer 408 after its idle timeout.
    let response = read_response_head(&mut conn).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
}

#[tokio::test]
async fn one_key_holds_at_most_its_share_of_sessions() {
    // Two keys and four slots: two each by default.
    let server = TestServer::with_config(test_config().with_max_sessions(4)).await;
    server.session().await;
    server.session().await;
    let over = server.post_json("/v1/sessions", json!({})).await;
    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS, "{}", over.text());
    assert_eq!(over.error_kind(), "rate_limited");
    assert!(over.headers.contains_key("retry-after"));
    for _ in 0..2 {
        let reply = server
            .send(Method::POST, "/v1/sessions", Some(crate::support::OTHER_KEY), Some("application/json"), "{}")
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    }
}

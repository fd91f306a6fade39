//! Transport edge cases: retries, error bodies, cut streams, timeouts, malformed NDJSON.

use std::time::Duration;

use bytes::Bytes;
use codebox_core::{BoxState, CodeBox, CodeBoxError, CodeBoxExt, ErrorKind, RunOptions, TimeoutKind};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use wiremock::matchers::{body_bytes, body_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::{KEY, answer, answer_first, attached, builder, session_info};

const SESSION: &str = "/v1/sessions/s1";
const EXECUTE: &str = "/v1/sessions/s1/execute";

/// A mock server whose session answers its info only after `delay`, and a builder for a box
/// attached to it that never retries.
async fn slow_session(delay: Duration) -> (MockServer, codebox_remote::RemoteBoxBuilder) {
    let server = MockServer::start().await;
    let info = ResponseTemplate::new(200).set_body_json(session_info()).set_delay(delay);
    answer(&server, "GET", SESSION, info, ..).await;
    let b = builder(&server.uri()).with_retry(codebox_remote::RetryPolicy::none());
    (server, b)
}

fn ndjson(lines: &[&str]) -> ResponseTemplate {
    let mut body = lines.join("\n");
    body.push('\n');
    ResponseTemplate::new(200).insert_header("content-type", "application/x-ndjson").set_body_string(body)
}

#[tokio::test]
async fn a_429_with_retry_after_is_waited_out_then_retried() {
    let server = MockServer::start().await;
    answer_first(&server, "GET", SESSION, ResponseTemplate::new(429).insert_header("retry-after", "1")).await;
    Mock::given(method("GET"))
        .and(path(SESSION))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(session_info()))
        .expect(1)
        .mount(&server)
        .await;
    let b = attached(&server.uri());
    let status = b.status().await.unwrap();
    assert_eq!(status.state, BoxState::Idle);
}

#[tokio::test]
async fn a_502_is_retried_then_succeeds() {
    let server = MockServer::start().await;
    let file = format!("{SESSION}/files/data/x.bin");
    answer_first(&server, "GET", &file, ResponseTemplate::new(502).set_body_string("bad gateway")).await;
    answer(&server, "GET", &file, ResponseTemplate::new(200).set_body_bytes(b"payload".to_vec()), 1).await;
    let b = attached(&server.uri());
    assert_eq!(b.download_bytes("data/x.bin").await.unwrap(), Bytes::from_static(b"payload"));
}

#[tokio::test]
async fn retries_stop_after_the_policy_allows() {
    let server = MockServer::start().await;
    answer(&server, "GET", SESSION, ResponseTemplate::new(503), 4).await;
    let err = attached(&server.uri()).status().await.unwrap_err();
    assert_eq!(err.http().unwrap().status, 503);
}

#[tokio::test]
async fn a_500_with_a_json_body_keeps_status_body_and_headers() {
    let server = MockServer::start().await;
    let failure = ResponseTemplate::new(500)
        .insert_header("x-request-id", "req-42")
        .set_body_json(serde_json::json!({"error": {"kind": "kernel_start", "message": "no python"}}));
    answer(&server, "GET", SESSION, failure, 1).await;
    let err = attached(&server.uri()).status().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KernelStart);
    let http = err.http().expect("an HTTP error");
    assert_eq!(http.status, 500);
    assert_eq!(http.body.as_ref().unwrap()["error"]["message"], "no python");
    assert!(http.headers.iter().any(|(k, v)| k == "x-request-id" && v == "req-42"), "{:?}", http.headers);
    assert!(!err.to_string().contains(KEY) && !format!("{err:?}").contains(KEY));
}

#[tokio::test]
async fn an_execution_is_never_retried() {
    let server = MockServer::start().await;
    let busy = ResponseTemplate::new(503).insert_header("retry-after", "0");
    answer(&server, "POST", EXECUTE, busy, 1).await;
    let err = attached(&server.uri()).exec("print(1)").await.unwrap_err();
    assert_eq!(err.http().unwrap().status, 503);
}

#[tokio::test]
async fn events_stream_with_keepalives_and_the_request_carries_code_and_options() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(EXECUTE))
        .and(body_json(serde_json::json!({"code": "print('hi')", "options": {"timeout": 2.5}})))
        .respond_with(ndjson(&[
            r#"{"seq":0,"event":{"type":"stdout","text":"hi\n"}}"#,
            r#"{"keepalive":true}"#,
            r#"{"seq":1,"event":{"type":"end","execution_count":4,"duration_ms":3.0,"outcome":"ok"}}"#,
        ]))
        .expect(1)
        .mount(&server)
        .await;
    let b = attached(&server.uri());
    let ex = b.run("print('hi')", RunOptions::new().with_timeout(Duration::from_millis(2500))).await.unwrap();
    assert_eq!(ex.stdout(), "hi\n");
    assert_eq!(ex.execution_count, Some(4));
}

#[tokio::test]
async fn malformed_ndjson_is_a_protocol_error() {
    let server = MockServer::start().await;
    let lines = ndjson(&[r#"{"seq":0,"event":{"type":"stdout","text":"a"}}"#, "this is not json"]);
    answer(&server, "POST", EXECUTE, lines, ..).await;
    let err = attached(&server.uri()).exec("x").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol);
    assert!(err.to_string().contains("this is not json"), "{err}");
}

#[tokio::test]
async fn a_sequence_gap_and_a_stream_without_end_are_protocol_errors() {
    let server = MockServer::start().await;
    let gap = ndjson(&[
        r#"{"seq":0,"event":{"type":"stdout","text":"a"}}"#,
        r#"{"seq":2,"event":{"type":"stdout","text":"b"}}"#,
    ]);
    answer_first(&server, "POST", EXECUTE, gap).await;
    answer(&server, "POST", EXECUTE, ndjson(&[r#"{"seq":0,"event":{"type":"stdout","text":"a"}}"#]), 1).await;
    let b = attached(&server.uri());
    let gap = b.exec("x").await.unwrap_err();
    assert!(gap.kind() == ErrorKind::Protocol && gap.to_string().contains("expected event 1"), "{gap}");
    let cut = b.exec("x").await.unwrap_err();
    assert!(cut.kind() == ErrorKind::Protocol && cut.to_string().contains("without an end"), "{cut}");
}

#[tokio::test]
async fn an_error_line_ends_the_stream_with_its_kind() {
    let server = MockServer::start().await;
    let died = ndjson(&[
        r#"{"seq":0,"event":{"type":"stdout","text":"a"}}"#,
        r#"{"seq":1,"error":{"kind":"kernel_died","message":"kernel died: killed by signal 9 (SIGKILL)"}}"#,
    ]);
    answer(&server, "POST", EXECUTE, died, 1).await;
    let mut stream = attached(&server.uri()).run_stream("x", RunOptions::new()).await.unwrap();
    assert!(matches!(stream.next().await, Some(Ok(_))));
    let err = stream.next().await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KernelDied);
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn a_server_slower_than_the_read_timeout_gives_a_read_timeout() {
    let (_server, b) = slow_session(Duration::from_secs(5)).await;
    let b = b.with_read_timeout(Duration::from_millis(300)).build().unwrap();
    let err = b.status().await.unwrap_err();
    assert!(matches!(err, CodeBoxError::Timeout { kind: TimeoutKind::Read, .. }), "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn a_server_slower_than_the_request_timeout_gives_a_request_timeout() {
    let (_server, b) = slow_session(Duration::from_secs(5)).await;
    let b = b
        .with_request_timeout(Some(Duration::from_millis(300)))
        .with_read_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let err = b.status().await.unwrap_err();
    assert!(matches!(err, CodeBoxError::Timeout { kind: TimeoutKind::Request, .. }), "{err:?}");
}

#[tokio::test]
async fn uploads_stream_every_chunk_and_return_the_file_info() {
    let server = MockServer::start().await;
    let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    Mock::given(method("PUT"))
        .and(path(format!("{SESSION}/files/dir/a%20b.bin")))
        .and(header("content-type", "application/octet-stream"))
        .and(body_bytes(content.clone()))
        .respond_with(ResponseTemplate::new(201).set_body_json(serde_json::json!({
            "path": "dir/a b.bin", "name": "a b.bin", "size": 300000, "is_dir": false, "modified": 1700000000.0
        })))
        .expect(1)
        .mount(&server)
        .await;
    let chunks: Vec<codebox_core::Result<Bytes>> =
        content.chunks(65_536).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    let info = attached(&server.uri()).upload("dir/a b.bin", Box::pin(futures::stream::iter(chunks))).await.unwrap();
    assert_eq!(info.size, 300_000);
    assert_eq!(info.name, "a b.bin");
}

#[tokio::test]
async fn a_full_disk_on_the_server_is_storage_full_here() {
    let server = MockServer::start().await;
    let full = ResponseTemplate::new(507).set_body_json(serde_json::json!({
        "error": {"kind": "storage_full", "message": "I/O error: writing \"big.bin\": No space left on device"}
    }));
    answer(&server, "PUT", format!("{SESSION}/files/big.bin"), full, 1).await;
    let chunks = futures::stream::iter([Ok(Bytes::from_static(b"data"))]);
    let err = attached(&server.uri()).upload("big.bin", Box::pin(chunks)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::StorageFull, "{err}");
    assert_eq!(err.http().map(|h| h.status), Some(507));
    assert!(!err.is_retryable(), "writing the same again fills the same disk");
}

#[tokio::test]
async fn unsafe_paths_and_unstarted_boxes_fail_before_any_request() {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::any()).respond_with(ResponseTemplate::new(500)).expect(0).mount(&server).await;
    let b = attached(&server.uri());
    assert_eq!(b.download("../etc/passwd").await.err().unwrap().kind(), ErrorKind::UnsafePath);
    assert_eq!(b.delete_file("/etc/passwd").await.unwrap_err().kind(), ErrorKind::UnsafePath);
    assert_eq!(b.list_files("..", false).await.unwrap_err().kind(), ErrorKind::UnsafePath);
    let fresh = codebox_remote::RemoteBox::builder().with_base_url(server.uri()).with_api_key(KEY).build().unwrap();
    assert_eq!(fresh.exec("1").await.unwrap_err().kind(), ErrorKind::NotRunning);
    assert_eq!(fresh.status().await.unwrap().state, BoxState::NotStarted);
}

/// A one-shot HTTP server on a raw socket, for what wiremock cannot do.
async fn raw_server(response_head: &'static str, body_part: &'static [u8]) -> (String, tokio::task::JoinHandle<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        // Read the request head (the requests here have small or no bodies).
        let mut seen = Vec::new();
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = sock.read(&mut buf).await.unwrap();
            if n == 0 {
                return false;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        sock.write_all(response_head.as_bytes()).await.unwrap();
        sock.write_all(body_part).await.unwrap();
        sock.flush().await.unwrap();
        // Report whether the client closed the connection (read returns 0) within 10 s.
        matches!(tokio::time::timeout(Duration::from_secs(10), sock.read(&mut buf)).await, Ok(Ok(0)) | Ok(Err(_)))
    });
    (format!("http://{addr}"), task)
}

#[tokio::test]
async fn a_download_cut_mid_way_is_a_connection_error() {
    let (base, server) = raw_server(
        "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: 1000\r\n\r\n",
        b"only ten b",
    )
    .await;
    let b = attached(&base);
    let mut stream = b.download("big.bin").await.unwrap();
    let mut got = 0;
    let err = loop {
        match stream.next().await {
            Some(Ok(chunk)) => got += chunk.len(),
            Some(Err(e)) => break e,
            None => panic!("a cut body ended cleanly after {got} bytes"),
        }
    };
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(got <= 10);
    server.abort();
}

#[tokio::test]
async fn an_execution_stream_cut_mid_way_is_an_error() {
    // The server sends one event, then closes the connection in the middle of a chunked body.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let _ = sock.read(&mut buf).await;
        let line = "{\"seq\":0,\"event\":{\"type\":\"stdout\",\"text\":\"a\"}}\n";
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n";
        let msg = format!("{head}{:x}\r\n{line}\r\n", line.len());
        sock.write_all(msg.as_bytes()).await.unwrap();
        drop(sock);
    });
    let b = attached(&format!("http://{addr}"));
    let err = b.exec("print('a')").await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Connection | ErrorKind::Protocol), "{err:?}");
}

#[tokio::test]
async fn dropping_an_execution_stream_closes_the_connection() {
    let (base, server) = raw_server(
        "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n",
        b"32\r\n{\"seq\":0,\"event\":{\"type\":\"stdout\",\"text\":\"tick\"}}\n\r\n",
    )
    .await;
    let b = attached(&base);
    let mut stream = b.run_stream("while True: pass", RunOptions::new()).await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first, codebox_core::ExecEvent::stdout("tick"));
    drop(stream);
    assert!(server.await.unwrap(), "the server never saw the connection close");
}

#[tokio::test]
async fn a_refused_connection_is_a_connection_error() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let b = attached(&format!("http://127.0.0.1:{port}"));
    let err = b.status().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn settings_give_the_default_execution_timeout_and_the_key() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(EXECUTE))
        .and(header("authorization", "Bearer sk-from-settings"))
        .and(body_json(serde_json::json!({"code": "1", "options": {"timeout": 7.0}})))
        .respond_with(ndjson(&[r#"{"seq":0,"event":{"type":"end","duration_ms":1.0,"outcome":"ok"}}"#]))
        .expect(1)
        .mount(&server)
        .await;
    let settings = codebox_core::CodeBoxSettings::from_lookup(|name| match name {
        "CODEBOX_API_KEY" => Some("sk-from-settings".into()),
        "CODEBOX_BASE_URL" => Some(server.uri()),
        "CODEBOX_TIMEOUT" => Some("7".into()),
        "CODEBOX_SESSION_ID" => Some("s1".into()),
        _ => None,
    })
    .unwrap();
    let b = codebox_remote::RemoteBox::from_settings(&settings).unwrap();
    assert_eq!(b.id(), "s1");
    assert!(b.exec("1").await.unwrap().is_ok());
}

#[tokio::test]
async fn a_server_that_never_accepts_gives_a_connect_timeout() {
    // A listener whose backlog is full and that never accepts: the kernel drops further SYNs,
    // so a new connection can only hang until the connect timeout.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => fillers.push(stream),
            _ => break,
        }
    }
    let b = builder(&format!("http://{addr}"))
        .with_connect_timeout(Duration::from_millis(300))
        .with_retry(codebox_remote::RetryPolicy::none())
        .build()
        .unwrap();
    let err = b.status().await.unwrap_err();
    assert!(matches!(err, CodeBoxError::Timeout { kind: TimeoutKind::Connect, .. }), "{err:?}");
    assert!(err.is_retryable());
    drop(listener);
}

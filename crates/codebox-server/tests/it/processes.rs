//! The background process routes in front of real LocalBoxes: a process's NDJSON stream,
//! following it again, input, signals, and the errors of the other routes (unknown ids and
//! another key's session are 404, malformed bodies 400).

use std::sync::Arc;

use bytes::Bytes;
use codebox_core::ProcessEvent;
use codebox_local::{LocalBox, LocalFactory};
use codebox_server::Server;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{KEY, OTHER_KEY, Reply, client, request, test_config};

/// A server whose sessions are LocalBoxes; stops when dropped.
struct LocalServer {
    addr: std::net::SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl LocalServer {
    async fn start() -> Self {
        let factory = LocalFactory::builder(LocalBox::builder()).build().unwrap();
        let server = Server::bind(test_config(), Arc::new(factory)).await.unwrap();
        let addr = server.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.run_until(async {
            let _ = stopped.await;
        }));
        Self { addr, _stop: stop }
    }

    async fn send(&self, method: Method, path: &str, key: &str, content_type: Option<&str>, body: Bytes) -> Reply {
        request(&client(), self.addr, method, path, Some(key), content_type, body).await
    }

    async fn json(&self, method: Method, path: &str, body: Value) -> Reply {
        self.send(method, path, KEY, Some("application/json"), Bytes::from(body.to_string())).await
    }

    async fn session(&self) -> String {
        let reply = self.json(Method::POST, "/v1/sessions", json!({})).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        reply.json()["id"].as_str().unwrap().to_owned()
    }
}

/// Send a request on a connection of its own and read the answer's head: the connection,
/// to read the body's lines from as they come, and the status line.
async fn raw_stream(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    json_body: &str,
) -> (tokio::io::BufReader<tokio::net::TcpStream>, String) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let content_type = if json_body.is_empty() { "" } else { "Content-Type: application/json\r\n" };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {KEY}\r\n\
         {content_type}Content-Length: {}\r\n\r\n{json_body}",
        json_body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut reader = tokio::io::BufReader::new(conn);
    let mut status = String::new();
    reader.read_line(&mut status).await.unwrap();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).await.unwrap();
        if header.trim().is_empty() {
            return (reader, status);
        }
    }
}

/// The next JSON line of a chunked NDJSON body (chunk sizes and keepalives skipped), or
/// `None` at its end.
async fn next_json_line(reader: &mut tokio::io::BufReader<tokio::net::TcpStream>) -> Option<Value> {
    use tokio::io::AsyncBufReadExt;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.unwrap() == 0 {
            return None;
        }
        if line.starts_with('{') && !line.contains("keepalive") {
            return Some(serde_json::from_str(line.trim()).unwrap());
        }
    }
}

/// The lines of an NDJSON reply, keepalives left out.
fn lines(reply: &Reply) -> Vec<Value> {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply
        .text()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l.get("keepalive").is_none())
        .collect()
}

/// The bytes of every `stdout` event (base64 on the wire).
fn stdout_of(lines: &[Value]) -> String {
    let mut out = Vec::new();
    for line in lines {
        if let ProcessEvent::Stdout { data } = serde_json::from_value(line["event"].clone()).unwrap() {
            out.extend_from_slice(&data);
        }
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_streams_its_events_as_ndjson_and_is_followed_written_to_and_signalled() {
    let server = LocalServer::start().await;
    let id = server.session().await;
    let base = format!("/v1/sessions/{id}/processes");

    let reply = server.json(Method::POST, &base, json!({"program": "sh", "args": ["-c", "echo hi; exit 3"]})).await;
    assert_eq!(reply.headers["content-type"], "application/x-ndjson");
    let events = lines(&reply);
    let seqs: Vec<u64> = events.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (0..events.len() as u64).collect::<Vec<_>>(), "{events:?}");
    assert_eq!(events[0]["event"]["type"], "start");
    assert!(events[0]["event"]["pid"].as_u64().is_some());
    assert_eq!(stdout_of(&events), "hi\n");
    let end = &events.last().unwrap()["event"];
    assert_eq!((end["type"].as_str(), end["exit_code"].as_i64()), (Some("end"), Some(3)), "{events:?}");

    // A `cat` reading its input; its first stream is read only up to its start line, by a
    // client that then goes away: the process runs on.
    // A `cat` reading its input; its first stream is read only up to its start line, by a
    // client that then goes away: the process runs on.
    let cat = json!({"program": "cat", "stdin": true, "tag": "echo"}).to_string();
    let pid = {
        let (mut first, _) = raw_stream(server.addr, "POST", &base, &cat).await;
        let start = next_json_line(&mut first).await.expect("a start line");
        assert_eq!(start["event"]["type"], "start", "{start}");
        start["event"]["pid"].as_u64().unwrap()
    };
    let listed = server.send(Method::GET, &base, KEY, None, Bytes::new()).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text());
    let listed = listed.json();
    let found = listed["processes"].as_array().unwrap().iter().find(|p| p["pid"].as_u64() == Some(pid));
    assert_eq!(found.map(|p| p["spec"]["tag"].clone()), Some(json!("echo")), "{listed}");

    // Followed again: the answer's head comes once the follower is subscribed, so what is
    // written after it reaches this follower.
    let (mut follower, status) = raw_stream(server.addr, "GET", &format!("{base}/{pid}"), "").await;
    assert!(status.contains(" 200 "), "{status}");
    let input = format!("{base}/{pid}/input");
    let written = server.send(Method::POST, &input, KEY, None, Bytes::from_static(b"\x00bytes as they are\n")).await;
    assert_eq!(written.status, StatusCode::NO_CONTENT, "{}", written.text());
    let closed = server.send(Method::POST, &format!("{base}/{pid}/close-input"), KEY, None, Bytes::new()).await;
    assert_eq!(closed.status, StatusCode::NO_CONTENT, "{}", closed.text());
    let mut events = Vec::new();
    while let Some(line) = next_json_line(&mut follower).await {
        events.push(line);
    }
    assert_ne!(events[0]["event"]["type"], "start", "following again has no start event: {events:?}");
    assert_eq!(stdout_of(&events), "\0bytes as they are\n", "{events:?}");
    let end = &events.last().unwrap()["event"];
    assert_eq!((end["type"].as_str(), end["exit_code"].as_i64()), (Some("end"), Some(0)), "{events:?}");

    // A sleeper, signalled.
    let sleeper = server.addr;
    let path = base.clone();
    let stream = tokio::spawn(async move {
        let body = Bytes::from(json!({"program": "sleep", "args": ["600"]}).to_string());
        request(&client(), sleeper, Method::POST, &path, Some(KEY), Some("application/json"), body).await
    });
    let pid = loop {
        let listed = server.send(Method::GET, &base, KEY, None, Bytes::new()).await.json();
        let sleeping =
            listed["processes"].as_array().unwrap().iter().find(|p| p["spec"]["program"] == "sleep").cloned();
        if let Some(p) = sleeping {
            break p["pid"].as_u64().unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let signal = server.json(Method::POST, &format!("{base}/{pid}/signal"), json!({"signal": "SIGKILL"})).await;
    assert_eq!(signal.status, StatusCode::NO_CONTENT, "{}", signal.text());
    let events = lines(&stream.await.unwrap());
    let end = &events.last().unwrap()["event"];
    assert_eq!((end["type"].as_str(), end["signal"].as_i64()), (Some("end"), Some(9)), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_processes_other_keys_and_malformed_bodies_are_refused() {
    let server = LocalServer::start().await;
    let id = server.session().await;
    let base = format!("/v1/sessions/{id}/processes");
    let none = Bytes::new;

    for (method, path) in [
        (Method::GET, format!("{base}/424242")),
        (Method::POST, format!("{base}/424242/close-input")),
        (Method::POST, format!("{base}/424242/input")),
    ] {
        let reply = server.send(method, &path, KEY, None, none()).await;
        assert_eq!((reply.status, reply.error_kind().as_str()), (StatusCode::NOT_FOUND, "not_found"), "{path}");
    }
    let reply = server.json(Method::POST, &format!("{base}/424242/signal"), json!({"signal": "SIGTERM"})).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text());

    // Another key's session is no session at all.
    for (method, path) in [(Method::GET, base.clone()), (Method::GET, format!("{base}/1"))] {
        let reply = server.send(method, &path, OTHER_KEY, None, none()).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
    }
    let body = Bytes::from(json!({"program": "true"}).to_string());
    let reply = server.send(Method::POST, &base, OTHER_KEY, Some("application/json"), body).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);

    let reply = server.send(Method::GET, &format!("{base}/not-a-number"), KEY, None, none()).await;
    assert_eq!((reply.status, reply.error_kind().as_str()), (StatusCode::BAD_REQUEST, "invalid_input"));
    for body in [json!({"program": ""}), json!({"args": ["x"]}), json!({"program": "sh", "stdin": "yes"})] {
        let reply = server.json(Method::POST, &base, body.clone()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}: {}", reply.text());
    }
    let reply = server.send(Method::POST, &base, KEY, Some("text/plain"), Bytes::from_static(b"{}")).await;
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // A signal that is not one of the three, to a process that exists.
    let stream = {
        let (addr, path) = (server.addr, base.clone());
        tokio::spawn(async move {
            let body = Bytes::from(json!({"program": "sleep", "args": ["600"]}).to_string());
            request(&client(), addr, Method::POST, &path, Some(KEY), Some("application/json"), body).await
        })
    };
    let pid = loop {
        let listed = server.send(Method::GET, &base, KEY, None, none()).await.json();
        if let Some(p) = listed["processes"].as_array().unwrap().first() {
            break p["pid"].as_u64().unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let signal = format!("{base}/{pid}/signal");
    for body in [json!({"signal": "SIGSEGV"}), json!({"signal": 9}), json!({})] {
        let reply = server.json(Method::POST, &signal, body.clone()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}: {}", reply.text());
    }
    // Input to a process started without `stdin`.
    let reply = server.send(Method::POST, &format!("{base}/{pid}/input"), KEY, None, Bytes::from_static(b"x")).await;
    assert_eq!((reply.status, reply.error_kind().as_str()), (StatusCode::BAD_REQUEST, "invalid_input"));
    // Deleting the session ends its process, and the process's stream with it.
    let deleted = server.send(Method::DELETE, &format!("/v1/sessions/{id}"), KEY, None, none()).await;
    assert!(deleted.status.is_success(), "{}", deleted.text());
    let events = lines(&stream.await.unwrap());
    assert_eq!(events.last().unwrap()["event"]["type"], "end", "{events:?}");
}

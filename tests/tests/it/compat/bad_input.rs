//! Bad input on the compatibility routes gets a clear JSON error and never takes the server
//! down; a client that goes away mid-execution gets its code interrupted.

use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::setup::TestServer;

const JSON: (&str, &str) = ("Content-Type", "application/json");

/// A multipart form with one file part, as the Python clients send it.
fn form(file_name: &str, content: &[u8]) -> (String, Vec<u8>) {
    let boundary = "compat-test-boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(content);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_json_errors() {
    let server = TestServer::start_with(|c| {
        c.with_max_upload_bytes(4096).with_api_key("second-key").with_body_idle_timeout(Duration::from_secs(1))
    })
    .await;
    let auth = server.auth();
    let auth = ("Authorization", auth.as_str());

    // No key, or an unknown one: 401 on both protocols, before anything else happens.
    let reply = server.request("GET", "/api/v1/codebox/start", &[], b"").await;
    assert_eq!((reply.status, reply.error_kind().as_str()), (401, "authentication"), "{}", reply.text());
    let wrong = ("Authorization", "Bearer not-a-key");
    let reply = server.request("POST", "/api/v2/codebox/abc/exec", &[wrong, JSON], br#"{"code":"1"}"#).await;
    assert_eq!((reply.status, reply.error_kind().as_str()), (401, "authentication"), "{}", reply.text());
    assert!(!reply.text().contains("not-a-key"), "the key is never echoed: {}", reply.text());
    assert_eq!(server.session_count().await, 0, "refused requests create no session");

    // Unknown routes, sessions and methods.
    let reply = server.request("GET", "/api/v1/codebox/12345/", &[auth], b"").await;
    assert_eq!((reply.status, reply.error_kind().as_str()), (404, "not_found"), "{}", reply.text());
    let reply = server.request("GET", "/api/v1/codebox/not-a-number/", &[auth], b"").await;
    assert_eq!(reply.status, 404, "{}", reply.text());
    let reply = server.request("GET", "/api/v2/codebox/a%20b/exec", &[auth], b"").await;
    assert_eq!(reply.status, 404, "{}", reply.text());
    let reply = server.request("GET", "/api/v3/anything", &[auth], b"").await;
    assert_eq!(reply.status, 404, "{}", reply.text());

    // A real 0.1 session for the rest.
    let reply = server.request("GET", "/api/v1/codebox/start", &[auth], b"").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    // The id is an integer below 2^128, beyond what serde_json's numbers hold: read the text.
    let text = reply.text();
    let id: u128 = text
        .strip_prefix("{\"id\":")
        .and_then(|rest| rest.strip_suffix('}'))
        .and_then(|digits| digits.parse().ok())
        .unwrap_or_else(|| panic!("start answers {{\"id\": <integer>}}, got {text}"));
    let v1 = |op: &str| format!("/api/v1/codebox/{id}/{op}");
    let reply = server.request("GET", &v1("run"), &[auth], b"").await;
    assert_eq!(reply.status, 405, "{}", reply.text());
    let reply = server.request("POST", &v1("run"), &[auth, JSON], b"{\"code\": ").await;
    assert_eq!((reply.status, reply.error_kind().as_str()), (400, "invalid_input"), "{}", reply.text());
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains("malformed JSON"), "{}", reply.text());
    let reply = server.request("POST", &v1("run"), &[auth, JSON], b"").await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    let reply = server.request("POST", &v1("install"), &[auth, JSON], br#"{"package_name": "  "}"#).await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    let reply = server.request("GET", &v1("download"), &[auth, JSON], br#"{"file_name": "../../etc/passwd"}"#).await;
    assert_eq!((reply.status, reply.error_kind().as_str()), (400, "unsafe_path"), "{}", reply.text());

    // Uploads: wrong content type, traversal, over the limit, cut short.
    let reply = server.request("POST", &v1("upload"), &[auth, JSON], br#"{"file": "x"}"#).await;
    assert_eq!(reply.status, 415, "{}", reply.text());
    let (ct, body) = form("../escape.txt", b"nope");
    let reply = server.request("POST", &v1("upload"), &[auth, ("Content-Type", &ct)], &body).await;
    assert_eq!((reply.status, reply.error_kind().as_str()), (400, "unsafe_path"), "{}", reply.text());
    let (ct, body) = form("big.bin", &[7u8; 64 * 1024]);
    let reply = server.request("POST", &v1("upload"), &[auth, ("Content-Type", &ct)], &body).await;
    assert_eq!((reply.status, reply.error_kind().as_str()), (413, "too_large"), "{}", reply.text());
    let (ct, body) = form("cut.txt", b"partial content");
    let cut = &body[..body.len() - 10];
    let reply = server.request("POST", &v1("upload"), &[auth, ("Content-Type", &ct)], cut).await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert!(reply.text().contains("closing boundary"), "{}", reply.text());
    // A client that stops sending in the middle of its upload is cut off.
    let (ct, body) = form("stalled.txt", b"the rest never comes");
    let stalled = server
        .send_declaring("POST", &v1("upload"), &[auth, ("Content-Type", &ct)], &body[..body.len() - 10], body.len())
        .await;
    let reply = TestServer::response(stalled).await;
    assert_eq!((reply.status, reply.error_kind().as_str()), (408, "timeout"), "{}", reply.text());
    for refused in ["big.bin", "cut.txt", "stalled.txt"] {
        let reply = server.request("GET", &format!("{}?file_name={refused}", v1("download")), &[auth], b"").await;
        assert_eq!(reply.status, 404, "a refused upload leaves no file behind: {refused}: {}", reply.text());
    }
    let (ct, body) = form("ok.txt", b"fits");
    let reply = server.request("POST", &v1("upload"), &[auth, ("Content-Type", &ct)], &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = server.request("GET", &format!("{}?file_name=ok.txt", v1("download")), &[auth], b"").await;
    assert_eq!((reply.status, reply.body.as_slice()), (200, b"fits".as_slice()), "{}", reply.text());
    assert_eq!(reply.header("content-disposition"), Some("attachment; filename=ok.txt"));
    assert_eq!(reply.header("content-length"), Some("4"));

    // The 0.2 protocol.
    let v2 = "/api/v2/codebox/bad-input-session";
    let reply =
        server.request("POST", &format!("{v2}/exec"), &[auth, JSON], br#"{"code": "1", "kernel": "cobol"}"#).await;
    assert_eq!((reply.status, reply.error_kind().as_str()), (400, "invalid_input"), "{}", reply.text());
    let reply = server.request("POST", &format!("{v2}/exec"), &[auth, JSON], br#"{"kernel": "bash"}"#).await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    let reply = server.request("POST", &format!("{v2}/exec"), &[auth, JSON], br#"{"code": "1", "timeout": -1}"#).await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    let reply = server.request("GET", &format!("{v2}/files/download/%2E%2E/%2E%2E/etc/passwd"), &[auth], b"").await;
    assert_eq!((reply.status, reply.error_kind().as_str()), (400, "unsafe_path"), "{}", reply.text());
    let reply = server.request("GET", &format!("{v2}/files/download/bad%zz"), &[auth], b"").await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    let reply = server.request("GET", &format!("{v2}/files/download/missing.txt"), &[auth], b"").await;
    assert_eq!((reply.status, reply.error_kind().as_str()), (404, "not_found"), "{}", reply.text());
    let (ct, body) = form("/etc/absolute.txt", b"nope");
    let reply = server.request("POST", &format!("{v2}/files/upload"), &[auth, ("Content-Type", &ct)], &body).await;
    assert_eq!((reply.status, reply.error_kind().as_str()), (400, "unsafe_path"), "{}", reply.text());

    // A session belongs to the key that made it: another key sees no 0.1 session by that id,
    // and the same 0.2 id names a box of its own.
    let other = ("Authorization", "Bearer second-key");
    let reply = server.request("GET", &v1(""), &[other], b"").await;
    assert_eq!((reply.status, reply.error_kind().as_str()), (404, "not_found"), "{}", reply.text());
    let reply = server.request("POST", &v1("stop"), &[other], b"").await;
    assert_eq!(reply.status, 404, "{}", reply.text());
    let reply = server.request("GET", &format!("{}?file_name=ok.txt", v1("download")), &[other], b"").await;
    assert_eq!(reply.status, 404, "{}", reply.text());
    let (ct, body) = form("mine.txt", b"first key");
    let reply = server.request("POST", &format!("{v2}/files/upload"), &[auth, ("Content-Type", &ct)], &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = server.request("GET", &format!("{v2}/files/download/mine.txt"), &[other], b"").await;
    assert_eq!(reply.status, 404, "another key's box has no such file: {}", reply.text());

    // After all that the server still serves, and this key's sessions are the two made above.
    let reply = server.request("POST", &format!("{v2}/exec"), &[auth, JSON], br#"{"code": "print(6 * 7)"}"#).await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "<txt>42\n</txt>"));
    assert_eq!(server.session_count().await, 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_or_a_timeout_interrupts_the_code_and_keeps_its_state() {
    let server = TestServer::start().await;
    let auth = server.auth();
    let headers = [("Authorization", auth.as_str()), JSON];
    let exec = "/api/v2/codebox/disconnect-test/exec";

    let reply = server.request("POST", exec, &headers, br#"{"code": "kept = 7"}"#).await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    let code = br#"{"code": "import time\nprint('started', flush=True)\ntime.sleep(3600)"}"#;
    let mut stream = server.send("POST", exec, &headers, code).await;
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("<txt>started") {
        let n = stream.read(&mut buf).await.expect("reading the execution stream");
        assert!(n > 0, "the stream ended early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    drop(stream);

    // The box is free again (the sleep was interrupted) and kept its state. The limit only
    // guards against a hang; without the interrupt this would wait an hour.
    let after = tokio::time::timeout(
        Duration::from_secs(120),
        server.request("POST", exec, &headers, br#"{"code": "print(kept)"}"#),
    )
    .await
    .expect("the execution after a disconnect must not wait for the abandoned one");
    assert_eq!((after.status, after.text().as_str()), (200, "<txt>7\n</txt>"));

    // The 0.2 server's `timeout` (seconds) interrupts the code; the box keeps its state.
    let reply =
        server.request("POST", exec, &headers, br#"{"code": "import time\ntime.sleep(3600)", "timeout": 1}"#).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(reply.text().starts_with("<err>") && reply.text().contains("timed out"), "{}", reply.text());
    let reply = server.request("POST", exec, &headers, br#"{"code": "print(kept)"}"#).await;
    assert_eq!(reply.text(), "<txt>7\n</txt>");

    let metrics = server.request("GET", "/metrics", &[("Authorization", auth.as_str())], b"").await.text();
    for line in [
        "codebox_executions_total{outcome=\"ok\"} 3\n",
        "codebox_executions_total{outcome=\"error\"} 1\n",
        "codebox_executions_total{outcome=\"disconnected\"} 1\n",
        "codebox_executions_running 0\n",
    ] {
        assert!(metrics.contains(line), "metrics lack {line:?}:\n{metrics}");
    }
    server.shutdown().await;
}

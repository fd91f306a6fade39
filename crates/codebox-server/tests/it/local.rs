//! The server in front of real LocalBox kernels.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use codebox_core::CodeBox;
use codebox_local::LocalBox;
use codebox_server::{BoxFactory, Server, factory_fn};
use hyper::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{KEY, Reply, client, request, test_config};

/// A server whose sessions are LocalBoxes; the boxes are kept for inspection.
struct LocalServer {
    addr: std::net::SocketAddr,
    boxes: Arc<Mutex<Vec<LocalBox>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<codebox_core::Result<()>>>,
}

// Provisioning can take minutes on a fresh machine: show why the first test waits.
#[allow(clippy::print_stderr)]
fn local_factory(boxes: Arc<Mutex<Vec<LocalBox>>>) -> Arc<dyn BoxFactory> {
    factory_fn(move |request| {
        let boxes = Arc::clone(&boxes);
        async move {
            let mut builder = LocalBox::builder().with_progress(|line| eprintln!("[provision] {line}"));
            if let Some(kernel) = request.kernel {
                builder = builder.with_kernel(kernel);
            }
            let lb = builder.build()?;
            boxes.lock().unwrap().push(lb.clone());
            Ok(Arc::new(lb) as Arc<dyn CodeBox>)
        }
    })
}

impl LocalServer {
    async fn start(config: codebox_server::ServerConfig) -> Self {
        let boxes = Arc::new(Mutex::new(Vec::new()));
        let server = Server::bind(config, local_factory(Arc::clone(&boxes))).await.unwrap();
        let addr = server.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(server.run_until(async {
            let _ = stopped.await;
        }));
        Self { addr, boxes, stop: Some(stop), task: Some(task) }
    }

    async fn shutdown(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        json_body: Option<serde_json::Value>,
        raw: Option<Bytes>,
    ) -> Reply {
        let (content_type, body) = match (json_body, raw) {
            (Some(j), _) => (Some("application/json"), Bytes::from(j.to_string())),
            (None, raw) => (None, raw.unwrap_or_default()),
        };
        request(&client(), self.addr, method, path, Some(KEY), content_type, body).await
    }

    async fn session(&self) -> String {
        let reply = self.send(Method::POST, "/v1/sessions", Some(json!({})), None).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        reply.json()["id"].as_str().unwrap().to_owned()
    }

    async fn execute(&self, id: &str, code: &str) -> Vec<serde_json::Value> {
        let reply =
            self.send(Method::POST, &format!("/v1/sessions/{id}/execute"), Some(json!({"code": code})), None).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        reply.lines().into_iter().filter(|l| l.get("keepalive").is_none()).collect()
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
    }
}

fn stdout_of(lines: &[serde_json::Value]) -> String {
    lines
        .iter()
        .filter(|l| l["event"]["type"] == "stdout")
        .map(|l| l["event"]["text"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_runs_in_a_real_kernel_and_streams_its_events() {
    let server = LocalServer::start(test_config()).await;
    let id = server.session().await;
    let lines = server.execute(&id, "x = 20\nprint('hello')\nx + 22").await;
    assert_eq!(stdout_of(&lines), "hello\n");
    let result = lines.iter().find(|l| l["event"]["type"] == "result").expect("a result event");
    assert_eq!(result["event"]["data"]["text/plain"], "42");
    let last = lines.last().unwrap();
    assert_eq!(last["event"]["type"], "end");
    assert_eq!(last["event"]["outcome"], "ok");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["seq"], i, "seq counts from 0 with no gaps");
    }
    let lines = server.execute(&id, "1/0").await;
    let error = lines.iter().find(|l| l["event"]["type"] == "error").expect("an error event");
    assert_eq!(error["event"]["name"], "ZeroDivisionError");
    assert_eq!(lines.last().unwrap()["event"]["outcome"], "error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_execution_gets_the_kernel_interrupted() {
    let server = LocalServer::start(test_config()).await;
    let id = server.session().await;
    let code = "import time\nstate = 'started'\nprint('go', flush=True)\ntime.sleep(60)\nstate = 'finished'";
    let body = json!({"code": code}).to_string();
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    let req = format!(
        "POST /v1/sessions/{id}/execute HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("go\\n") {
        let mut buf = [0u8; 1024];
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "the stream ended early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    drop(conn);
    // Had the sleep not been interrupted, this would run after it and see 'finished'.
    let lines = server.execute(&id, "print(state)").await;
    if stdout_of(&lines) != "started\n" {
        // Say why the kernel lost its state (a restart's count and cause are in the status).
        let status = server.send(Method::GET, &format!("/v1/sessions/{id}"), None, None).await;
        panic!("the kernel lost its state: {lines:?}\nsession: {}", status.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_move_through_the_server_intact_and_over_limit_uploads_leave_nothing() {
    let server = LocalServer::start(test_config().with_max_upload_bytes(4 << 20)).await;
    let id = server.session().await;
    let content: Bytes = (0..3_000_000u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into();
    let put =
        server.send(Method::PUT, &format!("/v1/sessions/{id}/files/data/blob.bin"), None, Some(content.clone())).await;
    assert_eq!(put.status, StatusCode::CREATED, "{}", put.text());
    let lines = server.execute(&id, "import os\nprint(os.path.getsize('data/blob.bin'))").await;
    assert_eq!(stdout_of(&lines), "3000000\n");
    let got = server.send(Method::GET, &format!("/v1/sessions/{id}/files/data/blob.bin"), None, None).await;
    assert_eq!(got.headers["content-length"], "3000000");
    assert!(got.body == content, "the downloaded bytes are the uploaded bytes");

    // Streamed without a length and over the limit: 413, and no file in the box.
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "PUT /v1/sessions/{id}/files/data/huge.bin HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'z'; 1 << 20];
    let mut response = Vec::new();
    for _ in 0..8 {
        if conn.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await.is_err()
            || conn.write_all(&chunk).await.is_err()
            || conn.write_all(b"\r\n").await.is_err()
        {
            break;
        }
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    let lines = server.execute(&id, "import os\nprint(sorted(os.listdir('data')))").await;
    assert_eq!(stdout_of(&lines), "['blob.bin']\n");

    // A symlink leading outside the working directory is refused.
    server.execute(&id, "import os\nos.symlink('/etc', 'outside')").await;
    let reply = server.send(Method::GET, &format!("/v1/sessions/{id}/files/outside/passwd"), None, None).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    assert_eq!(reply.error_kind(), "unsafe_path");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_make_dir_rename_and_a_listing_depth_through_the_server() {
    let server = LocalServer::start(test_config()).await;
    let id = server.session().await;
    let at = |rest: &str| format!("/v1/sessions/{id}/{rest}");
    let put = server.send(Method::PUT, &at("files/a/f.txt"), None, Some(Bytes::from_static(b"abc"))).await;
    assert_eq!(put.status, StatusCode::CREATED, "{}", put.text());

    let stat = server.send(Method::GET, &at("stat/a/f.txt"), None, None).await;
    assert_eq!(stat.status, StatusCode::OK, "{}", stat.text());
    let info = stat.json();
    assert_eq!((info["kind"].as_str(), info["size"].as_u64()), (Some("file"), Some(3)), "{info}");
    assert!(info["mode"].is_u64() && info["modified"].is_f64(), "{info}");
    assert_eq!(server.send(Method::GET, &at("stat/a"), None, None).await.json()["kind"], "dir");
    let missing = server.send(Method::GET, &at("stat/a/missing"), None, None).await;
    assert_eq!((missing.status, missing.error_kind()), (StatusCode::NOT_FOUND, "not_found".into()));

    // HEAD answers what GET would, with no body.
    let head = server.send(Method::HEAD, &at("files/a/f.txt"), None, None).await;
    assert_eq!((head.status, head.headers["content-length"].to_str().unwrap()), (StatusCode::OK, "3"));
    assert!(head.body.is_empty());
    assert_eq!(server.send(Method::HEAD, &at("files/a/missing"), None, None).await.status, StatusCode::NOT_FOUND);

    let made = server.send(Method::POST, &at("dirs/a/b/c"), None, None).await;
    assert_eq!((made.status, made.json()["kind"].as_str()), (StatusCode::OK, Some("dir")), "{}", made.text());
    assert_eq!(server.send(Method::POST, &at("dirs/a/b"), None, None).await.status, StatusCode::OK);
    let over_file = server.send(Method::POST, &at("dirs/a/f.txt"), None, None).await;
    assert_eq!((over_file.status, over_file.error_kind()), (StatusCode::BAD_REQUEST, "invalid_input".into()));

    let rename = |from: &str, to: &str| json!({"from": from, "to": to});
    let moved = server.send(Method::POST, &at("rename"), Some(rename("a/f.txt", "a/b/g.txt")), None).await;
    assert_eq!((moved.status, moved.json()["path"].as_str()), (StatusCode::OK, Some("a/b/g.txt")), "{}", moved.text());
    let onto_dir = server.send(Method::POST, &at("rename"), Some(rename("a/b/g.txt", "a/b/c")), None).await;
    assert_eq!((onto_dir.status, onto_dir.error_kind()), (StatusCode::BAD_REQUEST, "invalid_input".into()));
    let gone = server.send(Method::POST, &at("rename"), Some(rename("a/f.txt", "a/h.txt")), None).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND, "{}", gone.text());
    for bad in [rename("../x", "a/y"), rename("a/b/g.txt", "/etc/x"), rename("a/b/g.txt", "a/../../x")] {
        let reply = server.send(Method::POST, &at("rename"), Some(bad.clone()), None).await;
        assert_eq!((reply.status, reply.error_kind()), (StatusCode::BAD_REQUEST, "unsafe_path".into()), "{bad}");
    }
    let extra = json!({"from": "a", "to": "b", "force": true});
    let extra = server.send(Method::POST, &at("rename"), Some(extra), None).await;
    assert_eq!(extra.status, StatusCode::BAD_REQUEST, "an unknown field is refused: {}", extra.text());
    let malformed = server.send(Method::POST, &at("rename"), None, Some(Bytes::from_static(b"{"))).await;
    assert_eq!(malformed.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}", malformed.text());
    for bad in ["stat/..%2Fetc%2Fpasswd", "dirs/%2Ftmp%2Fx", "stat/a/..%2F..%2Fx"] {
        let method = if bad.starts_with("stat") { Method::GET } else { Method::POST };
        let reply = server.send(method, &at(bad), None, None).await;
        assert_eq!((reply.status, reply.error_kind()), (StatusCode::BAD_REQUEST, "unsafe_path".into()), "{bad}");
    }
    server.execute(&id, "import os\nos.symlink('/etc', 'outside')").await;
    let through = server.send(Method::GET, &at("stat/outside/passwd"), None, None).await;
    assert_eq!(through.error_kind(), "unsafe_path", "{}", through.text());
    assert_eq!(server.send(Method::GET, &at("stat/outside"), None, None).await.json()["kind"], "symlink");

    let list = |depth: &str| {
        let path = at(&format!("files?dir=a&depth={depth}"));
        let server = &server;
        async move { server.send(Method::GET, &path, None, None).await }
    };
    let paths = |reply: Reply| -> Vec<String> {
        reply.json().as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(paths(list("1").await), ["a/b"]);
    assert_eq!(paths(list("2").await), ["a/b", "a/b/c", "a/b/g.txt"]);
    for bad in ["0", "129", "two", "-1"] {
        assert_eq!(list(bad).await.status, StatusCode::BAD_REQUEST, "depth={bad}");
    }
    let both = server.send(Method::GET, &at("files?dir=a&depth=1&recursive=true"), None, None).await;
    assert_eq!(both.status, StatusCode::BAD_REQUEST, "{}", both.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_leaves_no_kernel_behind() {
    let mut server = LocalServer::start(test_config()).await;
    let a = server.session().await;
    let _b = server.session().await;
    server.execute(&a, "print(1)").await;
    let mut pids = Vec::new();
    let boxes = server.boxes.lock().unwrap().clone();
    for lb in &boxes {
        pids.push(lb.kernel_pid().await.expect("a running kernel"));
    }
    assert_eq!(pids.len(), 2);
    server.shutdown().await;
    for lb in &boxes {
        assert_eq!(lb.status().await.unwrap().state, codebox_core::BoxState::Stopped);
    }
    for pid in pids {
        crate::support::eventually("the kernel process to exit", || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.split_whitespace().nth(2) == Some("Z"))
                .unwrap_or(true)
        })
        .await;
    }
}

// Code contexts through the server: made with 201, listed default first, executions pick
// one with `options.context`, variables stay in theirs; unknown contexts are 404 on every
// route, bad bodies 400, the default context cannot be deleted, and deleting the session
// ends every context's kernel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_contexts_through_the_server() {
    let server = LocalServer::start(test_config()).await;
    let id = server.session().await;
    let at = |rest: &str| format!("/v1/sessions/{id}/{rest}");
    let made = server.send(Method::POST, &at("contexts"), Some(json!({})), None).await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.text());
    let ctx = made.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(made.json()["language"], "python");
    assert_eq!(made.json()["default"], false);
    // Without a body: the session's own language and directory.
    let plain = server.send(Method::POST, &at("contexts"), None, None).await;
    assert_eq!(plain.status, StatusCode::CREATED, "{}", plain.text());
    let listed = server.send(Method::GET, &at("contexts"), None, None).await;
    let listed = listed.json();
    let ids: Vec<&str> = listed["contexts"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 3, "{listed}");
    assert_eq!(ids[0], "default");
    assert!(ids.contains(&ctx.as_str()));

    let execute_at = at("execute");
    let run = |code: &str, context: &str| {
        let body = json!({"code": code, "options": {"context": context}});
        server.send(Method::POST, &execute_at, Some(body), None)
    };
    assert_eq!(run("v = 'in context'", &ctx).await.status, StatusCode::OK);
    let lines = run("print(v)", &ctx).await.lines();
    assert_eq!(stdout_of(&lines), "in context\n");
    let lines = server.execute(&id, "print('v' in globals())").await;
    assert_eq!(stdout_of(&lines), "False\n");

    let unknown = run("1", "no-such-context").await;
    assert_eq!((unknown.status, unknown.error_kind()), (StatusCode::NOT_FOUND, "not_found".to_owned()));
    assert!(unknown.text().contains("no-such-context"), "{}", unknown.text());
    for (method, rest) in [
        (Method::POST, "contexts/no-such-context/restart"),
        (Method::POST, "contexts/no-such-context/interrupt"),
        (Method::DELETE, "contexts/no-such-context"),
    ] {
        let reply = server.send(method, &at(rest), None, None).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{rest}: {}", reply.text());
    }
    let default = server.send(Method::DELETE, &at("contexts/default"), None, None).await;
    assert_eq!(default.status, StatusCode::BAD_REQUEST, "{}", default.text());
    for bad in [json!({"language": "bash"}), json!({"lang": "python"}), json!({"cwd": "../out"}), json!({"cwd": 3})] {
        let reply = server.send(Method::POST, &at("contexts"), Some(bad.clone()), None).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}: {}", reply.text());
    }
    let malformed = request(
        &client(),
        server.addr,
        Method::POST,
        &at("contexts"),
        Some(KEY),
        Some("application/json"),
        Bytes::from_static(b"{"),
    )
    .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST, "{}", malformed.text());
    let other_key = request(
        &client(),
        server.addr,
        Method::GET,
        &at("contexts"),
        Some(crate::support::OTHER_KEY),
        None,
        Bytes::new(),
    )
    .await;
    assert_eq!(other_key.status, StatusCode::NOT_FOUND);

    let restarted = server.send(Method::POST, &at(&format!("contexts/{ctx}/restart")), None, None).await;
    assert_eq!(restarted.status, StatusCode::NO_CONTENT, "{}", restarted.text());
    let lines = run("print('v' in globals())", &ctx).await.lines();
    assert_eq!(stdout_of(&lines), "False\n");
    let interrupted = server.send(Method::POST, &at(&format!("contexts/{ctx}/interrupt")), None, None).await;
    assert_eq!(interrupted.status, StatusCode::NO_CONTENT, "{}", interrupted.text());

    let lb = server.boxes.lock().unwrap()[0].clone();
    let pid = lb.context_kernel_pid(&ctx).await.expect("the context's kernel");
    let deleted = server.send(Method::DELETE, &format!("/v1/sessions/{id}"), None, None).await;
    assert!(deleted.status.is_success(), "{}", deleted.text());
    crate::support::eventually("the context's kernel to exit", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
            .unwrap_or(true)
    })
    .await;
}

// A session's live metrics through the server: the newest sample, the sampler's series
// after a moment, bad `since` refused, and once the box stops, its last sample marked final
// for as long as the session is listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_metrics_are_sampled_into_a_series_and_end_with_a_final_sample() {
    let config = test_config().with_metrics_interval(codebox_server::MIN_METRICS_INTERVAL);
    let server = LocalServer::start(config).await;
    let id = server.session().await;
    let path = format!("/v1/sessions/{id}/metrics");
    let latest = server.send(Method::GET, &path, None, None).await;
    assert_eq!(latest.status, StatusCode::OK, "{}", latest.text());
    let first: codebox_core::BoxMetrics = serde_json::from_value(latest.json()).unwrap();
    assert!(!first.final_sample && first.processes.is_some_and(|p| p >= 1), "{first:?}");
    assert!(first.memory_used_bytes.is_some() && first.cpu_percent.is_some(), "{first:?}");

    // The sampler adds to the series by itself.
    let series = |since: u64| {
        let path = format!("{path}?since={since}");
        let server = &server;
        async move {
            let reply = server.send(Method::GET, &path, None, None).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            serde_json::from_value::<codebox_http::wire::MetricsSeries>(reply.json()).unwrap().samples
        }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let samples = loop {
        let samples = series(0).await;
        if samples.len() >= 3 {
            break samples;
        }
        assert!(std::time::Instant::now() < deadline, "the sampler added nothing: {samples:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(samples.windows(2).all(|w| w[0].timestamp_ms <= w[1].timestamp_ms), "oldest first");
    let middle = samples[1].timestamp_ms;
    assert!(series(middle).await.iter().all(|s| s.timestamp_ms > middle), "only samples after `since`");
    assert!(series(u64::MAX).await.is_empty());

    for bad in ["since=yesterday", "since=-5", "since=", "limit=3"] {
        let reply = server.send(Method::GET, &format!("{path}?{bad}"), None, None).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}: {}", reply.text());
        assert_eq!(reply.error_kind(), "invalid_input", "{bad}");
    }
    let reply = server.send(Method::GET, "/v1/sessions/nobody/metrics", None, None).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);

    // The box stops behind the session, which stays listed: its last sample, marked final.
    let lb = server.boxes.lock().unwrap()[0].clone();
    lb.stop().await.unwrap();
    let last = server.send(Method::GET, &path, None, None).await;
    assert_eq!(last.status, StatusCode::OK, "{}", last.text());
    let last: codebox_core::BoxMetrics = serde_json::from_value(last.json()).unwrap();
    assert!(last.final_sample, "{last:?}");
    let newest = series(0).await;
    assert_eq!(newest.last(), Some(&last), "the series ends with the final sample");
    assert!(newest[..newest.len() - 1].iter().all(|s| !s.final_sample));

    let deleted = server.send(Method::DELETE, &format!("/v1/sessions/{id}"), None, None).await;
    assert!(deleted.status.is_success(), "{}", deleted.text());
    assert_eq!(server.send(Method::GET, &path, None, None).await.status, StatusCode::NOT_FOUND);
}

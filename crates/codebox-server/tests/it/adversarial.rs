//! Adversarial cases that need the server (isolation research, section 10): sessions as
//! `codebox serve` runs them as root, each under its own uid and cgroup.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use codebox_core::CodeBox;
use codebox_local::sandbox::uid::{UidAllocator, processes_in_range};
use codebox_local::{Isolation, Limits, LocalBox};
use codebox_server::{Server, ServerConfig, factory_fn};
use http_body_util::{BodyExt, Full};
use hyper::{Method, StatusCode};
use serde_json::json;

use crate::support::{KEY, test_config};

/// Each test its own uid range: a uid is killed whole when its session's kernel dies.
struct Sandboxed {
    uids: std::ops::Range<u32>,
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<codebox_core::Result<()>>>,
}

impl Sandboxed {
    async fn start(config: ServerConfig, limits: Limits, range: std::ops::Range<u32>) -> Self {
        assert!(codebox_local::sandbox::uid::running_as_root(), "these cases need root (CI runs as root)");
        let uids = UidAllocator::new(range.clone()).unwrap();
        let factory = factory_fn(move |_kernel| {
            let (uids, limits) = (uids.clone(), limits.clone());
            async move {
                let lb = LocalBox::builder()
                    .with_isolation(Isolation::Bubblewrap)
                    .with_require_isolation(true)
                    .with_session_uids(uids)
                    .with_cgroups(true)
                    .with_limits(limits)
                    .build()?;
                Ok(Arc::new(lb) as Arc<dyn CodeBox>)
            }
        });
        let server = Server::bind(config, factory).await.unwrap();
        let addr = server.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(server.run_until(async {
            let _ = stopped.await;
        }));
        Self { uids: range, addr, stop: Some(stop), task: Some(task) }
    }

    async fn send(&self, method: Method, path: &str, body: Option<serde_json::Value>) -> (StatusCode, String) {
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<Full<Bytes>>();
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
            .header("authorization", format!("Bearer {KEY}"));
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let resp = client.request(req.body(Full::new(body)).unwrap()).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    async fn execute(&self, id: &str, code: &str) -> String {
        let (status, body) =
            self.send(Method::POST, &format!("/v1/sessions/{id}/execute"), Some(json!({"code": code}))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
        // Every session's processes are gone with the server's boxes.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !processes_in_range(&self.uids).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "session processes outlived the server: {:?}",
                processes_in_range(&self.uids)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// 3 (through the server) and 1: a shared-memory hog becomes a typed `kernel_died` error
// naming the OOM kill, the session heals; a fork bomb hits pids.max while /health answers.
#[tokio::test]
async fn oom_and_fork_bomb_surface_as_typed_errors_and_sessions_heal() {
    let server =
        Sandboxed::start(test_config(), Limits::server().with_memory(384 << 20).with_pids(Some(64)), 320_000..320_010)
            .await;
    let (status, body) = server.send(Method::POST, "/v1/sessions", Some(json!({"id": "hog"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(body.contains("\"isolation\":\"bubblewrap\""), "{body}");
    let out = server.execute("hog", "import os\nprint('uid', os.getuid())").await;
    assert!(out.contains("uid 320"), "the session runs under its own uid: {out}");
    let out = server
        .execute("hog", "import mmap\nm = mmap.mmap(-1, 2 * 1024**3)\nfor i in range(0, len(m), 4096): m[i] = 1")
        .await;
    assert!(out.contains("kernel_died") && out.contains("out of memory"), "{out}");
    let out = server.execute("hog", "1+1").await;
    assert!(out.contains("\"text/plain\":\"2\""), "{out}");
    let (_, info) = server.send(Method::GET, "/v1/sessions/hog", None).await;
    assert!(info.contains("\"restarts\":1"), "{info}");

    let bomb = "import os, time\nfails = 0\ndeadline = time.time() + 2\nwhile time.time() < deadline:\n    try:\n        if os.fork() == 0:\n            time.sleep(max(0, deadline - time.time())); os._exit(0)\n    except BlockingIOError:\n        fails += 1; time.sleep(0.01)\nprint('fails', fails > 0)";
    let bombing = server.execute("hog", bomb);
    let health = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        server.send(Method::GET, "/health", None).await
    };
    let (out, (health_status, _)) = tokio::join!(bombing, health);
    assert_eq!(health_status, StatusCode::OK);
    assert!(out.contains("fails True"), "{out}");
    server.shutdown().await;
}

// 23: above capacity new sessions are refused with 503; one hog does not hurt its neighbour.
#[tokio::test]
async fn admission_control_and_neighbours_unaffected() {
    let server =
        Sandboxed::start(test_config().with_max_sessions(2), Limits::server().with_memory(256 << 20), 320_010..320_020)
            .await;
    for id in ["a", "b"] {
        let (status, body) = server.send(Method::POST, "/v1/sessions", Some(json!({"id": id}))).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, _) = server.send(Method::POST, "/v1/sessions", Some(json!({"id": "c"}))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    server.execute("a", "kept = 7").await;
    let out =
        server.execute("b", "import mmap\nm = mmap.mmap(-1, 1024**3)\nfor i in range(0, len(m), 4096): m[i] = 1").await;
    assert!(out.contains("out of memory"), "{out}");
    let out = server.execute("a", "kept").await;
    assert!(out.contains("\"text/plain\":\"7\""), "{out}");
    server.shutdown().await;
}

//! Adversarial cases that need the server (isolation research, section 10): sessions as
//! `codebox serve` runs them as root, each under its own uid and cgroup.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use codebox_core::CodeBox;
use codebox_local::{Isolation, Limits, LocalBox, SandboxPolicy, UidAllocator};
use codebox_sandbox::{processes_in_range, running_as_root};
use codebox_server::{Server, ServerConfig, factory_fn};
use http_body_util::{BodyExt, Full};
use hyper::{Method, StatusCode};
use serde_json::json;

use crate::support::{KEY, client, request, test_config};

/// The test process's resident memory, in bytes (it hosts the server and its boxes).
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb * 1024
}

/// Sockets whose local port is `port` and that are not listening: the server's ends of
/// its open connections (each one a descriptor of this process).
fn open_connections(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap() + &std::fs::read_to_string("/proc/net/tcp6").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace().skip(1);
            let local = f.next()?;
            let state = f.nth(1)?;
            let local_port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            // 0A is LISTEN, 07 CLOSE (gone).
            (local_port == port && state != "0A" && state != "07").then_some(())
        })
        .count()
}

/// Tasks alive on this test's runtime (the server's accept loop, connections, boxes).
fn alive_tasks() -> usize {
    tokio::runtime::Handle::current().metrics().num_alive_tasks()
}

/// Poll until `cond` holds; a generous deadline, no timing asserted.
async fn within(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the sandboxed server cases can run here: their sessions get their own uids and
/// cgroups, which needs root. Without it a case is reported as skipped (a failure in CI).
fn needs_root() -> bool {
    codebox_core::conformance::requires(
        "root (session uids and cgroups); run the tests as root",
        codebox_local::running_as_root(),
    )
}

/// Each test its own uid range: a uid is killed whole when its session's kernel dies.
struct Sandboxed {
    uids: std::ops::Range<u32>,
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<codebox_core::Result<()>>>,
}

impl Sandboxed {
    async fn start(config: ServerConfig, limits: Limits, range: std::ops::Range<u32>) -> Self {
        assert!(running_as_root(), "these cases need root (CI runs as root)");
        let uids = UidAllocator::new(range.clone()).unwrap();
        let policy = SandboxPolicy::default()
            .with_isolation(Isolation::Bubblewrap)
            .with_require_isolation(true)
            .with_session_uids(Some(uids))
            .with_cgroups(true)
            .with_limits(limits);
        // A plain factory, not `LocalFactory`: each case has a uid range of its own and no
        // session root to claim.
        let factory = factory_fn(move |_request| {
            let policy = policy.clone();
            async move {
                let lb = LocalBox::builder().with_sandbox(policy).build()?;
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
        let content_type = body.is_some().then_some("application/json");
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let reply = request(&client(), self.addr, method, path, Some(KEY), content_type, body).await;
        (reply.status, reply.text())
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
    if !needs_root() {
        return;
    }
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
    if !needs_root() {
        return;
    }
    let server =
        // One key may take every slot here: this is the server-wide cap.
        Sandboxed::start(
            test_config().with_max_sessions(2).with_max_sessions_per_key(2),
            Limits::server().with_memory(256 << 20),
            320_010..320_020,
        )
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

// 22: a client that goes away mid-stream. Policy (docs/native-api.md): the execution is
// interrupted; the session keeps its state and takes the next execution; the server's
// connection, its descriptor and its tasks are gone again.
#[tokio::test]
async fn a_client_gone_mid_stream_cancels_the_execution_and_leaves_nothing_behind() {
    if !needs_root() {
        return;
    }
    let server = Sandboxed::start(test_config(), Limits::server(), 322_010..322_020).await;
    let (status, body) = server.send(Method::POST, "/v1/sessions", Some(json!({"id": "s"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    server.execute("s", "x = 41").await;
    let port = server.addr.port();
    within("the setup connections close", Duration::from_secs(10), || open_connections(port) == 0).await;
    let baseline = alive_tasks();

    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    let conn = tokio::spawn(conn);
    // The count is written whole (a rename), so an interrupt between opening and writing
    // cannot leave an empty file behind.
    let code = "import os, time\nfor i in range(2000):\n    open('progress.new', 'w').write(str(i))\n    \
                os.replace('progress.new', 'progress')\n    print(i, flush=True)\n    time.sleep(0.005)";
    let req = hyper::Request::post("/v1/sessions/s/execute")
        .header("host", server.addr.to_string())
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(json!({"code": code}).to_string())))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut seen = String::new();
    while !seen.contains("\"stdout\"") {
        let frame = body.frame().await.expect("the stream goes on").unwrap();
        if let Some(data) = frame.data_ref() {
            seen.push_str(&String::from_utf8_lossy(data));
        }
    }
    assert!(open_connections(port) >= 1);
    // The client goes away: body, sender and connection dropped, the socket closed.
    drop(body);
    drop(sender);
    conn.abort();
    let _ = conn.await;

    within("the server closes its end", Duration::from_secs(10), || open_connections(port) == 0).await;
    within("the server's tasks return to their baseline", Duration::from_secs(10), || alive_tasks() <= baseline).await;
    // The loop was interrupted rather than left to run its 2000 rounds, and the session
    // kept its variables and takes the next execution.
    let out = server.execute("s", "print('progress', open('progress').read())\nx + 1").await;
    assert!(out.contains("\"text/plain\":\"42\""), "{out}");
    let progress: u32 = out
        .split("progress ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no progress in {out}"));
    assert!(progress < 1999, "the execution was cancelled, not run to its end: {progress}");
    let (_, metrics) = server.send(Method::GET, "/metrics", None).await;
    assert!(metrics.contains("codebox_executions_total{outcome=\"disconnected\"} 1"), "{metrics}");
    within("the later connections close too", Duration::from_secs(10), || open_connections(port) == 0).await;
    server.shutdown().await;
}

/// Set in the process that runs the flood alone.
const FLOOD_CHILD: &str = "CODEBOX_TEST_FLOOD_ALONE";

// 7 through the server: 100 MB of stdout in a loop. The client gets at most the output cap
// plus a truncation event, the memory of the process hosting the server stays bounded, and
// a neighbouring session answers meanwhile. The memory is that of a process of its own
// (this test binary again, running only this test): other tests would blur it.
#[test]
fn an_output_flood_is_capped_and_bounded_in_memory_while_a_neighbour_runs() {
    if !needs_root() {
        return;
    }
    if std::env::var_os(FLOOD_CHILD).is_some() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(output_flood());
        return;
    }
    let name = format!(
        "{}::an_output_flood_is_capped_and_bounded_in_memory_while_a_neighbour_runs",
        module_path!().split_once("::").unwrap().1
    );
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([&name, "--exact", "--nocapture", "--test-threads=1"])
        .env(FLOOD_CHILD, "1")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "the flood ran in its own process: {text}");
}

async fn output_flood() {
    let server = Sandboxed::start(test_config(), Limits::server(), 322_020..322_030).await;
    for id in ["flood", "calm"] {
        let (status, body) = server.send(Method::POST, "/v1/sessions", Some(json!({"id": id}))).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    server.execute("calm", "warm = 1").await;
    let baseline = rss();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(baseline));
    let sampler = {
        let peak = Arc::clone(&peak);
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // 100 MiB in 1 KiB lines, flushed every MiB.
    let code = "import sys\nline = 'x' * 1023 + '\\n'\nfor _ in range(100):\n    for _ in range(1024):\n        sys.stdout.write(line)\n    sys.stdout.flush()\nprint('done')";
    let flood = async {
        let client = client();
        let req = hyper::Request::post(format!("http://{}/v1/sessions/flood/execute", server.addr))
            .header("authorization", format!("Bearer {KEY}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(json!({"code": code}).to_string())))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        // Read line by line, keeping only the current line.
        let (mut body, mut pending) = (resp.into_body(), Vec::<u8>::new());
        let (mut total, mut stdout, mut truncated, mut ended) = (0usize, 0usize, false, false);
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.unwrap().into_data() else { continue };
            total += data.len();
            pending.extend_from_slice(&data);
            while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=nl).collect();
                let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
                match v["event"]["type"].as_str() {
                    Some("stdout") => stdout += v["event"]["text"].as_str().unwrap().len(),
                    Some("truncated") => truncated = true,
                    Some("end") => ended = true,
                    _ => {}
                }
            }
        }
        (total, stdout, truncated, ended)
    };
    let neighbour = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.execute("calm", "sum(range(10))").await
    };
    let ((total, stdout, truncated, ended), calm) = tokio::join!(flood, neighbour);
    sampler.abort();
    let growth = peak.load(std::sync::atomic::Ordering::Relaxed).saturating_sub(baseline);
    assert!(truncated && ended, "a truncation event, then the end");
    assert!(stdout <= 10 << 20, "at most the 10 MiB cap reaches the client: {stdout}");
    assert!(stdout >= 1 << 20, "the head and tail of the output arrive: {stdout}");
    assert!(total < 12 << 20, "the stream stays near the cap: {total}");
    assert!(growth < 64 << 20, "the server's memory grew by {growth} bytes while 100 MB went through ({total} sent)");
    assert!(calm.contains("\"text/plain\":\"45\""), "the neighbour answered: {calm}");
    server.shutdown().await;
}

//! A server on 127.0.0.1:0 in this process, a scripted box behind it, and a small client.
//!
//! The scripted box runs a tiny command language instead of Python so that the HTTP layer
//! can be exercised without kernels: `print TEXT` writes TEXT to stdout, `wait` writes
//! `waiting` and then runs until it is interrupted or its stream is dropped, `die` fails the
//! box mid-execution, and `raise` reports a user exception.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use codebox_core::{
    BoxState, BoxStatus, ByteStream, Capabilities, CodeBox, CodeBoxError, CommandOutput, CommandSpec, ErrorInfo,
    EventStream, ExecEvent, FileInfo, KernelDeath, Outcome, Result, RunOptions, normalize_box_path,
};
use codebox_server::{BoxFactory, BoxRequest, Server, ServerConfig};
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{Notify, oneshot};

pub(crate) const KEY: &str = "test-key-1";
pub(crate) const OTHER_KEY: &str = "test-key-2";

/// An HTTP client for the test servers.
pub(crate) fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Send one request to the server at `addr`, as `key` when given; returns status, headers
/// and the whole body.
pub(crate) async fn request(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    method: Method,
    path: &str,
    key: Option<&str>,
    content_type: Option<&str>,
    body: Bytes,
) -> Reply {
    let mut req = Request::builder().method(method).uri(format!("http://{addr}{path}"));
    if let Some(key) = key {
        req = req.header("authorization", format!("Bearer {key}"));
    }
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = client.request(req.body(Full::new(body)).unwrap()).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply { status, headers, body }
}

/// What the tests can observe of one scripted box.
#[derive(Debug, Default)]
pub(crate) struct Probe {
    pub(crate) stopped: AtomicBool,
    pub(crate) cancelled: AtomicUsize,
    pub(crate) interrupted: AtomicUsize,
    pub(crate) uploads_started: AtomicUsize,
    interrupt: Notify,
}

#[derive(Debug)]
pub(crate) struct ScriptedBox {
    id: String,
    files: Mutex<BTreeMap<String, Bytes>>,
    probe: Arc<Probe>,
}

struct CancelOnDrop {
    probe: Arc<Probe>,
    finished: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.finished {
            self.probe.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[async_trait]
impl CodeBox for ScriptedBox {
    fn id(&self) -> &str {
        &self.id
    }

    fn capabilities(&self) -> Capabilities {
        // It lists no packages, keeps no history, has no code contexts, ports or background
        // processes, measures nothing and lists no artifacts: those are the trait's refusals.
        let mut capabilities = Capabilities::full(["script"]);
        capabilities.packages = false;
        capabilities.history = false;
        capabilities.contexts = false;
        capabilities.ports = false;
        capabilities.metrics = false;
        capabilities.artifacts = false;
        capabilities.processes = false;
        capabilities
    }

    async fn start(&self) -> Result<()> {
        Ok(())
    }

    async fn stop(&self) -> Result<()> {
        self.probe.stopped.store(true, Ordering::SeqCst);
        Ok(())
    }

    async fn status(&self) -> Result<BoxStatus> {
        let state = if self.probe.stopped.load(Ordering::SeqCst) { BoxState::Stopped } else { BoxState::Idle };
        Ok(BoxStatus::new(state).with_kernel("script"))
    }

    async fn run_stream(&self, code: &str, _options: RunOptions) -> Result<EventStream> {
        if self.probe.stopped.load(Ordering::SeqCst) {
            return Err(CodeBoxError::not_running("stopped"));
        }
        let end = |outcome| Ok(ExecEvent::end(Some(1), Duration::from_millis(1), outcome));
        let code = code.to_owned();
        if let Some(text) = code.strip_prefix("print ") {
            let events = vec![Ok(ExecEvent::stdout(format!("{text}\n"))), end(Outcome::Ok)];
            return Ok(Box::pin(futures::stream::iter(events)));
        }
        match code.as_str() {
            "raise" => {
                let info = ErrorInfo { name: "ValueError".into(), value: "bad".into(), traceback: vec![] };
                Ok(Box::pin(futures::stream::iter(vec![Ok(ExecEvent::Error(info)), end(Outcome::Error)])))
            }
            "die" => Ok(Box::pin(futures::stream::iter(vec![
                Ok(ExecEvent::stdout("dying\n")),
                Err(CodeBoxError::kernel_died(KernelDeath::Signaled { signal: 9 })),
            ]))),
            "wait" => {
                let probe = Arc::clone(&self.probe);
                let stream = async_stream(probe);
                Ok(stream)
            }
            other => Err(CodeBoxError::invalid(format!("unknown script {other:?}"))),
        }
    }

    async fn upload(&self, path: &str, mut content: ByteStream) -> Result<FileInfo> {
        self.probe.uploads_started.fetch_add(1, Ordering::SeqCst);
        let path = normalize_box_path(path)?.to_string_lossy().into_owned();
        let mut buf = Vec::new();
        while let Some(chunk) = content.next().await {
            buf.extend_from_slice(&chunk?);
        }
        let size = buf.len() as u64;
        self.files.lock().unwrap().insert(path.clone(), Bytes::from(buf));
        Ok(file_info(&path, size))
    }

    async fn download(&self, path: &str) -> Result<ByteStream> {
        let data = self.files.lock().unwrap().get(path).cloned().ok_or_else(|| CodeBoxError::not_found(path))?;
        // Many small chunks, so a transfer takes a while on the wire.
        let chunks: Vec<Result<Bytes>> =
            (0..data.len()).step_by(64 * 1024).map(|i| Ok(data.slice(i..(i + 64 * 1024).min(data.len())))).collect();
        Ok(Box::pin(futures::stream::iter(chunks)))
    }

    async fn list_files(&self, dir: &str, _recursive: bool) -> Result<Vec<FileInfo>> {
        let files = self.files.lock().unwrap();
        let prefix = if dir.is_empty() { String::new() } else { format!("{dir}/") };
        Ok(files
            .iter()
            .filter(|(p, _)| p.starts_with(&prefix) && !p[prefix.len()..].contains('/'))
            .map(|(p, d)| file_info(p, d.len() as u64))
            .collect())
    }

    async fn delete_file(&self, path: &str) -> Result<()> {
        self.files.lock().unwrap().remove(path).map(|_| ()).ok_or_else(|| CodeBoxError::not_found(path))
    }

    async fn install(&self, packages: &[String]) -> Result<String> {
        Ok(format!("installed {}", packages.join(" ")))
    }

    async fn restart(&self) -> Result<()> {
        Ok(())
    }

    async fn interrupt(&self) -> Result<()> {
        self.probe.interrupted.fetch_add(1, Ordering::SeqCst);
        self.probe.interrupt.notify_waiters();
        Ok(())
    }

    async fn run_command(&self, command: CommandSpec) -> Result<CommandOutput> {
        Ok(CommandOutput::new(
            Some(0),
            format!("{} {}\n", command.program, command.args.join(" ")),
            String::new(),
            false,
        ))
    }
}

fn async_stream(probe: Arc<Probe>) -> EventStream {
    let guard = CancelOnDrop { probe, finished: false };
    let first = futures::stream::once(async { Ok(ExecEvent::stdout("waiting\n")) });
    let rest = futures::stream::once(async move {
        let mut guard = guard;
        guard.probe.interrupt.notified().await;
        guard.finished = true;
        Ok(ExecEvent::end(Some(2), Duration::from_millis(1), Outcome::Interrupted))
    });
    Box::pin(first.chain(rest))
}

fn file_info(path: &str, size: u64) -> FileInfo {
    let name = path.rsplit('/').next().unwrap_or(path).to_owned();
    FileInfo { path: path.to_owned(), name, size, is_dir: false, modified: None, file_kind: None, mode: None }
}

/// Makes scripted boxes and keeps their probes.
#[derive(Debug, Default)]
pub(crate) struct ScriptedFactory {
    pub(crate) probes: Mutex<Vec<Arc<Probe>>>,
    pub(crate) created: AtomicUsize,
    /// Boxes being made right now, and the most there ever were at once.
    pub(crate) starting: AtomicUsize,
    pub(crate) most_starting: AtomicUsize,
}

#[async_trait]
impl BoxFactory for ScriptedFactory {
    async fn create(&self, request: &BoxRequest) -> Result<Arc<dyn CodeBox>> {
        let kernel = request.kernel.as_deref();
        if kernel == Some("broken") {
            return Err(CodeBoxError::kernel_start("no such kernel"));
        }
        if kernel == Some("slow") {
            let now = self.starting.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_starting.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.starting.fetch_sub(1, Ordering::SeqCst);
        }
        let n = self.created.fetch_add(1, Ordering::SeqCst);
        let probe = Arc::new(Probe::default());
        self.probes.lock().unwrap().push(Arc::clone(&probe));
        Ok(Arc::new(ScriptedBox { id: format!("box-{n}"), files: Mutex::default(), probe }))
    }
}

impl ScriptedFactory {
    pub(crate) fn probe(&self, i: usize) -> Arc<Probe> {
        Arc::clone(&self.probes.lock().unwrap()[i])
    }
}

/// A running server and a way to stop it.
pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    pub(crate) factory: Arc<ScriptedFactory>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<()>>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// The base configuration of test servers: two keys, short timeouts.
pub(crate) fn test_config() -> ServerConfig {
    ServerConfig::new()
        .with_addr("127.0.0.1:0".parse().unwrap())
        .with_api_key(KEY)
        .with_api_key(OTHER_KEY)
        .with_keepalive_interval(Duration::from_millis(200))
        .with_body_idle_timeout(Duration::from_millis(500))
        .with_shutdown_grace(Duration::from_millis(300))
}

impl TestServer {
    pub(crate) async fn start() -> Self {
        Self::with_config(test_config()).await
    }

    pub(crate) async fn with_config(config: ServerConfig) -> Self {
        let factory = Arc::new(ScriptedFactory::default());
        let server = Server::bind(config, Arc::clone(&factory) as Arc<dyn BoxFactory>).await.unwrap();
        let addr = server.local_addr();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(server.run_until(async {
            let _ = stopped.await;
        }));
        Self { addr, factory, stop: Some(stop), task: Some(task), client: client() }
    }

    /// The sender of the server's shutdown signal, for a test that watches it shut down;
    /// [`shutdown`](Self::shutdown) then waits for the end.
    pub(crate) fn stop_signal(&mut self) -> oneshot::Sender<()> {
        self.stop.take().expect("the server's shutdown signal was taken already")
    }

    /// Shut the server down and wait until it is down.
    pub(crate) async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Send a request; returns status, headers and the whole body.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        content_type: Option<&str>,
        body: impl Into<Bytes>,
    ) -> Reply {
        request(&self.client, self.addr, method, path, key, content_type, body.into()).await
    }

    pub(crate) async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, Some(KEY), None, Bytes::new()).await
    }

    pub(crate) async fn post_json(&self, path: &str, json: serde_json::Value) -> Reply {
        self.send(Method::POST, path, Some(KEY), Some("application/json"), json.to_string()).await
    }

    /// Create a session for `KEY` and return its id.
    pub(crate) async fn session(&self) -> String {
        let reply = self.post_json("/v1/sessions", serde_json::json!({})).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        reply.json()["id"].as_str().unwrap().to_owned()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A whole response.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: Bytes,
}

impl Reply {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The `error.kind` of a JSON error response.
    pub(crate) fn error_kind(&self) -> String {
        self.json()["error"]["kind"].as_str().unwrap_or_default().to_owned()
    }

    /// The NDJSON lines of an execution stream.
    pub(crate) fn lines(&self) -> Vec<serde_json::Value> {
        self.text().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

/// Wait until `cond` holds, polling; panics after 10 s.
pub(crate) async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Wait until the async `cond` holds, polling; panics after 10 s.
pub(crate) async fn eventually_async<F, Fut>(what: &str, cond: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..1000 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

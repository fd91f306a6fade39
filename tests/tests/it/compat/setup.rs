//! What the compatibility tests need: a virtualenv with a given `codeboxapi`, a Python for the
//! kernels, and a server with a LocalBox factory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use codebox_core::Result;
use codebox_local::{LocalBox, LocalFactory, PythonProfile, provision_at};
use codebox_server::{Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// Where the compatibility tests keep what they provision, across runs.
fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("compat")
}

/// The `tests/python` directory.
fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python")
}

/// Run a command to completion, panicking with its output when it fails.
async fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().await.unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A virtualenv with one version of the `codeboxapi` client installed from PyPI.
#[derive(Debug)]
pub(super) struct ClientVenv {
    dir: PathBuf,
}

impl ClientVenv {
    /// The virtualenv for `codeboxapi==version`, created with the first `python3` on `PATH`
    /// when it is not cached yet. Built in a scratch directory and renamed into place, so a
    /// run that is cut short never leaves a half-made one behind.
    pub(super) async fn provision(version: &str) -> Self {
        let dir = cache_dir().join(format!("codeboxapi-{version}"));
        if dir.join(".ready").exists() {
            return Self { dir };
        }
        std::fs::create_dir_all(cache_dir()).expect("creating the compat cache directory");
        let scratch = cache_dir().join(format!(".codeboxapi-{version}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&scratch);
        run(Command::new("python3").arg("-m").arg("venv").arg(&scratch), "python3 -m venv").await;
        run(
            Command::new(scratch.join("bin/python"))
                .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
                .arg(format!("codeboxapi=={version}")),
            &format!("pip install codeboxapi=={version}"),
        )
        .await;
        std::fs::write(scratch.join(".ready"), version).expect("marking the virtualenv ready");
        // A venv's scripts name their directory, so the venv is used where it was made: the
        // scratch path is where it stays, and `dir` points at it.
        let _ = std::fs::remove_file(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        match std::os::unix::fs::symlink(&scratch, &dir) {
            Ok(()) => Self { dir },
            // Another run won the race; use its venv and drop ours.
            Err(_) if dir.join(".ready").exists() => {
                let _ = std::fs::remove_dir_all(&scratch);
                Self { dir }
            }
            Err(e) => panic!("linking {} to {}: {e}", dir.display(), scratch.display()),
        }
    }

    /// Run `tests/python/<script>` under this virtualenv against `base_url`, in a fresh
    /// working directory, and return the JSON summary it prints last. Panics with the
    /// script's output when it fails.
    pub(super) async fn run_script(
        &self,
        script: &str,
        base_url: &str,
        key: &str,
        env: &[(&str, &str)],
    ) -> serde_json::Value {
        let cwd = tempfile::tempdir().expect("a working directory for the client");
        let mut cmd = Command::new(self.dir.join("bin/python"));
        cmd.arg(scripts_dir().join(script))
            .current_dir(cwd.path())
            .env("CODEBOX_BASE_URL", base_url)
            .env("CODEBOX_API_KEY", key)
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("IGNORE_DEPRECATION_WARNINGS", "true")
            .env("PYTHONUNBUFFERED", "1")
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        // A guard against a hung client, not a measurement.
        let out = tokio::time::timeout(Duration::from_secs(20 * 60), cmd.output())
            .await
            .unwrap_or_else(|_| panic!("{script} did not finish within 20 minutes"))
            .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{script} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}", out.status);
        let last = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
        serde_json::from_str(last)
            .unwrap_or_else(|e| panic!("{script} printed no JSON summary ({e}):\n{stdout}\n--- stderr\n{stderr}"))
    }
}

/// The Python the kernels run: a virtualenv of the test's own with ipykernel, matplotlib,
/// numpy and pandas, so packages the clients install never touch another environment.
async fn kernel_python() -> PathBuf {
    let dir = cache_dir().join("kernel-python");
    let target = dir.clone();
    tokio::task::spawn_blocking(move || provision_at(&target, PythonProfile::Data, None))
        .await
        .expect("the provisioning task")
        .unwrap_or_else(|e| panic!("provisioning the kernel Python at {}: {e}", dir.display()));
    dir.join("bin/python")
}

/// The CodeBox server, in-process, on a free loopback port with one API key.
#[derive(Debug)]
pub(super) struct TestServer {
    addr: std::net::SocketAddr,
    key: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<()>>>,
}

impl TestServer {
    pub(super) async fn start() -> Self {
        Self::start_with(|config| config).await
    }

    /// A server whose configuration `adjust` changes from the test default.
    pub(super) async fn start_with(adjust: impl FnOnce(ServerConfig) -> ServerConfig) -> Self {
        let python = kernel_python().await;
        let key = format!("compat-test-key-{}", std::process::id());
        let config =
            adjust(ServerConfig::new().with_addr("127.0.0.1:0".parse().expect("an address")).with_api_key(&key));
        // A LocalBox for each session, with the test Python.
        let factory = LocalFactory::builder(LocalBox::builder().with_python(&python)).build().expect("the box factory");
        let server = Server::bind(config, Arc::new(factory)).await.expect("binding the server");
        let addr = server.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run_until(async move {
            let _ = stopped.await;
        }));
        Self { addr, key, stop: Some(stop), task: Some(task) }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub(super) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(super) fn key(&self) -> &str {
        &self.key
    }

    /// How many sessions this key has, from the native API.
    pub(super) async fn session_count(&self) -> usize {
        let auth = format!("Bearer {}", self.key);
        let reply = self.request("GET", "/v1/sessions", &[("Authorization", &auth)], b"").await;
        assert_eq!(reply.status, 200, "listing sessions: {}", reply.text());
        reply.json().as_array().expect("a JSON list of sessions").len()
    }

    /// The `Authorization` header value for this server's key.
    pub(super) fn auth(&self) -> String {
        format!("Bearer {}", self.key)
    }

    /// Open a connection and send one HTTP/1.1 request (`Connection: close`), leaving the
    /// response to be read.
    pub(super) async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> tokio::net::TcpStream {
        self.send_declaring(method, path, headers, body, body.len()).await
    }

    /// Like [`send`](Self::send), announcing `declared` bytes of body whatever `body` holds, so
    /// a test can stall or cut an upload.
    pub(super) async fn send_declaring(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        declared: usize,
    ) -> tokio::net::TcpStream {
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.expect("connecting to the server");
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", self.addr);
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!("Content-Length: {declared}\r\n\r\n"));
        stream.write_all(head.as_bytes()).await.expect("sending the request head");
        // The server may answer (413, 415) and close before it has read the whole body.
        let _ = stream.write_all(body).await;
        stream
    }

    /// Read the whole response from a connection made by [`send`](Self::send).
    pub(super) async fn response(mut stream: tokio::net::TcpStream) -> Reply {
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw).await;
        Reply::parse(&raw)
    }

    /// One HTTP/1.1 request and its whole response.
    pub(super) async fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        Self::response(self.send(method, path, headers, body).await).await
    }

    /// Stop the server: every session and its kernel end.
    pub(super) async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("the server task").expect("the server stopped cleanly");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub(super) struct Reply {
    pub(super) status: u16,
    /// Header names in lowercase.
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: Vec<u8>,
}

impl Reply {
    fn parse(raw: &[u8]) -> Self {
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| {
            panic!("no complete HTTP response: {:?}", String::from_utf8_lossy(raw));
        });
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {head:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let mut body = raw[split + 4..].to_vec();
        if headers.iter().any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked")) {
            body = dechunk(&body);
        }
        Self { status, headers, body }
    }

    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub(super) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub(super) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The `kind` of a JSON error answer.
    pub(super) fn error_kind(&self) -> String {
        self.json()["error"]["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("not an error answer: {}", self.text()))
            .to_owned()
    }
}

/// The payload of a chunked body.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else { return out };
        let size_text = String::from_utf8_lossy(&raw[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        if size == 0 || raw.len() < eol + 2 + size {
            return out;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
        raw = &raw[(eol + 2 + size + 2).min(raw.len())..];
    }
}

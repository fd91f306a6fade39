//! A hostile tenant against `codebox serve`, at every isolation level the server can pick.
//!
//! Each case runs against the real binary, started as an operator would start it (two API
//! keys from a key file, session uids, a session root of its own), once per level:
//! bubblewrap, Landlock, and none with session uids. A case a level cannot hold asserts
//! what the server says about it instead (the weakness reported in `SessionInfo`), never
//! silently passes. [`per_level!`] writes one test per level, so a failure names its level.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use codebox_sandbox::{processes_in_range, running_as_root};

mod files;
mod leftovers;
mod sandbox;
mod server;
mod tools;

/// The first API key of every server here (tenant A).
pub(crate) const KEY_A: &str = "hostile-tenant-a-key-0001";
/// The second API key (tenant B).
pub(crate) const KEY_B: &str = "hostile-tenant-b-key-0002";

/// An isolation level `codebox serve --isolation` can pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    Bubblewrap,
    Landlock,
    /// No sandbox, each session under its own uid.
    None,
}

impl Level {
    pub(crate) fn flag(self) -> &'static str {
        match self {
            Self::Bubblewrap => "bubblewrap",
            Self::Landlock => "landlock",
            Self::None => "none",
        }
    }
}

/// One `#[test]` per isolation level for a case `fn name(level: Level)`.
macro_rules! per_level {
    ($($case:ident),* $(,)?) => {
        mod bubblewrap {
            $(#[test] fn $case() { if crate::hostile::can_run() { super::$case(crate::hostile::Level::Bubblewrap) } })*
        }
        mod landlock {
            $(#[test] fn $case() { if crate::hostile::can_run() { super::$case(crate::hostile::Level::Landlock) } })*
        }
        mod none {
            $(#[test] fn $case() { if crate::hostile::can_run() { super::$case(crate::hostile::Level::None) } })*
        }
    };
}
pub(crate) use per_level;

/// Whether this machine can run the suite: it starts servers that give every session its own
/// uid and cgroup, which needs root. Without root the case is reported as skipped (and fails
/// under `CI=true`).
pub(crate) fn can_run() -> bool {
    codebox_core::conformance::requires("root (session uids and cgroups); run the tests as root", running_as_root())
}

/// Session uid ranges: one of its own for every server a test starts, so that the check
/// that nothing outlived a server looks at that server's uids only, and a server's sweep at
/// start never touches another's sessions. Within the test ranges `cargo xtask ci`'s leak
/// check covers, above every other test's.
fn next_uid_range() -> std::ops::Range<u32> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let first = 330_000 + NEXT.fetch_add(1, Ordering::Relaxed) * 32;
    assert!(first + 32 <= 340_000, "the hostile suite ran out of session uids");
    first..first + 32
}

/// How to start a server: the level plus any further `codebox serve` flags.
pub(crate) struct Options {
    pub(crate) level: Level,
    pub(crate) args: Vec<String>,
    /// Further environment variables of the server process.
    pub(crate) env: Vec<(String, String)>,
    /// Kernels kept started for new sessions (`--pool-size`).
    pub(crate) pool: usize,
    /// Keep the server's stderr (the log) for the test to read.
    pub(crate) keep_log: bool,
}

impl Options {
    pub(crate) fn new(level: Level) -> Self {
        Self { level, args: Vec::new(), env: Vec::new(), pool: 0, keep_log: false }
    }

    pub(crate) fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub(crate) fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub(crate) fn pool(mut self, kernels: usize) -> Self {
        self.pool = kernels;
        self
    }

    pub(crate) fn keep_log(mut self) -> Self {
        self.keep_log = true;
        self
    }
}

/// A `codebox serve` process with two tenants' keys.
pub(crate) struct Serve {
    pub(crate) child: Child,
    pub(crate) addr: String,
    pub(crate) level: Level,
    pub(crate) uids: std::ops::Range<u32>,
    /// The session root (working directories, the server's record).
    pub(crate) root: PathBuf,
    /// The server's log lines, when kept.
    pub(crate) log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _base: Option<tempfile::TempDir>,
}

/// An HTTP answer.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) head: String,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// A header's value (names compared without case).
    pub(crate) fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

impl Serve {
    /// Start a server on a fresh session root.
    pub(crate) fn start(options: Options) -> Self {
        let base = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let root = base.path().join("sessions");
        let mut s = Self::start_on(&root, options, next_uid_range());
        s._base = Some(base);
        s
    }

    /// Start a server on `root` with the session uids `uids` (a restart keeps both).
    pub(crate) fn start_on(root: &Path, options: Options, uids: std::ops::Range<u32>) -> Self {
        let keys = root.with_extension("keys");
        std::fs::write(&keys, format!("{KEY_A}\n{KEY_B}\n")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_codebox"));
        cmd.args(["serve", "--addr", "127.0.0.1:0", "--log-format", "json", "--isolation", options.level.flag()])
            .arg("--api-key-file")
            .arg(&keys)
            .args(["--session-uids", &format!("{}-{}", uids.start, uids.end - 1)])
            .args(["--pool-size", &options.pool.to_string(), "--workdir-size", "64M"])
            .arg("--session-root")
            .arg(root);
        if options.level == Level::None {
            // Two tenants on a level that cannot keep them apart: the operator says so.
            cmd.arg("--allow-weak-isolation");
        }
        let mut child = cmd
            .args(&options.args)
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .env_remove("CODEBOX_SERVER_API_KEYS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn codebox serve");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = Vec::new();
        let addr = loop {
            let Some(Ok(line)) = lines.next() else {
                panic!("codebox serve exited before listening: {:?}\n{}", child.try_wait(), seen.join("\n"))
            };
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["fields"]["message"] == "codebox serve listening"
            {
                break v["fields"]["addr"].as_str().expect("addr in the log").to_owned();
            }
            seen.push(line);
        };
        let log = std::sync::Arc::new(std::sync::Mutex::new(if options.keep_log { seen } else { Vec::new() }));
        let keep = options.keep_log.then(|| log.clone());
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Some(k) = &keep {
                    k.lock().unwrap().push(line);
                }
            }
        });
        Self { child, addr, level: options.level, uids, root: root.to_owned(), log, _base: None }
    }

    /// One request on a fresh connection, `timeout` for the whole answer.
    pub(crate) fn request_with(
        &self,
        key: Option<&str>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> std::io::Result<Reply> {
        let mut s = TcpStream::connect(&self.addr)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", self.addr);
        if let Some(k) = key {
            head.push_str(&format!("Authorization: Bearer {k}\r\n"));
        }
        let mut has_length = false;
        for (k, v) in headers {
            has_length |= k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding");
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if !has_length {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| std::io::Error::other(format!("no HTTP head in {:?}", String::from_utf8_lossy(&raw))))?;
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut body = raw[split + 4..].to_vec();
        let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let chunked = head.lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("transfer-encoding:") && l.contains("chunked")
        });
        if chunked {
            body = dechunk(&body);
        }
        Ok(Reply { status, head, body })
    }

    /// One request with a JSON body (or none), three minutes for the answer.
    pub(crate) fn request(&self, key: &str, method: &str, path: &str, body: Option<serde_json::Value>) -> Reply {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let headers: &[(&str, &str)] = if body.is_empty() { &[] } else { &[("Content-Type", "application/json")] };
        self.request_with(Some(key), method, path, headers, body.as_bytes(), Duration::from_secs(180))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// A new session of `key`.
    pub(crate) fn new_session(&self, key: &str) -> String {
        let reply = self.request(key, "POST", "/v1/sessions", Some(serde_json::json!({})));
        assert_eq!(reply.status, 201, "{}", reply.text());
        reply.json()["id"].as_str().unwrap().to_owned()
    }

    /// Run `code` in session `id` of `key`: the execution's stdout, stderr and error
    /// lines as one text (panics when the request itself fails).
    pub(crate) fn exec(&self, key: &str, id: &str, code: &str) -> Execution {
        let reply =
            self.request(key, "POST", &format!("/v1/sessions/{id}/execute"), Some(serde_json::json!({ "code": code })));
        assert_eq!(reply.status, 200, "execute: {}", reply.text());
        Execution::parse(&reply.text())
    }

    /// What session `id`'s isolation says it cannot hold (`status.isolation_gaps`).
    pub(crate) fn gaps(&self, key: &str, id: &str) -> Vec<String> {
        let info = self.request(key, "GET", &format!("/v1/sessions/{id}"), None).json();
        assert_eq!(info["status"]["isolation"], self.level.flag(), "{info}");
        info["status"]["isolation_gaps"]
            .as_array()
            .map(|a| a.iter().filter_map(|g| g.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    }

    /// Whether `/health` answers within `timeout`.
    pub(crate) fn healthy_within(&self, timeout: Duration) -> bool {
        self.request_with(None, "GET", "/health", &[], b"", timeout).is_ok_and(|r| r.status == 200)
    }

    /// Stop with SIGTERM and check the server exits and leaves no session process behind.
    pub(crate) fn stop(mut self) {
        let term = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(term.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "codebox serve exited with {status}");
                break;
            }
            assert!(Instant::now() < deadline, "codebox serve did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
        wait_until("no session process outlives the server", Duration::from_secs(10), || {
            processes_in_range(&self.uids).is_empty()
        });
    }
}

impl Drop for Serve {
    /// A server a case did not stop (it failed, or it kills its server on purpose) is stopped
    /// the way an operator would, so that it unmounts and removes its sessions' working
    /// directories; SIGKILL only if it does not exit in time.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An execution's stream, read back.
#[derive(Debug, Default)]
pub(crate) struct Execution {
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    /// The exception's name and value, when the code raised.
    pub(crate) error: Option<(String, String)>,
    /// The `error` object of a stream that ended with the box failing.
    pub(crate) failure: Option<serde_json::Value>,
    pub(crate) text: String,
}

impl Execution {
    fn parse(ndjson: &str) -> Self {
        let mut out = Self::default();
        for line in ndjson.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            if let Some(err) = v.get("error") {
                out.failure = Some(err.clone());
                continue;
            }
            let event = &v["event"];
            match event["type"].as_str() {
                Some("stdout") => out.stdout.push_str(event["text"].as_str().unwrap_or_default()),
                Some("stderr") => out.stderr.push_str(event["text"].as_str().unwrap_or_default()),
                Some("error") => {
                    out.error = Some((
                        event["name"].as_str().unwrap_or_default().to_owned(),
                        event["value"].as_str().unwrap_or_default().to_owned(),
                    ))
                }
                Some("result") => {
                    if let Some(t) = event["data"]["text/plain"].as_str() {
                        out.text.push_str(t);
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// Panics unless the code ran without raising; returns stdout.
    pub(crate) fn ok(&self) -> &str {
        assert!(self.error.is_none() && self.failure.is_none(), "the code failed: {self:?}");
        &self.stdout
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = body.windows(2).position(|w| w == b"\r\n") else { return out };
        let size = std::str::from_utf8(&body[..end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size else { return out };
        if size == 0 || body.len() < end + 2 + size {
            return out;
        }
        out.extend_from_slice(&body[end + 2..end + 2 + size]);
        body = &body[(end + 2 + size + 2).min(body.len())..];
    }
}

pub(crate) fn wait_until(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < deadline, "{what}: still not the case after {deadline:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

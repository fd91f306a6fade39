//! Past one machine, on one machine: three `codebox serve` processes with distinct node ids
//! behind a real nginx running the shipped routing (`deploy/nginx/codebox.conf`, with the
//! pods of `deploy/nginx/backends-kubernetes.conf` as local upstreams), driven by every
//! client: RemoteBox (native API), the codebox-api 0.1 and 0.2 Python clients, the E2B SDK
//! and the MCP client over Streamable HTTP. Sessions spread over the servers; nginx's access log shows
//! every request that names a session reaching the server that owns it; a client that
//! disconnects through the proxy interrupts its code; a restarted proxy loses nothing; a
//! server that goes away gives 503 with `Retry-After` for its sessions and nothing else.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use codebox::RemoteBox;
use codebox::blocking::BlockingBox;

use crate::hostile::{KEY_A, Level, Options, Serve, wait_until};

/// The session uids of this file's servers: 32 for each.
const FIRST_UID: u32 = 354_000;
/// How many servers run behind the proxy.
const NODES: usize = 3;
/// The Python clients, pinned as the compatibility tests pin them.
const API01_CLIENT: &str = "codeboxapi==0.1.19";
const API02_CLIENT: &str = "codeboxapi==0.2.6";

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)
}

/// The node a session id names, the way the shipped nginx configuration reads it.
fn node_of(id: &str) -> String {
    if let Some((node, _)) = id.rsplit_once("--") {
        return node.to_owned();
    }
    assert_eq!(id.len(), 38, "not an id minted by a node: {id}");
    format!("codebox-{}", id[1..5].parse::<u32>().unwrap())
}

/// The Python of a virtualenv under target/ with `requirements` installed (the first one
/// pinned with `==`, importable as `module`), made on first use.
fn client_python(requirements: &[&str], module: &str) -> PathBuf {
    let (dist, version) = requirements[0].split_once("==").expect("the first requirement is pinned");
    let probe = format!("import {module}, importlib.metadata as m; assert m.version('{dist}') == '{version}'");
    crate::venv::python_with(&format!("{dist}-{version}-venv"), requirements, &probe)
}

/// Run a client script with `python` against `base_url`; it prints one JSON line last.
fn run_python(python: &Path, script: &str, base_url: &str) -> serde_json::Value {
    let cwd = tempfile::tempdir().unwrap();
    let out = Command::new(python)
        .args(["-c", script])
        .current_dir(cwd.path())
        .env("CODEBOX_BASE_URL", base_url)
        .env("CODEBOX_API_KEY", KEY_A)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("IGNORE_DEPRECATION_WARNINGS", "true")
        .stdin(Stdio::null())
        .output()
        .expect("running a Python client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the client failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("no JSON summary ({e}): {stdout}"))
}

/// Six sessions of the 0.1 client: each keeps its variable across requests.
const API01_SCRIPT: &str = r#"
import json
from codeboxapi import CodeBox
ids = []
for i in range(6):
    cb = CodeBox()
    cb.start()
    cb.run(f"x = {i}")
    out = cb.run("print(x * 2)")
    assert (out.type, out.content) == ("text", f"{i * 2}\n"), out
    ids.append(str(cb.session_id.int if hasattr(cb.session_id, "int") else cb.session_id))
print(json.dumps(ids))
"#;

/// Six sessions of the 0.2 client, under ids the client chose.
const API02_SCRIPT: &str = r#"
import json
from codeboxapi import CodeBox
ids = []
for i in range(6):
    cb = CodeBox()
    cb.exec(f"x = {i}")
    r = cb.exec("print(x * 2)")
    assert r.text == f"{i * 2}\n", r.chunks
    ids.append(cb.session_id)
print(json.dumps(ids))
"#;

/// nginx with the shipped routing in front of `backends` (node name → address).
struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

fn nginx_program() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("nginx is not installed: `cargo xtask ci`'s setup installs it (Debian package nginx)")
}

impl Nginx {
    /// Write the configuration for `backends` and start nginx on a free loopback port.
    fn start(backends: &BTreeMap<String, String>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        // nginx's workers drop root: they must reach their temporary directories.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let shipped = std::fs::read_to_string(repo_file("deploy/nginx/codebox.conf")).unwrap();
        assert_eq!(shipped.matches("listen 8080;").count(), 1, "the shipped configuration listens once, on 8080");
        let routing = shipped.replace("listen 8080;", &format!("listen 127.0.0.1:{port};"));
        std::fs::write(dir.path().join("codebox.conf"), routing).unwrap();
        // The same split of client-chosen ids over the pods as in Kubernetes.
        let kubernetes = std::fs::read_to_string(repo_file("deploy/nginx/backends-kubernetes.conf")).unwrap();
        let start = kubernetes.find("split_clients").expect("the Kubernetes backends split client ids");
        let end = start + kubernetes[start..].find('}').unwrap() + 1;
        let split = &kubernetes[start..end];
        let mut upstreams = String::new();
        for (node, addr) in backends {
            upstreams.push_str(&format!("  upstream {node} {{ server {addr}; keepalive 8; }}\n"));
        }
        let any: String = backends.values().map(|a| format!(" server {a};")).collect();
        let prefix = dir.path().display();
        let conf = format!(
            "worker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log info;\nevents {{ \
             worker_connections 512; }}\nhttp {{\n  log_format routed '$request_method $uri $status \
             [$codebox_node] [$upstream_addr]';\n  access_log {prefix}/access.log routed;\n  \
             client_body_temp_path {prefix}/body;\n  proxy_temp_path {prefix}/proxy;\n  fastcgi_temp_path \
             {prefix}/fastcgi;\n  uwsgi_temp_path {prefix}/uwsgi;\n  scgi_temp_path {prefix}/scgi;\n  {split}\n  \
             map $codebox_node $codebox_backend {{ \"\" codebox_any; default $codebox_node; }}\n  upstream \
             codebox_any {{{any} }}\n{upstreams}  include {prefix}/codebox.conf;\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let child = Self::spawn(dir.path());
        let nginx = Self { child, dir, port };
        nginx.wait_listening();
        nginx
    }

    fn spawn(dir: &Path) -> Child {
        Command::new(nginx_program())
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting nginx")
    }

    fn wait_listening(&self) {
        wait_until("nginx listens", Duration::from_secs(30), || TcpStream::connect(("127.0.0.1", self.port)).is_ok());
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stop nginx (SIGTERM) and wait for it to exit.
    fn stop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }

    /// Stop nginx and start it again on the same port and configuration.
    fn restart(&mut self) {
        self.stop();
        self.child = Self::spawn(self.dir.path());
        self.wait_listening();
    }

    /// The access log: method, path, status, the node the path named, the upstream used.
    fn access_log(&self) -> Vec<(String, String, u16, String, String)> {
        let text = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let mut parts = l.split_whitespace();
                let method = parts.next()?.to_owned();
                let path = parts.next()?.to_owned();
                let status = parts.next()?.parse().ok()?;
                let node = parts.next()?.trim_matches(['[', ']']).to_owned();
                let upstream = parts.next()?.trim_matches(['[', ']']).to_owned();
                Some((method, path, status, node, upstream))
            })
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        }
    }
}

/// One HTTP/1.1 request on a fresh connection: status, head and body.
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(180))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {KEY_A}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

fn retry_after(head: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case("retry-after").then(|| v.trim().to_owned())
    })
}

/// A native session through the proxy with `x` set: minted by whichever server nginx picks
/// and attached by id, or (`minted` false) created by RemoteBox under an id of its own.
fn native_session(url: &str, x: u32, minted: bool) -> BlockingBox<RemoteBox> {
    let mut builder = RemoteBox::builder().with_base_url(url).with_api_key(KEY_A);
    if minted {
        let addr = url.trim_start_matches("http://");
        let (status, head, body) = http(addr, "POST", "/v1/sessions", "{}");
        assert_eq!(status, 201, "creating a session through the proxy: {head}\n{body}");
        let info: serde_json::Value = serde_json::from_str(&body).unwrap();
        builder = builder.with_session_id(info["id"].as_str().unwrap());
    }
    let session = BlockingBox::new(builder.build().expect("a RemoteBox"));
    session.start().expect("starting a session through the proxy");
    let run = session.exec(&format!("x = {x}")).expect("setting x");
    assert_eq!(run.outcome, codebox::Outcome::Ok, "{run:?}");
    session
}

/// The one server that has session `id`, asked directly.
fn owner_of(servers: &BTreeMap<String, Serve>, id: &str, path: &str) -> String {
    let owners: Vec<&String> = servers
        .iter()
        .filter(|(_, s)| http(&s.addr, "GET", &path.replace("{id}", id), "").0 == 200)
        .map(|(n, _)| n)
        .collect();
    assert_eq!(owners.len(), 1, "session {id} lives on {owners:?}");
    owners[0].clone()
}

/// What `print(x)` prints in `session`: each request must reach the server with its kernel.
fn x_of(session: &BlockingBox<RemoteBox>) -> String {
    session.exec("print(x)").expect("reading x").stdout()
}

#[test]
fn three_servers_behind_nginx_route_every_client_to_the_owner() {
    let base = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut servers: BTreeMap<String, Serve> = (0..NODES as u32)
        .map(|i| {
            let node = format!("codebox-{i}");
            let uids = FIRST_UID + 32 * i..FIRST_UID + 32 * (i + 1);
            let options = Options::new(Level::Bubblewrap).arg("--node-id").arg(&node);
            (node.clone(), Serve::start_on(&base.path().join(&node), options, uids))
        })
        .collect();
    let backends: BTreeMap<String, String> = servers.iter().map(|(n, s)| (n.clone(), s.addr.clone())).collect();
    let mut nginx = Nginx::start(&backends);
    let url = nginx.url();

    // Native sessions through RemoteBox: minted by any server, each id names its owner;
    // created by RemoteBox under its own ids, each lives where the id hashes to.
    let native: Vec<_> = (0..9).map(|i| native_session(&url, 40 + i, i < 6)).collect();
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    for session in &native {
        owner.insert(session.id().to_owned(), owner_of(&servers, session.id(), "/v1/sessions/{id}"));
    }
    let minted_nodes: BTreeSet<String> = native[..6].iter().map(|s| node_of(s.id())).collect();
    assert_eq!(minted_nodes, backends.keys().cloned().collect(), "sessions spread over every server");
    for session in &native[..6] {
        assert_eq!(node_of(session.id()), owner[session.id()], "the id names its owner");
    }
    for (i, session) in native.iter().enumerate() {
        assert_eq!(x_of(session), format!("{}\n", 40 + i), "{}", session.id());
    }

    // The codebox-api clients, unchanged: 0.1 ids carry the pod's ordinal, 0.2 ids are the
    // client's own and are routed by their hash.
    let api01 = run_python(&client_python(&[API01_CLIENT], "codeboxapi"), API01_SCRIPT, &format!("{url}/api/v1"));
    let api01: Vec<String> = serde_json::from_value(api01).unwrap();
    let api01_nodes: BTreeSet<String> = api01.iter().map(|id| node_of(id)).collect();
    assert_eq!(api01_nodes, backends.keys().cloned().collect(), "0.1 sessions spread: {api01:?}");
    let api02 = run_python(&client_python(&[API02_CLIENT], "codeboxapi"), API02_SCRIPT, &format!("{url}/api/v2"));
    let api02: Vec<String> = serde_json::from_value(api02).unwrap();
    // Each 0.2 session lives on exactly one server, the one its id hashes to.
    for id in &api02 {
        owner.insert(id.clone(), owner_of(&servers, id, "/v1/sessions/{id}"));
    }
    for id in &api01 {
        assert_eq!(owner_of(&servers, id, "/v1/sessions/{id}"), node_of(id), "0.1 session {id}");
        owner.insert(id.clone(), node_of(id));
    }

    // The MCP client over Streamable HTTP: a key's MCP sessions live on one server.
    let mcp_url = format!("{url}/mcp");
    let out = Command::new(crate::mcp::client_python())
        .arg(crate::mcp::script())
        .args(["http", "auto", &mcp_url, KEY_A])
        .env_remove("CODEBOX_API_KEY")
        .env_remove("CODEBOX_BASE_URL")
        .stdin(Stdio::null())
        .output()
        .expect("running the Python mcp client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ok: "),
        "the mcp client through nginx failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    // The E2B SDK, unchanged, with the proxy as its API and sandbox URL: sandbox ids are
    // session ids minted by a node, sandbox traffic names its sandbox in `E2b-Sandbox-Id`.
    // Every operation passes, sync and async, but listing: it goes to any one server and
    // lists that server's sandboxes only (no fan-out), so it may miss the run's sandbox.
    let out = Command::new(crate::e2b::client_python())
        .arg(repo_file("tests/python/e2b_compat.py"))
        .arg("full")
        .env("E2B_API_URL", &url)
        .env("E2B_SANDBOX_URL", &url)
        .env("E2B_API_KEY", KEY_A)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .stdin(Stdio::null())
        .output()
        .expect("running the E2B SDK");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // `FAILED sync:list: why`: the operation's name is up to the first ": ".
    let unexpected: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("FAILED "))
        .filter(|l| !l.split(": ").next().unwrap_or_default().ends_with(":list"))
        .collect();
    let passed = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert!(
        unexpected.is_empty() && passed >= 20,
        "the E2B SDK through nginx ({passed} passed):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A client that goes away mid-execution, through the proxy, interrupts its code: the
    // session answers the next execution instead of sleeping on.
    let victim = &native[0];
    let mut stream = TcpStream::connect(nginx.addr()).unwrap();
    let body = serde_json::json!({"code": "import time\nprint('started', flush=True)\ntime.sleep(3600)"}).to_string();
    let request = format!(
        "POST /v1/sessions/{}/execute HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer {KEY_A}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        victim.id(),
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    let mut seen = String::new();
    while !seen.contains("started") {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the stream ended before the code started: {seen}");
        seen.push_str(&line);
    }
    drop(reader);
    let after = victim.exec("print('after', x)").expect("the session after its client went away");
    assert_eq!(after.stdout(), "after 40\n", "{after:?}");

    // nginx restarts: nothing is lost, every session is where it was.
    nginx.restart();
    for (i, session) in native.iter().enumerate() {
        assert_eq!(x_of(session), format!("{}\n", 40 + i), "after the proxy restarted: {}", session.id());
    }

    // Every request that named a session reached its owner.
    let log = nginx.access_log();
    let routed: Vec<_> = log.iter().filter(|(_, _, _, node, _)| !node.is_empty()).collect();
    assert!(routed.len() >= native.len() * 3, "the access log shows the routed requests: {log:?}");
    for (method, path, status, node, upstream) in &routed {
        assert_ne!(*status, 503, "{method} {path}: no server was down yet");
        assert_eq!(upstream, &backends[node], "{method} {path} {status}: node {node} went to {upstream}");
    }

    // One server goes away: its sessions get 503 with Retry-After from the proxy, all others
    // keep working.
    let gone = "codebox-1".to_owned();
    servers.remove(&gone).unwrap().stop();
    for session in &native {
        let path = format!("/v1/sessions/{}", session.id());
        let (status, head, body) = http(&nginx.addr(), "GET", &path, "");
        if owner[session.id()] == gone {
            assert_eq!(status, 503, "{path}: {head}\n{body}");
            assert_eq!(retry_after(&head).as_deref(), Some("5"), "{head}");
            assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"]["kind"], "connection");
        } else {
            assert_eq!(status, 200, "{path}: {head}\n{body}");
        }
    }
    for id in &api01 {
        let (status, head, _) = http(&nginx.addr(), "GET", &format!("/api/v1/codebox/{id}/"), "");
        let expected = if node_of(id) == gone { 503 } else { 200 };
        assert_eq!(status, expected, "0.1 session {id}: {head}");
    }
    for id in &api02 {
        let (status, head, _) = http(&nginx.addr(), "GET", &format!("/api/v2/codebox/{id}/"), "");
        let expected = if owner[id] == gone { 503 } else { 200 };
        assert_eq!(status, expected, "0.2 session {id} of {}: {head}", owner[id]);
    }
    for (i, session) in native.iter().enumerate() {
        if owner[session.id()] != gone {
            assert_eq!(x_of(session), format!("{}\n", 40 + i), "{}", session.id());
        }
    }

    for session in native.iter().filter(|s| owner[s.id()] != gone) {
        let (status, head, _) = http(&nginx.addr(), "DELETE", &format!("/v1/sessions/{}", session.id()), "");
        assert!(status == 200 || status == 204, "deleting {} through the proxy: {head}", session.id());
    }
    drop(nginx);
    for (_, server) in servers {
        server.stop();
    }
}

/// A pod going away: on SIGTERM the server drains. Readiness fails and new sessions are
/// refused at once; an idle session is paused and says so honestly (503, `Retry-After`)
/// while the server is still there; an executing one keeps being served until its code ends,
/// then is paused too, and the drain ends early. The server that comes back on the same
/// session root (the pod's volume) resumes both.
#[test]
fn a_draining_server_pauses_its_sessions_and_the_next_one_on_its_volume_resumes_them() {
    let base = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = base.path().join("codebox-0");
    let uids = FIRST_UID + 200..FIRST_UID + 232;
    let options = || Options::new(Level::Bubblewrap).arg("--node-id").arg("codebox-0").arg("--drain-period").arg("10m");
    let mut first = Serve::start_on(&root, options(), uids.clone());
    let ready = first.request_with(None, "GET", "/ready", &[], b"", Duration::from_secs(30)).unwrap();
    assert_eq!(ready.status, 200, "{}", ready.text());
    let idle = first.new_session(KEY_A);
    let busy = first.new_session(KEY_A);
    assert_eq!(first.exec(KEY_A, &idle, "x = 7\nprint('set')").ok(), "set\n");
    assert_eq!(first.exec(KEY_A, &busy, "y = 8\nprint('set')").ok(), "set\n");

    std::thread::scope(|scope| {
        // The busy session runs until the test lets it finish (a file in its working
        // directory), so the drain cannot end before the checks below.
        let running = scope.spawn(|| {
            first.exec(
                KEY_A,
                &busy,
                "import os, time\nprint('waiting', flush=True)\nwhile not os.path.exists('go'):\n    time.sleep(0.05)\nprint('done')",
            )
        });
        wait_until("the busy session's code to start", Duration::from_secs(60), || {
            let info = first.request(KEY_A, "GET", &format!("/v1/sessions/{busy}"), None).json();
            info["status"]["state"] == "busy"
        });

        let term = Command::new("kill").args(["-TERM", &first.child.id().to_string()]).status().unwrap();
        assert!(term.success());
        wait_until("readiness to fail", Duration::from_secs(60), || {
            first.request_with(None, "GET", "/ready", &[], b"", Duration::from_secs(30)).is_ok_and(|r| r.status == 503)
        });
        let refused = first.request(KEY_A, "POST", "/v1/sessions", Some(serde_json::json!({})));
        assert_eq!(refused.status, 503, "{}", refused.text());
        assert!(refused.header("retry-after").is_some(), "{}", refused.head);
        wait_until("the idle session to be paused", Duration::from_secs(120), || {
            first.request(KEY_A, "GET", &format!("/v1/sessions/{idle}"), None).json()["state"] == "paused"
        });
        let asked = first.request(
            KEY_A,
            "POST",
            &format!("/v1/sessions/{idle}/execute"),
            Some(serde_json::json!({"code": "x"})),
        );
        assert_eq!(asked.status, 503, "a paused session while the server goes away: {}", asked.text());
        assert!(asked.header("retry-after").is_some(), "{}", asked.head);
        assert!(asked.text().contains("going away"), "{}", asked.text());

        // The executing session is still served: its file arrives, its code ends.
        let put = first.request_with(
            Some(KEY_A),
            "PUT",
            &format!("/v1/sessions/{busy}/files/go"),
            &[("Content-Type", "application/octet-stream")],
            b"go",
            Duration::from_secs(60),
        );
        assert!(put.as_ref().is_ok_and(|r| r.status == 200 || r.status == 201), "{put:?}");
        let execution = running.join().unwrap();
        assert_eq!(execution.ok(), "waiting\ndone\n");
    });
    // Every session paused: the drain ends early and the server exits by itself.
    let status = first.child.wait().unwrap();
    assert!(status.success(), "codebox serve exited with {status}");
    drop(first);

    let second = Serve::start_on(&root, options(), uids);
    assert_eq!(second.exec(KEY_A, &idle, "print(x)").ok(), "7\n");
    assert_eq!(second.exec(KEY_A, &busy, "print(y)").ok(), "8\n");
    second.stop();
}

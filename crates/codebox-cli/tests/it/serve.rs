//! `codebox serve` as a process: what a SIGKILLed server leaves behind, and what the next
//! one on the same session root makes of it (isolation research, section 10, case 20).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use codebox_local::sandbox::cgroup::CgroupManager;
use codebox_local::sandbox::uid::{processes_in_range, running_as_root};

const KEY: &str = "serve-test-key";

/// A `codebox serve` process and the address it listens on.
struct ServeProcess {
    child: Child,
    addr: String,
}

impl ServeProcess {
    fn start(root: &Path, uids: &str, pool: usize) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_codebox"))
            .args(["serve", "--addr", "127.0.0.1:0", "--api-key", KEY, "--log-format", "json"])
            .args(["--isolation", "bubblewrap", "--require-isolation", "--workdir-size", "64M"])
            .args(["--session-uids", uids, "--pool-size", &pool.to_string()])
            .arg("--session-root")
            .arg(root)
            .env("RUST_LOG", "info")
            .env_remove("CODEBOX_SERVER_API_KEYS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn codebox serve");
        // The listening line names the address; the rest of the log is drained in the background.
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
        std::thread::spawn(move || for _ in lines {});
        Self { child, addr }
    }

    /// One request on a fresh connection: the status and the body (chunk framing and all).
    fn request(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> (u16, String) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(180))).unwrap();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        (status, body)
    }

    fn new_session(&self) -> String {
        let (status, body) = self.request("POST", "/v1/sessions", Some(serde_json::json!({})));
        assert_eq!(status, 201, "{body}");
        let info: serde_json::Value = serde_json::from_str(&body).expect("SessionInfo JSON");
        info["id"].as_str().unwrap().to_owned()
    }

    fn execute(&self, id: &str, code: &str) -> (u16, String) {
        self.request("POST", &format!("/v1/sessions/{id}/execute"), Some(serde_json::json!({ "code": code })))
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < deadline, "{what}: still not the case after {deadline:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The session cgroups a server with process id `pid` made.
fn cgroups_of(pid: u32) -> Vec<PathBuf> {
    let manager = CgroupManager::detect(Path::new("/sys/fs/cgroup")).expect("cgroups usable here (root)");
    let prefix = format!("{pid}-");
    manager
        .bases()
        .iter()
        .filter_map(|b| std::fs::read_dir(b).ok())
        .flat_map(|rd| rd.flatten())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&dir))
        .map(str::to_owned)
        .collect()
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
}

// 20: a SIGKILLed server takes its kernels, bubblewrap and their children with it; the
// next server on the same root sweeps the cgroups, images and directories left behind and
// answers the old session with 410 Gone.
#[test]
fn a_killed_server_leaves_nothing_running_and_the_next_one_sweeps_and_says_lost() {
    assert!(running_as_root(), "this case needs root and bubblewrap (CI has both)");
    use std::os::unix::fs::PermissionsExt;
    let base = tempfile::tempdir().unwrap();
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = base.path().join("sessions");
    let scratch = root.join("tmp");
    let range = 322_000..322_010;

    let first = ServeProcess::start(&root, "322000-322009", 1);
    let id = first.new_session();
    // A child and an escaped daemon (setsid double fork) besides the kernel.
    let code = "import os, subprocess\n\
                subprocess.Popen(['sleep', '600'])\n\
                subprocess.Popen(['setsid', 'sh', '-c', 'sleep 600 & exit 0'])\n\
                open('kept.txt', 'w').write('data')\n\
                print('uid', os.getuid())";
    let (status, out) = first.execute(&id, code);
    assert_eq!(status, 200, "{out}");
    assert!(out.contains("uid 32200"), "the session runs under a uid of the range: {out}");
    wait_until("the children run", Duration::from_secs(10), || processes_in_range(&range).len() >= 4);
    let old_pid = first.child.id();
    assert!(!cgroups_of(old_pid).is_empty(), "sessions have cgroups");
    assert!(!mounts_under(&scratch).is_empty(), "the working directory is a mounted image");

    let mut first = first;
    first.child.kill().unwrap(); // SIGKILL
    first.child.wait().unwrap();
    wait_until("every kernel, bwrap and child of the killed server is gone", Duration::from_secs(5), || {
        processes_in_range(&range).is_empty()
    });
    // What only a sweep removes: the image stays mounted, the directories and cgroups stay.
    assert!(!mounts_under(&scratch).is_empty(), "a SIGKILLed server cannot unmount");
    assert!(entries(&scratch).iter().any(|e| e.starts_with("codebox-")), "{:?}", entries(&scratch));
    assert!(!cgroups_of(old_pid).is_empty(), "a SIGKILLed server cannot remove its cgroups");

    let second = ServeProcess::start(&root, "322000-322009", 0);
    assert!(mounts_under(&scratch).is_empty(), "stale images are unmounted: {:?}", mounts_under(&scratch));
    assert!(entries(&scratch).is_empty(), "stale session directories are removed: {:?}", entries(&scratch));
    assert!(cgroups_of(old_pid).is_empty(), "stale cgroups are removed: {:?}", cgroups_of(old_pid));
    assert!(processes_in_range(&range).is_empty());

    for (method, path) in [("GET", format!("/v1/sessions/{id}")), ("POST", format!("/v1/sessions/{id}/execute"))] {
        let body = (method == "POST").then(|| serde_json::json!({"code": "1"}));
        let (status, answer) = second.request(method, &path, body);
        assert_eq!(status, 410, "{method} {path}: {answer}");
        assert!(answer.contains("lost when the server restarted") && answer.contains("session_lost"), "{answer}");
    }
    let (status, _) = second.request("GET", "/v1/sessions/never-existed", None);
    assert_eq!(status, 404, "an id no server ever had is simply unknown");

    // The new server works, and a graceful stop leaves nothing either.
    let fresh = second.new_session();
    let (status, out) = second.execute(&fresh, "print(6 * 7)");
    assert_eq!(status, 200, "{out}");
    assert!(out.contains("42"), "{out}");

    // A second server on a root in use is refused, and sweeps nothing.
    let out = Command::new(env!("CARGO_BIN_EXE_codebox"))
        .args(["serve", "--addr", "127.0.0.1:0", "--api-key", KEY, "--session-uids", "322000-322009"])
        .arg("--session-root")
        .arg(&root)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another server is using the session root"), "{err}");
    let (status, out) = second.execute(&fresh, "print('still', 6 * 7)");
    assert_eq!(status, 200, "{out}");
    assert!(out.contains("still 42"), "the running server's session was left alone: {out}");
    let mut second = second;
    let term = Command::new("kill").args(["-TERM", &second.child.id().to_string()]).status().unwrap();
    assert!(term.success());
    assert!(second.child.wait().unwrap().success());
    assert!(processes_in_range(&range).is_empty());
    assert!(mounts_under(&scratch).is_empty(), "{:?}", mounts_under(&scratch));
    assert!(
        entries(&scratch).iter().all(|e| !e.starts_with("codebox-")),
        "working directories are removed at session end: {:?}",
        entries(&scratch)
    );
}

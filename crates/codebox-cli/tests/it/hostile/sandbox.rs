//! Hostile-tenant cases: the sandbox levels.
//!
//! What a kernel may see of the host: other processes' `/proc` entries (the server's command
//! line, another tenant's kernel), the host's sockets (UDP and TCP on loopback, abstract and
//! path-named Unix sockets), the server's environment; how far it can write on the host's
//! disk through `$TMPDIR` and `$HOME`; and whether a kill is told apart from running out of
//! memory after children of the kernel were OOM-killed.

use std::os::unix::net::{UnixListener, UnixStream};

use super::*;

/// Run `code` with bash in session `id` of `key`.
fn exec_bash(serve: &Serve, key: &str, id: &str, code: &str) -> Execution {
    let body = serde_json::json!({ "code": code, "options": { "language": "bash" } });
    let reply = serve.request(key, "POST", &format!("/v1/sessions/{id}/execute"), Some(body));
    assert_eq!(reply.status, 200, "execute: {}", reply.text());
    Execution::parse(&reply.text())
}

/// The uid a process runs under, from its `/proc/<pid>/status`.
fn uid_of(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("Uid:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// A kernel reads neither the server's `/proc/<pid>` (its command line names the key file,
/// and may hold keys) nor another tenant's kernel's, and still reads its own.
fn other_processes_are_out_of_sight(level: Level) {
    let serve = Serve::start(Options::new(level));
    let a = serve.new_session(KEY_A);
    if level == Level::None {
        assert!(serve.gaps(KEY_A, &a).contains(&"host_processes".into()));
        serve.stop();
        return;
    }
    let b = serve.new_session(KEY_B);
    let uid_a: u32 = serve.exec(KEY_A, &a, "import os; print(os.getuid())").ok().trim().parse().unwrap();
    serve.exec(KEY_B, &b, "print('b runs')").ok();
    let others: Vec<i32> = processes_in_range(&serve.uids).into_iter().filter(|p| uid_of(*p) != Some(uid_a)).collect();
    assert!(!others.is_empty(), "tenant B's kernel runs under a session uid");
    let targets: Vec<String> = std::iter::once(serve.child.id() as i32).chain(others).map(|p| p.to_string()).collect();
    let code = format!(
        r#"
import os
seen = []
for pid in [{targets}]:
    for name in ("cmdline", "environ", "status", "maps"):
        try:
            open("/proc/%d/%s" % (pid, name), "rb").read()
            seen.append("%d/%s" % (pid, name))
        except OSError:
            pass
print("seen:", " ".join(seen) or "nothing")
print("own:", len(open("/proc/self/status").read()) > 0, len(open("/proc/self/cmdline", "rb").read()) > 0)
"#,
        targets = targets.join(", ")
    );
    assert_eq!(serve.exec(KEY_A, &a, &code).ok(), "seen: nothing\nown: True True\n");
    serve.stop();
}

/// What kernels commonly do still works without the host's `/proc`, without IP sockets and
/// with `HOME` and `TMPDIR` in the working directory: numpy, a matplotlib figure (its cache
/// goes to `HOME`), a Python subprocess, `tempfile`.
fn kernels_still_work(level: Level) {
    let serve = Serve::start(Options::new(level));
    let a = serve.new_session(KEY_A);
    let code = r#"
import os, subprocess, sys, tempfile
import numpy as np
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
plt.plot(np.arange(10) ** 2)
plt.savefig("plot.png")
child = subprocess.run([sys.executable, "-c", "import numpy; print(numpy.ones(3).sum())"], capture_output=True, text=True)
print(child.stdout.strip(), child.returncode, child.stderr[-500:])
with tempfile.NamedTemporaryFile() as f:
    f.write(b"x")
print(os.path.getsize("plot.png") > 0, os.cpu_count() >= 1, np.linalg.inv(np.eye(3)).trace())
"#;
    assert_eq!(serve.exec(KEY_A, &a, code).ok(), "3.0 0 \nTrue True 3.0\n");
    assert_eq!(exec_bash(&serve, KEY_A, &a, "echo $((6 * 7)) | cat").ok(), "42\n");
    serve.stop();
}

/// UDP to the host's loopback, a host abstract Unix socket and a world-writable Unix socket
/// file on the host: none is reached from a box without network where the level can hold
/// it; the Landlock level reports the socket file as its `host_unix_sockets` gap.
fn host_sockets_stay_out_of_reach(level: Level) {
    use std::os::linux::net::SocketAddrExt;
    let serve = Serve::start(Options::new(level));
    let a = serve.new_session(KEY_A);
    if level == Level::None {
        assert!(serve.gaps(KEY_A, &a).contains(&"host_network".into()));
        serve.stop();
        return;
    }
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_nonblocking(true).unwrap();
    let port = udp.local_addr().unwrap().port();
    let name = format!("codebox-hostile-{}-{port}", std::process::id());
    let abstract_listener =
        UnixListener::bind_addr(&std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    abstract_listener.set_nonblocking(true).unwrap();
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("host.sock");
    let path_listener = UnixListener::bind(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    path_listener.set_nonblocking(true).unwrap();
    let code = format!(
        r#"
import errno, socket
def attempt(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
def udp():
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"hostile", ("127.0.0.1", {port}))
def inet():
    socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
def unix(address):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(address)
print("udp=%s inet=%s abstract=%s path=%s" % (attempt(udp), attempt(inet), attempt(lambda: unix("\0{name}")), attempt(lambda: unix("{path}"))))
"#,
        path = path.display()
    );
    let out = serve.exec(KEY_A, &a, &code).ok().trim().to_owned();
    let facts: std::collections::BTreeMap<&str, &str> = out.split(' ').filter_map(|f| f.split_once('=')).collect();
    let mut buf = [0u8; 64];
    assert!(udp.recv_from(&mut buf).is_err(), "the host's UDP socket got a datagram from the box: {out}");
    assert!(abstract_listener.accept().is_err(), "the box reached the host's abstract socket: {out}");
    match level {
        Level::Landlock => {
            assert_eq!(facts["udp"], "EAFNOSUPPORT", "{out}");
            assert_eq!(facts["inet"], "EAFNOSUPPORT", "{out}");
            assert_eq!(facts["abstract"], "EPERM", "{out}");
            // Landlock does not govern connect(2) on a path: the level says so.
            assert!(serve.gaps(KEY_A, &a).contains(&"host_unix_sockets".into()));
        }
        _ => {
            assert_ne!(facts["abstract"], "ok", "{out}");
            assert_eq!(facts["path"], "ENOENT", "{out}");
            assert!(path_listener.accept().is_err(), "the box reached the host's socket file: {out}");
            assert!(serve.gaps(KEY_A, &a).is_empty());
        }
    }
    // The listeners are still the host's own.
    assert!(UnixStream::connect(&path).is_ok());
    serve.stop();
}

/// No variable of the server's environment reaches a kernel or a command of a box, at any
/// level, and the kernel has the sandbox's own (PATH, HOME, TMPDIR, LANG).
fn the_server_environment_stays_out(level: Level) {
    const SECRET: &str = "operator-secret-7b1f0c";
    let serve = Serve::start(Options::new(level).env("OPERATOR_SECRET", SECRET));
    let a = serve.new_session(KEY_A);
    let code = r#"
import os
print(sorted(k for k in os.environ if k in ("OPERATOR_SECRET", "RUST_LOG")), any("operator-secret" in v for v in os.environ.values()))
print(all(k in os.environ for k in ("PATH", "HOME", "TMPDIR", "LANG")))
"#;
    assert_eq!(serve.exec(KEY_A, &a, code).ok(), "[] False\nTrue\n");
    let env = exec_bash(&serve, KEY_A, &a, "env");
    assert!(!env.ok().contains(SECRET) && !env.ok().contains("RUST_LOG"), "{}", env.ok());
    serve.stop();
}

/// `$TMPDIR` and `$HOME` are inside the size-limited working area (64 MiB here): writing
/// more fails with ENOSPC instead of filling the host's disk.
fn home_and_tmpdir_are_bounded_by_the_work_area(level: Level) {
    let serve = Serve::start(Options::new(level));
    let a = serve.new_session(KEY_A);
    let code = r#"
import errno, os
def fill(directory):
    path = os.path.join(directory, "fill")
    chunk = b"x" * (1 << 20)
    try:
        with open(path, "wb") as f:
            for _ in range(128):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        result = "no error"
    except OSError as e:
        result = errno.errorcode.get(e.errno, str(e.errno))
    os.remove(path)
    return result
print(fill(os.environ["TMPDIR"]), fill(os.environ["HOME"]))
"#;
    assert_eq!(serve.exec(KEY_A, &a, code).ok(), "ENOSPC ENOSPC\n");
    assert_eq!(serve.exec(KEY_A, &a, "open('after', 'w').write('ok')").ok(), "");
    serve.stop();
}

/// Children of the kernel are OOM-killed; then the kernel itself is killed with SIGKILL:
/// that death is a plain kill, not "out of memory".
fn a_kill_after_children_ran_out_of_memory_is_a_plain_kill(level: Level) {
    let serve = Serve::start(Options::new(level).arg("--memory-limit").arg("256M"));
    let a = serve.new_session(KEY_A);
    // Shared memory escapes RLIMIT_DATA, so only the cgroup stops the child.
    let hog = r#"
import subprocess, sys
code = "import mmap\nm = mmap.mmap(-1, 1 << 30)\nfor i in range(0, len(m), 4096): m[i] = 1"
print([subprocess.run([sys.executable, "-c", code]).returncode for _ in range(2)])
"#;
    let first = serve.exec(KEY_A, &a, hog);
    // Where the cgroup kills the whole group on OOM (cgroup v2), the kernel went too, and
    // that death was out of memory; else the children alone were killed.
    match &first.failure {
        Some(f) => assert!(f.to_string().contains("out of memory"), "{first:?}"),
        None => assert_eq!(first.ok(), "[-9, -9]\n"),
    }
    let killed = serve.exec(KEY_A, &a, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)");
    let failure = killed.failure.as_ref().map(ToString::to_string).unwrap_or_default();
    assert!(failure.contains("signal 9"), "{killed:?}");
    assert!(!failure.contains("memory"), "a plain SIGKILL reported as out of memory: {failure}");
    wait_until("the box restarts", Duration::from_secs(60), || {
        let info = serve.request(KEY_A, "GET", &format!("/v1/sessions/{a}"), None).json();
        info["status"]["state"] == "idle"
    });
    assert_eq!(serve.exec(KEY_A, &a, "print(6 * 7)").ok(), "42\n");
    serve.stop();
}

per_level!(
    other_processes_are_out_of_sight,
    kernels_still_work,
    host_sockets_stay_out_of_reach,
    the_server_environment_stays_out,
    home_and_tmpdir_are_bounded_by_the_work_area,
    a_kill_after_children_ran_out_of_memory_is_a_plain_kill,
);

//! The API commands (`sessions`, `exec`, `sh`, `processes`, `files`, `install`, `templates`,
//! `metrics`, `history`, `contexts`) as a user runs them: the built binary against a real
//! `codebox serve`, the server and key from `CODEBOX_API_URL` and `CODEBOX_API_KEY`.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::hostile::{KEY_A, KEY_B, Level, Options, Serve, can_run};

/// A server of these tests, on a session root and uid range of its own.
struct Server {
    serve: Serve,
    _base: tempfile::TempDir,
}

impl Server {
    fn start() -> Self {
        // This file's uids: 347_000–347_099, ten per server.
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let first = 347_000 + NEXT.fetch_add(1, Ordering::Relaxed) * 10;
        assert!(first + 10 <= 347_100, "the CLI tests ran out of session uids");
        let base = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let serve = Serve::start_on(&base.path().join("sessions"), Options::new(Level::None), first..first + 10);
        Self { serve, _base: base }
    }

    /// `codebox ARGS` as tenant A, in an empty directory, with `stdin` piped in.
    fn run_with(&self, key: &str, args: &[&str], stdin: &[u8]) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_codebox"))
            .args(args)
            .env_remove("CODEBOX_BASE_URL")
            .env("CODEBOX_API_URL", format!("http://{}", self.serve.addr))
            .env("CODEBOX_API_KEY", key)
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run codebox");
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        Run { out: child.wait_with_output().unwrap(), args: args.join(" ") }
    }

    fn run(&self, args: &[&str]) -> Run {
        self.run_with(KEY_A, args, b"")
    }

    /// `codebox ARGS` as tenant A, left running, its output piped.
    fn spawn(&self, args: &[&str]) -> std::process::Child {
        Command::new(env!("CARGO_BIN_EXE_codebox"))
            .args(args)
            .env_remove("CODEBOX_BASE_URL")
            .env("CODEBOX_API_URL", format!("http://{}", self.serve.addr))
            .env("CODEBOX_API_KEY", KEY_A)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run codebox")
    }
}

/// A finished command.
struct Run {
    out: Output,
    args: String,
}

impl Run {
    fn code(&self) -> i32 {
        self.out.status.code().expect("exited")
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }

    /// Assert exit `code`; stdout.
    fn exit(&self, code: i32) -> String {
        assert_eq!(self.code(), code, "codebox {}\nstdout: {}\nstderr: {}", self.args, self.stdout(), self.stderr());
        self.stdout()
    }

    /// Assert success; stdout.
    fn ok(&self) -> String {
        self.exit(0)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok())
            .unwrap_or_else(|e| panic!("codebox {}: not JSON ({e}): {}", self.args, self.stdout()))
    }
}

#[test]
fn sessions_are_created_listed_described_timed_and_killed() {
    if !can_run() {
        return;
    }
    let s = Server::start();
    let id = s.run(&["sessions", "create", "--metadata", "user=alice", "--env", "GREETING=hi"]).ok().trim().to_owned();
    // `<node>--<32 hex>`: the server names itself after the host by default.
    assert_eq!(id.rsplit("--").next().map(str::len), Some(32), "the id alone on stdout: {id:?}");
    let other = s.run(&["sessions", "create", "--json", "--template", "bash"]).json();
    let other_id = other["id"].as_str().unwrap().to_owned();
    assert_eq!(other["template"], "bash", "{other}");

    // The session outlives the command that made it.
    let listed = s.run(&["sessions", "list"]).ok();
    assert!(listed.contains(&id) && listed.contains(&other_id), "{listed}");
    let mine = s.run(&["sessions", "list", "--json", "--metadata", "user=alice"]).json();
    let ids: Vec<&str> = mine.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [id.as_str()]);
    assert_eq!(s.run_with(KEY_B, &["sessions", "list", "--json"], b"").json(), serde_json::json!([]), "per key");

    let info = s.run(&["sessions", "info", &id]).ok();
    assert!(info.contains(&format!("id:          {id}")) && info.contains("metadata:    user=alice"), "{info}");
    assert!(info.contains("env:         GREETING"), "{info}");
    let info = s.run(&["sessions", "info", "--json", &id]).json();
    assert_eq!(info["metadata"]["user"], "alice");
    assert!(info["expires_at"].is_null(), "{info}");

    let timed = s.run(&["sessions", "set-timeout", "--json", &id, "600"]).json();
    let (created, expires) = (timed["created_at"].as_f64().unwrap(), timed["expires_at"].as_f64().unwrap());
    assert!(expires > created, "{timed}");
    assert!(s.run(&["sessions", "set-timeout", &id, "600"]).ok().contains(" ends at "));

    assert_eq!(s.run(&["sessions", "kill", &id]).ok(), format!("killed {id}\n"));
    assert_eq!(s.run(&["sessions", "kill", "--json", &other_id]).json()["killed"], true);
    assert_eq!(s.run(&["sessions", "list", "--json"]).json(), serde_json::json!([]));

    // Unknown sessions: the server's message, exit 2 (and a JSON error under --json).
    let gone = s.run(&["sessions", "info", &id]);
    gone.exit(2);
    assert!(gone.stderr().contains(&format!("not found: session {id}")), "{}", gone.stderr());
    let gone = s.run(&["sessions", "kill", "--json", "no-such-session"]);
    let doc: serde_json::Value = serde_json::from_str(&gone.exit(2)).unwrap();
    assert_eq!(doc["kind"], "NotFound", "{doc}");
    assert!(doc["error"].as_str().unwrap().contains("no-such-session"), "{doc}");
    s.run(&["sessions", "set-timeout", "no-such-session", "5"]).exit(2);

    // Usage, authentication and connection errors: exit 2.
    let bad = s.run(&["sessions", "set-timeout", &id, "0"]);
    bad.exit(2);
    assert!(bad.stderr().contains("positive number of seconds"), "{}", bad.stderr());
    s.run(&["sessions", "create", "--metadata", "no-equals-sign"]).exit(2);
    s.run(&["sessions", "frobnicate"]).exit(2);
    let denied = s.run_with("not-a-key-of-this-server", &["sessions", "list"], b"");
    denied.exit(2);
    assert!(denied.stderr().contains("authentication failed"), "{}", denied.stderr());
    let no_key = s.run_with("", &["sessions", "list"], b"");
    no_key.exit(2);
    assert!(no_key.stderr().contains("CODEBOX_API_KEY"), "{}", no_key.stderr());
    let nowhere = s.run(&["sessions", "list", "--url", "http://127.0.0.1:9"]);
    nowhere.exit(2);
    assert!(nowhere.stderr().contains("connection failed"), "{}", nowhere.stderr());
    s.serve.stop();
}

#[test]
fn exec_streams_output_and_fails_when_the_code_raised_and_sh_runs_programs() {
    if !can_run() {
        return;
    }
    let s = Server::start();
    let id = s.run(&["sessions", "create"]).ok().trim().to_owned();

    let ran = s.run(&["exec", &id, "import sys\nprint('out')\nprint('err', file=sys.stderr)\nx = 6 * 7\nx"]);
    assert_eq!(ran.ok(), "out\n42\n");
    assert_eq!(ran.stderr(), "err\n");
    assert_eq!(s.run(&["exec", &id, "print(x + 1)"]).ok(), "43\n", "state stays between commands");
    assert_eq!(s.run_with(KEY_A, &["exec", &id, "-"], b"print('from stdin')").ok(), "from stdin\n");

    let raised = s.run(&["exec", &id, "1 / 0"]);
    raised.exit(1);
    assert!(raised.stderr().contains("ZeroDivisionError"), "{}", raised.stderr());
    let timed_out = s.run(&["exec", &id, "--timeout", "1", "import time; time.sleep(30)"]);
    timed_out.exit(1);
    assert!(timed_out.stderr().contains("timeout"), "{}", timed_out.stderr());

    let events: Vec<serde_json::Value> = s
        .run(&["exec", "--json", &id, "print('a'); 1 / 0"])
        .exit(1)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(events[0]["type"], "stdout", "{events:?}");
    assert!(events.iter().any(|e| e["type"] == "error" && e["name"] == "ZeroDivisionError"), "{events:?}");
    assert_eq!(events.last().unwrap()["type"], "end", "{events:?}");

    let unknown = s.run(&["exec", "no-such-session", "print(1)"]);
    unknown.exit(2);
    assert!(unknown.stderr().contains("not found: session no-such-session"), "{}", unknown.stderr());

    assert_eq!(s.run(&["sh", &id, "--", "echo", "hello", "-n", "world"]).ok(), "hello -n world\n");
    s.run(&["sh", &id, "--", "mkdir", "sub"]).ok();
    assert_eq!(s.run(&["sh", &id, "--cwd", "sub", "--", "pwd"]).ok().trim_end().rsplit('/').next(), Some("sub"));
    let failed = s.run(&["sh", &id, "--", "sh", "-c", "echo oops >&2; exit 3"]);
    failed.exit(1);
    assert!(failed.stderr().contains("oops") && failed.stderr().contains("status 3"), "{}", failed.stderr());
    let out: serde_json::Value = serde_json::from_str(&failed_json(&s, &id)).unwrap();
    assert_eq!(out["exit_code"], 3, "{out}");
    s.run(&["sh", &id]).exit(2);
    s.run(&["sh", "no-such-session", "--", "true"]).exit(2);
    s.serve.stop();
}

fn failed_json(s: &Server, id: &str) -> String {
    s.run(&["sh", "--json", id, "--", "sh", "-c", "exit 3"]).exit(1)
}

#[test]
fn files_go_up_and_down_in_chunks_and_are_listed_made_and_removed() {
    if !can_run() {
        return;
    }
    let s = Server::start();
    let id = s.run(&["sessions", "create"]).ok().trim().to_owned();
    let local = tempfile::tempdir().unwrap();
    // Larger than any one chunk or buffer on the way.
    let content: Vec<u8> =
        (0..(9 * 1024 * 1024 + 7)).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let big = local.path().join("big.bin");
    std::fs::write(&big, &content).unwrap();
    let big = big.to_str().unwrap();

    let put = s.run(&["files", "put", "--json", &id, big, "data/big.bin"]).json();
    assert_eq!(put["size"], content.len(), "{put}");
    assert_eq!(s.run(&["files", "put", &id, big]).ok(), format!("big.bin\t{} bytes\n", content.len()));
    assert_eq!(s.run_with(KEY_A, &["files", "put", &id, "-", "note.txt"], b"from stdin").ok(), "note.txt\t10 bytes\n");
    assert_eq!(s.run(&["files", "mkdir", &id, "made/deep"]).ok(), "made/deep\n");

    let listed = s.run(&["files", "ls", &id]).ok();
    let mut lines: Vec<&str> = listed.lines().filter(|l| !l.ends_with(".codebox")).collect();
    lines.sort_unstable();
    let big_line = format!("file\t{}\tbig.bin", content.len());
    assert_eq!(lines, ["dir\t0\tdata", "dir\t0\tmade", "file\t10\tnote.txt", big_line.as_str()], "{listed}");
    let deep = s.run(&["files", "ls", "--json", "-r", &id, "made"]).json();
    let paths: Vec<&str> = deep.as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["made/deep"]);

    let back = local.path().join("back.bin");
    let got = s.run(&["files", "get", &id, "data/big.bin", back.to_str().unwrap()]).ok();
    assert!(got.ends_with(&format!("\t{} bytes\n", content.len())), "{got}");
    assert!(std::fs::read(&back).unwrap() == content, "the file came back changed");
    let piped = s.run(&["files", "get", &id, "note.txt", "-"]);
    assert_eq!(piped.out.stdout, b"from stdin");
    let got = s.run(&["files", "get", "--json", &id, "note.txt", back.to_str().unwrap()]).json();
    assert_eq!(got["bytes"], 10);

    assert_eq!(s.run(&["files", "rm", &id, "note.txt"]).ok(), "deleted note.txt\n");
    let missing = s.run(&["files", "get", &id, "note.txt", back.to_str().unwrap()]);
    missing.exit(1);
    assert!(missing.stderr().contains("not found"), "{}", missing.stderr());
    s.run(&["files", "rm", &id, "note.txt"]).exit(1);
    let escape = s.run(&["files", "get", &id, "../../etc/passwd", "-"]);
    escape.exit(2);
    assert!(escape.stderr().contains("unsafe path"), "{}", escape.stderr());
    let unknown_local = s.run(&["files", "put", &id, "/no/such/local/file"]);
    unknown_local.exit(1);
    assert!(unknown_local.stderr().contains("/no/such/local/file"), "{}", unknown_local.stderr());
    s.run(&["files", "ls", "no-such-session"]).exit(2);
    s.serve.stop();
}

#[test]
fn background_processes_are_started_listed_fed_followed_and_signalled() {
    if !can_run() {
        return;
    }
    let s = Server::start();
    let id = s.run(&["sessions", "create"]).ok().trim().to_owned();

    // A program that answers the lines it reads, followed from its start by `start --follow`.
    let echo = "while read l; do echo got $l; done; echo bye >&2; exit 3";
    let follower =
        s.spawn(&["processes", "start", &id, "--stdin", "--tag", "echo", "--follow", "--", "sh", "-c", echo]);
    let pid = wait_for(|| {
        let list = s.run(&["processes", "ls", "--json", &id]).json();
        list.as_array().unwrap().iter().find(|p| p["spec"]["tag"] == "echo").map(|p| p["pid"].to_string())
    });
    let listed = s.run(&["processes", "ls", &id]).ok();
    assert!(listed.contains(&format!("{pid}\techo\tsh -c while read l")), "{listed}");
    assert_eq!(s.run(&["processes", "input", &id, &pid, "one\n"]).ok(), format!("wrote 4 bytes to {pid}\n"));
    s.run_with(KEY_A, &["processes", "input", &id, &pid, "--close"], b"two\n").ok();
    let followed = follower.wait_with_output().unwrap();
    let (out, err) = (String::from_utf8_lossy(&followed.stdout), String::from_utf8_lossy(&followed.stderr));
    assert_eq!(followed.status.code(), Some(1), "{out}\n{err}");
    assert_eq!(out, "got one\ngot two\n");
    assert!(err.contains(&format!("started process {pid}")) && err.contains("bye\n"), "{err}");
    assert!(err.contains("exited with status 3"), "{err}");

    // Started and left running: its pid on stdout; `logs` follows it to its end.
    let ticks = "for i in 1 2 3 4 5 6 7 8 9 10; do echo tick $i; sleep 0.2; done";
    let pid = s.run(&["processes", "start", &id, "--", "sh", "-c", ticks]).ok().trim().to_owned();
    let logs = s.run(&["processes", "logs", &id, &pid]).ok();
    assert!(logs.ends_with("tick 10\n"), "{logs}");

    // Signalled: gone from the list; its end still answers `logs --json` for a while.
    let sleeper = s.run(&["processes", "start", "--json", &id, "--tag", "sleeper", "--", "sleep", "100"]).json();
    let pid = sleeper["pid"].to_string();
    s.run(&["processes", "input", &id, &pid, "x"]).exit(2); // started without --stdin
    assert_eq!(s.run(&["processes", "kill", &id, &pid, "--signal", "kill"]).ok(), format!("sent SIGKILL to {pid}\n"));
    wait_for(|| (!s.run(&["processes", "ls", &id]).ok().contains("sleeper")).then_some(()));
    let end = s.run(&["processes", "logs", "--json", &id, &pid]).exit(1);
    let end: serde_json::Value = serde_json::from_str(end.lines().last().unwrap()).unwrap();
    assert_eq!((end["type"].as_str(), end["signal"].as_i64()), (Some("end"), Some(9)), "{end}");

    s.run(&["processes", "kill", &id, &pid, "--signal", "HUP"]).exit(2);
    s.run(&["processes", "start", &id]).exit(2);
    s.run(&["processes", "ls", "no-such-session"]).exit(2);
    s.serve.stop();
}

/// Poll `f` until it gives a value (at most 30 s).
fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "gave up waiting");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn install_templates_metrics_history_and_contexts() {
    if !can_run() {
        return;
    }
    let s = Server::start();
    let id = s.run(&["sessions", "create"]).ok().trim().to_owned();

    let templates = s.run(&["templates", "--json"]).json();
    let names: Vec<&str> = templates.as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"python") && names.contains(&"bash"), "{names:?}");
    assert!(s.run(&["templates"]).ok().lines().any(|l| l.starts_with("bash\tbash\t")));

    let installed = s.run(&["install", "--json", &id, "tabulate"]).json();
    assert_eq!(installed["installed"], serde_json::json!(["tabulate"]));
    assert_eq!(s.run(&["exec", &id, "import tabulate; print('ok')"]).ok(), "ok\n");
    let bad = s.run(&["install", &id, "codebox-no-such-package-zzz==0.0.0"]);
    bad.exit(1);
    assert!(bad.stderr().contains("install failed"), "{}", bad.stderr());
    s.run(&["install", &id]).exit(2);

    let metrics = s.run(&["metrics", "--json", &id]).json();
    assert!(metrics["memory_used_bytes"].as_u64().unwrap() > 0, "{metrics}");
    assert!(s.run(&["metrics", &id]).ok().starts_with("cpu:"));

    s.run(&["exec", &id, "1 / 0"]).exit(1);
    let history = s.run(&["history", "--json", "--limit", "2", &id]).json();
    let history = history.as_array().unwrap();
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(history[0]["outcome"], "error", "newest first: {history:?}");
    assert!(s.run(&["history", &id]).ok().lines().next().unwrap().ends_with("1 / 0"));

    let contexts = s.run(&["contexts", "--json", &id]).json();
    assert_eq!(contexts[0]["id"], "default", "{contexts}");
    assert!(s.run(&["contexts", &id]).ok().starts_with("default\t"));
    for command in ["metrics", "history", "contexts"] {
        s.run(&[command, "no-such-session"]).exit(2);
    }
    s.run(&["install", "no-such-session", "tabulate"]).exit(2);
    s.serve.stop();
}

#[test]
fn dist_assets_writes_completions_and_man_pages_of_every_command() {
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_codebox"))
        .arg("dist-assets")
        .arg(out.path())
        .stdin(Stdio::null())
        .status()
        .expect("run codebox");
    assert!(status.success());
    let bash = std::fs::read_to_string(out.path().join("completions/codebox.bash")).unwrap();
    for word in ["sessions", "set-timeout", "exec", "processes", "files", "mkdir", "--json", "--api-key"] {
        assert!(bash.contains(word), "bash completions lack {word}");
    }
    for shell in ["_codebox", "codebox.fish", "codebox.elv", "_codebox.ps1"] {
        assert!(out.path().join("completions").join(shell).is_file(), "{shell}");
    }
    let exec = std::fs::read_to_string(out.path().join("man/codebox-exec.1")).unwrap();
    assert!(exec.contains("SESSION") && exec.contains("CODEBOX_API_KEY"), "{exec}");
    for page in ["codebox-exec.1", "codebox-sessions-kill.1", "codebox-files-get.1", "codebox-templates.1"] {
        let text = std::fs::read_to_string(out.path().join("man").join(page)).unwrap();
        assert!(text.contains("Exit status: 0 ok; 1 the code raised"), "{page} documents the exit statuses");
    }
    for page in [
        "codebox.1",
        "codebox-sessions-create.1",
        "codebox-files-put.1",
        "codebox-sh.1",
        "codebox-processes-start.1",
        "codebox-history.1",
    ] {
        assert!(out.path().join("man").join(page).is_file(), "{page}");
    }
    assert!(!out.path().join("man/codebox-dist-assets.1").exists(), "the hidden command has no page");
}

/// `codebox::blocking` against the same real server the commands use: a program that is
/// not async creates, uses and drops a session.
#[test]
fn the_blocking_client_creates_uses_and_on_drop_deletes_a_session() {
    use codebox::blocking::Client;
    use codebox::{ErrorKind, ExecEvent, SessionFilter, SessionRequest};

    if !can_run() {
        return;
    }
    let s = Server::start();
    let client =
        Client::builder().with_base_url(format!("http://{}", s.serve.addr)).with_api_key(KEY_A).build().unwrap();
    let b = client.create(SessionRequest::new().with_metadata("from", "blocking")).unwrap();
    assert_eq!(b.info().unwrap().metadata["from"], "blocking");
    let events: Vec<ExecEvent> =
        b.run_stream("for i in range(3): print(i)", Default::default()).unwrap().map(Result::unwrap).collect();
    let printed: String = events
        .iter()
        .filter_map(|e| if let ExecEvent::Stdout { text } = e { Some(text.as_str()) } else { None })
        .collect();
    assert_eq!(printed, "0\n1\n2\n");
    assert!(matches!(events.last(), Some(ExecEvent::End { .. })), "{events:?}");

    let content: Vec<u8> = (0..(5 * 1024 * 1024 + 3)).map(|i: u32| (i % 251) as u8).collect();
    assert_eq!(b.upload("blob.bin", std::io::Cursor::new(content.clone())).unwrap().size, content.len() as u64);
    let mut back = Vec::new();
    std::io::Read::read_to_end(&mut b.download("blob.bin").unwrap(), &mut back).unwrap();
    assert!(back == content, "the file came back changed ({} bytes)", back.len());
    assert_eq!(b.download("absent.bin").unwrap_err().kind(), ErrorKind::NotFound);

    let attached = client.get(b.id()).unwrap();
    drop(attached);
    let listed = client.list(SessionFilter::new()).unwrap();
    assert_eq!(listed.len(), 1, "dropping an attached box leaves the session: {listed:?}");
    assert_eq!(client.get("no-such-session").unwrap_err().kind(), ErrorKind::NotFound);

    // A created box deletes its session when dropped, as an async one does.
    drop(b);
    crate::hostile::wait_until("the dropped box's session is deleted", std::time::Duration::from_secs(30), || {
        client.list(SessionFilter::new()).unwrap().is_empty()
    });
    s.serve.stop();
}

#[test]
fn sessions_are_paused_and_resumed_with_their_variables() {
    if !can_run() {
        return;
    }
    let s = Server::start();
    let id = s.run(&["sessions", "create"]).ok().trim().to_owned();
    assert_eq!(s.run(&["exec", &id, "kept = 6 * 7\nhandle = open('f.txt', 'w')"]).ok(), "");

    let paused = s.run(&["sessions", "pause", "--json", &id]).json();
    let lost: Vec<&str> = paused["unrestored"].as_array().unwrap().iter().filter_map(|u| u["name"].as_str()).collect();
    assert_eq!(lost, ["handle"], "{paused}");
    let listed = s.run(&["sessions", "list", "--json"]).json();
    assert_eq!(listed[0]["state"], "paused", "{listed}");

    let resumed = s.run(&["sessions", "resume", &id]).ok();
    assert!(resumed.starts_with(&format!("resumed {id}\n")), "{resumed}");
    assert!(resumed.contains("not restored: handle"), "{resumed}");
    // The first execution after a resume says too what did not come back.
    let first = s.run(&["exec", &id, "print(kept)"]).ok();
    assert!(first.ends_with("42\n") && first.contains("handle"), "{first}");
    assert_eq!(s.run(&["exec", &id, "print(kept)"]).ok(), "42\n");

    // Text output; an unknown session is exit 2.
    assert_eq!(s.run(&["sessions", "pause", &id]).ok().lines().next(), Some(format!("paused {id}").as_str()));
    let gone = s.run(&["sessions", "resume", "no-such-session"]);
    gone.exit(2);
    assert!(gone.stderr().contains("no-such-session"), "{}", gone.stderr());
    s.run(&["sessions", "pause", "no-such-session"]).exit(2);
    s.run(&["sessions", "kill", &id]).ok();
}

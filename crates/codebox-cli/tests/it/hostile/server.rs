//! Hostile-tenant cases against the server itself: keys, sessions, request bodies.

use super::*;

/// Tenant B cannot see, drive or delete tenant A's session, whatever the level.
fn another_tenants_session_is_invisible(level: Level) {
    let serve = Serve::start(Options::new(level));
    let a = serve.new_session(KEY_A);
    assert_eq!(serve.exec(KEY_A, &a, "print(6 * 7)").ok(), "42\n");
    for (method, path) in [
        ("GET", format!("/v1/sessions/{a}")),
        ("POST", format!("/v1/sessions/{a}/execute")),
        ("GET", format!("/v1/sessions/{a}/files")),
        ("DELETE", format!("/v1/sessions/{a}")),
    ] {
        let body = (method == "POST").then(|| serde_json::json!({"code": "1"}));
        let reply = serve.request(KEY_B, method, &path, body);
        assert_eq!(reply.status, 404, "{method} {path}: {}", reply.text());
    }
    let listed = serve.request(KEY_B, "GET", "/v1/sessions", None).json();
    assert!(!listed.to_string().contains(&a), "B lists A's session: {listed}");
    assert_eq!(serve.exec(KEY_A, &a, "print('still', 6 * 7)").ok(), "still 42\n");
    serve.stop();
}

/// Two keys on the `none` level, which cannot keep tenants apart: refused unless the
/// operator says `--allow-weak-isolation` (the harness says it at that level, so its
/// servers start). The level asked for here is `none` whatever the case's level.
fn two_keys_without_isolation_are_refused(_level: Level) {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, format!("{KEY_A}\n{KEY_B}\n")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_codebox"))
        .args(["serve", "--addr", "127.0.0.1:0", "--isolation", "none", "--pool-size", "0", "--no-session-uids"])
        .arg("--api-key-file")
        .arg(&keys)
        .arg("--session-root")
        .arg(dir.path().join("sessions"))
        .env_remove("CODEBOX_SERVER_API_KEYS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A server that accepted the keys would serve until stopped: give it a minute to refuse.
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("codebox serve served two keys at isolation none without --allow-weak-isolation");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("--allow-weak-isolation"), "{stderr}");
}

/// Timeouts no `Duration` can hold (or not numbers at all), on execute and on commands,
/// are a 400 saying so, and the server goes on answering.
fn absurd_timeouts_are_refused(level: Level) {
    // A handler that panics shows where in the kept log.
    let serve = Serve::start(Options::new(level).env("RUST_BACKTRACE", "1").keep_log());
    let log = || serve.log.lock().unwrap().join("\n");
    let id = serve.new_session(KEY_A);
    let json = [("Content-Type", "application/json")];
    for timeout in ["1e300", "1.9e19", "-1", "NaN", "\"soon\""] {
        for (path, body) in [
            ("execute", format!(r#"{{"code": "1", "options": {{"timeout": {timeout}}}}}"#)),
            ("commands", format!(r#"{{"program": "true", "timeout": {timeout}}}"#)),
        ] {
            let path = format!("/v1/sessions/{id}/{path}");
            let reply = serve
                .request_with(Some(KEY_A), "POST", &path, &json, body.as_bytes(), Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("{path} with timeout {timeout}: no answer: {e}\n{}", log()));
            assert_eq!(reply.status, 400, "{path} with timeout {timeout}: {}", reply.text());
            assert_eq!(reply.json()["error"]["kind"], "invalid_input", "{}", reply.text());
        }
    }
    assert!(serve.healthy_within(Duration::from_secs(10)));
    assert_eq!(serve.exec(KEY_A, &id, "print(6 * 7)").ok(), "42\n");
    serve.stop();
}

/// One request whose body is written by `write_body` on its own thread while the answer is
/// read, so that a server answering before it read the whole body (and closing the
/// connection) is seen answering, not as a failed write. The answer's status and body.
fn exchange(
    addr: &str,
    head: String,
    write_body: impl FnOnce(&mut TcpStream) -> std::io::Result<()> + Send + 'static,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        // The server may close mid-body; what matters is its answer.
        let _ = writer.write_all(head.as_bytes()).and_then(|()| write_body(&mut writer));
    });
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // A server that closes with body bytes unread resets the connection after its
            // answer; the answer already read stands.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !raw.is_empty() => break,
            Err(e) => panic!("no answer: {e}"),
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    sender.join().unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

fn head(addr: &str, key: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n");
    head.push_str("Connection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head + "\r\n"
}

/// Write `total` bytes of `b'x'` in 1 MiB pieces, chunked when `chunked`.
fn write_bytes(out: &mut TcpStream, total: usize, chunked: bool) -> std::io::Result<()> {
    let piece = vec![b'x'; 1 << 20];
    let mut left = total;
    while left > 0 {
        let n = left.min(piece.len());
        if chunked {
            out.write_all(format!("{n:x}\r\n").as_bytes())?;
        }
        out.write_all(&piece[..n])?;
        if chunked {
            out.write_all(b"\r\n")?;
        }
        left -= n;
    }
    if chunked {
        out.write_all(b"0\r\n\r\n")?;
    }
    Ok(())
}

/// The upload limit fits the working directory: by default it is half of a small one
/// (here 64M, so 32M), an upload announced over it is 413 before any byte is read, a
/// chunked one over it is 413 once it crosses, and an upload under a limit set too high
/// for the disk is 507 `storage_full` when the disk fills, never 500.
fn uploads_fit_the_working_directory(level: Level) {
    let serve = Serve::start(Options::new(level));
    let id = serve.new_session(KEY_A);
    let info = serve.request(KEY_A, "GET", &format!("/v1/sessions/{id}"), None).json();
    assert_eq!(info["capabilities"]["max_upload_bytes"], 32 << 20, "{info}");
    let path = format!("/v1/sessions/{id}/files/big.bin");
    let announced = [("Content-Length", "41943040")];
    let (status, text) = exchange(&serve.addr, head(&serve.addr, KEY_A, "PUT", &path, &announced), |_| Ok(()));
    assert_eq!(status, 413, "{text}");
    let chunked = [("Transfer-Encoding", "chunked")];
    let (status, text) =
        exchange(&serve.addr, head(&serve.addr, KEY_A, "PUT", &path, &chunked), |out| write_bytes(out, 40 << 20, true));
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("too_large"), "{text}");
    serve.stop();

    let serve = Serve::start(Options::new(level).arg("--max-upload-bytes").arg("200M"));
    let id = serve.new_session(KEY_A);
    let path = format!("/v1/sessions/{id}/files/big.bin");
    for headers in [&[("Content-Length", "83886080")][..], &chunked[..]] {
        let is_chunked = headers == &chunked[..];
        let (status, text) = exchange(&serve.addr, head(&serve.addr, KEY_A, "PUT", &path, headers), move |out| {
            write_bytes(out, 80 << 20, is_chunked)
        });
        assert_eq!(status, 507, "{text}");
        assert!(text.contains("storage_full"), "{text}");
    }
    assert_eq!(serve.exec(KEY_A, &id, "print(6 * 7)").ok(), "42\n");
    serve.stop();
}

/// With two keys and `--max-sessions 4`, key A gets its share of 2 and then 429
/// `rate_limited`; key B still gets its own two.
fn one_key_cannot_take_every_session(level: Level) {
    let serve = Serve::start(Options::new(level).arg("--max-sessions").arg("4"));
    for _ in 0..2 {
        serve.new_session(KEY_A);
    }
    let reply = serve.request(KEY_A, "POST", "/v1/sessions", Some(serde_json::json!({})));
    assert_eq!(reply.status, 429, "{}", reply.text());
    assert_eq!(reply.json()["error"]["kind"], "rate_limited");
    assert!(reply.header("retry-after").is_some(), "{}", reply.head);
    for _ in 0..2 {
        serve.new_session(KEY_B);
    }
    serve.stop();
}

/// The resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap();
    kib.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap() * 1024
}

/// JSON bodies are held within a server-wide budget: a `Content-Length` over the limit of
/// one body is 413 at once, without waiting for the bytes, and many concurrent large bodies
/// do not grow the server past the budget (64M by default); each is answered 400 (read and
/// refused) or 503 (no room just now), and the server goes on serving.
fn json_bodies_stay_within_a_budget(level: Level) {
    // A budget well below what 24 bodies take, so that the bound below holds with room for
    // the allocator's own slack on a loaded machine.
    let serve = Serve::start(Options::new(level).arg("--max-buffered-bytes").arg("16M"));
    let id = serve.new_session(KEY_A);
    let path = format!("/v1/sessions/{id}/execute");
    let json = [("Content-Type", "application/json"), ("Content-Length", "999999999999")];
    let reply = serve
        .request_with(Some(KEY_A), "POST", &path, &json, b"", Duration::from_secs(20))
        .expect("an answer without the body");
    assert_eq!(reply.status, 413, "{}", reply.text());

    let pid = serve.child.id();
    let before = rss(pid);
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    // 15 MiB of padding after a `code` of the wrong type: parsed only once read whole.
    let pad = 15 << 20;
    let prefix = br#"{"code": 1, "pad": ""#;
    let length = (prefix.len() + pad + 2).to_string();
    let clients: Vec<_> = (0..24)
        .map(|_| {
            let headers = [("Content-Type", "application/json"), ("Content-Length", length.as_str())];
            let head = head(&serve.addr, KEY_A, "POST", &path, &headers);
            let addr = serve.addr.clone();
            std::thread::spawn(move || {
                exchange(&addr, head, move |out| {
                    out.write_all(prefix)?;
                    write_bytes(out, pad, false)?;
                    out.write_all(b"\"}")
                })
            })
        })
        .collect();
    let answers: Vec<(u16, String)> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let grown = peak.load(Ordering::Relaxed).saturating_sub(before);
    assert!(grown < 128 << 20, "the server grew by {} MiB for 24 bodies of 15 MiB", grown >> 20);
    for (status, text) in &answers {
        assert!(matches!(status, 400 | 503), "{text}");
    }
    assert!(answers.iter().any(|(s, _)| *s == 400), "no body was read at all");
    assert_eq!(serve.exec(KEY_A, &id, "print(6 * 7)").ok(), "42\n");
    serve.stop();
}

/// A key given with `--api-key` is not left in `/proc/<server>/cmdline`, where code at a
/// weak level (and any local user) could read it, and the log says to use the key file or
/// the environment instead.
fn command_line_keys_are_scrubbed(level: Level) {
    const SECRET: &str = "hostile-cmdline-key-SECRET-0003";
    let serve = Serve::start(Options::new(level).arg("--api-key").arg(SECRET).keep_log());
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", serve.child.id())).unwrap();
    let shown = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(shown.contains("--api-key"), "the rest of the command line stays: {shown}");
    let log = serve.log.lock().unwrap().join("\n");
    assert!(log.contains("--api-key-file") && log.contains("CODEBOX_SERVER_API_KEYS"), "{log}");
    assert!(!log.contains(SECRET), "the log never shows a key");
    // The key still works: it was taken before it was overwritten.
    let id = serve.new_session(SECRET);
    assert_eq!(serve.request(SECRET, "GET", &format!("/v1/sessions/{id}"), None).status, 200);
    serve.stop();
}

/// A session lost with a crash is told lost (410) to its own key after a restart that adds
/// a key sorting between the two tenants' keys, and is unknown (404) to the new key.
fn lost_sessions_stay_with_their_key(level: Level) {
    let mut first = Serve::start(Options::new(level));
    let b = first.new_session(KEY_B);
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    // Sorts after KEY_A and before KEY_B, so KEY_B's position in the key list moves.
    const KEY_M: &str = "hostile-tenant-a-key-0001-m";
    let config = first.root.with_extension("toml");
    std::fs::write(&config, format!("api_keys = [\"{KEY_M}\"]\n")).unwrap();
    let options = Options::new(level).arg("--config").arg(config.to_str().unwrap());
    let second = Serve::start_on(&first.root, options, first.uids.clone());
    let reply = second.request(KEY_B, "GET", &format!("/v1/sessions/{b}"), None);
    assert_eq!(reply.status, 410, "{}", reply.text());
    assert_eq!(reply.json()["error"]["kind"], "session_lost");
    let reply = second.request(KEY_M, "GET", &format!("/v1/sessions/{b}"), None);
    assert_eq!(reply.status, 404, "the new key is told nothing of B's session: {}", reply.text());
    assert!(!reply.text().contains("lost"), "{}", reply.text());
    let record = walk(&first.root.join("server"));
    for path in &record {
        let name = path.to_string_lossy();
        let text = std::fs::read(path).unwrap_or_default();
        for key in [KEY_A, KEY_B, KEY_M] {
            assert!(!name.contains(key), "{name}");
            assert!(!text.windows(key.len()).any(|w| w == key.as_bytes()), "{name} holds a key");
        }
    }
    second.stop();
    drop(first);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// What a session's isolation cannot hold is in its description and in the listing, by
/// the level's stable names: nothing at bubblewrap, host Unix sockets at Landlock, the
/// host's files, processes and network at none.
fn sessions_report_their_isolation_gaps(level: Level) {
    let serve = Serve::start(Options::new(level));
    let id = serve.new_session(KEY_A);
    let expected: &[&str] = match level {
        Level::Bubblewrap => &[],
        Level::Landlock => &["host_unix_sockets"],
        Level::None => &["host_filesystem", "host_processes", "host_network", "install_network", "host_writable_dirs"],
    };
    assert_eq!(serve.gaps(KEY_A, &id), expected);
    let listed = serve.request(KEY_A, "GET", "/v1/sessions", None).json();
    let gaps = &listed[0]["status"]["isolation_gaps"];
    let listed_gaps: Vec<&str> =
        gaps.as_array().map(|a| a.iter().filter_map(|g| g.as_str()).collect()).unwrap_or_default();
    assert_eq!(listed_gaps, expected, "{listed}");
    serve.stop();
}

/// Read from `stream` until the server closes it: true when it did (end of stream, or a
/// reset), false when it was still open after the read timeout.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// A connection that never sends a byte, and a keep-alive connection left idle after its
/// request, are closed after `--connection-idle-timeout`; a request in progress (an
/// execution silent for longer than that) is not.
fn idle_connections_are_closed(level: Level) {
    let serve = Serve::start(Options::new(level).arg("--connection-idle-timeout").arg("2s"));
    let mut silent = TcpStream::connect(&serve.addr).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    assert!(closed_by_server(&mut silent), "a connection that never sent a byte was kept open");

    let mut kept_alive = TcpStream::connect(&serve.addr).unwrap();
    kept_alive.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    kept_alive.write_all(format!("GET /health HTTP/1.1\r\nHost: {}\r\n\r\n", serve.addr).as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(kept_alive.read(&mut byte).unwrap(), 1, "the health answer was cut: {head:?}");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
    assert!(closed_by_server(&mut kept_alive), "an idle keep-alive connection was kept open");

    let id = serve.new_session(KEY_A);
    let quiet = "import time\ntime.sleep(4)\nprint('still here')";
    assert_eq!(serve.exec(KEY_A, &id, quiet).ok(), "still here\n");
    serve.stop();
}

/// With `--max-connections 8` and 8 connections held open doing nothing, a ninth client is
/// answered (503) or closed at once, never left waiting; once one of the 8 goes away, the
/// server answers again.
fn connections_are_capped(level: Level) {
    let serve =
        Serve::start(Options::new(level).arg("--max-connections").arg("8").arg("--connection-idle-timeout").arg("10m"));
    let mut held: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(&serve.addr).unwrap()).collect();
    match serve.request_with(None, "GET", "/health", &[], b"", Duration::from_secs(60)) {
        Ok(reply) => {
            assert_eq!(reply.status, 503, "a ninth connection was served: {}", reply.text());
            assert!(reply.header("retry-after").is_some(), "{}", reply.head);
        }
        Err(e) => assert!(
            !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
            "a ninth connection was left waiting: {e}"
        ),
    }
    held.pop();
    wait_until("the server answers once a connection closed", Duration::from_secs(30), || {
        serve.healthy_within(Duration::from_secs(5))
    });
    drop(held);
    serve.stop();
}

/// With 4 session uids and no pool, the session cap is 4 and each key's share 2: key A
/// cannot take every uid and lock B out. A uid taken by something else (a process the
/// server did not start) leaves the server full: 503 with `Retry-After`, not a 400.
fn too_few_uids_are_shared_among_keys(level: Level) {
    let base = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let range = next_uid_range();
    let uids = range.start..range.start + 4;
    let mut serve = Serve::start_on(&base.path().join("sessions"), Options::new(level).keep_log(), uids.clone());
    serve._base = Some(base);
    let lowered = serve.log.lock().unwrap().iter().any(|l| l.contains("the session cap is lowered"));
    assert!(lowered, "no log line says the session cap was lowered");
    let create = |key: &str| serve.request(key, "POST", "/v1/sessions", Some(serde_json::json!({})));
    for _ in 0..2 {
        let reply = create(KEY_A);
        assert_eq!(reply.status, 201, "{}", reply.text());
    }
    let third = create(KEY_A);
    assert_eq!((third.status, third.json()["error"]["kind"].as_str()), (429, Some("rate_limited")), "{}", third.text());
    let b = create(KEY_B);
    assert_eq!(b.status, 201, "key B was locked out: {}", b.text());

    // Something else runs under the one uid left: the server has no room for B's second.
    use std::os::unix::process::CommandExt;
    let mut squatter = Command::new("sleep").arg("600").uid(uids.end - 1).gid(uids.end - 1).spawn().unwrap();
    let full = create(KEY_B);
    let _ = squatter.kill();
    let _ = squatter.wait();
    assert_eq!((full.status, full.json()["error"]["kind"].as_str()), (503, Some("rate_limited")), "{}", full.text());
    assert!(full.header("retry-after").is_some(), "{}", full.head);
    serve.stop();
}

/// Input the box cannot take (a name over 255 bytes, a NUL byte in an argument, an
/// argument list over the kernel's limit, a malformed chunked body) answers 4xx with its
/// reason, not 500, and the server goes on answering.
fn bad_input_is_the_callers_error(level: Level) {
    let serve = Serve::start(Options::new(level));
    let id = serve.new_session(KEY_A);
    let long = "a".repeat(256);
    let is_4xx = |reply: &Reply, what: &str| {
        assert!((400..500).contains(&reply.status), "{what}: {} {}", reply.status, reply.text());
    };
    let file = format!("/v1/sessions/{id}/files/{long}");
    for method in ["GET", "HEAD", "PUT", "DELETE"] {
        let reply = serve
            .request_with(
                Some(KEY_A),
                method,
                &file,
                &[],
                if method == "PUT" { b"x" } else { b"" },
                Duration::from_secs(60),
            )
            .unwrap();
        is_4xx(&reply, &format!("{method} of a 256-byte name"));
        if method != "HEAD" {
            assert_eq!(reply.json()["error"]["kind"], "unsafe_path", "{method}: {}", reply.text());
        }
    }
    let listing = serve.request(KEY_A, "GET", &format!("/v1/sessions/{id}/files?dir={long}"), None);
    is_4xx(&listing, "a listing of a 256-byte directory name");

    let boundary = "cbxboundary";
    let multipart = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{long}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\nx\r\n--{boundary}--\r\n"
    );
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let upload = serve
        .request_with(
            Some(KEY_A),
            "POST",
            &format!("/api/v2/codebox/{id}/files/upload"),
            &[("Content-Type", &content_type)],
            multipart.as_bytes(),
            Duration::from_secs(60),
        )
        .unwrap();
    is_4xx(&upload, "a v2 upload of a 256-byte file name");

    let commands = format!("/v1/sessions/{id}/commands");
    let nul = serve.request(KEY_A, "POST", &commands, Some(serde_json::json!({"program": "sh", "args": ["a\u{0}b"]})));
    assert_eq!((nul.status, nul.json()["error"]["kind"].as_str()), (400, Some("invalid_input")), "{}", nul.text());
    let big_env = serde_json::json!({"program": "true", "env": {"BIG": "e".repeat(5 << 20)}});
    let e2big = serve.request(KEY_A, "POST", &commands, Some(big_env));
    is_4xx(&e2big, "a 5 MB environment value");
    let big_package = serde_json::json!({"packages": ["a".repeat(1_000_000)]});
    let install = serve.request(KEY_A, "POST", &format!("/v1/sessions/{id}/install"), Some(big_package));
    is_4xx(&install, "a package name of a million bytes");

    let chunked = [("Transfer-Encoding", "chunked"), ("Content-Type", "application/octet-stream")];
    let framing = serve
        .request_with(
            Some(KEY_A),
            "PUT",
            &format!("/v1/sessions/{id}/files/framed"),
            &chunked,
            b"fffffffffffffffffff\r\n",
            Duration::from_secs(60),
        )
        .unwrap();
    assert_eq!(framing.status, 400, "a malformed chunk size: {}", framing.text());
    let json_chunked = [("Transfer-Encoding", "chunked"), ("Content-Type", "application/json")];
    let framing = serve
        .request_with(
            Some(KEY_A),
            "POST",
            &format!("/v1/sessions/{id}/execute"),
            &json_chunked,
            b"fffffffffffffffffff\r\n",
            Duration::from_secs(60),
        )
        .unwrap();
    assert_eq!(framing.status, 400, "a malformed chunk size in a JSON body: {}", framing.text());

    assert!(serve.healthy_within(Duration::from_secs(10)));
    assert_eq!(serve.exec(KEY_A, &id, "print('fine')").ok(), "fine\n");
    serve.stop();
}

/// Open a download of `path` as `key` and read only its status line: the rest stays unread
/// in the socket for as long as the returned stream lives.
fn unread_download(serve: &Serve, key: &str, path: &str) -> (u16, TcpStream) {
    let mut stream = TcpStream::connect(&serve.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    stream.write_all(head(&serve.addr, key, "GET", path, &[]).as_bytes()).unwrap();
    let mut first = [0u8; 12];
    stream.read_exact(&mut first).unwrap();
    let status = String::from_utf8_lossy(&first[9..12]).parse().unwrap_or(0);
    (status, stream)
}

/// A session holding a 30 MB file, `big`, for downloads that outgrow the sockets' buffers.
fn session_with_a_big_file(serve: &Serve, key: &str) -> String {
    let id = serve.new_session(key);
    let made = serve.exec(key, &id, "open('big', 'wb').write(b'x' * (30 << 20))");
    made.ok();
    id
}

/// Downloads hold files open until their clients read them: each key holds at most its share
/// of the server's download slots (429 past it), so one tenant's unread downloads cannot
/// take the descriptors every other request needs.
fn unread_downloads_are_bounded_per_key(level: Level) {
    let serve = Serve::start(Options::new(level).arg("--max-connections").arg("8"));
    let a = session_with_a_big_file(&serve, KEY_A);
    let b = session_with_a_big_file(&serve, KEY_B);
    let path_a = format!("/v1/sessions/{a}/files/big");
    let held: Vec<_> = (0..4).map(|_| unread_download(&serve, KEY_A, &path_a)).collect();
    assert!(held.iter().all(|(status, _)| *status == 200), "{:?}", held.iter().map(|h| h.0).collect::<Vec<_>>());
    let (over, _socket) = unread_download(&serve, KEY_A, &path_a);
    assert_eq!(over, 429, "a key past its share of the download slots");
    let (theirs, _other) = unread_download(&serve, KEY_B, &format!("/v1/sessions/{b}/files/big"));
    assert_eq!(theirs, 200, "the other tenant still downloads");
    drop(held);
    serve.stop();
}

/// A client that stops reading a download is cut off once its writes have waited the idle
/// timeout: it holds neither a connection slot nor the file for as long as it likes.
fn a_download_left_unread_is_cut_off(level: Level) {
    let serve = Serve::start(Options::new(level).arg("--connection-idle-timeout").arg("2s"));
    let a = session_with_a_big_file(&serve, KEY_A);
    let (status, mut stream) = unread_download(&serve, KEY_A, &format!("/v1/sessions/{a}/files/big"));
    assert_eq!(status, 200);
    // Wait until the server has let the connection go (its end no longer established) ...
    let port: u16 = serve.addr.rsplit(':').next().unwrap().parse().unwrap();
    wait_until("the server closes a download nobody reads", Duration::from_secs(120), || {
        established_server_ends(port) == 0
    });
    // ... then what arrives is less than the file: the rest was never sent.
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got);
    assert!(got.len() < 30 << 20, "the whole file was sent to a client that did not read");
    assert!(serve.healthy_within(Duration::from_secs(5)));
    serve.stop();
}

/// Sockets of this machine whose local port is `port`, established: the server's ends of
/// its connections.
fn established_server_ends(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap() + &std::fs::read_to_string("/proc/net/tcp6").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace().skip(1);
            let local = f.next()?;
            let state = f.nth(1)?;
            let local_port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            (local_port == port && state == "01").then_some(())
        })
        .count()
}

per_level!(
    another_tenants_session_is_invisible,
    unread_downloads_are_bounded_per_key,
    a_download_left_unread_is_cut_off,
    two_keys_without_isolation_are_refused,
    absurd_timeouts_are_refused,
    uploads_fit_the_working_directory,
    one_key_cannot_take_every_session,
    json_bodies_stay_within_a_budget,
    command_line_keys_are_scrubbed,
    lost_sessions_stay_with_their_key,
    sessions_report_their_isolation_gaps,
    idle_connections_are_closed,
    connections_are_capped,
    too_few_uids_are_shared_among_keys,
    bad_input_is_the_callers_error,
);

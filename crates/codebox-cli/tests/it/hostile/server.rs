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

per_level!(
    another_tenants_session_is_invisible,
    two_keys_without_isolation_are_refused,
    absurd_timeouts_are_refused,
    uploads_fit_the_working_directory,
    one_key_cannot_take_every_session,
    json_bodies_stay_within_a_budget,
    command_line_keys_are_scrubbed,
    lost_sessions_stay_with_their_key,
    sessions_report_their_isolation_gaps,
);

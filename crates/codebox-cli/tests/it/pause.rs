//! Pausing sessions of a real `codebox serve`: what a pause keeps, a server SIGKILLed with
//! a paused session and the next one on the same session root resuming it, and a server
//! killed in the middle of a pause.

use std::time::Duration;

use codebox_sandbox::running_as_root;

use crate::hostile::{KEY_A, KEY_B, Level, Options, Serve};

fn base_root() -> (tempfile::TempDir, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let base = tempfile::tempdir().unwrap();
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = base.path().join("sessions");
    (base, root)
}

/// The sessions `key` lists, as (id, state) pairs, and each one's JSON.
fn listed(server: &Serve, key: &str) -> Vec<serde_json::Value> {
    let reply = server.request(key, "GET", "/v1/sessions", None);
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json().as_array().unwrap().clone()
}

#[test]
fn a_paused_session_outlives_a_killed_server_and_the_next_one_resumes_it_on_its_first_request() {
    assert!(running_as_root(), "session uids need root: run the tests as root");
    let (_base, root) = base_root();
    let range = 346_000..346_004;
    let first = Serve::start_on(&root, Options::new(Level::Bubblewrap), range.clone());
    let id = first.new_session(KEY_A);
    let setup = "import math, socket\n\
                 rows = [i * i for i in range(100)]\n\
                 square = lambda v: v * v\n\
                 open('kept.txt', 'w').write('data')\n\
                 handle = open('kept.txt')\n\
                 sock = socket.socket()\n\
                 import importlib, os\n\
                 os.makedirs('.codebox/site-packages/keptpkg', exist_ok=True)\n\
                 open('.codebox/site-packages/keptpkg/__init__.py', 'w').write('VALUE = 5')\n\
                 importlib.invalidate_caches()\n\
                 import keptpkg\n\
                 print('set')";
    assert_eq!(first.exec(KEY_A, &id, setup).ok(), "set\n");

    let reply = first.request(KEY_A, "POST", &format!("/v1/sessions/{id}/pause"), None);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let report = reply.json();
    assert_eq!(report["rung"], "namespace", "{report}");
    let lost: Vec<&str> =
        report["unrestored"].as_array().unwrap().iter().map(|u| u["name"].as_str().unwrap()).collect();
    assert_eq!(lost, ["handle", "sock"], "{report}");
    let sessions = listed(&first, KEY_A);
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["state"], "paused", "{}", sessions[0]);
    assert!(sessions[0]["disk_bytes"].as_u64().unwrap() > 0, "{}", sessions[0]);
    assert!(codebox_sandbox::processes_in_range(&range).is_empty(), "a paused session runs processes");
    // Another key does not see it, nor resume it.
    assert!(listed(&first, KEY_B).is_empty());
    let reply = first.request(KEY_B, "POST", &format!("/v1/sessions/{id}/resume"), None);
    assert_eq!(reply.status, 404, "{}", reply.text());

    let mut first = first;
    first.child.kill().unwrap(); // SIGKILL
    first.child.wait().unwrap();

    let second = Serve::start_on(&root, Options::new(Level::Bubblewrap), range.clone());
    let sessions = listed(&second, KEY_A);
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!((sessions[0]["id"].as_str(), sessions[0]["state"].as_str()), (Some(id.as_str()), Some("paused")));
    // Any request resumes it: this execution finds the variables, imports and files.
    let reply = second.request(
        KEY_A,
        "POST",
        &format!("/v1/sessions/{id}/execute"),
        Some(serde_json::json!({
            "code": "print(sum(rows), square(12), math.floor(2.5), open('kept.txt').read(), keptpkg.VALUE)"
        })),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    let text = reply.text();
    // keptpkg: a package the box installed into its own site-packages, imported again.
    assert!(text.contains("328350 144 2 data 5"), "{text}");
    assert!(text.contains("application/vnd.codebox.resume+json") && text.contains("handle"), "{text}");
    let history = second.request(KEY_A, "GET", &format!("/v1/sessions/{id}/history"), None).json();
    let heads: Vec<String> =
        history["executions"].as_array().unwrap().iter().map(|r| r["code_head"].as_str().unwrap().to_owned()).collect();
    assert!(heads.iter().any(|h| h.starts_with("import math, socket")), "{heads:?}");
    assert_eq!(listed(&second, KEY_A)[0]["state"], "running");

    // Paused again, deleted: nothing of it stays on disk.
    let reply = second.request(KEY_A, "POST", &format!("/v1/sessions/{id}/pause"), None);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = second.request(KEY_A, "POST", &format!("/v1/sessions/{id}/resume"), None);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["session"]["state"], "running");
    let reply = second.request(KEY_A, "POST", &format!("/v1/sessions/{id}/resume"), None);
    assert_eq!(reply.status, 409, "{}", reply.text());
    let reply = second.request(KEY_A, "DELETE", &format!("/v1/sessions/{id}"), None);
    assert_eq!(reply.status, 204, "{}", reply.text());
    let paused_dir = root.join("server/paused");
    assert!(std::fs::read_dir(&paused_dir).map(|d| d.count()).unwrap_or(0) == 0, "a deleted session's state stays");
    let reply = second.request(KEY_A, "POST", "/v1/sessions/never-existed/resume", None);
    assert_eq!(reply.status, 404, "{}", reply.text());
    second.stop();
}

#[test]
fn a_server_killed_in_the_middle_of_a_pause_leaves_the_session_paused_whole_or_lost() {
    assert!(running_as_root(), "session uids need root: run the tests as root");
    let (_base, root) = base_root();
    let range = 346_010..346_012;
    let first = Serve::start_on(&root, Options::new(Level::Bubblewrap), range.clone());
    let id = first.new_session(KEY_A);
    // Enough to pickle and copy that the kill lands while the pause writes.
    let setup = "blob = bytes(range(256)) * (30 * 4096)\nmarker = 'whole'\nprint(len(blob))";
    assert_eq!(first.exec(KEY_A, &id, setup).ok(), format!("{}\n", 256 * 30 * 4096));
    let (addr, paused_id) = (first.addr.clone(), id.clone());
    let pausing = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        let head = format!(
            "POST /v1/sessions/{paused_id}/pause HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {KEY_A}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        s.write_all(head.as_bytes()).unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        answer
    });
    // The pause has begun once its namespace file appears in the session's working directory.
    let scratch = root.join("tmp");
    crate::hostile::wait_until("the pause to begin", Duration::from_secs(30), || {
        walk_has(&scratch, "ns0.pkl") || walk_has(&root.join("server/paused"), "manifest.json")
    });
    let mut first = first;
    first.child.kill().unwrap(); // SIGKILL, mid-pause
    first.child.wait().unwrap();
    let _ = pausing.join();

    let second = Serve::start_on(&root, Options::new(Level::Bubblewrap), range);
    let sessions = listed(&second, KEY_A);
    match sessions.first().and_then(|s| s["state"].as_str()) {
        // Paused whole: it resumes with everything.
        Some("paused") => {
            let out = second.exec(KEY_A, &id, "print(marker, len(blob))");
            assert_eq!(out.ok(), format!("whole {}\n", 256 * 30 * 4096));
        }
        // Or lost with the server, said so; never half.
        None => {
            let reply = second.request(KEY_A, "GET", &format!("/v1/sessions/{id}"), None);
            assert_eq!(reply.status, 410, "{}", reply.text());
            assert!(reply.text().contains("session_lost"), "{}", reply.text());
            assert!(
                std::fs::read_dir(root.join("server/paused")).map(|d| d.count()).unwrap_or(0) == 0,
                "an unfinished pause left its files"
            );
        }
        other => panic!("a session half paused: {other:?} in {sessions:?}"),
    }
    second.stop();
}

/// Whether a file named `name` is somewhere under `dir`.
fn walk_has(dir: &std::path::Path, name: &str) -> bool {
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        let Ok(children) = std::fs::read_dir(&d) else { continue };
        for child in children.flatten() {
            let Ok(kind) = child.file_type() else { continue };
            if kind.is_dir() {
                pending.push(child.path());
            } else if child.file_name() == name {
                return true;
            }
        }
    }
    false
}

#[test]
fn idle_sessions_are_paused_unless_they_ask_to_stop_and_the_disk_budget_removes_the_oldest_first() {
    assert!(running_as_root(), "session uids need root: run the tests as root");
    let (_base, root) = base_root();
    let options =
        Options::new(Level::Bubblewrap).arg("--idle-timeout").arg("2s").arg("--paused-disk-per-key").arg("5M");
    let server = Serve::start_on(&root, options, 346_020..346_024);
    let paused = server.new_session(KEY_A);
    let reply = server.request(KEY_A, "POST", "/v1/sessions", Some(serde_json::json!({"auto_pause": false})));
    assert_eq!(reply.status, 201, "{}", reply.text());
    let stopped = reply.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(server.exec(KEY_A, &paused, "kept = 'after idling'\nprint(1)").ok(), "1\n");
    assert_eq!(server.exec(KEY_A, &stopped, "print(2)").ok(), "2\n");
    crate::hostile::wait_until("the idle sessions to be reaped", Duration::from_secs(30), || {
        let sessions = listed(&server, KEY_A);
        sessions.len() == 1 && sessions[0]["state"] == "paused"
    });
    assert_eq!(listed(&server, KEY_A)[0]["id"], paused.as_str());
    assert_eq!(server.request(KEY_A, "GET", &format!("/v1/sessions/{stopped}"), None).status, 404);
    assert_eq!(server.exec(KEY_A, &paused, "print(kept)").ok(), "after idling\n");
    assert_eq!(server.request(KEY_A, "DELETE", &format!("/v1/sessions/{paused}"), None).status, 204);

    // Two sessions of 3 MB each do not fit a 5 MB budget paused: the older pause goes.
    let (older, newer) = (server.new_session(KEY_A), server.new_session(KEY_A));
    for id in [&older, &newer] {
        let out = server.exec(KEY_A, id, "open('data.bin', 'wb').write(b'x' * (3 << 20))\nprint('ok')");
        assert_eq!(out.ok(), "ok\n");
    }
    for id in [&older, &newer] {
        let reply = server.request(KEY_A, "POST", &format!("/v1/sessions/{id}/pause"), None);
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let reply = server.request(KEY_A, "GET", &format!("/v1/sessions/{older}"), None);
    assert_eq!(reply.status, 410, "the older pause was kept: {}", reply.text());
    let reply = server.request(KEY_A, "GET", &format!("/v1/sessions/{newer}"), None);
    assert_eq!(reply.json()["state"], "paused", "{}", reply.text());
    // One session alone over the budget: its pause fails, saying so.
    let big = server.new_session(KEY_A);
    let out = server.exec(KEY_A, &big, "open('data.bin', 'wb').write(b'x' * (6 << 20))\nprint('ok')");
    assert_eq!(out.ok(), "ok\n");
    let reply = server.request(KEY_A, "POST", &format!("/v1/sessions/{big}/pause"), None);
    assert_eq!(reply.status, 507, "{}", reply.text());
    assert!(reply.text().contains("budget"), "{}", reply.text());
    server.stop();
}

#[test]
fn a_damaged_snapshot_is_refused_naming_the_session_and_its_files_stay_downloadable() {
    assert!(running_as_root(), "session uids need root: run the tests as root");
    let (_base, root) = base_root();
    let server = Serve::start_on(&root, Options::new(Level::Bubblewrap), 346_030..346_032);
    let id = server.new_session(KEY_A);
    let out = server.exec(KEY_A, &id, "n = 7\nopen('kept.txt', 'w').write('precious')\nprint('ok')");
    assert_eq!(out.ok(), "ok\n");
    let reply = server.request(KEY_A, "POST", &format!("/v1/sessions/{id}/pause"), None);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let pickle = find(&root.join("server/paused"), "ns0.pkl").expect("the pickled namespace in the snapshot");
    let mut bytes = std::fs::read(&pickle).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&pickle, bytes).unwrap();

    let reply =
        server.request(KEY_A, "POST", &format!("/v1/sessions/{id}/execute"), Some(serde_json::json!({"code": "n"})));
    assert_eq!(reply.status, 400, "{}", reply.text());
    let text = reply.text();
    assert!(text.contains(&format!("session {id}")) && text.contains("damaged"), "{text}");
    let reply = server.request(KEY_A, "GET", &format!("/v1/sessions/{id}/files/kept.txt"), None);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "precious");
    let listing = server.request(KEY_A, "GET", &format!("/v1/sessions/{id}/files"), None);
    assert_eq!(listing.status, 200, "{}", listing.text());
    let names: Vec<String> =
        listing.json().as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap().to_owned()).collect();
    assert_eq!(names, ["kept.txt"]);
    assert_eq!(listed(&server, KEY_A)[0]["state"], "paused", "a failed resume leaves the session paused");
    server.stop();
}

/// The path of a file named `name` somewhere under `dir`.
fn find(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        for child in std::fs::read_dir(&d).ok()?.flatten() {
            if child.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(child.path());
            } else if child.file_name() == name {
                return Some(child.path());
            }
        }
    }
    None
}

// The codebox-api routes resume a paused session like the native ones: a 0.2 client's next
// execution finds its variables.
#[test]
fn a_codebox_api_request_resumes_a_paused_session() {
    assert!(running_as_root(), "session uids need root: run the tests as root");
    let (_base, root) = base_root();
    let server = Serve::start_on(&root, Options::new(Level::None), 346_040..346_044);
    let id = server.new_session(KEY_A);
    assert_eq!(server.exec(KEY_A, &id, "kept = 41\nprint('set')").ok(), "set\n");
    let reply = server.request(KEY_A, "POST", &format!("/v1/sessions/{id}/pause"), None);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(listed(&server, KEY_A)[0]["state"], "paused");

    let body = serde_json::json!({"code": "print(kept + 1)"});
    let reply = server.request(KEY_A, "POST", &format!("/api/v2/codebox/{id}/exec"), Some(body));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(reply.text().contains("42"), "{}", reply.text());
    assert_ne!(listed(&server, KEY_A)[0]["state"], "paused");
}

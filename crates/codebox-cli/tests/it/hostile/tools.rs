//! Hostile-tenant cases: install and commands.
//!
//! `install` takes package names only (no path, URL, direct reference or pip option reaches
//! pip, so nothing of the box is built and nothing local is fetched); `run_command` answers a
//! program it cannot run the same way whether the path exists on the host or not; and a
//! tenant's `pyvenv.cfg` never makes the server show a host directory to a command.

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

/// A listener on host loopback that counts the connections it gets, and the port.
fn counting_listener() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            seen.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut c) = conn {
                let mut buf = [0u8; 1024];
                let _ = c.read(&mut buf);
            }
        }
    });
    (port, count)
}

/// The working directory of session `id`, as its kernel sees it (the same path on the host).
fn working_dir(serve: &Serve, key: &str, id: &str) -> String {
    serve.exec(key, id, "import os\nprint(os.getcwd())").ok().trim().to_owned()
}

/// `install` of anything but a package name is refused with 400 `invalid_input` before pip
/// runs: a source tree by relative or absolute path (whose build would connect to the
/// listener), a URL on host loopback, a direct reference, pip options. Nothing reaches the
/// listener.
fn install_takes_package_names_only(level: Level) {
    let (port, connections) = counting_listener();
    let serve = Serve::start(Options::new(level));
    let id = serve.new_session(KEY_A);
    let work = working_dir(&serve, KEY_A, &id);
    let setup = format!(
        "import socket\nsocket.create_connection(('127.0.0.1', {port}))\nfrom setuptools import setup\nsetup(name='pkg')\n"
    );
    let make = format!(
        "import os\nos.makedirs('pkg', exist_ok=True)\nopen('pkg/setup.py', 'w').write({setup:?})\n\
         open('req.txt', 'w').write('pkg @ http://127.0.0.1:{port}/pkg.whl\\n')"
    );
    serve.exec(KEY_A, &id, &make).ok();
    let url = format!("http://127.0.0.1:{port}/x-1.0-py3-none-any.whl");
    let refused: Vec<Vec<String>> = vec![
        vec!["./pkg".into()],
        vec!["pkg/".into()],
        vec![format!("{work}/pkg")],
        vec![format!("file://{work}/pkg")],
        vec![url.clone()],
        vec![format!("x @ {url}")],
        vec!["--index-url".into(), format!("http://127.0.0.1:{port}/simple"), "six".into()],
        vec![format!("--index-url=http://127.0.0.1:{port}/simple"), "six".into()],
        vec!["-r".into(), "req.txt".into()],
        vec!["six".into(), "-r".into(), "req.txt".into()],
        vec!["x-1.0.tar.gz".into()],
    ];
    for packages in refused {
        let reply = serve.request(
            KEY_A,
            "POST",
            &format!("/v1/sessions/{id}/install"),
            Some(serde_json::json!({ "packages": packages })),
        );
        assert_eq!(reply.status, 400, "{packages:?}: {}", reply.text());
        let error = &reply.json()["error"];
        assert_eq!(error["kind"], "invalid_input", "{packages:?}: {error}");
    }
    assert_eq!(connections.load(Ordering::SeqCst), 0, "something reached host loopback");
    serve.stop();
}

/// A package name still installs (from PyPI, which this machine reaches) and imports.
fn install_of_a_package_name_works(level: Level) {
    let serve = Serve::start(Options::new(level));
    let id = serve.new_session(KEY_A);
    let reply = serve.request(
        KEY_A,
        "POST",
        &format!("/v1/sessions/{id}/install"),
        Some(serde_json::json!({ "packages": ["tabulate"] })),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    let out = serve.exec(KEY_A, &id, "import tabulate\nprint(tabulate.tabulate([[1, 2]]))");
    assert!(out.ok().contains('1'), "{out:?}");
    serve.stop();
}

/// The answer to `run_command`, with the program's name taken out of the message.
fn command_answer(serve: &Serve, id: &str, program: &str) -> (u16, String) {
    let reply = serve.request(
        KEY_A,
        "POST",
        &format!("/v1/sessions/{id}/commands"),
        Some(serde_json::json!({ "program": program, "args": [] })),
    );
    let body = reply.json();
    let message = body["error"]["message"].as_str().unwrap_or_default().replace(program, "PROGRAM");
    (reply.status, format!("{}: {message}", body["error"]["kind"]))
}

/// Another tenant's session file on the host, a missing path next to it, its directory, a
/// host file that is not executable and one that is (outside the box): the same answer for
/// every one the box cannot run. At the `none` level the box sees the host (a gap it says).
fn run_command_is_no_oracle_for_host_paths(level: Level) {
    let serve = Serve::start(Options::new(level));
    let id_a = serve.new_session(KEY_A);
    let id_b = serve.new_session(KEY_B);
    let live = serve.root.join("server/live");
    let theirs = std::fs::read_dir(&live)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(&id_b))
        .expect("tenant B's live-session file");
    let host = tempfile::tempdir().unwrap();
    std::fs::set_permissions(host.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let plain = host.path().join("plain");
    std::fs::write(&plain, "data").unwrap();
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
    let runnable = host.path().join("runnable");
    std::fs::copy("/bin/true", &runnable).unwrap();
    std::fs::set_permissions(&runnable, std::fs::Permissions::from_mode(0o755)).unwrap();

    let missing = command_answer(&serve, &id_a, &live.join(format!("{KEY_B}-no-such-session")).to_string_lossy());
    assert_eq!(missing.0, 404, "{missing:?}");
    for program in [theirs, live.clone(), plain, host.path().join("missing")] {
        let answer = command_answer(&serve, &id_a, &program.to_string_lossy());
        assert_eq!(answer, missing, "{} answers unlike a missing path", program.display());
    }
    let answer = command_answer(&serve, &id_a, &runnable.to_string_lossy());
    if level == Level::None {
        assert!(serve.gaps(KEY_A, &id_a).contains(&"host_filesystem".into()));
    } else {
        assert_eq!(answer, missing, "a host program outside the box answers unlike a missing path");
    }
    // A program the box has still runs, found on its PATH.
    let reply = serve.request(
        KEY_A,
        "POST",
        &format!("/v1/sessions/{id_a}/commands"),
        Some(serde_json::json!({ "program": "echo", "args": ["in the box"] })),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["stdout"], "in the box\n");
    serve.stop();
}

/// A tenant's `v/pyvenv.cfg` naming a host prefix and `v/bin/python` pointing at the system
/// Python: a command run as that program still cannot read a host file the kernel cannot.
fn a_tenant_pyvenv_cfg_shows_no_host_directory(level: Level) {
    let serve = Serve::start(Options::new(level));
    let id = serve.new_session(KEY_A);
    let prefix = tempfile::tempdir().unwrap();
    std::fs::set_permissions(prefix.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for dir in ["bin", "lib/python3.11"] {
        std::fs::create_dir_all(prefix.path().join(dir)).unwrap();
    }
    let secret = prefix.path().join("secret.txt");
    std::fs::write(&secret, "host-secret-7d1f").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let read = format!(
        "try:\n    print(open({secret:?}).read())\nexcept OSError as e:\n    print('denied', type(e).__name__)",
        secret = secret.to_string_lossy()
    );
    let kernel = serve.exec(KEY_A, &id, &read);
    if level == Level::None {
        assert!(kernel.ok().contains("host-secret"), "no sandbox at this level: {kernel:?}");
        assert!(serve.gaps(KEY_A, &id).contains(&"host_filesystem".into()));
        serve.stop();
        return;
    }
    assert!(kernel.ok().starts_with("denied"), "the kernel reads the host file: {kernel:?}");
    let venv = format!(
        "import os\nos.makedirs('v/bin', exist_ok=True)\n\
         open('v/pyvenv.cfg', 'w').write('home = {home}/bin\\nversion = 3.11\\n')\n\
         os.symlink('/usr/bin/python3', 'v/bin/python')\nprint(os.path.abspath('v/bin/python'))",
        home = prefix.path().to_string_lossy()
    );
    let program = serve.exec(KEY_A, &id, &venv).ok().trim().to_owned();
    let reply = serve.request(
        KEY_A,
        "POST",
        &format!("/v1/sessions/{id}/commands"),
        Some(serde_json::json!({ "program": program, "args": ["-c", read] })),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    let out = reply.json();
    let stdout = out["stdout"].as_str().unwrap_or_default();
    assert!(!stdout.contains("host-secret"), "the command read a host file: {out}");
    assert!(stdout.starts_with("denied"), "{out}");
    serve.stop();
}

per_level!(
    install_takes_package_names_only,
    install_of_a_package_name_works,
    run_command_is_no_oracle_for_host_paths,
    a_tenant_pyvenv_cfg_shows_no_host_directory,
);

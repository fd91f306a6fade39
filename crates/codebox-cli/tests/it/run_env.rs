//! `codebox run` as the `CODEBOX_*` environment steers it: against a real `codebox serve`,
//! attached to a session someone else made (`CODEBOX_SESSION_ID`), and with its log on
//! stderr (`CODEBOX_VERBOSE`).

use std::process::{Command, Output, Stdio};

use crate::hostile::{KEY_A, Level, Options, Serve};

/// `codebox run -c code` with the environment `env`, in an empty directory (no `.env`).
fn codebox_run(code: &str, env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_codebox"));
    for name in ["CODEBOX_API_KEY", "CODEBOX_BASE_URL", "CODEBOX_SESSION_ID", "CODEBOX_VERBOSE", "RUST_LOG"] {
        cmd.env_remove(name);
    }
    cmd.args(["run", "-c", code])
        .envs(env.iter().copied())
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("run codebox")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The ids of `key`'s sessions on `server`.
fn sessions(server: &Serve, key: &str) -> Vec<String> {
    let reply = server.request(key, "GET", "/v1/sessions", None);
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json().as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn run_leaves_a_session_it_attached_to_and_ends_one_it_made() {
    let server = Serve::start(Options::new(Level::None));
    let url = format!("http://{}", server.addr);
    let id = server.new_session(KEY_A);
    let attached =
        [("CODEBOX_API_KEY", KEY_A), ("CODEBOX_BASE_URL", url.as_str()), ("CODEBOX_SESSION_ID", id.as_str())];

    let out = codebox_run("kept = 6 * 7\nprint('set')", &attached);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "set\n");
    let reply = server.request(KEY_A, "GET", &format!("/v1/sessions/{id}"), None);
    assert_eq!(reply.status, 200, "the attached session outlives the command: {}", reply.text());
    let out = codebox_run("print(kept)", &attached);
    assert_eq!(text(&out.stdout), "42\n", "the second run found the first one's variable: {out:?}");
    assert_eq!(sessions(&server, KEY_A), [id.as_str()]);

    // Without CODEBOX_SESSION_ID the command makes a session of its own, and deletes it.
    let out = codebox_run("print('own')", &attached[..2]);
    assert_eq!(text(&out.stdout), "own\n", "{out:?}");
    assert_eq!(sessions(&server, KEY_A), [id.as_str()], "the command's own session is gone, the other stays");
    assert_eq!(server.exec(KEY_A, &id, "print(kept)").ok(), "42\n");
    server.stop();
}

#[test]
fn verbose_logs_each_step_on_stderr_and_leaves_stdout_to_the_code() {
    let out = codebox_run("print(6 * 7)", &[("CODEBOX_VERBOSE", "1")]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "42\n");
    let log = text(&out.stderr);
    for step in ["box chosen", "box started; running the code", "box stopped"] {
        assert!(log.lines().any(|l| l.contains("DEBUG") && l.contains(step)), "{step:?} missing from: {log}");
    }

    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_codebox"))
        .args(["run", "--json", "-c", "print(6 * 7)"])
        .env_remove("CODEBOX_API_KEY")
        .env_remove("RUST_LOG")
        .env("CODEBOX_VERBOSE", "true")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for line in text(&out.stdout).lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
    assert!(text(&out.stderr).contains("box chosen"), "{out:?}");

    let quiet = codebox_run("print(6 * 7)", &[("CODEBOX_VERBOSE", "0")]);
    assert_eq!((text(&quiet.stdout), text(&quiet.stderr)), ("42\n".into(), String::new()), "no log unless asked");
}

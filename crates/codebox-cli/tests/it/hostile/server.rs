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
    let out = Command::new(env!("CARGO_BIN_EXE_codebox"))
        .args(["serve", "--addr", "127.0.0.1:0", "--isolation", "none", "--pool-size", "0", "--no-session-uids"])
        .arg("--api-key-file")
        .arg(&keys)
        .arg("--session-root")
        .arg(dir.path().join("sessions"))
        .env_remove("CODEBOX_SERVER_API_KEYS")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "served two keys without isolation: {stderr}");
    assert!(stderr.contains("--allow-weak-isolation"), "{stderr}");
}

/// Timeouts no `Duration` can hold (or not numbers at all), on execute and on commands,
/// are a 400 saying so, and the server goes on answering.
fn absurd_timeouts_are_refused(level: Level) {
    let serve = Serve::start(Options::new(level));
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
                .unwrap_or_else(|e| panic!("{path} with timeout {timeout}: no answer: {e}"));
            assert_eq!(reply.status, 400, "{path} with timeout {timeout}: {}", reply.text());
            assert_eq!(reply.json()["error"]["kind"], "invalid_input", "{}", reply.text());
        }
    }
    assert!(serve.healthy_within(Duration::from_secs(10)));
    assert_eq!(serve.exec(KEY_A, &id, "print(6 * 7)").ok(), "42\n");
    serve.stop();
}

per_level!(another_tenants_session_is_invisible, two_keys_without_isolation_are_refused, absurd_timeouts_are_refused,);

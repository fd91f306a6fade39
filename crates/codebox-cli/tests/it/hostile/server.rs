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

per_level!(another_tenants_session_is_invisible);

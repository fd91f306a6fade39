//! `codebox mcp` (stdio) and `/mcp` of `codebox serve` (Streamable HTTP) driven by the real
//! Python `mcp` client (PyPI, pinned) in both of its negotiation modes, calling every tool;
//! the client's script is `crates/codebox-mcp/tests/python/every_tool.py`. Also `codebox
//! mcp` with a server behind it, two keys' sessions kept apart, and `/mcp`'s answer to a
//! request without a key.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::hostile::{KEY_A, KEY_B, Level, Options, Serve};

/// The client, pinned: the tests check the protocol as this release speaks it.
const MCP_CLIENT: &str = "mcp==2.3.0";
/// The session uids of this file's servers.
const UIDS: std::ops::Range<u32> = 345_000..345_020;

/// The Python of a virtualenv with the `mcp` client, made under target/ on first use.
pub(crate) fn client_python() -> PathBuf {
    crate::venv::python_with("mcp-venv", &[MCP_CLIENT], "import mcp, httpx2; from mcp import Client")
}

pub(crate) fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../codebox-mcp/tests/python/every_tool.py")
}

/// Run the client script with `args` and the CODEBOX_* variables `env` (none else: a stdio
/// server picks a local box when no API key is set); it prints `ok: ...` when every check
/// passed.
fn run_client(args: &[&str], env: &[(&str, &str)]) {
    let out = Command::new(client_python())
        .arg(script())
        .args(args)
        .env_remove("CODEBOX_API_KEY")
        .env_remove("CODEBOX_BASE_URL")
        .env_remove("CODEBOX_SESSION_ID")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("running the Python mcp client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ok: "),
        "the mcp client ({args:?}) failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `codebox mcp` over a local box: no CODEBOX_API_KEY, so it is a local kernel.
fn stdio(mode: &str) {
    run_client(&["stdio", mode, env!("CARGO_BIN_EXE_codebox")], &[]);
}

#[test]
fn the_mcp_client_calls_every_tool_over_stdio_in_legacy_mode() {
    stdio("legacy");
}

#[test]
fn the_mcp_client_calls_every_tool_over_stdio_in_auto_mode() {
    stdio("auto");
}

/// Over HTTP, and over stdio with the server behind `codebox mcp`; each key sees only its own
/// sessions.
#[test]
fn the_mcp_client_calls_every_tool_over_http_and_on_a_server_in_both_modes() {
    if !crate::hostile::can_run() {
        return;
    }
    let base = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let serve = Serve::start_on(&base.path().join("sessions"), Options::new(Level::Bubblewrap), UIDS);
    let url = format!("http://{}/mcp", serve.addr);
    let base_url = format!("http://{}", serve.addr);
    let on_server = [("CODEBOX_API_KEY", KEY_A), ("CODEBOX_BASE_URL", base_url.as_str())];
    for mode in ["legacy", "auto"] {
        run_client(&["http", mode, &url, KEY_A], &[]);
        run_client(&["stdio", mode, env!("CARGO_BIN_EXE_codebox")], &on_server);
        run_client(&["isolation", mode, &url, KEY_A, KEY_B], &[]);
    }
    // No key, or a wrong one: 401 with the challenge, as on every native route.
    for key in [None, Some("not-a-key")] {
        let body = br#"{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}"#;
        let headers = [("Content-Type", "application/json"), ("Accept", "application/json, text/event-stream")];
        let reply = serve.request_with(key, "POST", "/mcp", &headers, body, Duration::from_secs(10)).unwrap();
        assert_eq!(reply.status, 401, "{key:?}: {}", reply.text());
        assert_eq!(reply.header("www-authenticate").as_deref(), Some("Bearer"));
    }
    serve.stop();
}

//! The real E2B SDK (`e2b-code-interpreter`, PyPI, pinned, with `e2b<3`) against `codebox
//! serve`, sync and async, in both of the ways a user points it at us: full mode
//! (`E2B_API_URL` + `E2B_SANDBOX_URL` + a key) at the server's root, and debug mode
//! (`E2B_DEBUG=true`, no key) under the `/e2b` prefix. The client's script is
//! `tests/python/e2b_compat.py`; it prints `N passed, N failed`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::hostile::{KEY_A, Level, Options, Serve};

/// The SDK, pinned: the tests check the protocol as this release speaks it.
const E2B_CLIENT: [&str; 2] = ["e2b-code-interpreter==2.11.5", "e2b<3"];
/// The session uids of this file's servers.
const UIDS: std::ops::Range<u32> = 352_000..352_032;
/// The fingerprint of [`KEY_A`] (`printf %s "$KEY" | sha256sum | cut -c1-12`): debug-mode
/// traffic acts as that key.
const KEY_A_FINGERPRINT: &str = "741526f653d9";

/// The Python of a virtualenv with the E2B SDK, made under target/ on first use. The SDK
/// needs Python 3.11 or newer: `CODEBOX_PYTHON` names one when `python3` is older.
pub(crate) fn client_python() -> PathBuf {
    crate::venv::python_with(
        "e2b-venv",
        &E2B_CLIENT,
        "from importlib.metadata import version; import e2b_code_interpreter; \
         assert version('e2b-code-interpreter') == '2.11.5'",
    )
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/e2b_compat.py")
}

/// Run the script in `mode` with the E2B variables `env` (no other E2B_* variable of this
/// environment reaches it); asserts that it ran everything and nothing failed, and returns
/// how many operations passed.
fn run_client(mode: &str, env: &[(&str, &str)]) -> usize {
    let mut cmd = Command::new(client_python());
    cmd.arg(script()).arg(mode);
    for (name, _) in std::env::vars() {
        if name.starts_with("E2B_") {
            cmd.env_remove(name);
        }
    }
    let out = cmd.envs(env.iter().copied()).stdin(Stdio::null()).output().expect("running the E2B SDK script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary = stdout.lines().last().unwrap_or_default();
    let counts: Vec<usize> = summary.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect();
    assert!(
        out.status.success() && summary.ends_with(" passed, 0 failed") && counts.len() == 2,
        "the E2B SDK in {mode} mode: {}\n{stdout}\n{stderr}",
        out.status
    );
    counts[0]
}

#[test]
fn the_e2b_sdk_runs_every_operation_sync_and_async_in_full_and_debug_mode() {
    let base = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let options = Options::new(Level::Bubblewrap).arg("--e2b-debug-as").arg(KEY_A_FINGERPRINT);
    let serve = Serve::start_on(&base.path().join("sessions"), options, UIDS);
    let root = format!("http://{}", serve.addr);
    let full = [("E2B_API_URL", root.as_str()), ("E2B_SANDBOX_URL", root.as_str()), ("E2B_API_KEY", KEY_A)];
    // create, run_code (text, image, error, envs, bash, a client that gives up), contexts,
    // files, commands, set_timeout, get_metrics, pause and connect, list, kill: sync (15),
    // then async without envs, bash, giving up and pause (11).
    assert_eq!(run_client("full", &full), 15 + 11);
    let prefixed = format!("{root}/e2b");
    let debug = [("E2B_DEBUG", "true"), ("E2B_SANDBOX_URL", prefixed.as_str())];
    // The same without pause, list and kill, which debug mode has no control plane for.
    assert_eq!(run_client("debug", &debug), 12 + 9);
    serve.stop();
}

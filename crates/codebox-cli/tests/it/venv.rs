//! Virtualenvs of the Python clients the tests drive (the MCP client, the E2B SDK, the
//! codebox-api clients), made under target/ on first use.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The workspace's target directory.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

/// The Python of the virtualenv `name` under target/ with `requirements` installed, made
/// with `CODEBOX_PYTHON` (else `python3`) on first use; `probe` is Python code that succeeds
/// once they are. Tests that need it at once make it once: a lock directory marks the one
/// making it, and the others wait until the probe succeeds.
pub(crate) fn python_with(name: &str, requirements: &[&str], probe: &str) -> PathBuf {
    let venv = target_dir().join(name);
    let python = venv.join("bin/python");
    let ready = |p: &Path| {
        Command::new(p)
            .args(["-c", probe])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if ready(&python) {
        return python;
    }
    let lock = venv.with_extension("lock");
    std::fs::create_dir_all(target_dir()).unwrap();
    while std::fs::create_dir(&lock).is_err() {
        std::thread::sleep(Duration::from_millis(500));
        if ready(&python) {
            return python;
        }
    }
    let quiet = |cmd: &mut Command| cmd.stdout(Stdio::null()).status().is_ok_and(|s| s.success());
    let base = std::env::var("CODEBOX_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let ok = quiet(Command::new(&base).args(["-m", "venv", "--clear"]).arg(&venv))
        && quiet(
            Command::new(&python)
                .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
                .args(requirements),
        );
    let _ = std::fs::remove_dir(&lock);
    assert!(
        ok && ready(&python),
        "creating the {requirements:?} virtualenv at {} failed (pip needs PyPI; CODEBOX_PYTHON names the \
         Python to make it with)",
        venv.display()
    );
    python
}

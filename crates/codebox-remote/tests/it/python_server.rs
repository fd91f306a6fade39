//! The real codebox-api 0.2 single-box server (`uvicorn codeboxapi.api:app`) from a virtualenv
//! this setup creates and caches under `target/codeboxapi-venv`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use codebox_core::{CodeBox, CodeBoxExt, ExecEvent, Outcome, RunOptions};
use codebox_remote::{Protocol, RemoteBox};

const PACKAGES: &[&str] =
    &["codeboxapi==0.2.6", "fastapi", "uvicorn", "python-multipart", "ipython", "matplotlib", "aiofiles"];
const PROBE: &str = "import codeboxapi, fastapi, uvicorn, multipart, IPython, matplotlib, aiofiles";

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

fn run(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::inherit()).status().is_ok_and(|s| s.success())
}

/// The venv's python, creating the venv when it is missing or incomplete.
pub(crate) fn provision_venv() -> PathBuf {
    let venv = target_dir().join("codeboxapi-venv");
    let python = venv.join("bin/python");
    if run(Command::new(&python).args(["-c", PROBE])) {
        return python;
    }
    // One process provisions; others wait for its lock directory to go away.
    let lock = target_dir().join("codeboxapi-venv.lock");
    std::fs::create_dir_all(target_dir()).unwrap();
    while std::fs::create_dir(&lock).is_err() {
        std::thread::sleep(Duration::from_millis(500));
        if run(Command::new(&python).args(["-c", PROBE])) {
            return python;
        }
    }
    let base = std::env::var("CODEBOX_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let ok = run(Command::new(&base).args(["-m", "venv", "--clear"]).arg(&venv))
        && run(Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(PACKAGES));
    let _ = std::fs::remove_dir(&lock);
    assert!(ok, "creating the codeboxapi 0.2.6 virtualenv at {} failed (pip needs PyPI)", venv.display());
    python
}

/// A running `uvicorn codeboxapi.api:app`, killed on drop.
pub(crate) struct PythonServer {
    child: Child,
    pub(crate) base: String,
    _dir: tempfile::TempDir,
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn start_python_server() -> PythonServer {
    let python = provision_venv();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(python)
        .args(["-m", "uvicorn", "codeboxapi.api:app", "--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--log-level", "warning"])
        .current_dir(dir.path())
        .env("CODEBOX_TIMEOUT", "none")
        .env("MPLBACKEND", "Agg")
        .stdin(Stdio::null())
        .spawn()
        .expect("starting uvicorn");
    PythonServer { child, base: format!("http://127.0.0.1:{port}"), _dir: dir }
}

/// Start the box, waiting for the server to come up.
pub(crate) async fn started_box(server: &PythonServer) -> RemoteBox {
    let b = RemoteBox::builder().with_base_url(&server.base).with_protocol(Protocol::CodeboxApiServer).build().unwrap();
    let mut last = None;
    for _ in 0..240 {
        match b.start().await {
            Ok(()) => return b,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("the codeboxapi server did not come up: {last:?}");
}

/// The codeboxapi 0.2.6 server polls the cell's captured stdout every millisecond while the
/// cell runs and does not read it once more after the cell ends, so output printed in the
/// cell's last moments can be lost on a busy machine. A short pause after printing lets its
/// poll loop see the output; that is the server's behaviour, not the client's.
fn settled(code: &str) -> String {
    format!("{code}\nimport time as _t\n_t.sleep(0.2)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_codeboxapi_server_runs_code_and_moves_files() {
    let server = tokio::task::spawn_blocking(start_python_server).await.unwrap();
    let b = started_box(&server).await;

    let ex = b.exec(&settled("x = 6 * 7\nprint('answer', x)")).await.unwrap();
    assert_eq!(ex.stdout(), "answer 42\n");
    let ex = b.exec(&settled("print(x + 1)")).await.unwrap();
    assert_eq!(ex.stdout(), "43\n", "state persists between executions");

    let ex = b.exec("1 / 0").await.unwrap();
    let error = ex.error().expect("the exception is an error event");
    assert_eq!((error.name.as_str(), error.value.as_str()), ("ZeroDivisionError", "division by zero"), "{ex:?}");
    assert_eq!(ex.outcome, Outcome::Error);

    let ex = b.run("echo from-bash", RunOptions::new().with_language("bash")).await.unwrap();
    assert_eq!(ex.stdout(), "from-bash\n");

    let ex = b.exec(&settled("import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()")).await.unwrap();
    let images = ex.images();
    assert_eq!(images.len(), 1, "{ex:?}");
    assert!(images[0].bytes.starts_with(b"\x89PNG"), "not a PNG");

    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let info = b.upload_bytes("blob.bin", content.clone()).await.unwrap();
    assert_eq!(info.size, 200_000);
    let ex = b.exec(&settled("print(len(open('blob.bin', 'rb').read()))")).await.unwrap();
    assert_eq!(ex.stdout(), "200000\n", "the upload is visible to code");
    b.exec("open('made.txt', 'w').write('made by code')").await.unwrap();
    assert_eq!(b.download_bytes("made.txt").await.unwrap().as_ref(), b"made by code");
    assert_eq!(b.download_bytes("blob.bin").await.unwrap().as_ref(), content.as_slice());
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_codeboxapi_server_reports_exceptions_and_outcomes() {
    let server = tokio::task::spawn_blocking(start_python_server).await.unwrap();
    let b = started_box(&server).await;

    // Output before the exception stays output; the exception is one error event with the
    // traceback the server printed, without its terminal colours.
    // (IPython prints the traceback in one write before the cell ends, so the server's
    // polling sees it; the pause is for the `print` only, as in `settled`.)
    let code = "print('before')\nimport time as _t\n_t.sleep(0.2)\ndef g():\n    raise KeyError('k')\ng()";
    let ex = b.exec(code).await.unwrap();
    assert!(ex.stdout().starts_with("before\n"), "{ex:?}");
    let error = ex.error().expect("an error event");
    assert_eq!((error.name.as_str(), error.value.as_str()), ("KeyError", "'k'"));
    assert_eq!(error.traceback.last().map(String::as_str), Some("KeyError: 'k'"), "{error:?}");
    assert!(error.traceback.iter().all(|l| !l.contains('\u{1b}')), "{error:?}");
    assert!(matches!(ex.events.last(), Some(ExecEvent::Error(_))), "{ex:?}");
    assert_eq!(ex.outcome, Outcome::Error);
    assert!(ex.stderr().is_empty(), "{ex:?}");

    let ex = b.exec("def f(:\n    pass").await.unwrap();
    assert_eq!(ex.error().map(|e| e.name.as_str()), Some("SyntaxError"), "{ex:?}");
    assert_eq!(ex.outcome, Outcome::Error);

    let ex = b.exec("raise ValueError()").await.unwrap();
    let error = ex.error().expect("an error event");
    assert_eq!((error.name.as_str(), error.value.as_str()), ("ValueError", ""));

    // Text on standard error is not an exception.
    let ex = b.exec(&settled("import sys\nprint('a warning', file=sys.stderr)")).await.unwrap();
    assert_eq!(ex.stderr(), "a warning\n");
    assert!(ex.error().is_none(), "{ex:?}");
    assert_eq!(ex.outcome, Outcome::Ok);

    let ex = b.run("echo out; echo oops >&2", RunOptions::new().with_language("bash")).await.unwrap();
    assert_eq!((ex.stdout().as_str(), ex.stderr().as_str(), ex.outcome), ("out\n", "oops\n", Outcome::Ok));

    // What the wire cannot tell is said.
    let caps = b.capabilities();
    for unknown in ["exact_outcome", "kernel_death_cause", "execution_count", "kernel_state"] {
        assert!(caps.unreported.iter().any(|u| u == unknown), "{unknown} missing from {caps:?}");
    }
    b.stop().await.unwrap();
}

//! The Python references the benchmarks compare with, each in a virtualenv cached under the
//! target directory: the codebox-api 0.2 client against its own server, and E2B's SDK.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The workspace's target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The venv with codeboxapi 0.2.6 and its server, created when missing.
pub fn codeboxapi_python() -> Result<PathBuf> {
    let venv = target_dir().join("codeboxapi-venv");
    let python = venv.join("bin/python");
    let probe = "import codeboxapi, fastapi, uvicorn, multipart, IPython, matplotlib, aiofiles, httpx";
    let ready =
        |p: &Path| Command::new(p).args(["-c", probe]).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if ready(&python) {
        return Ok(python);
    }
    let base = std::env::var("CODEBOX_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let ok = Command::new(&base).args(["-m", "venv", "--clear"]).arg(&venv).status()?.success()
        && Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "codeboxapi==0.2.6", "fastapi", "uvicorn"])
            .args(["python-multipart", "ipython", "matplotlib", "aiofiles"])
            .status()?
            .success();
    if !ok || !ready(&python) {
        bail!("creating {} failed", venv.display());
    }
    Ok(python)
}

/// `uvicorn codeboxapi.api:app` on a free loopback port, killed on drop.
#[derive(Debug)]
pub struct PythonServer {
    python: PathBuf,
    port: u16,
    child: std::process::Child,
    dir: PathBuf,
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        // The process's scratch directory too, once nothing else of the run is in it.
        if let Some(parent) = self.dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

impl PythonServer {
    /// Start the server (making the virtualenv first when it is missing).
    pub fn start() -> Result<Self> {
        let python = codeboxapi_python()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = tempfile_dir()?.join("codeboxapi");
        std::fs::create_dir_all(&dir)?;
        let child = Command::new(&python)
            .args(["-m", "uvicorn", "codeboxapi.api:app", "--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--log-level", "warning"])
            .current_dir(&dir)
            .env("CODEBOX_TIMEOUT", "none")
            .stdin(Stdio::null())
            .spawn()
            .context("starting uvicorn")?;
        let server = Self { python, port, child, dir };
        let up = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if up.elapsed() > Duration::from_secs(60) {
                bail!("uvicorn did not start");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(server)
    }

    /// One block of the Python client's round trips (ms), after `warmup` untimed ones.
    pub fn round_trips(&self, rounds: usize, warmup: usize) -> Result<Vec<f64>> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("reference/codeboxapi_v2_ref.py");
        let out = Command::new(&self.python)
            .arg(script)
            .args([self.port.to_string(), rounds.to_string(), warmup.to_string()])
            .stderr(Stdio::inherit())
            .output()?;
        if !out.status.success() {
            bail!("the reference script failed");
        }
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let samples = json["samples_ms"].as_array().context("no samples_ms in the reference output")?;
        Ok(samples.iter().filter_map(serde_json::Value::as_f64).collect())
    }
}

/// A scratch directory of this process's.
pub fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("codebox-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The E2B SDK the benchmarks and tests drive, pinned.
pub const E2B_CLIENT: [&str; 2] = ["e2b-code-interpreter==2.11.5", "e2b<3"];

/// The venv with E2B's SDK (the one codebox-cli's E2B test makes), created when missing.
pub fn e2b_python() -> Result<PathBuf> {
    let venv = target_dir().join("e2b-venv");
    let python = venv.join("bin/python");
    let probe = "from importlib.metadata import version; assert version('e2b-code-interpreter') == '2.11.5'";
    let ready =
        |p: &Path| Command::new(p).args(["-c", probe]).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if ready(&python) {
        return Ok(python);
    }
    let base = std::env::var("CODEBOX_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let ok = Command::new(&base).args(["-m", "venv", "--clear"]).arg(&venv).status()?.success()
        && Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(E2B_CLIENT)
            .status()?
            .success();
    if !ok || !ready(&python) {
        bail!("creating {} failed (the E2B SDK needs Python 3.11 or newer: CODEBOX_PYTHON names one)", venv.display());
    }
    Ok(python)
}

/// One block of `run_code("1 + 1")` round trips (ms) of E2B's SDK against the E2B surface
/// at `url` with `key`, after `warmup` untimed ones, on one sandbox made for the block.
pub fn e2b_round_trips(python: &Path, url: &str, key: &str, rounds: usize, warmup: usize) -> Result<Vec<f64>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("reference/e2b_ref.py");
    let out = Command::new(python)
        .arg(script)
        .args([rounds.to_string(), warmup.to_string()])
        .env("E2B_API_URL", url)
        .env("E2B_SANDBOX_URL", url)
        .env("E2B_API_KEY", key)
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("the E2B reference script failed");
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let samples = json["samples_ms"].as_array().context("no samples_ms in the E2B script's output")?;
    Ok(samples.iter().filter_map(serde_json::Value::as_f64).collect())
}

/// One block of `1 + 1` round trips (ms) through E2B's `/execute` and through the native
/// execute route of the server at `url`, by one plain Python HTTP client: (E2B, native).
pub fn e2b_wire_round_trips(
    python: &Path,
    url: &str,
    key: &str,
    rounds: usize,
    warmup: usize,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("reference/e2b_wire_ref.py");
    let out = Command::new(python)
        .arg(script)
        .args([url.to_owned(), key.to_owned(), rounds.to_string(), warmup.to_string()])
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("the E2B wire script failed");
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let samples = |name: &str| -> Result<Vec<f64>> {
        let list = json[name].as_array().with_context(|| format!("no {name} in the wire script's output"))?;
        Ok(list.iter().filter_map(serde_json::Value::as_f64).collect())
    };
    Ok((samples("e2b_ms")?, samples("native_ms")?))
}

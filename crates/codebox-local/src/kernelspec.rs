//! Kernel discovery: the built-in `python3` kernel over the box's Python, the built-in
//! `deno` kernel (JavaScript and TypeScript, `deno jupyter`), and kernelspecs
//! (`kernels/<name>/kernel.json`) under the Jupyter data paths; what it finds becomes a
//! [`LaunchSpec`], everything needed to start one kernel.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use codebox_core::{CodeBoxError, Result};

use codebox_sandbox::SandboxPolicy;

/// How an interrupt reaches the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum InterruptMode {
    /// `interrupt_request` on the control channel (works for ipykernel, even sandboxed).
    Message,
    /// SIGINT to the kernel process.
    Signal,
}

/// How the client reaches the kernel's sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Transport {
    Ipc,
    Tcp,
}

/// Everything needed to start one kernel.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct LaunchSpec {
    pub(crate) name: String,
    /// The language the kernel runs, as its kernelspec says (`python` for the built-in ones;
    /// empty when a kernelspec names none).
    pub(crate) language: String,
    /// The command line; `{connection_file}` is replaced.
    pub(crate) argv: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) interrupt_mode: InterruptMode,
    pub(crate) transport: Transport,
    pub(crate) start_timeout: Duration,
    /// How kernels of this kind are confined.
    pub(crate) sandbox: Arc<SandboxPolicy>,
    /// Where the kernel's runtime directory (and a box's temporary working directory) go.
    pub(crate) scratch_dir: PathBuf,
    /// Fork the kernel from a fork server where it can be (`kernel::forked`).
    pub(crate) fork: bool,
}

/// Whether Unix sockets can be made where kernels' IPC sockets go under `scratch_dir`
/// (checked once per directory).
pub(crate) fn ipc_works(scratch_dir: &Path) -> bool {
    static WORKS: Mutex<Vec<(PathBuf, bool)>> = Mutex::new(Vec::new());
    if let Some((_, works)) = WORKS.lock().unwrap_or_else(|e| e.into_inner()).iter().find(|(d, _)| d == scratch_dir) {
        return *works;
    }
    let works = {
        let runtime_base = crate::workdir::runtime_base(scratch_dir);
        let probe = tempfile::Builder::new().prefix("cbk-probe-").tempdir_in(&runtime_base);
        let works = probe.is_ok_and(|dir| std::os::unix::net::UnixListener::bind(dir.path().join("s")).is_ok());
        if !works {
            tracing::warn!("Unix sockets are unavailable in {}; kernels use TCP on 127.0.0.1", runtime_base.display());
        }
        works
    };
    WORKS.lock().unwrap_or_else(|e| e.into_inner()).push((scratch_dir.to_owned(), works));
    works
}

/// Flags for ipykernel: in-memory history (a shared SQLite history file serializes
/// concurrent kernels) and tracebacks without terminal colours.
pub(crate) const IPYKERNEL_FLAGS: &[&str] =
    &["--HistoryManager.hist_file=:memory:", "--InteractiveShell.colors=nocolor", "--IPKernelApp.quiet=True"];

/// The program the built-in kernel runs under `python -c`: ipykernel without its debugger.
pub(crate) const KERNEL_LAUNCHER: &str = include_str!("python/kernel_launcher.py");

/// Runs before either built-in kernel: reaches the allowlist proxy from inside the box.
pub(crate) const NET_FORWARDER: &str = include_str!("python/net_forwarder.py");

/// The program of the built-in lean kernel ([`LEAN_KERNEL`]): IPython's shell behind the
/// Jupyter protocol without ipykernel, for the shortest round trips.
pub(crate) const LEAN_KERNEL_PROGRAM: &str = include_str!("python/lean_kernel.py");

/// The name of the built-in lean kernel: IPython without ipykernel. It runs a one-line cell
/// in a fraction of ipykernel's round trip and starts faster, but offers no comms
/// (widgets), debugger, completion or inspection.
pub const LEAN_KERNEL: &str = "python3-lean";

/// The name of the built-in JavaScript and TypeScript kernel: Deno's own Jupyter kernel
/// (`deno jupyter --kernel`), over the Deno that `CODEBOX_DENO` names or codebox provisions.
pub const DENO_KERNEL: &str = "deno";

/// The languages the built-in deno kernel takes: TypeScript, and JavaScript as part of it.
pub(crate) const DENO_LANGUAGES: &[&str] = &["javascript", "typescript"];

/// The Jupyter data directories, most specific first.
fn data_dirs(python: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(paths) = std::env::var_os("JUPYTER_PATH") {
        dirs.extend(std::env::split_paths(&paths));
    }
    match std::env::var_os("JUPYTER_DATA_DIR") {
        Some(d) => dirs.push(d.into()),
        None => {
            if let Some(home) = std::env::var_os("HOME") {
                dirs.push(PathBuf::from(home).join(".local/share/jupyter"));
            }
        }
    }
    // The environment's own prefix: <prefix>/bin/python -> <prefix>/share/jupyter.
    if let Some(prefix) = python.and_then(Path::parent).and_then(Path::parent) {
        dirs.push(prefix.join("share/jupyter"));
    }
    dirs.push("/usr/local/share/jupyter".into());
    dirs.push("/usr/share/jupyter".into());
    dirs
}

fn is_builtin(name: &str) -> bool {
    matches!(name, "python3" | "python")
}

/// Whether `language` (a kernelspec's `language`, or `RunOptions::language`) is Python.
pub(crate) fn is_python(language: &str) -> bool {
    language.eq_ignore_ascii_case("python") || language.eq_ignore_ascii_case("python3")
}

/// The language kernel `name` runs, as far as it can be told without starting it: Python
/// for the built-in kernels, else what the first kernelspec of that name on the Jupyter
/// path says (the environment of `python`, when known, included).
pub(crate) fn declared_language(name: &str, python: Option<&Path>) -> Option<String> {
    if is_builtin(name) || name == LEAN_KERNEL {
        return Some("python".to_owned());
    }
    if name == DENO_KERNEL {
        return Some("typescript".to_owned());
    }
    data_dirs(python).iter().find_map(|dir| {
        let text = std::fs::read_to_string(dir.join("kernels").join(name).join("kernel.json")).ok()?;
        let spec: serde_json::Value = serde_json::from_str(&text).ok()?;
        Some(spec["language"].as_str().unwrap_or_default().to_owned())
    })
}

/// Names of every kernel this box could start.
pub(crate) fn available(python: &Path) -> Vec<String> {
    let mut names = vec!["python3".to_owned(), LEAN_KERNEL.to_owned(), DENO_KERNEL.to_owned()];
    for dir in data_dirs(Some(python)) {
        let Ok(entries) = std::fs::read_dir(dir.join("kernels")) else { continue };
        for e in entries.flatten() {
            if e.path().join("kernel.json").is_file() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    names.sort();
    names
}

/// The launch spec for kernel `name`.
pub(crate) fn launch_spec(
    name: &str,
    python: &Path,
    env: Vec<(String, String)>,
    start_timeout: Duration,
) -> Result<LaunchSpec> {
    // The system's temporary directory until the builder names a scratch directory.
    let scratch_dir = std::env::temp_dir();
    if is_builtin(name) || name == LEAN_KERNEL {
        let lean = name == LEAN_KERNEL;
        let program = if lean { LEAN_KERNEL_PROGRAM } else { KERNEL_LAUNCHER };
        let program = format!("{NET_FORWARDER}\n{program}");
        let mut argv = vec![python.to_string_lossy().into_owned(), "-c".into(), program];
        argv.extend(["-f".to_owned(), "{connection_file}".to_owned()]);
        if !lean {
            argv.extend(IPYKERNEL_FLAGS.iter().map(|s| (*s).to_owned()));
        }
        return Ok(LaunchSpec {
            name: if lean { LEAN_KERNEL.into() } else { "python3".into() },
            language: "python".into(),
            argv,
            env,
            interrupt_mode: InterruptMode::Message,
            // Where Unix sockets cannot be made, the kernel falls back to TCP when it starts.
            transport: Transport::Ipc,
            start_timeout,
            sandbox: Default::default(),
            scratch_dir,
            fork: true,
        });
    }
    if name == DENO_KERNEL {
        return Ok(deno_spec(crate::deno::installed()?, env, start_timeout, scratch_dir));
    }
    for dir in data_dirs(Some(python)) {
        let file = dir.join("kernels").join(name).join("kernel.json");
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        let spec: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| CodeBoxError::invalid(format!("kernelspec {} is not valid JSON: {e}", file.display())))?;
        let mut argv: Vec<String> = spec["argv"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        if argv.is_empty() {
            return Err(CodeBoxError::invalid(format!("kernelspec {} has no argv", file.display())));
        }
        let resource_dir = file.parent().unwrap_or(&dir).to_string_lossy().into_owned();
        for a in &mut argv {
            *a = a.replace("{resource_dir}", &resource_dir);
        }
        if matches!(argv[0].as_str(), "python" | "python3") && spec["language"] == "python" {
            argv[0] = python.to_string_lossy().into_owned();
        }
        let mut env = env;
        if let Some(extra) = spec["env"].as_object() {
            env.extend(extra.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned()))));
        }
        let interrupt_mode =
            if spec["interrupt_mode"] == "message" { InterruptMode::Message } else { InterruptMode::Signal };
        return Ok(LaunchSpec {
            name: name.to_owned(),
            language: spec["language"].as_str().unwrap_or_default().to_owned(),
            argv,
            env,
            interrupt_mode,
            // Not every kernel implements IPC; TCP on loopback always works.
            transport: Transport::Tcp,
            start_timeout,
            sandbox: Default::default(),
            scratch_dir,
            fork: true,
        });
    }
    Err(CodeBoxError::invalid(format!("unknown kernel {name:?}; available kernels: {}", available(python).join(", "))))
}

/// The launch spec of the built-in deno kernel over the binary `deno`: `deno jupyter
/// --kernel` behind [`KERNEL_BRIDGE`](crate::deno::KERNEL_BRIDGE), which lets a kernel that
/// speaks only TCP be reached over Unix sockets. Deno keeps its cache
/// in `$HOME/.cache/deno`, and the sandbox gives the kernel a `HOME` in the box's
/// `.codebox/`: each box has its own writable `DENO_DIR`, counted against its disk.
fn deno_spec(
    deno: PathBuf,
    mut env: Vec<(String, String)>,
    start_timeout: Duration,
    scratch_dir: PathBuf,
) -> LaunchSpec {
    // No update check (the box has no network, and the version is pinned), no prompts, and
    // tracebacks without terminal colours.
    env.extend(
        [("DENO_NO_UPDATE_CHECK", "1"), ("DENO_NO_PROMPT", "1"), ("NO_COLOR", "1")]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let argv = vec![
        deno.to_string_lossy().into_owned(),
        "eval".into(),
        "--no-config".into(),
        crate::deno::KERNEL_BRIDGE.into(),
        "{connection_file}".into(),
    ];
    LaunchSpec {
        name: DENO_KERNEL.into(),
        language: "typescript".into(),
        argv,
        env,
        interrupt_mode: InterruptMode::Message,
        transport: Transport::Ipc,
        start_timeout,
        sandbox: Default::default(),
        scratch_dir,
        fork: false,
    }
}

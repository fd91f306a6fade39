//! Kernel discovery: the built-in `python3` kernel over the box's Python, and kernelspecs
//! (`kernels/<name>/kernel.json`) under the Jupyter data paths.

use std::path::{Path, PathBuf};
use std::time::Duration;

use codebox_core::{CodeBoxError, Result};

use crate::kernel::{InterruptMode, LaunchSpec, Transport};

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
const LEAN_KERNEL_PROGRAM: &str = include_str!("python/lean_kernel.py");

/// The name of the built-in lean kernel: IPython without ipykernel. It runs a one-line cell
/// in a fraction of ipykernel's round trip and starts faster, but offers no comms
/// (widgets), debugger, completion or inspection.
pub const LEAN_KERNEL: &str = "python3-lean";

/// The Jupyter data directories, most specific first.
fn data_dirs(python: &Path) -> Vec<PathBuf> {
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
    if let Some(prefix) = python.parent().and_then(Path::parent) {
        dirs.push(prefix.join("share/jupyter"));
    }
    dirs.push("/usr/local/share/jupyter".into());
    dirs.push("/usr/share/jupyter".into());
    dirs
}

fn is_builtin(name: &str) -> bool {
    matches!(name, "python3" | "python")
}

/// Names of every kernel this box could start.
pub(crate) fn available(python: &Path) -> Vec<String> {
    let mut names = vec!["python3".to_owned(), LEAN_KERNEL.to_owned()];
    for dir in data_dirs(python) {
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
            argv,
            env,
            interrupt_mode: InterruptMode::Message,
            transport: if crate::kernel::ipc_works() { Transport::Ipc } else { Transport::Tcp },
            start_timeout,
            sandbox: Default::default(),
            scratch_dir: None,
        });
    }
    for dir in data_dirs(python) {
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
            argv,
            env,
            interrupt_mode,
            // Not every kernel implements IPC; TCP on loopback always works.
            transport: Transport::Tcp,
            start_timeout,
            sandbox: Default::default(),
            scratch_dir: None,
        });
    }
    Err(CodeBoxError::invalid(format!("unknown kernel {name:?}; available kernels: {}", available(python).join(", "))))
}

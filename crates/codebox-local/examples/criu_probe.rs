//! Measures whether CRIU can checkpoint and restore a box's kernel as codebox confines it, so
//! the pause ladder's decision about its `criu` rung can be re-checked on any machine:
//!
//! ```text
//! sudo cargo run -p codebox-local --example criu_probe
//! ```
//!
//! For each isolation level (none, Landlock, bubblewrap with a session uid and cgroup, as
//! `codebox serve` runs boxes) and each Python kernel (ipykernel, the lean kernel) it starts a
//! box, opens a file in the kernel and keeps the handle, finds the kernel's process from this
//! side (the process holding that file), and runs `criu dump` on it, then `criu restore` and
//! one execution that reads through the handle. It prints every step's exit status and
//! CRIU's own error lines. Nothing is asserted: it is a measurement.
//!
//! Run it as root: CRIU needs `CAP_SYS_ADMIN` (or `CAP_CHECKPOINT_RESTORE`), and the
//! bubblewrap level with a session uid needs root too. It takes uids 350 000 to 350 015.

// A measurement program: its output is the point.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use codebox_core::{CodeBox, CodeBoxExt};
use codebox_local::{Isolation, LEAN_KERNEL, LocalBox, SandboxPolicy, UidAllocator};

/// The options every dump and restore gets: kernels hold TCP or Unix sockets to this
/// process and run in their own session.
const CRIU_OPTIONS: &[&str] = &["--tcp-established", "--ext-unix-sk", "--shell-job", "--file-locks", "-v4"];

#[tokio::main]
async fn main() {
    let version = run(Command::new("criu").arg("--version"));
    println!("criu --version: {version}");
    println!("kernel: {}", std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim());
    println!("criu check: {}", run(Command::new("criu").arg("check")));
    let uids = UidAllocator::new(350_000..350_016).expect("uid range");
    let levels = [
        ("none", SandboxPolicy::default().with_isolation(Isolation::None)),
        ("landlock", SandboxPolicy::default().with_isolation(Isolation::Landlock).with_require_isolation(true)),
        (
            "bubblewrap+uid+cgroup",
            SandboxPolicy::default()
                .with_isolation(Isolation::Bubblewrap)
                .with_require_isolation(true)
                .with_session_uids(Some(uids))
                .with_cgroups(true),
        ),
    ];
    for (level, policy) in levels {
        for kernel in ["python3", LEAN_KERNEL] {
            println!("\n== {level}, kernel {kernel}");
            probe(policy.clone(), kernel).await;
        }
    }
}

/// One box at `policy` running `kernel`: dump its kernel, restore it, execute through it.
async fn probe(policy: SandboxPolicy, kernel: &str) {
    let lb = match LocalBox::builder().with_sandbox(policy).with_kernel(kernel).build() {
        Ok(lb) => lb,
        Err(e) => return println!("box: cannot build: {e}"),
    };
    if let Err(e) = lb.start().await {
        return println!("box: cannot start: {e}");
    }
    println!("isolation: {:?}", lb.isolation().await);
    let token = format!("criu-probe-{}", std::process::id());
    let opened = lb.exec(&format!("__probe = open({token:?}, 'w+'); __probe.write('kept'); __probe.flush()")).await;
    if let Err(e) = opened {
        return println!("exec: {e}");
    }
    let Some(pid) = holder_of(&token) else {
        return println!("no process on this side holds {token}");
    };
    println!("kernel pid (host): {pid}");
    let images = tempfile::tempdir().expect("tempdir");
    let dir = images.path();
    let dump = run(Command::new("criu")
        .args(["dump", "-t", &pid.to_string(), "-D"])
        .arg(dir)
        .args(CRIU_OPTIONS)
        .args(["-o", "dump.log"]));
    println!("criu dump: {dump}{}", errors(&dir.join("dump.log")));
    if dump.starts_with("ok") {
        let restore = run(Command::new("criu")
            .args(["restore", "-d", "-D"])
            .arg(dir)
            .args(CRIU_OPTIONS)
            .args(["-o", "restore.log"]));
        println!("criu restore: {restore}{}", errors(&dir.join("restore.log")));
        let read = tokio::time::timeout(
            Duration::from_secs(20),
            lb.exec("__probe.seek(0); print(__probe.read(), __import__('os').getpid())"),
        )
        .await;
        match read {
            Ok(Ok(result)) => println!("exec after restore: {:?} {:?}", result.stdout(), result.error()),
            Ok(Err(e)) => println!("exec after restore: {e}"),
            Err(_) => println!("exec after restore: no answer in 20 s"),
        }
    }
    let _ = lb.stop().await;
}

/// The process, seen from this side, that holds open a file whose path ends with `token`.
fn holder_of(token: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let fds = std::fs::read_dir(entry.path().join("fd")).ok()?;
        fds.flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|to| to.to_string_lossy().ends_with(token)))
            .then_some(pid)
    })
}

/// `ok` or `exit N`, with the command's first output line, or why it did not run.
fn run(command: &mut Command) -> String {
    match command.output() {
        Ok(out) => {
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            let first = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default().to_owned();
            let status = if out.status.success() { "ok".to_owned() } else { format!("{}", out.status) };
            format!("{status}: {first}")
        }
        Err(e) => format!("did not run: {e}"),
    }
}

/// CRIU's `Error` lines in the log at `path`, one per line, indented.
fn errors(path: &Path) -> String {
    let log = std::fs::read_to_string(PathBuf::from(path)).unwrap_or_default();
    log.lines().filter(|l| l.contains("Error (")).map(|l| format!("\n    {l}")).collect()
}

//! Programs run as child processes in the box's working directory: `run_command` and the
//! `bash` execution language.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use codebox_core::{CodeBoxError, CommandOutput, ErrorInfo, EventStream, ExecEvent, Outcome, Result};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio::sync::{OwnedMutexGuard, mpsc};
use tokio::time::Instant;

use crate::output::OutputCap;
use crate::sandbox::Confinement;

/// Where a command runs: in the box's sandbox (its confinement, reading the box's Python
/// environment), or on the host (`None`: `install` of an unconfined box, which writes to that
/// environment).
pub(crate) type Jail<'a> = Option<(&'a Confinement, &'a Path)>;

/// Whether `program` exists where the sandbox will look for it.
fn findable(program: &str, python: &Path) -> bool {
    if program.contains('/') {
        return Path::new(program).exists();
    }
    let bin = python.parent().map(Path::to_path_buf);
    bin.into_iter()
        .chain(["/usr/local/bin", "/usr/bin", "/bin"].map(std::path::PathBuf::from))
        .any(|d| d.join(program).exists())
}

fn spawn(
    program: &str,
    args: &[String],
    cwd: &Path,
    env: &[(String, String)],
    extra: &BTreeMap<String, String>,
    jail: Jail<'_>,
) -> Result<Child> {
    let (mut cmd, guard) = match jail {
        Some((confinement, python)) => {
            if !findable(program, python) {
                return Err(CodeBoxError::not_found(format!("program {program:?}")));
            }
            let argv: Vec<String> = std::iter::once(program.to_owned()).chain(args.iter().cloned()).collect();
            let mut all: Vec<(String, String)> = env.to_vec();
            all.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
            let prepared = confinement.prepare(&argv, &all, Some(python), Some(cwd), None)?;
            (Command::from(prepared.command), Some(prepared.guard))
        }
        None => {
            let mut cmd = Command::new(program);
            cmd.args(args).current_dir(cwd).envs(env.iter().map(|(k, v)| (k, v))).envs(extra);
            (cmd, None)
        }
    };
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0).kill_on_drop(true);
    let spawned = cmd.spawn();
    drop(guard);
    spawned.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => CodeBoxError::not_found(format!("program {program:?}")),
        _ => CodeBoxError::io(format!("running {program:?}"), e),
    })
}

fn kill_group(child: &Child) {
    if let Some(pid) = child.id().and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// Read at most `limit` bytes, then keep draining (and discarding) so the child never blocks.
async fn read_capped(mut r: impl tokio::io::AsyncRead + Unpin, limit: usize) -> (Vec<u8>, u64) {
    let mut kept = Vec::new();
    let mut dropped = 0u64;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return (kept, dropped),
            Ok(n) => {
                let room = limit.saturating_sub(kept.len()).min(n);
                kept.extend_from_slice(&buf[..room]);
                dropped += (n - room) as u64;
            }
        }
    }
}

/// Run a program to completion, with a timeout, collecting its output (capped).
#[allow(clippy::too_many_arguments)] // one call site each; a struct would only rename them
pub(crate) async fn run_command(
    program: &str,
    args: &[String],
    cwd: &Path,
    env: &[(String, String)],
    extra: &BTreeMap<String, String>,
    timeout: Option<Duration>,
    limit: usize,
    jail: Jail<'_>,
) -> Result<CommandOutput> {
    let child = spawn(program, args, cwd, env, extra, jail)?;
    collect(child, program, timeout, limit).await
}

/// Run `python -m pip install ... packages` inside the box's confinement: as the box's uid,
/// with network, writing only to the working directory, into `target`. The operator's pip
/// settings (index, find-links, certificate, proxies) reach pip; local directories they name
/// are readable.
///
/// A box with a network allowlist keeps its private network for pip too: `proxy_run_dir`
/// is its kernel's runtime directory, whose proxy pip reaches through the same forwarder
/// the kernel runs, so pip gets only the allowed hosts (the operator's proxies are not
/// passed on).
#[allow(clippy::too_many_arguments)] // one call site, in install
pub(crate) async fn run_pip_install(
    confinement: &Confinement,
    python: &Path,
    target: &Path,
    packages: &[String],
    env: &[(String, String)],
    timeout: Option<Duration>,
    limit: usize,
    proxy_run_dir: Option<&Path>,
) -> Result<CommandOutput> {
    let mut argv: Vec<String> = vec![python.to_string_lossy().into_owned()];
    match proxy_run_dir {
        Some(_) => argv.extend([
            "-c".to_owned(),
            format!(
                "{}\nimport runpy\nrunpy.run_module('pip', run_name='__main__', alter_sys=True)",
                crate::kernelspec::NET_FORWARDER
            ),
        ]),
        None => argv.extend(["-m", "pip"].map(str::to_owned)),
    }
    argv.extend(
        ["install", "--disable-pip-version-check", "--no-input", "--no-cache-dir", "--target"].map(str::to_owned),
    );
    argv.push(target.to_string_lossy().into_owned());
    argv.extend(packages.iter().cloned());
    let (mut pip_env, read_only) = pip_settings(std::env::vars());
    if let Some(dir) = proxy_run_dir {
        pip_env.retain(|(k, _)| !k.to_ascii_lowercase().ends_with("_proxy"));
        pip_env.extend(crate::sandbox::netproxy::proxy_env(&dir.join("net.sock")));
    }
    let mut all = env.to_vec();
    all.extend(pip_env);
    let prepared = confinement.prepare_installer(&argv, &all, python, &read_only, proxy_run_dir)?;
    let mut cmd = Command::from(prepared.command);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0).kill_on_drop(true);
    let spawned = cmd.spawn();
    drop(prepared.guard);
    let child = spawned.map_err(|e| CodeBoxError::io("running pip", e))?;
    collect(child, "pip", timeout, limit).await
}

/// Archive suffixes pip takes for a local file even when the requirement has no `/`.
const ARCHIVE_SUFFIXES: &[&str] =
    &[".whl", ".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tar.xz", ".txz", ".tlz", ".tar.lz", ".tar.lzma"];

/// Refuse anything but a name-based requirement (PEP 508): a project name, optional
/// `[extras]`, optional version specifiers, optional `; markers`. Paths, `file:` and other
/// URLs, `name @ url` direct references and pip options (`-r file`, `--index-url ...`) are
/// refused before pip runs, so pip fetches only from the operator's package indexes and
/// never builds a source tree the box wrote.
pub(crate) fn check_requirement(spec: &str) -> Result<()> {
    let refuse = || {
        CodeBoxError::invalid(format!(
            "{spec:?} is not a package requirement: install takes package names with optional extras, \
             version specifiers and markers (PEP 508); paths, URLs, `name @ url` and pip options are refused"
        ))
    };
    let (requirement, marker) = match spec.split_once(';') {
        Some((r, m)) => (r, Some(m)),
        None => (spec, None),
    };
    let rest = requirement.trim_start();
    let name_len =
        rest.find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))).unwrap_or(rest.len());
    let name = &rest[..name_len];
    let name_ok = !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && !ARCHIVE_SUFFIXES.iter().any(|s| name.to_ascii_lowercase().ends_with(s));
    if !name_ok {
        return Err(refuse());
    }
    let mut rest = rest[name_len..].trim_start();
    if let Some(after) = rest.strip_prefix('[') {
        let (extras, after) = after.split_once(']').ok_or_else(refuse)?;
        let extra_ok = |e: &str| {
            let e = e.trim();
            !e.is_empty() && e.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        };
        if !extras.trim().is_empty() && !extras.split(',').all(extra_ok) {
            return Err(refuse());
        }
        rest = after.trim_start();
    }
    if let Some(inner) = rest.strip_prefix('(') {
        rest = inner.strip_suffix(')').or_else(|| inner.trim_end().strip_suffix(')')).ok_or_else(refuse)?;
    }
    if !rest.trim().is_empty() && !rest.split(',').all(is_version_clause) {
        return Err(refuse());
    }
    // Markers compare environment names with quoted versions: nothing in them names a place.
    let marker_ok = |m: &str| {
        !m.trim().is_empty() && m.chars().all(|c| c.is_ascii_alphanumeric() || " \t_.'\"<>=!~()-,*+".contains(c))
    };
    if marker.is_some_and(|m| !marker_ok(m)) {
        return Err(refuse());
    }
    Ok(())
}

/// `op version`, as in `>=1.2`, `== 2.*` or `~=3.0`.
fn is_version_clause(clause: &str) -> bool {
    let clause = clause.trim();
    let ops = ["===", "~=", "==", "!=", "<=", ">=", "<", ">"];
    let Some(version) = ops.iter().find_map(|op| clause.strip_prefix(op)) else { return false };
    let version = version.trim();
    !version.is_empty()
        && version.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '*' | '+' | '!' | '_' | '-'))
}

/// The host's pip settings that a sandboxed pip gets, and the local paths they name.
fn pip_settings(host: impl Iterator<Item = (String, String)>) -> (Vec<(String, String)>, Vec<std::path::PathBuf>) {
    const PASSED: &[&str] = &[
        "PIP_INDEX_URL",
        "PIP_EXTRA_INDEX_URL",
        "PIP_FIND_LINKS",
        "PIP_TRUSTED_HOST",
        "PIP_DEFAULT_TIMEOUT",
        "PIP_CERT",
        "PIP_CLIENT_CERT",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
    ];
    let mut env = Vec::new();
    let mut paths = Vec::new();
    for (k, v) in host {
        if !PASSED.contains(&k.as_str()) {
            continue;
        }
        if matches!(k.as_str(), "PIP_FIND_LINKS" | "PIP_CERT" | "PIP_CLIENT_CERT") {
            paths.extend(
                v.split_whitespace()
                    .map(|p| std::path::PathBuf::from(p.strip_prefix("file://").unwrap_or(p)))
                    .filter(|p| p.is_absolute() && p.exists()),
            );
        }
        env.push((k, v));
    }
    env.sort();
    (env, paths)
}

async fn collect(mut child: Child, program: &str, timeout: Option<Duration>, limit: usize) -> Result<CommandOutput> {
    let out = read_capped(child.stdout.take().expect("piped"), limit / 2);
    let err = read_capped(child.stderr.take().expect("piped"), limit / 2);
    let all = async { tokio::join!(child.wait(), out, err) };
    let (status, (stdout, _), (stderr, _), timed_out) = match timeout {
        None => {
            let (s, o, e) = all.await;
            (s, o, e, false)
        }
        Some(t) => match tokio::time::timeout(t, all).await {
            Ok((s, o, e)) => (s, o, e, false),
            Err(_) => {
                kill_group(&child);
                let status = child.wait().await;
                (status, (Vec::new(), 0), (Vec::new(), 0), true)
            }
        },
    };
    let status = status.map_err(|e| CodeBoxError::io(format!("waiting for {program:?}"), e))?;
    Ok(CommandOutput::new(
        if timed_out { None } else { status.code() },
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
        timed_out,
    ))
}

/// Run `code` with `bash -c`, streaming stdout and stderr as they come.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_bash(
    code: &str,
    cwd: &Path,
    env: &[(String, String)],
    extra: &BTreeMap<String, String>,
    timeout: Option<Duration>,
    limit: usize,
    guard: OwnedMutexGuard<()>,
    jail: Jail<'_>,
) -> Result<EventStream> {
    let started = Instant::now();
    let mut child = spawn("bash", &["-c".to_owned(), code.to_owned()], cwd, env, extra, jail)?;
    let (tx, rx) = mpsc::channel(32);
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    tokio::spawn(async move {
        let _guard = guard;
        let mut cap = OutputCap::new(limit);
        let (mut out_open, mut err_open) = (true, true);
        let (mut obuf, mut ebuf) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
        let deadline = timeout.map(|t| started + t);
        let far = started + Duration::from_secs(86_400 * 365);
        let mut timed_out = false;
        while out_open || err_open {
            let event = tokio::select! {
                r = stdout.read(&mut obuf), if out_open => match r {
                    Ok(n) if n > 0 => ExecEvent::stdout(String::from_utf8_lossy(&obuf[..n])),
                    _ => { out_open = false; continue }
                },
                r = stderr.read(&mut ebuf), if err_open => match r {
                    Ok(n) if n > 0 => ExecEvent::stderr(String::from_utf8_lossy(&ebuf[..n])),
                    _ => { err_open = false; continue }
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() && !timed_out => {
                    timed_out = true;
                    kill_group(&child);
                    continue;
                }
                _ = tx.closed() => {
                    kill_group(&child);
                    return;
                }
            };
            for e in cap.push(event) {
                let _ = tx.send(Ok(e)).await;
            }
        }
        let status = child.wait().await;
        for e in cap.finish() {
            let _ = tx.send(Ok(e)).await;
        }
        let outcome = match status {
            _ if timed_out => Outcome::TimedOut,
            Ok(s) if s.success() => Outcome::Ok,
            Ok(s) => {
                let value = match s.code() {
                    Some(code) => format!("bash exited with code {code}"),
                    None => format!("bash was killed ({s})"),
                };
                let info = ErrorInfo { name: "BashError".into(), value: value.clone(), traceback: vec![value] };
                let _ = tx.send(Ok(ExecEvent::Error(info))).await;
                Outcome::Error
            }
            Err(e) => {
                let _ = tx.send(Err(CodeBoxError::io("waiting for bash", e))).await;
                return;
            }
        };
        let _ = tx.send(Ok(ExecEvent::end(None, started.elapsed(), outcome))).await;
    });
    Ok(crate::exec::receiver_stream(rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_name_based_requirements_reach_pip() {
        let good = [
            "six",
            "Six_pkg.x-y",
            "requests[socks, security] >= 2.0, < 3",
            "numpy==1.26.*",
            "pkg (>=1.0)",
            "pkg~=1.4; python_version >= '3.8' and sys_platform == \"linux\"",
            "pkg[]",
        ];
        for spec in good {
            check_requirement(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
        }
        let bad = [
            "",
            " ",
            "./pkg",
            "pkg/",
            "/abs/pkg",
            ".",
            "..",
            "~/pkg",
            "C:\\pkg",
            "file:///tmp/pkg",
            "http://127.0.0.1:8000/x.whl",
            "pkg @ http://127.0.0.1:8000/x.whl",
            "pkg@file:///tmp/x",
            "git+https://example.org/x.git",
            "-r",
            "--index-url",
            "-e.",
            "pkg.whl",
            "pkg-1.0.tar.gz",
            "pkg ==1.0 --hash=sha256:00",
            "pkg; python_version >= '3' @ http://x",
            "pkg; url == 'http://x/'",
            "pkg[a/b]",
            "pkg >= 1.0 /tmp",
            "pkg\n-r x",
        ];
        for spec in bad {
            let err = check_requirement(spec).expect_err(spec);
            assert_eq!(err.kind(), codebox_core::ErrorKind::InvalidInput, "{spec}");
            assert!(err.to_string().contains("is not a package requirement"), "{spec}: {err}");
        }
    }

    #[test]
    fn pip_gets_only_the_operators_pip_settings_and_their_local_paths() {
        let dir = tempfile::tempdir().unwrap();
        let host = [
            ("PIP_FIND_LINKS", format!("{} https://example.org/wheels /does/not/exist", dir.path().display())),
            ("HTTPS_PROXY", "http://proxy:3128".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "hunter2".to_owned()),
            ("PATH", "/usr/bin".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v));
        let (env, paths) = pip_settings(host.into_iter());
        let keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["HTTPS_PROXY", "PIP_FIND_LINKS"]);
        assert_eq!(paths, [dir.path().to_owned()]);
    }
}

//! A process in a box: a program the box runs as a child (`run_command`, a `bash` cell,
//! pip for an unconfined box), in the box's working directory, with its environment, limits
//! and confinement, its output collected under a cap.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use codebox_core::{CodeBoxError, CommandOutput, ErrorInfo, EventStream, ExecEvent, Outcome, Result};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;

use crate::output::OutputCap;
use codebox_sandbox::Confinement;

/// Where a process of the box runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    /// In the box's sandbox: its confinement, reading the box's Python environment.
    InBox,
    /// On the host (`install` of an unconfined box, which writes to that environment).
    OnHost,
}

/// A program to run in a box, and everything that decides how it runs.
#[derive(Clone)]
pub(crate) struct BoxProcess {
    pub(crate) program: String,
    pub(crate) args: Vec<String>,
    /// The working directory (inside the box's).
    pub(crate) cwd: PathBuf,
    /// The box's environment.
    pub(crate) env: Vec<(String, String)>,
    /// This call's variables, over the box's.
    pub(crate) extra_env: BTreeMap<String, String>,
    pub(crate) timeout: Option<Duration>,
    /// Bytes of output kept.
    pub(crate) output_limit: usize,
    pub(crate) placement: Placement,
    pub(crate) confinement: Arc<Confinement>,
    /// The box's Python.
    pub(crate) python: PathBuf,
    /// Where the process may make directories of its own (pip's proxy socket).
    pub(crate) scratch_dir: PathBuf,
}

/// Runs in the box in front of a command: looks the program up and execs it there, as the
/// box's uid and in the box's view of the filesystem, so that the host never looks at the
/// path a tenant names. When that fails, for whatever reason (missing, not executable, a
/// directory, outside the box's view), it says so on stderr with [`EXEC_FAILED`] alone.
const EXEC_WRAPPER: &str = "import os, sys\n\
try:\n    os.execvp(sys.argv[1], sys.argv[1:])\n\
except BaseException:\n    os.write(2, b'\\0codebox: the program could not be run\\0')\n    os._exit(127)\n";
/// What [`EXEC_WRAPPER`] writes, and its exit code, when the program cannot be run.
const EXEC_FAILED: (&str, i32) = ("\0codebox: the program could not be run\0", 127);

/// The one answer for a program that cannot be run, whatever the reason: a different answer
/// for a missing path and one the box may not see would tell a tenant what exists on the host.
fn cannot_run(program: &str) -> CodeBoxError {
    CodeBoxError::not_found(format!("program {program:?}: cannot be run in this box"))
}

/// How a program is started in the box.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Exec it directly (a program the box itself picks, like `bash`).
    Direct,
    /// Through [`EXEC_WRAPPER`] under the box's Python (a program a tenant names).
    Resolved,
}

/// Refuse a NUL byte in a program or an argument before anything runs: no C string can
/// carry one, so it would fail later with a less clear error (the environment is checked
/// where the box takes it).
fn check_command_input(program: &str, args: &[String]) -> Result<()> {
    if program.contains('\0') {
        return Err(CodeBoxError::invalid("the program name contains a NUL byte"));
    }
    if let Some(i) = args.iter().position(|a| a.contains('\0')) {
        return Err(CodeBoxError::invalid(format!("argument #{i} contains a NUL byte")));
    }
    Ok(())
}

impl BoxProcess {
    fn spawn(&self, start: Start, stdin: bool) -> Result<Child> {
        let (program, args) = (&self.program, &self.args);
        check_command_input(program, args)?;
        let (mut cmd, guard) = match self.placement {
            Placement::InBox => {
                let mut argv: Vec<String> = Vec::with_capacity(args.len() + 5);
                if start == Start::Resolved {
                    // -I -S: nothing of the box (PYTHONPATH, its packages, its current
                    // directory) runs before the program.
                    let python = self.python.to_string_lossy().into_owned();
                    argv.extend([python, "-I".into(), "-S".into(), "-c".into(), EXEC_WRAPPER.into()]);
                }
                argv.push(program.to_owned());
                argv.extend(args.iter().cloned());
                let mut all: Vec<(String, String)> = self.env.clone();
                all.extend(self.extra_env.iter().map(|(k, v)| (k.clone(), v.clone())));
                let prepared = self.confinement.prepare(&argv, &all, Some(&self.python), Some(&self.cwd), None)?;
                (Command::from(prepared.command), Some(prepared.guard))
            }
            Placement::OnHost => {
                let mut cmd = Command::new(program);
                cmd.args(args).current_dir(&self.cwd).envs(self.env.iter().map(|(k, v)| (k, v))).envs(&self.extra_env);
                (cmd, None)
            }
        };
        let stdin = if stdin { Stdio::piped() } else { Stdio::null() };
        cmd.stdin(stdin).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0).kill_on_drop(true);
        let spawned = cmd.spawn();
        drop(guard);
        spawned.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => cannot_run(program),
            _ => CodeBoxError::io(format!("running {program:?}"), e),
        })
    }

    /// Run the program to completion, with the timeout, collecting its output (capped). In
    /// the box, the program is looked up there.
    pub(crate) async fn run(&self) -> Result<CommandOutput> {
        let start = if self.placement == Placement::InBox { Start::Resolved } else { Start::Direct };
        let child = self.spawn(start, false)?;
        let out = collect(child, &self.program, self.timeout, self.output_limit).await?;
        if start == Start::Resolved && out.exit_code == Some(EXEC_FAILED.1) && out.stderr == EXEC_FAILED.0 {
            return Err(cannot_run(&self.program));
        }
        Ok(out)
    }

    /// Start the program in the background, looked up in the box like [`run`](Self::run)
    /// does, its own process group's leader; its standard input a pipe when `stdin`. What
    /// it writes to stderr when it cannot be run is [`is_exec_failure`].
    pub(crate) fn spawn_background(&self, stdin: bool) -> Result<Child> {
        let start = if self.placement == Placement::InBox { Start::Resolved } else { Start::Direct };
        self.spawn(start, stdin)
    }

    /// Run `code` with `bash -c` (the program and arguments are replaced), streaming stdout
    /// and stderr as they come; `guard` is held until bash exits.
    pub(crate) fn stream_bash(
        mut self,
        code: &str,
        guard: OwnedMutexGuard<()>,
        tracking: Option<crate::history::Tracking>,
    ) -> Result<EventStream> {
        let started = Instant::now();
        self.program = "bash".to_owned();
        self.args = vec!["-c".to_owned(), code.to_owned()];
        let mut child = self.spawn(Start::Direct, false)?;
        let (timeout, limit) = (self.timeout, self.output_limit);
        let (mut tx, rx) = crate::history::RecordingSender::channel(32, tracking, code);
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
}

fn kill_group(child: &Child) {
    signal_group(child, rustix::process::Signal::KILL);
}

/// Send `signal` to the process group `child` leads. Only while `child` is not yet reaped
/// (`id()` is `None` after): its pid, and so its group's id, cannot have been reused.
pub(crate) fn signal_group(child: &Child, signal: rustix::process::Signal) {
    if let Some(pid) = child.id().and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
        let _ = rustix::process::kill_process_group(pid, signal);
    }
}

/// Whether `stderr` is what the box's exec wrapper writes when the program cannot be run.
pub(crate) fn is_exec_failure(stderr: &[u8]) -> bool {
    stderr == EXEC_FAILED.0.as_bytes()
}

/// What a background process's stderr says instead of [`EXEC_FAILED`]'s marker: the same
/// words `run_command`'s error has, whatever the reason.
pub(crate) fn exec_failure_text(program: &str) -> String {
    format!("codebox: {}\n", cannot_run(program))
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

pub(crate) async fn collect(
    mut child: Child,
    program: &str,
    timeout: Option<Duration>,
    limit: usize,
) -> Result<CommandOutput> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nul_byte_in_a_program_or_argument_is_refused_before_it_runs() {
        let nul_arg = check_command_input("sh", &["ok".into(), "a\0b".into()]).unwrap_err();
        assert_eq!(nul_arg.kind(), codebox_core::ErrorKind::InvalidInput, "{nul_arg}");
        assert!(nul_arg.to_string().contains("argument #1"), "{nul_arg}");
        assert!(check_command_input("s\0h", &[]).is_err());
        assert!(check_command_input("sh", &["-c".into(), "true".into()]).is_ok());
    }
}

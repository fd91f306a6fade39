//! `codebox processes ls|start|logs|input|kill SESSION …`: a session's background processes
//! (a server, a watcher, a long build) that run on between commands.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use codebox::blocking::ProcessEvents;
use codebox::{CommandSpec, ProcessEvent, ProcessId, ProcessSignal, ProcessSpec};

use super::{Conn, EXIT_FAILED, EXIT_OK, Failure, Outcome, key_value, seconds};

/// Arguments of `codebox processes`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = super::EXIT_STATUS_HELP)]
pub(crate) struct ProcessesArgs {
    #[command(flatten)]
    pub(crate) conn: Conn,
    #[command(subcommand)]
    command: ProcessesCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ProcessesCommand {
    /// The session's running background processes.
    #[command(after_long_help = super::EXIT_STATUS_HELP)]
    Ls {
        /// The session's id.
        session: String,
    },
    /// Start a program (no shell) that runs on after this command; prints its pid.
    #[command(after_long_help = super::EXIT_STATUS_HELP)]
    Start {
        /// The session's id.
        session: String,
        /// The working directory, relative to the session's.
        #[arg(long, value_name = "DIR")]
        cwd: Option<String>,
        /// Kill the program after this many seconds.
        #[arg(long, value_name = "SECS", value_parser = seconds)]
        timeout: Option<Duration>,
        /// An environment variable of the program (repeatable).
        #[arg(long, value_name = "KEY=VALUE", value_parser = key_value)]
        env: Vec<(String, String)>,
        /// Keep its standard input open for `codebox processes input` (else it reads end-of-file).
        #[arg(long)]
        stdin: bool,
        /// A name for it, shown by `codebox processes ls`.
        #[arg(long)]
        tag: Option<String>,
        /// Stay and stream its output until it ends, as `logs` does.
        #[arg(short, long)]
        follow: bool,
        /// The program and its arguments (after `--`).
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Follow a process: its output from now on, until it ends (exit 1 unless it exits 0).
    #[command(after_long_help = super::EXIT_STATUS_HELP)]
    Logs {
        /// The session's id.
        session: String,
        /// The process's pid (from `start` or `ls`).
        pid: ProcessId,
    },
    /// Write TEXT (or, without it, stdin) to a process started with `--stdin`.
    #[command(after_long_help = super::EXIT_STATUS_HELP)]
    Input {
        /// The session's id.
        session: String,
        /// The process's pid.
        pid: ProcessId,
        /// What to write, as it is (add the newline a line-reading program waits for).
        text: Option<String>,
        /// Then close its standard input: it reads end-of-file.
        #[arg(long)]
        close: bool,
    },
    /// Send a signal to a process and every process it started.
    #[command(after_long_help = super::EXIT_STATUS_HELP)]
    Kill {
        /// The session's id.
        session: String,
        /// The process's pid.
        pid: ProcessId,
        /// TERM (ask it to end), KILL (end it now) or INT (Ctrl-C).
        #[arg(long, short, default_value = "TERM", value_parser = signal)]
        signal: ProcessSignal,
    },
}

/// Parse a signal's name, with or without `SIG`, in any case.
fn signal(s: &str) -> Result<ProcessSignal, String> {
    let upper = s.to_ascii_uppercase();
    match upper.strip_prefix("SIG").unwrap_or(&upper) {
        "TERM" => Ok(ProcessSignal::Sigterm),
        "KILL" => Ok(ProcessSignal::Sigkill),
        "INT" => Ok(ProcessSignal::Sigint),
        _ => Err(format!("expected TERM, KILL or INT, got {s:?}")),
    }
}

pub(crate) fn main(args: ProcessesArgs) -> Outcome {
    let conn = &args.conn;
    match args.command {
        ProcessesCommand::Ls { session } => {
            let (_, b) = conn.session(&session)?;
            let list = b.processes()?;
            conn.show(&list, |out| {
                for p in &list {
                    let command = &p.spec.command;
                    let line = std::iter::once(command.program.as_str())
                        .chain(command.args.iter().map(String::as_str))
                        .collect::<Vec<_>>()
                        .join(" ");
                    writeln!(out, "{}\t{}\t{line}", p.pid, p.spec.tag.as_deref().unwrap_or("-"))?;
                }
                Ok(())
            })
        }
        ProcessesCommand::Start { session, cwd, timeout, env, stdin, tag, follow, command } => {
            let Some((program, rest)) = command.split_first() else {
                return Err(Failure::usage("no command given: codebox processes start SESSION -- CMD ARGS…"));
            };
            let mut spec = CommandSpec::new(program.clone()).args(rest.iter().cloned());
            spec.cwd = cwd;
            spec.timeout = timeout;
            for (k, v) in env {
                spec = spec.with_env(k, v);
            }
            let mut spec = ProcessSpec::new(spec);
            if stdin {
                spec = spec.with_stdin();
            }
            if let Some(tag) = tag {
                spec = spec.with_tag(tag);
            }
            let (_, b) = conn.session(&session)?;
            let mut events = b.start_process(spec)?;
            let pid = match events.next() {
                Some(Ok(ProcessEvent::Start { pid })) => pid,
                Some(Err(e)) => return Err(e.into()),
                _ => return Err(Failure::failed("the server did not say the process started")),
            };
            if follow {
                if conn.json {
                    print_json(&ProcessEvent::Start { pid })?;
                } else {
                    eprintln!("codebox: started process {pid}");
                }
                return stream(conn, events);
            }
            // Dropping the stream leaves the process running: it is the user's now.
            drop(events);
            conn.show(&serde_json::json!({ "pid": pid }), |out| writeln!(out, "{pid}"))
        }
        ProcessesCommand::Logs { session, pid } => {
            let (_, b) = conn.session(&session)?;
            stream(conn, b.connect_process(pid)?)
        }
        ProcessesCommand::Input { session, pid, text, close } => {
            let data = match text {
                Some(text) => text.into_bytes(),
                None if close && std::io::stdin().is_terminal() => Vec::new(),
                None => super::piped_stdin("no TEXT and stdin is a terminal: give TEXT or pipe it in")?,
            };
            let (_, b) = conn.session(&session)?;
            let written = data.len();
            if written > 0 {
                b.process_input(pid, data)?;
            }
            if close {
                b.close_process_input(pid)?;
            }
            let doc = serde_json::json!({ "pid": pid, "written": written, "closed": close });
            conn.show(&doc, |out| {
                writeln!(out, "wrote {written} bytes to {pid}{}", if close { ", then closed its input" } else { "" })
            })
        }
        ProcessesCommand::Kill { session, pid, signal } => {
            let (_, b) = conn.session(&session)?;
            b.signal_process(pid, signal)?;
            let doc = serde_json::json!({ "pid": pid, "signal": signal });
            conn.show(&doc, |out| writeln!(out, "sent {} to {pid}", doc["signal"].as_str().unwrap_or("the signal")))
        }
    }
}

/// Print a process's output as it comes (its stdout to ours, its stderr to ours) or, under
/// `--json`, one event a line; its end decides the exit status.
fn stream(conn: &Conn, events: ProcessEvents) -> Outcome {
    let write_failed = |e: std::io::Error| Failure::failed(format!("writing the output: {e}"));
    for event in events {
        let event = event?;
        if conn.json {
            print_json(&event)?;
        }
        match event {
            ProcessEvent::Stdout { data } if !conn.json => {
                let mut out = std::io::stdout().lock();
                out.write_all(&data).and_then(|()| out.flush()).map_err(write_failed)?;
            }
            ProcessEvent::Stderr { data } if !conn.json => {
                let mut err = std::io::stderr().lock();
                err.write_all(&data).and_then(|()| err.flush()).map_err(write_failed)?;
            }
            ProcessEvent::End(exit) => {
                if !conn.json && !exit.success() {
                    let how = match (exit.exit_code, exit.signal) {
                        _ if exit.timed_out => "was killed at its timeout".to_owned(),
                        (Some(code), _) => format!("exited with status {code}"),
                        (None, Some(signal)) => format!("was ended by signal {signal}"),
                        (None, None) => "ended".to_owned(),
                    };
                    eprintln!("codebox: the process {how}");
                }
                return Ok(if exit.success() { EXIT_OK } else { EXIT_FAILED });
            }
            _ => {}
        }
    }
    Err(Failure::failed("the server ended the process's stream without saying how it ended"))
}

fn print_json(event: &ProcessEvent) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, event)
        .map_err(std::io::Error::from)
        .and_then(|()| writeln!(out))
        .and_then(|()| out.flush())
        .map_err(|e| Failure::failed(format!("writing the output: {e}")))
}

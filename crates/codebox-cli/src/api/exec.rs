//! `codebox exec SESSION CODE` (code in the session's kernel, its output streamed) and
//! `codebox sh SESSION -- CMD ARGS…` (a program, no shell).

use std::io::Write;
use std::time::Duration;

use codebox::{CommandSpec, ExecEvent, MimeBundle, Outcome as RunOutcome, RunOptions};

use super::{Conn, EXIT_FAILED, EXIT_OK, Failure, Outcome, seconds};

/// Arguments of `codebox exec`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = super::EXIT_STATUS_HELP)]
pub(crate) struct ExecArgs {
    #[command(flatten)]
    pub(crate) conn: Conn,
    /// The session's id.
    session: String,
    /// The code to run; `-` reads it from stdin.
    code: String,
    /// Interrupt the code after this many seconds.
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    timeout: Option<Duration>,
    /// The language to run it in (one the session's kernel runs).
    #[arg(long)]
    language: Option<String>,
    /// The code context to run it in (see `codebox contexts`).
    #[arg(long)]
    context: Option<String>,
}

pub(crate) fn exec(args: ExecArgs) -> Outcome {
    let code = if args.code == "-" {
        let code = super::piped_stdin("CODE is `-` but stdin is a terminal: pipe the code in")?;
        String::from_utf8(code).map_err(|_| Failure::usage("the code on stdin is not UTF-8"))?
    } else {
        args.code.clone()
    };
    let mut options = RunOptions::new();
    if let Some(t) = args.timeout {
        options = options.with_timeout(t);
    }
    if let Some(l) = &args.language {
        options = options.with_language(l.clone());
    }
    if let Some(c) = &args.context {
        options = options.with_context(c.clone());
    }
    let (_, b) = args.conn.session(&args.session)?;
    let events = b.run_stream(&code, options)?;
    let mut out = std::io::stdout().lock();
    let write_failed = |e: std::io::Error| Failure::failed(format!("writing the output: {e}"));
    for event in events {
        let event = event?;
        if args.conn.json {
            serde_json::to_writer(&mut out, &event).map_err(|e| write_failed(e.into()))?;
            writeln!(out).and_then(|()| out.flush()).map_err(write_failed)?;
        } else {
            show(&mut out, &event).map_err(write_failed)?;
        }
        if let ExecEvent::End { outcome, .. } = event {
            if outcome == RunOutcome::TimedOut && !args.conn.json {
                eprintln!("codebox: the code ran past its timeout and was interrupted");
            }
            return Ok(if outcome == RunOutcome::Ok { EXIT_OK } else { EXIT_FAILED });
        }
    }
    Err(Failure::failed("the server ended the execution without saying how it finished"))
}

/// One event as text: output to stdout and stderr as it comes, results and displays by
/// their text (an image by its type and size), a raised exception's traceback on stderr.
fn show(out: &mut impl Write, event: &ExecEvent) -> std::io::Result<()> {
    match event {
        ExecEvent::Stdout { text } => {
            out.write_all(text.as_bytes())?;
            out.flush()?;
        }
        ExecEvent::Stderr { text } => eprint!("{text}"),
        ExecEvent::Display { data, .. } | ExecEvent::UpdateDisplay { data, .. } | ExecEvent::Result { data, .. } => {
            show_bundle(out, data)?;
        }
        ExecEvent::Error(err) => {
            if err.traceback.is_empty() {
                eprintln!("{err}");
            } else {
                eprintln!("{}", err.traceback.join("\n"));
            }
        }
        ExecEvent::Truncated { dropped_bytes } => eprintln!("[codebox: {dropped_bytes} bytes of output were cut]"),
        _ => {}
    }
    Ok(())
}

fn show_bundle(out: &mut impl Write, data: &MimeBundle) -> std::io::Result<()> {
    for mime in [MimeBundle::PNG, MimeBundle::JPEG] {
        if let Some(bytes) = data.binary(mime) {
            // Binary on a terminal is noise: `--json` carries the image itself.
            return writeln!(out, "[{mime}: {} bytes; --json has it]", bytes.len());
        }
    }
    if let Some(text) = data.plain() {
        writeln!(out, "{text}")?;
    }
    out.flush()
}

/// Arguments of `codebox sh`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = super::EXIT_STATUS_HELP)]
pub(crate) struct ShArgs {
    #[command(flatten)]
    pub(crate) conn: Conn,
    /// The session's id.
    session: String,
    /// The working directory, relative to the session's.
    #[arg(long, value_name = "DIR")]
    cwd: Option<String>,
    /// Kill the program after this many seconds.
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    timeout: Option<Duration>,
    /// The program and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

pub(crate) fn sh(args: ShArgs) -> Outcome {
    let Some((program, rest)) = args.command.split_first() else {
        return Err(Failure::usage("no command given: codebox sh SESSION -- CMD ARGS…"));
    };
    let mut spec = CommandSpec::new(program.clone());
    for a in rest {
        spec = spec.arg(a.clone());
    }
    spec.cwd = args.cwd.clone();
    spec.timeout = args.timeout;
    let (_, b) = args.conn.session(&args.session)?;
    let output = b.run_command(spec)?;
    args.conn.show(&output, |out| {
        out.write_all(output.stdout.as_bytes())?;
        eprint!("{}", output.stderr);
        if output.timed_out {
            eprintln!("codebox: the command ran past its timeout and was killed");
        } else if !output.success() {
            let code = output.exit_code.map_or_else(|| "a signal".to_owned(), |c| format!("status {c}"));
            eprintln!("codebox: {program} exited with {code}");
        }
        Ok(())
    })?;
    Ok(if output.success() { EXIT_OK } else { EXIT_FAILED })
}

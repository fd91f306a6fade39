//! `codebox run`: run code from a file, `-c`, or stdin in a box chosen from the environment,
//! streaming its output as it happens. Building the managed Python environment on a first
//! run shows its progress on stderr (see [`crate::progress`]); with CODEBOX_VERBOSE, so does
//! the log of what the command and the box do.

// Printing the code's output to the terminal is this command's whole job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use codebox::{CodeBox, CodeBoxSettings, ExecEvent, LocalBox, MimeBundle, Outcome, RunOptions};
use futures::StreamExt;

use crate::progress::ProgressView;

/// Exit status when the code raised or timed out.
const EXIT_CODE_FAILED: u8 = 1;
/// Exit status for usage errors and box failures.
const EXIT_USAGE_OR_BOX: u8 = 2;

/// Arguments of `codebox run`.
#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// A file of code to run (`-` or nothing for stdin).
    file: Option<PathBuf>,
    /// Code to run, instead of a file.
    #[arg(short = 'c', long = "code", conflicts_with = "file")]
    code: Option<String>,
    /// Print one JSON event per line instead of plain output.
    #[arg(long)]
    json: bool,
    /// Interrupt the code after this many seconds.
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    /// The language or kernel to run in (e.g. `python`, `bash`).
    #[arg(long)]
    language: Option<String>,
    /// Where to write images the code displays.
    #[arg(long, value_name = "DIR", default_value = ".")]
    image_dir: PathBuf,
}

pub(crate) fn main(args: RunArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("codebox: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_USAGE_OR_BOX);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("codebox: {e:#}");
            ExitCode::from(EXIT_USAGE_OR_BOX)
        }
    }
}

fn read_code(args: &RunArgs) -> anyhow::Result<String> {
    match (&args.code, &args.file) {
        (Some(code), _) => Ok(code.clone()),
        (None, Some(path)) if path.as_os_str() != "-" => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
        }
        _ => {
            let mut stdin = std::io::stdin();
            if stdin.is_terminal() {
                bail!("no code given: pass a FILE, -c CODE, or pipe code on stdin");
            }
            let mut code = String::new();
            stdin.read_to_string(&mut code).context("reading code from stdin")?;
            Ok(code)
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let code = read_code(&args)?;
    let mut options = RunOptions::new();
    if let Some(secs) = args.timeout {
        if !(secs.is_finite() && secs > 0.0) {
            bail!("--timeout must be a positive number of seconds, got {secs}");
        }
        options = options.with_timeout(Duration::from_secs_f64(secs));
    }
    if let Some(language) = &args.language {
        options = options.with_language(language.clone());
    }
    let settings = codebox::settings_from_env_and_file(".env").context("reading the CODEBOX_* settings")?;
    if settings.verbose {
        log_to_stderr();
    }
    let b = box_from_settings(&settings).context("choosing a box from the environment")?;
    let attached = attaches_to_a_session(&settings);
    tracing::debug!(box_id = b.id(), local = settings.wants_local(), attached, "box chosen");
    b.start().await.context("starting the box")?;
    tracing::debug!(box_id = b.id(), "box started; running the code");
    let result = stream_output(&*b, &code, options, &args).await;
    // Stopping a remote box deletes its session: only one this command created is its to end.
    // A session named by CODEBOX_SESSION_ID belongs to whoever made it and stays.
    if attached {
        tracing::debug!(box_id = b.id(), "leaving the attached session running");
    } else if let Err(e) = b.stop().await {
        eprintln!("codebox: stopping the box: {e}");
    } else {
        tracing::debug!(box_id = b.id(), "box stopped");
    }
    result
}

/// CODEBOX_VERBOSE: the log of this command and of the codebox crates, at `debug`, on
/// stderr (stdout stays the code's output). RUST_LOG, when set, picks the levels instead.
pub(crate) fn log_to_stderr() {
    const CODEBOX_DEBUG: &str =
        "warn,codebox=debug,codebox_core=debug,codebox_http=debug,codebox_local=debug,codebox_remote=debug";
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(CODEBOX_DEBUG));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Whether the settings name an existing remote session (CODEBOX_SESSION_ID) for the box to
/// attach to, rather than have it create one.
fn attaches_to_a_session(settings: &CodeBoxSettings) -> bool {
    !settings.wants_local() && settings.session_id.is_some()
}

/// The box `codebox::from_settings` chooses; a local one shows on stderr how the building of
/// its Python environment goes, when there is one to build.
fn box_from_settings(settings: &CodeBoxSettings) -> codebox::Result<Arc<dyn CodeBox>> {
    if !settings.wants_local() {
        return codebox::from_settings(settings);
    }
    let view = ProgressView::for_stderr();
    let b = LocalBox::builder().with_settings(settings).with_progress(move |event| view.show(event)).build()?;
    Ok(Arc::new(b))
}

async fn stream_output(b: &dyn CodeBox, code: &str, options: RunOptions, args: &RunArgs) -> anyhow::Result<ExitCode> {
    let mut events = b.run_stream(code, options).await.context("running the code")?;
    let mut out = std::io::stdout().lock();
    let mut images = 0usize;
    while let Some(event) = events.next().await {
        let event = event.context("the box failed while running the code")?;
        if args.json {
            serde_json::to_writer(&mut out, &event)?;
            writeln!(out)?;
            out.flush()?;
            if let ExecEvent::End { outcome, .. } = event {
                return Ok(exit_for(outcome));
            }
            continue;
        }
        match event {
            ExecEvent::Stdout { text } => {
                out.write_all(text.as_bytes())?;
                out.flush()?;
            }
            ExecEvent::Stderr { text } => {
                eprint!("{text}");
            }
            ExecEvent::Display { data, .. }
            | ExecEvent::UpdateDisplay { data, .. }
            | ExecEvent::Result { data, .. } => {
                show_bundle(&mut out, &data, &args.image_dir, &mut images)?;
            }
            ExecEvent::Error(err) => {
                eprintln!("{}", err.traceback.join("\n"));
                if err.traceback.is_empty() {
                    eprintln!("{err}");
                }
            }
            ExecEvent::Truncated { dropped_bytes } => {
                eprintln!("[codebox: {dropped_bytes} bytes of output were cut]");
            }
            ExecEvent::End { outcome, .. } => {
                if outcome == Outcome::TimedOut {
                    eprintln!("codebox: the code ran past its timeout and was interrupted");
                }
                return Ok(exit_for(outcome));
            }
            _ => {}
        }
    }
    bail!("the box ended the execution without saying how it finished")
}

/// Print a bundle's text, or save its image and print the file's path.
fn show_bundle(
    out: &mut impl Write,
    data: &MimeBundle,
    dir: &std::path::Path,
    images: &mut usize,
) -> anyhow::Result<()> {
    for (mime, ext) in [(MimeBundle::PNG, "png"), (MimeBundle::JPEG, "jpg")] {
        if let Some(bytes) = data.binary(mime) {
            *images += 1;
            let path = dir.join(format!("codebox-image-{}.{ext}", *images));
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
            writeln!(out, "[image: {}]", path.display())?;
            return Ok(());
        }
    }
    if let Some(svg) = data.text_of(MimeBundle::SVG) {
        *images += 1;
        let path = dir.join(format!("codebox-image-{}.svg", *images));
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
        writeln!(out, "[image: {}]", path.display())?;
    } else if let Some(text) = data.plain() {
        writeln!(out, "{text}")?;
    }
    Ok(())
}

fn exit_for(outcome: Outcome) -> ExitCode {
    match outcome {
        Outcome::Ok => ExitCode::SUCCESS,
        _ => ExitCode::from(EXIT_CODE_FAILED),
    }
}

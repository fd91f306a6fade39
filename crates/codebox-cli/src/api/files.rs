//! `codebox files ls|put|get|rm|mkdir SESSION …`: a session's files. Uploads and downloads
//! stream in chunks, so memory stays flat whatever the size; a progress bar shows on stderr
//! when stderr is a terminal (and never under `--json`).

use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use codebox::FileInfo;
use indicatif::{ProgressBar, ProgressStyle};

use super::{Conn, EXIT_OK, Failure, Outcome};

/// Arguments of `codebox files`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = super::EXIT_STATUS_HELP)]
pub(crate) struct FilesArgs {
    #[command(flatten)]
    pub(crate) conn: Conn,
    #[command(subcommand)]
    command: FilesCommand,
}

#[derive(Debug, clap::Subcommand)]
enum FilesCommand {
    /// List a directory of the session (its working directory by default).
    #[command(after_long_help = super::EXIT_STATUS_HELP)]
    Ls {
        /// The session's id.
        session: String,
        /// The directory, relative to the session's working directory.
        #[arg(default_value = ".")]
        dir: String,
        /// Everything below it, not only its entries.
        #[arg(short, long)]
        recursive: bool,
    },
    /// Upload a local file (`-`: stdin) into the session.
    #[command(after_long_help = super::EXIT_STATUS_HELP)]
    Put {
        /// The session's id.
        session: String,
        /// The local file.
        local: PathBuf,
        /// Where in the session (default: the local file's name, in the working directory).
        remote: Option<String>,
    },
    /// Download a file of the session (to stdout with `-`).
    #[command(after_long_help = super::EXIT_STATUS_HELP)]
    Get {
        /// The session's id.
        session: String,
        /// The file in the session.
        remote: String,
        /// Where to write it (default: its name, in the current directory; `-`: stdout).
        local: Option<PathBuf>,
    },
    /// Delete a file or an empty directory of the session.
    #[command(after_long_help = super::EXIT_STATUS_HELP)]
    Rm {
        /// The session's id.
        session: String,
        /// The path in the session.
        path: String,
    },
    /// Make a directory (and its missing parents) in the session.
    #[command(after_long_help = super::EXIT_STATUS_HELP)]
    Mkdir {
        /// The session's id.
        session: String,
        /// The path in the session.
        path: String,
    },
}

pub(crate) fn main(args: FilesArgs) -> Outcome {
    let conn = &args.conn;
    match args.command {
        FilesCommand::Ls { session, dir, recursive } => {
            let (_, b) = conn.session(&session)?;
            let list = b.list_files(&dir, recursive)?;
            conn.show(&list, |out| {
                for f in &list {
                    writeln!(out, "{}\t{}\t{}", kind(f), f.size, f.path)?;
                }
                Ok(())
            })
        }
        FilesCommand::Put { session, local, remote } => {
            let remote = match remote {
                Some(r) => r,
                None => local
                    .file_name()
                    .filter(|_| local.as_os_str() != "-")
                    .map(|n| n.to_string_lossy().into_owned())
                    .ok_or_else(|| {
                        Failure::usage("name the file in the session: codebox files put SESSION LOCAL REMOTE")
                    })?,
            };
            let (_, b) = conn.session(&session)?;
            let info = if local.as_os_str() == "-" {
                b.upload(&remote, std::io::stdin())?
            } else {
                let file =
                    File::open(&local).map_err(|e| Failure::failed(format!("opening {}: {e}", local.display())))?;
                let size = file.metadata().map(|m| m.len()).ok();
                let bar = progress(conn, size, &format!("put {remote}"));
                let info = match &bar {
                    Some(bar) => b.upload(&remote, bar.wrap_read(file)),
                    None => b.upload(&remote, file),
                };
                if let Some(bar) = bar {
                    bar.finish_and_clear();
                }
                info?
            };
            conn.show(&info, |out| writeln!(out, "{}\t{} bytes", info.path, info.size))
        }
        FilesCommand::Get { session, remote, local } => {
            let (_, b) = conn.session(&session)?;
            let to_stdout = local.as_deref().is_some_and(|l| l.as_os_str() == "-");
            let size = b.stat(&remote).ok().map(|f| f.size);
            let download = b.download(&remote)?;
            let bar = if to_stdout { None } else { progress(conn, size, &format!("get {remote}")) };
            let mut reader: Box<dyn Read> = match &bar {
                Some(bar) => Box::new(bar.wrap_read(download)),
                None => Box::new(download),
            };
            let (written, path) = if to_stdout {
                let mut out = std::io::stdout().lock();
                (copy(&mut reader, &mut out, Path::new("stdout"))?, None)
            } else {
                let path = local.unwrap_or_else(|| {
                    PathBuf::from(
                        Path::new(&remote).file_name().map_or_else(|| remote.clone().into(), ToOwned::to_owned),
                    )
                });
                let mut file =
                    File::create(&path).map_err(|e| Failure::failed(format!("creating {}: {e}", path.display())))?;
                (copy(&mut reader, &mut file, &path)?, Some(path))
            };
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            match path {
                None => Ok(EXIT_OK),
                Some(path) => {
                    let doc = serde_json::json!({ "path": remote, "local": path, "bytes": written });
                    conn.show(&doc, |out| writeln!(out, "{}\t{written} bytes", path.display()))
                }
            }
        }
        FilesCommand::Rm { session, path } => {
            let (_, b) = conn.session(&session)?;
            b.delete_file(&path)?;
            conn.show(&serde_json::json!({ "path": path, "deleted": true }), |out| writeln!(out, "deleted {path}"))
        }
        FilesCommand::Mkdir { session, path } => {
            let (_, b) = conn.session(&session)?;
            let info = b.make_dir(&path)?;
            conn.show(&info, |out| writeln!(out, "{}", info.path))
        }
    }
}

fn kind(f: &FileInfo) -> &'static str {
    match f.file_kind {
        Some(codebox::FileKind::Symlink) => "link",
        Some(codebox::FileKind::Other) => "other",
        _ if f.is_dir => "dir",
        _ => "file",
    }
}

/// Copy a download to `to`; an error of the download (the box's) and one of writing (ours)
/// are told apart.
fn copy(from: &mut dyn Read, to: &mut dyn Write, path: &Path) -> Result<u64, Failure> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Failure::failed(format!("downloading: {e}"))),
        };
        to.write_all(&buf[..n]).map_err(|e| Failure::failed(format!("writing {}: {e}", path.display())))?;
        total += n as u64;
    }
    to.flush().map_err(|e| Failure::failed(format!("writing {}: {e}", path.display())))?;
    Ok(total)
}

/// A progress bar on stderr, when stderr is a terminal and the output is not JSON.
fn progress(conn: &Conn, size: Option<u64>, label: &str) -> Option<ProgressBar> {
    if conn.json || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = match size {
        Some(size) => ProgressBar::new(size).with_style(
            ProgressStyle::with_template("{msg} [{bar:24}] {bytes}/{total_bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner(),
    };
    Some(bar.with_message(label.to_owned()))
}

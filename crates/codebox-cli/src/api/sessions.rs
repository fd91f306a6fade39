//! `codebox sessions create|list|info|kill|set-timeout|pause|resume`: the key's sessions on a
//! server.

use std::io::Write;
use std::time::Duration;

use codebox::{SessionFilter, SessionInfo, SessionRequest};

use super::{Conn, Outcome, key_value, seconds, unix_time};

/// Arguments of `codebox sessions`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = super::EXIT_STATUS_HELP)]
pub(crate) struct SessionsArgs {
    #[command(flatten)]
    pub(crate) conn: Conn,
    #[command(subcommand)]
    command: SessionsCommand,
}

#[derive(Debug, clap::Subcommand)]
enum SessionsCommand {
    /// Create a session, started and left running; prints its id.
    #[command(after_long_help = super::EXIT_STATUS_HELP)]
    Create {
        /// The template to make it from (see `codebox templates`).
        #[arg(long)]
        template: Option<String>,
        /// The language its code runs in, when no template is named.
        #[arg(long)]
        language: Option<String>,
        /// End the session this many seconds from now (at most the server's maximum).
        #[arg(long, value_name = "SECS", value_parser = seconds)]
        timeout: Option<Duration>,
        /// A metadata entry, to find the session by later; repeatable.
        #[arg(long, value_name = "KEY=VALUE", value_parser = key_value)]
        metadata: Vec<(String, String)>,
        /// An environment variable of the session's kernel; repeatable.
        #[arg(long, value_name = "KEY=VALUE", value_parser = key_value)]
        env: Vec<(String, String)>,
    },
    /// List the key's sessions, oldest first.
    #[command(after_long_help = super::EXIT_STATUS_HELP)]
    List {
        /// Only the sessions with this metadata entry; repeatable.
        #[arg(long, value_name = "KEY=VALUE", value_parser = key_value)]
        metadata: Vec<(String, String)>,
    },
    /// Describe a session: template, state, metadata, limits, lifetime, isolation.
    #[command(after_long_help = super::EXIT_STATUS_HELP)]
    Info {
        /// The session's id.
        session: String,
    },
    /// End a session and everything running in it.
    #[command(after_long_help = super::EXIT_STATUS_HELP)]
    Kill {
        /// The session's id.
        session: String,
    },
    /// Pause a session: its files, packages, history and variables go to the server's disk,
    /// its kernels stop; prints what could not be kept.
    #[command(after_long_help = super::EXIT_STATUS_HELP)]
    Pause {
        /// The session's id.
        session: String,
    },
    /// Resume a paused session (any request to it resumes it too); prints what did not come
    /// back.
    #[command(after_long_help = super::EXIT_STATUS_HELP)]
    Resume {
        /// The session's id.
        session: String,
    },
    /// Make a session end this many seconds from now (it may shorten the lifetime too).
    #[command(after_long_help = super::EXIT_STATUS_HELP)]
    SetTimeout {
        /// The session's id.
        session: String,
        /// Seconds from now.
        #[arg(value_parser = seconds)]
        seconds: Duration,
    },
}

pub(crate) fn main(args: SessionsArgs) -> Outcome {
    let conn = &args.conn;
    match args.command {
        SessionsCommand::Create { template, language, timeout, metadata, env } => {
            let mut request = SessionRequest::new();
            if let Some(t) = template {
                request = request.with_template(t);
            }
            if let Some(l) = language {
                request = request.with_language(l);
            }
            if let Some(t) = timeout {
                request = request.with_timeout(t);
            }
            for (k, v) in metadata {
                request = request.with_metadata(k, v);
            }
            for (k, v) in env {
                request = request.with_env(k, v);
            }
            let b = conn.client()?.create(request)?;
            let info = b.info()?;
            // The session outlives this command: it is the user's now. Forgetting the box
            // skips the delete a created box's drop would send.
            std::mem::forget(b);
            conn.show(&info, |out| writeln!(out, "{}", info.id))
        }
        SessionsCommand::List { metadata } => {
            let mut filter = SessionFilter::new();
            for (k, v) in metadata {
                filter = filter.with_metadata(k, v);
            }
            let list = conn.client()?.list(filter)?;
            conn.show(&list, |out| {
                for s in &list {
                    writeln!(
                        out,
                        "{}\t{:?}\t{}\t{}",
                        s.id,
                        s.state,
                        s.template.as_deref().unwrap_or("-"),
                        unix_time(s.created_at)
                    )?;
                }
                Ok(())
            })
        }
        SessionsCommand::Info { session } => {
            let (_, b) = conn.session(&session)?;
            let info = b.info()?;
            conn.show(&info, |out| describe(out, &info))
        }
        SessionsCommand::Kill { session } => {
            let (_, b) = conn.session(&session)?;
            b.stop()?;
            conn.show(&serde_json::json!({ "id": session, "killed": true }), |out| writeln!(out, "killed {session}"))
        }
        SessionsCommand::Pause { session } => {
            let (_, b) = conn.session(&session)?;
            let report = b.pause()?;
            conn.show(&report, |out| {
                writeln!(out, "paused {session}")?;
                for lost in &report.unrestored {
                    writeln!(out, "not kept: {} ({}) in {}: {}", lost.name, lost.type_name, lost.context, lost.reason)?;
                }
                Ok(())
            })
        }
        SessionsCommand::Resume { session } => {
            // An unknown session is a usage error, as for every command that names one.
            let (_, report) = conn.client()?.resume(&session).map_err(|e| {
                let failure = super::Failure::from(e);
                match failure.kind {
                    Some(codebox::ErrorKind::NotFound) => super::Failure { exit: super::EXIT_USAGE, ..failure },
                    _ => failure,
                }
            })?;
            conn.show(&report, |out| {
                writeln!(out, "resumed {session}")?;
                for lost in &report.unrestored {
                    writeln!(
                        out,
                        "not restored: {} ({}) in {}: {}",
                        lost.name, lost.type_name, lost.context, lost.reason
                    )?;
                }
                Ok(())
            })
        }
        SessionsCommand::SetTimeout { session, seconds } => {
            let (_, b) = conn.session(&session)?;
            let info = b.set_timeout(seconds)?;
            let ends = info.expires_at.map_or_else(|| "never".to_owned(), unix_time);
            conn.show(&info, |out| writeln!(out, "{} ends at {ends}", info.id))
        }
    }
}

fn describe(out: &mut dyn Write, s: &SessionInfo) -> std::io::Result<()> {
    writeln!(out, "id:          {}", s.id)?;
    writeln!(out, "state:       {:?}", s.state)?;
    writeln!(out, "template:    {}", s.template.as_deref().unwrap_or("-"))?;
    writeln!(out, "kernel:      {}", s.kernel.as_deref().unwrap_or("-"))?;
    writeln!(out, "language:    {}", s.language.as_deref().unwrap_or("-"))?;
    writeln!(out, "created:     {}", unix_time(s.created_at))?;
    writeln!(out, "last used:   {}", unix_time(s.last_used_at))?;
    writeln!(out, "expires:     {}", s.expires_at.map_or_else(|| "never".to_owned(), unix_time))?;
    writeln!(out, "idle limit:  {} s", s.idle_timeout)?;
    for (k, v) in &s.metadata {
        writeln!(out, "metadata:    {k}={v}")?;
    }
    if !s.env_keys.is_empty() {
        writeln!(out, "env:         {}", s.env_keys.join(", "))?;
    }
    Ok(())
}

//! `codebox install`, `templates`, `metrics`, `history` and `contexts`: what a session has
//! and does, and what the server offers.

use super::{Conn, Outcome, unix_time};

/// Arguments of `codebox install`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = super::EXIT_STATUS_HELP)]
pub(crate) struct InstallArgs {
    #[command(flatten)]
    pub(crate) conn: Conn,
    /// The session's id.
    session: String,
    /// The packages (pip requirement specifiers for Python).
    #[arg(required = true)]
    packages: Vec<String>,
}

pub(crate) fn install(args: InstallArgs) -> Outcome {
    let (_, b) = args.conn.session(&args.session)?;
    let output = b.install(&args.packages)?;
    let doc = serde_json::json!({ "installed": args.packages, "output": output });
    args.conn.show(&doc, |out| writeln!(out, "{}", output.trim_end()))
}

/// Arguments of `codebox templates`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = super::EXIT_STATUS_HELP)]
pub(crate) struct TemplatesArgs {
    #[command(flatten)]
    pub(crate) conn: Conn,
}

pub(crate) fn templates(args: TemplatesArgs) -> Outcome {
    let list = args.conn.client()?.templates()?;
    args.conn.show(&list, |out| {
        for t in &list {
            let ready = if t.ready { "ready" } else { "not ready" };
            writeln!(out, "{}\t{}\t{ready}\t{}", t.name, t.language, t.description)?;
        }
        Ok(())
    })
}

/// Arguments of `codebox metrics`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = super::EXIT_STATUS_HELP)]
pub(crate) struct MetricsArgs {
    #[command(flatten)]
    pub(crate) conn: Conn,
    /// The session's id.
    session: String,
}

pub(crate) fn metrics(args: MetricsArgs) -> Outcome {
    let (_, b) = args.conn.session(&args.session)?;
    let m = b.metrics()?;
    args.conn.show(&m, |out| {
        let n = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        writeln!(out, "cpu:        {}%", m.cpu_percent.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}")))?;
        writeln!(out, "memory:     {} of {} bytes", n(m.memory_used_bytes), n(m.memory_limit_bytes))?;
        writeln!(out, "disk:       {} of {} bytes", n(m.disk_used_bytes), n(m.disk_limit_bytes))?;
        writeln!(out, "disk io:    {} read, {} written", n(m.disk_read_bytes), n(m.disk_write_bytes))?;
        Ok(())
    })
}

/// Arguments of `codebox history`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = super::EXIT_STATUS_HELP)]
pub(crate) struct HistoryArgs {
    #[command(flatten)]
    pub(crate) conn: Conn,
    /// The session's id.
    session: String,
    /// How many of the newest executions.
    #[arg(long, default_value_t = 20)]
    limit: usize,
}

pub(crate) fn history(args: HistoryArgs) -> Outcome {
    let (_, b) = args.conn.session(&args.session)?;
    let records = b.history(args.limit)?;
    args.conn.show(&records, |out| {
        for r in &records {
            let started = r.started_at.duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
            let count = r.count.map_or_else(|| "-".to_owned(), |c| c.to_string());
            let head = r.code_head.lines().next().unwrap_or("");
            writeln!(out, "{count}\t{}\t{:?}\t{} ms\t{head}", unix_time(started), r.outcome, r.duration.as_millis())?;
        }
        Ok(())
    })
}

/// Arguments of `codebox contexts`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = super::EXIT_STATUS_HELP)]
pub(crate) struct ContextsArgs {
    #[command(flatten)]
    pub(crate) conn: Conn,
    /// The session's id.
    session: String,
}

pub(crate) fn contexts(args: ContextsArgs) -> Outcome {
    let (_, b) = args.conn.session(&args.session)?;
    let list = b.contexts()?;
    args.conn.show(&list, |out| {
        for c in &list {
            let default = if c.default { "\tdefault" } else { "" };
            writeln!(out, "{}\t{}\t{}{default}", c.id, c.language, c.cwd.as_deref().unwrap_or("."))?;
        }
        Ok(())
    })
}

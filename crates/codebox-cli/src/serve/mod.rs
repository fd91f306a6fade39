//! `codebox serve`: host a CodeBox server backed by local Jupyter kernels. Its options
//! (flags, environment, config file) are [`options`]; what they make is [`settings`](mod@settings).

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::bail;
use codebox_local::{IsolationLevel, LocalBox, LocalFactory, SandboxPolicy};
use codebox_server::Server;

mod options;
mod settings;

pub(crate) use options::ServeArgs;
use settings::{Settings, settings};

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

// The CLI reports fatal errors on stderr, also before logging is set up.
#[allow(clippy::print_stderr)]
pub(crate) fn main(args: ServeArgs) -> ExitCode {
    let keys_on_command_line = args.options.api_keys.clone();
    let settings = match settings(args, std::env::var("CODEBOX_SERVER_API_KEYS").ok()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("codebox serve: {e:#}");
            return ExitCode::from(2);
        }
    };
    init_logging(&settings.log_format);
    if !keys_on_command_line.is_empty() {
        warn_and_scrub_command_line_keys(&keys_on_command_line);
    }
    if let Err(e) = check_tenant_isolation(&settings) {
        tracing::error!("{e:#}");
        eprintln!("codebox serve: {e:#}");
        return ExitCode::from(2);
    }
    // Claims the session root: a server that cannot have it stops before it listens.
    let factory = match local_factory(&settings) {
        Ok(factory) => factory,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("codebox serve: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("codebox serve: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(settings, factory)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("codebox serve: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Keys given with `--api-key` are in this process's command line, which every local user
/// (and code in a box at a weak isolation level) can read in `/proc/<pid>/cmdline`: warn
/// loudly, once per key, and overwrite them there.
fn warn_and_scrub_command_line_keys(keys: &[String]) {
    for _ in keys {
        tracing::warn!(
            "an API key was given on the command line (--api-key), where other users of this machine can read it \
             in /proc/{}/cmdline; it is overwritten there now, but was visible until then and stays in shell \
             history and process accounting: give keys with --api-key-file or the CODEBOX_SERVER_API_KEYS \
             environment variable instead",
            std::process::id()
        );
    }
    match scrub_command_line(keys) {
        Ok(0) => tracing::warn!("the --api-key values were not found in /proc/self/cmdline to overwrite"),
        Ok(_) => {}
        Err(e) => tracing::warn!("could not overwrite the --api-key values in /proc/self/cmdline: {e}"),
    }
}

/// Overwrite every occurrence of `secrets` in the memory `/proc/self/cmdline` reads from;
/// returns how many were overwritten.
///
/// The kernel shows a process's command line from the argument area of its own memory
/// (`arg_start`..`arg_end`, fields 48 and 49 of `/proc/self/stat`), so writing that memory
/// changes what others read. `/proc/self/mem` is the way to write it: it is the process's
/// own memory, and needs no pointer into the area the runtime set up before `main`.
fn scrub_command_line(secrets: &[String]) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let after_name = stat.rfind(')').map(|i| &stat[i + 1..]).unwrap_or_default();
    let field = |n: usize| -> std::io::Result<u64> {
        after_name
            .split_whitespace()
            .nth(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("no field {n} in /proc/self/stat")))
    };
    let (start, end) = (field(48)?, field(49)?);
    let len = usize::try_from(end.saturating_sub(start)).map_err(std::io::Error::other)?;
    let mem = std::fs::File::options().read(true).write(true).open("/proc/self/mem")?;
    let mut args = vec![0u8; len];
    mem.read_exact_at(&mut args, start)?;
    let mut scrubbed = 0;
    for secret in secrets.iter().map(String::as_bytes).filter(|s| !s.is_empty()) {
        let mut at = 0;
        while let Some(found) = args[at..].windows(secret.len()).position(|w| w == secret) {
            let from = at + found;
            args[from..from + secret.len()].fill(b'*');
            at = from + secret.len();
            scrubbed += 1;
        }
    }
    if scrubbed > 0 {
        mem.write_all_at(&args, start)?;
    }
    Ok(scrubbed)
}

/// Refuse several API keys on an isolation level that cannot keep tenants apart, unless the
/// operator allowed it: at the `none` level a kernel sees the host's files and processes,
/// this server's included, so one tenant could take another's key or session.
fn check_tenant_isolation(settings: &Settings) -> anyhow::Result<()> {
    let sb = &settings.sandbox;
    // A level that cannot be had here fails every session start on its own, loudly.
    let Ok(level) = codebox_local::choose(sb.isolation, sb.require, codebox_local::probe()) else {
        return Ok(());
    };
    let keys = settings.server.api_keys.len();
    if level == IsolationLevel::None && keys > 1 {
        if !sb.allow_weak {
            bail!(
                "{keys} API keys on isolation level `none`, which cannot keep tenants apart (code in one session \
                 can reach the host, this server and the other sessions); give one key per server, make \
                 bubblewrap or Landlock work, or accept the risk with --allow-weak-isolation"
            );
        }
        tracing::warn!(
            keys,
            gaps = ?level.gaps(),
            "serving several API keys on isolation level `none` (--allow-weak-isolation): tenants are not kept apart"
        );
    }
    Ok(())
}

/// The factory of this server's sessions: a confined LocalBox each, in the claimed session
/// root (swept of what an earlier server left behind), under session uids and cgroups where
/// this process may give them, with a pool of warm kernels.
fn local_factory(settings: &Settings) -> anyhow::Result<LocalFactory> {
    let sb = &settings.sandbox;
    let policy = SandboxPolicy::default()
        .with_isolation(sb.isolation)
        .with_require_isolation(sb.require)
        .with_network(sb.network)
        .with_network_allowlist(sb.allowlist.clone())
        .with_limits(sb.limits.clone());
    let mut boxes = LocalBox::builder().with_sandbox(policy).with_fork_server(sb.fork_server);
    if let Some(python) = &settings.python {
        boxes = boxes.with_python(python);
    }
    if let Some(kernel) = &settings.kernel {
        boxes = boxes.with_kernel(kernel);
    }
    let mut factory = LocalFactory::builder(boxes)
        .with_session_root(&settings.session_root)
        .with_session_uids(sb.uids.clone())
        .with_cgroups(sb.cgroups)
        .with_pool_size(settings.pool_size)
        .with_templates(settings.templates.iter().cloned());
    for (template, size) in &settings.template_pools {
        factory = factory.with_pool(template, *size);
    }
    factory.build().map_err(|e| anyhow::anyhow!("{e}"))
}

async fn serve(mut settings: Settings, factory: LocalFactory) -> anyhow::Result<()> {
    if let Some(memory) = settings.memory {
        tracing::info!(
            max_sessions = settings.server.max_sessions,
            memory_bytes = memory.available(),
            cgroup_limit_bytes = memory.cgroup_limit,
            per_session_bytes = codebox_server::SESSION_MEMORY_ALLOWANCE,
            "session cap derived from the host's memory (set --max-sessions to choose it)"
        );
    }
    if let Some(cap) = factory.session_cap()
        && settings.server.max_sessions > cap
    {
        // Lowered here, before the per-key share is derived from it, so that one key
        // cannot take every uid and lock the others out.
        tracing::warn!(
            max_sessions = settings.server.max_sessions,
            lowered_to = cap,
            uids = factory.session_uids().map_or(0, |u| u.len()),
            pool = settings.pool_size,
            "fewer session uids than sessions: the session cap is lowered to the uids less the kernel pool"
        );
        settings.server = settings.server.with_max_sessions(cap);
    }
    factory.prewarm_in_background();
    let server = Server::bind(settings.server, Arc::new(factory)).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    // The signal handlers go in before the line that tells a supervisor the server is up:
    // a SIGTERM sent as soon as it reads that line must stop the server gracefully.
    let stop = codebox_server::shutdown_signal();
    tracing::info!(addr = %server.local_addr(), pool = settings.pool_size, "codebox serve listening");
    server.run_until(stop).await.map_err(|e| anyhow::anyhow!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn parse(args: &[&str]) -> ServeArgs {
        Cli::try_parse_from(std::iter::once("serve").chain(args.iter().copied())).unwrap().args
    }

    #[test]
    fn several_keys_without_isolation_need_the_operators_consent() {
        let none = ["--isolation", "none", "--api-key", "key-one"];
        let one = settings(parse(&none), None).unwrap();
        assert!(check_tenant_isolation(&one).is_ok(), "one key has no other tenant to reach");
        let two = settings(parse(&[&none[..], &["--api-key", "key-two"]].concat()), None).unwrap();
        let err = check_tenant_isolation(&two).unwrap_err().to_string();
        assert!(err.contains("--allow-weak-isolation") && !err.contains("key-two"), "{err}");
        let allowed = settings(parse(&[&none[..], &["--api-key", "key-two", "--allow-weak-isolation"]].concat()), None);
        assert!(check_tenant_isolation(&allowed.unwrap()).is_ok());
    }
}

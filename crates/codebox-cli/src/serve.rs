//! `codebox serve`: host a CodeBox server backed by local Jupyter kernels.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use codebox_core::ApiKey;
use codebox_local::{Allowlist, Isolation, IsolationLevel, Limits, LocalBox, LocalFactory, SandboxPolicy};
use codebox_server::{Server, ServerConfig};
use serde::Deserialize;

/// Host a CodeBox server: sessions of local Jupyter kernels behind the native API (`/v1`)
/// and the codebox-api compatibility routes (`/api/v1`, `/api/v2`).
///
/// Every option can also come from a config file (`--config`, TOML, or JSON when the name
/// ends in `.json`) using the option's long name with `_` for `-`, e.g.
/// `max_sessions = 32`, `idle_timeout = "30m"`, `api_keys = ["..."]`. Flags win over the
/// file. API keys are the union of `--api-key`, `CODEBOX_SERVER_API_KEYS`,
/// `--api-key-file` and the config file; they are never logged.
#[derive(Debug, clap::Args)]
#[command(long_about)]
pub(crate) struct ServeArgs {
    // Boxed: the options are many, and the subcommand enum stays small.
    #[command(flatten)]
    options: Box<ServeOptions>,
}

/// The options of `codebox serve`.
#[derive(Debug, clap::Args)]
struct ServeOptions {
    /// Address to listen on, HOST:PORT [default: 127.0.0.1:8069].
    #[arg(long, env = "CODEBOX_SERVER_ADDR", value_name = "HOST:PORT")]
    addr: Option<SocketAddr>,

    /// Accept this API key (repeatable). Clients send it as `Authorization: Bearer KEY`.
    /// Discouraged: other users of the machine can read a command line, so the server warns
    /// and overwrites the key in its own; prefer --api-key-file, CODEBOX_SERVER_API_KEYS
    /// (comma-separated) or the config file.
    #[arg(long = "api-key", value_name = "KEY")]
    api_keys: Vec<String>,

    /// Read API keys from this file: one per line; blank lines and lines starting with `#`
    /// are ignored.
    #[arg(long, value_name = "FILE")]
    api_key_file: Option<PathBuf>,

    /// Read options from this file (TOML, or JSON if the name ends in `.json`).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Serve without authentication, for local development only. Refused on an address
    /// that is not loopback unless --force-no-auth is given too.
    #[arg(long)]
    no_auth: bool,

    /// Allow --no-auth on a non-loopback address. Anyone who can reach the server can run
    /// code on this machine.
    #[arg(long, requires = "no_auth")]
    force_no_auth: bool,

    /// The most sessions alive at once; more are refused with 503 and Retry-After. With
    /// session uids it is at most the uids less --pool-size (each session and each pooled
    /// kernel holds one) [default: 64].
    #[arg(long, value_name = "N")]
    max_sessions: Option<usize>,

    /// The most sessions one API key may hold at once; more are refused with 429
    /// `rate_limited` (the key can free its own) [default: --max-sessions divided by the
    /// number of keys, at least 1].
    #[arg(long, value_name = "N")]
    max_sessions_per_key: Option<usize>,

    /// The most bytes of JSON request bodies held in memory at once, across all requests;
    /// a body that finds no room for a moment is refused with 503 and Retry-After. At least
    /// the 16M limit of one JSON body [default: 64M].
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    max_buffered_bytes: Option<u64>,

    /// Stop a session unused for this long, e.g. `900`, `15m`, `1h` [default: 15m].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    idle_timeout: Option<Duration>,

    /// The largest file upload, e.g. `1073741824`, `512M`, `1G`. Keep it below the usable
    /// size of a working directory (ext4 keeps about 8 % of --workdir-size for itself): a
    /// larger upload fails with 507 when the disk fills [default: 512M, or half of
    /// --workdir-size when that is smaller].
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    max_upload_bytes: Option<u64>,

    /// Cut off a client that sends no request body bytes for this long [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    upload_timeout: Option<Duration>,

    /// The most client connections open at once; one more is answered 503 and closed at
    /// once [default: a quarter of the soft limit on open files].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,

    /// Close a connection that has no request in flight and sends nothing for this long,
    /// one that never sends a request included [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    connection_idle_timeout: Option<Duration>,

    /// On SIGTERM/SIGINT, let running executions finish for this long before interrupting
    /// them [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    shutdown_grace: Option<Duration>,

    /// Kernels kept started and ready for new sessions; 0 turns the pool off [default: 2].
    #[arg(long, value_name = "N")]
    pool_size: Option<usize>,

    /// How many kernels may be starting at once; further new sessions wait their turn
    /// [default: the number of CPUs, at least 2].
    #[arg(long, value_name = "N")]
    max_concurrent_starts: Option<usize>,

    /// The kernel new sessions run when they do not ask for one [default: python3].
    #[arg(long, value_name = "NAME")]
    kernel: Option<String>,

    /// The Python interpreter for kernels [default: CODEBOX_PYTHON, else a managed environment].
    #[arg(long, value_name = "PATH")]
    python: Option<PathBuf>,

    /// Kernel isolation: `auto` (bubblewrap, else Landlock, else none), `bubblewrap`,
    /// `landlock` or `none` [default: auto].
    #[arg(long, value_name = "MODE", value_parser = ["auto", "bubblewrap", "bwrap", "landlock", "none"])]
    isolation: Option<String>,

    /// Refuse to start kernels without isolation instead of stepping down the ladder.
    #[arg(long)]
    require_isolation: bool,

    /// Serve more than one API key even where kernels run without isolation (the `none`
    /// level, chosen or fallen back to). There, code of one key's session can read the
    /// server's files and processes and so reach other keys' sessions; without this flag
    /// such a server refuses to start.
    #[arg(long)]
    allow_weak_isolation: bool,

    /// Give kernels the host network (default: none, only a private loopback).
    #[arg(long, conflicts_with = "kernel_allow_host")]
    kernel_network: bool,

    /// Let kernels reach this host (`name`, `name:port`, `*.domain`, an IP) over HTTP and
    /// HTTPS through a proxy, and nothing else; repeat for more hosts. Needs bubblewrap.
    #[arg(long, value_name = "HOST")]
    kernel_allow_host: Vec<String>,

    /// Memory of one session (cgroup); RLIMIT_DATA is 90 % of it [default: 1G].
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    memory_limit: Option<u64>,

    /// Processes and threads of one session (cgroup pids.max) [default: 256].
    #[arg(long, value_name = "N")]
    pids_limit: Option<u64>,

    /// CPUs one session may use (cgroup quota), e.g. `0.5` [default: 1].
    #[arg(long, value_name = "CPUS")]
    cpu_limit: Option<f64>,

    /// The largest file a kernel may write (RLIMIT_FSIZE) [default: 1G].
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    file_size_limit: Option<u64>,

    /// Open files per kernel process (RLIMIT_NOFILE) [default: 1024].
    #[arg(long, value_name = "N")]
    open_files_limit: Option<u64>,

    /// The largest single message a kernel may send; a kernel that sends a larger one is
    /// recycled before it reaches the server [default: 64M].
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    max_message: Option<u64>,

    /// Size of a session's working directory (a sparse ext4 image; needs root) [default: 1G].
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    workdir_size: Option<u64>,

    /// Size of a session's private /tmp [default: 256M].
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    tmp_size: Option<u64>,

    /// Unprivileged uids for sessions, one each, as FIRST-LAST [default: 200000-265535
    /// when running as root].
    #[arg(long, value_name = "FIRST-LAST", value_parser = parse_uid_range)]
    session_uids: Option<std::ops::Range<u32>>,

    /// Run every session's kernel as this server's user instead of a uid of its own.
    #[arg(long, conflicts_with = "session_uids")]
    no_session_uids: bool,

    /// Do not put sessions in cgroups (memory, process and CPU limits then do not apply).
    #[arg(long)]
    no_cgroups: bool,

    /// This server's own directory for session working directories and its record of live
    /// sessions. At start, whatever an earlier server left there (and under the session
    /// uids, and in session cgroups) is swept away; one server per directory [default:
    /// $CODEBOX_HOME/sessions, else /var/lib/codebox/sessions as root, else
    /// ~/.local/state/codebox/sessions].
    #[arg(long, value_name = "DIR")]
    session_root: Option<PathBuf>,

    /// Log format on stderr: `text` or `json`. The level comes from RUST_LOG [default: text, info].
    #[arg(long, value_name = "FORMAT", value_parser = ["text", "json"])]
    log_format: Option<String>,
}

/// The config file: the same options, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    addr: Option<SocketAddr>,
    #[serde(default)]
    api_keys: Vec<String>,
    api_key_file: Option<PathBuf>,
    #[serde(default)]
    no_auth: bool,
    #[serde(default)]
    force_no_auth: bool,
    max_sessions: Option<usize>,
    max_sessions_per_key: Option<usize>,
    max_buffered_bytes: Option<SizeValue>,
    idle_timeout: Option<DurationValue>,
    max_upload_bytes: Option<SizeValue>,
    upload_timeout: Option<DurationValue>,
    max_connections: Option<usize>,
    connection_idle_timeout: Option<DurationValue>,
    shutdown_grace: Option<DurationValue>,
    pool_size: Option<usize>,
    max_concurrent_starts: Option<usize>,
    kernel: Option<String>,
    python: Option<PathBuf>,
    log_format: Option<String>,
    isolation: Option<String>,
    #[serde(default)]
    require_isolation: bool,
    #[serde(default)]
    allow_weak_isolation: bool,
    #[serde(default)]
    kernel_network: bool,
    #[serde(default)]
    kernel_allow_hosts: Vec<String>,
    memory_limit: Option<SizeValue>,
    pids_limit: Option<u64>,
    cpu_limit: Option<f64>,
    file_size_limit: Option<SizeValue>,
    open_files_limit: Option<u64>,
    max_message: Option<SizeValue>,
    workdir_size: Option<SizeValue>,
    tmp_size: Option<SizeValue>,
    session_uids: Option<String>,
    #[serde(default)]
    no_session_uids: bool,
    #[serde(default)]
    no_cgroups: bool,
    session_root: Option<PathBuf>,
}

/// A duration in a file: seconds as a number, or text like `15m`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum DurationValue {
    Seconds(f64),
    Text(String),
}

impl DurationValue {
    fn get(&self) -> anyhow::Result<Duration> {
        match self {
            Self::Seconds(s) => {
                Duration::try_from_secs_f64(*s).map_err(|e| anyhow::anyhow!("{s} is not a duration: {e}"))
            }
            Self::Text(t) => parse_duration(t).map_err(anyhow::Error::msg),
        }
    }
}

/// A size in a file: bytes as a number, or text like `512M`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

impl SizeValue {
    fn get(&self) -> anyhow::Result<u64> {
        match self {
            Self::Bytes(b) => Ok(*b),
            Self::Text(t) => parse_size(t).map_err(anyhow::Error::msg),
        }
    }
}

/// `90`, `1.5s`, `500ms`, `15m`, `1h`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (t, 1.0)
    };
    match num.trim().parse::<f64>() {
        Ok(v) if let Ok(d) = Duration::try_from_secs_f64(v * scale) => Ok(d),
        _ => Err(format!("{text:?} is not a duration (try 30, 30s, 15m, 1h, 500ms)")),
    }
}

/// `1048576`, `512K`, `100M`, `1G` (powers of 1024; a trailing `B`/`iB` is allowed).
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim().trim_end_matches("iB").trim_end_matches(['B', 'b']);
    let (num, scale) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&t[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&t[..i], 1 << 30),
        Some((i, 't' | 'T')) => (&t[..i], 1 << 40),
        _ => (t, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("{text:?} is not a size (try 1073741824, 512M, 1G)"))
}

/// `200000-265535`: the first and last uid, inclusive.
fn parse_uid_range(text: &str) -> Result<std::ops::Range<u32>, String> {
    let bad = || format!("{text:?} is not a uid range (try 200000-265535)");
    let (a, b) = text.split_once('-').ok_or_else(bad)?;
    let (a, b): (u32, u32) = (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
    if a == 0 || b < a || b == u32::MAX {
        return Err(format!("{text:?}: the range must be above uid 0 and not empty"));
    }
    Ok(a..b + 1)
}

/// How sessions are sandboxed.
#[derive(Debug)]
struct SandboxSettings {
    isolation: Isolation,
    require: bool,
    /// Serve several API keys even on a level that cannot keep them apart.
    allow_weak: bool,
    network: bool,
    allowlist: Allowlist,
    limits: Limits,
    /// Session uids (root only).
    uids: Option<std::ops::Range<u32>>,
    /// Session cgroups (root only).
    cgroups: bool,
}

fn sandbox_settings(args: &ServeOptions, file: &FileConfig) -> anyhow::Result<SandboxSettings> {
    let size = |flag: Option<u64>, f: &Option<SizeValue>| -> anyhow::Result<Option<u64>> {
        flag.map(Ok).or(f.as_ref().map(SizeValue::get)).transpose()
    };
    let isolation = match args.isolation.as_ref().or(file.isolation.as_ref()) {
        Some(m) => m.parse::<Isolation>().map_err(|e| anyhow::anyhow!("{e}"))?,
        None => Isolation::Auto,
    };
    let mut limits = Limits::server();
    if let Some(m) = size(args.memory_limit, &file.memory_limit)? {
        limits = limits.with_memory(m);
    }
    if let Some(n) = args.pids_limit.or(file.pids_limit) {
        limits = limits.with_pids(Some(n));
    }
    if let Some(c) = args.cpu_limit.or(file.cpu_limit) {
        limits = limits.with_cpu(Some(c));
    }
    if let Some(b) = size(args.file_size_limit, &file.file_size_limit)? {
        limits = limits.with_file_size(Some(b));
    }
    if let Some(n) = args.open_files_limit.or(file.open_files_limit) {
        limits = limits.with_open_files(Some(n));
    }
    if let Some(b) = size(args.max_message, &file.max_message)? {
        limits = limits.with_max_message(b);
    }
    if let Some(b) = size(args.workdir_size, &file.workdir_size)? {
        let inodes = limits.workdir_inodes;
        limits = limits.with_workdir_size(Some(b), inodes);
    }
    if let Some(b) = size(args.tmp_size, &file.tmp_size)? {
        let (shm, home) = (limits.shm_size, limits.home_size);
        limits = limits.with_tmpfs_sizes(b, shm, home);
    }
    limits.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let uids = if args.no_session_uids || file.no_session_uids {
        None
    } else {
        match (&args.session_uids, &file.session_uids) {
            (Some(r), _) => Some(r.clone()),
            (None, Some(text)) => Some(parse_uid_range(text).map_err(anyhow::Error::msg)?),
            (None, None) => Some(codebox_local::DEFAULT_UID_RANGE),
        }
    };
    Ok(SandboxSettings {
        isolation,
        require: args.require_isolation || file.require_isolation,
        allow_weak: args.allow_weak_isolation || file.allow_weak_isolation,
        network: args.kernel_network || file.kernel_network,
        allowlist: Allowlist::parse(&[&file.kernel_allow_hosts[..], &args.kernel_allow_host[..]].concat())
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        limits,
        uids,
        cgroups: !(args.no_cgroups || file.no_cgroups),
    })
}

fn read_key_file(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading API keys from {}", path.display()))?;
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned).collect())
}

fn read_config_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
        serde_json::from_str(&text).with_context(|| format!("parsing {} as JSON", path.display()))
    } else {
        toml::from_str(&text).with_context(|| format!("parsing {} as TOML", path.display()))
    }
}

/// Where sessions live when no root is given (see `--session-root`).
fn default_session_root() -> anyhow::Result<PathBuf> {
    if let Some(home) = std::env::var_os("CODEBOX_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home).join("sessions"));
    }
    if codebox_local::running_as_root() {
        return Ok(PathBuf::from("/var/lib/codebox/sessions"));
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| PathBuf::from(h).join(".local/state")))
        .context("no session root: give --session-root (neither CODEBOX_HOME, XDG_STATE_HOME nor HOME is set)")?;
    Ok(state.join("codebox/sessions"))
}

/// Everything `serve` needs, after merging flags, environment and file.
#[derive(Debug)]
struct Settings {
    server: ServerConfig,
    /// Session working directories, and the server's record of live sessions.
    session_root: PathBuf,
    pool_size: usize,
    kernel: Option<String>,
    python: Option<PathBuf>,
    log_format: String,
    sandbox: SandboxSettings,
}

fn settings(args: ServeArgs, env_keys: Option<String>) -> anyhow::Result<Settings> {
    let args = *args.options;
    let file = match &args.config {
        Some(path) => read_config_file(path)?,
        None => FileConfig::default(),
    };
    let mut keys: Vec<String> = args.api_keys.clone();
    if let Some(env_keys) = env_keys {
        keys.extend(env_keys.split(',').map(str::trim).filter(|k| !k.is_empty()).map(str::to_owned));
    }
    for path in [&args.api_key_file, &file.api_key_file].into_iter().flatten() {
        keys.extend(read_key_file(path)?);
    }
    keys.extend(file.api_keys.iter().cloned());
    keys.sort();
    keys.dedup();

    let mut server = ServerConfig::new()
        .with_api_keys(keys.into_iter().map(ApiKey::new))
        .with_no_auth(args.no_auth || file.no_auth, args.force_no_auth || file.force_no_auth);
    if let Some(addr) = args.addr.or(file.addr) {
        server = server.with_addr(addr);
    }
    if let Some(n) = args.max_sessions.or(file.max_sessions) {
        server = server.with_max_sessions(n);
    }
    if let Some(n) = args.max_sessions_per_key.or(file.max_sessions_per_key) {
        server = server.with_max_sessions_per_key(n);
    }
    if let Some(b) = args.max_buffered_bytes.map(Ok).or(file.max_buffered_bytes.as_ref().map(SizeValue::get)) {
        server = server.with_max_buffered_bytes(b?);
    }
    if let Some(n) = args.max_concurrent_starts.or(file.max_concurrent_starts) {
        server = server.with_max_concurrent_starts(n);
    }
    if let Some(d) = args.idle_timeout.map(Ok).or(file.idle_timeout.as_ref().map(DurationValue::get)) {
        server = server.with_idle_timeout(d?);
    }
    let sandbox = sandbox_settings(&args, &file)?;
    match args.max_upload_bytes.map(Ok).or(file.max_upload_bytes.as_ref().map(SizeValue::get)) {
        Some(b) => server = server.with_max_upload_bytes(b?),
        // An upload the working directory cannot hold would only fail at the end with a
        // full disk: by default the limit leaves the image room to spare.
        None => {
            if let Some(workdir) = sandbox.limits.workdir_size {
                server = server.with_max_upload_bytes(codebox_server::DEFAULT_MAX_UPLOAD_BYTES.min(workdir / 2));
            }
        }
    }
    if let Some(d) = args.upload_timeout.map(Ok).or(file.upload_timeout.as_ref().map(DurationValue::get)) {
        server = server.with_body_idle_timeout(d?);
    }
    if let Some(n) = args.max_connections.or(file.max_connections) {
        server = server.with_max_connections(n);
    }
    if let Some(d) =
        args.connection_idle_timeout.map(Ok).or(file.connection_idle_timeout.as_ref().map(DurationValue::get))
    {
        server = server.with_connection_idle_timeout(d?);
    }
    if let Some(d) = args.shutdown_grace.map(Ok).or(file.shutdown_grace.as_ref().map(DurationValue::get)) {
        server = server.with_shutdown_grace(d?);
    }
    let session_root = match args.session_root.clone().or(file.session_root.clone()) {
        Some(dir) => std::path::absolute(&dir).with_context(|| format!("the session root {}", dir.display()))?,
        None => default_session_root()?,
    };
    server = server.with_state_dir(session_root.join("server"));
    server.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let log_format = args.log_format.or(file.log_format).unwrap_or_else(|| "text".into());
    if !matches!(log_format.as_str(), "text" | "json") {
        bail!("log_format must be `text` or `json`, not {log_format:?}");
    }
    Ok(Settings {
        server,
        session_root,
        pool_size: args.pool_size.or(file.pool_size).unwrap_or(2),
        kernel: args.kernel.or(file.kernel),
        python: args.python.or(file.python),
        log_format,
        sandbox,
    })
}

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
    let mut boxes = LocalBox::builder().with_sandbox(policy);
    if let Some(python) = &settings.python {
        boxes = boxes.with_python(python);
    }
    if let Some(kernel) = &settings.kernel {
        boxes = boxes.with_kernel(kernel);
    }
    LocalFactory::builder(boxes)
        .with_session_root(&settings.session_root)
        .with_session_uids(sb.uids.clone())
        .with_cgroups(sb.cgroups)
        .with_pool_size(settings.pool_size)
        .build()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

async fn serve(mut settings: Settings, factory: LocalFactory) -> anyhow::Result<()> {
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
    tracing::info!(addr = %server.local_addr(), pool = settings.pool_size, "codebox serve listening");
    server.run().await.map_err(|e| anyhow::anyhow!("{e}"))
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
    fn the_documented_default_uid_range_is_the_default() {
        // The help's `200000-265535` is first and last uid, inclusive.
        assert_eq!(parse_uid_range("200000-265535"), Ok(codebox_local::DEFAULT_UID_RANGE));
    }

    #[test]
    fn connection_limits_come_from_flags_and_the_file() {
        let s = settings(parse(&["--api-key", "k", "--max-connections", "8", "--connection-idle-timeout", "5s"]), None)
            .unwrap();
        assert_eq!(s.server.max_connections, Some(8));
        assert_eq!(s.server.connection_idle_timeout, Duration::from_secs(5));
        assert!(settings(parse(&["--api-key", "k", "--max-connections", "0"]), None).is_err());
    }

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("1X").is_err());
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("1e300").is_err() && parse_duration("NaN").is_err() && parse_duration("inf").is_err());
    }

    #[test]
    fn keys_come_from_flags_env_and_files() {
        let dir = std::env::temp_dir().join(format!("codebox-serve-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key_file = dir.join("keys");
        std::fs::write(&key_file, "# team keys\nfrom-file\n\n").unwrap();
        let config = dir.join("serve.toml");
        std::fs::write(
            &config,
            "api_keys = [\"from-config\"]\nmax_sessions = 7\nidle_timeout = \"2m\"\nmax_sessions_per_key = 3\n\
             max_buffered_bytes = \"32M\"\nallow_weak_isolation = true\n",
        )
        .unwrap();
        let args = parse(&[
            "--api-key",
            "from-flag",
            "--api-key-file",
            key_file.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--max-upload-bytes",
            "10M",
        ]);
        let s = settings(args, Some("from-env-1, from-env-2".into())).unwrap();
        let keys: Vec<&str> = s.server.api_keys.iter().map(|k| k.expose()).collect();
        assert_eq!(keys, ["from-config", "from-env-1", "from-env-2", "from-file", "from-flag"]);
        assert_eq!(s.server.max_sessions, 7);
        assert_eq!(s.server.sessions_per_key(), 3);
        assert_eq!(s.server.max_buffered_bytes, 32 << 20);
        assert!(s.sandbox.allow_weak);
        assert_eq!(s.server.idle_timeout, Duration::from_secs(120));
        assert_eq!(s.server.max_upload_bytes, 10 << 20);
        let s = settings(parse(&["--no-auth"]), None).unwrap();
        assert_eq!(s.server.max_upload_bytes, 512 << 20, "the default fits the default 1G working directory");
        let s = settings(parse(&["--no-auth", "--workdir-size", "64M"]), None).unwrap();
        assert_eq!(s.server.max_upload_bytes, 32 << 20, "a small working directory lowers the default");
        assert_eq!(s.pool_size, 2);
        assert!(!format!("{s:?}").contains("from-flag"), "keys never show in Debug");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_configurations_are_refused() {
        let err = settings(parse(&[]), None).unwrap_err();
        assert!(err.to_string().contains("no API keys"), "{err}");
        let err = settings(parse(&["--no-auth", "--addr", "0.0.0.0:8069"]), None).unwrap_err();
        assert!(err.to_string().contains("not a loopback"), "{err}");
        assert!(settings(parse(&["--no-auth", "--force-no-auth", "--addr", "0.0.0.0:8069"]), None).is_ok());
        assert!(Cli::try_parse_from(["serve", "--force-no-auth"]).is_err(), "--force-no-auth needs --no-auth");
        assert!(Cli::try_parse_from(["serve", "--log-format", "xml"]).is_err());
        assert!(Cli::try_parse_from(["serve", "--isolation", "docker"]).is_err());
        assert!(Cli::try_parse_from(["serve", "--session-uids", "5-1"]).is_err());
        assert!(Cli::try_parse_from(["serve", "--session-uids", "0-10"]).is_err());
        let err = settings(parse(&["--no-auth", "--memory-limit", "1M"]), None).unwrap_err();
        assert!(err.to_string().contains("64 MiB"), "{err}");
        let err = settings(parse(&["--no-auth", "--cpu-limit", "0"]), None).unwrap_err();
        assert!(err.to_string().contains("cpu"), "{err}");
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

    #[test]
    fn the_session_root_holds_the_server_record() {
        let s = settings(parse(&["--no-auth", "--session-root", "/srv/codebox/sessions"]), None).unwrap();
        assert_eq!(s.session_root, PathBuf::from("/srv/codebox/sessions"));
        assert_eq!(s.server.state_dir, Some(PathBuf::from("/srv/codebox/sessions/server")));
        let s = settings(parse(&["--no-auth", "--session-root", "rel"]), None).unwrap();
        assert!(s.session_root.is_absolute() && s.session_root.ends_with("rel"), "{:?}", s.session_root);
        let s = settings(parse(&["--no-auth"]), None).unwrap();
        assert!(s.session_root.is_absolute() && s.session_root.ends_with("sessions"), "{:?}", s.session_root);
    }

    #[test]
    fn sandbox_limits_come_from_flags_and_the_file_with_server_defaults() {
        let s = settings(parse(&["--no-auth"]), None).unwrap().sandbox;
        assert_eq!(s.isolation, Isolation::Auto);
        assert_eq!(s.limits, Limits::server());
        assert_eq!(s.uids, Some(codebox_local::DEFAULT_UID_RANGE));
        assert!(s.cgroups && !s.network && !s.require && s.allowlist.is_empty());
        let s = settings(
            parse(&["--no-auth", "--kernel-allow-host", "pypi.org", "--kernel-allow-host", "*.pythonhosted.org:443"]),
            None,
        )
        .unwrap()
        .sandbox;
        assert!(s.allowlist.allows("pypi.org", 443) && s.allowlist.allows("files.pythonhosted.org", 443));
        assert!(!s.allowlist.allows("example.com", 443));
        let err = settings(parse(&["--no-auth", "--kernel-allow-host", "http://x"]), None).unwrap_err();
        assert!(err.to_string().contains("network allowlist entry"), "{err}");
        assert!(Cli::try_parse_from(["serve", "--kernel-network", "--kernel-allow-host", "a.org"]).is_err());
        let s = settings(
            parse(&[
                "--no-auth",
                "--isolation",
                "bubblewrap",
                "--require-isolation",
                "--memory-limit",
                "512M",
                "--pids-limit",
                "64",
                "--cpu-limit",
                "0.5",
                "--file-size-limit",
                "10M",
                "--max-message",
                "8M",
                "--session-uids",
                "300000-300009",
                "--no-cgroups",
            ]),
            None,
        )
        .unwrap()
        .sandbox;
        assert_eq!(s.isolation, Isolation::Bubblewrap);
        assert!(s.require && !s.cgroups);
        assert_eq!(s.limits.memory, Some(512 << 20));
        assert!(s.limits.data.unwrap() < 512 << 20);
        assert_eq!((s.limits.pids, s.limits.cpu_millis, s.limits.file_size), (Some(64), Some(500), Some(10 << 20)));
        assert_eq!(s.limits.max_message, 8 << 20);
        assert_eq!(s.uids, Some(300_000..300_010));
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(
            &cfg,
            "no_auth = true\nisolation = \"landlock\"\nmemory_limit = \"256M\"\nno_session_uids = true\n",
        )
        .unwrap();
        let s = settings(parse(&["--config", cfg.to_str().unwrap()]), None).unwrap().sandbox;
        assert_eq!(s.isolation, Isolation::Landlock);
        assert_eq!(s.limits.memory, Some(256 << 20));
        assert_eq!(s.uids, None);
    }
}

//! What `codebox serve` runs with: [`Settings`], made from the layered [`ServeOptions`]
//! (the server's configuration, the sandbox of its sessions, where sessions live), with the
//! library defaults for what no layer sets.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use codebox_core::{ApiKey, ResourceLimits};
use codebox_local::{Allowlist, Isolation, Limits, PythonProfile, Template, TemplateCatalogue};
use codebox_server::{OnIdle, ServerConfig};

use super::options::{ServeArgs, ServeOptions, TemplateOptions, layered};

/// How sessions are sandboxed.
#[derive(Debug)]
pub(super) struct SandboxSettings {
    pub(super) isolation: Isolation,
    pub(super) require: bool,
    /// Serve several API keys even on a level that cannot keep them apart.
    pub(super) allow_weak: bool,
    pub(super) network: bool,
    pub(super) allowlist: Allowlist,
    pub(super) limits: Limits,
    /// Session uids (root only).
    pub(super) uids: Option<Range<u32>>,
    /// Session cgroups (root only).
    pub(super) cgroups: bool,
    /// Fork lean kernels from the fork server.
    pub(super) fork_server: bool,
}

fn sandbox_settings(o: &ServeOptions) -> anyhow::Result<SandboxSettings> {
    let isolation = match &o.isolation {
        Some(m) => m.parse::<Isolation>().map_err(|e| anyhow::anyhow!("{e}"))?,
        None => Isolation::Auto,
    };
    let mut limits = Limits::server();
    if let Some(m) = o.memory_limit {
        limits = limits.with_memory(m);
    }
    if let Some(n) = o.pids_limit {
        limits = limits.with_pids(Some(n));
    }
    if let Some(c) = o.cpu_limit {
        limits = limits.with_cpu(Some(c));
    }
    if let Some(b) = o.file_size_limit {
        limits = limits.with_file_size(Some(b));
    }
    if let Some(n) = o.open_files_limit {
        limits = limits.with_open_files(Some(n));
    }
    if let Some(b) = o.max_message {
        limits = limits.with_max_message(b);
    }
    if let Some(b) = o.workdir_size {
        let inodes = limits.workdir_inodes;
        limits = limits.with_workdir_size(Some(b), inodes);
    }
    if let Some(b) = o.tmp_size {
        let (shm, home) = (limits.shm_size, limits.home_size);
        limits = limits.with_tmpfs_sizes(b, shm, home);
    }
    limits.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let uids = match (&o.session_uids, o.no_session_uids) {
        (_, true) => None,
        (Some(range), false) => Some(range.clone()),
        (None, false) => Some(codebox_local::DEFAULT_UID_RANGE),
    };
    Ok(SandboxSettings {
        isolation,
        require: o.require_isolation,
        allow_weak: o.allow_weak_isolation,
        network: o.kernel_network,
        allowlist: Allowlist::parse(&o.kernel_allow_host).map_err(|e| anyhow::anyhow!("{e}"))?,
        limits,
        uids,
        cgroups: !o.no_cgroups,
        fork_server: !o.no_fork_server,
    })
}

fn read_key_file(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading API keys from {}", path.display()))?;
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned).collect())
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
pub(super) struct Settings {
    pub(super) server: ServerConfig,
    /// Session working directories, and the server's record of live sessions.
    pub(super) session_root: PathBuf,
    pub(super) pool_size: usize,
    pub(super) kernel: Option<String>,
    pub(super) python: Option<PathBuf>,
    pub(super) log_format: String,
    pub(super) sandbox: SandboxSettings,
    /// Templates of the config file, beside the built-ins.
    pub(super) templates: Vec<Template>,
    /// Kernels kept ready per template, by name (over `pool_size` for the default).
    pub(super) template_pools: BTreeMap<String, usize>,
    /// The host's memory, when the session cap was derived from it.
    pub(super) memory: Option<codebox_local::HostMemory>,
}

/// The templates and pools of the config file's `[templates.NAME]` tables, checked.
fn template_settings(
    tables: &BTreeMap<String, TemplateOptions>,
) -> anyhow::Result<(Vec<Template>, BTreeMap<String, usize>)> {
    let builtins = TemplateCatalogue::new();
    let mut templates = Vec::new();
    let mut pools = BTreeMap::new();
    for (name, t) in tables {
        if let Some(size) = t.pool {
            pools.insert(name.clone(), size);
        }
        if t.is_pool_only() {
            if builtins.get(name).is_err() {
                bail!(
                    "templates.{name}: a table with only `pool` keeps a built-in template warm, and there is \
                     no built-in {name:?} (they are: {}); define it with `kernel`, `language` or `packages`",
                    builtins.names().join(", ")
                );
            }
            continue;
        }
        let kernel = t.kernel.clone().unwrap_or_else(|| codebox_local::LEAN_KERNEL.to_owned());
        let language = match &t.language {
            Some(language) => language.clone(),
            None if matches!(kernel.as_str(), "python3" | "python" | codebox_local::LEAN_KERNEL) => "python".to_owned(),
            None => bail!("templates.{name}: say the `language` that kernel {kernel:?} runs"),
        };
        let profile = match t.profile.as_deref() {
            None | Some("minimal") => PythonProfile::Minimal,
            Some("data") => PythonProfile::Data,
            Some(other) => bail!("templates.{name}: profile must be `data` or `minimal`, not {other:?}"),
        };
        let mut limits = ResourceLimits::new();
        if let Some(l) = &t.limits {
            limits.memory_bytes = l.memory;
            limits.cpus = l.cpus;
            limits.processes = l.processes;
            limits.disk_bytes = l.disk;
        }
        let mut template = Template::new(name, kernel, language)
            .with_profile(profile)
            .with_packages(t.packages.iter().cloned())
            .with_limits(limits);
        if let Some(d) = &t.description {
            template = template.with_description(d);
        }
        for (key, value) in &t.env {
            template = template.with_env(key, value);
        }
        template.validate().map_err(|e| anyhow::anyhow!("templates.{name}: {e}"))?;
        templates.push(template);
    }
    Ok((templates, pools))
}

/// The settings from the command line, `env_keys` (CODEBOX_SERVER_API_KEYS) and the config
/// file the command line names.
pub(super) fn settings(args: ServeArgs, env_keys: Option<String>) -> anyhow::Result<Settings> {
    let o = layered(*args.options, env_keys.as_deref())?;
    let mut keys = o.api_keys.clone();
    for path in &o.api_key_file {
        keys.extend(read_key_file(path)?);
    }
    keys.sort();
    keys.dedup();

    let mut operator_keys = o.operator_keys.clone();
    for path in &o.operator_key_file {
        operator_keys.extend(read_key_file(path)?);
    }
    operator_keys.sort();
    operator_keys.dedup();

    let mut server = ServerConfig::new()
        .with_api_keys(keys.into_iter().map(ApiKey::new))
        .with_operator_keys(operator_keys.into_iter().map(ApiKey::new))
        .with_no_auth(o.no_auth, o.force_no_auth);
    if o.rate_limit.is_some() || o.rate_burst.is_some() {
        let defaults = ServerConfig::new();
        server = server
            .with_rate_limit(o.rate_limit.unwrap_or(defaults.rate_limit), o.rate_burst.unwrap_or(defaults.rate_burst));
    }
    if let Some(addr) = o.addr {
        server = server.with_addr(addr);
    }
    // Without a cap of the operator's, the host's memory (its cgroup's limit in a
    // container) sets one.
    let memory = if o.max_sessions.is_none() { codebox_local::host_memory() } else { None };
    if let Some(n) = o.max_sessions {
        server = server.with_max_sessions(n);
    } else if let Some(memory) = memory {
        server = server.with_max_sessions(codebox_server::max_sessions_for_memory(memory.available()));
    }
    if let Some(n) = o.max_sessions_per_key {
        server = server.with_max_sessions_per_key(n);
    }
    if let Some(b) = o.max_buffered_bytes {
        server = server.with_max_buffered_bytes(b);
    }
    if let Some(n) = o.max_concurrent_starts {
        server = server.with_max_concurrent_starts(n);
    }
    if let Some(d) = o.idle_timeout {
        server = server.with_idle_timeout(d);
    }
    if let Some(on_idle) = &o.on_idle {
        server = server.with_on_idle(if on_idle == "stop" { OnIdle::Stop } else { OnIdle::Pause });
    }
    if o.paused_disk_budget.is_some() || o.paused_disk_per_key.is_some() {
        server = server.with_paused_disk_budget(o.paused_disk_budget, o.paused_disk_per_key);
    }
    if let Some(fingerprint) = &o.e2b_debug_as {
        server = server.with_e2b_debug_as(fingerprint.clone());
    }
    if let Some(d) = o.max_session_timeout {
        server = server.with_max_session_timeout(d);
    }
    if o.default_session_timeout.is_some() {
        server = server.with_default_session_timeout(o.default_session_timeout);
    }
    let sandbox = sandbox_settings(&o)?;
    // The sandbox limits are what a session gets, and the most it may ask for.
    let session_limits = session_limits(&sandbox.limits);
    server = server.with_default_limits(session_limits.clone()).with_max_limits(session_limits);
    match o.max_upload_bytes {
        Some(b) => server = server.with_max_upload_bytes(b),
        // An upload the working directory cannot hold would only fail at the end with a
        // full disk: by default the limit leaves the image room to spare.
        None => {
            if let Some(workdir) = sandbox.limits.workdir_size {
                server = server.with_max_upload_bytes(codebox_server::DEFAULT_MAX_UPLOAD_BYTES.min(workdir / 2));
            }
        }
    }
    if let Some(d) = o.upload_timeout {
        server = server.with_body_idle_timeout(d);
    }
    if let Some(n) = o.max_connections {
        server = server.with_max_connections(n);
    }
    if let Some(d) = o.connection_idle_timeout {
        server = server.with_connection_idle_timeout(d);
    }
    if let Some(d) = o.shutdown_grace {
        server = server.with_shutdown_grace(d);
    }
    if let Some(d) = o.drain_period {
        server = server.with_drain_period(d);
    }
    match &o.node_id {
        Some(node) => server = server.with_node_id(codebox_server::NodeId::new(node.as_str())?),
        None => {
            if let Some(node) = hostname().as_deref().and_then(codebox_server::NodeId::from_hostname) {
                server = server.with_node_id(node);
            }
        }
    }
    if let Some(d) = o.metrics_interval {
        server = server.with_metrics_interval(d);
    }
    let session_root = match &o.session_root {
        Some(dir) => std::path::absolute(dir).with_context(|| format!("the session root {}", dir.display()))?,
        None => default_session_root()?,
    };
    server = server.with_state_dir(session_root.join("server"));
    server.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let log_format = o.log_format.unwrap_or_else(|| "text".into());
    if !matches!(log_format.as_str(), "text" | "json") {
        bail!("log_format must be `text` or `json`, not {log_format:?}");
    }
    let (templates, template_pools) = template_settings(&o.templates)?;
    Ok(Settings {
        server,
        session_root,
        pool_size: o.pool_size.unwrap_or(2),
        kernel: o.kernel,
        python: o.python,
        log_format,
        sandbox,
        templates,
        template_pools,
        memory,
    })
}

/// The sandbox's limits as the resource limits of a session's request.
fn session_limits(limits: &Limits) -> codebox_core::ResourceLimits {
    let mut out = codebox_core::ResourceLimits::new();
    out.memory_bytes = limits.memory;
    out.cpus = limits.cpu_millis.map(|m| m as f64 / 1000.0);
    out.processes = limits.pids;
    out.disk_bytes = limits.workdir_size;
    out
}

/// This machine's host name (a pod's name, in Kubernetes), where the system tells it.
fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
    fn connection_limits_come_from_flags_and_the_file() {
        let s = settings(parse(&["--api-key", "k", "--max-connections", "8", "--connection-idle-timeout", "5s"]), None)
            .unwrap();
        assert_eq!(s.server.max_connections, Some(8));
        assert_eq!(s.server.connection_idle_timeout, Duration::from_secs(5));
        assert!(settings(parse(&["--api-key", "k", "--max-connections", "0"]), None).is_err());
    }

    #[test]
    fn the_metrics_interval_comes_from_flags_and_the_file_and_is_checked() {
        let defaults = settings(parse(&["--api-key", "k"]), None).unwrap();
        assert_eq!(defaults.server.metrics_interval, Duration::from_secs(5));
        let off = settings(parse(&["--api-key", "k", "--metrics-interval", "0"]), None).unwrap();
        assert_eq!(off.server.metrics_interval, Duration::ZERO);
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("serve.toml");
        std::fs::write(&config, "no_auth = true\nmetrics_interval = \"30s\"\n").unwrap();
        let s = settings(parse(&["--config", config.to_str().unwrap()]), None).unwrap();
        assert_eq!(s.server.metrics_interval, Duration::from_secs(30));
        let s = settings(parse(&["--config", config.to_str().unwrap(), "--metrics-interval", "2s"]), None).unwrap();
        assert_eq!(s.server.metrics_interval, Duration::from_secs(2), "a flag wins over the file");
        let err = settings(parse(&["--api-key", "k", "--metrics-interval", "100ms"]), None).unwrap_err().to_string();
        assert!(err.contains("metrics_interval"), "{err}");
        assert!(Cli::try_parse_from(["serve", "--api-key", "k", "--metrics-interval", "often"]).is_err());
    }

    #[test]
    fn operator_keys_and_rates_come_from_key_files_and_the_config_file() {
        let dir = std::env::temp_dir().join(format!("codebox-serve-operator-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key_file = dir.join("operators");
        std::fs::write(
            &key_file,
            "# operators
op-from-file
",
        )
        .unwrap();
        let config = dir.join("serve.toml");
        std::fs::write(&config, "operator_keys = [\"op-from-config\"]\nrate_limit = 7\nallow_weak_isolation = true\n")
            .unwrap();
        let args = parse(&[
            "--api-key-file",
            key_file.to_str().unwrap(),
            "--operator-key-file",
            key_file.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--rate-burst",
            "9",
        ]);
        let err = settings(args, None).unwrap_err();
        assert!(format!("{err:#}").contains("one role"), "a key in both roles is refused: {err:#}");

        let args = parse(&[
            "--api-key",
            "normal",
            "--operator-key-file",
            key_file.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--rate-burst",
            "9",
        ]);
        let s = settings(args, None).unwrap();
        let operators: Vec<&str> = s.server.operator_keys.iter().map(|k| k.expose()).collect();
        assert_eq!(operators, ["op-from-config", "op-from-file"]);
        assert_eq!((s.server.rate_limit, s.server.rate_burst), (7, 9));
        assert!(!format!("{s:?}").contains("op-from"), "operator keys are never shown");
        let off = settings(parse(&["--api-key", "k", "--rate-limit", "0"]), None).unwrap();
        assert_eq!(off.server.rate_limit, 0);
        assert!(settings(parse(&["--api-key", "k", "--rate-burst", "0"]), None).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_session_cap_follows_memory_unless_the_operator_sets_one() {
        let derived = settings(parse(&["--api-key", "k"]), None).unwrap();
        let memory = derived.memory.expect("the host's memory is read when no cap is given");
        assert_eq!(derived.server.max_sessions, codebox_server::max_sessions_for_memory(memory.available()));
        let chosen = settings(parse(&["--api-key", "k", "--max-sessions", "7"]), None).unwrap();
        assert_eq!(chosen.server.max_sessions, 7);
        assert!(chosen.memory.is_none());
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
    fn session_lifetimes_and_limits_come_from_flags_and_the_sandbox() {
        let s = settings(parse(&["--no-auth"]), None).unwrap();
        assert_eq!(s.server.max_session_timeout, Duration::from_secs(24 * 3600));
        assert_eq!(s.server.default_session_timeout, None);
        assert_eq!(s.server.max_limits.memory_bytes, Some(1 << 30), "the sandbox's limits are the maximum");
        assert_eq!(s.server.max_limits.cpus, Some(1.0));
        assert_eq!(s.server.default_limits, s.server.max_limits);
        let flags = [
            "--no-auth",
            "--max-session-timeout",
            "2h",
            "--default-session-timeout",
            "5m",
            "--memory-limit",
            "2G",
            "--cpu-limit",
            "0.5",
        ];
        let s = settings(parse(&flags), None).unwrap();
        assert_eq!(s.server.max_session_timeout, Duration::from_secs(7200));
        assert_eq!(s.server.default_session_timeout, Some(Duration::from_secs(300)));
        assert_eq!((s.server.max_limits.memory_bytes, s.server.max_limits.cpus), (Some(2 << 30), Some(0.5)));
        let err =
            settings(parse(&["--no-auth", "--max-session-timeout", "1m", "--default-session-timeout", "2m"]), None)
                .unwrap_err();
        assert!(err.to_string().contains("above max_session_timeout"), "{err}");
    }

    #[test]
    fn the_node_id_comes_from_the_flag_or_the_host_name_and_is_checked() {
        let s = settings(parse(&["--no-auth", "--node-id", "codebox-2", "--drain-period", "20s"]), None).unwrap();
        assert_eq!(s.server.node_id.as_ref().map(codebox_server::NodeId::as_str), Some("codebox-2"));
        assert_eq!(s.server.drain_period, Duration::from_secs(20));
        let s = settings(parse(&["--no-auth"]), None).unwrap();
        let from_host = hostname().as_deref().and_then(codebox_server::NodeId::from_hostname);
        assert_eq!(s.server.node_id, from_host);
        let err = settings(parse(&["--no-auth", "--node-id", "a--b"]), None).unwrap_err();
        assert!(err.to_string().contains("node id \"a--b\""), "{err}");
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

    #[test]
    fn the_file_is_under_the_environment_and_the_flags_and_lists_are_the_union() {
        let dir = tempfile::tempdir().unwrap();
        let (file_keys, flag_keys) = (dir.path().join("file.keys"), dir.path().join("flag.keys"));
        std::fs::write(&file_keys, "key-of-the-file-key-file\n").unwrap();
        std::fs::write(&flag_keys, "key-of-the-flag-key-file\n").unwrap();
        let config = dir.path().join("serve.toml");
        std::fs::write(
            &config,
            format!(
                "addr = \"127.0.0.1:9001\"\nmax_sessions = 7\nidle_timeout = 900\nupload_timeout = \"1h 30m\"\n\
                 shutdown_grace = 2.5\nmemory_limit = 268435456\ntmp_size = \"64M\"\napi_keys = [\"key-in-the-file\"]\n\
                 api_key_file = {file_keys:?}\nkernel_allow_hosts = [\"pypi.org\"]\nsession_uids = \"300000-300009\"\n"
            ),
        )
        .unwrap();
        let flags = [
            "--config",
            config.to_str().unwrap(),
            "--max-sessions",
            "9",
            "--api-key-file",
            flag_keys.to_str().unwrap(),
            "--kernel-allow-host",
            "example.org",
        ];
        let s = settings(parse(&flags), Some("key-of-the-environment".into())).unwrap();
        let keys: Vec<&str> = s.server.api_keys.iter().map(|k| k.expose()).collect();
        assert_eq!(
            keys,
            ["key-in-the-file", "key-of-the-environment", "key-of-the-file-key-file", "key-of-the-flag-key-file"]
        );
        assert_eq!(s.server.addr, "127.0.0.1:9001".parse().unwrap(), "the file sets what nothing else does");
        assert_eq!(s.server.max_sessions, 9, "a flag wins over the file");
        assert_eq!(s.server.idle_timeout, Duration::from_secs(900), "a number in a file is seconds");
        assert_eq!(s.server.body_idle_timeout, Duration::from_secs(5400));
        assert_eq!(s.server.shutdown_grace, Duration::from_millis(2500));
        assert_eq!(s.sandbox.limits.memory, Some(256 << 20));
        assert!(s.sandbox.allowlist.allows("pypi.org", 443) && s.sandbox.allowlist.allows("example.org", 443));
        assert_eq!(s.sandbox.uids, Some(300_000..300_010));

        let json = dir.path().join("serve.json");
        std::fs::write(&json, r#"{"no_auth": true, "idle_timeout": "2m", "max_upload_bytes": "1M"}"#).unwrap();
        let s = settings(parse(&["--config", json.to_str().unwrap(), "--idle-timeout", "1h"]), None).unwrap();
        assert!(s.server.api_keys.is_empty());
        assert_eq!(s.server.idle_timeout, Duration::from_secs(3600));
        assert_eq!(s.server.max_upload_bytes, 1 << 20);
    }

    #[test]
    fn templates_and_their_pools_come_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("serve.toml");
        std::fs::write(
            &config,
            r#"no_auth = true
[templates.stats]
description = "Python for statistics"
profile = "data"
packages = ["scipy", "statsmodels==0.14.1"]
env = { MPLBACKEND = "Agg" }
pool = 1
limits = { memory = "2G", cpus = 1.5, processes = 128, disk = "512M" }

[templates.javascript]
pool = 2
"#,
        )
        .unwrap();
        let s = settings(parse(&["--config", config.to_str().unwrap()]), None).unwrap();
        assert_eq!(s.templates.len(), 1, "a built-in's pool alone defines nothing");
        let stats = &s.templates[0];
        assert_eq!((stats.name(), stats.kernel(), stats.language()), ("stats", codebox_local::LEAN_KERNEL, "python"));
        assert_eq!(stats.profile(), PythonProfile::Data);
        assert_eq!(stats.packages(), ["scipy", "statsmodels==0.14.1"]);
        assert_eq!(stats.env()["MPLBACKEND"], "Agg");
        assert_eq!(stats.description(), "Python for statistics");
        let limits = stats.limits();
        assert_eq!(
            (limits.memory_bytes, limits.cpus, limits.processes, limits.disk_bytes),
            (Some(2 << 30), Some(1.5), Some(128), Some(512 << 20))
        );
        assert_eq!(s.template_pools, BTreeMap::from([("javascript".to_owned(), 2), ("stats".to_owned(), 1)]));
    }

    #[test]
    fn bad_templates_are_refused_naming_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("serve.toml");
        for (text, said) in [
            ("[templates.ruby]\npool = 1\n", "no built-in \"ruby\""),
            ("[templates.js2]\nkernel = \"deno\"\n", "say the `language`"),
            ("[templates.x]\nprofile = \"huge\"\n", "profile must be"),
            ("[templates.x]\npackages = [\"--index-url=http://evil\"]\n", "templates.x"),
            ("[templates.x]\nlimits = { cpus = -1 }\n", "templates.x"),
            ("[templates.\"a b\"]\nkernel = \"python3\"\n", "letters, digits"),
            ("[templates.x]\nkernal = \"python3\"\n", "kernal"),
            ("[templates.x]\nlimits = { memory = \"lots\" }\n", "lots"),
        ] {
            std::fs::write(&config, format!("no_auth = true\n{text}")).unwrap();
            let err = settings(parse(&["--config", config.to_str().unwrap()]), None).unwrap_err();
            let err = format!("{err:#}");
            assert!(err.contains(said), "{text:?}: {err}");
        }
    }

    #[test]
    fn a_key_the_file_should_not_have_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("serve.toml");
        for (text, named) in [
            ("no_auth = true\nmax_sesions = 3\n", "max_sesions"),
            // The flag's name, not the file's key.
            ("no_auth = true\nkernel_allow_host = [\"pypi.org\"]\n", "kernel_allow_host"),
            ("no_auth = true\nconfig = \"other.toml\"\n", "config"),
            ("no_auth = true\nidle_timeout = \"soon\"\n", "idle_timeout"),
            ("no_auth = true\nsession_uids = \"9-1\"\n", "session_uids"),
        ] {
            std::fs::write(&config, text).unwrap();
            let err = settings(parse(&["--config", config.to_str().unwrap()]), None).unwrap_err().to_string();
            assert!(err.contains(named) && err.contains("serve.toml"), "{text:?}: {err}");
        }
        let missing = dir.path().join("missing.toml");
        assert!(settings(parse(&["--no-auth", "--config", missing.to_str().unwrap()]), None).is_err());
    }
}

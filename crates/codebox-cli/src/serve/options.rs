//! The options of `codebox serve`: one struct, [`ServeOptions`], that clap reads from the
//! command line and the environment and serde reads from the config file. figment layers
//! them (defaults < config file < environment < flags, lists appended), and
//! [`settings`](mod@super::settings) turns the result into what the server and its sandbox
//! take.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};

/// Host a CodeBox server: sessions of local Jupyter kernels behind the native API (`/v1`)
/// and the codebox-api compatibility routes (`/api/v1`, `/api/v2`).
///
/// Every option can also come from a config file (`--config`, TOML, or JSON when the name
/// ends in `.json`) using the option's long name with `_` for `-`, e.g.
/// `max_sessions = 32`, `idle_timeout = "30m"`, `api_keys = ["..."]`,
/// `kernel_allow_hosts = ["pypi.org"]`; a key the server does not know is an error. The
/// environment (CODEBOX_SERVER_ADDR, CODEBOX_SERVER_API_KEYS) wins over the file, and flags
/// win over both. API keys, key files and allowed hosts are the union of every place that
/// gives them; keys are never logged.
#[derive(Debug, clap::Args)]
#[command(long_about)]
pub(crate) struct ServeArgs {
    // Boxed: the options are many, and the subcommand enum stays small.
    #[command(flatten)]
    pub(super) options: Box<ServeOptions>,
}

/// The options of `codebox serve`, as flags and as config file keys.
///
/// Serializing gives only what was set (no `None`, no `false`, no empty list), so that the
/// flags, as a figment layer, override just what they name.
#[derive(Debug, Default, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ServeOptions {
    /// Address to listen on, HOST:PORT [default: 127.0.0.1:8069].
    #[arg(long, env = "CODEBOX_SERVER_ADDR", value_name = "HOST:PORT")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) addr: Option<SocketAddr>,

    /// Accept this API key (repeatable). Clients send it as `Authorization: Bearer KEY`.
    /// Discouraged: other users of the machine can read a command line, so the server warns
    /// and overwrites the key in its own; prefer --api-key-file, CODEBOX_SERVER_API_KEYS
    /// (comma-separated) or the config file.
    #[arg(long = "api-key", value_name = "KEY")]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) api_keys: Vec<String>,

    /// Read API keys from this file (repeatable): one per line; blank lines and lines
    /// starting with `#` are ignored.
    #[arg(long, value_name = "FILE")]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) api_key_file: Vec<PathBuf>,

    /// Read operator keys from this file (repeatable; the format of --api-key-file). An
    /// operator key is accepted like an API key, and its caller also lists, inspects and
    /// stops every key's sessions. Never logged. In the config file, `operator_keys = [...]`
    /// lists keys too.
    #[arg(long, value_name = "FILE")]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) operator_key_file: Vec<PathBuf>,

    /// Operator keys, from the config file only: a command line is readable by other users.
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) operator_keys: Vec<String>,

    /// Requests a second each API key may make; a request over it is refused with 429
    /// `rate_limited` and Retry-After before it does any work (`/health` is never limited).
    /// 0 turns the limit off [default: 50].
    #[arg(long, value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) rate_limit: Option<u32>,

    /// How many requests a key may make at once above --rate-limit [default: 100].
    #[arg(long, value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) rate_burst: Option<u32>,

    /// Read options from this file (TOML, or JSON if the name ends in `.json`).
    #[arg(long, value_name = "FILE")]
    // Not an option a file can set: it names the file.
    #[serde(skip)]
    pub(super) config: Option<PathBuf>,

    /// Serve without authentication, for local development only. Refused on an address
    /// that is not loopback unless --force-no-auth is given too.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "is_false")]
    pub(super) no_auth: bool,

    /// Allow --no-auth on a non-loopback address. Anyone who can reach the server can run
    /// code on this machine.
    #[arg(long, requires = "no_auth")]
    #[serde(default, skip_serializing_if = "is_false")]
    pub(super) force_no_auth: bool,

    /// The most sessions alive at once; more are refused with 503 and Retry-After. With
    /// session uids it is at most the uids less --pool-size (each session and each pooled
    /// kernel holds one) [default: from the host's memory, or its cgroup's limit in a
    /// container: one session per 64 MiB after a reserve of an eighth (at least 1 GiB, or
    /// half of a smaller host), so 336 on 24 GiB and 16 in a 2 GiB pod].
    #[arg(long, value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) max_sessions: Option<usize>,

    /// The most sessions one API key may hold at once; more are refused with 429
    /// `rate_limited` (the key can free its own) [default: --max-sessions divided by the
    /// number of keys, at least 1].
    #[arg(long, value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) max_sessions_per_key: Option<usize>,

    /// The most bytes of JSON request bodies held in memory at once, across all requests;
    /// a body that finds no room for a moment is refused with 503 and Retry-After. At least
    /// the 16M limit of one JSON body [default: 64M].
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    #[serde(default, with = "size", skip_serializing_if = "Option::is_none")]
    pub(super) max_buffered_bytes: Option<u64>,

    /// Stop a session unused for this long, e.g. `900` (seconds), `15m`, `1h 30m` [default: 15m].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, with = "duration", skip_serializing_if = "Option::is_none")]
    pub(super) idle_timeout: Option<Duration>,

    /// What happens to a session that idles out: `pause` (its files, packages, history and
    /// variables go to the session root's disk, and it resumes on its next request; a box
    /// that cannot be paused is stopped) or `stop` [default: pause]. A session's own
    /// `auto_pause` overrides it.
    #[arg(long, value_name = "WHAT", value_parser = ["pause", "stop"])]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) on_idle: Option<String>,

    /// The most disk paused sessions may take together, e.g. `20G`; past it the sessions
    /// paused longest are removed first [default: no bound].
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    #[serde(default, with = "size", skip_serializing_if = "Option::is_none")]
    pub(super) paused_disk_budget: Option<u64>,

    /// The most disk one key's paused sessions may take, e.g. `2G`; past it that key's
    /// sessions paused longest are removed first [default: no bound].
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    #[serde(default, with = "size", skip_serializing_if = "Option::is_none")]
    pub(super) paused_disk_per_key: Option<u64>,

    /// Accept the E2B SDK's debug mode (`E2B_DEBUG=true`: no key, the fixed sandbox
    /// `debug_sandbox_id`) from this machine only, acting as the key of this fingerprint (the
    /// first 12 hexadecimal digits of `printf %s "$KEY" | sha256sum`; `anonymous` with
    /// --no-auth) [default: debug mode is refused].
    #[arg(long, value_name = "FINGERPRINT")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) e2b_debug_as: Option<String>,

    /// The longest lifetime (`timeout`) a session may ask for, at creation or by extending
    /// it [default: 24h].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, with = "duration", skip_serializing_if = "Option::is_none")]
    pub(super) max_session_timeout: Option<Duration>,

    /// The lifetime of a session that asks for none [default: none; it lives until it idles out].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, with = "duration", skip_serializing_if = "Option::is_none")]
    pub(super) default_session_timeout: Option<Duration>,

    /// The largest file upload, e.g. `1073741824`, `512M`, `1G`. Keep it below the usable
    /// size of a working directory (ext4 keeps about 8 % of --workdir-size for itself): a
    /// larger upload fails with 507 when the disk fills [default: 512M, or half of
    /// --workdir-size when that is smaller].
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    #[serde(default, with = "size", skip_serializing_if = "Option::is_none")]
    pub(super) max_upload_bytes: Option<u64>,

    /// Cut off a client that sends no request body bytes for this long [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, with = "duration", skip_serializing_if = "Option::is_none")]
    pub(super) upload_timeout: Option<Duration>,

    /// The most client connections open at once; one more is answered 503 and closed at
    /// once [default: a quarter of the soft limit on open files].
    #[arg(long, value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) max_connections: Option<usize>,

    /// Close a connection that has no request in flight and sends nothing for this long,
    /// one that never sends a request included [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, with = "duration", skip_serializing_if = "Option::is_none")]
    pub(super) connection_idle_timeout: Option<Duration>,

    /// On SIGTERM/SIGINT, let running executions finish for this long before interrupting
    /// them [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, with = "duration", skip_serializing_if = "Option::is_none")]
    pub(super) shutdown_grace: Option<Duration>,

    /// On SIGTERM/SIGINT, drain for up to this long before shutting down: readiness
    /// (`/ready`) fails and new sessions are refused, the sessions the server has keep being
    /// served, and those not executing are paused (to the state directory, for the server
    /// that comes back on it) [default: 0s, no draining].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, with = "duration", skip_serializing_if = "Option::is_none")]
    pub(super) drain_period: Option<Duration>,

    /// The node this server runs as, put in every session id it mints (`<node>--<random>`)
    /// so that a proxy in front of several servers routes by the id alone; letters, digits
    /// and `-` [default: the host name's first label, e.g. a StatefulSet pod's name].
    #[arg(long, value_name = "NAME")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) node_id: Option<String>,

    /// Measure every session's box (CPU, memory, disk, network, processes) this often into
    /// its series, `GET /v1/sessions/{id}/metrics`; 0 turns sampling off (each request then
    /// measures), otherwise at least 1s [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, with = "duration", skip_serializing_if = "Option::is_none")]
    pub(super) metrics_interval: Option<Duration>,

    /// Kernels kept started and ready for new sessions; 0 turns the pool off [default: 2].
    #[arg(long, value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) pool_size: Option<usize>,

    /// How many kernels may be starting at once; further new sessions wait their turn
    /// [default: the number of CPUs, at least 2].
    #[arg(long, value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) max_concurrent_starts: Option<usize>,

    /// The kernel new sessions run when they do not ask for one [default: python3-lean].
    #[arg(long, value_name = "NAME")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) kernel: Option<String>,

    /// The Python interpreter for kernels [default: CODEBOX_PYTHON, else a managed environment].
    #[arg(long, value_name = "PATH")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) python: Option<PathBuf>,

    /// Kernel isolation: `auto` (bubblewrap, else Landlock, else none), `bubblewrap`,
    /// `landlock` or `none` [default: auto].
    #[arg(long, value_name = "MODE", value_parser = ["auto", "bubblewrap", "bwrap", "landlock", "none"])]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) isolation: Option<String>,

    /// Refuse to start kernels without isolation instead of stepping down the ladder.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "is_false")]
    pub(super) require_isolation: bool,

    /// Serve more than one API key even where kernels run without isolation (the `none`
    /// level, chosen or fallen back to). There, code of one key's session can read the
    /// server's files and processes and so reach other keys' sessions; without this flag
    /// such a server refuses to start.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "is_false")]
    pub(super) allow_weak_isolation: bool,

    /// Give kernels the host network (default: none, only a private loopback).
    #[arg(long, conflicts_with = "kernel_allow_host")]
    #[serde(default, skip_serializing_if = "is_false")]
    pub(super) kernel_network: bool,

    /// Let kernels reach this host (`name`, `name:port`, `*.domain`, an IP) over HTTP and
    /// HTTPS through a proxy, and nothing else; repeat for more hosts (in a config file:
    /// `kernel_allow_hosts`). Needs bubblewrap.
    #[arg(long, value_name = "HOST")]
    #[serde(default, rename = "kernel_allow_hosts", skip_serializing_if = "Vec::is_empty")]
    pub(super) kernel_allow_host: Vec<String>,

    /// Memory of one session (cgroup); RLIMIT_DATA is 90 % of it [default: 1G].
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    #[serde(default, with = "size", skip_serializing_if = "Option::is_none")]
    pub(super) memory_limit: Option<u64>,

    /// Processes and threads of one session (cgroup pids.max) [default: 256].
    #[arg(long, value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) pids_limit: Option<u64>,

    /// CPUs one session may use (cgroup quota), e.g. `0.5` [default: 1].
    #[arg(long, value_name = "CPUS")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) cpu_limit: Option<f64>,

    /// The largest file a kernel may write (RLIMIT_FSIZE) [default: 1G].
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    #[serde(default, with = "size", skip_serializing_if = "Option::is_none")]
    pub(super) file_size_limit: Option<u64>,

    /// Open files per kernel process (RLIMIT_NOFILE) [default: 1024].
    #[arg(long, value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) open_files_limit: Option<u64>,

    /// The largest single message a kernel may send; a kernel that sends a larger one is
    /// recycled before it reaches the server [default: 64M].
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    #[serde(default, with = "size", skip_serializing_if = "Option::is_none")]
    pub(super) max_message: Option<u64>,

    /// Size of a session's working directory (a sparse ext4 image; needs root) [default: 1G].
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    #[serde(default, with = "size", skip_serializing_if = "Option::is_none")]
    pub(super) workdir_size: Option<u64>,

    /// Size of a session's private /tmp [default: 256M].
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    #[serde(default, with = "size", skip_serializing_if = "Option::is_none")]
    pub(super) tmp_size: Option<u64>,

    /// Unprivileged uids for sessions, one each, as FIRST-LAST with both ends included
    /// [default: 200000-265535 when running as root].
    #[arg(long, value_name = "FIRST-LAST", value_parser = parse_uid_range)]
    #[serde(default, with = "uid_range", skip_serializing_if = "Option::is_none")]
    pub(super) session_uids: Option<Range<u32>>,

    /// Run every session's kernel as this server's user instead of a uid of its own.
    #[arg(long, conflicts_with = "session_uids")]
    #[serde(default, skip_serializing_if = "is_false")]
    pub(super) no_session_uids: bool,

    /// Do not put sessions in cgroups (memory, process and CPU limits then do not apply).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "is_false")]
    pub(super) no_cgroups: bool,

    /// Start a Python for every lean kernel instead of forking it from the fork server.
    /// Forked kernels start faster and share their imported modules' memory, and share the
    /// fork server's address layout and string hash seed with each other (docs/security.md).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "is_false")]
    pub(super) no_fork_server: bool,

    /// This server's own directory for session working directories and its record of live
    /// sessions. At start, whatever an earlier server left there (and under the session
    /// uids, and in session cgroups) is swept away; one server per directory [default:
    /// $CODEBOX_HOME/sessions, else /var/lib/codebox/sessions as root, else
    /// ~/.local/state/codebox/sessions].
    #[arg(long, value_name = "DIR")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) session_root: Option<PathBuf>,

    /// Log format on stderr: `text` or `json`. The level comes from RUST_LOG [default: text, info].
    #[arg(long, value_name = "FORMAT", value_parser = ["text", "json"])]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) log_format: Option<String>,

    /// Templates sessions may ask for, beside the built-ins (`python`, `python-ipykernel`, `python-minimal`,
    /// `bash`, `javascript`, `typescript`): config file tables `[templates.NAME]` with
    /// `description`, `kernel` (default python3-lean), `language` (default python for a Python
    /// kernel), `profile` (`data` or `minimal`, default minimal), `packages`, `env`,
    /// `limits` (`memory`, `cpus`, `processes`, `disk`) and `pool` (kernels kept ready). A
    /// table of a built-in's name with only `pool` keeps that built-in warm; with more, it
    /// redefines it. Not a flag.
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) templates: BTreeMap<String, TemplateOptions>,
}

// serde's `skip_serializing_if` passes the field by reference.
fn is_false(b: &bool) -> bool {
    !*b
}

/// A value of an option that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum OptionError {
    #[error("{0:?} is not a duration (try 30 for seconds, 30s, 15m, 1h 30m, 500ms)")]
    Duration(String),
    #[error("{0:?} is not a size (try 1073741824, 512M, 1G)")]
    Size(String),
    #[error("{0:?} is not a uid range (try 200000-265535: the first and the last uid)")]
    UidRange(String),
    #[error("{0:?}: the uid range must be above uid 0 and hold at least one uid")]
    EmptyUidRange(String),
}

/// `90` (a number is seconds, fractions allowed), else what `humantime` reads: `500ms`,
/// `30s`, `15m`, `1h 30m`.
pub(super) fn parse_duration(text: &str) -> Result<Duration, OptionError> {
    let t = text.trim();
    let parsed = match t.parse::<f64>() {
        Ok(seconds) => Duration::try_from_secs_f64(seconds).ok(),
        Err(_) => humantime::parse_duration(t).ok(),
    };
    parsed.ok_or_else(|| OptionError::Duration(text.to_owned()))
}

/// `1048576`, `512K`, `100M`, `1G` (powers of 1024; a trailing `B`/`iB` is allowed).
pub(super) fn parse_size(text: &str) -> Result<u64, OptionError> {
    let t = text.trim().trim_end_matches("iB").trim_end_matches(['B', 'b']);
    let (num, scale) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&t[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&t[..i], 1 << 30),
        Some((i, 't' | 'T')) => (&t[..i], 1 << 40),
        _ => (t, 1),
    };
    num.trim().parse::<u64>().ok().and_then(|n| n.checked_mul(scale)).ok_or_else(|| OptionError::Size(text.to_owned()))
}

/// `FIRST-LAST`, both included: `200000-265535` is the 65 536 uids `200_000..265_536`.
pub(super) fn parse_uid_range(text: &str) -> Result<Range<u32>, OptionError> {
    let bad = || OptionError::UidRange(text.to_owned());
    let (first, last) = text.split_once('-').ok_or_else(bad)?;
    let first: u32 = first.trim().parse().map_err(|_| bad())?;
    let last: u32 = last.trim().parse().map_err(|_| bad())?;
    if first == 0 || last < first || last == u32::MAX {
        return Err(OptionError::EmptyUidRange(text.to_owned()));
    }
    Ok(first..last + 1)
}

/// How a range of uids is written: `FIRST-LAST`, both included.
fn uid_range_text(range: &Range<u32>) -> String {
    format!("{}-{}", range.start, range.end.saturating_sub(1))
}

/// Durations in a file: a number of seconds, or text as [`parse_duration`] reads it.
mod duration {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Deserializer, Visitor};
    use serde::ser::Serializer;

    pub(super) fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = Option<Duration>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of seconds or a duration such as \"15m\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Some(Duration::from_secs(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(|v| Some(Duration::from_secs(v)))
                    .map_err(|_| E::custom(super::OptionError::Duration(v.to_string())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Duration::try_from_secs_f64(v)
                    .map(Some)
                    .map_err(|_| E::custom(super::OptionError::Duration(v.to_string())))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                super::parse_duration(v).map(Some).map_err(E::custom)
            }
        }
        d.deserialize_any(DurationVisitor)
    }
}

/// A `[templates.NAME]` table of the config file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TemplateOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) kernel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) language: Option<String>,
    /// `data` or `minimal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) profile: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) packages: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) limits: Option<TemplateLimits>,
    /// Kernels of the template kept started and ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) pool: Option<usize>,
}

impl TemplateOptions {
    /// Whether the table says nothing but its pool: it keeps a built-in warm.
    pub(super) fn is_pool_only(&self) -> bool {
        Self { pool: None, ..self.clone() } == Self::default()
    }
}

/// The `limits` of a `[templates.NAME]` table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TemplateLimits {
    #[serde(default, with = "size", skip_serializing_if = "Option::is_none")]
    pub(super) memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) cpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) processes: Option<u64>,
    #[serde(default, with = "size", skip_serializing_if = "Option::is_none")]
    pub(super) disk: Option<u64>,
}

/// Sizes in a file: a number of bytes, or text as [`parse_size`] reads it.
mod size {
    use std::fmt;

    use serde::de::{self, Deserializer, Visitor};
    use serde::ser::Serializer;

    pub(super) fn serialize<S: Serializer>(value: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(bytes) => s.serialize_u64(*bytes),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = Option<u64>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of bytes or a size such as \"512M\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Some(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v).map(Some).map_err(|_| E::custom(super::OptionError::Size(v.to_string())))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                super::parse_size(v).map(Some).map_err(E::custom)
            }
        }
        d.deserialize_any(SizeVisitor)
    }
}

/// Uid ranges in a file: text as [`parse_uid_range`] reads it.
mod uid_range {
    use std::ops::Range;

    use serde::de::{Deserialize, Deserializer, Error as _};
    use serde::ser::Serializer;

    pub(super) fn serialize<S: Serializer>(value: &Option<Range<u32>>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(range) => s.serialize_str(&super::uid_range_text(range)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Range<u32>>, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_uid_range(&text).map(Some).map_err(D::Error::custom)
    }
}

/// One layer of options (the config file, or the command line with the environment) as
/// figment data, named in the errors it causes.
struct Layer {
    name: &'static str,
    file: Option<PathBuf>,
    data: Dict,
}

impl Layer {
    fn new(name: &'static str, file: Option<&Path>, value: &impl Serialize) -> anyhow::Result<Self> {
        let data = Value::serialize(value)?.into_dict().context("options must be a table of keys and values")?;
        Ok(Self { name, file: file.map(Path::to_owned), data })
    }
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        // Keys are named as the file writes them, without figment's profile in front.
        let metadata = Metadata::named(self.name).interpolater(|_: &Profile, keys: &[&str]| keys.join("."));
        match &self.file {
            Some(path) => metadata.source(path.as_path()),
            None => metadata,
        }
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.data.clone()))
    }
}

/// The config file as a figment layer.
fn read_config_file(path: &Path) -> anyhow::Result<Layer> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut layer = if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
        let value: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {} as JSON", path.display()))?;
        Layer::new("JSON config file", Some(path), &value)?
    } else {
        let value: toml::Table =
            toml::from_str(&text).with_context(|| format!("parsing {} as TOML", path.display()))?;
        Layer::new("TOML config file", Some(path), &value)?
    };
    // A file names one key file as a string; as a list it is appended to, not replaced by,
    // the command line's.
    for list in ["api_key_file", "operator_key_file"] {
        if let Some(Value::String(tag, file)) = layer.data.get(list).cloned() {
            layer.data.insert(list.into(), Value::Array(tag, vec![Value::String(tag, file)]));
        }
    }
    Ok(layer)
}

/// The options from every place, layered: the config file, then the environment's API
/// keys, then the command line (clap has already put CODEBOX_SERVER_ADDR under its flag).
/// Later layers win, except that lists are appended to (`admerge`).
pub(super) fn layered(flags: ServeOptions, env_keys: Option<&str>) -> anyhow::Result<ServeOptions> {
    let mut figment = Figment::new();
    if let Some(path) = &flags.config {
        figment = figment.admerge(read_config_file(path)?);
    }
    if let Some(keys) = env_keys {
        let keys: Vec<&str> = keys.split(',').map(str::trim).filter(|k| !k.is_empty()).collect();
        let env = serde_json::json!({ "api_keys": keys });
        figment = figment.admerge(Layer::new("CODEBOX_SERVER_API_KEYS", None, &env)?);
    }
    figment = figment.admerge(Layer::new("the command line", None, &flags)?);
    figment.extract().map_err(|e| anyhow::anyhow!("{e}"))
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

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("1X").is_err());
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)), "a number is seconds");
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("1e300").is_err() && parse_duration("NaN").is_err() && parse_duration("inf").is_err());
    }

    #[test]
    fn a_uid_range_names_its_first_and_last_uid_and_the_help_shows_the_real_default() {
        assert_eq!(parse_uid_range("300000-300009"), Ok(300_000..300_010));
        assert_eq!(parse_uid_range("5-5"), Ok(5..6), "one uid");
        assert_eq!(parse_uid_range("200000-265535"), Ok(codebox_local::DEFAULT_UID_RANGE));
        assert!(parse_uid_range("5-4").is_err() && parse_uid_range("0-10").is_err());
        assert!(parse_uid_range("5").is_err() && parse_uid_range("1-4294967295").is_err());
        let default = uid_range_text(&codebox_local::DEFAULT_UID_RANGE);
        assert_eq!(default, "200000-265535");
        let help = <Cli as clap::CommandFactory>::command().render_long_help().to_string();
        assert!(help.contains(&format!("[default: {default} when running as root]")), "{help}");
    }
}

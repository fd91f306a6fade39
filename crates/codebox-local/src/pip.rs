//! `pip install` for a confined box: pip run under the box's own confinement and uid, with
//! the operator's pip settings and a network reaching only the package indexes; and the
//! check that lets only name-based requirements reach pip at all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use codebox_core::{CodeBoxError, CommandOutput, Result};
use tokio::process::Command;

use crate::boxprocess::{BoxProcess, collect};
use codebox_sandbox::{Allowlist, LoopbackProxy, NetProxy};
use codebox_sandbox::{InstallerNetwork, IsolationLevel};

/// Run `python -m pip install ... packages` inside the box's confinement: as the box's uid,
/// writing only to the working directory, into `target`. The operator's pip settings (index,
/// find-links, certificate; from pip.conf, the environment and the box's own variables)
/// reach pip, and local directories they name are readable; no configuration file the box
/// could write does.
///
/// pip reaches the network only through a proxy whose allowlist is the package index hosts
/// of those settings (and never a local address): in a bubblewrap box's private network
/// namespace (`proxy_run_dir`, a box with a network allowlist of its own: its kernel's
/// proxy; otherwise a proxy started for this install), or, in a Landlock box, on a port of
/// host loopback that its ruleset lets pip reach alone. At the `None` level pip has the
/// host network (`install_network`).
///
/// `box_process` gives the box's confinement, Python, environment, timeout and output limit.
pub(crate) async fn run_pip_install(
    box_process: &BoxProcess,
    target: &Path,
    packages: &[String],
    proxy_run_dir: Option<&Path>,
) -> Result<CommandOutput> {
    let BoxProcess { confinement, python, env, timeout, output_limit, scratch_dir, .. } = box_process;
    // The box's own variables are its owner's settings (a tenant sets none): they win.
    let host = std::env::vars().chain(env.iter().filter(|(k, _)| k.starts_with("PIP_")).cloned());
    let (mut pip_env, read_only) = pip_settings(host, &operator_pip_config());
    // Everything the proxy lets pip reach, decided before anything of the box runs.
    let indexes = || Allowlist::package_indexes(&pip_env);
    let level = confinement.level();
    let mut _proxy = None;
    let own_dir = if level == IsolationLevel::Bubblewrap && proxy_run_dir.is_none() {
        // A directory of the server's own (nothing of the box can swap the socket while it is
        // made), then the box's uid's alone.
        let dir = crate::workdir::new_temp_workdir(scratch_dir)?;
        _proxy = Some(NetProxy::start(&dir.path().join("net.sock"), indexes()?)?);
        confinement.adopt_run_dir(dir.path())?;
        Some(dir)
    } else {
        None
    };
    let mut _loopback = None;
    let network = match level {
        IsolationLevel::None => InstallerNetwork::Host,
        IsolationLevel::Bubblewrap => InstallerNetwork::ProxySocket(
            proxy_run_dir
                .or(own_dir.as_ref().map(codebox_sandbox::rmtree::OwnedDir::path))
                .expect("a proxy directory was made above"),
        ),
        IsolationLevel::Landlock => {
            let proxy = LoopbackProxy::start(indexes()?).await?;
            let port = proxy.port();
            _loopback = Some(proxy);
            InstallerNetwork::ProxyPort(port)
        }
        // A level this crate does not know yet has no installer network of its own.
        other => {
            return Err(CodeBoxError::unsupported(format!("install at the {other} isolation level")));
        }
    };
    // -I: nothing of the box (its current directory, PYTHONPATH) is imported by pip.
    let mut argv: Vec<String> = vec![python.to_string_lossy().into_owned(), "-I".to_owned()];
    match network {
        InstallerNetwork::ProxySocket(_) => argv.extend([
            "-c".to_owned(),
            format!(
                "{}\nimport runpy\nrunpy.run_module('pip', run_name='__main__', alter_sys=True)",
                crate::kernelspec::NET_FORWARDER
            ),
        ]),
        _ => argv.extend(["-m", "pip"].map(str::to_owned)),
    }
    argv.extend(
        ["install", "--disable-pip-version-check", "--no-input", "--no-cache-dir", "--target"].map(str::to_owned),
    );
    argv.push(target.to_string_lossy().into_owned());
    // After `--`: whatever a requirement looks like, pip takes it as one.
    argv.push("--".to_owned());
    argv.extend(packages.iter().cloned());
    match network {
        InstallerNetwork::Host => {}
        InstallerNetwork::ProxySocket(dir) => {
            pip_env.retain(|(k, _)| !k.to_ascii_lowercase().ends_with("_proxy"));
            pip_env.extend(codebox_sandbox::proxy_env(&dir.join("net.sock")));
        }
        InstallerNetwork::ProxyPort(_) => {
            pip_env.retain(|(k, _)| !k.to_ascii_lowercase().ends_with("_proxy"));
            pip_env.extend(_loopback.as_ref().map(LoopbackProxy::env).unwrap_or_default());
        }
    }
    let mut all: Vec<(String, String)> = env.iter().filter(|(k, _)| !k.starts_with("PIP_")).cloned().collect();
    all.extend(pip_env);
    // pip reads no configuration file: not one the box wrote in its HOME or working
    // directory; the operator's pip.conf settings came in as variables above.
    all.push(("PIP_CONFIG_FILE".to_owned(), "/dev/null".to_owned()));
    let prepared = confinement.prepare_installer(&argv, &all, python, &read_only, network)?;
    let mut cmd = Command::from(prepared.command);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0).kill_on_drop(true);
    let spawned = cmd.spawn();
    drop(prepared.guard);
    let child = spawned.map_err(|e| CodeBoxError::io("running pip", e))?;
    let out = collect(child, "pip", *timeout, *output_limit).await;
    drop(own_dir);
    out
}

/// The pip settings the sandboxed pip gets, by their `PIP_*` names.
const PIP_SETTINGS: &[(&str, &str)] = &[
    ("index-url", "PIP_INDEX_URL"),
    ("extra-index-url", "PIP_EXTRA_INDEX_URL"),
    ("find-links", "PIP_FIND_LINKS"),
    ("trusted-host", "PIP_TRUSTED_HOST"),
    ("timeout", "PIP_DEFAULT_TIMEOUT"),
    ("default-timeout", "PIP_DEFAULT_TIMEOUT"),
    ("cert", "PIP_CERT"),
    ("client-cert", "PIP_CLIENT_CERT"),
];

/// The operator's pip configuration files as pip would read them for the server's user
/// (site-wide, then the user's; `PIP_CONFIG_FILE` last): the settings of [`PIP_SETTINGS`]
/// from their `[global]` and `[install]` sections, later files overriding earlier ones.
fn operator_pip_config() -> Vec<(String, String)> {
    let mut files: Vec<PathBuf> = vec!["/etc/pip.conf".into(), "/etc/xdg/pip/pip.conf".into()];
    if let Some(home) = std::env::var_os("HOME").map(PathBuf::from) {
        files.extend([home.join(".pip/pip.conf"), home.join(".config/pip/pip.conf")]);
    }
    files.extend(std::env::var_os("PIP_CONFIG_FILE").map(PathBuf::from));
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for text in files.iter().filter_map(|f| std::fs::read_to_string(f).ok()) {
        for (k, v) in parse_pip_conf(&text) {
            out.insert(k, v);
        }
    }
    out.into_iter().collect()
}

/// The [`PIP_SETTINGS`] of one pip.conf text, by their `PIP_*` names (continuation lines
/// of a multi-line value joined with spaces).
fn parse_pip_conf(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut section = String::new();
    let mut current: Option<usize> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with(['#', ';']) {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(i) = current {
                if !out[i].1.is_empty() {
                    out[i].1.push(' ');
                }
                out[i].1.push_str(trimmed);
            }
            continue;
        }
        current = None;
        if let Some(name) = trimmed.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            section = name.trim().to_owned();
            continue;
        }
        let Some((key, value)) = trimmed.split_once(['=', ':']) else { continue };
        if !matches!(section.as_str(), "global" | "install") {
            continue;
        }
        let key = key.trim().replace('_', "-");
        if let Some((_, env)) = PIP_SETTINGS.iter().find(|(k, _)| *k == key) {
            out.retain(|(k, _)| k != env);
            out.push(((*env).to_owned(), value.trim().to_owned()));
            current = Some(out.len() - 1);
        }
    }
    out
}

/// Archive suffixes pip takes for a local file even when the requirement has no `/`.
const ARCHIVE_SUFFIXES: &[&str] =
    &[".whl", ".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tar.xz", ".txz", ".tlz", ".tar.lz", ".tar.lzma"];

/// Refuse anything but a name-based requirement (PEP 508): a project name, optional
/// `[extras]`, optional version specifiers, optional `; markers`. Paths, `file:` and other
/// URLs, `name @ url` direct references and pip options (`-r file`, `--index-url ...`) are
/// refused before pip runs, so pip fetches only from the operator's package indexes and
/// never builds a source tree the box wrote.
pub(crate) fn check_requirement(spec: &str) -> Result<()> {
    let refuse = || {
        CodeBoxError::invalid(format!(
            "{spec:?} is not a package requirement: install takes package names with optional extras, \
             version specifiers and markers (PEP 508); paths, URLs, `name @ url` and pip options are refused"
        ))
    };
    let (requirement, marker) = match spec.split_once(';') {
        Some((r, m)) => (r, Some(m)),
        None => (spec, None),
    };
    let rest = requirement.trim_start();
    let name_len =
        rest.find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))).unwrap_or(rest.len());
    let name = &rest[..name_len];
    let name_ok = !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && !ARCHIVE_SUFFIXES.iter().any(|s| name.to_ascii_lowercase().ends_with(s));
    if !name_ok {
        return Err(refuse());
    }
    let mut rest = rest[name_len..].trim_start();
    if let Some(after) = rest.strip_prefix('[') {
        let (extras, after) = after.split_once(']').ok_or_else(refuse)?;
        let extra_ok = |e: &str| {
            let e = e.trim();
            !e.is_empty() && e.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        };
        if !extras.trim().is_empty() && !extras.split(',').all(extra_ok) {
            return Err(refuse());
        }
        rest = after.trim_start();
    }
    if let Some(inner) = rest.strip_prefix('(') {
        rest = inner.strip_suffix(')').or_else(|| inner.trim_end().strip_suffix(')')).ok_or_else(refuse)?;
    }
    if !rest.trim().is_empty() && !rest.split(',').all(is_version_clause) {
        return Err(refuse());
    }
    // Markers compare environment names with quoted versions: nothing in them names a place.
    let marker_ok = |m: &str| {
        !m.trim().is_empty() && m.chars().all(|c| c.is_ascii_alphanumeric() || " \t_.'\"<>=!~()-,*+".contains(c))
    };
    if marker.is_some_and(|m| !marker_ok(m)) {
        return Err(refuse());
    }
    Ok(())
}

/// `op version`, as in `>=1.2`, `== 2.*` or `~=3.0`.
fn is_version_clause(clause: &str) -> bool {
    let clause = clause.trim();
    let ops = ["===", "~=", "==", "!=", "<=", ">=", "<", ">"];
    let Some(version) = ops.iter().find_map(|op| clause.strip_prefix(op)) else { return false };
    let version = version.trim();
    !version.is_empty()
        && version.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '*' | '+' | '!' | '_' | '-'))
}

/// The pip settings a sandboxed pip gets (the host's pip.conf ones in `config`, overridden
/// by the host's `PIP_*` variables and joined by its proxy variables), and the local paths
/// they name.
fn pip_settings(
    host: impl Iterator<Item = (String, String)>,
    config: &[(String, String)],
) -> (Vec<(String, String)>, Vec<PathBuf>) {
    const PROXIES: &[&str] = &["HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"];
    let mut env: BTreeMap<String, String> = config.iter().cloned().collect();
    for (k, v) in host {
        if PIP_SETTINGS.iter().any(|(_, e)| *e == k) || PROXIES.contains(&k.as_str()) {
            env.insert(k, v);
        }
    }
    let mut paths = Vec::new();
    for (k, v) in &env {
        if matches!(k.as_str(), "PIP_FIND_LINKS" | "PIP_CERT" | "PIP_CLIENT_CERT") {
            paths.extend(
                v.split_whitespace()
                    .map(|p| PathBuf::from(p.strip_prefix("file://").unwrap_or(p)))
                    .filter(|p| p.is_absolute() && p.exists()),
            );
        }
    }
    (env.into_iter().collect(), paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operators_pip_conf_reaches_pip_under_the_variables_names() {
        let text = "[global]\nindex-url = https://mirror.example.org/simple\ncert=/etc/ssl/x.pem\n\
                    find-links =\n    /opt/wheels\n    https://w.example.org/\n[freeze]\ntimeout = 1\n\
                    [install]\ntrusted_host: mirror.example.org\nuser = true\n";
        let conf = parse_pip_conf(text);
        let expected = [
            ("PIP_INDEX_URL", "https://mirror.example.org/simple"),
            ("PIP_CERT", "/etc/ssl/x.pem"),
            ("PIP_FIND_LINKS", "/opt/wheels https://w.example.org/"),
            ("PIP_TRUSTED_HOST", "mirror.example.org"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        assert_eq!(conf, expected);
        // The environment wins over the file.
        let host = [("PIP_INDEX_URL".to_owned(), "https://other.example.org/simple".to_owned())];
        let (env, _) = pip_settings(host.into_iter(), &conf);
        assert!(env.contains(&("PIP_INDEX_URL".to_owned(), "https://other.example.org/simple".to_owned())));
        assert!(env.contains(&("PIP_CERT".to_owned(), "/etc/ssl/x.pem".to_owned())));
    }

    #[test]
    fn only_name_based_requirements_reach_pip() {
        let good = [
            "six",
            "Six_pkg.x-y",
            "requests[socks, security] >= 2.0, < 3",
            "numpy==1.26.*",
            "pkg (>=1.0)",
            "pkg~=1.4; python_version >= '3.8' and sys_platform == \"linux\"",
            "pkg[]",
        ];
        for spec in good {
            check_requirement(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
        }
        let bad = [
            "",
            " ",
            "./pkg",
            "pkg/",
            "/abs/pkg",
            ".",
            "..",
            "~/pkg",
            "C:\\pkg",
            "file:///tmp/pkg",
            "http://127.0.0.1:8000/x.whl",
            "pkg @ http://127.0.0.1:8000/x.whl",
            "pkg@file:///tmp/x",
            "git+https://example.org/x.git",
            "-r",
            "--index-url",
            "-e.",
            "pkg.whl",
            "pkg-1.0.tar.gz",
            "pkg ==1.0 --hash=sha256:00",
            "pkg; python_version >= '3' @ http://x",
            "pkg; url == 'http://x/'",
            "pkg[a/b]",
            "pkg >= 1.0 /tmp",
            "pkg\n-r x",
        ];
        for spec in bad {
            let err = check_requirement(spec).expect_err(spec);
            assert_eq!(err.kind(), codebox_core::ErrorKind::InvalidInput, "{spec}");
            assert!(err.to_string().contains("is not a package requirement"), "{spec}: {err}");
        }
    }

    #[test]
    fn pip_gets_only_the_operators_pip_settings_and_their_local_paths() {
        let dir = tempfile::tempdir().unwrap();
        let host = [
            ("PIP_FIND_LINKS", format!("{} https://example.org/wheels /does/not/exist", dir.path().display())),
            ("HTTPS_PROXY", "http://proxy:3128".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "hunter2".to_owned()),
            ("PATH", "/usr/bin".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v));
        let (env, paths) = pip_settings(host.into_iter(), &[]);
        let keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["HTTPS_PROXY", "PIP_FIND_LINKS"]);
        assert_eq!(paths, [dir.path().to_owned()]);
    }
}

//! The probe of the ladder's top rung, a CRIU checkpoint of a kernel's process: whether
//! `criu` is installed, whether it works on this machine's kernel at all (`criu check`), and
//! why the rung is not taken, by name, for the note of every context a pause reports.
//!
//! Measured (`examples/criu_probe.rs`, Debian 12's criu 3.17.1 on Linux 6.18): `criu check`
//! and `criu dump` fail before they look at any process, at every isolation level (none,
//! Landlock, bubblewrap with a session uid and cgroup) and for both Python kernels, with
//! `vdso: Unexpected rt vDSO area bounds` (the kernel maps its vDSO data as `[vvar]` and
//! `[vvar_vclock]`, a layout that criu release does not parse). Where `criu check` passes, a
//! checkpoint is still not taken: a confined kernel's ZeroMQ connections to this process and
//! bubblewrap's nested namespaces are not what a checkpoint of the kernel alone can carry,
//! and that has not been measured to work.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::OnceCell;

/// How long `criu --version` or `criu check` may take before the probe gives up on it.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the probe found, kept for the process's life: neither the kernel nor the installed
/// criu changes under a running box, and `criu check` need not run at every pause.
static NOTE: OnceCell<String> = OnceCell::const_new();

/// Why a CRIU checkpoint is not the rung used on this machine, in plain words, naming criu's
/// own errors when it does not work here.
pub(crate) async fn note() -> String {
    NOTE.get_or_init(probe).await.clone()
}

async fn probe() -> String {
    let Some(criu) = on_path("criu") else {
        return "criu is not installed: the namespace was saved with a pickler".to_owned();
    };
    let version = match output(&criu, "--version").await {
        Ok((_, text)) => text.lines().find_map(|l| l.strip_prefix("Version:")).map(|v| v.trim().to_owned()),
        Err(_) => None,
    };
    let criu_name = version.map_or_else(|| criu.display().to_string(), |v| format!("criu {v}"));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    match output(&criu, "check").await {
        Ok((true, _)) => format!(
            "{criu_name} works on this kernel (`criu check` passes), but a confined kernel is not \
             checkpointed: its ZeroMQ connections to this process and its sandbox's namespaces \
             would not come back with it; the namespace was saved with a pickler"
        ),
        Ok((false, text)) => format!(
            "{criu_name} cannot checkpoint any process on this kernel (Linux {}): `criu check` fails: {}; \
             the namespace was saved with a pickler",
            kernel.trim(),
            failure(&text)
        ),
        Err(why) => format!("{criu_name} could not be probed ({why}): the namespace was saved with a pickler"),
    }
}

/// The first `name` on `PATH` that is a file.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|c| c.is_file()))
}

/// Run `criu <arg>`: whether it succeeded, and its output and error output together.
async fn output(criu: &PathBuf, arg: &str) -> std::io::Result<(bool, String)> {
    let run =
        tokio::process::Command::new(criu).arg(arg).stdin(std::process::Stdio::null()).kill_on_drop(true).output();
    let out = tokio::time::timeout(PROBE_TIMEOUT, run).await.map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::TimedOut, format!("`criu {arg}` took over {PROBE_TIMEOUT:?}"))
    })??;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

/// criu's own reasons in a failed run's output: its `Error (file:line): message` lines,
/// without the location or a closing full stop, leaving out the exits of the module probes it runs first (they
/// fail harmlessly where a module is built in), joined by `; `.
fn failure(text: &str) -> String {
    let reasons: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once("Error (").map(|(_, rest)| rest))
        .map(|rest| rest.split_once("): ").map_or(rest, |(_, message)| message).trim().trim_end_matches('.'))
        .filter(|m| !m.is_empty() && !m.starts_with("exited, status="))
        .collect();
    if reasons.is_empty() {
        let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output");
        return last.trim().to_owned();
    }
    reasons.join("; ")
}

#[cfg(test)]
mod tests {
    use super::failure;

    /// `criu check` of criu 3.17.1 on Linux 6.18, as measured.
    const MEASURED: &str = "\
Error (criu/util.c:642): exited, status=1
Error (criu/util.c:642): exited, status=1
Error (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds
Error (criu/vdso.c:613): vdso: Failed to fill self vdso symtable
Error (criu/kerndat.c:1615): kerndat_vdso_fill_symtable failed when initializing kerndat.
Error (criu/crtools.c:260): Could not initialize kernel features detection.
";

    #[test]
    fn a_failed_check_is_named_by_criu_own_errors_without_the_module_probes() {
        assert_eq!(
            failure(MEASURED),
            "vdso: Unexpected rt vDSO area bounds; vdso: Failed to fill self vdso symtable; \
             kerndat_vdso_fill_symtable failed when initializing kerndat; \
             Could not initialize kernel features detection"
        );
    }

    #[test]
    fn a_log_with_timestamps_reads_the_same() {
        let logged = "(00.006601) Error (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds\n";
        assert_eq!(failure(logged), "vdso: Unexpected rt vDSO area bounds");
    }

    #[test]
    fn a_failure_without_error_lines_is_its_last_line() {
        assert_eq!(failure("Looks bad\n  must be run as root  \n\n"), "must be run as root");
        assert_eq!(failure(""), "no output");
    }
}

//! What isolation this machine allows, probed once per process.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};

use landlock::{ABI, Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr};

use crate::error::{BwrapUnavailable, LandlockUnavailable};

/// The result of probing this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The `bwrap` that runs an unprivileged user-namespace sandbox here, or why none does.
    pub bubblewrap: Result<PathBuf, BwrapUnavailable>,
    /// The Landlock ABI version, or why Landlock is not available.
    pub landlock: Result<u32, LandlockUnavailable>,
}

/// Probe this machine (once; later calls return the same answer).
///
/// bubblewrap works when `bwrap` (from `CODEBOX_BWRAP` or `PATH`) runs `true` with a user
/// namespace, all namespaces unshared and a minimal root; Landlock works when a ruleset can
/// be created.
pub fn probe() -> &'static Probe {
    static PROBE: OnceLock<Probe> = OnceLock::new();
    PROBE.get_or_init(|| {
        let probe = Probe { bubblewrap: probe_bwrap(), landlock: landlock_abi() };
        tracing::debug!(?probe, "isolation probe");
        probe
    })
}

/// Where `bwrap` is: `CODEBOX_BWRAP`, else the first `bwrap` on `PATH`, else the usual places.
pub(crate) fn find_bwrap() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CODEBOX_BWRAP").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
        .map(|d| d.join("bwrap"))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// Find `bwrap` and check that it works ([`check_bwrap`]).
pub(crate) fn probe_bwrap() -> Result<PathBuf, BwrapUnavailable> {
    let bwrap = find_bwrap().ok_or(BwrapUnavailable::NotFound)?;
    check_bwrap(&bwrap).map(|()| bwrap)
}

/// Run `bwrap` as a kernel would be run, with `true` for the kernel.
pub(crate) fn check_bwrap(bwrap: &Path) -> Result<(), BwrapUnavailable> {
    let mut args: Vec<String> =
        ["--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent"].map(String::from).to_vec();
    args.extend(super::bwrap::system_mounts().into_iter().map(|a| a.to_string_lossy().into_owned()));
    args.extend(["--proc", "/proc", "--dev", "/dev", "--cap-drop", "ALL", "--remount-ro", "/"].map(String::from));
    args.push("true".into());
    let out = Command::new(bwrap)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| BwrapUnavailable::NotRunnable { path: bwrap.to_owned(), source: Arc::new(e) })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    let userns_restricted = stderr.contains("Permission denied") || stderr.contains("RTM_NEWADDR");
    Err(BwrapUnavailable::Failed { path: bwrap.to_owned(), status: out.status, stderr, userns_restricted })
}

/// The Landlock ABI version of the running kernel, or why there is none.
pub(crate) fn landlock_abi() -> Result<u32, LandlockUnavailable> {
    let abis = [ABI::V7, ABI::V6, ABI::V5, ABI::V4, ABI::V3, ABI::V2, ABI::V1];
    for abi in abis {
        let created = Ruleset::default()
            .set_compatibility(CompatLevel::HardRequirement)
            .handle_access(AccessFs::from_all(abi))
            .and_then(|r| r.create());
        if created.is_ok() {
            return Ok(abi as u32);
        }
    }
    Err(LandlockUnavailable::NotEnabled)
}

#[cfg(test)]
mod tests {
    use super::*;

    // This machine kind (and CI) has bubblewrap with unprivileged user namespaces and
    // Landlock: the probe must find both.
    #[test]
    fn this_machine_has_bubblewrap_and_landlock() {
        let p = probe();
        let bwrap = p.bubblewrap.as_ref().expect("bwrap works here (CI installs bubblewrap)");
        assert!(bwrap.ends_with("bwrap"));
        assert!(*p.landlock.as_ref().expect("Landlock is enabled here") >= 1);
    }

    #[test]
    fn a_broken_bwrap_is_reported_with_its_error() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("bwrap");
        std::fs::write(&fake, "#!/bin/sh\necho 'setting up uid map: Permission denied' >&2\nexit 1\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = check_bwrap(&fake).unwrap_err();
        assert!(matches!(err, BwrapUnavailable::Failed { userns_restricted: true, .. }), "{err:?}");
        let err = err.to_string();
        assert!(err.contains("Permission denied") && err.contains("AppArmor"), "{err}");
        let err = check_bwrap(&dir.path().join("missing")).unwrap_err();
        assert!(std::error::Error::source(&err).is_some(), "the start failure is kept: {err:?}");
        let err = err.to_string();
        assert!(err.contains("could not run"), "{err}");
    }
}

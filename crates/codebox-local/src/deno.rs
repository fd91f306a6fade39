//! Deno for the `deno` kernel (JavaScript and TypeScript boxes): found through `CODEBOX_DENO`,
//! or provisioned on first use into a managed directory beside the managed Python.
//!
//! Deno comes from the npm registry's `deno` package, as its platform package
//! (`@deno/linux-x64-glibc`, `@deno/linux-arm64-glibc`) at a pinned version. The tarball is
//! fetched by a small script under a Python this machine already has (its `urllib` uses the
//! system's CA certificates, so this crate needs no TLS of its own), checked against the
//! `sha512` integrity the registry publishes for that version before anything of it is used,
//! and unpacked to `<codebox home>/deno/<version>/deno`. The build holds a lock file, so
//! concurrent first uses download once, and reports its steps as [`ProvisionEvent`]s like
//! the Python environment's build.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use base64::Engine as _;
use codebox_core::{CodeBoxError, Result};
use sha2::{Digest, Sha512};

use crate::progress::{ProgressFn, ProvisionEvent, ProvisionStep, Reporter};
use crate::python::Provision;

/// The Deno version codebox provisions.
pub const DENO_VERSION: &str = "2.9.6";

/// The registry packages are fetched from unless `CODEBOX_NPM_REGISTRY` names a mirror.
const DEFAULT_REGISTRY: &str = "https://registry.npmjs.org";

/// The fetch and unpack script, run by a base Python (`fetch URL DEST`, `unpack TGZ DEST`).
const FETCH_SCRIPT: &str = include_str!("deno/fetch.py");

/// The program a `deno` kernel runs under `deno eval`: it starts `deno jupyter --kernel`,
/// carrying each channel between the Unix socket codebox expects and the kernel's TCP port
/// when the kernel must be reached over IPC (Deno's kernel speaks only TCP).
pub(crate) const KERNEL_BRIDGE: &str = include_str!("deno/bridge.js");

/// The platform package of one architecture, with the integrity the registry publishes for
/// [`DENO_VERSION`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PlatformPackage {
    /// The package's name without its `@deno/` scope: `linux-x64-glibc`.
    name: &'static str,
    /// `sha512-<base64>`, from the registry's metadata (`dist.integrity`).
    integrity: &'static str,
}

impl PlatformPackage {
    /// The package for this machine's architecture.
    fn for_this_machine() -> Result<Self> {
        match std::env::consts::ARCH {
            "x86_64" => Ok(Self {
                name: "linux-x64-glibc",
                integrity: "sha512-3md4TKLCuzsLDmfOoC5KN7NAZaxSVkMgm64vg6foD00JBADCpYS2/5QqXfzgnP5ZQz3iLP9vBQJtEgc116OAoQ==",
            }),
            "aarch64" => Ok(Self {
                name: "linux-arm64-glibc",
                integrity: "sha512-poqhoH9B3nYloigEMPT5t8HY+wBeiuea1An5Q7fqgJzP0SYmWsoS/oUnWO/pEiA4ofzIBy1Elt/in58xKtxEoQ==",
            }),
            other => Err(CodeBoxError::unsupported(format!(
                "no Deno package for the {other} architecture: set CODEBOX_DENO to a Deno {DENO_VERSION} binary"
            ))),
        }
    }

    /// The tarball's address under `registry`.
    fn tarball_url(&self, registry: &str) -> String {
        format!("{}/@deno/{name}/-/{name}-{DENO_VERSION}.tgz", registry.trim_end_matches('/'), name = self.name)
    }
}

/// Why a downloaded tarball was refused.
#[derive(Debug, thiserror::Error)]
pub enum IntegrityError {
    /// The expected integrity is not a `sha512-<base64>` string.
    #[error("the integrity {0:?} is not a sha512-<base64> string")]
    Malformed(String),
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The file's digest is not the published one: a corrupted or tampered download.
    #[error("{path} does not match its published integrity: expected {expected}, got {actual}")]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// The published integrity.
        expected: String,
        /// The file's own.
        actual: String,
    },
}

/// Check that the file at `path` has the Subresource Integrity `integrity`
/// (`sha512-<base64>`, as npm publishes it).
pub fn verify_integrity(path: &Path, integrity: &str) -> std::result::Result<(), IntegrityError> {
    let expected = integrity.strip_prefix("sha512-").ok_or_else(|| IntegrityError::Malformed(integrity.to_owned()))?;
    let expected_digest = base64::engine::general_purpose::STANDARD
        .decode(expected)
        .ok()
        .filter(|d| d.len() == 64)
        .ok_or_else(|| IntegrityError::Malformed(integrity.to_owned()))?;
    let read_error = |source| IntegrityError::Read { path: path.to_owned(), source };
    let mut file = std::fs::File::open(path).map_err(read_error)?;
    let mut hasher = Sha512::new();
    std::io::copy(&mut file, &mut hasher).map_err(read_error)?;
    let actual = hasher.finalize();
    if actual.as_slice() == expected_digest.as_slice() {
        return Ok(());
    }
    Err(IntegrityError::Mismatch {
        path: path.to_owned(),
        expected: integrity.to_owned(),
        actual: format!("sha512-{}", base64::engine::general_purpose::STANDARD.encode(actual)),
    })
}

/// The directory of managed Deno versions: `deno` beside the managed Python environment
/// (`$CODEBOX_HOME/deno`, `/var/lib/codebox/deno` for root, else under the user's data
/// directory). Each version is a directory of its own holding the `deno` binary.
pub fn managed_deno_dir() -> PathBuf {
    crate::python::managed_python_dir().with_file_name("deno")
}

/// Where the managed binary of [`DENO_VERSION`] is, once provisioned.
fn managed_binary(version_dir: &Path) -> PathBuf {
    version_dir.join("deno")
}

/// The Deno binary a `deno` kernel runs: `CODEBOX_DENO`, else the managed one, built first
/// when `provision` allows. Blocking: run it off the async threads.
pub(crate) fn resolve(provision: Provision, python: &Path, progress: Option<&ProgressFn>) -> Result<PathBuf> {
    let version_dir = managed_deno_dir().join(DENO_VERSION);
    resolve_in(from_env(), &version_dir, provision, python, progress)
}

fn resolve_in(
    from_env: Option<PathBuf>,
    version_dir: &Path,
    provision: Provision,
    python: &Path,
    progress: Option<&ProgressFn>,
) -> Result<PathBuf> {
    if let Some(deno) = from_env {
        return check_binary(&deno, "CODEBOX_DENO");
    }
    let binary = managed_binary(version_dir);
    if binary.is_file() {
        return Ok(binary);
    }
    if provision == Provision::Off {
        return Err(CodeBoxError::kernel_start(format!(
            "no Deno for the deno kernel: set CODEBOX_DENO to a Deno binary, or allow provisioning \
             so codebox fetches Deno {DENO_VERSION} into {}",
            version_dir.display()
        )));
    }
    provision_with(version_dir, &PlatformPackage::for_this_machine()?, &registry(), python, progress)?;
    Ok(binary)
}

/// The Deno binary already there (`CODEBOX_DENO` or the managed one), without building
/// anything.
pub(crate) fn installed() -> Result<PathBuf> {
    if let Some(deno) = from_env() {
        return Ok(deno);
    }
    let binary = managed_binary(&managed_deno_dir().join(DENO_VERSION));
    if binary.is_file() {
        return Ok(binary);
    }
    Err(CodeBoxError::kernel_start(format!(
        "Deno {DENO_VERSION} is not provisioned yet ({} does not exist): start a box with the deno kernel, \
         or set CODEBOX_DENO",
        binary.display()
    )))
}

fn from_env() -> Option<PathBuf> {
    std::env::var_os("CODEBOX_DENO").filter(|v| !v.is_empty()).map(PathBuf::from)
}

fn registry() -> String {
    std::env::var("CODEBOX_NPM_REGISTRY").ok().filter(|v| !v.is_empty()).unwrap_or_else(|| DEFAULT_REGISTRY.to_owned())
}

/// Check (once per process for each binary that passes) that `deno` runs.
fn check_binary(deno: &Path, origin: &str) -> Result<PathBuf> {
    static CHECKED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    if CHECKED.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|p| p == deno) {
        return Ok(deno.to_owned());
    }
    match Command::new(deno).arg("--version").stdin(std::process::Stdio::null()).output() {
        Ok(o) if o.status.success() => {
            CHECKED.lock().unwrap_or_else(|e| e.into_inner()).push(deno.to_owned());
            Ok(deno.to_owned())
        }
        Ok(o) => Err(CodeBoxError::kernel_start(format!(
            "the Deno from {origin} ({}) fails `deno --version`: {}",
            deno.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        ))),
        Err(e) => {
            Err(CodeBoxError::kernel_start(format!("the Deno from {origin} ({}) cannot be run: {e}", deno.display())))
        }
    }
}

/// A Python for commands and for fetching Deno: the given one (the builder's or
/// `CODEBOX_PYTHON`), else the managed environment's when it exists, else the system's
/// `python3`. A `deno` box needs no ipykernel, so nothing is provisioned for it.
pub(crate) fn base_python(explicit: Option<&Path>) -> Result<PathBuf> {
    let from_env = std::env::var_os("CODEBOX_PYTHON").filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(p) = explicit.map(Path::to_path_buf).or(from_env) {
        return Ok(p);
    }
    let managed = crate::python::managed_python_dir().join("bin/python");
    let candidates = [managed, PathBuf::from("/usr/bin/python3"), PathBuf::from("/usr/local/bin/python3")];
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        CodeBoxError::kernel_start(
            "a deno box needs a python3 for its commands and to fetch Deno: install python3 or set CODEBOX_PYTHON",
        )
    })
}

/// Provision Deno [`DENO_VERSION`] into `version_dir` (`<managed_deno_dir>/<version>`) from
/// `CODEBOX_NPM_REGISTRY` or the npm registry, fetching with `python`; nothing happens when
/// it is there already.
pub fn provision_deno_at(version_dir: &Path, python: &Path, progress: Option<&ProgressFn>) -> Result<()> {
    provision_with(version_dir, &PlatformPackage::for_this_machine()?, &registry(), python, progress)
}

/// The build: download, verify, unpack, each a reported step, under a lock beside
/// `version_dir`. The binary appears at its final path only once it is complete, so its
/// presence is the ready mark.
fn provision_with(
    version_dir: &Path,
    package: &PlatformPackage,
    registry: &str,
    python: &Path,
    progress: Option<&ProgressFn>,
) -> Result<()> {
    let reporter = Reporter::new(progress);
    let parent = version_dir.parent().unwrap_or(Path::new("/"));
    create_readable_dirs(parent)?;
    let lock_name = version_dir.file_name().and_then(|n| n.to_str()).unwrap_or("deno");
    let lock_path = parent.join(format!(".{lock_name}.lock"));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| CodeBoxError::io(format!("opening {}", lock_path.display()), e))?;
    let started = Instant::now();
    let waited = crate::python::lock_exclusive(&lock, version_dir, &lock_path, &reporter)?;
    let binary = managed_binary(version_dir);
    if binary.is_file() {
        if waited {
            reporter.report(ProvisionEvent::Finished { dir: version_dir.to_owned(), elapsed: started.elapsed() });
        }
        return Ok(());
    }
    create_readable_dirs(version_dir)?;
    // A build that died half-way leaves its partial files here; start them afresh.
    let work = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(version_dir)
        .map_err(|e| CodeBoxError::io(format!("making a download directory in {}", version_dir.display()), e))?;
    let tarball = work.path().join("deno.tgz");
    let unpacked = work.path().join("deno");
    let url = package.tarball_url(registry);
    let total = 3;
    reporter.report(ProvisionEvent::Started { dir: version_dir.to_owned(), total });
    let step = |index: usize, name: &str, description: String| ProvisionStep {
        name: name.to_owned(),
        description,
        index,
        total,
    };

    let download = step(1, "download", format!("downloading Deno {DENO_VERSION} from {url}"));
    run_step(&reporter, started, download, |s| {
        let mut cmd = Command::new(python);
        cmd.args(["-I", "-S", "-c", FETCH_SCRIPT, "fetch", &url]).arg(&tarball);
        crate::python::run_logged(cmd, "fetching Deno", s, &reporter)
    })?;

    let verify = step(2, "verify", format!("checking the tarball against {}", package.integrity));
    run_step(&reporter, started, verify, |_| {
        verify_integrity(&tarball, package.integrity).map_err(|e| {
            CodeBoxError::kernel_start(format!("refusing the Deno download from {url}: {e}")).with_source(e)
        })
    })?;

    let unpack = step(3, "unpack", format!("unpacking deno into {}", version_dir.display()));
    run_step(&reporter, started, unpack, |s| {
        let mut cmd = Command::new(python);
        cmd.args(["-I", "-S", "-c", FETCH_SCRIPT, "unpack"]).arg(&tarball).arg(&unpacked);
        crate::python::run_logged(cmd, "unpacking Deno", s, &reporter)?;
        set_mode(&unpacked, 0o755)?;
        std::fs::rename(&unpacked, &binary)
            .map_err(|e| CodeBoxError::io(format!("moving deno to {}", binary.display()), e))
    })?;
    drop(work);
    reporter.report(ProvisionEvent::Finished { dir: version_dir.to_owned(), elapsed: started.elapsed() });
    Ok(())
}

/// Run one step between its `StepStarted` and `StepFinished` events.
fn run_step(
    reporter: &Reporter<'_>,
    started: Instant,
    step: ProvisionStep,
    work: impl FnOnce(&ProvisionStep) -> Result<()>,
) -> Result<()> {
    let step_started = Instant::now();
    reporter.report(ProvisionEvent::StepStarted { step: step.clone(), elapsed: started.elapsed() });
    work(&step)?;
    reporter.report(ProvisionEvent::StepFinished { step, took: step_started.elapsed(), elapsed: started.elapsed() });
    Ok(())
}

/// Make `dir` and its missing parents, readable and searchable by everyone: as root, the
/// session uids that run kernels must reach the binary.
fn create_readable_dirs(dir: &Path) -> Result<()> {
    let missing: Vec<PathBuf> = dir.ancestors().take_while(|d| !d.exists()).map(Path::to_path_buf).collect();
    std::fs::create_dir_all(dir).map_err(|e| CodeBoxError::io(format!("creating {}", dir.display()), e))?;
    for d in missing {
        set_mode(&d, 0o755)?;
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| CodeBoxError::io(format!("setting the mode of {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published integrity of `bytes`.
    fn integrity_of(bytes: &[u8]) -> String {
        format!("sha512-{}", base64::engine::general_purpose::STANDARD.encode(Sha512::digest(bytes)))
    }

    #[test]
    fn a_file_with_its_published_integrity_passes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("deno.tgz");
        std::fs::write(&file, b"a tarball").unwrap();
        verify_integrity(&file, &integrity_of(b"a tarball")).unwrap();
    }

    #[test]
    fn a_corrupted_tarball_is_refused_naming_both_digests() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("deno.tgz");
        std::fs::write(&file, b"a tarball, one byte flipped").unwrap();
        let expected = integrity_of(b"a tarball");
        let err = verify_integrity(&file, &expected).unwrap_err();
        match &err {
            IntegrityError::Mismatch { expected: e, actual, .. } => {
                assert_eq!(*e, expected);
                assert_eq!(*actual, integrity_of(b"a tarball, one byte flipped"));
            }
            other => panic!("expected a mismatch, got {other:?}"),
        }
        assert!(err.to_string().contains("does not match its published integrity"), "{err}");
    }

    #[test]
    fn an_integrity_that_is_not_sha512_is_malformed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("deno.tgz");
        std::fs::write(&file, b"x").unwrap();
        for bad in ["sha1-AAAA", "sha512-not base64!", "sha512-AAAA"] {
            assert!(matches!(verify_integrity(&file, bad), Err(IntegrityError::Malformed(_))), "{bad}");
        }
    }

    #[test]
    fn a_corrupted_download_is_refused_and_nothing_is_installed() {
        // A registry on disk (the fetch script reads file:// addresses like https://), whose
        // tarball is not the one the pinned integrity names.
        let registry = tempfile::tempdir().unwrap();
        let package = PlatformPackage::for_this_machine().unwrap();
        let url = package.tarball_url(&format!("file://{}", registry.path().display()));
        let tarball = PathBuf::from(url.strip_prefix("file://").unwrap());
        std::fs::create_dir_all(tarball.parent().unwrap()).unwrap();
        std::fs::write(&tarball, b"not deno at all").unwrap();
        let home = tempfile::tempdir().unwrap();
        let version_dir = home.path().join("deno").join(DENO_VERSION);
        let python = base_python(None).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let hook: ProgressFn = std::sync::Arc::new(move |e: &ProvisionEvent| tx.send(e.clone()).unwrap());
        let registry_url = format!("file://{}", registry.path().display());
        let err = provision_with(&version_dir, &package, &registry_url, &python, Some(&hook)).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.kind(), codebox_core::ErrorKind::KernelStart);
        assert!(msg.contains("refusing the Deno download") && msg.contains(package.integrity), "{msg}");
        assert!(!managed_binary(&version_dir).exists(), "nothing was installed");
        let steps: Vec<String> = rx
            .try_iter()
            .filter_map(|e| match e {
                ProvisionEvent::StepFinished { step, .. } => Some(step.name),
                _ => None,
            })
            .collect();
        assert_eq!(steps, ["download"], "the download finished, the check did not pass");
        // The partial download went with the failed build.
        let leftovers: Vec<_> = std::fs::read_dir(&version_dir).unwrap().collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn with_provisioning_off_and_no_deno_the_error_says_what_to_do() {
        let home = tempfile::tempdir().unwrap();
        let version_dir = home.path().join("deno").join(DENO_VERSION);
        let err = resolve_in(None, &version_dir, Provision::Off, Path::new("/usr/bin/python3"), None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("CODEBOX_DENO") && msg.contains(&version_dir.display().to_string()), "{msg}");
        assert!(!version_dir.exists(), "nothing was created");
    }

    #[test]
    fn a_deno_that_cannot_run_is_named_in_the_error() {
        let err = check_binary(Path::new("/nonexistent/deno"), "CODEBOX_DENO").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/deno") && err.to_string().contains("CODEBOX_DENO"), "{err}");
    }

    #[test]
    fn a_deno_that_runs_is_taken() {
        let home = tempfile::tempdir().unwrap();
        let version_dir = home.path().join("deno").join(DENO_VERSION);
        // The system's `true` stands in: it runs, and answers `--version` with success.
        let stand_in = PathBuf::from("/bin/true");
        let python = Path::new("/usr/bin/python3");
        let found = resolve_in(Some(stand_in.clone()), &version_dir, Provision::Off, python, None);
        assert_eq!(found.unwrap(), stand_in, "CODEBOX_DENO comes before the managed Deno");
        assert!(!version_dir.exists(), "nothing was provisioned");
    }

    #[test]
    fn the_tarball_address_follows_the_registry_layout() {
        let package = PlatformPackage { name: "linux-x64-glibc", integrity: "" };
        assert_eq!(
            package.tarball_url("https://registry.npmjs.org/"),
            format!("https://registry.npmjs.org/@deno/linux-x64-glibc/-/linux-x64-glibc-{DENO_VERSION}.tgz")
        );
    }
}

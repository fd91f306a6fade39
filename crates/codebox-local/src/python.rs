//! Finding a Python with ipykernel, and creating the managed environment when there is none.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use codebox_core::{CodeBoxError, Result};

use crate::progress::{ProgressFn, ProvisionEvent, ProvisionStep, Reporter};

/// Whether LocalBox may create its managed Python environment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Provision {
    /// Use the managed environment, creating it on first use (the default).
    #[default]
    Auto,
    /// Never create anything: use the given Python, `CODEBOX_PYTHON`, or an existing managed
    /// environment, and fail with instructions otherwise.
    Off,
}

/// What the managed environment contains.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum PythonProfile {
    /// ipykernel and dill with matplotlib, numpy and pandas (the default).
    #[default]
    Data,
    /// ipykernel and dill alone (dill pickles a paused box's variables).
    Minimal,
}

impl PythonProfile {
    /// The packages, in the groups they are installed in: one pip run, and one progress
    /// step, each, so a long build says where it is.
    fn package_groups(self) -> &'static [&'static [&'static str]] {
        match self {
            // dill: a paused box's namespace pickles with it (functions, lambdas, classes).
            Self::Data => &[&["ipykernel", "dill"], &["numpy", "pandas"], &["matplotlib"]],
            Self::Minimal => &[&["ipykernel", "dill"]],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Data => "data",
            Self::Minimal => "minimal",
        }
    }
}

/// The managed environment's directory: `$CODEBOX_HOME/python`; else, for root,
/// `/var/lib/codebox/python` (readable by the unprivileged users kernels may run as);
/// else `$XDG_DATA_HOME/codebox/python` or `~/.local/share/codebox/python`.
pub fn managed_python_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CODEBOX_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join("python");
    }
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/codebox/python");
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| std::env::temp_dir().join("codebox-data"));
    data.join("codebox/python")
}

fn venv_python(dir: &Path) -> PathBuf {
    dir.join("bin/python")
}

const MARKER: &str = ".codebox-ready";

fn checked() -> &'static Mutex<HashSet<PathBuf>> {
    static CHECKED: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    CHECKED.get_or_init(Default::default)
}

/// Check (once per process) that `python` runs and can import ipykernel.
fn check_python(python: &Path, origin: &str) -> Result<()> {
    if checked().lock().unwrap_or_else(|e| e.into_inner()).contains(python) {
        return Ok(());
    }
    let out = Command::new(python).args(["-c", "import ipykernel"]).stdin(Stdio::null()).output();
    match out {
        Ok(o) if o.status.success() => {
            checked().lock().unwrap_or_else(|e| e.into_inner()).insert(python.to_owned());
            Ok(())
        }
        Ok(o) => Err(CodeBoxError::kernel_start(format!(
            "the Python from {origin} ({}) cannot import ipykernel: {}\nInstall it with: {} -m pip install ipykernel",
            python.display(),
            String::from_utf8_lossy(&o.stderr).trim().lines().last().unwrap_or(""),
            python.display()
        ))),
        Err(e) => Err(CodeBoxError::kernel_start(format!(
            "the Python from {origin} ({}) cannot be run: {e}",
            python.display()
        ))),
    }
}

/// Find the Python for kernels: `explicit`, then `CODEBOX_PYTHON`, then the managed
/// environment (created when `provision` allows). Blocking: run it off the async threads.
pub(crate) fn resolve(
    explicit: Option<&Path>,
    provision: Provision,
    profile: PythonProfile,
    progress: Option<&ProgressFn>,
) -> Result<PathBuf> {
    let from_env = std::env::var_os("CODEBOX_PYTHON").filter(|v| !v.is_empty()).map(PathBuf::from);
    resolve_with(explicit, from_env, &managed_python_dir(), provision, profile, progress)
}

/// The Python of a template environment: the managed environment of `profile` with
/// `packages` too, in a directory of its own named by the hash of that definition (see
/// [`template_python_dir`]), built on first use. Blocking: run it off the async threads.
pub(crate) fn resolve_template(
    provision: Provision,
    profile: PythonProfile,
    packages: &[String],
    progress: Option<&ProgressFn>,
) -> Result<PathBuf> {
    let definition = template_definition(profile, packages);
    let dir = templates_dir().join(definition_hash(&definition));
    if ready_as(&dir, &definition) {
        return Ok(venv_python(&dir));
    }
    if provision == Provision::Off {
        return Err(CodeBoxError::kernel_start(format!(
            "the template environment {} is not built, and provisioning is off",
            dir.display()
        )));
    }
    build_env(&dir, profile, packages, &definition, progress).map_err(|e| match e {
        CodeBoxError::KernelStart { message, .. } => CodeBoxError::kernel_start(format!(
            "building the template environment of {} in {} failed: {message}",
            packages.join(" "),
            dir.display()
        )),
        other => other,
    })?;
    Ok(venv_python(&dir))
}

/// Where template environments live: `templates/` next to the managed environment.
fn templates_dir() -> PathBuf {
    let managed = managed_python_dir();
    managed.parent().map_or_else(|| PathBuf::from("templates"), |p| p.join("templates"))
}

/// The directory of `template`'s own Python environment, when it has packages (else its
/// boxes use the managed environment). Templates of equal definitions (profile and
/// packages) share it, whatever their names.
pub fn template_python_dir(template: &crate::Template) -> Option<PathBuf> {
    if template.packages().is_empty() {
        return None;
    }
    Some(templates_dir().join(definition_hash(&template_definition(template.profile(), template.packages()))))
}

/// Whether `template`'s environment is ready: built, or the managed one of its profile
/// when it has no packages (`CODEBOX_PYTHON` counts as ready); always for a kernel that
/// does not run Python.
pub(crate) fn template_ready(template: &crate::Template) -> bool {
    // Deno's kernel needs Deno, provisioned on first use; other kernels bring their own
    // runtime, and codebox builds no environment for them.
    if template.kernel() == crate::kernelspec::DENO_KERNEL {
        return crate::deno::installed().is_ok();
    }
    if !template.runs_python() {
        return true;
    }
    match template_python_dir(template) {
        Some(dir) => ready_as(&dir, &template_definition(template.profile(), template.packages())),
        None => {
            std::env::var_os("CODEBOX_PYTHON").is_some_and(|v| !v.is_empty())
                || ready(&managed_python_dir(), template.profile())
        }
    }
}

/// What a template environment holds, as its ready marker records it: the profile, then
/// the packages in order.
fn template_definition(profile: PythonProfile, packages: &[String]) -> String {
    let mut packages = packages.to_vec();
    packages.sort();
    packages.dedup();
    format!("template profile={}\n{}", profile.name(), packages.join("\n"))
}

/// A stable name for a definition (FNV-1a, 64 bits, in hex): the same on every machine and
/// release, unlike `std`'s hasher.
fn definition_hash(definition: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in definition.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

fn ready_as(dir: &Path, definition: &str) -> bool {
    std::fs::read_to_string(dir.join(MARKER)).is_ok_and(|m| m == definition)
}

fn resolve_with(
    explicit: Option<&Path>,
    from_env: Option<PathBuf>,
    dir: &Path,
    provision: Provision,
    profile: PythonProfile,
    progress: Option<&ProgressFn>,
) -> Result<PathBuf> {
    if let Some(p) = explicit {
        check_python(p, "the builder")?;
        return Ok(p.to_owned());
    }
    if let Some(p) = from_env {
        check_python(&p, "CODEBOX_PYTHON")?;
        return Ok(p);
    }
    if ready(dir, profile) {
        return Ok(venv_python(dir));
    }
    if provision == Provision::Off {
        return Err(CodeBoxError::kernel_start(format!(
            "no Python with ipykernel: set CODEBOX_PYTHON to a Python that has ipykernel \
                 (`python3 -m pip install ipykernel`), pass one to LocalBox::builder().with_python(..), \
                 or allow provisioning so codebox creates its managed environment in {}",
            dir.display()
        )));
    }
    provision_at(dir, profile, progress)?;
    Ok(venv_python(dir))
}

/// Marked ready for `profile`, with dill (an older environment gets it on its next use).
fn ready(dir: &Path, profile: PythonProfile) -> bool {
    let marked = std::fs::read_to_string(dir.join(MARKER))
        .is_ok_and(|m| profile == PythonProfile::Minimal || m.trim() == PythonProfile::Data.name());
    let mut libs = std::fs::read_dir(dir.join("lib")).into_iter().flatten().filter_map(std::result::Result::ok);
    marked && libs.any(|v| v.path().join("site-packages/dill").is_dir())
}

fn base_pythons() -> Vec<PathBuf> {
    let mut c = Vec::new();
    if let Some(p) = std::env::var_os("CODEBOX_BASE_PYTHON").filter(|v| !v.is_empty()) {
        c.push(PathBuf::from(p));
    }
    // As root, prefer the system Python: a Python under root's 0700 home would be
    // unreachable for kernels run as other users.
    if rustix::process::geteuid().is_root() {
        c.push("/usr/bin/python3".into());
    }
    c.push("python3".into());
    c.push("/usr/bin/python3".into());
    c
}

/// Run one step's tool, reporting each line it prints; on failure, the error carries the
/// last lines and its stderr.
pub(crate) fn run_logged(mut cmd: Command, tool: &str, step: &ProvisionStep, reporter: &Reporter<'_>) -> Result<()> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CodeBoxError::kernel_start(format!("{tool}: cannot run: {e}")))?;
    let stderr = child.stderr.take().expect("piped");
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
        s
    });
    let mut tail = std::collections::VecDeque::new();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines().map_while(|l| l.ok()) {
        reporter.report(ProvisionEvent::Output { step: step.clone(), line: line.clone() });
        tail.push_back(line);
        if tail.len() > 30 {
            tail.pop_front();
        }
    }
    let status = child.wait().map_err(|e| CodeBoxError::io(tool.to_owned(), e))?;
    let stderr = err_thread.join().unwrap_or_default();
    if status.success() {
        return Ok(());
    }
    let out: Vec<String> = tail.into_iter().collect();
    Err(CodeBoxError::kernel_start(format!("{tool} failed ({status}):\n{}\n{}", out.join("\n"), stderr.trim())))
}

/// What one step of a build runs.
enum StepWork {
    /// `python -m venv` with this base Python.
    Venv(PathBuf),
    /// `pip install` of one group of packages: the profile's, or a template's own.
    Install { packages: Vec<String>, template: bool },
}

/// Take the lock exclusively, saying so first when another process holds it. Returns
/// whether it had to wait.
pub(crate) fn lock_exclusive(
    lock: &std::fs::File,
    dir: &Path,
    lock_path: &Path,
    reporter: &Reporter<'_>,
) -> Result<bool> {
    use rustix::fs::{FlockOperation, flock};
    match flock(lock, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => return Ok(false),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
            reporter.report(ProvisionEvent::Waiting { dir: dir.to_owned(), lock: lock_path.to_owned() });
        }
        Err(e) => return Err(CodeBoxError::io("locking a managed environment", e.into())),
    }
    flock(lock, FlockOperation::LockExclusive)
        .map_err(|e| CodeBoxError::io("locking a managed environment", e.into()))?;
    Ok(true)
}

/// Create (or complete) the managed environment at `dir`, holding a lock file so that two
/// processes never provision at once. Each step (the venv, then each group of packages) is
/// reported to `progress` and as `tracing` events; nothing is printed.
pub fn provision_at(dir: &Path, profile: PythonProfile, progress: Option<&ProgressFn>) -> Result<()> {
    provision(dir, profile, &[], profile.name(), &|dir| ready(dir, profile), false, progress)
}

/// Build a template environment at `dir`: like [`provision_at`], with `packages` installed
/// first (a package that does not exist fails the build early), and `definition` as its
/// ready marker. A failed build removes the directory, so that nothing half-built is ever
/// used and the next use builds afresh. The directories are readable by everyone: boxes
/// under session uids share it read-only.
fn build_env(
    dir: &Path,
    profile: PythonProfile,
    packages: &[String],
    definition: &str,
    progress: Option<&ProgressFn>,
) -> Result<()> {
    provision(dir, profile, packages, definition, &|dir| ready_as(dir, definition), true, progress)
}

fn provision(
    dir: &Path,
    profile: PythonProfile,
    packages: &[String],
    marker: &str,
    is_ready: &dyn Fn(&Path) -> bool,
    from_scratch: bool,
    progress: Option<&ProgressFn>,
) -> Result<()> {
    let reporter = Reporter::new(progress);
    let parent = dir.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent).map_err(|e| CodeBoxError::io(format!("creating {}", parent.display()), e))?;
    let lock_path = parent.join(format!(".{}.lock", dir.file_name().and_then(|n| n.to_str()).unwrap_or("python")));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| CodeBoxError::io(format!("opening {}", lock_path.display()), e))?;
    let started = Instant::now();
    let waited = lock_exclusive(&lock, dir, &lock_path, &reporter)?;
    // Someone else may have finished while we waited; a hook that heard of the wait hears
    // of its end.
    if is_ready(dir) {
        if waited {
            reporter.report(ProvisionEvent::Finished { dir: dir.to_owned(), elapsed: started.elapsed() });
        }
        return Ok(());
    }
    let python = venv_python(dir);
    let mut plan = Vec::new();
    if from_scratch || !python.exists() {
        let _ = std::fs::remove_dir_all(dir);
        let base = base_pythons()
            .into_iter()
            .find(|p| Command::new(p).args(["-c", "import venv, ensurepip"]).output().is_ok_and(|o| o.status.success()))
            .ok_or_else(|| {
                CodeBoxError::kernel_start(
                    "no python3 with the venv module found: install Python 3 (on Debian/Ubuntu: \
                          apt-get install python3-venv) or set CODEBOX_PYTHON",
                )
            })?;
        plan.push(StepWork::Venv(base));
    }
    if !packages.is_empty() {
        plan.push(StepWork::Install { packages: packages.to_vec(), template: true });
    }
    plan.extend(
        profile.package_groups().iter().map(|group| StepWork::Install {
            packages: group.iter().map(|p| (*p).to_owned()).collect(),
            template: false,
        }),
    );
    let total = plan.len();
    reporter.report(ProvisionEvent::Started { dir: dir.to_owned(), total });
    let built = run_plan(dir, profile, plan, &reporter, started);
    if built.is_err() && from_scratch {
        // Under the lock still: a later build starts from nothing rather than from this.
        let _ = std::fs::remove_dir_all(dir);
    }
    built?;
    if from_scratch {
        // Boxes under session uids share a template environment read-only, whatever the
        // umask of the process that built it.
        readable_by_all(dir).map_err(|e| CodeBoxError::io("opening the environment to session uids", e))?;
    }
    std::fs::write(dir.join(MARKER), marker).map_err(|e| CodeBoxError::io("marking the environment ready", e))?;
    reporter.report(ProvisionEvent::Finished { dir: dir.to_owned(), elapsed: started.elapsed() });
    Ok(())
}

/// Give everyone read access to the tree at `dir` (and search or run where its owner has
/// it), without following symbolic links; iterative, as trees may be deep.
fn readable_by_all(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode();
        // Read for all; search (directories) or run (programs) for all where the owner may.
        let wanted = mode | 0o044 | if mode & 0o100 != 0 { 0o011 } else { 0 };
        if wanted != mode {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(wanted))?;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
        }
    }
    Ok(())
}

/// Run the steps of a build, reporting each.
fn run_plan(
    dir: &Path,
    profile: PythonProfile,
    plan: Vec<StepWork>,
    reporter: &Reporter<'_>,
    started: Instant,
) -> Result<()> {
    let python = venv_python(dir);
    let total = plan.len();
    for (i, work) in plan.into_iter().enumerate() {
        let (name, description, cmd, tool) = match work {
            StepWork::Venv(base) => {
                let mut cmd = Command::new(&base);
                cmd.args(["-m", "venv"]).arg(dir);
                ("venv".to_owned(), format!("creating the venv from {}", base.display()), cmd, "venv")
            }
            StepWork::Install { packages, template } => {
                let mut cmd = Command::new(&python);
                cmd.args(["-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off"])
                    .args(&packages);
                let name = packages.join(" ");
                let description = if template {
                    format!("installing {name} (the template's packages)")
                } else {
                    format!("installing {name} (profile {})", profile.name())
                };
                (name, description, cmd, "pip")
            }
        };
        let step = ProvisionStep { name, description, index: i + 1, total };
        let step_started = Instant::now();
        reporter.report(ProvisionEvent::StepStarted { step: step.clone(), elapsed: started.elapsed() });
        run_logged(cmd, tool, &step, reporter)?;
        reporter.report(ProvisionEvent::StepFinished {
            step,
            took: step_started.elapsed(),
            elapsed: started.elapsed(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_provisioning_off_and_nothing_usable_the_error_says_what_to_do() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join("python");
        let err = resolve_with(None, None, &dir, Provision::Off, PythonProfile::Minimal, None).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.kind(), codebox_core::ErrorKind::KernelStart);
        assert!(msg.contains("CODEBOX_PYTHON") && msg.contains("pip install ipykernel"), "{msg}");
        assert!(msg.contains(&dir.display().to_string()), "{msg}");
        assert!(!dir.exists(), "nothing was created");
    }

    #[test]
    fn a_python_that_cannot_run_is_named_in_the_error() {
        let err = resolve_with(
            None,
            Some("/nonexistent/python".into()),
            Path::new("/nonexistent"),
            Provision::Off,
            PythonProfile::Data,
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("CODEBOX_PYTHON"), "{err}");
    }

    #[test]
    fn a_build_another_process_holds_is_waited_for_and_its_end_said() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join("python");
        let lock_path = home.path().join(".python.lock");
        // A second open file description conflicts with this one as another process would.
        let held = std::fs::File::create(&lock_path).unwrap();
        rustix::fs::flock(&held, rustix::fs::FlockOperation::LockExclusive).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let hook: ProgressFn = std::sync::Arc::new(move |e: &ProvisionEvent| tx.send(e.clone()).unwrap());
        let target = dir.clone();
        let waiter = std::thread::spawn(move || provision_at(&target, PythonProfile::Minimal, Some(&hook)));
        assert_eq!(rx.recv().unwrap(), ProvisionEvent::Waiting { dir: dir.clone(), lock: lock_path });
        // The other build finishes: the waiter finds the environment ready and builds nothing.
        std::fs::create_dir_all(dir.join("lib/python3.11/site-packages/dill")).unwrap();
        std::fs::write(dir.join(MARKER), "minimal").unwrap();
        drop(held);
        waiter.join().unwrap().unwrap();
        let rest: Vec<ProvisionEvent> = rx.iter().collect();
        assert!(
            matches!(rest.as_slice(), [ProvisionEvent::Finished { dir: ready, .. }] if *ready == dir),
            "the wait ends with the environment ready, and nothing else: {rest:?}"
        );
        assert!(!venv_python(&dir).exists(), "no venv was made");
    }

    #[test]
    fn a_template_environment_is_named_by_its_definition_alone() {
        let packages = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        let a = template_definition(PythonProfile::Minimal, &packages(&["b", "a"]));
        assert_eq!(a, template_definition(PythonProfile::Minimal, &packages(&["a", "b", "a"])), "order and repeats");
        assert_ne!(a, template_definition(PythonProfile::Data, &packages(&["a", "b"])), "the profile counts");
        assert_ne!(
            definition_hash(&a),
            definition_hash(&template_definition(PythonProfile::Minimal, &packages(&["a"])))
        );
        // Stable across releases and machines: a cached environment keeps its name.
        assert_eq!(definition_hash(""), "cbf29ce484222325");
        let dir = tempfile::tempdir().unwrap();
        assert!(!ready_as(dir.path(), &a));
        std::fs::write(dir.path().join(MARKER), &a).unwrap();
        assert!(ready_as(dir.path(), &a));
        assert!(!ready_as(dir.path(), "template profile=minimal\na"), "another definition's marker");
    }

    #[test]
    fn a_built_tree_is_opened_to_everyone_without_following_links() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let env = root.path().join("env");
        std::fs::create_dir_all(env.join("bin")).unwrap();
        std::fs::write(env.join("bin/tool"), "").unwrap();
        std::fs::write(env.join("data"), "").unwrap();
        let outside = root.path().join("outside");
        std::fs::write(&outside, "").unwrap();
        std::os::unix::fs::symlink(&outside, env.join("link")).unwrap();
        let mode = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        mode(&env.join("bin/tool"), 0o700);
        mode(&env.join("data"), 0o600);
        mode(&env.join("bin"), 0o700);
        mode(&outside, 0o600);
        readable_by_all(&env).unwrap();
        let got = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(got(&env.join("bin")), 0o755);
        assert_eq!(got(&env.join("bin/tool")), 0o755);
        assert_eq!(got(&env.join("data")), 0o644);
        assert_eq!(got(&outside), 0o600, "a link's target is left alone");
    }

    #[test]
    fn a_ready_marker_satisfies_the_profile_it_names() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!ready(dir.path(), PythonProfile::Minimal));
        std::fs::write(dir.path().join(MARKER), "minimal").unwrap();
        assert!(!ready(dir.path(), PythonProfile::Minimal), "an environment without dill is completed");
        std::fs::create_dir_all(dir.path().join("lib/python3.11/site-packages/dill")).unwrap();
        assert!(ready(dir.path(), PythonProfile::Minimal));
        assert!(!ready(dir.path(), PythonProfile::Data), "data needs more packages");
        std::fs::write(dir.path().join(MARKER), "data").unwrap();
        assert!(ready(dir.path(), PythonProfile::Minimal) && ready(dir.path(), PythonProfile::Data));
    }
}

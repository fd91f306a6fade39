//! The Landlock ruleset of a kernel where user namespaces are not available.
//!
//! Read and execute: `/usr`, the `/bin` and `/lib*` links, a few files of `/etc`, `/dev` and
//! `/proc`, the Python environment. Read and write: the working directory and the kernel's run
//! directory (its sockets). Everything else, including the user's HOME, is denied. With ABI >= 4
//! and no network, TCP bind and connect are denied too, except connecting to `connect_port`
//! when given (an install's proxy on host loopback); with ABI >= 6, abstract Unix sockets and
//! signals are scoped to the box (it can neither reach the host's abstract sockets nor signal
//! processes outside it).
//!
//! `/proc` is not readable as a whole: with no pid namespace it shows every process of the host
//! (the server's command line, other sessions' kernels and their environment). Readable are the
//! system-wide files libraries read ([`PROC_FILES`]) and the kernel's own `/proc/<pid>`, which the
//! child adds to the ruleset itself between fork and exec ([`restrict_self`]), when its pid exists.
//! Processes the kernel starts later run in the same domain without a rule of their own, so their
//! own `/proc/<pid>` is denied to them (`ps` and the like do not work at this level).
//!
//! The ruleset is created in the parent (opening descriptors allocates) and enforced between
//! fork and exec.

use std::os::fd::IntoRawFd;
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, NetPort, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreated, RulesetCreatedAttr, Scope,
};

use crate::error::SandboxError;

/// System paths to read and execute; the `/etc` files come from the bwrap mount list, so both
/// levels expose the same system.
const SYSTEM_DIRS: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/dev/urandom", "/dev/random"];

/// The system-wide files of `/proc` a kernel may read: what Python, numpy's BLAS, psutil and
/// pip ask about the machine. Only files whose inode procfs keeps for good: a Landlock rule
/// names an inode, and procfs makes a new inode for `/proc/<pid>` and `/proc/sys` entries each
/// time their dentry is looked up again, which would silently drop such a rule.
pub(crate) const PROC_FILES: &[&str] = &[
    "/proc/cpuinfo",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/loadavg",
    "/proc/uptime",
    "/proc/version",
    "/proc/filesystems",
    "/proc/swaps",
];

const READ_WRITE_DEVICES: &[&str] = &["/dev/null", "/dev/zero", "/dev/full", "/dev/tty"];

/// What a kernel under Landlock may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LandlockConfig {
    /// Read-write: the working directory and the run directory.
    pub read_write: Vec<PathBuf>,
    /// Read and execute, on top of the system paths: the Python environment.
    pub read_only: Vec<PathBuf>,
    /// Allow TCP (otherwise denied where the kernel's Landlock can say so, ABI >= 4).
    pub network: bool,
    /// Without `network`: the one TCP port that may still be connected to (on any address:
    /// Landlock rules name ports only, so the caller pairs this with a port no remote host
    /// is expected to serve, a free one of host loopback).
    pub connect_port: Option<u16>,
}

/// The highest ABI this code asks for; older kernels get what they support.
const TARGET: ABI = ABI::V6;

fn rights(path: &Path, dir_rights: BitFlags<AccessFs>) -> Option<(PathFd, BitFlags<AccessFs>)> {
    let meta = std::fs::metadata(path).ok()?;
    let rights = if meta.is_dir() { dir_rights } else { dir_rights & AccessFs::from_file(TARGET) };
    Some((PathFd::new(path).ok()?, rights))
}

impl LandlockConfig {
    /// Create the ruleset (not yet enforced). Paths that do not exist are skipped.
    pub(crate) fn build(&self) -> Result<RulesetCreated, SandboxError> {
        let read = AccessFs::from_read(TARGET);
        let all = AccessFs::from_all(TARGET);
        // Scoping needs ABI 6 (Linux 6.12); older kernels run without it (best effort), and
        // `IsolationLevel::gaps` says so.
        let mut ruleset = Ruleset::default()
            .set_compatibility(CompatLevel::BestEffort)
            .handle_access(all)
            .and_then(|r| r.scope(Scope::AbstractUnixSocket | Scope::Signal));
        if !self.network {
            ruleset = ruleset.and_then(|r| r.handle_access(AccessNet::from_all(TARGET)));
        }
        let mut created = ruleset.and_then(|r| r.create()).map_err(landlock_error("creating a Landlock ruleset"))?;
        // Landlock cannot add files later, so the network files are always readable.
        let system =
            SYSTEM_DIRS.iter().chain(PROC_FILES).chain(super::bwrap::ETC_FILES).chain(super::bwrap::ETC_NETWORK_FILES);
        let read_only = system.map(PathBuf::from).chain(self.read_only.iter().cloned());
        let rules = read_only
            .filter_map(|p| rights(&p, read))
            .chain(READ_WRITE_DEVICES.iter().filter_map(|p| rights(Path::new(p), all)))
            .chain(self.read_write.iter().filter_map(|p| rights(p, all)));
        for (fd, access) in rules {
            created =
                created.add_rule(PathBeneath::new(fd, access)).map_err(landlock_error("adding a Landlock rule"))?;
        }
        if let Some(port) = self.connect_port.filter(|_| !self.network) {
            created = created
                .add_rule(NetPort::new(port, AccessNet::ConnectTcp))
                .map_err(landlock_error("adding a Landlock network rule"))?;
        }
        Ok(created.no_new_privs(true))
    }
}

/// A [`SandboxError::Landlock`] for a failed `context`.
fn landlock_error(context: &'static str) -> impl FnOnce(landlock::RulesetError) -> SandboxError {
    move |source| SandboxError::Landlock { context, source }
}

/// Enforce `ruleset` on the calling process with its own `/proc/<pid>` readable (and its files
/// writable: `comm`, `oom_score_adj`). For use between fork and exec: it makes only system
/// calls (open, landlock_add_rule, prctl, landlock_restrict_self) and allocates only to report
/// an error.
///
/// The `O_PATH` descriptor of `/proc/<pid>` stays open through exec on purpose: the rule holds
/// the directory's inode, and procfs would make a new inode, without the rule, once the kernel
/// evicted an unused dentry. An open descriptor keeps the dentry, so the rule stays true.
pub(crate) fn restrict_self(ruleset: RulesetCreated) -> std::io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    let own = rustix::fs::open(c"/proc/self", OFlags::PATH | OFlags::DIRECTORY, Mode::empty())?;
    let access = AccessFs::from_read(TARGET) | AccessFs::WriteFile;
    let ruleset = ruleset
        .add_rule(PathBeneath::new(&own, access))
        .map_err(|_| std::io::Error::other("adding the kernel's /proc/<pid> to its Landlock ruleset failed"))?;
    ruleset.restrict_self().map_err(|_| std::io::Error::other("Landlock restrict_self failed"))?;
    let _pinned = own.into_raw_fd();
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;
    use std::process::Command;
    use std::sync::Mutex;

    use super::*;

    #[test]
    #[allow(unsafe_code, reason = "pre_exec runs the Landlock restriction in the child, see the SAFETY note")]
    fn a_child_under_the_ruleset_reaches_only_its_directories() {
        let work = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        let cfg = LandlockConfig {
            read_write: vec![work.path().into()],
            read_only: vec![],
            network: false,
            connect_port: None,
        };
        let ruleset = Mutex::new(Some(cfg.build().unwrap()));
        let script = format!(
            "echo ok > {w}/x && cat {w}/x; cat {o}/secret 2>/dev/null || echo denied-read; \
             touch {o}/y 2>/dev/null || echo denied-write; ls /root >/dev/null 2>&1 || echo denied-home; \
             read l < /proc/$$/status && echo own-proc; read l < /proc/cpuinfo && echo cpuinfo; \
             read l < /proc/{parent}/status 2>/dev/null || echo denied-other-proc; ls /proc >/dev/null 2>&1 || echo denied-proc-list",
            w = work.path().display(),
            o = outside.path().display(),
            parent = std::process::id(),
        );
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", &script]);
        // SAFETY: restrict_self makes only system calls and allocates nothing on success; the
        // ruleset was built before fork.
        unsafe {
            cmd.pre_exec(move || {
                let r = ruleset.lock().unwrap_or_else(|e| e.into_inner()).take();
                match r {
                    Some(r) => restrict_self(r),
                    None => Ok(()),
                }
            })
        };
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            stdout,
            "ok\ndenied-read\ndenied-write\ndenied-home\nown-proc\ncpuinfo\ndenied-other-proc\ndenied-proc-list\n",
            "stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!outside.path().join("y").exists());
    }
}

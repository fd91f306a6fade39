//! The bubblewrap command line of a sandboxed kernel.
//!
//! The root is an empty tmpfs holding only: `/usr` (and the `/bin`, `/lib*`, `/sbin` links
//! into it) read-only, a few files of `/etc`, the Python environment read-only, a fresh
//! `/proc` and `/dev`, sized tmpfs for `/tmp`, `/dev/shm` and `/home/user`, and read-write binds
//! of the working directory and the kernel's socket directory, each at its host path so that
//! paths agree inside and out. `/` and `/dev` are then remounted read-only. The user's own
//! HOME is never mounted, and the environment is cleared.

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use super::Limits;
use crate::error::SandboxError;

/// A private sized tmpfs where a home directory is usually found. `HOME` itself points into
/// the working directory (`launch::HOME_DIR`), which the working directory's size limit bounds.
pub(crate) const SANDBOX_HOME: &str = "/home/user";

/// Files of `/etc` the kernel may read (each only when it exists); Landlock allows the same.
pub(crate) const ETC_FILES: &[&str] = &[
    "/etc/ld.so.cache",
    // Debian's /usr/bin/awk, editor, pager... are links through here.
    "/etc/alternatives",
    "/etc/localtime",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/fonts",
    "/etc/mime.types",
    "/etc/hosts",
    // What the distribution is: pip's user agent reads it, and fails on EACCES under Landlock.
    "/etc/os-release",
    "/etc/debian_version",
    "/etc/lsb-release",
];

/// More of `/etc` when the box has network.
pub(crate) const ETC_NETWORK_FILES: &[&str] =
    &["/etc/resolv.conf", "/etc/nsswitch.conf", "/etc/gai.conf", "/etc/host.conf"];

/// Everything bwrap needs to run one kernel.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BwrapConfig {
    /// The `bwrap` binary.
    pub bwrap: PathBuf,
    /// The working directory (read-write, also the kernel's current directory).
    pub work_dir: PathBuf,
    /// The directory of the kernel's sockets and connection file (read-write), if any.
    pub run_dir: Option<PathBuf>,
    /// More paths to mount read-only, e.g. the Python environment and its base install.
    pub read_only: Vec<PathBuf>,
    /// Share the host network (default: a private network namespace with only `lo`).
    pub network: bool,
    /// Tmpfs sizes (`tmp_size`, `shm_size`, `home_size`).
    pub limits: Limits,
    /// The kernel's whole environment (the host's is cleared).
    pub env: Vec<(String, String)>,
    /// Descriptors holding seccomp programs, inherited by bwrap.
    pub seccomp_fds: Vec<RawFd>,
    /// Where bubblewrap writes what it made (`{"child-pid": N}`: the box's init, on the host).
    pub info_fd: Option<RawFd>,
    /// The current directory inside (default: the working directory).
    pub chdir: Option<PathBuf>,
}

/// The read-only system mounts: `/usr`, the merged-usr links (or binds where the host has
/// real directories) and the files of `ETC_FILES`.
pub(crate) fn system_mounts() -> Vec<OsString> {
    let mut args = Vec::new();
    push(&mut args, ["--ro-bind", "/usr", "/usr"]);
    for top in ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"] {
        match std::fs::read_link(top) {
            Ok(target) => {
                args.push("--symlink".into());
                args.push(target.into_os_string());
                args.push(top.into());
            }
            Err(_) if Path::new(top).is_dir() => push(&mut args, ["--ro-bind", top, top]),
            Err(_) => {}
        }
    }
    for f in ETC_FILES {
        push(&mut args, ["--ro-bind-try", f, f]);
    }
    args
}

fn push<const N: usize>(args: &mut Vec<OsString>, items: [&str; N]) {
    args.extend(items.iter().map(OsString::from));
}

fn push_path(args: &mut Vec<OsString>, flag: &str, path: &Path) {
    args.push(flag.into());
    args.push(path.as_os_str().to_owned());
    args.push(path.as_os_str().to_owned());
}

/// Drop paths that another entry (or `/usr`) already covers, keeping the order.
fn outermost(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for p in paths {
        let covered = p.starts_with("/usr") || paths.iter().any(|q| q != p && p.starts_with(q));
        if !covered && !out.contains(p) {
            out.push(p.clone());
        }
    }
    out
}

impl BwrapConfig {
    /// Check what bwrap would otherwise reject late or unclearly.
    pub(crate) fn validate(&self) -> Result<(), SandboxError> {
        let invalid = |reason: String| Err(SandboxError::BwrapConfig { reason });
        for (what, p) in std::iter::once(("working directory", &self.work_dir))
            .chain(self.run_dir.as_ref().map(|r| ("run directory", r)))
        {
            if !p.is_absolute() {
                return invalid(format!("the {what} {} is not absolute", p.display()));
            }
            if p == Path::new("/") {
                return invalid(format!("the {what} cannot be /"));
            }
        }
        if let Some(p) = self.read_only.iter().find(|p| !p.is_absolute()) {
            return invalid(format!("read-only path {} is not absolute", p.display()));
        }
        if let Some(c) = &self.chdir
            && !c.starts_with(&self.work_dir)
        {
            return invalid(format!("the current directory {} is outside the working directory", c.display()));
        }
        if let Some((k, _)) = self.env.iter().find(|(k, _)| k.is_empty() || k.contains('=') || k.contains('\0')) {
            return invalid(format!("invalid environment variable name {k:?}"));
        }
        Ok(())
    }

    /// The arguments of `bwrap`, ending with `--` and `argv`.
    pub(crate) fn args(&self, argv: &[String]) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        push(&mut a, ["--unshare-all", "--unshare-user", "--disable-userns"]);
        if self.network {
            push(&mut a, ["--share-net"]);
        }
        push(&mut a, ["--die-with-parent", "--new-session", "--cap-drop", "ALL", "--hostname", "codebox"]);
        a.extend(system_mounts());
        if self.network {
            for f in ETC_NETWORK_FILES {
                push(&mut a, ["--ro-bind-try", f, f]);
            }
        }
        push(&mut a, ["--proc", "/proc", "--dev", "/dev"]);
        let sized = |a: &mut Vec<OsString>, size: u64, dir: &str| {
            a.push("--size".into());
            a.push(size.to_string().into());
            push(a, ["--tmpfs", dir]);
        };
        sized(&mut a, self.limits.shm_size, "/dev/shm");
        sized(&mut a, self.limits.tmp_size, "/tmp");
        sized(&mut a, self.limits.home_size, SANDBOX_HOME);
        for p in outermost(&self.read_only) {
            push_path(&mut a, "--ro-bind", &p);
        }
        if let Some(run) = &self.run_dir {
            push_path(&mut a, "--bind", run);
        }
        push_path(&mut a, "--bind", &self.work_dir);
        push(&mut a, ["--remount-ro", "/dev", "--remount-ro", "/"]);
        a.push("--chdir".into());
        a.push(self.chdir.as_deref().unwrap_or(&self.work_dir).as_os_str().to_owned());
        for fd in &self.seccomp_fds {
            a.push("--add-seccomp-fd".into());
            a.push(fd.to_string().into());
        }
        if let Some(fd) = self.info_fd {
            a.push("--info-fd".into());
            a.push(fd.to_string().into());
        }
        push(&mut a, ["--clearenv"]);
        for (k, v) in &self.env {
            a.push("--setenv".into());
            a.push(k.into());
            a.push(v.into());
        }
        a.push("--".into());
        a.extend(argv.iter().map(OsString::from));
        a
    }
}

/// The environment of a sandboxed kernel: a minimal base, then `extra` (the box's own
/// variables, which may override the base).
pub(crate) fn sandbox_env(path: &str, home: &str, extra: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("HOME", home),
        ("PATH", path),
        ("USER", "user"),
        ("LOGNAME", "user"),
        ("LANG", "C.UTF-8"),
        ("TMPDIR", "/tmp"),
        ("PYTHONUNBUFFERED", "1"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((k.clone(), v.clone()));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BwrapConfig {
        BwrapConfig {
            bwrap: "/usr/bin/bwrap".into(),
            work_dir: "/srv/s/work".into(),
            run_dir: Some("/run/cb/s".into()),
            read_only: vec!["/opt/venv".into(), "/opt/venv/lib".into(), "/usr/lib/python3".into()],
            network: false,
            limits: Limits::default(),
            env: sandbox_env("/opt/venv/bin:/usr/bin", SANDBOX_HOME, &[("SECRET_FREE".into(), "1".into())]),
            seccomp_fds: vec![7, 8],
            info_fd: None,
            chdir: None,
        }
    }

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    fn has_seq(args: &[String], seq: &[&str]) -> bool {
        args.windows(seq.len()).any(|w| w.iter().zip(seq).all(|(a, b)| a == b))
    }

    #[test]
    fn the_command_line_has_every_protection() {
        let a = strings(&config().args(&["python".into(), "-m".into(), "ipykernel_launcher".into()]));
        for seq in [
            &["--unshare-all", "--unshare-user", "--disable-userns"][..],
            &["--die-with-parent", "--new-session", "--cap-drop", "ALL"],
            &["--ro-bind", "/usr", "/usr"],
            &["--size", "67108864", "--tmpfs", "/dev/shm"],
            &["--size", "268435456", "--tmpfs", "/tmp"],
            &["--size", "16777216", "--tmpfs", "/home/user"],
            &["--bind", "/srv/s/work", "/srv/s/work"],
            &["--bind", "/run/cb/s", "/run/cb/s"],
            &["--remount-ro", "/dev", "--remount-ro", "/"],
            &["--chdir", "/srv/s/work"],
            &["--add-seccomp-fd", "7", "--add-seccomp-fd", "8"],
            &["--setenv", "HOME", "/home/user"],
            &["--", "python", "-m", "ipykernel_launcher"],
        ] {
            assert!(has_seq(&a, seq), "missing {seq:?} in {a:?}");
        }
        assert!(!a.contains(&"--share-net".to_owned()));
        assert!(a.contains(&"--clearenv".to_owned()));
    }

    #[test]
    fn writable_binds_come_after_the_tmpfs_and_before_the_read_only_remount() {
        let a = strings(&config().args(&["k".into()]));
        let pos = |s: &str| a.iter().position(|x| x == s).unwrap();
        let tmp = a.iter().position(|x| x == "/tmp").unwrap();
        let work = a.iter().position(|x| x == "/srv/s/work").unwrap();
        let remount = pos("--remount-ro");
        assert!(tmp < work && work < remount);
        assert!(pos("--clearenv") < pos("--setenv"));
    }

    #[test]
    fn nested_and_system_read_only_paths_are_mounted_once() {
        let a = strings(&config().args(&["k".into()]));
        assert!(has_seq(&a, &["--ro-bind", "/opt/venv", "/opt/venv"]));
        assert!(!a.contains(&"/opt/venv/lib".to_owned()));
        assert!(!a.contains(&"/usr/lib/python3".to_owned()));
    }

    #[test]
    fn network_opt_in_shares_the_network_and_resolver_files() {
        let a = strings(&BwrapConfig { network: true, ..config() }.args(&["k".into()]));
        assert!(a.contains(&"--share-net".to_owned()));
        assert!(has_seq(&a, &["--ro-bind-try", "/etc/resolv.conf", "/etc/resolv.conf"]));
    }

    #[test]
    fn the_users_home_is_never_mounted() {
        let a = strings(&config().args(&["k".into()]));
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        assert!(!a.iter().any(|x| x == &home), "{home} mounted: {a:?}");
    }

    #[test]
    fn box_variables_override_the_base_environment() {
        let env = sandbox_env("/bin", "/h", &[("LANG".into(), "de_DE.UTF-8".into())]);
        assert_eq!(env.iter().filter(|(k, _)| k == "LANG").count(), 1);
        assert!(env.contains(&("LANG".into(), "de_DE.UTF-8".into())));
    }

    #[test]
    fn bad_configurations_are_refused() {
        assert!(
            BwrapConfig { work_dir: "rel".into(), ..config() }
                .validate()
                .unwrap_err()
                .to_string()
                .contains("not absolute")
        );
        assert!(BwrapConfig { work_dir: "/".into(), ..config() }.validate().is_err());
        let bad_env = BwrapConfig { env: vec![("A=B".into(), "x".into())], ..config() };
        assert!(bad_env.validate().unwrap_err().to_string().contains("A=B"));
        config().validate().unwrap();
    }
}

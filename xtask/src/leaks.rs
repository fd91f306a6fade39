//! The leak check `cargo xtask ci` runs after the tests: once every test process has exited,
//! nothing the boxes had may be left on the machine.
//!
//! It looks for:
//! - live processes of the session uids (codebox-sandbox's `DEFAULT_UID_RANGE` and the
//!   ranges the tests use);
//! - session cgroups: any directory under a `codebox` directory of the cgroup hierarchies
//!   (v1 controllers and v2), which is where codebox-sandbox puts them;
//! - files owned by session uids under the temporary directory and `/var/lib/codebox`;
//! - codebox temporary directories (`codebox-*` working directories, `cbk-*` kernel runtime
//!   directories) and working-directory images still mounted;
//! - stray kernels: `bwrap`, ipykernel or fork server processes (the fork server, its
//!   keepers, forked kernels) whose parent is gone (adopted by pid 1).
//!
//! Every source is a path, so the unit tests point it at fake trees.

use std::collections::BTreeMap;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// Session uids: codebox-sandbox's default range, and the ranges the tests allocate from
/// (300 000 to 350 000; see the tests of codebox-local, codebox-server and codebox-cli).
pub(crate) const SESSION_UIDS: [Range<u32>; 2] = [200_000..265_536, 300_000..360_000];

/// The name of the directory that holds session cgroups (`BASE_NAME` in codebox-sandbox's
/// `cgroup.rs`).
const CGROUP_BASE: &str = "codebox";

/// Prefixes of codebox's temporary directories: working directories and kernel runtime
/// directories.
const TEMP_PREFIXES: [&str; 2] = ["codebox-", "cbk-"];

/// Temporary names that are not per-box state: the managed Python of a user without a data
/// directory.
const TEMP_KEPT: [&str; 1] = ["codebox-data"];

/// How many entries of one kind a report lists before it only counts.
const SHOWN: usize = 20;

/// Where the check looks.
#[derive(Debug, Clone)]
pub(crate) struct Host {
    /// The process table (`/proc`).
    pub(crate) proc: PathBuf,
    /// The cgroup hierarchies (`/sys/fs/cgroup`).
    pub(crate) cgroup: PathBuf,
    /// Directories where boxes keep temporary state (the temp dir, `XDG_RUNTIME_DIR`).
    pub(crate) temp: Vec<PathBuf>,
    /// Directories walked for files of session uids (the temp dir, `/var/lib/codebox`).
    pub(crate) owned: Vec<PathBuf>,
    /// The mount table (`/proc/self/mounts`).
    pub(crate) mounts: PathBuf,
    /// The uid ranges of sessions.
    pub(crate) uids: Vec<Range<u32>>,
}

impl Host {
    /// This machine.
    pub(crate) fn this() -> Self {
        let tmp = std::env::temp_dir();
        let mut temp = vec![tmp.clone()];
        if tmp != Path::new("/tmp") {
            temp.push("/tmp".into());
        }
        if let Some(xdg) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from)
            && !temp.contains(&xdg)
        {
            temp.push(xdg);
        }
        let mut owned = temp.clone();
        owned.push("/var/lib/codebox".into());
        Self {
            proc: "/proc".into(),
            cgroup: "/sys/fs/cgroup".into(),
            temp,
            owned,
            mounts: "/proc/self/mounts".into(),
            uids: SESSION_UIDS.to_vec(),
        }
    }
}

/// What was left, by kind.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Leaks(BTreeMap<&'static str, Vec<String>>);

impl Leaks {
    fn add(&mut self, kind: &'static str, what: String) {
        self.0.entry(kind).or_default().push(what);
    }

    /// Whether nothing leaked.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.values().all(Vec::is_empty)
    }

    /// The entries of one kind.
    #[cfg(test)]
    pub(crate) fn of(&self, kind: &str) -> Vec<String> {
        self.0.get(kind).cloned().unwrap_or_default()
    }

    /// One line per kind, then the entries (at most `SHOWN` each).
    pub(crate) fn report(&self) -> String {
        let mut out = String::new();
        for (kind, items) in &self.0 {
            out.push_str(&format!("{kind} ({}):\n", items.len()));
            for item in items.iter().take(SHOWN) {
                out.push_str(&format!("    {item}\n"));
            }
            if items.len() > SHOWN {
                out.push_str(&format!("    ... and {} more\n", items.len() - SHOWN));
            }
        }
        out
    }
}

/// A process as the check sees it.
#[derive(Debug, Clone)]
struct Proc {
    pid: u32,
    ppid: u32,
    uid: u32,
    comm: String,
    cmdline: String,
}

/// The live processes under `proc` (zombies are dead).
fn processes(proc: &Path) -> Vec<Proc> {
    let Ok(rd) = std::fs::read_dir(proc) else { return Vec::new() };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else { continue };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.split_whitespace().next().unwrap_or("").to_owned())
        };
        if matches!(field("State:").as_deref(), Some("Z" | "X")) {
            continue;
        }
        let (Some(ppid), Some(uid)) =
            (field("PPid:").and_then(|v| v.parse().ok()), field("Uid:").and_then(|v| v.parse().ok()))
        else {
            continue;
        };
        let comm = field("Name:").unwrap_or_default();
        let cmdline = std::fs::read(e.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " ").trim().to_owned())
            .unwrap_or_default();
        out.push(Proc { pid, ppid, uid, comm, cmdline });
    }
    out.sort_by_key(|p| p.pid);
    out
}

/// Whether a process is a kernel or its sandbox.
fn kernel_like(p: &Proc) -> bool {
    p.comm == "bwrap"
        || p.cmdline.contains("ipykernel")
        || p.cmdline.contains("kernel_launcher")
        || p.cmdline.contains("/cbk-")
        // The kernel fork server, a keeper, or a kernel forked from it.
        || p.cmdline.contains("_CODEBOX_FORKSERVER")
}

fn describe(p: &Proc) -> String {
    let cmd = if p.cmdline.len() > 120 { format!("{}...", &p.cmdline[..117]) } else { p.cmdline.clone() };
    format!("pid {} uid {} ppid {} {}: {cmd}", p.pid, p.uid, p.ppid, p.comm)
}

/// Find everything a finished test run left behind on `host`.
pub(crate) fn find(host: &Host) -> Leaks {
    let mut leaks = Leaks::default();
    let session = |uid: u32| host.uids.iter().any(|r| r.contains(&uid));

    let procs = processes(&host.proc);
    let alive: std::collections::BTreeSet<u32> = procs.iter().map(|p| p.pid).collect();
    for p in &procs {
        if session(p.uid) {
            leaks.add("processes of session uids", describe(p));
        } else if kernel_like(p) && (p.ppid == 1 || !alive.contains(&p.ppid)) {
            leaks.add("stray kernel processes", describe(p));
        }
    }

    for dir in session_cgroups(&host.cgroup) {
        leaks.add("session cgroups", dir.display().to_string());
    }

    for base in &host.owned {
        walk_owned(base, &session, &mut |path, uid| {
            leaks.add("files of session uids", format!("{} (uid {uid})", path.display()));
        });
    }

    for base in &host.temp {
        let Ok(rd) = std::fs::read_dir(base) else { continue };
        let mut names: Vec<(String, PathBuf)> =
            rd.flatten().map(|e| (e.file_name().to_string_lossy().into_owned(), e.path())).collect();
        names.sort();
        for (name, path) in names {
            if TEMP_PREFIXES.iter().any(|p| name.starts_with(p)) && !TEMP_KEPT.contains(&name.as_str()) {
                leaks.add("codebox temporary directories", path.display().to_string());
            }
        }
    }

    if let Ok(mounts) = std::fs::read_to_string(&host.mounts) {
        for line in mounts.lines() {
            let Some(target) = line.split_whitespace().nth(1) else { continue };
            let target = target.replace("\\040", " ");
            let leaf = Path::new(&target).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let under_temp = host.temp.iter().any(|t| Path::new(&target).starts_with(t));
            if under_temp && TEMP_PREFIXES.iter().any(|p| leaf.starts_with(p)) {
                leaks.add("mounted working-directory images", target);
            }
        }
    }
    leaks
}

/// Session cgroups: directories inside a `codebox` directory, anywhere under `root` (v1
/// controllers sit one level deeper than v2, and our own cgroup may be nested).
fn session_cgroups(root: &Path) -> Vec<PathBuf> {
    fn visit(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
        if depth > 8 {
            return;
        }
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = e.path();
            if e.file_name() == CGROUP_BASE {
                let Ok(sessions) = std::fs::read_dir(&path) else { continue };
                out.extend(sessions.flatten().filter(|s| s.file_type().is_ok_and(|t| t.is_dir())).map(|s| s.path()));
            } else {
                visit(&path, depth + 1, out);
            }
        }
    }
    let mut out = Vec::new();
    visit(root, 0, &mut out);
    out.sort();
    out
}

/// Call `found` for every file under `base` (itself included, links not followed) owned by a
/// uid for which `session` holds; a directory of a session uid is reported without its
/// contents.
fn walk_owned(base: &Path, session: &impl Fn(u32) -> bool, found: &mut impl FnMut(&Path, u32)) {
    let Ok(meta) = std::fs::symlink_metadata(base) else { return };
    if session(meta.uid()) {
        found(base, meta.uid());
        return;
    }
    if !meta.is_dir() {
        return;
    }
    let Ok(rd) = std::fs::read_dir(base) else { return };
    let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        walk_owned(&path, session, found);
    }
}

/// Run the check on this machine; an error lists what leaked.
pub(crate) fn check() -> Result<()> {
    let leaks = find(&Host::this());
    if leaks.is_empty() {
        eprintln!("==> leaks: nothing left behind");
        return Ok(());
    }
    bail!("the tests left things behind:\n{}", leaks.report())
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    use super::*;

    fn fake_proc(root: &Path, pid: u32, ppid: u32, uid: u32, name: &str, cmdline: &str) {
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let status = format!("Name:\t{name}\nState:\tS (sleeping)\nPPid:\t{ppid}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n");
        std::fs::write(dir.join("status"), status).unwrap();
        std::fs::write(dir.join("cmdline"), cmdline.replace(' ', "\0")).unwrap();
    }

    fn fake_host(base: &Path) -> Host {
        let (proc, cgroup, tmp, data) = (base.join("proc"), base.join("cgroup"), base.join("tmp"), base.join("data"));
        for d in [&proc, &cgroup, &tmp, &data] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(base.join("mounts"), "proc /proc proc rw 0 0\n").unwrap();
        Host {
            proc,
            cgroup,
            temp: vec![tmp.clone()],
            owned: vec![tmp, data],
            mounts: base.join("mounts"),
            uids: SESSION_UIDS.to_vec(),
        }
    }

    #[test]
    fn a_clean_host_has_no_leaks() {
        let base = tempfile::tempdir().unwrap();
        let host = fake_host(base.path());
        fake_proc(&host.proc, 1, 0, 0, "init", "/sbin/init");
        fake_proc(&host.proc, 50, 1, 0, "cargo", "cargo xtask ci");
        // A kernel whose owner is alive is not stray.
        fake_proc(&host.proc, 51, 50, 0, "bwrap", "bwrap --unshare-all -- python");
        std::fs::create_dir_all(host.cgroup.join("memory/ci/codebox")).unwrap();
        std::fs::create_dir_all(host.temp[0].join("codebox-data")).unwrap();
        std::fs::create_dir_all(host.temp[0].join("unrelated")).unwrap();
        let leaks = find(&host);
        assert!(leaks.is_empty(), "{}", leaks.report());
    }

    #[test]
    fn every_kind_of_leftover_is_reported() {
        let base = tempfile::tempdir().unwrap();
        let host = fake_host(base.path());
        fake_proc(&host.proc, 1, 0, 0, "init", "/sbin/init");
        fake_proc(&host.proc, 10, 1, 310_004, "python", "python -c loop");
        fake_proc(&host.proc, 11, 1, 0, "bwrap", "bwrap --unshare-all -- python");
        fake_proc(&host.proc, 12, 999, 0, "python", "python -m ipykernel_launcher -f /tmp/cbk-x/connection.json");
        fake_proc(&host.proc, 13, 1, 1000, "sleep", "sleep 60");
        fake_proc(&host.proc, 14, 1, 0, "python", "python -c _CODEBOX_FORKSERVER = True");
        std::fs::create_dir_all(host.cgroup.join("pids/ci/codebox/4242-0")).unwrap();
        std::fs::create_dir_all(host.cgroup.join("unified/codebox/4242-1")).unwrap();
        let work = host.temp[0].join("codebox-abc");
        std::fs::create_dir_all(host.temp[0].join("cbk-def")).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        let mounts = format!("proc /proc proc rw 0 0\n/dev/loop3 {} ext4 rw 0 0\n", work.display());
        std::fs::write(&host.mounts, mounts).unwrap();
        let owned = host.owned[1].join("sessions/left.txt");
        std::fs::create_dir_all(owned.parent().unwrap()).unwrap();
        std::fs::write(&owned, "x").unwrap();
        std::os::unix::fs::lchown(&owned, Some(320_001), Some(320_001)).unwrap();

        let leaks = find(&host);
        let uid_procs = leaks.of("processes of session uids");
        assert_eq!(uid_procs.len(), 1);
        assert!(uid_procs[0].starts_with("pid 10 uid 310004"), "{uid_procs:?}");
        let stray: Vec<String> = leaks.of("stray kernel processes").iter().map(|s| s[..7].to_owned()).collect();
        assert_eq!(stray, ["pid 11 ", "pid 12 ", "pid 14 "], "a parent that is gone counts like pid 1");
        assert_eq!(leaks.of("session cgroups").len(), 2);
        assert_eq!(leaks.of("codebox temporary directories").len(), 2);
        assert_eq!(leaks.of("mounted working-directory images"), [work.display().to_string()]);
        assert_eq!(leaks.of("files of session uids"), [format!("{} (uid 320001)", owned.display())]);
        let report = leaks.report();
        assert!(report.contains("session cgroups (2):"), "{report}");
        assert!(!report.contains("sleep"), "an ordinary process is no leak: {report}");
    }

    #[test]
    fn a_long_list_is_counted_not_dumped() {
        let mut leaks = Leaks::default();
        for i in 0..25 {
            leaks.add("session cgroups", format!("cg{i}"));
        }
        let report = leaks.report();
        assert!(report.contains("... and 5 more"), "{report}");
        assert!(!report.contains("cg24"), "{report}");
    }

    /// A real process under a session uid on this machine is found (needs root, as CI has).
    #[test]
    fn a_real_process_of_a_session_uid_is_found() {
        let uid = 329_999;
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .uid(uid)
            .gid(uid)
            .spawn()
            .expect("spawning a process under a session uid needs root (CI runs as root)");
        let only = std::iter::once(uid..uid + 1).collect();
        let host = Host { uids: only, temp: vec![], owned: vec![], ..Host::this() };
        let leaks = find(&host);
        child.kill().unwrap();
        child.wait().unwrap();
        let found = leaks.of("processes of session uids");
        assert_eq!(found.len(), 1, "{}", leaks.report());
        assert!(found[0].starts_with(&format!("pid {} uid {uid}", child.id())), "{found:?}");
        let after = find(&host);
        assert!(after.of("processes of session uids").is_empty(), "{}", after.report());
    }
}

//! A LocalBox's live metrics, read from its cgroup when it has one, else from its kernel's
//! process tree, plus its working directory's filesystem and its network namespace.
//!
//! Everything here is blocking file reading (`/proc`, `/sys/fs/cgroup`, a bounded walk of
//! the working directory); [`sample`] runs on the blocking pool.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use codebox_core::BoxMetrics;
use codebox_sandbox::Confinement;

/// The window of a box's first CPU measurement, when no earlier sample gives a start.
const FIRST_WINDOW: Duration = Duration::from_millis(100);

/// The most entries a walk of an unconfined working directory visits: past it, the disk use
/// is reported unavailable rather than slowing every sample down.
const WALK_LIMIT: usize = 20_000;

/// How deep that walk goes.
const WALK_DEPTH: usize = 64;

/// The box's previous CPU reading, the start of the next sample's window.
#[derive(Debug, Default)]
pub(crate) struct CpuBaseline(Mutex<Option<CpuMark>>);

#[derive(Debug, Clone, Copy)]
struct CpuMark {
    at: Instant,
    usage_ns: u64,
}

/// What one sample reads: the running kernel's process, the box's confinement (cgroup,
/// level) and its working directory.
pub(crate) struct Target {
    pub(crate) kernel_pid: i32,
    pub(crate) confinement: Arc<Confinement>,
    pub(crate) work_dir: PathBuf,
}

/// One process's counters from `/proc/<pid>/{stat,status,io}`.
#[derive(Debug, Default, Clone, Copy)]
struct ProcCounters {
    /// utime + stime + cutime + cstime: its own CPU time and that of the children it reaped.
    cpu_ticks: u64,
    rss_bytes: Option<u64>,
    read_bytes: Option<u64>,
    write_bytes: Option<u64>,
}

/// Measure the box now. Blocking: the first sample of a box waits [`FIRST_WINDOW`].
pub(crate) fn sample(target: &Target, baseline: &CpuBaseline) -> BoxMetrics {
    let mut m = BoxMetrics::new(BoxMetrics::now_ms());
    let cgroup = target.confinement.cgroup();
    let counted = cgroup.map(|cg| cg.counters()).unwrap_or_default();
    // With a cgroup, every process of the box (commands too); without, the kernel's tree.
    let pids = match cgroup {
        Some(cg) => cg.procs(),
        None => process_tree(target.kernel_pid),
    };
    let procs: Vec<(i32, ProcCounters)> = pids.iter().filter_map(|p| Some((*p, proc_counters(*p)?))).collect();
    m.processes = Some(procs.len() as u64).filter(|n| *n > 0);

    // CPU: the cgroup's counter covers every process the box ever had; the process tree's
    // covers the live ones and the children they reaped.
    let first_usage = counted.cpu_usage_ns.or_else(|| ticks_to_ns(procs.iter().map(|(_, c)| c.cpu_ticks)));
    m.cpu_percent = first_usage
        .and_then(|now| cpu_percent(baseline, now, &|| cpu_usage_now(target, counted.cpu_usage_ns.is_some())));
    let machine_cpus = std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
    m.cpu_count = Some(match counted.cpu_quota_millis {
        Some(millis) => u32::try_from(millis.div_ceil(1000)).unwrap_or(u32::MAX).clamp(1, machine_cpus),
        None => machine_cpus,
    });

    // Memory: the cgroup's usage (less reclaimable cache), else the tree's resident sets
    // (pages shared between them counted once per process).
    let machine_memory = codebox_sandbox::machine_memory();
    m.memory_used_bytes = counted.memory_used.or_else(|| sum(procs.iter().map(|(_, c)| c.rss_bytes)));
    m.memory_limit_bytes = counted.memory_limit.or(machine_memory);

    // Disk reads and writes: /proc/<pid>/io of the box's processes. Its read_bytes and
    // write_bytes count at the moment pages are read in or dirtied, and a reaped child's
    // counts move into its parent's, so the box's live processes carry its whole history
    // (the kernel's, at least: a restart starts afresh). cgroup v1 cannot do this: its blkio
    // controller charges buffered writeback to the root cgroup, so a box's plain 50 MB write
    // never shows there; v2's io.stat does charge the writer, but only once the pages are
    // written back, seconds later. Where v2 has counted more (the writer has exited, say),
    // its count is the better one.
    let proc_read = sum(procs.iter().map(|(_, c)| c.read_bytes));
    let proc_write = sum(procs.iter().map(|(_, c)| c.write_bytes));
    m.disk_read_bytes = max_of(proc_read, counted.io_read);
    m.disk_write_bytes = max_of(proc_write, counted.io_write);

    let (used, limit) = disk_use(&target.work_dir);
    m.disk_used_bytes = used;
    m.disk_limit_bytes = limit;

    // Network: only a namespace of the box's own tells its traffic from the host's.
    if let Some((rx, tx)) = pids.iter().find(|p| has_own_netns(**p)).and_then(|p| net_dev(*p)) {
        m.net_rx_bytes = Some(rx);
        m.net_tx_bytes = Some(tx);
    }
    m.mark_unavailable();
    m
}

/// The box's CPU time now, in nanoseconds: its cgroup's counter when `from_cgroup`, else
/// its processes'.
fn cpu_usage_now(target: &Target, from_cgroup: bool) -> Option<u64> {
    let cgroup = target.confinement.cgroup();
    if from_cgroup {
        return cgroup.and_then(|cg| cg.counters().cpu_usage_ns);
    }
    let pids = match cgroup {
        Some(cg) => cg.procs(),
        None => process_tree(target.kernel_pid),
    };
    ticks_to_ns(pids.iter().filter_map(|p| proc_counters(*p)).map(|c| c.cpu_ticks))
}

/// Clock ticks summed and turned into nanoseconds; `None` for no process at all.
fn ticks_to_ns(ticks: impl Iterator<Item = u64>) -> Option<u64> {
    let mut any = false;
    let total: u64 = ticks.inspect(|_| any = true).sum();
    any.then(|| total.saturating_mul(1_000_000_000) / clock_ticks())
}

/// CPU use in percent of one CPU since the baseline, or over a fresh [`FIRST_WINDOW`] when
/// there is none (or the counter went back: a process-based count after a kernel restart).
fn cpu_percent(baseline: &CpuBaseline, now_usage: u64, reread: &dyn Fn() -> Option<u64>) -> Option<f64> {
    let now = Instant::now();
    let mut mark = baseline.0.lock().unwrap_or_else(|e| e.into_inner());
    let start = match *mark {
        Some(prev) if prev.usage_ns <= now_usage && now > prev.at => prev,
        _ => {
            std::thread::sleep(FIRST_WINDOW);
            let start = CpuMark { at: now, usage_ns: now_usage };
            let end = CpuMark { at: Instant::now(), usage_ns: reread()?.max(now_usage) };
            *mark = Some(end);
            return Some(percent(start, end));
        }
    };
    let end = CpuMark { at: now, usage_ns: now_usage };
    *mark = Some(end);
    Some(percent(start, end))
}

fn percent(start: CpuMark, end: CpuMark) -> f64 {
    let wall = end.at.duration_since(start.at).as_nanos() as f64;
    if wall <= 0.0 {
        return 0.0;
    }
    (end.usage_ns - start.usage_ns) as f64 / wall * 100.0
}

/// The sum of the values, `None` when none is known.
fn sum(values: impl Iterator<Item = Option<u64>>) -> Option<u64> {
    values.flatten().fold(None, |acc, v| Some(acc.unwrap_or(0) + v))
}

fn max_of(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Clock ticks per second, the unit of `/proc/<pid>/stat`'s CPU times.
fn clock_ticks() -> u64 {
    rustix::param::clock_ticks_per_second().max(1)
}

/// A `Key:   123 kB` line's value in bytes.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.strip_prefix(key))?;
    line.split_whitespace().next()?.parse::<u64>().ok().map(|kib| kib * 1024)
}

/// The fields of `/proc/<pid>/stat` after the command name (which may hold spaces and
/// parentheses): the process state is the first.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().collect())
}

fn proc_counters(pid: i32) -> Option<ProcCounters> {
    let dir = PathBuf::from(format!("/proc/{pid}"));
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    let fields = stat_fields(&stat)?;
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime, stime, cutime, cstime are fields 14 to 17 of the line, 11 to 14 after the name.
    let cpu_ticks = tick(11) + tick(12) + tick(13) + tick(14);
    let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
    let io = std::fs::read_to_string(dir.join("io")).ok();
    let io_field =
        |key: &str| io.as_deref()?.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().parse::<u64>().ok());
    Some(ProcCounters {
        cpu_ticks,
        // A zombie or kernel thread has no VmRSS line: nothing resident.
        rss_bytes: Some(kib_field(&status, "VmRSS:").unwrap_or(0)),
        read_bytes: io_field("read_bytes:"),
        write_bytes: io_field("write_bytes:"),
    })
}

/// `root` and every process descending from it.
fn process_tree(root: i32) -> Vec<i32> {
    if !Path::new(&format!("/proc/{root}")).exists() {
        return Vec::new();
    }
    let mut tree = vec![root];
    tree.extend(codebox_sandbox::proctree::descendants(root));
    tree
}

/// Whether process `pid` lives in a network namespace other than this process's.
fn has_own_netns(pid: i32) -> bool {
    let ns = |p: &str| std::fs::metadata(format!("/proc/{p}/ns/net")).ok().map(|m| (m.dev(), m.ino()));
    match (ns(&pid.to_string()), ns("self")) {
        (Some(theirs), Some(ours)) => theirs != ours,
        _ => false,
    }
}

/// Bytes received and sent over every interface of `pid`'s network namespace, loopback
/// included: a namespace of the box's own carries only the box's traffic.
fn net_dev(pid: i32) -> Option<(u64, u64)> {
    parse_net_dev(&std::fs::read_to_string(format!("/proc/{pid}/net/dev")).ok()?)
}

fn parse_net_dev(text: &str) -> Option<(u64, u64)> {
    let mut totals = None;
    // Two header lines, then `iface: rx_bytes rx_packets ... (8 receive fields) tx_bytes ...`.
    for line in text.lines().skip(2) {
        let Some((_, counters)) = line.split_once(':') else { continue };
        let fields: Vec<u64> = counters.split_whitespace().filter_map(|v| v.parse().ok()).collect();
        if let (Some(rx), Some(tx)) = (fields.first(), fields.get(8)) {
            let (r, t) = totals.unwrap_or((0u64, 0u64));
            totals = Some((r + rx, t + tx));
        }
    }
    totals
}

/// The working directory's use and limit. A box with its own size-limited image (a confined
/// box on a server) has a filesystem of its own: its `statvfs`. Otherwise the directory
/// shares a filesystem with the host, whose size is no limit of the box's: the limit is
/// unavailable and the use is a walk of the directory, unavailable past [`WALK_LIMIT`] entries.
fn disk_use(work_dir: &Path) -> (Option<u64>, Option<u64>) {
    let own_filesystem = match (std::fs::metadata(work_dir), work_dir.parent().map(std::fs::metadata)) {
        (Ok(dir), Some(Ok(parent))) => dir.dev() != parent.dev(),
        _ => false,
    };
    if own_filesystem && let Ok(fs) = rustix::fs::statvfs(work_dir) {
        let size = fs.f_blocks.saturating_mul(fs.f_frsize);
        let free = fs.f_bfree.saturating_mul(fs.f_frsize);
        return (Some(size.saturating_sub(free)), Some(size));
    }
    (walk_use(work_dir), None)
}

/// Bytes allocated to everything under `dir`, on its device, never following links;
/// `None` past [`WALK_LIMIT`] entries or [`WALK_DEPTH`] levels.
fn walk_use(dir: &Path) -> Option<u64> {
    let dev = std::fs::symlink_metadata(dir).ok()?.dev();
    let mut total = 0u64;
    let mut seen = 0usize;
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((d, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            seen += 1;
            if seen > WALK_LIMIT {
                return None;
            }
            let Ok(meta) = entry.metadata() else { continue };
            total += meta.blocks() * 512;
            if meta.is_dir() && meta.dev() == dev {
                if depth + 1 >= WALK_DEPTH {
                    return None;
                }
                stack.push((entry.path(), depth + 1));
            }
        }
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_sums_every_interface() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
                    face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
                    lo: 5000 10 0 0 0 0 0 0 5000 10 0 0 0 0 0 0\n  \
                    eth0:   300 3 0 0 0 0 0 0 70 1 0 0 0 0 0 0\n";
        assert_eq!(parse_net_dev(text), Some((5300, 5070)));
        assert_eq!(parse_net_dev("header\nheader\n"), None);
    }

    #[test]
    fn stat_fields_survive_names_with_parentheses() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 2 1 20 0 1 0";
        let f = stat_fields(stat).unwrap();
        assert_eq!((f[0], f[1]), ("S", "1"));
        assert_eq!((f[11], f[12], f[13], f[14]), ("7", "3", "2", "1"));
    }

    #[test]
    fn this_process_is_measured() {
        let me = proc_counters(i32::try_from(std::process::id()).unwrap()).unwrap();
        assert!(me.rss_bytes.is_some_and(|r| r > 0));
        assert!(process_tree(i32::try_from(std::process::id()).unwrap()).contains(&(std::process::id() as i32)));
        assert!(!has_own_netns(std::process::id() as i32), "this process shares its own namespace");
    }

    #[test]
    fn a_walk_counts_files_and_an_unconfined_directory_has_no_limit() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/f"), vec![1u8; 256 * 1024]).unwrap();
        let (used, limit) = disk_use(dir.path());
        assert!(used.is_some_and(|u| u >= 256 * 1024), "{used:?}");
        assert_eq!(limit, None);
    }

    #[test]
    fn a_first_window_is_measured_then_samples_chain() {
        let baseline = CpuBaseline::default();
        let pct = cpu_percent(&baseline, 1_000, &|| Some(1_000 + 50_000_000)).unwrap();
        assert!(pct > 0.0, "{pct}");
        let mark = baseline.0.lock().unwrap().unwrap();
        assert_eq!(mark.usage_ns, 50_001_000);
        // A counter that went back (a restarted kernel's tree) opens a fresh window.
        assert!(cpu_percent(&baseline, 10, &|| Some(10)).unwrap() == 0.0);
    }
}

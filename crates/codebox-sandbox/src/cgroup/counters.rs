//! Reading what a session's cgroup counted (memory, CPU time and quota, tasks, v2 `io.stat`),
//! for a box's live metrics. The readers take the controllers' directories, so fixture trees
//! test both versions on any machine.

use std::path::Path;

use super::keyed;

/// What a session's cgroup counted, as the `counters()` of a box's
/// [`Confinement::cgroup`](crate::Confinement::cgroup) reads it. A counter the hierarchy does
/// not keep (v1 without cpuacct, say) or could not be read is `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CgroupCounters {
    /// Memory in use, in bytes: the controller's usage less the inactive file cache, which
    /// the kernel reclaims before it would count against the limit (as `docker stats`).
    pub memory_used: Option<u64>,
    /// The memory limit, in bytes; `None` without one.
    pub memory_limit: Option<u64>,
    /// CPU time of every process the session ever had, in nanoseconds.
    pub cpu_usage_ns: Option<u64>,
    /// The CPU quota, in thousandths of a CPU; `None` without one.
    pub cpu_quota_millis: Option<u64>,
    /// Tasks (processes and threads) in the session now.
    pub tasks: Option<u64>,
    /// Bytes read from block devices (v2 `io.stat`; v1 sessions have no blkio cgroup).
    pub io_read: Option<u64>,
    /// Bytes written to block devices (v2 `io.stat`), counted at writeback: later than the
    /// `write` that dirtied them.
    pub io_write: Option<u64>,
}

/// A v1 limit this large means "no limit" (the kernel shows its page-rounded `LLONG_MAX`).
const V1_UNLIMITED: u64 = 1 << 62;

/// The trimmed contents of a cgroup file, if it can be read.
fn read_value(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

fn read_u64(path: &Path) -> Option<u64> {
    read_value(path)?.parse().ok()
}

/// Usage less the inactive file cache (from `memory.stat`'s `key`).
fn memory_in_use(usage: Option<u64>, stat: &Path, key: &str) -> Option<u64> {
    usage.map(|u| u.saturating_sub(keyed(stat, key).unwrap_or(0)))
}

/// The counters of a v1 session whose controllers' directories are these.
pub(crate) fn counters_v1(memory: &Path, pids: &Path, cpu: &Path, cpuacct: Option<&Path>) -> CgroupCounters {
    let quota = read_value(&cpu.join("cpu.cfs_quota_us")).and_then(|q| q.parse::<i64>().ok());
    let period = read_u64(&cpu.join("cpu.cfs_period_us")).filter(|p| *p > 0);
    let cpu_quota_millis = match (quota, period) {
        (Some(q), Some(p)) if q > 0 => Some(q.unsigned_abs() * 1000 / p),
        _ => None,
    };
    CgroupCounters {
        memory_used: memory_in_use(
            read_u64(&memory.join("memory.usage_in_bytes")),
            &memory.join("memory.stat"),
            "total_inactive_file",
        ),
        memory_limit: read_u64(&memory.join("memory.limit_in_bytes")).filter(|l| *l < V1_UNLIMITED),
        cpu_usage_ns: cpuacct.and_then(|d| read_u64(&d.join("cpuacct.usage"))),
        cpu_quota_millis,
        tasks: read_u64(&pids.join("pids.current")),
        io_read: None,
        io_write: None,
    }
}

/// The counters of the v2 session cgroup `dir`.
pub(crate) fn counters_v2(dir: &Path) -> CgroupCounters {
    // `cpu.max` is `<quota|max> <period>`.
    let cpu_quota_millis = read_value(&dir.join("cpu.max")).and_then(|s| {
        let mut it = s.split_whitespace();
        let quota: u64 = it.next()?.parse().ok()?;
        let period: u64 = it.next()?.parse().ok().filter(|p| *p > 0)?;
        Some(quota * 1000 / period)
    });
    // `io.stat` has a line per device: `MAJ:MIN rbytes=N wbytes=N rios=N ...`.
    let io = read_value(&dir.join("io.stat")).map(|s| {
        let mut sums = (0u64, 0u64);
        for field in s.lines().flat_map(|l| l.split_whitespace().skip(1)) {
            match field.split_once('=') {
                Some(("rbytes", v)) => sums.0 += v.parse::<u64>().unwrap_or(0),
                Some(("wbytes", v)) => sums.1 += v.parse::<u64>().unwrap_or(0),
                _ => {}
            }
        }
        sums
    });
    CgroupCounters {
        memory_used: memory_in_use(read_u64(&dir.join("memory.current")), &dir.join("memory.stat"), "inactive_file"),
        // `max` does not parse: no limit.
        memory_limit: read_u64(&dir.join("memory.max")),
        cpu_usage_ns: keyed(&dir.join("cpu.stat"), "usage_usec").map(|us| us.saturating_mul(1000)),
        cpu_quota_millis,
        tasks: read_u64(&dir.join("pids.current")),
        io_read: io.map(|(r, _)| r),
        io_write: io.map(|(_, w)| w),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        dir
    }

    #[test]
    fn v2_counters_are_read_from_a_session_tree() {
        let dir = fixture(&[
            ("memory.current", "314572800\n"),
            ("memory.max", "1073741824\n"),
            ("memory.stat", "anon 209715200\nfile 104857600\nactive_file 62914560\ninactive_file 41943040\n"),
            ("cpu.stat", "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 0\n"),
            ("cpu.max", "150000 100000\n"),
            ("pids.current", "7\n"),
            (
                "io.stat",
                "8:0 rbytes=4096 wbytes=52428800 rios=1 wios=400 dbytes=0 dios=0\n259:0 rbytes=100 wbytes=5 rios=1 wios=1\n",
            ),
        ]);
        let c = counters_v2(dir.path());
        assert_eq!(c.memory_used, Some(314_572_800 - 41_943_040));
        assert_eq!(c.memory_limit, Some(1 << 30));
        assert_eq!(c.cpu_usage_ns, Some(2_500_000_000));
        assert_eq!(c.cpu_quota_millis, Some(1500));
        assert_eq!(c.tasks, Some(7));
        assert_eq!((c.io_read, c.io_write), (Some(4196), Some(52_428_805)));
    }

    #[test]
    fn v2_without_limits_or_files_reports_none() {
        let dir = fixture(&[("memory.current", "1000\n"), ("memory.max", "max\n"), ("cpu.max", "max 100000\n")]);
        let c = counters_v2(dir.path());
        assert_eq!(c.memory_used, Some(1000), "no memory.stat: nothing to subtract");
        assert_eq!(
            (c.memory_limit, c.cpu_quota_millis, c.cpu_usage_ns, c.tasks, c.io_write),
            (None, None, None, None, None)
        );
    }

    #[test]
    fn v1_counters_are_read_from_controller_trees() {
        let memory = fixture(&[
            ("memory.usage_in_bytes", "209715200\n"),
            ("memory.limit_in_bytes", "9223372036854771712\n"),
            ("memory.stat", "cache 0\ntotal_inactive_file 1048576\n"),
        ]);
        let pids = fixture(&[("pids.current", "3\n")]);
        let cpu = fixture(&[("cpu.cfs_quota_us", "-1\n"), ("cpu.cfs_period_us", "100000\n")]);
        let cpuacct = fixture(&[("cpuacct.usage", "123456789\n")]);
        let c = counters_v1(memory.path(), pids.path(), cpu.path(), Some(cpuacct.path()));
        assert_eq!(c.memory_used, Some(209_715_200 - 1_048_576));
        assert_eq!(c.memory_limit, None, "the kernel's LLONG_MAX is no limit");
        assert_eq!((c.cpu_usage_ns, c.cpu_quota_millis, c.tasks), (Some(123_456_789), None, Some(3)));
        assert_eq!(counters_v1(memory.path(), pids.path(), cpu.path(), None).cpu_usage_ns, None);
    }
}

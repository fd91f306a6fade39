//! How much memory this process's machine gives it: the machine's own, and the limit of the
//! cgroup it runs in (a container's or a Kubernetes pod's), whichever is smaller.

use std::path::{Path, PathBuf};

/// The memory a host of boxes can count on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HostMemory {
    /// The machine's memory (`MemTotal` of `/proc/meminfo`), in bytes.
    pub machine: u64,
    /// The tightest memory limit of this process's cgroup and its ancestors, in bytes; `None`
    /// when there is none (or no cgroup memory controller).
    pub cgroup_limit: Option<u64>,
}

impl HostMemory {
    /// What this process and its children may use: the smaller of the two.
    pub fn available(&self) -> u64 {
        self.cgroup_limit.map_or(self.machine, |l| l.min(self.machine))
    }
}

/// Read this process's [`HostMemory`]; `None` where `/proc/meminfo` cannot be read.
pub fn host_memory() -> Option<HostMemory> {
    let machine = machine_memory()?;
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let cgroup_limit = cgroup_memory_limit(Path::new("/sys/fs/cgroup"), &cgroup);
    Some(HostMemory { machine, cgroup_limit })
}

/// The machine's memory, from `/proc/meminfo`.
pub fn machine_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    line.split_whitespace().next()?.parse::<u64>().ok().map(|kib| kib * 1024)
}

/// The tightest memory limit on the way from `root` down to the cgroup `/proc/self/cgroup`
/// (its text, `proc_cgroup`) names: v2's `memory.max` where the unified hierarchy has the
/// memory controller, else v1's `memory.limit_in_bytes` (whose "no limit" is a huge number,
/// left out by comparing with the largest page-aligned value it reports).
fn cgroup_memory_limit(root: &Path, proc_cgroup: &str) -> Option<u64> {
    let own = crate::cgroup::parse_proc_cgroup(proc_cgroup);
    let v2_path = own.iter().find(|(controllers, _)| controllers.is_empty()).map(|(_, p)| p.as_str());
    let v1_path =
        own.iter().find(|(controllers, _)| controllers.split(',').any(|c| c == "memory")).map(|(_, p)| p.as_str());
    let v2_has_memory = std::fs::read_to_string(root.join("cgroup.controllers"))
        .is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"));
    let (mount, path, file) = match (v2_path, v1_path) {
        (Some(p), _) if v2_has_memory => (root.to_path_buf(), p, "memory.max"),
        (_, Some(p)) => (root.join("memory"), p, "memory.limit_in_bytes"),
        _ => return None,
    };
    // Every directory from the mount down to ours: a parent's limit binds its children.
    let mut dirs: Vec<PathBuf> = vec![mount.clone()];
    let mut dir = mount;
    for part in path.split('/').filter(|p| !p.is_empty() && *p != "..") {
        dir.push(part);
        dirs.push(dir.clone());
    }
    dirs.iter()
        .filter_map(|d| std::fs::read_to_string(d.join(file)).ok())
        .filter_map(|text| text.trim().parse::<u64>().ok())
        // v1 writes "no limit" as the largest page multiple of an i64; anything past an
        // exbibyte is that.
        .filter(|&limit| limit < 1 << 60)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn the_tightest_v2_limit_on_the_way_down_counts() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write(&r.join("cgroup.controllers"), "cpuset cpu io memory pids\n");
        write(&r.join("kubepods/memory.max"), "4294967296\n");
        write(&r.join("kubepods/pod1/memory.max"), "max\n");
        write(&r.join("kubepods/pod1/server/memory.max"), "8589934592\n");
        let limit = cgroup_memory_limit(r, "0::/kubepods/pod1/server\n");
        assert_eq!(limit, Some(4 << 30));
        assert_eq!(cgroup_memory_limit(r, "0::/elsewhere\n"), None, "no limit file says no limit");
    }

    #[test]
    fn v1_reads_the_memory_hierarchy_and_ignores_its_no_limit_value() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write(&r.join("memory/memory.limit_in_bytes"), "9223372036854771712\n");
        write(&r.join("memory/docker/abc/memory.limit_in_bytes"), "2147483648\n");
        let text = "12:pids:/docker/abc\n4:memory:/docker/abc\n0::/\n";
        assert_eq!(cgroup_memory_limit(r, text), Some(2 << 30));
        write(&r.join("memory/docker/abc/memory.limit_in_bytes"), "9223372036854771712\n");
        assert_eq!(cgroup_memory_limit(r, text), None);
    }

    #[test]
    fn the_smaller_of_machine_and_cgroup_is_available() {
        let m = HostMemory { machine: 24 << 30, cgroup_limit: Some(2 << 30) };
        assert_eq!(m.available(), 2 << 30);
        let m = HostMemory { machine: 24 << 30, cgroup_limit: None };
        assert_eq!(m.available(), 24 << 30);
        let here = host_memory().expect("/proc/meminfo is readable on Linux");
        assert!(here.machine > 0 && here.available() <= here.machine);
    }
}

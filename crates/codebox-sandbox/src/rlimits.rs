//! rlimits of a kernel, set between fork and exec.
//!
//! `RLIMIT_DATA` rather than `RLIMIT_AS` (an idle ipykernel maps about 740 MB), no
//! `RLIMIT_NPROC` (it counts every process of the uid), core dumps always off.

use rustix::process::{Resource, Rlimit};

use super::Limits;

/// The rlimits to set, soft = hard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RlimitSet {
    entries: [(Resource, Option<u64>); 4],
}

impl RlimitSet {
    /// The rlimits of `limits`: `RLIMIT_DATA`, `RLIMIT_FSIZE`, `RLIMIT_NOFILE` when set,
    /// `RLIMIT_CORE` 0 always.
    pub(crate) fn from_limits(limits: &Limits) -> Self {
        Self {
            entries: [
                (Resource::Data, limits.data),
                (Resource::Fsize, limits.file_size),
                (Resource::Nofile, limits.open_files),
                (Resource::Core, Some(0)),
            ],
        }
    }

    /// The entries that will be set, as `(resource, bytes or count)`.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (Resource, u64)> + '_ {
        self.entries.iter().filter_map(|(r, v)| v.map(|v| (*r, v)))
    }

    /// Set them on the calling process. Async-signal-safe (one `prlimit64` per entry, no
    /// allocation), so it may run between fork and exec. A limit is only ever lowered: one
    /// above the current hard limit is clamped to it.
    pub(crate) fn apply(&self) -> std::io::Result<()> {
        for (resource, value) in self.entries() {
            let hard = rustix::process::getrlimit(resource).maximum;
            let value = hard.map_or(value, |h| value.min(h));
            rustix::process::setrlimit(resource, Rlimit { current: Some(value), maximum: Some(value) })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn core_dumps_are_always_off() {
        let set = RlimitSet::from_limits(&Limits::unlimited());
        assert_eq!(set.entries().collect::<Vec<_>>(), vec![(Resource::Core, 0)]);
        let set = RlimitSet::from_limits(&Limits::default());
        assert_eq!(set.entries().count(), 4);
    }

    #[test]
    #[allow(unsafe_code, reason = "pre_exec applies the rlimits in the child, see the SAFETY note")]
    fn limits_reach_a_child_process() {
        use std::os::unix::process::CommandExt;
        let limits =
            Limits { data: Some(300 << 20), file_size: Some(1 << 20), open_files: Some(64), ..Limits::default() };
        let set = RlimitSet::from_limits(&limits);
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "ulimit -d; ulimit -f; ulimit -n; ulimit -c"]);
        // SAFETY: `apply` is async-signal-safe: it only calls prlimit64.
        unsafe { cmd.pre_exec(move || set.apply()) };
        let out = cmd.output().unwrap();
        assert!(out.status.success());
        // dash reports -d in KiB and -f in 512-byte blocks.
        let lines: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
        assert_eq!(lines, [(300 << 10).to_string(), "2048".into(), "64".into(), "0".into()]);
    }
}

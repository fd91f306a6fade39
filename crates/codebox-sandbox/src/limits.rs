//! Resource limits of one kernel.

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// Resource limits of one kernel. `None` means "no limit of this kind".
///
/// rlimits (`data`, `file_size`, `open_files`, core dumps off) apply at every isolation
/// level; `memory`, `pids` and `cpu` need a per-session cgroup (the server); the tmpfs sizes
/// apply under bubblewrap.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Limits {
    /// Hard memory limit of the kernel and everything it starts (cgroup), in bytes. Past it
    /// the kernel is OOM-killed and restarted.
    pub memory: Option<u64>,
    /// `RLIMIT_DATA`, in bytes: an allocation past it raises `MemoryError` and the kernel
    /// lives on. Keep it a little under `memory`.
    pub data: Option<u64>,
    /// Most processes and threads at once (cgroup `pids.max`).
    pub pids: Option<u64>,
    /// CPU share in thousandths of a CPU (cgroup `cpu.max` / `cpu.cfs_quota_us`), e.g.
    /// `1000` for one CPU. Whole numbers, so that limits compare and hash exactly.
    pub cpu_millis: Option<u32>,
    /// `RLIMIT_FSIZE`: the largest file the kernel may write, in bytes.
    pub file_size: Option<u64>,
    /// `RLIMIT_NOFILE`: most open descriptors per process.
    pub open_files: Option<u64>,
    /// Size of the private `/tmp` tmpfs, in bytes.
    pub tmp_size: u64,
    /// Size of the private `/dev/shm` tmpfs, in bytes.
    pub shm_size: u64,
    /// Size of the private `HOME` tmpfs, in bytes.
    pub home_size: u64,
    /// Size limit of the working directory, in bytes: a sparse ext4 image mounted over it
    /// (needs root and `mkfs.ext4`).
    pub workdir_size: Option<u64>,
    /// Most files and directories in the working directory (with `workdir_size`).
    pub workdir_inodes: u64,
    /// The largest single message a kernel may send, in bytes. A kernel that sends a larger
    /// one (say one `print` of 200 MB) is recycled before the message reaches this process.
    pub max_message: u64,
}

impl Default for Limits {
    /// The local defaults: `RLIMIT_DATA` 2 GiB, files up to 1 GiB, 1024 descriptors, no
    /// cgroup limits; `/tmp` 256 MiB, `/dev/shm` 64 MiB, `HOME` 16 MiB; messages up to 64 MiB.
    fn default() -> Self {
        Self {
            memory: None,
            data: Some(2 * GIB),
            pids: None,
            cpu_millis: None,
            file_size: Some(GIB),
            open_files: Some(1024),
            tmp_size: 256 * MIB,
            shm_size: 64 * MIB,
            home_size: 16 * MIB,
            workdir_size: None,
            workdir_inodes: 100_000,
            max_message: 64 * MIB,
        }
    }
}

impl Limits {
    /// The server defaults: 1 GiB of memory (`RLIMIT_DATA` at 0.9 of it), 256 processes,
    /// one CPU, files up to 1 GiB, 1024 descriptors, a 1 GiB working directory with at most
    /// 100 000 files.
    pub fn server() -> Self {
        Self {
            memory: Some(GIB),
            data: Some(GIB / 10 * 9),
            pids: Some(256),
            cpu_millis: Some(1000),
            workdir_size: Some(GIB),
            ..Self::default()
        }
    }

    /// No limits at all (tmpfs sizes stay, since a tmpfs always has one).
    pub fn unlimited() -> Self {
        Self { data: None, file_size: None, open_files: None, ..Self::default() }
    }

    /// Set the hard memory limit and put `RLIMIT_DATA` at 90 % of it.
    pub fn with_memory(mut self, bytes: u64) -> Self {
        self.memory = Some(bytes);
        self.data = Some(bytes / 10 * 9);
        self
    }

    /// Set `RLIMIT_DATA` (`None`: no limit).
    pub fn with_data(mut self, bytes: Option<u64>) -> Self {
        self.data = bytes;
        self
    }

    /// Set the process and thread limit (`None`: no limit).
    pub fn with_pids(mut self, pids: Option<u64>) -> Self {
        self.pids = pids;
        self
    }

    /// Set the CPU share in CPUs, e.g. `0.5` (`None`: no limit); kept to the thousandth of a
    /// CPU. A share that is not a positive finite number is kept as one that
    /// [`validate`](Self::validate) refuses.
    pub fn with_cpu(mut self, cpus: Option<f64>) -> Self {
        self.cpu_millis = cpus.map(|c| {
            // `as` saturates: NaN and negative shares become 0, which `validate` refuses.
            if c.is_finite() { (c * 1000.0).round() as u32 } else { 0 }
        });
        self
    }

    /// Set the CPU share in thousandths of a CPU (`None`: no limit).
    pub fn with_cpu_millis(mut self, millis: Option<u32>) -> Self {
        self.cpu_millis = millis;
        self
    }

    /// Set `RLIMIT_FSIZE` (`None`: no limit).
    pub fn with_file_size(mut self, bytes: Option<u64>) -> Self {
        self.file_size = bytes;
        self
    }

    /// Set `RLIMIT_NOFILE` (`None`: no limit).
    pub fn with_open_files(mut self, n: Option<u64>) -> Self {
        self.open_files = n;
        self
    }

    /// Set the sizes of the private `/tmp`, `/dev/shm` and `HOME` tmpfs.
    pub fn with_tmpfs_sizes(mut self, tmp: u64, shm: u64, home: u64) -> Self {
        (self.tmp_size, self.shm_size, self.home_size) = (tmp, shm, home);
        self
    }

    /// Set the working directory's size limit (`None`: no limit) and most files in it.
    pub fn with_workdir_size(mut self, bytes: Option<u64>, inodes: u64) -> Self {
        self.workdir_size = bytes;
        self.workdir_inodes = inodes;
        self
    }

    /// Set the largest single message a kernel may send (at least 64 KiB).
    pub fn with_max_message(mut self, bytes: u64) -> Self {
        self.max_message = bytes;
        self
    }

    /// Check the values: sizes must be positive, the CPU share finite and positive, and
    /// `data` no larger than `memory`.
    pub fn validate(&self) -> codebox_core::Result<()> {
        let bad = |what: &str| Err(codebox_core::CodeBoxError::invalid(format!("limit {what}")));
        for (name, value) in [
            ("memory", self.memory),
            ("data", self.data),
            ("pids", self.pids),
            ("file_size", self.file_size),
            ("open_files", self.open_files),
            ("workdir_size", self.workdir_size),
        ] {
            if value == Some(0) {
                return bad(&format!("{name} must be positive"));
            }
        }
        for (name, value) in [("tmp_size", self.tmp_size), ("shm_size", self.shm_size), ("home_size", self.home_size)] {
            if value < MIB {
                return bad(&format!("{name} must be at least 1 MiB"));
            }
        }
        if self.workdir_size.is_some_and(|w| w < 8 * MIB) {
            return bad("workdir_size must be at least 8 MiB");
        }
        if self.max_message < 64 * 1024 {
            return bad("max_message must be at least 64 KiB");
        }
        if self.workdir_inodes < 16 {
            return bad("workdir_inodes must be at least 16");
        }
        if self.cpu_millis.is_some_and(|m| m < 10) {
            return bad("cpu must be a number of CPUs of at least 0.01");
        }
        if let (Some(memory), Some(data)) = (self.memory, self.data)
            && data > memory
        {
            return bad("data (RLIMIT_DATA) must not exceed memory");
        }
        if let Some(memory) = self.memory
            && memory < 64 * MIB
        {
            return bad("memory must be at least 64 MiB: a Python kernel needs about 50 MiB idle");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_table() {
        let local = Limits::default();
        assert_eq!(local.data, Some(2 * GIB));
        assert_eq!(local.memory, None);
        assert_eq!((local.tmp_size, local.shm_size, local.home_size), (256 * MIB, 64 * MIB, 16 * MIB));
        let server = Limits::server();
        assert_eq!(server.memory, Some(GIB));
        assert!(server.data.unwrap() < GIB && server.data.unwrap() > GIB / 10 * 8);
        assert_eq!(server.pids, Some(256));
        assert_eq!(server.open_files, Some(1024));
        assert_eq!((local.max_message, server.max_message), (64 * MIB, 64 * MIB));
        local.validate().unwrap();
        server.validate().unwrap();
        Limits::unlimited().validate().unwrap();
    }

    #[test]
    fn bad_limits_are_refused_with_their_name() {
        let err = Limits { pids: Some(0), ..Limits::server() }.validate().unwrap_err().to_string();
        assert!(err.contains("pids"), "{err}");
        let err = Limits { data: Some(2 * GIB), ..Limits::server() }.validate().unwrap_err().to_string();
        assert!(err.contains("RLIMIT_DATA"), "{err}");
        for bad_cpu in [f64::NAN, f64::INFINITY, -1.0, 0.004] {
            let err = Limits::server().with_cpu(Some(bad_cpu)).validate().unwrap_err().to_string();
            assert!(err.contains("cpu"), "{bad_cpu}: {err}");
        }
        let err = Limits { tmp_size: 10, ..Limits::default() }.validate().unwrap_err().to_string();
        assert!(err.contains("tmp_size"), "{err}");
        let err = Limits::server().with_memory(MIB).validate().unwrap_err().to_string();
        assert!(err.contains("64 MiB"), "{err}");
        let err = Limits::default().with_max_message(1024).validate().unwrap_err().to_string();
        assert!(err.contains("max_message"), "{err}");
    }

    #[test]
    fn cpu_shares_are_kept_in_thousandths() {
        assert_eq!(Limits::default().with_cpu(Some(0.5)).cpu_millis, Some(500));
        assert_eq!(Limits::default().with_cpu(Some(1.0)), Limits::default().with_cpu_millis(Some(1000)));
        assert_eq!(Limits::default().with_cpu(Some(0.0125)).cpu_millis, Some(13));
        assert_eq!(Limits::server().cpu_millis, Some(1000));
        assert_eq!(Limits::default().with_cpu(None).cpu_millis, None);
    }

    #[test]
    fn with_memory_keeps_data_under_it() {
        let l = Limits::default().with_memory(512 * MIB);
        assert_eq!(l.memory, Some(512 * MIB));
        assert!(l.data.unwrap() < 512 * MIB);
        l.validate().unwrap();
    }
}

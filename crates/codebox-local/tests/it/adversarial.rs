//! The adversarial suite: code that tries to break out of, exhaust or crash a sandboxed box,
//! each case asserting the behaviour the isolation design promises. The numbers are those of
//! the case list in the isolation research (section 10).
//!
//! Every case runs under bubblewrap (required, never silently skipped: CI installs it and runs
//! as root) and ends with a leak check: the kernel process, the session's uid, cgroup, working
//! directory and socket directory are all gone, and so is every process the case started.
//! `cargo xtask ci` then checks the whole machine once every test has exited (processes and
//! files of session uids, session cgroups, temporary directories, orphaned kernels: see
//! `xtask/src/leaks.rs`, whose uid ranges include this suite's).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use codebox_core::{BoxState, CodeBox, CodeBoxError, CodeBoxExt, ErrorKind, KernelDeath, Outcome, RunOptions};
use codebox_local::{Isolation, Limits, LocalBox, LocalBoxBuilder, SandboxPolicy, UidAllocator};
use codebox_sandbox::processes_in_range;
use futures::StreamExt;

use crate::orphans::{alive, wait_until_dead};

const MIB: u64 = 1024 * 1024;

/// Session uids of this suite (disjoint from the unit tests' ranges).
fn uids() -> UidAllocator {
    static ALLOC: std::sync::OnceLock<UidAllocator> = std::sync::OnceLock::new();
    ALLOC.get_or_init(|| UidAllocator::new(310_000..310_100).unwrap()).clone()
}

/// Fail instead of hanging when a fault is not handled.
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(90), f).await.unwrap_or_else(|_| panic!("{what} hung"))
}

/// Bubblewrap, required.
fn bubblewrap() -> SandboxPolicy {
    SandboxPolicy::default().with_isolation(Isolation::Bubblewrap).with_require_isolation(true)
}

/// A box under bubblewrap, required.
fn sandboxed() -> LocalBoxBuilder {
    crate::builder().with_sandbox(bubblewrap())
}

/// A box under bubblewrap, required, with `limits`.
fn sandboxed_with(limits: Limits) -> LocalBoxBuilder {
    crate::builder().with_sandbox(bubblewrap().with_limits(limits))
}

/// A box as the server runs one: its own uid and cgroup, with `limits`; `None` (the case is
/// reported as skipped) without root, which uids and cgroups need.
fn try_server_box(limits: Limits) -> Option<LocalBoxBuilder> {
    let root = rustix::process::geteuid().is_root();
    codebox_core::conformance::requires("root (session uids and cgroups); run the tests as root", root).then(|| {
        crate::builder()
            .with_sandbox(bubblewrap().with_session_uids(Some(uids())).with_cgroups(true).with_limits(limits))
    })
}

/// [`try_server_box`], returning from the calling case when it cannot run here.
macro_rules! server_box {
    ($limits:expr) => {
        match try_server_box($limits) {
            Some(builder) => builder,
            None => return,
        }
    };
}

/// What a started box holds on the host, checked for leaks when the case ends.
struct Tracked {
    lb: LocalBox,
    pids: Vec<i32>,
    uids: Vec<u32>,
    paths: Vec<PathBuf>,
    tokens: Vec<String>,
}

impl Tracked {
    async fn start(builder: LocalBoxBuilder) -> Self {
        Self::start_at(builder, "bubblewrap").await
    }

    /// Start a box that must run at isolation `level`.
    async fn start_at(builder: LocalBoxBuilder, level: &str) -> Self {
        let lb = builder.build().unwrap();
        within("start", lb.start()).await.unwrap();
        let st = lb.status().await.unwrap();
        assert_eq!(st.isolation.as_deref(), Some(level), "{st:?}");
        let mut t = Self { lb, pids: vec![], uids: vec![], paths: vec![], tokens: vec![] };
        t.snapshot().await;
        t
    }

    /// Record the current kernel's resources (call again after a restart).
    async fn snapshot(&mut self) {
        let lb = &self.lb;
        self.pids.extend(lb.kernel_pid().await);
        self.uids.extend(lb.session_uid().await);
        self.paths.extend(lb.working_dir().await);
        self.paths.extend(lb.runtime_dir().await);
        self.paths.extend(lb.cgroup_paths().await);
    }

    /// A unique marker to find processes the case starts inside the box.
    fn token(&mut self) -> String {
        let t = format!("{}", 4_000_000 + rand_u32() % 1_000_000);
        self.tokens.push(t.clone());
        t
    }

    /// Stop the box and check that nothing it had is left.
    async fn finish(mut self) {
        self.snapshot().await;
        within("stop", self.lb.stop()).await.unwrap();
        leak_check(&self.pids, &self.uids, &self.paths, &self.tokens);
    }
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    getrandom_fill(&mut b);
    u32::from_ne_bytes(b)
}

fn getrandom_fill(buf: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom").unwrap().read_exact(buf).unwrap();
}

/// Live host processes whose command line contains `token`.
fn processes_with(token: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| *pid as u32 != std::process::id())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(token))
                .unwrap_or(false)
        })
        .filter(|pid| alive(*pid))
        .collect()
}

/// Nothing of a finished box remains: processes, uid processes, directories, cgroups.
fn leak_check(pids: &[i32], uids: &[u32], paths: &[PathBuf], tokens: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let leaks = || {
        let mut l: Vec<String> = Vec::new();
        l.extend(pids.iter().filter(|p| alive(**p)).map(|p| format!("kernel process {p}")));
        for uid in uids {
            let left = processes_in_range(&(*uid..*uid + 1));
            if !left.is_empty() {
                l.push(format!("processes {left:?} of session uid {uid}"));
            }
        }
        l.extend(paths.iter().filter(|p| p.exists()).map(|p| format!("path {}", p.display())));
        for t in tokens {
            let left = processes_with(t);
            if !left.is_empty() {
                l.push(format!("processes {left:?} started by the case ({t})"));
            }
        }
        l
    };
    loop {
        let l = leaks();
        if l.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "leaked after the box stopped: {l:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Run a probe in the box and parse its `key=value` lines.
async fn facts(lb: &LocalBox, code: &str) -> std::collections::BTreeMap<String, String> {
    let ex = within("probe", lb.exec(code)).await.unwrap();
    assert!(ex.is_ok(), "probe failed: {:?}", ex.error());
    ex.stdout().lines().filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned()))).collect()
}

const ERR: &str = r#"
import errno, os, socket, ctypes
def err(f):
    try:
        f(); return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
"#;

// 1. Fork bomb: capped at pids.max, BlockingIOError inside, back to baseline afterwards.
#[tokio::test]
async fn case01_fork_bomb_is_capped_by_the_pids_limit() {
    let t = Tracked::start(server_box!(Limits::server().with_pids(Some(64)))).await;
    let code = r#"
import os, time
deadline = time.time() + 3
fails = 0
kids = []
while time.time() < deadline:
    try:
        pid = os.fork()
    except BlockingIOError:
        fails += 1
        time.sleep(0.01)
        continue
    if pid == 0:
        while time.time() < deadline:
            try:
                if os.fork() == 0:
                    time.sleep(max(0, deadline - time.time()))
                    os._exit(0)
            except OSError:
                time.sleep(0.01)
        os._exit(0)
    kids.append(pid)
for k in kids:
    os.waitpid(k, 0)
time.sleep(0.5)
print(f"fails={fails}")
"#;
    let f = facts(&t.lb, code).await;
    assert!(f["fails"].parse::<u32>().unwrap() > 0, "the bomb never hit the limit: {f:?}");
    // Back to baseline: only the namespace's init and the kernel are left.
    let n = facts(&t.lb, "import os\nprint('n=%d' % len([p for p in os.listdir('/proc') if p.isdigit()]))").await;
    assert!(n["n"].parse::<u32>().unwrap() <= 3, "{n:?}");
    assert_eq!(t.lb.exec("1+1").await.unwrap().text(), "2");
    t.finish().await;
}

// 2. A 2 GB bytearray: MemoryError from RLIMIT_DATA; the kernel and its variables survive.
#[tokio::test]
async fn case02_memory_hog_gets_memory_error_and_keeps_state() {
    let t = Tracked::start(server_box!(Limits::server().with_memory(768 * MIB))).await;
    t.lb.exec("kept = 41").await.unwrap();
    let ex = within("hog", t.lb.exec("x = bytearray(2 * 1024**3)")).await.unwrap();
    assert_eq!(ex.error().map(|e| e.name.as_str()), Some("MemoryError"), "{ex:?}");
    assert_eq!(t.lb.exec("kept + 1").await.unwrap().text(), "42");
    assert_eq!(t.lb.status().await.unwrap().restarts, 0);
    t.finish().await;
}

// 3. MAP_SHARED memory bypasses RLIMIT_DATA: the cgroup OOM-kills the kernel, the call fails
//    at once with OutOfMemory, the box restarts and works.
#[tokio::test]
async fn case03_shared_memory_hog_is_oom_killed_and_the_box_heals() {
    let mut t = Tracked::start(server_box!(Limits::server().with_memory(384 * MIB))).await;
    let code = "import mmap\nm = mmap.mmap(-1, 2 * 1024**3)\nfor i in range(0, len(m), 4096): m[i] = 1";
    let err = within("shared hog", t.lb.exec(code)).await.unwrap_err();
    match &err {
        CodeBoxError::KernelDied { cause, .. } => assert_eq!(cause, &KernelDeath::OutOfMemory, "{err}"),
        other => panic!("expected KernelDied(OutOfMemory), got {other:?}"),
    }
    assert!(err.to_string().contains("out of memory"), "{err}");
    assert_eq!(within("after OOM", t.lb.exec("1+1")).await.unwrap().text(), "2");
    assert_eq!(t.lb.status().await.unwrap().restarts, 1);
    t.snapshot().await;
    t.finish().await;
}

// 4. An infinite pure-Python loop: the deadline interrupts it; state is kept.
#[tokio::test]
async fn case04_infinite_loop_is_interrupted_over_the_control_channel() {
    let t = Tracked::start(sandboxed()).await;
    t.lb.exec("kept = 'yes'").await.unwrap();
    let opts = RunOptions::new().with_timeout(Duration::from_millis(500));
    let ex = within("loop", t.lb.run("while True: pass", opts)).await.unwrap();
    assert_eq!(ex.outcome, Outcome::TimedOut);
    assert_eq!(t.lb.exec("kept").await.unwrap().text(), "'yes'");
    assert_eq!(t.lb.status().await.unwrap().restarts, 0, "bwrap must not get a SIGINT");
    t.finish().await;
}

// 5. A GIL-holding C loop ignores the interrupt: killed after the grace, restarted, and the
//    error says the state was lost.
#[tokio::test]
async fn case05_gil_holding_loop_is_killed_and_restarted() {
    let mut t = Tracked::start(sandboxed().with_interrupt_grace(Duration::from_secs(1))).await;
    t.lb.exec("kept = 1").await.unwrap();
    let code = "import re\nre.match(r'(a+)+$', 'a' * 40 + 'b')";
    let err =
        within("regex", t.lb.run(code, RunOptions::new().with_timeout(Duration::from_millis(500)))).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(err.to_string().contains("state was lost"), "{err}");
    assert_eq!(t.lb.exec("kept").await.unwrap().error().unwrap().name, "NameError");
    t.snapshot().await;
    t.finish().await;
}

// 6. time.sleep(1e6) and a user interrupt: interrupted, kernel alive.
#[tokio::test]
async fn case06_sleep_is_interrupted_by_the_user() {
    let t = Tracked::start(sandboxed()).await;
    let mut stream =
        t.lb.run_stream("import time\nprint('go', flush=True)\ntime.sleep(1e6)", RunOptions::new()).await.unwrap();
    assert!(stream.next().await.is_some());
    t.lb.interrupt().await.unwrap();
    let ex = within("interrupted", codebox_core::Execution::collect(stream)).await.unwrap();
    assert_eq!(ex.outcome, Outcome::Interrupted);
    assert_eq!(t.lb.exec("2+2").await.unwrap().text(), "4");
    t.finish().await;
}

// 7. 100 MB of stdout in a loop: at most the output limit is kept, with a truncation count.
#[tokio::test]
async fn case07_output_flood_is_truncated() {
    let limit = 2 * MIB as usize;
    let t = Tracked::start(sandboxed().with_output_limit(limit)).await;
    let ex = within("flood", t.lb.exec("for i in range(200_000): print('x' * 499)")).await.unwrap();
    assert!(ex.stdout().len() <= limit, "{} bytes kept", ex.stdout().len());
    assert_eq!(ex.truncated_bytes() as usize + ex.stdout().len(), 200_000 * 500);
    assert_eq!(t.lb.exec("'alive'").await.unwrap().text(), "'alive'");
    t.finish().await;
}

// 8. One giant message (one print of 200 MB): the relay in front of our sockets sees the
//    frame header announce more than the message limit, forwards none of it and the kernel is
//    recycled with a typed error; this process never holds the message; IOPub works after.
#[tokio::test]
async fn case08_one_giant_message_recycles_the_kernel_without_reaching_us() {
    let limits = Limits::default().with_max_message(16 * MIB);
    let mut t = Tracked::start(sandboxed_with(limits).with_output_limit(MIB as usize)).await;
    t.lb.exec("kept = 1").await.unwrap();
    reset_peak_rss();
    let before = peak_rss();
    let err = within("giant", t.lb.exec("print('x' * (200 * 1024**2))")).await.unwrap_err();
    let grown = peak_rss().saturating_sub(before);
    match &err {
        CodeBoxError::KernelDied { cause: KernelDeath::OutputLimitExceeded { size, limit }, .. } => {
            assert_eq!(*limit, 16 * MIB);
            assert!(*size > 200 * MIB, "the announced size: {size}");
        }
        other => panic!("expected an output-limit death, got {other:?}"),
    }
    assert!(err.to_string().contains("exceeding the output limit"), "{err}");
    // Unbounded, this process grew by about 800 MiB (the message, its copies and its decoding).
    assert!(grown < 100 * MIB, "this process grew by {} MiB while the kernel sent 200 MB", grown / MIB);
    assert_eq!(within("after", t.lb.exec("print('after')")).await.unwrap().stdout(), "after\n");
    assert_eq!(t.lb.exec("kept").await.unwrap().error().map(|e| e.name.as_str()), Some("NameError"));
    let st = t.lb.status().await.unwrap();
    assert_eq!((st.state, st.restarts), (BoxState::Idle, 1), "{st:?}");
    t.snapshot().await;
    t.finish().await;
}

/// Reset this process's peak resident size (VmHWM).
fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting VmHWM");
}

/// This process's peak resident size since the last reset, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/self/status");
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

// 9. Writing a 10 GB file stops at the file size limit with EFBIG; the host file is capped.
#[tokio::test]
async fn case09_huge_file_stops_at_the_file_size_limit() {
    let t = Tracked::start(sandboxed_with(Limits::default().with_file_size(Some(32 * MIB)))).await;
    let code = format!(
        "{ERR}\ndef w():\n    with open('big.bin', 'wb') as f:\n        for _ in range(10 * 1024):\n            f.write(b'\\0' * (1 << 20))\nprint('write=' + err(w))"
    );
    let f = facts(&t.lb, &code).await;
    assert_eq!(f["write"], "EFBIG");
    let wd = t.lb.working_dir().await.unwrap();
    assert!(std::fs::metadata(wd.join("big.bin")).unwrap().len() <= 32 * MIB);
    t.finish().await;
}

// 10. tmpfs fill: ENOSPC at the configured sizes; `/` and `/dev` are read-only.
#[tokio::test]
async fn case10_tmpfs_fill_hits_the_sizes_and_root_is_read_only() {
    let limits = Limits::default().with_tmpfs_sizes(16 * MIB, 8 * MIB, 16 * MIB);
    let t = Tracked::start(sandboxed_with(limits)).await;
    let code = format!(
        "{ERR}\ndef fill(path):\n    def go():\n        with open(path, 'wb') as f:\n            for _ in range(64):\n                f.write(b'\\1' * (1 << 20)); f.flush()\n    return go\n\
         print('tmp=' + err(fill('/tmp/fill')))\nprint('shm=' + err(fill('/dev/shm/fill')))\n\
         print('root=' + err(fill('/fill')))\nprint('dev=' + err(fill('/dev/fill')))\n\
         print('tmpsize=%d' % os.path.getsize('/tmp/fill'))"
    );
    let f = facts(&t.lb, &code).await;
    assert_eq!(f["tmp"], "ENOSPC");
    assert_eq!(f["shm"], "ENOSPC");
    assert_eq!(f["root"], "EROFS");
    assert_eq!(f["dev"], "EROFS");
    assert!(f["tmpsize"].parse::<u64>().unwrap() <= 16 * MIB);
    t.finish().await;
}

// 11. Secrets: /etc/shadow, /root, the user's ~/.ssh, another box's files, host processes.
#[tokio::test]
async fn case11_host_and_other_sessions_files_are_out_of_reach() {
    let other = Tracked::start(sandboxed()).await;
    other.lb.upload_bytes("private.txt", "other session").await.unwrap();
    let other_file = other.lb.working_dir().await.unwrap().join("private.txt");
    let t = Tracked::start(sandboxed()).await;
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let code = format!(
        "{ERR}\nprint('shadow=' + err(lambda: open('/etc/shadow').read()))\n\
         print('root=' + err(lambda: os.listdir('/root')))\n\
         print('ssh=' + err(lambda: os.listdir({ssh:?})))\n\
         print('other=' + err(lambda: open({other:?}).read()))\n\
         print('host_pid=' + err(lambda: os.kill({me}, 0)))\n\
         print('pids=%d' % len([p for p in os.listdir('/proc') if p.isdigit()]))",
        ssh = format!("{home}/.ssh"),
        other = other_file.to_string_lossy(),
        me = std::process::id(),
    );
    let f = facts(&t.lb, &code).await;
    assert_eq!(f["shadow"], "ENOENT");
    assert_eq!(f["root"], "ENOENT");
    assert_eq!(f["ssh"], "ENOENT");
    assert_eq!(f["other"], "ENOENT");
    assert_eq!(f["host_pid"], "ESRCH");
    assert!(f["pids"].parse::<u32>().unwrap() <= 3, "{f:?}");
    t.finish().await;
    other.finish().await;
}

// 12. Privilege probe: no capabilities, no new privileges, seccomp on, unprivileged host uid,
//     namespace/mount/ptrace/keyctl/io_uring/vsock all denied.
#[tokio::test]
async fn case12_privilege_probe_finds_nothing() {
    let t = Tracked::start(server_box!(Limits::server())).await;
    let code = format!(
        "{ERR}\nlibc = ctypes.CDLL(None, use_errno=True)\n\
         def sc(nr, *a):\n    r = libc.syscall(nr, *a)\n    return 'ok' if r >= 0 else errno.errorcode[ctypes.get_errno()]\n\
         st = dict(l.split(':', 1) for l in open('/proc/self/status'))\n\
         print('capeff=' + st['CapEff'].strip()); print('nnp=' + st['NoNewPrivs'].strip()); print('seccomp=' + st['Seccomp'].strip())\n\
         print('unshare=' + sc(272, 0x10000000)); print('mount=' + sc(165, b'none', b'/tmp', b'tmpfs', 0, 0))\n\
         print('ptrace=' + sc(101, 16, 1, 0, 0)); print('keyctl=' + sc(250, 0, 0, 0, 0)); print('io_uring=' + sc(425, 1, 0))\n\
         print('vsock=' + err(lambda: socket.socket(40, socket.SOCK_STREAM)))"
    );
    let f = facts(&t.lb, &code).await;
    assert_eq!(f["capeff"], "0000000000000000");
    assert_eq!(f["nnp"], "1");
    assert_eq!(f["seccomp"], "2");
    for call in ["unshare", "mount", "ptrace", "keyctl", "io_uring"] {
        assert_eq!(f[call], "EPERM", "{call}: {f:?}");
    }
    assert_eq!(f["vsock"], "EAFNOSUPPORT");
    // On the host the kernel runs under the session uid, not root.
    let pid = t.lb.kernel_pid().await.unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid: u32 =
        status.lines().find(|l| l.starts_with("Uid:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(Some(uid), t.lb.session_uid().await);
    assert_ne!(uid, 0);
    t.finish().await;
}

// 13. A symlink made in the box never leaks host files through a download.
#[tokio::test]
async fn case13_symlink_download_escape_is_refused() {
    let t = Tracked::start(server_box!(Limits::server())).await;
    let ex =
        t.lb.exec("import os\nos.symlink('/etc/shadow', 'out.txt')\nos.symlink('../../../../etc', 'etc')")
            .await
            .unwrap();
    assert!(ex.is_ok());
    for path in ["out.txt", "etc/passwd", "etc/shadow"] {
        let err = t.lb.download_bytes(path).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnsafePath, "{path}: {err}");
    }
    t.finish().await;
}

// 14. Upload path traversal is refused; nothing is created outside the working directory.
#[tokio::test]
async fn case14_upload_traversal_is_refused() {
    let t = Tracked::start(server_box!(Limits::server())).await;
    let wd = t.lb.working_dir().await.unwrap();
    let outside = wd.parent().unwrap().join(format!("escape-{}", rand_u32()));
    let name = outside.file_name().unwrap().to_string_lossy().into_owned();
    let long = "n".repeat(300);
    t.lb.exec(&format!("import os\nos.symlink({:?}, 'planted')", outside.to_string_lossy())).await.unwrap();
    for path in [
        format!("../{name}"),
        format!("a/../../{name}"),
        outside.to_string_lossy().into_owned(),
        "/etc/cron.d/x".into(),
        "a\0b".into(),
        long,
        "planted".into(),
        format!("..\\{name}"),
    ] {
        let r = t.lb.upload_bytes(&path, "x").await;
        if let Ok(info) = &r {
            // Accepted only when it stays inside (a backslash is an ordinary name character).
            assert!(wd.join(&info.path).starts_with(&wd), "{path:?} -> {info:?}");
        }
    }
    assert!(!outside.exists(), "an upload escaped to {}", outside.display());
    assert!(!std::path::Path::new("/etc/cron.d/x").exists());
    t.finish().await;
}

// 15. Network egress: only lo, no routes, no DNS, the host's loopback service unreachable.
#[tokio::test]
async fn case15_network_egress_is_impossible() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let t = Tracked::start(sandboxed()).await;
    let code = format!(
        "{ERR}\nprint('ifaces=' + ','.join(n for _, n in socket.if_nameindex()))\n\
         print('routes=%d' % (len(open('/proc/net/route').read().splitlines()) - 1))\n\
         def dns():\n    try:\n        socket.getaddrinfo('example.com', 80); return 'ok'\n    except socket.gaierror: return 'fail'\n\
         print('dns=' + dns())\n\
         print('host=' + err(lambda: socket.create_connection(('127.0.0.1', {port}), timeout=2)))"
    );
    let f = facts(&t.lb, &code).await;
    assert_eq!(f["ifaces"], "lo");
    assert_eq!(f["routes"], "0");
    assert_eq!(f["dns"], "fail");
    assert_eq!(f["host"], "ECONNREFUSED");
    drop(listener);
    t.finish().await;
}

// 16. os._exit(1): KernelDied{exit 1} at once, restart, restart count visible.
#[tokio::test]
async fn case16_os_exit_is_a_typed_death_and_the_box_restarts() {
    let mut t = Tracked::start(sandboxed()).await;
    let err = within("os._exit", t.lb.exec("import os; os._exit(1)")).await.unwrap_err();
    match err {
        CodeBoxError::KernelDied { cause, .. } => assert_eq!(cause, KernelDeath::Exited { code: 1 }),
        other => panic!("expected KernelDied, got {other:?}"),
    }
    assert_eq!(within("next", t.lb.exec("1")).await.unwrap().text(), "1");
    assert_eq!(t.lb.status().await.unwrap().restarts, 1);
    t.snapshot().await;
    t.finish().await;
}

// 17. SIGSEGV via ctypes: KernelDied{signal 11}, decoded from bwrap's exit code 139.
#[tokio::test]
async fn case17_segfault_is_reported_as_sigsegv() {
    let mut t = Tracked::start(sandboxed()).await;
    let err = within("segfault", t.lb.exec("import ctypes; ctypes.string_at(0)")).await.unwrap_err();
    match err {
        CodeBoxError::KernelDied { cause, .. } => assert_eq!(cause, KernelDeath::Signaled { signal: 11 }),
        other => panic!("expected KernelDied, got {other:?}"),
    }
    assert_eq!(within("next", t.lb.exec("2*3")).await.unwrap().text(), "6");
    t.snapshot().await;
    t.finish().await;
}

// 18. Killing the namespace's init from inside: either ignored (init is protected) or handled
//     as a death; never a hang. Host pids are invisible.
#[tokio::test]
async fn case18_killing_the_namespace_init_is_handled() {
    let mut t = Tracked::start(sandboxed()).await;
    match within("kill(1)", t.lb.exec("import os; os.kill(1, 9)")).await {
        Ok(ex) => assert!(ex.is_ok() || ex.error().is_some()),
        Err(e) => assert_eq!(e.kind(), ErrorKind::KernelDied, "{e}"),
    }
    let me = std::process::id();
    let f = facts(&t.lb, &format!("{ERR}\nprint('host=' + err(lambda: os.kill({me}, 0)))")).await;
    assert_eq!(f["host"], "ESRCH");
    t.snapshot().await;
    t.finish().await;
}

// 19. Zombies and escaped daemons: nothing of the session survives a restart or a stop.
#[tokio::test]
async fn case19_daemons_and_zombies_do_not_survive() {
    let mut t = Tracked::start(server_box!(Limits::server())).await;
    let (a, b) = (t.token(), t.token());
    let code = format!(
        "import os, subprocess\n\
         for _ in range(20): subprocess.Popen(['true'])\n\
         subprocess.Popen(['sleep', '{a}'], start_new_session=True)\n\
         if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        os.execv('/bin/sleep', ['sleep', '{b}'])\n    os._exit(0)\n"
    );
    assert!(t.lb.exec(&code).await.unwrap().is_ok());
    std::thread::sleep(Duration::from_millis(300));
    assert!(!processes_with(&a).is_empty() && !processes_with(&b).is_empty(), "the daemons started");
    t.lb.restart().await.unwrap();
    for token in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !processes_with(token).is_empty() {
            assert!(Instant::now() < deadline, "daemon {token} survived a restart");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    t.snapshot().await;
    t.finish().await;
}

const ROLE: &str = "CODEBOX_IT_ADVERSARIAL_OWNER";

// 20. The owner is SIGKILLed with a live sandboxed session: the kernel, bwrap and the
//     session's daemon all go.
#[test]
fn case20_owner_sigkill_leaves_nothing_behind() {
    if let Some(token) = std::env::var_os(ROLE) {
        // The owner's side: a sandboxed box with a daemon, then wait to be killed.
        let code = format!(
            "import subprocess\nsubprocess.Popen(['sleep', '{}'], start_new_session=True)",
            token.to_string_lossy()
        );
        crate::orphans::act_as_owner(sandboxed(), Some(&code));
    }
    let token = format!("{}", 5_000_000 + rand_u32() % 1_000_000);
    let crate::orphans::Owner { child: mut owner, kernel_pid: pid, working_dir: wd, runtime_dir: rd } =
        crate::orphans::spawn_owner("adversarial::case20_owner_sigkill_leaves_nothing_behind", ROLE, &token);
    assert!(alive(pid));
    assert!(!processes_with(&token).is_empty(), "the daemon runs");
    owner.kill().unwrap();
    owner.wait().unwrap();
    // Its directories go with the next sweep (every process runs one before its first kernel).
    wait_until_dead(pid, Duration::from_secs(10));
    LocalBox::remove_stale_runtime_dirs();
    leak_check(&[pid], &[], &[wd, rd], &[token]);
}

// 21. The thread that started the box exits: the sandboxed kernel lives on.
#[test]
fn case21_kernel_survives_the_spawning_thread() {
    let (lb, pid, wd) = std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let lb = sandboxed().build().unwrap();
            lb.start().await.unwrap();
            let pid = lb.kernel_pid().await.unwrap();
            let wd = lb.working_dir().await.unwrap();
            (lb, pid, wd)
        })
    })
    .join()
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(alive(pid), "the kernel died with the thread that started the box");
    // The box belongs to the runtime that is gone with its thread: drop it, and nothing stays.
    drop(lb);
    leak_check(&[pid], &[], &[wd], &[]);
}

// 22. The client goes away mid-stream: the box stays usable, nothing piles up.
#[tokio::test]
async fn case22_client_disconnect_mid_stream_leaves_the_box_usable() {
    let t = Tracked::start(sandboxed()).await;
    for _ in 0..3 {
        let mut stream =
            t.lb.run_stream(
                "import time\nwhile True:\n    print('x' * 1000, flush=True); time.sleep(0.001)",
                RunOptions::new(),
            )
            .await
            .unwrap();
        assert!(stream.next().await.is_some());
        drop(stream);
    }
    assert_eq!(within("after disconnects", t.lb.exec("'free'")).await.unwrap().text(), "'free'");
    t.finish().await;
}

// A Python that session uids cannot reach is refused up front, with the reason.
#[tokio::test]
async fn a_python_session_uids_cannot_reach_is_refused_clearly() {
    use std::os::unix::fs::PermissionsExt;
    let probe = Tracked::start(sandboxed()).await;
    let real = probe.lb.python().await.unwrap();
    probe.finish().await;
    let closed = tempfile::tempdir().unwrap();
    std::fs::set_permissions(closed.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    // The same environment, reached through a directory only root may enter.
    let venv = real.parent().and_then(|b| b.parent()).unwrap();
    std::os::unix::fs::symlink(venv, closed.path().join("env")).unwrap();
    let link = closed.path().join("env/bin/python");
    let lb = server_box!(Limits::server()).with_python(&link).build().unwrap();
    let err = within("start", lb.start()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KernelStart, "{err}");
    assert!(err.to_string().contains("session uids cannot enter"), "{err}");
}

// The usual tools work in a sandboxed bash cell (awk is a link through /etc/alternatives).
// `.codebox/` (HOME, TMPDIR, packages) is the box's own state: left out, as listings do.
#[tokio::test]
async fn bash_cells_find_the_usual_tools() {
    let t = Tracked::start(sandboxed()).await;
    t.lb.upload_bytes("a.txt", "hello").await.unwrap();
    let opts = RunOptions::new().with_language("bash");
    let code = "find . -path ./.codebox -prune -o -type f -exec du -h {} + | awk '{print $2, $1}' | sort";
    let ex = t.lb.run(code, opts).await.unwrap();
    assert_eq!(ex.stdout(), "./a.txt 4.0K\n", "stderr: {}", ex.stderr());
    t.finish().await;
}

// 23. Concurrent hogs: each box is killed on its own; the others keep their state.
#[tokio::test]
async fn case23_concurrent_hogs_only_hurt_themselves() {
    let limits = Limits::server().with_memory(256 * MIB);
    let mut calm = Vec::new();
    for i in 0..2 {
        let t = Tracked::start(server_box!(limits.clone())).await;
        t.lb.exec(&format!("kept = {i}")).await.unwrap();
        calm.push(t);
    }
    let mut hogs = Vec::new();
    for _ in 0..2 {
        hogs.push(Tracked::start(server_box!(limits.clone())).await);
    }
    let code = "import mmap\nm = mmap.mmap(-1, 1024**3)\nfor i in range(0, len(m), 4096): m[i] = 1";
    let results = futures::future::join_all(hogs.iter().map(|h| h.lb.exec(code))).await;
    for r in results {
        match r {
            Err(CodeBoxError::KernelDied { cause, .. }) => assert_eq!(cause, KernelDeath::OutOfMemory),
            other => panic!("expected an OOM kill, got {other:?}"),
        }
    }
    for (i, t) in calm.iter().enumerate() {
        assert_eq!(t.lb.exec("kept").await.unwrap().text(), i.to_string());
        assert_eq!(t.lb.status().await.unwrap().restarts, 0);
    }
    for mut h in hogs {
        assert_eq!(within("hog after OOM", h.lb.exec("1+1")).await.unwrap().text(), "2");
        h.snapshot().await;
        h.finish().await;
    }
    for t in calm {
        t.finish().await;
    }
}

// 24. A kernel that cannot start (a sitecustomize that exits): KernelStart with the log
//     tail, promptly, and no endless restart loop.
#[tokio::test]
async fn case24_a_kernel_that_cannot_start_fails_clearly() {
    let dir = tempfile::Builder::new().prefix("cbx-site-").tempdir().unwrap();
    std::fs::write(
        dir.path().join("sitecustomize.py"),
        "import sys\nsys.stderr.write('broken site\\n')\nimport os\nos._exit(3)\n",
    )
    .unwrap();
    let lb =
        sandboxed().with_working_dir(dir.path()).with_env("PYTHONPATH", dir.path().to_string_lossy()).build().unwrap();
    let err = within("start", lb.start()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KernelStart, "{err}");
    assert!(err.to_string().contains("broken site"), "{err}");
    let st = lb.status().await.unwrap();
    assert!(!st.is_running(), "{st:?}");
    assert_ne!(st.state, BoxState::Restarting);
    let err = within("exec on a box that cannot start", lb.exec("1")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KernelStart);
}

// 25. Foreign clients: another uid cannot reach the kernel's sockets, forged messages are
//     dropped, and descriptor exhaustion inside leaves the kernel responsive.
#[tokio::test]
async fn case25_foreign_clients_and_forged_messages_are_refused() {
    let t = Tracked::start(server_box!(Limits::server().with_open_files(Some(256)))).await;
    let run = t.lb.runtime_dir().await.unwrap();
    let python = t.lb.python().await.unwrap();
    let wd = t.lb.working_dir().await.unwrap();
    // Another unprivileged uid tries the shell socket.
    let out = std::process::Command::new(&python)
        .args(["-c", &format!("import socket\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect({:?}); print('connected')\nexcept PermissionError: print('EACCES')", run.join("k-1").to_string_lossy())])
        .uid(310_999)
        .gid(310_999)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "EACCES", "{}", String::from_utf8_lossy(&out.stderr));
    // A client with the wrong key (root can reach the socket) asks for a file to be made.
    let forged = format!(
        "import json, jupyter_client\ninfo = json.load(open({conn:?}))\ninfo['key'] = 'not-the-key'\n\
         c = jupyter_client.BlockingKernelClient(); c.load_connection_info(info); c.start_channels()\n\
         c.execute({code:?})\nimport time; time.sleep(1.5); c.stop_channels()",
        conn = run.join("connection.json").to_string_lossy(),
        code = format!("open({:?}, 'w').write('forged')", wd.join("forged").to_string_lossy()),
    );
    let out = std::process::Command::new(&python).args(["-c", &forged]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!wd.join("forged").exists(), "a message with a bad signature was executed");
    // Exhaust descriptors inside: EMFILE, then the kernel still answers.
    let f = facts(&t.lb, "fds = []\ntry:\n    while True: fds.append(open('/dev/null'))\nexcept OSError as e:\n    import errno; print('err=' + errno.errorcode[e.errno])\nn = len(fds)\nfor f in fds: f.close()\ndel fds").await;
    assert_eq!(f["err"], "EMFILE");
    assert_eq!(within("after EMFILE", t.lb.exec("7*6")).await.unwrap().text(), "42");
    t.finish().await;
}

use std::os::unix::process::CommandExt;

// Installing packages: pip runs in the box's sandbox, as its uid, into the box's own
// directory; the package imports at once and after a restart, and no other box sees it.
#[tokio::test]
async fn install_runs_pip_inside_the_box_and_leaves_the_shared_python_alone() {
    let mut t = Tracked::start(server_box!(Limits::server())).await;
    let uid = t.lb.session_uid().await.unwrap();
    let out = within("install", t.lb.install(&["tabulate".to_owned()])).await.unwrap();
    assert!(out.contains("Successfully installed"), "{out}");
    let probe = "import os, socket, tabulate\nprint('file=' + tabulate.__file__)\n\
                 print('owner=%d' % os.stat(tabulate.__file__).st_uid)\n\
                 print('ifaces=' + ','.join(n for _, n in socket.if_nameindex()))";
    let f = facts(&t.lb, probe).await;
    let packages = t.lb.working_dir().await.unwrap().join(codebox_local::PACKAGES_DIR);
    assert!(f["file"].starts_with(&*packages.to_string_lossy()), "{f:?}");
    assert_eq!(f["owner"], uid.to_string(), "pip ran as the session uid");
    assert_eq!(f["ifaces"], "lo", "the network was pip's alone");
    // The box lists it as its own install, ahead of the environment it was given.
    let packages_listed = within("packages", t.lb.packages()).await.unwrap();
    assert!(packages_listed[0].name == "tabulate" && packages_listed[0].installed_by_box, "{packages_listed:?}");
    assert!(packages_listed.iter().filter(|p| p.installed_by_box).count() == 1, "{packages_listed:?}");
    assert!(packages_listed.iter().any(|p| p.name == "ipykernel" && !p.installed_by_box), "{packages_listed:?}");
    let listed = t.lb.list_files("", false).await.unwrap();
    assert!(listed.iter().all(|fi| !fi.path.starts_with(".codebox")), "{listed:?}");
    within("restart", t.lb.restart()).await.unwrap();
    t.snapshot().await;
    let ex = t.lb.exec("import tabulate\ntabulate.tabulate([[1, 2]])").await.unwrap();
    assert!(ex.is_ok(), "{:?}", ex.error());
    // A failing install is an error carrying pip's own words.
    let err = within("bad install", t.lb.install(&["codebox-no-such-package-7f3e".to_owned()])).await.unwrap_err();
    match &err {
        CodeBoxError::Install { output, .. } => assert!(output.contains("No matching distribution"), "{output}"),
        other => panic!("expected an install error, got {other:?}"),
    }
    // The shared Python is untouched: a fresh box cannot import the package.
    let python = t.lb.python().await.unwrap();
    let fresh = Tracked::start(sandboxed()).await;
    let ex = fresh.lb.exec("import tabulate").await.unwrap();
    assert_eq!(ex.error().map(|e| e.name.as_str()), Some("ModuleNotFoundError"), "{ex:?}");
    let venv = python.parent().and_then(|b| b.parent()).unwrap();
    let site = std::fs::read_dir(venv.join("lib")).unwrap().flatten().map(|e| e.path().join("site-packages"));
    assert!(site.into_iter().all(|s| !s.join("tabulate").exists()), "the shared environment changed");
    fresh.finish().await;
    t.finish().await;
}

// A pre-started Landlock kernel from a pool: its HOME and TMPDIR are in the working
// directory it comes with (so the box's size limit bounds them), they are made again after a
// restart, and /proc shows it no other process.
#[tokio::test]
async fn landlock_pool_kernels_keep_home_in_their_box_and_other_processes_out_of_sight() {
    let pool = codebox_local::KernelPool::new(1);
    let landlock = SandboxPolicy::default().with_isolation(Isolation::Landlock).with_require_isolation(true);
    let builder = crate::builder().with_sandbox(landlock).with_pool(pool.clone());
    within("prewarm", pool.prewarm(&builder)).await.unwrap();
    let t = Tracked::start_at(builder, "landlock").await;
    let work = t.lb.working_dir().await.unwrap();
    let code = format!(
        "{ERR}\nprint('home=' + os.environ['HOME'])\nprint('tmpdir=' + os.environ['TMPDIR'])\n\
         print('write=' + err(lambda: open(os.path.join(os.environ['TMPDIR'], 't'), 'w').write('1')))\n\
         print('own=' + err(lambda: open('/proc/self/status').read()))\n\
         print('host=' + err(lambda: open('/proc/{pid}/cmdline').read()))\n\
         print('list=' + err(lambda: os.listdir('/proc')))\n\
         print('inet=' + err(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)))",
        pid = std::process::id()
    );
    for round in ["first", "after a restart"] {
        let f = facts(&t.lb, &code).await;
        assert_eq!(f["home"], work.join(".codebox/home").to_string_lossy(), "{round}");
        assert_eq!(f["tmpdir"], work.join(".codebox/tmp").to_string_lossy(), "{round}");
        assert_eq!(f["write"], "ok", "{round}");
        assert_eq!((f["own"].as_str(), f["host"].as_str(), f["list"].as_str()), ("ok", "EACCES", "EACCES"), "{round}");
        assert_eq!(f["inet"], "EAFNOSUPPORT", "{round}");
        std::fs::remove_dir_all(work.join(".codebox")).unwrap();
        within("restart", t.lb.restart()).await.unwrap();
    }
    t.finish().await;
}

// The Landlock level, for hosts without user namespaces: only the working directory is
// writable, the host's secrets and the user's HOME are unreadable, the rlimits hold.
#[tokio::test]
async fn landlock_confines_a_real_kernel() {
    let limits = Limits::default().with_file_size(Some(64 * MIB)).with_open_files(Some(512));
    let t = Tracked::start_at(
        crate::builder().with_sandbox(
            SandboxPolicy::default()
                .with_isolation(Isolation::Landlock)
                .with_require_isolation(true)
                .with_limits(limits),
        ),
        "landlock",
    )
    .await;
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("host.txt"), "host").unwrap();
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let code = format!(
        "{ERR}\nimport resource\n\
         print('cwd_write=' + err(lambda: open('inside.txt', 'w').write('1')))\n\
         print('out_write=' + err(lambda: open({out_w:?}, 'w')))\n\
         print('out_read=' + err(lambda: open({out_r:?}).read()))\n\
         print('tmp_write=' + err(lambda: open('/tmp/codebox-landlock-probe', 'w')))\n\
         print('shadow=' + err(lambda: open('/etc/shadow').read()))\n\
         print('home=' + err(lambda: os.listdir({home:?})))\n\
         print('fsize=%d' % resource.getrlimit(resource.RLIMIT_FSIZE)[0])\n\
         print('nofile=%d' % resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n\
         print('data=%d' % resource.getrlimit(resource.RLIMIT_DATA)[0])\n\
         print('core=%d' % resource.getrlimit(resource.RLIMIT_CORE)[0])\n\
         st = dict(l.split(':', 1) for l in open('/proc/self/status'))\n\
         print('nnp=' + st['NoNewPrivs'].strip())\nprint('seccomp=' + st['Seccomp'].strip())",
        out_w = outside.path().join("new.txt").to_string_lossy(),
        out_r = outside.path().join("host.txt").to_string_lossy(),
    );
    let f = facts(&t.lb, &code).await;
    assert_eq!(f["cwd_write"], "ok");
    assert_eq!(f["out_write"], "EACCES");
    assert_eq!(f["out_read"], "EACCES");
    assert_eq!(f["tmp_write"], "EACCES");
    assert_eq!(f["shadow"], "EACCES");
    assert_eq!(f["home"], "EACCES", "the user's HOME ({home}) must be out of reach");
    assert_eq!(f["fsize"], (64 * MIB).to_string());
    assert_eq!(f["nofile"], "512");
    assert_eq!(f["data"], Limits::default().data.unwrap().to_string());
    assert_eq!(f["core"], "0");
    assert_eq!(f["nnp"], "1");
    assert_eq!(f["seccomp"], "2");
    assert!(!outside.path().join("new.txt").exists());
    assert!(t.lb.working_dir().await.unwrap().join("inside.txt").exists());
    assert_eq!(t.lb.status().await.unwrap().isolation.as_deref(), Some("landlock"));
    let ex = t.lb.exec("import numpy as np\nint(np.arange(10).sum())").await.unwrap();
    assert_eq!(ex.text(), "45");
    // pip runs under the same ruleset (TCP allowed for it alone) into the box's directory.
    let out = within("install", t.lb.install(&["tabulate".to_owned()])).await.unwrap();
    assert!(out.contains("Successfully installed"), "{out}");
    let f = facts(&t.lb, "import tabulate\nprint('file=' + tabulate.__file__)").await;
    let packages = t.lb.working_dir().await.unwrap().join(codebox_local::PACKAGES_DIR);
    assert!(f["file"].starts_with(&*packages.to_string_lossy()), "{f:?}");
    t.finish().await;
}

/// The `(device, inode)` of every writable mapping of `pid` that is shared (`rw?s`): memory a
/// write of one process would show to another mapping the same object.
fn writable_shared_mappings(pid: i32) -> std::collections::BTreeSet<(String, u64)> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    maps.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let perms = f.get(1)?.as_bytes();
            (perms.get(1) == Some(&b'w') && perms.get(3) == Some(&b's'))
                .then(|| (f[3].to_owned(), f[4].parse().unwrap_or(0)))
        })
        .collect()
}

/// Whether `needle` is anywhere in the readable memory of process `pid` (read as root
/// through `/proc/<pid>/mem`).
fn in_memory_of(pid: i32, needle: &[u8]) -> bool {
    use std::os::unix::fs::FileExt;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    maps.lines().any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if !f[1].starts_with('r') || line.ends_with("[vvar]") || line.ends_with("[vsyscall]") {
            return false;
        }
        let (lo, hi) = f[0].split_once('-').unwrap();
        let (lo, hi) = (u64::from_str_radix(lo, 16).unwrap(), u64::from_str_radix(hi, 16).unwrap());
        let mut region = vec![0u8; usize::try_from(hi - lo).unwrap()];
        let Ok(n) = mem.read_at(&mut region, lo) else { return false };
        memchr::memmem::find(&region[..n], needle).is_some()
    })
}

/// `pid` if it is a Python, else its first descendant that is.
fn python_of(pid: i32) -> i32 {
    let exe = |p: i32| std::fs::read_link(format!("/proc/{p}/exe")).unwrap_or_default();
    let mut current = pid;
    for _ in 0..8 {
        if exe(current).file_name().is_some_and(|n| n.to_string_lossy().starts_with("python")) {
            return current;
        }
        let child = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
            .find(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok() && parent_of(*p) == current);
        match child {
            Some(c) => current = c,
            None => break,
        }
    }
    panic!("no Python under process {pid}")
}

/// The parent of process `pid`.
pub(crate) fn parent_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat.rsplit_once(')').unwrap().1.split_whitespace().nth(1).unwrap().parse().unwrap()
}

// 26. Two kernels share no secrets and no writable memory: each has its own signing key,
//     which neither the other kernel nor the fork server holds or can read, and its own
//     random state; no writable shared mapping of one is mapped by the other. Executed
//     kernels also have their own address layout and string hash seed; forked ones share
//     the fork server's (docs/security.md says why that is accepted).
#[tokio::test]
async fn case26_two_kernels_share_no_secrets_and_no_writable_memory() {
    let a = Tracked::start(server_box!(Limits::server())).await;
    let b = Tracked::start(server_box!(Limits::server())).await;
    assert_eq!((a.lb.kernel_forked().await, b.lb.kernel_forked().await), (Some(true), Some(true)));
    share_nothing(a, b).await;
    // Kernels started ahead of time by a pool, as a server's are, are no different.
    let pool = codebox_local::KernelPool::new(2);
    let pooled = server_box!(Limits::server()).with_pool(pool.clone());
    within("prewarm", pool.prewarm(&pooled)).await.unwrap();
    let (a, b) = (Tracked::start(pooled.clone()).await, Tracked::start(pooled).await);
    assert_eq!(pool.stats().hits, 2, "both boxes took a pooled kernel: {:?}", pool.stats());
    share_nothing(a, b).await;
    // Nor are kernels each started as a Python of their own.
    let executed = server_box!(Limits::server()).with_fork_server(false);
    let (a, b) = (Tracked::start(executed.clone()).await, Tracked::start(executed).await);
    assert_eq!((a.lb.kernel_forked().await, b.lb.kernel_forked().await), (Some(false), Some(false)));
    share_nothing(a, b).await;
}

/// Check case 26 on two started boxes, then stop them and check them for leaks.
async fn share_nothing(a: Tracked, b: Tracked) {
    let key_of = |dir: PathBuf| -> String {
        let conn: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("connection.json")).unwrap()).unwrap();
        conn["key"].as_str().unwrap().to_owned()
    };
    let (dir_a, dir_b) = (a.lb.runtime_dir().await.unwrap(), b.lb.runtime_dir().await.unwrap());
    let (key_a, key_b) = (key_of(dir_a.clone()), key_of(dir_b.clone()));
    assert!(key_a.len() >= 32 && key_b.len() >= 32, "signing keys are long: {key_a:?} {key_b:?}");
    assert_ne!(key_a, key_b, "two kernels never share a signing key");

    let probe = |other_dir: &PathBuf| {
        format!(
            "{ERR}\nimport random\nlibc = ctypes.CDLL('libc.so.6')\n\
             print('hash=%d' % hash('codebox-probe'))\n\
             print('random=%d' % random.getrandbits(64))\n\
             print('libc=%d' % ctypes.cast(libc.malloc, ctypes.c_void_p).value)\n\
             print('heap=%d' % id(object()))\n\
             print('other_key=' + err(lambda: open({other:?}).read()))",
            other = other_dir.join("connection.json").to_string_lossy(),
        )
    };
    let (fa, fb) = (facts(&a.lb, &probe(&dir_b)).await, facts(&b.lb, &probe(&dir_a)).await);
    assert_ne!(fa["random"], fb["random"], "the random state is the same in both kernels");
    if a.lb.kernel_forked().await == Some(false) {
        for fact in ["hash", "libc", "heap"] {
            assert_ne!(fa[fact], fb[fact], "{fact} is the same in both kernels: {fa:?} {fb:?}");
        }
    }
    for f in [&fa, &fb] {
        assert_ne!(f["other_key"], "ok", "a kernel read the other's connection file: {f:?}");
    }

    let (pid_a, pid_b) = (a.lb.kernel_pid().await.unwrap(), b.lb.kernel_pid().await.unwrap());
    let (shared_a, shared_b) = (writable_shared_mappings(pid_a), writable_shared_mappings(pid_b));
    let common: Vec<_> = shared_a.intersection(&shared_b).collect();
    assert!(common.is_empty(), "writable memory mapped by both kernels: {common:?}");
    // Each kernel's Python holds its own key (which shows the search works) and not the
    // other's; its environment and command line hold none. (An executed kernel's pid is the
    // bubblewrap that runs it.)
    let (pid_a, pid_b) = (python_of(pid_a), python_of(pid_b));
    assert!(in_memory_of(pid_a, key_a.as_bytes()) && in_memory_of(pid_b, key_b.as_bytes()));
    assert!(!in_memory_of(pid_a, key_b.as_bytes()), "kernel a holds b's signing key");
    assert!(!in_memory_of(pid_b, key_a.as_bytes()), "kernel b holds a's signing key");
    for (pid, key) in [(pid_a, &key_b), (pid_b, &key_a), (pid_a, &key_a), (pid_b, &key_b)] {
        for what in ["cmdline", "environ"] {
            let text = std::fs::read(format!("/proc/{pid}/{what}")).unwrap();
            assert!(!String::from_utf8_lossy(&text).contains(key.as_str()), "a signing key is in {pid}'s {what}");
        }
    }
    // The fork server, which every later kernel copies, never held either key.
    if a.lb.kernel_forked().await == Some(true) {
        let server = parent_of(parent_of(pid_a));
        assert_eq!(server, parent_of(parent_of(pid_b)), "both kernels come from one fork server");
        let cmdline = String::from_utf8_lossy(&std::fs::read(format!("/proc/{server}/cmdline")).unwrap()).into_owned();
        assert!(cmdline.contains("_CODEBOX_FORKSERVER"), "{cmdline}");
        assert!(!in_memory_of(server, key_a.as_bytes()) && !in_memory_of(server, key_b.as_bytes()));
    }
    b.finish().await;
    a.finish().await;
}

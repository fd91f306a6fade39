//! A LocalBox's live metrics, against what code in the box really does: memory it allocates,
//! bytes it writes, a core it keeps busy, traffic over its own loopback. The boxes are
//! confined as a server confines them (bubblewrap, a session uid, a cgroup, a size-limited
//! working directory), which needs root; one case is an unconfined box, which reports what
//! it can and names the rest.

use std::time::Duration;

use codebox_core::{BoxMetrics, CodeBox, CodeBoxExt, ErrorKind, ExecEvent, METRIC_FIELDS, Outcome, RunOptions};
use codebox_local::{Isolation, Limits, LocalBox, SandboxPolicy, UidAllocator};
use futures::StreamExt;

const MIB: u64 = 1024 * 1024;

/// Session uids of this suite.
fn uids() -> UidAllocator {
    static ALLOC: std::sync::OnceLock<UidAllocator> = std::sync::OnceLock::new();
    ALLOC.get_or_init(|| UidAllocator::new(342_000..342_100).unwrap()).clone()
}

/// A started box as the server runs one (bubblewrap, its own uid and cgroup, the server's
/// limits: 1 GiB of memory, one CPU, a 1 GiB working directory); `None` (reported as
/// skipped) without root or bubblewrap.
async fn server_box() -> Option<LocalBox> {
    let root = rustix::process::geteuid().is_root();
    if !codebox_core::conformance::requires("root (session uids, cgroups, a working-directory image)", root) {
        return None;
    }
    let bwrap = codebox_local::probe().bubblewrap.is_ok();
    if !codebox_core::conformance::requires("bubblewrap", bwrap) {
        return None;
    }
    let policy = SandboxPolicy::default()
        .with_isolation(Isolation::Bubblewrap)
        .with_require_isolation(true)
        .with_session_uids(Some(uids()))
        .with_cgroups(true)
        .with_limits(Limits::server());
    let lb = crate::builder().with_sandbox(policy).build().unwrap();
    lb.start().await.unwrap();
    Some(lb)
}

async fn sample(lb: &LocalBox) -> BoxMetrics {
    let m = lb.metrics().await.unwrap();
    assert!(!m.final_sample);
    m
}

async fn ok(lb: &LocalBox, code: &str) -> String {
    let ex = lb.exec(code).await.unwrap();
    assert_eq!(ex.outcome, Outcome::Ok, "{code}: {:?} {:?}", ex.stderr(), ex.error());
    ex.stdout()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confined_box_measures_everything_and_memory_rises_with_an_allocation() {
    let Some(lb) = server_box().await else { return };
    let before = sample(&lb).await;
    assert!(before.unavailable.is_empty(), "a confined box measures every field: {before:?}");
    assert_eq!(before.memory_limit_bytes, Some(1 << 30), "the cgroup's limit");
    assert_eq!(before.cpu_count, Some(1), "one CPU's quota");
    assert!(before.processes.is_some_and(|p| p >= 2), "bwrap and the kernel: {before:?}");
    let disk_limit = before.disk_limit_bytes.unwrap();
    assert!(disk_limit > 900 * MIB && disk_limit <= 1 << 30, "the working directory's image: {disk_limit}");
    // Every page touched: 200 MB resident.
    ok(&lb, "held = b'\\x01' * (200 * 1024 * 1024)").await;
    let after = sample(&lb).await;
    let rise = after.memory_used_bytes.unwrap().saturating_sub(before.memory_used_bytes.unwrap());
    assert!(rise >= 150 * MIB, "memory rose by {} MiB for a 200 MB allocation", rise / MIB);
    ok(&lb, "del held").await;
    lb.stop().await.unwrap();
    assert_eq!(lb.metrics().await.unwrap_err().kind(), ErrorKind::NotRunning);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_50_mb_shows_as_disk_writes_and_disk_use() {
    let Some(lb) = server_box().await else { return };
    let before = sample(&lb).await;
    // A plain buffered write, no fsync: the bytes count when they are dirtied.
    ok(&lb, "with open('big.bin', 'wb') as f:\n    f.write(b'\\x02' * (50 * 1024 * 1024))").await;
    let after = sample(&lb).await;
    let written = after.disk_write_bytes.unwrap() - before.disk_write_bytes.unwrap();
    assert!(written >= 45 * MIB, "{} MiB written", written / MIB);
    let used = after.disk_used_bytes.unwrap().saturating_sub(before.disk_used_bytes.unwrap());
    assert!(used >= 45 * MIB, "the working directory grew by {} MiB", used / MIB);
    // Writes of a child process that exits stay counted: its parent reaped it.
    ok(&lb, "import subprocess\nsubprocess.run(['sh', '-c', 'head -c 20971520 /dev/zero > child.bin'], check=True)")
        .await;
    let child = sample(&lb).await;
    let by_child = child.disk_write_bytes.unwrap() - after.disk_write_bytes.unwrap();
    assert!(by_child >= 18 * MIB, "{} MiB written by a child that exited", by_child / MIB);
    lb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_loop_shows_about_one_core() {
    let Some(lb) = server_box().await else { return };
    let mut stream = lb.run_stream("while True:\n    pass", RunOptions::default()).await.unwrap();
    // The first sample measures its own short window; the second covers the loop since then.
    sample(&lb).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let busy = sample(&lb).await;
    let pct = busy.cpu_percent.unwrap();
    assert!(pct > 50.0 && pct <= 150.0, "a busy loop under a one-CPU quota used {pct} %");
    lb.interrupt().await.unwrap();
    while let Some(event) = stream.next().await {
        if let ExecEvent::End { outcome, .. } = event.unwrap() {
            assert_eq!(outcome, Outcome::Interrupted);
        }
    }
    lb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_over_the_boxs_own_loopback_shows_network_bytes() {
    let Some(lb) = server_box().await else { return };
    let before = sample(&lb).await;
    let code = r"
import os, subprocess, sys, time, urllib.request
with open('blob', 'wb') as f:
    f.write(os.urandom(4 * 1024 * 1024))
server = subprocess.Popen([sys.executable, '-m', 'http.server', '8765', '--bind', '127.0.0.1'],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    for _ in range(300):
        try:
            data = urllib.request.urlopen('http://127.0.0.1:8765/blob', timeout=10).read()
            break
        except OSError:
            time.sleep(0.1)
finally:
    server.kill()
    server.wait()
print(len(data))
";
    assert_eq!(ok(&lb, code).await.trim(), (4 * MIB).to_string());
    let after = sample(&lb).await;
    let rx = after.net_rx_bytes.unwrap() - before.net_rx_bytes.unwrap();
    let tx = after.net_tx_bytes.unwrap() - before.net_tx_bytes.unwrap();
    assert!(rx >= 4 * MIB && tx >= 4 * MIB, "loopback carried {rx} bytes in, {tx} out");
    lb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfined_box_reports_what_it_can_and_names_the_rest() {
    let lb = crate::builder().with_sandbox(SandboxPolicy::default().with_isolation(Isolation::None)).build().unwrap();
    assert_eq!(lb.metrics().await.unwrap_err().kind(), ErrorKind::NotRunning, "not started yet");
    lb.start().await.unwrap();
    ok(&lb, "with open('some.bin', 'wb') as f:\n    f.write(b'\\x03' * (3 * 1024 * 1024))").await;
    let m = sample(&lb).await;
    // It shares the host's network and filesystem: no traffic or disk limit of its own.
    for name in ["net_rx_bytes", "net_tx_bytes", "disk_limit_bytes"] {
        assert!(m.unavailable.iter().any(|n| n == name), "{name} is not named unavailable: {m:?}");
    }
    assert!(m.unavailable.iter().all(|n| METRIC_FIELDS.contains(&n.as_str())));
    assert!(m.memory_used_bytes.is_some_and(|u| u > 10 * MIB), "the kernel's resident memory: {m:?}");
    assert!(m.processes.is_some_and(|p| p >= 1));
    assert!(m.cpu_percent.is_some() && m.cpu_count.is_some());
    assert!(m.disk_used_bytes.is_some_and(|u| u >= 3 * MIB), "a walk of the working directory: {m:?}");
    lb.stop().await.unwrap();
}

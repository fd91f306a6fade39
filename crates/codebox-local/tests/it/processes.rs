//! Background processes of a LocalBox: confined like `run_command` (the session's uid, its
//! cgroup, bubblewrap), bounded in number and in what a slow reader costs, and gone with
//! their box however it goes.

use std::time::Duration;

use bytes::Bytes;
use codebox_core::conformance::{check_processes, processes_end_with_the_box};
use codebox_core::{
    CodeBox, CommandSpec, ErrorKind, ProcessEvent, ProcessExit, ProcessSignal, ProcessSpec, ProcessStream,
};
use codebox_local::{Isolation, Limits, LocalBox, SandboxPolicy, UidAllocator};
use futures::StreamExt;

/// Session uids of this suite.
fn uids() -> UidAllocator {
    static ALLOC: std::sync::OnceLock<UidAllocator> = std::sync::OnceLock::new();
    ALLOC.get_or_init(|| UidAllocator::new(351_000..351_100).unwrap()).clone()
}

/// A box as the server runs one: bubblewrap, its own uid and cgroup, the server's limits.
fn server_box() -> codebox_local::LocalBoxBuilder {
    assert!(rustix::process::geteuid().is_root(), "these tests need root (session uids, cgroups)");
    assert!(codebox_local::probe().bubblewrap.is_ok(), "these tests need bubblewrap (`apt-get install bubblewrap`)");
    let policy = SandboxPolicy::default()
        .with_isolation(Isolation::Bubblewrap)
        .with_require_isolation(true)
        .with_session_uids(Some(uids()))
        .with_cgroups(true)
        .with_limits(Limits::server());
    crate::builder().with_sandbox(policy)
}

fn sh(script: &str) -> ProcessSpec {
    ProcessSpec::new(CommandSpec::new("sh").arg("-c").arg(script))
}

/// The pid of the `Start` event, then the rest of the stream.
async fn start(lb: &LocalBox, spec: ProcessSpec) -> (u32, ProcessStream) {
    let mut stream = lb.start_process(spec).await.unwrap();
    match stream.next().await {
        Some(Ok(ProcessEvent::Start { pid })) => (pid, stream),
        other => panic!("the first event is {other:?}"),
    }
}

/// Stdout, stderr and the end of the rest of `stream`.
async fn rest(stream: &mut ProcessStream) -> (Vec<u8>, String, ProcessExit) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            ProcessEvent::Stdout { data } => out.extend_from_slice(&data),
            ProcessEvent::Stderr { data } => err.extend_from_slice(&data),
            ProcessEvent::End(exit) => return (out, String::from_utf8_lossy(&err).into_owned(), exit),
            other => panic!("unexpected {other:?}"),
        }
    }
    panic!("the stream ended without End");
}

/// Whether a process whose command line is `argv` (NUL-joined) runs on this machine.
fn running_with_cmdline(argv: &[&str]) -> bool {
    let wanted = argv.join("\0");
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        std::fs::read(entry.path().join("cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).trim_end_matches('\0') == wanted)
            && crate::orphans::alive(entry.file_name().to_string_lossy().parse().unwrap_or(-1))
    })
}

/// Whether `running_with_cmdline(argv)` becomes `running` within 30 s.
fn wait_until_running(argv: &[&str], running: bool) -> bool {
    let limit = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < limit {
        if running_with_cmdline(argv) == running {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    running_with_cmdline(argv) == running
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confined_box_passes_the_process_checks_and_its_processes_run_as_its_uid() {
    let lb = server_box().build().unwrap();
    lb.start().await.unwrap();
    let uid = lb.session_uid().await.expect("a session uid");
    let (pid, mut stream) = start(&lb, sh("id -u")).await;
    assert!(pid < 1000, "a small per-box id, not the host's pid: {pid}");
    let (out, _, exit) = rest(&mut stream).await;
    assert!(exit.success(), "{exit:?}");
    assert_eq!(String::from_utf8_lossy(&out).trim(), uid.to_string(), "the process runs as the box's uid");
    check_processes(&lb).await.unwrap();
    processes_end_with_the_box(&lb).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_maximum_a_box_refuses_another_process_until_one_ends() {
    let lb = server_box().with_max_processes(2).build().unwrap();
    lb.start().await.unwrap();
    let (first, mut first_stream) = start(&lb, sh("exec sleep 600")).await;
    let (_second, _second_stream) = start(&lb, sh("exec sleep 600")).await;
    let refused = lb.start_process(sh("true")).await.map(|_| ()).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::InvalidInput, "{refused}");
    assert!(refused.to_string().contains("maximum"), "{refused}");
    lb.signal_process(first, ProcessSignal::Sigkill).await.unwrap();
    rest(&mut first_stream).await;
    let (_, mut third) = start(&lb, sh("echo third")).await;
    let (out, _, exit) = rest(&mut third).await;
    assert_eq!((out.as_slice(), exit.success()), (&b"third\n"[..], true));
    lb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_that_cannot_be_run_ends_with_127_and_says_so() {
    let lb = server_box().build().unwrap();
    lb.start().await.unwrap();
    let (_, mut stream) = start(&lb, ProcessSpec::new(CommandSpec::new("no-such-program-in-this-box"))).await;
    let (out, err, exit) = rest(&mut stream).await;
    assert_eq!(exit.exit_code, Some(127), "{exit:?} {err:?}");
    assert!(out.is_empty() && err.contains("cannot be run in this box") && !err.contains('\0'), "{err:?}");
    let mut outside = CommandSpec::new("true");
    outside.cwd = Some("../outside".into());
    let bad_cwd = lb.start_process(ProcessSpec::new(outside)).await.map(|_| ());
    assert!(bad_cwd.is_err(), "a working directory outside the box is refused");
    lb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_loses_the_oldest_output_instead_of_growing_memory() {
    let lb = server_box().build().unwrap();
    lb.start().await.unwrap();
    // 32 MiB, far past what a reader may fall behind by, then a last line.
    let (pid, mut slow) = start(&lb, sh("head -c 33554432 /dev/zero; echo; echo last-line")).await;
    let mut fast = lb.connect_process(pid).await.unwrap();
    let (_, _, exit) = rest(&mut fast).await;
    assert!(exit.success(), "{exit:?}");
    // Read only now: what was kept for this reader is bounded, and its end still comes.
    let (out, _, exit) = rest(&mut slow).await;
    assert!(exit.success(), "{exit:?}");
    assert!(out.len() <= 4 << 20, "a reader that never read was kept {} bytes", out.len());
    assert!(String::from_utf8_lossy(&out).ends_with("last-line\n"), "the newest output is kept");
    lb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_box_takes_its_processes_with_it() {
    let lb = server_box().build().unwrap();
    lb.start().await.unwrap();
    // A sleep this machine runs no other of: its command line names it.
    let marker = format!("{}.{}", 600 + std::process::id() % 100, std::process::id());
    let (pid, stream) = start(&lb, ProcessSpec::new(CommandSpec::new("sleep").arg(&marker))).await;
    drop(stream);
    let argv = ["sleep", marker.as_str()];
    let mut followed = lb.connect_process(pid).await.unwrap();
    lb.process_input(pid, Bytes::from_static(b"x")).await.map(|_| ()).unwrap_err();
    // Until the box's exec wrapper has become `sleep`, the command line is the wrapper's.
    assert!(wait_until_running(&argv, true), "the process runs on after its stream was dropped");
    drop(lb);
    assert!(wait_until_running(&argv, false), "a process outlived its dropped box");
    // Its follower hears that it ended, or that its box went away.
    let last = tokio::time::timeout(Duration::from_secs(30), async {
        let mut last = None;
        while let Some(event) = followed.next().await {
            last = Some(event);
        }
        last
    })
    .await
    .expect("the follower's stream ends");
    assert!(matches!(last, Some(Ok(ProcessEvent::End(_))) | Some(Err(_))), "{last:?}");
}

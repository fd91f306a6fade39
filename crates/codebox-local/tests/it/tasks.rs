//! No background task outlives its kernel: restarts, deaths, a dead box and a kernel that
//! closes its own IOPub connection all leave the runtime with the tasks it had before.
//!
//! Each test has a runtime of its own, so the runtime's count of alive tasks is this box's.

use std::time::Duration;

use codebox_core::{BoxState, CodeBox, CodeBoxError, CodeBoxExt, ErrorKind};

use crate::builder;

fn alive() -> usize {
    tokio::runtime::Handle::current().metrics().num_alive_tasks()
}

/// Wait until the runtime has `expected` alive tasks; panic with `what` if that never comes.
async fn settle(what: &str, expected: usize) {
    // Generous: ending a kernel's links includes a grace for its last messages.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while alive() != expected {
        assert!(tokio::time::Instant::now() < deadline, "{what}: {} tasks alive, expected {expected}", alive());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Fail instead of hanging.
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f).await.unwrap_or_else(|_| panic!("{what} hung"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_and_stop_leave_no_task_behind() {
    let before = alive();
    let lb = builder().build().unwrap();
    lb.start().await.unwrap();
    for _ in 0..10 {
        lb.restart().await.unwrap();
    }
    assert_eq!(lb.exec("1 + 1").await.unwrap().text(), "2");
    lb.stop().await.unwrap();
    settle("after 10 restarts and a stop", before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_death_and_recovery_leave_no_task_behind() {
    let before = alive();
    let lb = builder().build().unwrap();
    lb.start().await.unwrap();
    // Right after the start: an execution's own task may still be finishing after it.
    let running = alive();
    let err = within("os._exit", lb.exec("import os; os._exit(3)")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KernelDied, "{err}");
    assert_eq!(within("the next call", lb.exec("2 * 3")).await.unwrap().text(), "6");
    settle("after a death and recovery", running).await;
    lb.stop().await.unwrap();
    settle("after the stop", before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_box_keeps_no_task_of_its_dead_kernel() {
    let before = alive();
    let lb = builder().with_restart_limit(0, Duration::from_secs(600)).build().unwrap();
    lb.start().await.unwrap();
    let err = within("os._exit", lb.exec("import os; os._exit(1)")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KernelDied, "{err}");
    assert_eq!(within("dead box", lb.exec("1")).await.unwrap_err().kind(), ErrorKind::NotRunning);
    assert_eq!(lb.status().await.unwrap().state, BoxState::Dead);
    // The box still holds its dead kernel (until restart or stop), but nothing of it runs.
    settle("with the box dead", before).await;
    lb.stop().await.unwrap();
    settle("after the stop", before).await;
}

/// Shut down the kernel's own end of our IOPub connection (`k-2` in its runtime directory)
/// while the kernel keeps running.
const CLOSE_IOPUB: &str = r#"
import os, socket
closed = 0
for fd in os.listdir('/proc/self/fd'):
    try:
        s = socket.socket(fileno=os.dup(int(fd)))
    except OSError:
        continue
    try:
        # An accepted Unix socket is named after its listener; a listener has no peer.
        if s.family == socket.AF_UNIX and str(s.getsockname()).endswith('/k-2'):
            s.getpeername()
            s.shutdown(socket.SHUT_RDWR)
            closed += 1
    except OSError:
        pass
    finally:
        s.close()
print(closed)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_that_closes_its_iopub_is_recycled() {
    let before = alive();
    let lb = builder().build().unwrap();
    lb.start().await.unwrap();
    let running = alive();
    lb.exec("kept = 1").await.unwrap();
    let pid = lb.kernel_pid().await.unwrap();
    // Without its IOPub the kernel runs on but cannot be heard: it is recycled, and the
    // execution says so instead of waiting forever for outputs that cannot come.
    let err = within("an execution that closes IOPub", lb.exec(CLOSE_IOPUB)).await.unwrap_err();
    match &err {
        CodeBoxError::KernelDied { cause, .. } => assert!(cause.to_string().contains("closed a channel"), "{err}"),
        other => panic!("expected KernelDied, got {other:?}"),
    }
    let ex = within("the next call", lb.exec("kept")).await.unwrap();
    assert_eq!(ex.error().unwrap().name, "NameError", "a fresh kernel has no `kept`");
    assert_ne!(lb.kernel_pid().await.unwrap(), pid);
    settle("after the recycle", running).await;
    lb.stop().await.unwrap();
    settle("after the stop", before).await;
}

//! Faults: dead and hung kernels, timeouts, interrupts and restarts, and what survives them.

use std::time::Duration;

use codebox_core::{
    BoxState, CodeBox, CodeBoxError, CodeBoxExt, ErrorKind, KernelDeath, MimeBundle, Outcome, RunOptions, TimeoutKind,
};
use futures::StreamExt;

use crate::{builder, started};

/// Fail instead of hanging when a fault is not handled.
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f).await.unwrap_or_else(|_| panic!("{what} hung"))
}

#[tokio::test]
async fn os_exit_fails_the_call_with_the_exit_code_and_the_next_call_gets_a_fresh_kernel() {
    let lb = started().await;
    lb.exec("x = 1").await.unwrap();
    let err = within("os._exit", lb.exec("import os; os._exit(3)")).await.unwrap_err();
    match &err {
        CodeBoxError::KernelDied { cause, .. } => assert_eq!(cause, &KernelDeath::Exited { code: 3 }),
        other => panic!("expected KernelDied, got {other:?}"),
    }
    assert!(err.to_string().contains("exited with code 3"), "{err}");
    let ex = within("the next call", lb.exec("x")).await.unwrap();
    assert_eq!(ex.error().unwrap().name, "NameError", "a fresh kernel has no x");
    assert_eq!(lb.exec("1+1").await.unwrap().text(), "2");
    assert_eq!(lb.status().await.unwrap().restarts, 1);
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn a_segfault_is_reported_with_its_signal() {
    let lb = started().await;
    let err = within("segfault", lb.exec("import ctypes; ctypes.string_at(0)")).await.unwrap_err();
    match err {
        CodeBoxError::KernelDied { cause, .. } => assert_eq!(cause, KernelDeath::Signaled { signal: 11 }),
        other => panic!("expected KernelDied, got {other:?}"),
    }
    assert_eq!(within("after segfault", lb.exec("2*3")).await.unwrap().text(), "6");
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn too_many_deaths_leave_the_box_dead_until_restarted() {
    let lb = builder().with_restart_limit(1, Duration::from_secs(600)).build().unwrap();
    lb.start().await.unwrap();
    assert_eq!(lb.exec("import os; os._exit(1)").await.unwrap_err().kind(), ErrorKind::KernelDied);
    assert_eq!(lb.exec("import os; os._exit(1)").await.unwrap_err().kind(), ErrorKind::KernelDied);
    let err = within("dead box", lb.exec("1")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotRunning);
    assert!(err.to_string().contains("restart()"), "{err}");
    assert_eq!(lb.status().await.unwrap().state, BoxState::Dead);
    lb.restart().await.unwrap();
    assert_eq!(lb.exec("1+1").await.unwrap().text(), "2");
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn a_timeout_interrupts_and_keeps_state() {
    let lb = started().await;
    lb.exec("kept = 'yes'").await.unwrap();
    let opts = RunOptions::new().with_timeout(Duration::from_millis(500));
    let ex = within("timeout", lb.run("while True: pass", opts)).await.unwrap();
    assert_eq!(ex.outcome, Outcome::TimedOut);
    assert_eq!(lb.exec("kept").await.unwrap().text(), "'yes'");
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn an_ignored_interrupt_kills_and_restarts_the_kernel_and_says_state_was_lost() {
    let lb = builder().with_interrupt_grace(Duration::from_secs(1)).build().unwrap();
    lb.start().await.unwrap();
    lb.exec("kept = 1").await.unwrap();
    let pid = lb.kernel_pid().await.unwrap();
    // A catastrophic regex runs in C holding the GIL: the interrupt is never handled.
    let code = "import re\nre.match(r'(a+)+$', 'a' * 40 + 'b')";
    let err = within("GIL-holding code", lb.run(code, RunOptions::new().with_timeout(Duration::from_millis(500))))
        .await
        .unwrap_err();
    match &err {
        CodeBoxError::Timeout { kind, state_lost, .. } => {
            assert_eq!(*kind, TimeoutKind::Execution);
            assert!(state_lost);
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(err.to_string().contains("state was lost"), "{err}");
    let ex = within("after the kill", lb.exec("kept")).await.unwrap();
    assert_eq!(ex.error().unwrap().name, "NameError");
    assert_ne!(lb.kernel_pid().await.unwrap(), pid);
    assert_eq!(lb.status().await.unwrap().restarts, 0, "a timeout kill is not a crash");
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn input_raises_instead_of_hanging() {
    let lb = started().await;
    let ex = within("input()", lb.exec("input('name? ')")).await.unwrap();
    assert_eq!(ex.outcome, Outcome::Error);
    let err = ex.error().unwrap();
    assert!(err.name.contains("StdinNotImplemented") || err.value.contains("stdin"), "{err:?}");
    assert_eq!(lb.exec("'still here'").await.unwrap().text(), "'still here'");
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn output_is_capped_with_head_tail_and_a_marker() {
    let limit = 1 << 20;
    let lb = builder().with_output_limit(limit).build().unwrap();
    lb.start().await.unwrap();
    let code = "print('HEAD')\nfor i in range(200_000): print('x' * 40)\nprint('TAIL')\n'value'";
    let ex = within("a lot of output", lb.exec(code)).await.unwrap();
    let out = ex.stdout();
    assert!(out.starts_with("HEAD\n"));
    assert!(out.ends_with("TAIL\n"));
    assert!(out.len() <= limit, "{} bytes kept", out.len());
    let total = 5 + 200_000 * 41 + 5;
    assert_eq!(
        ex.truncated_bytes() as usize + out.len() + "'value'".len() + MimeBundle::TEXT.len(),
        total + "'value'".len() + MimeBundle::TEXT.len()
    );
    assert_eq!(ex.result().and_then(MimeBundle::plain).as_deref(), Some("'value'"));
    // One giant message is cut too.
    let ex = within("one huge message", lb.exec("print('y' * (8 << 20))")).await.unwrap();
    assert!(ex.stdout().len() <= limit);
    assert!(ex.truncated_bytes() > 0);
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn interrupt_stops_running_code() {
    let lb = started().await;
    let mut stream =
        lb.run_stream("import time\nprint('go', flush=True)\ntime.sleep(100)", RunOptions::new()).await.unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap(), codebox_core::ExecEvent::stdout("go\n"));
    lb.interrupt().await.unwrap();
    let ex = within("interrupted run", codebox_core::Execution::collect(stream)).await.unwrap();
    assert_eq!(ex.outcome, Outcome::Interrupted);
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn dropping_the_stream_interrupts_the_execution() {
    let lb = started().await;
    let mut stream =
        lb.run_stream("import time\nprint('go', flush=True)\ntime.sleep(100)", RunOptions::new()).await.unwrap();
    assert!(stream.next().await.is_some());
    drop(stream);
    // Without the interrupt this would wait 100 s behind the sleeping cell.
    assert_eq!(within("the next run", lb.exec("'free'")).await.unwrap().text(), "'free'");
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn a_kernel_that_fails_to_start_reports_its_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("python");
    // Passes the ipykernel check, then dies at kernel start like a broken sitecustomize.
    std::fs::write(
        &fake,
        "#!/bin/sh\nif [ \"$2\" = \"import ipykernel\" ]; then exit 0; fi\necho 'ImportError: sitecustomize is broken' >&2\nexit 1\n",
    )
    .unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(&mut std::fs::metadata(&fake).unwrap().permissions(), 0o755);
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let lb = LocalBoxFor::python(&fake);
    let err = within("failing start", lb.start()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KernelStart);
    let msg = err.to_string();
    assert!(msg.contains("sitecustomize is broken"), "{msg}");
    assert!(msg.contains("exited with code 1"), "{msg}");
}

#[tokio::test]
async fn a_python_without_ipykernel_is_refused_with_advice() {
    let lb = LocalBoxFor::python(std::path::Path::new("/bin/false"));
    let err = lb.start().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KernelStart);
    assert!(err.to_string().contains("pip install ipykernel"), "{err}");
}

struct LocalBoxFor;

impl LocalBoxFor {
    fn python(p: &std::path::Path) -> codebox_local::LocalBox {
        builder().with_python(p).build().unwrap()
    }
}

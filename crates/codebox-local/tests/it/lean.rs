//! The lean kernel (`python3-lean`): IPython behind the Jupyter protocol without ipykernel.
//! It must behave like the default kernel wherever codebox promises something.

use std::time::Duration;

use codebox_core::conformance::{ConformanceOptions, run_all};
use codebox_core::{CodeBox, CodeBoxError, CodeBoxExt, ExecEvent, KernelDeath, MimeBundle, Outcome, RunOptions};
use codebox_local::{LEAN_KERNEL, LocalBox};
use futures::StreamExt;

use crate::builder;

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f).await.unwrap_or_else(|_| panic!("{what} hung"))
}

async fn lean() -> LocalBox {
    let lb = builder().with_kernel(LEAN_KERNEL).build().unwrap();
    lb.start().await.unwrap();
    lb
}

#[tokio::test]
async fn the_lean_kernel_passes_the_conformance_suite() {
    let lb = builder().with_kernel(LEAN_KERNEL).build().unwrap();
    let report = run_all(&lb, &ConformanceOptions::default().with_require_matplotlib(true)).await;
    lb.stop().await.unwrap();
    report.assert_all_passed();
}

#[tokio::test]
async fn output_streams_while_the_cell_runs_without_explicit_flushes() {
    let lb = lean().await;
    let mut stream =
        lb.run_stream("import time\nprint('a')\ntime.sleep(0.5)\nprint('b')", RunOptions::new()).await.unwrap();
    let first = within("first event", stream.next()).await.unwrap().unwrap();
    assert_eq!(first, ExecEvent::stdout("a\n"));
    let mut rest = Vec::new();
    while let Some(e) = stream.next().await {
        rest.push(e.unwrap());
    }
    assert_eq!(rest.first(), Some(&ExecEvent::stdout("b\n")));
    assert!(rest.last().unwrap().is_end());
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn output_of_subprocesses_and_stderr_and_rich_results_arrive_in_order() {
    let lb = lean().await;
    let code = "import os, sys, subprocess, multiprocessing as mp\nprint('py')\nos.system('echo from-shell')\n\
                subprocess.run(['echo', 'from-run'], stdout=sys.stdout)\n\
                p = mp.get_context('fork').Process(target=print, args=('from-fork',)); p.start(); p.join()\n\
                print('err', file=sys.stderr)\n\
                from IPython.display import HTML, display\ndisplay(HTML('<b>x</b>'))\n40 + 2";
    let ex = lb.exec(code).await.unwrap();
    assert!(ex.is_ok(), "{:?}", ex.error());
    assert_eq!(ex.stdout(), "py\nfrom-shell\nfrom-run\nfrom-fork\n");
    assert_eq!(ex.stderr(), "err\n");
    let display = ex.events.iter().find_map(|e| match e {
        ExecEvent::Display { data, .. } => data.get("text/html").and_then(|v| v.as_str()).map(str::to_owned),
        _ => None,
    });
    assert_eq!(display.as_deref(), Some("<b>x</b>"));
    assert_eq!(ex.result().and_then(MimeBundle::plain).as_deref(), Some("42"));
    assert_eq!(ex.execution_count, Some(1));
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn errors_input_and_interrupts_behave_like_the_default_kernel() {
    let lb = lean().await;
    lb.exec("kept = 'yes'").await.unwrap();

    let ex = lb.exec("def f():\n    raise ValueError('bad')\nf()").await.unwrap();
    let err = ex.error().unwrap();
    assert_eq!((err.name.as_str(), err.value.as_str()), ("ValueError", "bad"));
    assert!(err.traceback.iter().all(|l| !l.contains('\u{1b}')), "plain traceback: {:?}", err.traceback);
    assert_eq!(ex.outcome, Outcome::Error);

    let ex = within("input()", lb.exec("input('name? ')")).await.unwrap();
    assert_eq!(ex.error().unwrap().name, "StdinNotImplementedError");

    // A timeout interrupts a pure-Python loop and the state survives.
    let ex = within("timeout", lb.run("while True: pass", RunOptions::new().with_timeout(Duration::from_millis(500))))
        .await
        .unwrap();
    assert_eq!(ex.outcome, Outcome::TimedOut);

    // A user interrupt wakes a sleeping cell.
    let mut stream =
        lb.run_stream("import time\nprint('go', flush=True)\ntime.sleep(100)", RunOptions::new()).await.unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap(), ExecEvent::stdout("go\n"));
    lb.interrupt().await.unwrap();
    let ex = within("interrupted run", codebox_core::Execution::collect(stream)).await.unwrap();
    assert_eq!(ex.outcome, Outcome::Interrupted);

    // An interrupt between cells is harmless.
    lb.interrupt().await.unwrap();
    assert_eq!(lb.exec("kept").await.unwrap().text(), "'yes'");
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn a_dying_lean_kernel_is_reported_and_replaced() {
    let lb = lean().await;
    let err = within("os._exit", lb.exec("import os; os._exit(3)")).await.unwrap_err();
    match &err {
        CodeBoxError::KernelDied { cause, .. } => assert_eq!(cause, &KernelDeath::Exited { code: 3 }),
        other => panic!("expected KernelDied, got {other:?}"),
    }
    assert_eq!(within("the next call", lb.exec("1+1")).await.unwrap().text(), "2");
    lb.restart().await.unwrap();
    assert_eq!(lb.exec("2+2").await.unwrap().text(), "4");
    lb.stop().await.unwrap();
}

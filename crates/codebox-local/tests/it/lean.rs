//! The lean kernel (`python3-lean`, the default): IPython behind the Jupyter protocol without
//! ipykernel. It must do what users of the Python templates rely on, and behave like
//! ipykernel (one template away, `python-ipykernel`) wherever codebox promises something.

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

/// A cell that prints whether the thread running it is the only one of the kernel's threads
/// that leaves SIGINT unblocked, then those threads and its own id.
const SIGINT_TAKERS: &str = "import os, threading\ntakers = []\n\
    for t in os.listdir('/proc/self/task'):\n    \
        with open(f'/proc/self/task/{t}/status') as f:\n        \
            blocked = int(next(l for l in f if l.startswith('SigBlk:')).split()[1], 16)\n    \
        if not blocked & 2:\n        takers.append(int(t))\n\
    print(takers == [threading.get_native_id()], takers, threading.get_native_id())";

#[tokio::test]
async fn only_the_thread_that_runs_cells_takes_an_interrupt() {
    // An interrupt is a SIGINT the kernel sends itself. Taken by another of its threads, it
    // would not wake a cell that sleeps, and the execution would be killed at the end of its
    // grace, its state lost. So every thread the kernel starts for itself blocks it.
    let forked = builder().with_kernel(LEAN_KERNEL);
    let executed = builder().with_kernel(LEAN_KERNEL).with_fork_server(false);
    let ipykernel = builder().with_kernel("python3");
    for (name, builder) in [("forked lean", forked), ("executed lean", executed), ("ipykernel", ipykernel)] {
        let lb = builder.build().unwrap();
        let ex = within(name, lb.exec(SIGINT_TAKERS)).await.unwrap();
        assert!(ex.stdout().starts_with("True "), "{name}: {ex:?}");
        lb.stop().await.unwrap();
    }
}

#[tokio::test]
async fn an_execution_that_outlives_its_first_interrupt_is_interrupted_again_before_the_kill() {
    // A cell that shrugs off the first SIGINT (as a signal that lands just before the kernel
    // blocks is shrugged off) and takes the second: within the grace, the timeout interrupts
    // it again, and the kernel keeps its state instead of being killed.
    let code = "import signal, time\nhits = []\nold = signal.getsignal(signal.SIGINT)\n\
                def once(signum, frame):\n    hits.append(signum)\n    if len(hits) > 1:\n        \
                signal.signal(signal.SIGINT, old)\n        raise KeyboardInterrupt\n\
                signal.signal(signal.SIGINT, once)\ntime.sleep(30)";
    let lean = builder().with_kernel(LEAN_KERNEL);
    let ipykernel = builder().with_kernel("python3");
    for (name, builder) in [("lean", lean), ("ipykernel", ipykernel)] {
        let lb = builder.with_interrupt_grace(Duration::from_secs(20)).build().unwrap();
        lb.exec("kept = 'yes'").await.unwrap();
        let options = RunOptions::new().with_timeout(Duration::from_millis(300));
        let ex = within(name, lb.run(code, options)).await.unwrap();
        assert_eq!(ex.outcome, Outcome::TimedOut, "{name}: {ex:?}");
        assert_eq!(lb.exec("len(hits), kept").await.unwrap().text(), "(2, 'yes')", "{name}");
        // The kernel's own handler is back: a plain interrupt still works.
        let ex = within(
            name,
            lb.run("import time\ntime.sleep(30)", RunOptions::new().with_timeout(Duration::from_millis(300))),
        )
        .await
        .unwrap();
        assert_eq!(ex.outcome, Outcome::TimedOut, "{name}: {ex:?}");
        lb.stop().await.unwrap();
    }
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

#[tokio::test]
async fn the_default_kernel_is_the_lean_one() {
    let lb = builder().build().unwrap();
    lb.start().await.unwrap();
    assert_eq!(lb.status().await.unwrap().kernel.as_deref(), Some(LEAN_KERNEL));
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn ipykernel_still_passes_the_conformance_suite() {
    let lb = builder().with_kernel("python3").build().unwrap();
    let report = run_all(&lb, &ConformanceOptions::default().with_require_matplotlib(true)).await;
    lb.stop().await.unwrap();
    report.assert_all_passed();
}

#[tokio::test]
async fn magics_await_displays_and_dataframes_work_and_widgets_say_where_they_work() {
    let lb = lean().await;
    let ex = lb.exec("%pip --version").await.unwrap();
    assert!(ex.is_ok() && ex.stdout().contains("pip "), "{ex:?}");
    let ex = lb.exec("!echo from-bang\n%time x = 1").await.unwrap();
    assert!(ex.stdout().contains("from-bang") && ex.stdout().contains("Wall time"), "{ex:?}");

    let ex = lb.exec("import asyncio\nawait asyncio.sleep(0.01)\n'awaited'").await.unwrap();
    assert_eq!(ex.text(), "'awaited'", "top-level await: {ex:?}");

    let code = "from IPython.display import HTML, display\nh = display(HTML('<b>1</b>'), display_id=True)\n\
                h.update(HTML('<b>2</b>'))";
    let ex = lb.exec(code).await.unwrap();
    let ids: Vec<_> = ex
        .events
        .iter()
        .filter_map(|e| match e {
            ExecEvent::Display { display_id, .. } => Some(("display", display_id.clone())),
            ExecEvent::UpdateDisplay { display_id, .. } => Some(("update", Some(display_id.clone()))),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 2, "{:?}", ex.events);
    assert_eq!(ids[0].1, ids[1].1, "the update names the display: {ids:?}");

    let ex = lb.exec("import pandas as pd\npd.DataFrame({'a': [1, 2]})").await.unwrap();
    let html = ex.result().and_then(|r| r.get("text/html")).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
    assert!(html.contains("<table"), "a DataFrame renders as HTML: {ex:?}");

    // ipywidgets reach comms through `comm.create_comm`.
    let ex = lb.exec("import comm\ncomm.create_comm(target_name='jupyter.widget')").await.unwrap();
    let err = ex.error().expect("a widget is refused");
    assert_eq!(err.name, "NotImplementedError");
    assert!(err.value.contains("python-ipykernel"), "the error says where widgets work: {err:?}");
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn under_bubblewrap_the_lean_kernel_is_forked_from_the_fork_server() {
    let policy = codebox_local::SandboxPolicy::default()
        .with_isolation(codebox_local::Isolation::Bubblewrap)
        .with_require_isolation(true);
    let lb = builder().with_kernel(LEAN_KERNEL).with_sandbox(policy.clone()).build().unwrap();
    within("start", lb.start()).await.unwrap();
    assert_eq!(lb.kernel_forked().await, Some(true));
    let ex = within("exec", lb.exec("import os\nprint(os.getpid(), os.getcwd())\n1 + 1")).await.unwrap();
    assert!(ex.is_ok(), "{ex:?}");
    assert!(ex.text().ends_with('2'), "{ex:?}");
    // In the box's own pid namespace (its init, the placeholder, the kernel), in its directory.
    let workdir = lb.working_dir().await.unwrap();
    assert_eq!(ex.stdout().trim(), format!("3 {}", workdir.display()));
    // The IPython shell the fork server built is the box's: its IPython directory under the
    // box's home, its working directory and directory history, a history of its own (`In`
    // holds the empty entry and this box's two cells).
    let shell = "import os\nip = get_ipython()\nhome = os.environ['HOME']\n\
                 print(ip.ipython_dir.startswith(home), ip.profile_dir.location.startswith(home), \
                 os.path.isdir(ip.profile_dir.location), [str(d) for d in _dh] == [os.getcwd()], \
                 ip.starting_dir == os.getcwd(), len(In))";
    let ex = within("shell", lb.exec(shell)).await.unwrap();
    assert_eq!(ex.stdout(), "True True True True True 3\n", "{ex:?}");
    lb.stop().await.unwrap();
    // Executed as before when asked.
    let lb = builder().with_kernel(LEAN_KERNEL).with_sandbox(policy).with_fork_server(false).build().unwrap();
    within("start", lb.start()).await.unwrap();
    assert_eq!(lb.kernel_forked().await, Some(false));
    lb.stop().await.unwrap();
}

/// Set in the process that `a_fork_server_that_dies_takes_no_kernel_with_it` runs itself in.
const FORK_SERVER_ROLE: &str = "CODEBOX_TEST_FORK_SERVER_DIES";

#[test]
fn a_fork_server_that_dies_takes_no_kernel_with_it() {
    // Killing the fork server would disturb the other tests of this process, which share it:
    // the case runs in a process of its own (this test binary again).
    if std::env::var_os(FORK_SERVER_ROLE).is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "lean::a_fork_server_that_dies_takes_no_kernel_with_it", "--nocapture"])
            .env(FORK_SERVER_ROLE, "1")
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.contains("FORK_SERVER_CASE_DONE"), "{text}");
        return;
    }
    use crate::adversarial::parent_of;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let policy = codebox_local::SandboxPolicy::default()
            .with_isolation(codebox_local::Isolation::Bubblewrap)
            .with_require_isolation(true);
        let boxed = || builder().with_kernel(LEAN_KERNEL).with_sandbox(policy.clone()).build().unwrap();
        let first = boxed();
        within("start", first.start()).await.unwrap();
        assert_eq!(first.kernel_forked().await, Some(true));
        within("exec", first.exec("x = 41")).await.unwrap();
        let kernel = first.kernel_pid().await.unwrap();
        let server = parent_of(parent_of(kernel));
        let cmdline = std::fs::read(format!("/proc/{server}/cmdline")).unwrap();
        assert!(String::from_utf8_lossy(&cmdline).contains("_CODEBOX_FORKSERVER"));
        rustix::process::kill_process(rustix::process::Pid::from_raw(server).unwrap(), rustix::process::Signal::KILL)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The running kernel lives on, state and all.
        let ex = within("exec after", first.exec("x + 1")).await.unwrap();
        assert_eq!(ex.text(), "42", "{ex:?}");
        assert_eq!(first.kernel_pid().await, Some(kernel));
        // A new box is forked from a new fork server.
        let second = boxed();
        within("start again", second.start()).await.unwrap();
        assert_eq!(second.kernel_forked().await, Some(true));
        let again = parent_of(parent_of(second.kernel_pid().await.unwrap()));
        assert_ne!(again, server);
        assert_eq!(within("exec", second.exec("1 + 1")).await.unwrap().text(), "2");
        first.stop().await.unwrap();
        second.stop().await.unwrap();
        // Stopping the box still ends its kernel, whose keeper outlived the fork server.
        let gone = async {
            while std::path::Path::new(&format!("/proc/{kernel}")).exists() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        within("the first kernel's end", gone).await;
    });
    #[allow(clippy::print_stdout, reason = "the parent process reads this line")]
    {
        println!("FORK_SERVER_CASE_DONE");
    }
}

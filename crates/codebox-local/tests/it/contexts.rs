//! Code contexts of a LocalBox: kernels of their own in one box. The conformance suite checks
//! what every backend shares; these check what only a local box shows: kernel processes,
//! their death, their end with the box, its cgroup, its pool and its bound.

use std::time::Duration;

use codebox_core::{CodeBox, CodeBoxExt, DEFAULT_CONTEXT, ErrorKind, RunOptions};
use codebox_local::{Isolation, KernelPool, LocalBox, SandboxPolicy, UidAllocator};

use crate::orphans::{alive, wait_until_dead};

/// Fail instead of hanging.
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(90), f).await.unwrap_or_else(|_| panic!("{what} hung"))
}

/// How long a killed or stopped kernel may take to be gone (a guard, not a measure).
const GONE: Duration = Duration::from_secs(30);

async fn value_in(lb: &LocalBox, context: &str, code: &str) -> String {
    let ex = within("an execution", lb.run(code, RunOptions::new().with_context(context))).await.unwrap();
    match ex.error() {
        Some(e) => e.name.clone(),
        None => ex.text(),
    }
}

async fn pid_of(lb: &LocalBox, context: &str) -> i32 {
    lb.context_kernel_pid(context).await.unwrap_or_else(|| panic!("context {context} has no kernel"))
}

// Killing one context's kernel leaves the box's kernel and the other context running with
// their variables; the dead context gets a fresh kernel on its next use.
#[tokio::test]
async fn the_death_of_one_contexts_kernel_leaves_the_others_running() {
    let lb = crate::started().await;
    let a = lb.create_context(None, None).await.unwrap();
    let b = lb.create_context(Some("python"), None).await.unwrap();
    for (context, value) in [(DEFAULT_CONTEXT, 1), (a.id.as_str(), 2), (b.id.as_str(), 3)] {
        value_in(&lb, context, &format!("v = {value}")).await;
    }
    let (box_pid, a_pid, b_pid) =
        (pid_of(&lb, DEFAULT_CONTEXT).await, pid_of(&lb, &a.id).await, pid_of(&lb, &b.id).await);
    assert!(box_pid != a_pid && a_pid != b_pid && box_pid != b_pid, "each context is its own process");

    rustix::process::kill_process(rustix::process::Pid::from_raw(a_pid).unwrap(), rustix::process::Signal::KILL)
        .unwrap();
    assert!(wait_until_dead(a_pid, GONE), "the killed kernel {a_pid} lives on");
    assert_eq!(value_in(&lb, DEFAULT_CONTEXT, "v").await, "1");
    assert_eq!(value_in(&lb, &b.id, "v").await, "3");
    assert!(alive(box_pid) && alive(b_pid));

    // Its next use restarts it: a new process, without the old variables.
    assert_eq!(value_in(&lb, &a.id, "v").await, "NameError");
    let fresh = pid_of(&lb, &a.id).await;
    assert!(fresh != a_pid && alive(fresh));
    assert_eq!(value_in(&lb, &a.id, "1 + 1").await, "2");
    lb.stop().await.unwrap();
}

// Past the restart budget a dying context reports itself dead, with what to do; the other
// contexts are untouched, and `restart_context` brings it back. A box whose own kernel dies
// past the budget leaves its contexts running too.
#[tokio::test]
async fn a_context_dying_past_its_budget_is_reported_until_restarted() {
    let lb = crate::builder().with_restart_limit(1, Duration::from_secs(3600)).build().unwrap();
    lb.start().await.unwrap();
    let a = lb.create_context(None, None).await.unwrap();
    let b = lb.create_context(None, None).await.unwrap();
    value_in(&lb, &b.id, "kept = 'yes'").await;
    for _ in 0..2 {
        let err = within("os._exit", lb.run("import os; os._exit(7)", RunOptions::new().with_context(&a.id)))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::KernelDied, "{err}");
    }
    let err = within("a dead context", lb.run("1", RunOptions::new().with_context(&a.id))).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotRunning, "{err}");
    assert!(err.to_string().contains("restart_context") && err.to_string().contains(&a.id), "{err}");
    assert_eq!(value_in(&lb, &b.id, "kept").await, "'yes'");
    assert_eq!(lb.exec("1 + 1").await.unwrap().text(), "2");

    lb.restart_context(&a.id).await.unwrap();
    assert_eq!(value_in(&lb, &a.id, "2 + 2").await, "4");

    // The box's own kernel past its budget: the box is dead, its contexts run on.
    for _ in 0..2 {
        let err = within("os._exit", lb.exec("import os; os._exit(7)")).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::KernelDied, "{err}");
    }
    assert_eq!(within("a dead box", lb.exec("1")).await.unwrap_err().kind(), ErrorKind::NotRunning);
    assert_eq!(value_in(&lb, &b.id, "kept").await, "'yes'");
    assert_eq!(value_in(&lb, &a.id, "2 + 2").await, "4");
    lb.stop().await.unwrap();
}

// Stopping the box ends every context's kernel, and so does dropping it: no kernel outlives
// its box.
#[tokio::test]
async fn stopping_or_dropping_the_box_ends_every_contexts_kernel() {
    for stop in [true, false] {
        let lb = crate::started().await;
        let mut pids = vec![pid_of(&lb, DEFAULT_CONTEXT).await];
        for _ in 0..3 {
            let made = lb.create_context(None, None).await.unwrap();
            pids.push(pid_of(&lb, &made.id).await);
        }
        assert!(pids.iter().all(|p| alive(*p)));
        if stop {
            lb.stop().await.unwrap();
            let err = lb.create_context(None, None).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::NotRunning, "{err}");
        } else {
            drop(lb);
        }
        for pid in pids {
            assert!(wait_until_dead(pid, GONE), "kernel {pid} outlived its box (stopped: {stop})");
        }
    }
}

// A context's kernel is in the box's cgroup, so it counts against the box's memory and
// processes; and it runs under the box's uid. Ending it leaves the box's kernel alone.
#[tokio::test]
async fn a_contexts_kernel_is_in_the_boxs_cgroup_and_runs_as_its_uid() {
    if !codebox_core::conformance::requires("root (session uids and cgroups)", codebox_local::running_as_root()) {
        return;
    }
    let uids = UidAllocator::new(341_000..341_004).unwrap();
    let policy = SandboxPolicy::default()
        .with_isolation(Isolation::Bubblewrap)
        .with_require_isolation(true)
        .with_session_uids(Some(uids))
        .with_cgroups(true);
    let lb = crate::builder().with_sandbox(policy).build().unwrap();
    within("start", lb.start()).await.unwrap();
    let cgroups = lb.cgroup_paths().await;
    assert!(!cgroups.is_empty(), "a box with cgroups has cgroup directories");
    let uid = lb.session_uid().await.expect("a uid of its own");
    let made = lb.create_context(None, None).await.unwrap();
    let pid = pid_of(&lb, &made.id).await;
    for dir in &cgroups {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        assert!(procs.lines().any(|l| l.trim() == pid.to_string()), "{pid} not in {}: {procs}", dir.display());
    }
    assert_eq!(value_in(&lb, &made.id, "import os; os.getuid()").await, uid.to_string());
    // Restarting and deleting the context end its kernel, and only its kernel: the box's,
    // in the same confinement, keeps running with its variables.
    value_in(&lb, DEFAULT_CONTEXT, "kept = 1").await;
    let box_pid = pid_of(&lb, DEFAULT_CONTEXT).await;
    lb.restart_context(&made.id).await.unwrap();
    assert_eq!(value_in(&lb, &made.id, "1 + 1").await, "2");
    lb.delete_context(&made.id).await.unwrap();
    assert_eq!(value_in(&lb, DEFAULT_CONTEXT, "kept").await, "1");
    assert_eq!(pid_of(&lb, DEFAULT_CONTEXT).await, box_pid, "the box's kernel was not restarted");
    lb.stop().await.unwrap();
}

// The bound on contexts is a clear error, and deleting one makes room; ids of another box
// are unknown here; a context's language is its box's; per-execution cwd and env work in a
// context, as do the box's default-context aliases.
#[tokio::test]
async fn bounds_languages_and_ids_of_contexts() {
    let lb = crate::builder().with_max_contexts(2).build().unwrap();
    lb.start().await.unwrap();
    let a = lb.create_context(None, None).await.unwrap();
    let b = lb.create_context(None, None).await.unwrap();
    let err = lb.create_context(None, None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("maximum"), "{err}");
    lb.delete_context(&b.id).await.unwrap();
    let c = lb.create_context(None, None).await.unwrap();
    let ids: Vec<String> = lb.contexts().await.unwrap().into_iter().map(|i| i.id).collect();
    assert_eq!(ids.len(), 3);
    assert!(ids[0] == DEFAULT_CONTEXT && ids.contains(&a.id) && ids.contains(&c.id), "{ids:?}");

    for refused in ["javascript", "bash", "sh"] {
        let err = lb.create_context(Some(refused), None).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{refused}: {err}");
    }
    let err = lb.run("echo hi", RunOptions::new().with_context(&a.id).with_language("bash")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");

    let other = crate::started().await;
    let err = other.run("1", RunOptions::new().with_context(&a.id)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains(&a.id), "{err}");
    assert_eq!(other.delete_context(&a.id).await.unwrap_err().kind(), ErrorKind::NotFound);
    other.stop().await.unwrap();

    lb.upload_bytes("sub/f.txt", "in sub").await.unwrap();
    let options = RunOptions::new().with_context(&a.id).with_cwd("sub").with_env("CTX_VAR", "set");
    let ex = lb.run("import os\nprint(open('f.txt').read(), os.environ['CTX_VAR'])", options).await.unwrap();
    assert_eq!(ex.stdout(), "in sub set\n", "{ex:?}");
    // Restored after the execution: the context is back in its own directory.
    assert_eq!(value_in(&lb, &a.id, "import os; os.path.exists('sub/f.txt')").await, "True");

    lb.restart_context(DEFAULT_CONTEXT).await.unwrap();
    lb.interrupt_context(DEFAULT_CONTEXT).await.unwrap();
    assert_eq!(value_in(&lb, DEFAULT_CONTEXT, "1 + 1").await, "2");
    lb.stop().await.unwrap();
}

// A pooled box with contexts is retired on release, its contexts' kernels with it.
#[tokio::test]
async fn releasing_a_pooled_box_ends_its_contexts() {
    let pool = KernelPool::new(1);
    let builder = crate::builder();
    let lb = pool.acquire(&builder).await.unwrap();
    let made = lb.create_context(None, None).await.unwrap();
    let pid = pid_of(&lb, &made.id).await;
    value_in(&lb, &made.id, "secret = 1").await;
    pool.release(lb).await.unwrap();
    assert!(wait_until_dead(pid, GONE), "a released box's context kernel {pid} lives on");
    let next = pool.acquire(&builder).await.unwrap();
    assert_eq!(next.contexts().await.unwrap().len(), 1, "a fresh box has only its own kernel");
    pool.release(next).await.unwrap();
}

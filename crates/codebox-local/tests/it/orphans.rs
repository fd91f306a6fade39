//! No kernel outlives its owner: not when the owner process is SIGKILLed, not when the
//! box is dropped; and a kernel does not die with the thread that happened to start it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use codebox_core::CodeBox;

const ROLE: &str = "CODEBOX_IT_OWNER_ROLE";

/// Whether `pid` is a live process (a zombie counts as dead).
pub(crate) fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
            !matches!(state, Some("Z" | "X"))
        }
        Err(_) => false,
    }
}

pub(crate) fn wait_until_dead(pid: i32, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    !alive(pid)
}

/// The owner's side: start a box from `builder`, run `setup` in it, report the kernel's pid
/// and directories, and wait to be killed.
#[allow(clippy::print_stdout, reason = "the test reads the owner's pid and directories from its stdout")]
pub(crate) fn act_as_owner(builder: codebox_local::LocalBoxBuilder, setup: Option<&str>) -> ! {
    use codebox_core::CodeBoxExt;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let lb = builder.build().unwrap();
        lb.start().await.unwrap();
        if let Some(code) = setup {
            assert!(lb.exec(code).await.unwrap().is_ok());
        }
        let (wd, rd) = (lb.working_dir().await.unwrap(), lb.runtime_dir().await.unwrap());
        println!("KERNEL_PID {} DIRS {} {}", lb.kernel_pid().await.unwrap(), wd.display(), rd.display());
        std::io::Write::flush(&mut std::io::stdout()).unwrap();
        std::future::pending::<()>().await;
    });
    unreachable!()
}

/// An owner process: this test binary re-run as `test` with `role` set in the environment
/// variable `role_var`, once it has reported its kernel.
pub(crate) struct Owner {
    pub(crate) child: std::process::Child,
    pub(crate) kernel_pid: i32,
    pub(crate) working_dir: std::path::PathBuf,
    pub(crate) runtime_dir: std::path::PathBuf,
}

pub(crate) fn spawn_owner(test: &str, role_var: &str, role: &str) -> Owner {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(role_var, role)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let line = stdout
        .lines()
        .map_while(Result::ok)
        // libtest prints the test's name on the same line.
        .find_map(|l| l.split_once("KERNEL_PID ").map(|(_, rest)| rest.to_owned()))
        .expect("the owner reported its kernel");
    let mut parts = line.split_whitespace();
    let kernel_pid = parts.next().and_then(|p| p.parse().ok()).expect("a kernel pid");
    assert_eq!(parts.next(), Some("DIRS"), "{line}");
    let (wd, rd) = (parts.next().expect("a working dir"), parts.next().expect("a runtime dir"));
    Owner { child, kernel_pid, working_dir: wd.into(), runtime_dir: rd.into() }
}

#[test]
fn no_kernel_outlives_a_sigkilled_owner() {
    // This test re-runs itself as the owner process, which the parent then SIGKILLs.
    if std::env::var_os(ROLE).is_some() {
        act_as_owner(crate::builder(), None);
    }
    let Owner { child: mut owner, kernel_pid: pid, working_dir: wd, runtime_dir: rd } =
        spawn_owner("orphans::no_kernel_outlives_a_sigkilled_owner", ROLE, "owner");
    assert!(alive(pid), "the kernel runs while its owner lives");
    assert!(wd.is_dir() && rd.is_dir());
    owner.kill().unwrap(); // SIGKILL: the owner runs no cleanup at all
    owner.wait().unwrap();
    assert!(wait_until_dead(pid, Duration::from_secs(10)), "kernel {pid} outlived its SIGKILLed owner");
    // The next process to start a kernel removes what the dead owner left; here, at once.
    codebox_local::LocalBox::remove_stale_runtime_dirs();
    assert!(!wd.exists() && !rd.exists(), "{} or {} outlived its owner", wd.display(), rd.display());
}

#[test]
fn a_kernel_outlives_the_thread_that_started_it_and_dies_with_its_box() {
    // PR_SET_PDEATHSIG fires when the forking *thread* exits: starting a box from a
    // short-lived thread must not kill its kernel.
    let (lb, pid) = std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let lb = crate::started().await;
            let pid = lb.kernel_pid().await.unwrap();
            (lb, pid)
        })
    })
    .join()
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(alive(pid), "the kernel died with the thread that started the box");
    drop(lb);
    assert!(wait_until_dead(pid, Duration::from_secs(10)), "kernel {pid} outlived its dropped box");
}

#[tokio::test]
async fn stop_ends_the_kernel_process() {
    let lb = crate::started().await;
    let pid = lb.kernel_pid().await.unwrap();
    lb.stop().await.unwrap();
    assert!(wait_until_dead(pid, Duration::from_secs(10)));
}

#[tokio::test]
async fn runtime_and_working_dirs_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let lb = crate::started().await;
    let wd = lb.working_dir().await.unwrap();
    assert_eq!(std::fs::metadata(&wd).unwrap().permissions().mode() & 0o777, 0o700);
    // The kernel's connection file (with the signing key) sits in a 0700 directory.
    let dir = lb.runtime_dir().await.unwrap();
    assert!(dir.join("connection.json").is_file());
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
    lb.stop().await.unwrap();
    assert!(!dir.exists(), "the runtime directory is removed with the kernel");
}

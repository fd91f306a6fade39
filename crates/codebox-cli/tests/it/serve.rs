//! `codebox serve` as a process: what a SIGKILLed server leaves behind, and what the next
//! one on the same session root makes of it (isolation research, section 10, case 20).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use codebox_sandbox::{processes_in_range, running_as_root, session_cgroups_of};

use crate::hostile::{KEY_A, Level, Options, Serve, wait_until};

/// The session cgroups a server with process id `pid` made.
fn cgroups_of(pid: u32) -> Vec<PathBuf> {
    session_cgroups_of(pid).expect("cgroups usable here (root)")
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&dir))
        .map(str::to_owned)
        .collect()
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
}

// 20: a SIGKILLed server takes its kernels, bubblewrap and their children with it; the
// next server on the same root sweeps the cgroups, images and directories left behind and
// answers the old session with 410 Gone.
#[test]
fn a_killed_server_leaves_nothing_running_and_the_next_one_sweeps_and_says_lost() {
    if !codebox_core::conformance::requires("root (session uids and cgroups); run the tests as root", running_as_root())
    {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let base = tempfile::tempdir().unwrap();
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = base.path().join("sessions");
    let scratch = root.join("tmp");
    let range = 322_000..322_010;

    let first = Serve::start_on(&root, Options::new(Level::Bubblewrap).pool(1), range.clone());
    let id = first.new_session(KEY_A);
    // A child and an escaped daemon (setsid double fork) besides the kernel.
    let code = "import os, subprocess\n\
                subprocess.Popen(['sleep', '600'])\n\
                subprocess.Popen(['setsid', 'sh', '-c', 'sleep 600 & exit 0'])\n\
                open('kept.txt', 'w').write('data')\n\
                print('uid', os.getuid())";
    let out = first.exec(KEY_A, &id, code);
    assert!(out.ok().contains("uid 32200"), "the session runs under a uid of the range: {out:?}");
    wait_until("the children run", Duration::from_secs(10), || processes_in_range(&range).len() >= 4);
    let old_pid = first.child.id();
    assert!(!cgroups_of(old_pid).is_empty(), "sessions have cgroups");
    assert!(!mounts_under(&scratch).is_empty(), "the working directory is a mounted image");

    let mut first = first;
    first.child.kill().unwrap(); // SIGKILL
    first.child.wait().unwrap();
    wait_until("every kernel, bwrap and child of the killed server is gone", Duration::from_secs(5), || {
        processes_in_range(&range).is_empty()
    });
    // What only a sweep removes: the image stays mounted, the directories and cgroups stay.
    assert!(!mounts_under(&scratch).is_empty(), "a SIGKILLed server cannot unmount");
    assert!(entries(&scratch).iter().any(|e| e.starts_with("codebox-")), "{:?}", entries(&scratch));
    assert!(!cgroups_of(old_pid).is_empty(), "a SIGKILLed server cannot remove its cgroups");

    let second = Serve::start_on(&root, Options::new(Level::Bubblewrap), range.clone());
    assert!(mounts_under(&scratch).is_empty(), "stale images are unmounted: {:?}", mounts_under(&scratch));
    assert!(entries(&scratch).is_empty(), "stale session directories are removed: {:?}", entries(&scratch));
    assert!(cgroups_of(old_pid).is_empty(), "stale cgroups are removed: {:?}", cgroups_of(old_pid));
    assert!(processes_in_range(&range).is_empty());

    for (method, path) in [("GET", format!("/v1/sessions/{id}")), ("POST", format!("/v1/sessions/{id}/execute"))] {
        let body = (method == "POST").then(|| serde_json::json!({"code": "1"}));
        let reply = second.request(KEY_A, method, &path, body);
        let answer = reply.text();
        assert_eq!(reply.status, 410, "{method} {path}: {answer}");
        assert!(answer.contains("lost when the server restarted") && answer.contains("session_lost"), "{answer}");
    }
    let reply = second.request(KEY_A, "GET", "/v1/sessions/never-existed", None);
    assert_eq!(reply.status, 404, "an id no server ever had is simply unknown");

    // The new server works, and a graceful stop leaves nothing either.
    let fresh = second.new_session(KEY_A);
    assert_eq!(second.exec(KEY_A, &fresh, "print(6 * 7)").ok(), "42\n");

    // A second server on a root in use is refused, and sweeps nothing.
    let out = Command::new(env!("CARGO_BIN_EXE_codebox"))
        .args(["serve", "--addr", "127.0.0.1:0", "--api-key", KEY_A, "--session-uids", "322000-322009"])
        .arg("--session-root")
        .arg(&root)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another server is using the session root"), "{err}");
    let out = second.exec(KEY_A, &fresh, "print('still', 6 * 7)");
    assert_eq!(out.ok(), "still 42\n", "the running server's session was left alone");
    second.stop();
    assert!(mounts_under(&scratch).is_empty(), "{:?}", mounts_under(&scratch));
    assert!(
        entries(&scratch).iter().all(|e| !e.starts_with("codebox-")),
        "working directories are removed at session end: {:?}",
        entries(&scratch)
    );
}

//! Saving, pausing and resuming a LocalBox through its state directory: files, installed
//! packages, history and variables come back; what cannot is named; a damaged snapshot is
//! refused by name with its files still reachable.

use std::time::Duration;

use codebox_core::{CodeBox, CodeBoxExt, ErrorKind, ExecEvent, RESUME_NOTICE_MIME, RunOptions, SnapshotRung};
use codebox_local::{DENO_KERNEL, LocalBox};
use futures::StreamExt;

/// A started box keeping its snapshots in `state`.
async fn saving_box(state: &std::path::Path) -> LocalBox {
    let lb = crate::builder().with_state_dir(state).build().expect("builder");
    lb.start().await.expect("start");
    assert!(lb.capabilities().pause);
    lb
}

const SETUP: &str = r#"
import json, math as m, os, socket
from collections import OrderedDict
x = [1, 2, {"k": "v"}]
double = lambda a: a * 2
class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y
p = Point(3, 4)
od = OrderedDict(a=1)
handle = open("notes.txt", "w")
sock = socket.socket()
gen = (i for i in range(3))
os.makedirs(".codebox/site-packages/mypkg", exist_ok=True)
open(".codebox/site-packages/mypkg/__init__.py", "w").write("VALUE = 7\n")
"#;

#[tokio::test]
async fn a_paused_box_comes_back_with_its_files_variables_packages_and_history() {
    let state = tempfile::tempdir().unwrap();
    let lb = saving_box(state.path()).await;
    let id = lb.id().to_owned();
    let setup = lb.exec(SETUP).await.unwrap();
    assert!(setup.error().is_none(), "{setup:?}");
    let blob: Vec<u8> = (0..=255u8).cycle().take(1 << 20).collect();
    lb.upload_bytes("data/blob.bin", blob.clone()).await.unwrap();
    let workdir = lb.working_dir().await.unwrap();

    let report = lb.pause().await.unwrap();
    assert_eq!(report.box_id, id);
    assert_eq!(report.rung, SnapshotRung::Namespace, "{report:?}");
    let lost: Vec<&str> = report.unrestored.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(lost, ["handle", "sock", "gen"], "{report:?}");
    assert_eq!(report.unrestored[0].reason, "an open file");
    assert_eq!(report.unrestored[1].reason, "a socket");
    assert!(report.files >= 3 && report.bytes_on_disk > 1 << 20, "{report:?}");
    let default = &report.contexts[0];
    for name in ["x", "double", "Point", "p", "od"] {
        assert!(default.variables.iter().any(|v| v == name), "{name} not saved: {default:?}");
    }
    assert!(default.imports.contains(&"m=math".to_owned()), "{default:?}");
    assert!(!workdir.exists(), "a paused box keeps its working directory");
    assert!(lb.exec("1").await.is_err(), "a paused box runs code");

    let (back, resumed) = LocalBox::resume(state.path()).await.unwrap();
    assert_eq!(back.id(), id);
    assert_eq!(resumed.rung, SnapshotRung::Namespace);
    let lost: Vec<&str> = resumed.unrestored.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(lost, ["handle", "sock", "gen"], "{resumed:?}");
    assert!(resumed.files >= 3);

    // The first execution says what did not come back, by name; the next ones do not.
    let first: Vec<ExecEvent> = back
        .run_stream("print(x[2]['k'], double(21), p.x + p.y, m.floor(2.5), json.dumps(od))", RunOptions::new())
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    let notice = first.iter().find_map(|e| match e {
        ExecEvent::Display { data, .. } => data.get(RESUME_NOTICE_MIME).cloned(),
        _ => None,
    });
    let notice = notice.expect("no notice in the first execution");
    assert_eq!(notice[0]["name"], "handle", "{notice}");
    let out: String = first
        .iter()
        .filter_map(|e| if let ExecEvent::Stdout { text } = e { Some(text.as_str()) } else { None })
        .collect();
    assert_eq!(out, "v 42 7 2 {\"a\": 1}\n");
    let second = back.exec("import mypkg; print(mypkg.VALUE)").await.unwrap();
    assert!(!second.events.iter().any(|e| matches!(e, ExecEvent::Display { .. })), "{second:?}");
    assert_eq!(second.stdout(), "7\n", "{second:?}");
    assert_eq!(back.download_bytes("data/blob.bin").await.unwrap(), blob);
    assert!(back.exec("handle").await.unwrap().error().is_some(), "an open file came back");
    let history = back.history(10).await.unwrap();
    assert_eq!(history.len(), 4, "{history:?}");
    assert!(history[3].code_head.starts_with("\nimport json"), "{history:?}");
    back.stop().await.unwrap();
}

#[tokio::test]
async fn a_save_keeps_the_box_running_and_a_later_save_replaces_it() {
    let state = tempfile::tempdir().unwrap();
    let lb = saving_box(state.path()).await;
    lb.exec("n = 1").await.unwrap();
    lb.save().await.unwrap();
    lb.exec("n = 2").await.unwrap();
    assert_eq!(lb.exec("print(n)").await.unwrap().stdout(), "2\n");
    let report = lb.save().await.unwrap();
    assert!(report.unrestored.is_empty(), "{report:?}");
    lb.stop().await.unwrap();
    let snapshots = std::fs::read_dir(state.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("snap-"))
        .count();
    assert_eq!(snapshots, 1);
    let (back, _) = LocalBox::resume(state.path()).await.unwrap();
    assert_eq!(back.exec("print(n)").await.unwrap().stdout(), "2\n");
    back.stop().await.unwrap();
}

#[tokio::test]
async fn a_damaged_snapshot_is_refused_naming_the_box_and_its_files_stay_reachable() {
    let state = tempfile::tempdir().unwrap();
    let lb = saving_box(state.path()).await;
    let id = lb.id().to_owned();
    lb.upload_bytes("keep.txt", b"precious".to_vec()).await.unwrap();
    lb.exec("y = 5").await.unwrap();
    lb.pause().await.unwrap();
    let snap = std::fs::read_dir(state.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("snap-"))
        .unwrap();
    let pickle = snap.join("files/.codebox/pause/ns0.pkl");
    let mut bytes = std::fs::read(&pickle).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&pickle, &bytes).unwrap();

    let err = LocalBox::resume(state.path()).await.unwrap_err();
    let message = err.to_string();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{message}");
    assert!(message.contains(&id) && message.contains("damaged"), "{message}");
    assert!(message.contains("ns0.pkl"), "{message}");
    assert!(message.contains(&snap.join("files").display().to_string()), "{message}");
    assert_eq!(std::fs::read(snap.join("files/keep.txt")).unwrap(), b"precious");

    // Cut short, the manifest is refused too, still naming the box.
    let manifest = snap.join("manifest.json");
    let len = std::fs::metadata(&manifest).unwrap().len();
    std::fs::File::options().write(true).open(&manifest).unwrap().set_len(len / 2).unwrap();
    let message = LocalBox::resume(state.path()).await.unwrap_err().to_string();
    assert!(message.contains(&id) && message.contains("manifest"), "{message}");
}

#[tokio::test]
async fn pausing_without_a_state_dir_or_resuming_from_an_empty_one_says_why() {
    let lb = crate::started().await;
    assert!(!lb.capabilities().pause);
    let err = lb.pause().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("with_state_dir"), "{err}");
    lb.stop().await.unwrap();
    let empty = tempfile::tempdir().unwrap();
    let err = LocalBox::resume(empty.path()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

#[tokio::test]
async fn pausing_a_busy_box_waits_then_interrupts_and_says_so() {
    let state = tempfile::tempdir().unwrap();
    let lb = crate::builder().with_state_dir(state.path()).with_pause_wait(Duration::from_millis(300)).build().unwrap();
    lb.start().await.unwrap();
    lb.exec("kept = 'yes'").await.unwrap();
    let busy = lb.run_stream("import time\ntime.sleep(60)", RunOptions::new()).await.unwrap();
    let collecting = tokio::spawn(busy.collect::<Vec<_>>());
    let report = lb.pause().await.unwrap();
    assert!(report.interrupted, "{report:?}");
    assert!(report.contexts[0].variables.contains(&"kept".to_owned()), "{report:?}");
    collecting.await.unwrap();
    let (back, _) = LocalBox::resume(state.path()).await.unwrap();
    assert_eq!(back.exec("print(kept)").await.unwrap().stdout(), "yes\n");
    back.stop().await.unwrap();
}

#[tokio::test]
async fn a_javascript_box_keeps_its_files_only_and_says_so() {
    let state = tempfile::tempdir().unwrap();
    let lb = crate::builder().with_kernel(DENO_KERNEL).with_state_dir(state.path()).build().unwrap();
    lb.start().await.unwrap();
    lb.exec("globalThis.v = 3").await.unwrap();
    lb.upload_bytes("page.js", b"export const a = 1;".to_vec()).await.unwrap();
    let report = lb.pause().await.unwrap();
    assert_eq!(report.rung, SnapshotRung::Files, "{report:?}");
    let note = report.contexts[0].note.clone().unwrap_or_default();
    assert!(note.contains("files only"), "{note}");
    let (back, resumed) = LocalBox::resume(state.path()).await.unwrap();
    assert_eq!(resumed.rung, SnapshotRung::Files);
    assert_eq!(back.download_bytes("page.js").await.unwrap(), &b"export const a = 1;"[..]);
    back.stop().await.unwrap();
}

#[tokio::test]
async fn a_confined_box_pauses_giving_back_its_uid_and_cgroup_and_resumes_under_a_uid_again() {
    use codebox_local::{Isolation, SandboxPolicy, UidAllocator};
    // One uid: the resume can only start if the pause gave it back.
    let uids = UidAllocator::new(346_000..346_001).unwrap();
    let policy = SandboxPolicy::default()
        .with_isolation(Isolation::Bubblewrap)
        .with_require_isolation(true)
        .with_session_uids(Some(uids.clone()))
        .with_cgroups(true);
    let state = tempfile::tempdir().unwrap();
    let build = || crate::builder().with_sandbox(policy.clone()).with_state_dir(state.path());
    let lb = build().build().unwrap();
    lb.start().await.unwrap();
    let uid = lb.session_uid().await.expect("a uid of its own");
    let cgroups = lb.cgroup_paths().await;
    assert!(!cgroups.is_empty());
    lb.exec("import os\nrows = [i * i for i in range(1000)]\nopen('made.txt', 'w').write('by the box')").await.unwrap();
    let report = lb.pause().await.unwrap();
    assert_eq!(report.rung, SnapshotRung::Namespace, "{report:?}");
    assert!(cgroups.iter().all(|c| !c.exists()), "a paused box keeps its cgroup");
    assert!(codebox_sandbox::processes_in_range(&(346_000..346_001)).is_empty(), "a paused box's uid runs processes");

    let (back, _) = build().resume().await.unwrap();
    assert_eq!(back.session_uid().await, Some(uid));
    let ex = back.exec("print(sum(rows), open('made.txt').read(), os.stat('made.txt').st_uid == os.getuid())").await;
    assert_eq!(ex.unwrap().stdout(), "332833500 by the box True\n");
    back.stop().await.unwrap();
}

#[tokio::test]
async fn the_lean_kernel_pauses_and_resumes_its_variables_too() {
    let state = tempfile::tempdir().unwrap();
    let build = || crate::builder().with_kernel(codebox_local::LEAN_KERNEL).with_state_dir(state.path());
    let lb = build().build().unwrap();
    lb.start().await.unwrap();
    lb.exec("import math\nsquare = lambda v: v * v\nlimit = math.floor(7.9)").await.unwrap();
    let report = lb.pause().await.unwrap();
    assert_eq!(report.rung, SnapshotRung::Namespace, "{report:?}");
    let (back, resumed) = build().resume().await.unwrap();
    assert!(resumed.unrestored.is_empty(), "{resumed:?}");
    assert_eq!(back.exec("print(square(limit), math.pi > 3)").await.unwrap().stdout(), "49 True\n");
    back.stop().await.unwrap();
}

#[tokio::test]
async fn every_code_context_comes_back_under_its_name_with_its_own_variables() {
    let state = tempfile::tempdir().unwrap();
    let lb = saving_box(state.path()).await;
    lb.make_dir("sub").await.unwrap();
    let made = lb.create_context(None, Some("sub")).await.unwrap();
    let in_context = || RunOptions::new().with_context(made.id.clone());
    lb.exec("who = 'default'").await.unwrap();
    lb.run("import os\nwho = 'context'\nhandle = open('here.txt', 'w')", in_context()).await.unwrap();
    let report = lb.pause().await.unwrap();
    assert_eq!(report.contexts.len(), 2, "{report:?}");
    assert_eq!(report.contexts[1].context, made.id);
    assert_eq!(report.unrestored.len(), 1, "{report:?}");
    assert_eq!(report.unrestored[0].context, made.id);

    let (back, resumed) = LocalBox::resume(state.path()).await.unwrap();
    assert_eq!(resumed.contexts.len(), 2, "{resumed:?}");
    let ids: Vec<String> = back.contexts().await.unwrap().into_iter().map(|c| c.id).collect();
    assert_eq!(ids, ["default".to_owned(), made.id.clone()]);
    let there = back.run("print(who, os.path.basename(os.getcwd()))", in_context()).await.unwrap();
    assert_eq!(there.stdout(), "context sub\n", "{there:?}");
    assert_eq!(back.exec("print(who)").await.unwrap().stdout(), "default\n");
    back.stop().await.unwrap();
}

#[tokio::test]
async fn a_factory_box_with_a_state_dir_pauses_and_the_factory_resumes_it_as_asked() {
    use codebox_core::{BoxFactory, BoxRequest};
    let root = tempfile::tempdir().unwrap();
    let factory = codebox_local::LocalFactory::builder(crate::builder())
        .with_session_root(root.path().join("sessions"))
        .build()
        .unwrap();
    let state = root.path().join("paused/s1");
    let request = BoxRequest::new().with_template("python-minimal").with_env("WHO", "me").with_state_dir(&state);
    let made = factory.create(&request).await.unwrap();
    made.start().await.unwrap();
    assert!(made.capabilities().pause);
    made.exec("import os\nwho = os.environ['WHO']").await.unwrap();
    made.pause().await.unwrap();
    let (back, report) = factory.resume(&request).await.unwrap();
    assert_eq!(report.box_id, made.id());
    assert_eq!(back.exec("print(who, os.environ['WHO'])").await.unwrap().stdout(), "me me\n");
    back.stop().await.unwrap();
    let err = factory.resume(&BoxRequest::new()).await.err().unwrap();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
}

/// The first of criu's own reasons in a failed `criu check`'s output (module probes left out).
fn first_criu_reason(output: &str) -> String {
    output
        .lines()
        .filter_map(|l| l.split_once("): ").map(|(_, message)| message.trim().to_owned()))
        .find(|m| !m.starts_with("exited, status="))
        .unwrap_or_default()
}

/// The ladder's top rung, a CRIU checkpoint, is not taken; the pause says why by name: not
/// installed, or criu's own reason when it cannot work on this kernel (criu 3.17.1 on Linux
/// 6.18: its vDSO layout), or why a confined kernel is not checkpointed where it could.
#[tokio::test]
async fn a_pause_says_by_name_why_the_kernel_was_not_checkpointed_with_criu() {
    let state = tempfile::tempdir().unwrap();
    let lb = saving_box(state.path()).await;
    assert!(lb.exec("x = 1").await.unwrap().error().is_none());
    let report = lb.pause().await.unwrap();
    assert_eq!(report.rung, SnapshotRung::Namespace, "{report:?}");
    let note = report.contexts[0].note.clone().unwrap_or_default();
    assert!(note.contains("the namespace was saved with a pickler"), "{note}");
    match std::process::Command::new("criu").arg("check").output() {
        Err(e) => {
            assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
            assert!(note.starts_with("criu is not installed"), "{note}");
        }
        Ok(out) if out.status.success() => assert!(note.contains("`criu check` passes"), "{note}"),
        Ok(out) => {
            let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            let reason = first_criu_reason(&output);
            assert!(!reason.is_empty(), "{output}");
            assert!(note.contains("cannot checkpoint any process on this kernel"), "{note}");
            assert!(note.contains(&reason), "{reason} not in {note}");
        }
    }
}

//! JavaScript and TypeScript boxes: the built-in `deno` kernel, with Deno provisioned from
//! the npm registry the first time it is needed (or `CODEBOX_DENO`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use codebox_core::conformance::{ConformanceOptions, Dialect, run_all};
use codebox_core::{CodeBox, CodeBoxExt, ErrorKind, Outcome, RunOptions};
use codebox_local::{
    DENO_KERNEL, DENO_VERSION, Isolation, IsolationLevel, LocalBox, ProvisionEvent, SandboxPolicy, UidAllocator,
    provision_deno_at,
};

/// A deno box, not started.
fn deno_box() -> LocalBox {
    crate::builder().with_kernel(DENO_KERNEL).build().expect("builder")
}

#[tokio::test]
async fn a_cold_deno_box_starts_and_adds() {
    let lb = deno_box();
    lb.start().await.expect("start");
    let ex = lb.exec("1+1").await.unwrap();
    assert_eq!(ex.text(), "2", "{ex:?}");
    let status = lb.status().await.unwrap();
    assert_eq!(status.kernel.as_deref(), Some(DENO_KERNEL));
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn a_deno_box_says_it_runs_javascript_and_typescript_and_installs_nothing() {
    let lb = deno_box();
    let capabilities = lb.capabilities();
    assert_eq!(capabilities.languages, ["bash", "javascript", "typescript"]);
    assert!(!capabilities.install);
    lb.start().await.unwrap();
    // Code in either language goes to the kernel, Python is refused by name.
    let js = lb.run("[1, 2, 3].map((x) => x * 2).join(',')", RunOptions::new().with_language("javascript")).await;
    let js = js.unwrap();
    assert_eq!(js.text(), r#""2,4,6""#, "{js:?}");
    let ts = lb.run("const n: number = 41; n + 1", RunOptions::new().with_language("typescript")).await;
    let ts = ts.unwrap();
    assert_eq!(ts.text(), "42", "{ts:?}");
    let py = lb.run("print(1)", RunOptions::new().with_language("python")).await.unwrap_err();
    assert_eq!(py.kind(), ErrorKind::InvalidInput, "{py}");
    let install = lb.install(&["left-pad".to_owned()]).await.unwrap_err();
    assert_eq!(install.kind(), ErrorKind::Unsupported, "{install}");
    assert!(install.to_string().contains("does not run Python"), "{install}");
    assert!(!lb.capabilities().packages);
    let packages = lb.packages().await.unwrap_err();
    assert_eq!(packages.kind(), ErrorKind::Unsupported, "{packages}");
    assert!(packages.to_string().contains("does not run Python"), "{packages}");
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn errors_are_data_and_rich_output_has_its_mime_types() {
    let lb = deno_box();
    lb.start().await.unwrap();
    let ex = lb.exec("throw new TypeError('boom')").await.unwrap();
    assert_eq!(ex.outcome, Outcome::Error);
    let error = ex.error().expect("an error event");
    assert_eq!((error.name.as_str(), error.value.as_str()), ("TypeError", "boom"));
    assert!(error.traceback.iter().any(|l| l.contains("boom")), "{:?}", error.traceback);
    let ex = lb.exec("await Deno.jupyter.display({ 'text/html': '<b>hi</b>' }, { raw: true })").await.unwrap();
    let html: Vec<_> = ex.displays().iter().filter_map(|d| d.text_of("text/html")).collect();
    assert_eq!(html, ["<b>hi</b>"], "{ex:?}");
    let ex = lb.exec("Deno.jupyter.html`<i>${'tag'}</i>`").await.unwrap();
    assert_eq!(ex.result().and_then(|r| r.text_of("text/html")).as_deref(), Some("<i>tag</i>"), "{ex:?}");
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn a_timed_out_loop_is_interrupted_and_the_state_stays() {
    let lb = deno_box();
    lb.start().await.unwrap();
    lb.exec("globalThis.kept = 'still here'").await.unwrap();
    let ex = lb.run("while (true) {}", RunOptions::new().with_timeout(Duration::from_secs(1))).await.unwrap();
    assert_eq!(ex.outcome, Outcome::TimedOut, "{ex:?}");
    let ex = lb.exec("kept").await.unwrap();
    assert_eq!(ex.text(), r#""still here""#, "the interrupt kept the kernel: {ex:?}");
    assert_eq!(lb.status().await.unwrap().restarts, 0);
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn a_kernel_that_exits_is_seen_dead_and_restarted() {
    let lb = deno_box();
    lb.start().await.unwrap();
    let err = lb.exec("Deno.exit(3)").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KernelDied, "{err}");
    let ex = lb.exec("6 * 7").await.unwrap();
    assert_eq!(ex.text(), "42");
    assert_eq!(lb.status().await.unwrap().restarts, 1);
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn the_first_provisioning_reports_each_step_and_concurrent_first_uses_download_once() {
    // A home of its own: this build is a first one, whatever the machine already has.
    let home = tempfile::tempdir().unwrap();
    let version_dir = home.path().join("deno").join(DENO_VERSION);
    let python = std::path::Path::new("/usr/bin/python3");
    // Two first uses at once, each hearing its own events.
    let builds: Vec<_> = (0..2)
        .map(|_| {
            let heard = Arc::new(Mutex::new(Vec::new()));
            let sink = Arc::clone(&heard);
            let hook: codebox_local::ProgressFn =
                Arc::new(move |e: &ProvisionEvent| sink.lock().unwrap().push(e.clone()));
            let target = version_dir.clone();
            (heard, tokio::task::spawn_blocking(move || provision_deno_at(&target, python, Some(&hook))))
        })
        .collect();
    let mut heard = Vec::new();
    for (events, build) in builds {
        build.await.unwrap().unwrap();
        heard.push(events.lock().unwrap().clone());
    }
    let started = |events: &Vec<ProvisionEvent>| events.iter().any(|e| matches!(e, ProvisionEvent::Started { .. }));
    assert_eq!(heard.iter().filter(|events| started(events)).count(), 1, "one build, one download: {heard:?}");
    let events = heard.into_iter().find(started).unwrap();
    assert!(
        matches!(events.first(), Some(ProvisionEvent::Started { dir, total: 3 }) if *dir == version_dir),
        "{events:?}"
    );
    let finished: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            ProvisionEvent::StepFinished { step, .. } => Some(step.name.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(finished, ["download", "verify", "unpack"]);
    assert!(events.iter().any(|e| matches!(e, ProvisionEvent::Output { line, .. } if line.contains("% of "))));
    assert!(matches!(events.last(), Some(ProvisionEvent::Finished { .. })), "{events:?}");
    assert_eq!(
        events.last().unwrap().to_string().split(" is ready").next().unwrap(),
        format!("Deno {}", version_dir.display())
    );
    let version = std::process::Command::new(version_dir.join("deno")).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).contains(DENO_VERSION));
    // A second call finds it there and reports nothing.
    let quiet = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&quiet);
    let hook: codebox_local::ProgressFn = Arc::new(move |e: &ProvisionEvent| sink.lock().unwrap().push(e.clone()));
    provision_deno_at(&version_dir, python, Some(&hook)).unwrap();
    assert!(quiet.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_deno_box_passes_the_language_neutral_conformance_suite_in_javascript() {
    let lb = deno_box();
    let options = ConformanceOptions::default().with_dialect(Dialect::javascript());
    let report = run_all(&lb, &options).await;
    lb.stop().await.unwrap();
    report.assert_all_passed();
    assert!(!report.checks.iter().any(|c| c.name == "matplotlib_png"), "no Python-only check ran");
}

#[tokio::test]
async fn a_deno_box_passes_the_language_neutral_conformance_suite_in_typescript() {
    let lb = deno_box();
    let options = ConformanceOptions::default().with_dialect(Dialect::typescript());
    let report = run_all(&lb, &options).await;
    lb.stop().await.unwrap();
    report.assert_all_passed();
}

#[tokio::test]
async fn without_isolation_the_kernel_speaks_tcp_directly() {
    let policy = SandboxPolicy::default().with_isolation(Isolation::None);
    let lb = crate::builder().with_kernel(DENO_KERNEL).with_sandbox(policy).build().unwrap();
    lb.start().await.unwrap();
    assert_eq!(lb.isolation().await, Some(IsolationLevel::None));
    let ex = lb.exec("console.log('over tcp'); 40 + 2").await.unwrap();
    assert_eq!(ex.stdout(), "over tcp\n", "{ex:?}");
    assert_eq!(ex.result().and_then(|r| r.plain()).as_deref(), Some("42"), "{ex:?}");
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn under_landlock_the_deno_kernel_is_refused_with_the_reason() {
    let policy = SandboxPolicy::default().with_isolation(Isolation::Landlock).with_require_isolation(true);
    let lb = crate::builder().with_kernel(DENO_KERNEL).with_sandbox(policy).build().unwrap();
    let err = lb.start().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KernelStart, "{err}");
    assert!(err.to_string().contains("cannot run under Landlock"), "{err}");
}

#[tokio::test]
async fn a_deno_box_runs_under_a_session_uid_of_its_own() {
    if !codebox_core::conformance::requires("root (session uids)", codebox_local::running_as_root()) {
        return;
    }
    let uids = UidAllocator::new(310_500..310_502).unwrap();
    let policy = SandboxPolicy::default().with_session_uids(Some(uids));
    let lb = crate::builder().with_kernel(DENO_KERNEL).with_sandbox(policy).build().unwrap();
    lb.start().await.unwrap();
    let uid = lb.session_uid().await.expect("a uid of its own");
    let ex = lb.exec("Deno.writeTextFileSync('mine.txt', 'x'); Deno.uid()").await.unwrap();
    assert_eq!(ex.text(), uid.to_string(), "{ex:?}");
    // Deno's cache is in the box's HOME, which the session uid owns.
    let ex = lb.exec("Deno.env.get('HOME')").await.unwrap();
    assert!(ex.text().contains(".codebox/home"), "{ex:?}");
    lb.stop().await.unwrap();
}

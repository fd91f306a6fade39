//! Templates on a LocalBox: a built-in by name, a template of one's own, and a template
//! environment built from PyPI once (with progress, under a lock), and a failed build that
//! says why, leaves nothing behind and is tried again.

use std::sync::{Arc, Mutex};

use codebox_core::{CodeBox, CodeBoxExt, ErrorKind, ResourceLimits};
use codebox_local::{LocalBox, ProvisionEvent, PythonProfile, Template, template_python_dir};

use crate::builder;

#[tokio::test]
async fn the_bash_template_runs_bash_when_no_language_is_named() {
    let lb = builder().with_template("bash").build().unwrap();
    assert_eq!(lb.template(), Some("bash"));
    lb.start().await.unwrap();
    let out = lb.exec("echo \"from $0\"; x=4; echo $((x * 10 + 2))").await.unwrap();
    assert_eq!(out.stdout(), "from bash\n42\n");
    // Python is still there when asked for by name.
    let py = lb.run("print(6 * 7)", codebox_core::RunOptions::new().with_language("python")).await.unwrap();
    assert_eq!(py.stdout(), "42\n");
    lb.stop().await.unwrap();
}

#[test]
fn an_unknown_template_is_refused_naming_those_there_are() {
    let err = LocalBox::builder().with_template("cobol").build().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let msg = err.to_string();
    assert!(
        msg.contains("\"cobol\"")
            && msg.contains("python, python-ipykernel, python-minimal, bash, javascript, typescript"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_template_of_ones_own_sets_the_environment_under_the_builders_later_settings() {
    let template = Template::new("greeter", "python3", "python")
        .with_env("GREETING", "hello")
        .with_env("OVERRIDDEN", "by the template")
        .with_limits(ResourceLimits::new().with_processes(64));
    let lb = builder().with_template_def(template).with_env("OVERRIDDEN", "by the builder").build().unwrap();
    lb.start().await.unwrap();
    let out = lb.exec("import os; print(os.environ['GREETING'], os.environ['OVERRIDDEN'])").await.unwrap();
    assert_eq!(out.stdout(), "hello by the builder\n");
    lb.stop().await.unwrap();
}

/// Events heard by a progress hook.
fn recorder() -> (Arc<Mutex<Vec<ProvisionEvent>>>, impl Fn(&ProvisionEvent) + Send + Sync + 'static) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    (events, move |e: &ProvisionEvent| sink.lock().unwrap().push(e.clone()))
}

fn builds(events: &Mutex<Vec<ProvisionEvent>>) -> usize {
    events.lock().unwrap().iter().filter(|e| matches!(e, ProvisionEvent::Started { .. })).count()
}

#[tokio::test]
async fn a_template_with_packages_gets_an_environment_built_once_and_shared() {
    // tomli-w: a tiny pure-Python package that nothing of the default environment pulls in.
    let template = Template::new("toml-writer", "python3", "python")
        .with_profile(PythonProfile::Minimal)
        .with_packages(["tomli-w"]);
    let dir = template_python_dir(&template).expect("a template with packages has its own environment");
    // Built afresh here, so that the build (and that it happens once) is seen.
    let _ = std::fs::remove_dir_all(&dir);

    let (first_events, first_hook) = recorder();
    let (second_events, second_hook) = recorder();
    let first = LocalBox::builder().with_template_def(template.clone()).with_progress(first_hook).build().unwrap();
    let second = LocalBox::builder().with_template_def(template.clone()).with_progress(second_hook).build().unwrap();
    // Two first uses at once: one builds, the other waits for it.
    let (a, b) = tokio::join!(first.start(), second.start());
    a.unwrap();
    b.unwrap();
    assert_eq!(builds(&first_events) + builds(&second_events), 1, "built exactly once");
    let heard: Vec<ProvisionEvent> =
        first_events.lock().unwrap().iter().chain(second_events.lock().unwrap().iter()).cloned().collect();
    assert!(
        heard.iter().any(|e| matches!(e, ProvisionEvent::StepStarted { step, .. } if step.name == "tomli-w")),
        "the package's step is reported: {heard:?}"
    );

    for lb in [&first, &second] {
        let python = lb.python().await.unwrap();
        assert!(python.starts_with(&dir), "{} is the template's environment {}", python.display(), dir.display());
        let out = lb.exec("import tomli_w; print(tomli_w.dumps({'a': 1}), end='')").await.unwrap();
        assert_eq!(out.stdout(), "a = 1\n");
    }
    // Readable by every user: boxes under session uids share it.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o755, 0o755);

    // Once built, later boxes use it as it is.
    let (events, hook) = recorder();
    let third = LocalBox::builder().with_template_def(template).with_progress(hook).build().unwrap();
    third.start().await.unwrap();
    assert!(events.lock().unwrap().is_empty(), "nothing built or waited for: {:?}", events.lock().unwrap());
    for lb in [first, second, third] {
        lb.stop().await.unwrap();
    }
}

#[tokio::test]
async fn a_failed_build_says_why_leaves_nothing_and_is_tried_again() {
    let template = Template::new("broken", "python3", "python")
        .with_profile(PythonProfile::Minimal)
        .with_packages(["codebox-definitely-missing-package-7f3a9c"]);
    let dir = template_python_dir(&template).unwrap();
    for attempt in 1..=2 {
        let (events, hook) = recorder();
        let lb = LocalBox::builder().with_template_def(template.clone()).with_progress(hook).build().unwrap();
        let err = lb.start().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::KernelStart, "{err}");
        let msg = err.to_string();
        assert!(msg.contains("building the template environment of"), "attempt {attempt}: {msg}");
        assert!(msg.contains("pip failed"), "attempt {attempt}: {msg}");
        assert!(
            msg.contains("No matching distribution found for codebox-definitely-missing-package-7f3a9c"),
            "pip's last lines say why: {msg}"
        );
        assert_eq!(builds(&events), 1, "attempt {attempt} builds afresh");
        assert!(!dir.exists(), "attempt {attempt} leaves nothing half-built at {}", dir.display());
    }
}

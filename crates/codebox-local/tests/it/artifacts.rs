//! A LocalBox's artifacts: what kernel and bash executions created or changed, images saved
//! on request, and the box's own state left out.

use codebox_core::{ArtifactChange, BoxFactory, CodeBox, CodeBoxExt, Execution, RunOptions};

use crate::started;

fn listed(ex: &Execution) -> Vec<(&str, ArtifactChange)> {
    ex.artifacts().iter().map(|a| (a.path.as_str(), a.change)).collect()
}

#[tokio::test]
async fn kernel_and_bash_executions_list_what_they_created_or_changed() {
    let lb = started().await;
    assert!(lb.capabilities().artifacts);
    let ex = lb
        .exec("import os\nos.makedirs('out', exist_ok=True)\nopen('out/a.csv', 'w').write('1,2')\nopen('b.txt', 'w').write('b')")
        .await
        .unwrap();
    assert_eq!(listed(&ex), [("b.txt", ArtifactChange::Created), ("out/a.csv", ArtifactChange::Created)]);
    assert_eq!(ex.artifacts()[1].size, 3);
    assert!(ex.artifacts()[1].modified.is_some());
    assert!(!ex.artifacts_truncated);
    // Right after the writes (in the same tick of the clock file times come from, often):
    // what the last execution listed is not listed again.
    let ex = lb.exec("x = 1").await.unwrap();
    assert!(ex.artifacts().is_empty(), "{:?}", ex.artifacts());
    let bash = RunOptions::new().with_language("bash");
    let ex = lb.run("echo more >> b.txt; mkdir -p .codebox/x; echo s > .codebox/x/state", bash).await.unwrap();
    assert_eq!(listed(&ex), [("b.txt", ArtifactChange::Changed)], "the box's own state is left out");
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn displayed_images_are_saved_only_on_request() {
    let lb = started().await;
    // A 1x1 PNG, displayed as IPython would show a figure.
    let show = "import base64\nfrom IPython.display import Image, display\n\
                png = base64.b64decode('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==')\n\
                display(Image(data=png))\ndisplay(Image(data=png))";
    let ex = lb.exec(show).await.unwrap();
    assert!(ex.artifacts().is_empty(), "{:?}", ex.artifacts());
    let ex = lb.run(show, RunOptions::new().with_save_images(true)).await.unwrap();
    let count = ex.execution_count.unwrap();
    let names = [format!("images/{count}-1.png"), format!("images/{count}-2.png")];
    assert_eq!(ex.artifacts().iter().map(|a| a.path.as_str()).collect::<Vec<_>>(), names);
    assert!(ex.artifacts().iter().all(|a| a.is_created()));
    let saved = lb.download_bytes(&names[0]).await.unwrap();
    assert!(saved.starts_with(b"\x89PNG\r\n\x1a\n"));
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn a_session_box_under_its_own_uid_on_a_sized_image_lists_its_artifacts() {
    if !codebox_core::conformance::requires(
        "root (session uids, a sized working directory)",
        codebox_local::running_as_root(),
    ) {
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let factory = codebox_local::LocalFactory::builder(crate::builder())
        .with_session_root(base.path().join("sessions"))
        .with_session_uids(Some(344_000..344_004))
        .build()
        .unwrap();
    let request =
        codebox_core::BoxRequest::new().with_limits(codebox_core::ResourceLimits::new().with_disk_bytes(64 << 20));
    let lb = factory.create(&request).await.unwrap();
    lb.start().await.unwrap();
    let ex =
        lb.exec("import os\nos.makedirs('a/b')\nopen('a/b/c.txt', 'w').write('c')\nprint(os.getuid())").await.unwrap();
    assert!(ex.stdout().trim().parse::<u32>().is_ok_and(|uid| (344_000..344_004).contains(&uid)), "{}", ex.stdout());
    assert_eq!(listed(&ex), [("a/b/c.txt", ArtifactChange::Created)]);
    let ex = lb.exec("open('a/b/c.txt', 'a').write('d')").await.unwrap();
    assert_eq!(listed(&ex), [("a/b/c.txt", ArtifactChange::Changed)]);
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn a_tree_too_large_to_watch_is_scanned_instead() {
    let dir = tempfile::tempdir().unwrap();
    // More directories than a box watches: every execution is scanned, within its bounds.
    for i in 0..=codebox_local::MAX_WATCHED_DIRS {
        std::fs::create_dir(dir.path().join(format!("d{i}"))).unwrap();
    }
    let lb = crate::builder().with_working_dir(dir.path()).build().unwrap();
    lb.start().await.unwrap();
    let ex = lb.exec("open('made.txt', 'w').write('m')").await.unwrap();
    assert_eq!(listed(&ex), [("made.txt", ArtifactChange::Created)]);
    assert!(ex.artifacts_truncated, "a scan stops at its directory bound and says so");
    let ex = lb.exec("open('made.txt', 'a').write('n')").await.unwrap();
    assert_eq!(listed(&ex), [("made.txt", ArtifactChange::Changed)]);
    lb.stop().await.unwrap();
}

//! Tests of finding artifacts: watched executions, the fallback scan, saved images, links.

use super::*;

fn since_now() -> SystemTime {
    // Let the coarse clock tick past whatever the test wrote before.
    std::thread::sleep(Duration::from_millis(20));
    coarse_now()
}

fn paths(found: &Found) -> Vec<(&str, ArtifactChange)> {
    found.artifacts.iter().map(|a| (a.path.as_str(), a.change)).collect()
}

/// One execution's tracking around `work`, as a box runs it.
async fn tracked(root: &Arc<Root>, files: &SharedFiles, work: impl FnOnce()) -> Found {
    let scan = ArtifactScan::starting(root.clone(), false, files.clone()).await;
    work();
    scan.finish(Some(1)).await
}

fn watching(files: &SharedFiles) -> bool {
    matches!(lock(files).watch, Watch::Watching(_))
}

#[tokio::test]
async fn watched_executions_list_what_they_touched_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    std::fs::create_dir_all(d.join("old/deeper")).unwrap();
    std::fs::write(d.join("old/deeper/kept.txt"), "k").unwrap();
    std::fs::create_dir_all(d.join(".codebox/x")).unwrap();
    let root = Arc::new(Root::open(&d, None).unwrap());
    let files = SharedFiles::default();
    let found = tracked(&root, &files, || {
        std::fs::write(d.join("old/deeper/kept.txt"), "changed").unwrap();
        std::fs::create_dir_all(d.join("new/inner")).unwrap();
        std::fs::write(d.join("new/inner/made.csv"), "1,2").unwrap();
        std::fs::write(d.join(".codebox/x/state"), "s").unwrap();
    })
    .await;
    assert!(watching(&files), "{:?}", lock(&files).watch);
    assert_eq!(
        paths(&found),
        [("new/inner/made.csv", ArtifactChange::Created), ("old/deeper/kept.txt", ArtifactChange::Changed)]
    );
    assert_eq!(tracked(&root, &files, || {}).await, Found::default(), "nothing written, nothing listed");
    // The directory made in the last execution is watched now.
    let found = tracked(&root, &files, || std::fs::write(d.join("new/inner/made.csv"), "3").unwrap()).await;
    assert_eq!(paths(&found), [("new/inner/made.csv", ArtifactChange::Changed)]);
    // Made between executions (an upload, say): watched from the next execution on.
    std::fs::create_dir(d.join("between")).unwrap();
    let found = tracked(&root, &files, || std::fs::write(d.join("between/b.txt"), "b").unwrap()).await;
    assert_eq!(paths(&found), [("between/b.txt", ArtifactChange::Created)]);
}

#[tokio::test]
async fn a_moved_directory_is_scanned_then_watched_again() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    std::fs::create_dir(d.join("a")).unwrap();
    let root = Arc::new(Root::open(&d, None).unwrap());
    let files = SharedFiles::default();
    tracked(&root, &files, || {}).await;
    let found = tracked(&root, &files, || {
        std::fs::rename(d.join("a"), d.join("b")).unwrap();
        std::fs::write(d.join("b/x.txt"), "x").unwrap();
    })
    .await;
    assert_eq!(paths(&found), [("b/x.txt", ArtifactChange::Created)]);
    assert!(matches!(lock(&files).watch, Watch::Stale), "{:?}", lock(&files).watch);
    let found = tracked(&root, &files, || std::fs::write(d.join("b/y.txt"), "y").unwrap()).await;
    assert_eq!(paths(&found), [("b/y.txt", ArtifactChange::Created)]);
    assert!(watching(&files));
}

#[tokio::test]
async fn watches_never_follow_links_out() {
    let outside = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    std::os::unix::fs::symlink(outside.path(), d.join("out")).unwrap();
    let root = Arc::new(Root::open(&d, None).unwrap());
    let files = SharedFiles::default();
    let found = tracked(&root, &files, || {
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.join("link")).unwrap();
    })
    .await;
    assert!(watching(&files));
    assert_eq!(found, Found::default());
}

#[test]
fn a_scan_lists_created_and_changed_files_only() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("old.txt"), "old").unwrap();
    std::fs::write(dir.path().join("kept.txt"), "kept").unwrap();
    std::fs::create_dir_all(dir.path().join(".codebox/site-packages")).unwrap();
    let root = Root::open(dir.path(), None).unwrap();
    let since = since_now();
    assert_eq!(scan(&root, since, &HashMap::new()).0, Found::default(), "nothing written, nothing listed");
    std::fs::write(dir.path().join("old.txt"), "changed").unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/new.csv"), "1,2").unwrap();
    std::fs::write(dir.path().join(".codebox/site-packages/x.py"), "").unwrap();
    let found = scan(&root, since, &HashMap::new()).0;
    assert_eq!(paths(&found), [("old.txt", ArtifactChange::Changed), ("sub/new.csv", ArtifactChange::Created)]);
    assert_eq!(found.artifacts[1].size, 3);
    assert!(!found.truncated);
}

#[test]
fn what_the_last_scan_listed_is_listed_again_only_when_changed_since() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(dir.path(), None).unwrap();
    let since = since_now();
    std::fs::write(dir.path().join("a.txt"), "a").unwrap();
    let (found, listed) = scan(&root, since, &HashMap::new());
    assert_eq!(paths(&found), [("a.txt", ArtifactChange::Created)]);
    // A next execution that started in the same clock tick: nothing new.
    let (again, _) = scan(&root, since, &listed);
    assert_eq!(again, Found::default());
    // Past the tick, so the rewrite has a ctime of its own on any kernel.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(dir.path().join("a.txt"), "b").unwrap();
    // Its birth time is in the same tick as that start, but it existed before: changed.
    assert_eq!(paths(&scan(&root, since, &listed).0), [("a.txt", ArtifactChange::Changed)]);
}

#[test]
fn setting_the_mtime_back_does_not_hide_a_change() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f.txt");
    std::fs::write(&file, "a").unwrap();
    let root = Root::open(dir.path(), None).unwrap();
    let since = since_now();
    std::fs::write(&file, "b").unwrap();
    std::fs::File::options().write(true).open(&file).unwrap().set_modified(UNIX_EPOCH).unwrap();
    assert_eq!(paths(&scan(&root, since, &HashMap::new()).0), [("f.txt", ArtifactChange::Changed)]);
}

#[test]
fn links_are_never_followed_out() {
    let outside = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).unwrap();
    let root = Root::open(dir.path(), None).unwrap();
    let since = since_now();
    std::fs::write(outside.path().join("secret"), "s").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).unwrap();
    assert_eq!(scan(&root, since, &HashMap::new()).0, Found::default());
}

#[test]
fn a_large_tree_is_cut_at_the_caps_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(dir.path(), None).unwrap();
    let since = since_now();
    for i in 0..=MAX_ARTIFACTS {
        std::fs::write(dir.path().join(format!("f{i}")), "").unwrap();
    }
    let found = scan(&root, since, &HashMap::new()).0;
    assert!(found.truncated);
    assert_eq!(found.artifacts.len(), MAX_ARTIFACTS);
    let other = tempfile::tempdir().unwrap();
    let deep_only = (0..=MAX_SCAN_DEPTH).fold(other.path().to_owned(), |p, i| p.join(format!("d{i}")));
    std::fs::create_dir_all(&deep_only).unwrap();
    std::fs::write(deep_only.join("bottom.txt"), "").unwrap();
    let found = scan(&Root::open(other.path(), None).unwrap(), since, &HashMap::new()).0;
    assert!(found.truncated && found.artifacts.is_empty(), "{found:?}");
}

#[test]
fn saved_images_never_overwrite_a_users_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(IMAGES_DIR)).unwrap();
    std::fs::write(dir.path().join("images/3-1.png"), "mine").unwrap();
    let root = Root::open(dir.path(), None).unwrap();
    let png = Image { mime: MimeBundle::PNG.to_owned(), bytes: b"\x89PNG".to_vec() };
    let svg = Image { mime: MimeBundle::SVG.to_owned(), bytes: b"<svg/>".to_vec() };
    save_images(&root, 3, &[png, svg]);
    assert_eq!(std::fs::read(dir.path().join("images/3-1.png")).unwrap(), b"mine");
    assert_eq!(std::fs::read(dir.path().join("images/3-1-1.png")).unwrap(), b"\x89PNG");
    assert_eq!(std::fs::read(dir.path().join("images/3-2.svg")).unwrap(), b"<svg/>");
}

#[test]
fn images_go_nowhere_when_their_directory_is_a_link() {
    let outside = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join(IMAGES_DIR)).unwrap();
    let root = Root::open(dir.path(), None).unwrap();
    save_images(&root, 1, &[Image { mime: MimeBundle::PNG.to_owned(), bytes: vec![1] }]);
    assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
}

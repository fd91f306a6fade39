//! `LocalFactory`, the host of boxes for a server: it claims and sweeps its session root,
//! keeps its boxes in it, refuses a second host on the same root and caps the sessions at
//! what its uids allow.

use codebox_core::{BoxFactory, CodeBoxExt};
use codebox_local::LocalFactory;

use crate::builder;

#[test]
fn claiming_a_root_sweeps_what_an_earlier_host_left() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("sessions");
    let left = root.join("tmp/codebox-left-by-a-dead-server");
    std::fs::create_dir_all(left.join("deep/er")).unwrap();
    std::fs::write(left.join("deep/er/file"), "x").unwrap();

    let factory = LocalFactory::builder(builder()).with_session_root(&root).build().unwrap();
    assert_eq!(factory.session_root(), Some(root.as_path()));
    assert!(!left.exists(), "the earlier host's directory is swept");
    assert!(root.join("tmp").is_dir(), "the scratch directory is there for the boxes");
}

#[test]
fn a_second_factory_on_the_same_root_is_refused_while_the_first_lives() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("sessions");
    let first = LocalFactory::builder(builder()).with_session_root(&root).build().unwrap();
    let err = LocalFactory::builder(builder()).with_session_root(&root).build().unwrap_err().to_string();
    assert!(err.contains("another server is using the session root"), "{err}");
    drop(first);
    LocalFactory::builder(builder()).with_session_root(&root).build().expect("the root is free again");
}

#[test]
fn the_session_cap_leaves_a_uid_for_every_session_and_pooled_kernel() {
    assert!(codebox_local::running_as_root(), "session uids need root (CI runs as root)");
    let factory =
        LocalFactory::builder(builder()).with_session_uids(Some(310_300..310_304)).with_pool_size(1).build().unwrap();
    assert_eq!(factory.session_uids(), Some(310_300..310_304));
    assert_eq!(factory.session_cap(), Some(3), "four uids, one held by the pooled kernel");
    let few = LocalFactory::builder(builder()).with_session_uids(Some(310_304..310_305)).with_pool_size(2).build();
    assert_eq!(few.unwrap().session_cap(), Some(1), "never below one session");
    let none = LocalFactory::builder(builder()).with_pool_size(2).build().unwrap();
    assert_eq!(none.session_cap(), None, "without session uids the uids set no cap");
    assert_eq!(none.pool().map(|p| p.size()), Some(2));
}

#[tokio::test]
async fn boxes_live_in_the_scratch_directory_of_the_root() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("sessions");
    let factory = LocalFactory::builder(builder()).with_session_root(&root).build().unwrap();
    let lb = factory.create(&codebox_core::BoxRequest::new()).await.unwrap();
    lb.start().await.unwrap();
    let cwd = lb.exec("import os; print(os.getcwd(), end='')").await.unwrap().stdout();
    assert!(
        std::path::Path::new(&cwd).starts_with(root.join("tmp")),
        "the working directory {cwd} is outside the session root's scratch directory"
    );
    lb.stop().await.unwrap();
}

//! `KernelPool` as an API: acquire, release (which retires the box, so nothing of its user
//! reaches the next one) and stats.

use std::time::Duration;

use codebox_core::{CodeBoxExt, ErrorKind};
use codebox_local::KernelPool;

use crate::builder;

/// Whether a process whose command line holds `token` runs anywhere on this machine.
fn process_with(token: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        std::fs::read(entry.path().join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(token))
    })
}

#[tokio::test]
async fn nothing_of_a_released_box_reaches_the_next_user() {
    let pool = KernelPool::new(1);
    let boxes = builder();
    pool.prewarm(&boxes).await.unwrap();
    let first = pool.acquire(&boxes).await.unwrap();
    let token = format!("codebox-planted-{}", std::process::id());
    let plant = format!(
        r#"
import os, subprocess
planted = 42
os.environ["PLANTED"] = "yes"
open("planted.txt", "w").write("mine")
open("/tmp/planted.txt", "w").write("mine")
child = subprocess.Popen(["bash", "-c", "exec -a {token} sleep 3600"], start_new_session=True)
print(os.getcwd(), end="")
"#
    );
    let first_dir = first.exec(&plant).await.unwrap().stdout();
    assert!(process_with(&token), "the background process runs");
    pool.release(first).await.unwrap();
    // The pool refills with a fresh kernel: the next user gets that one.
    while pool.stats().ready < 1 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = pool.acquire(&boxes).await.unwrap();
    let check = r#"
import os
print("planted" in globals(), os.environ.get("PLANTED"), os.path.exists("planted.txt"), os.path.exists("/tmp/planted.txt"))
"#;
    assert_eq!(second.exec(check).await.unwrap().stdout(), "False None False False\n");
    assert!(!std::path::Path::new(&first_dir).exists(), "the first user's working directory is gone");
    // Its kernel's process tree is killed as the box is retired; the kill lands at once, the
    // reaping a moment later.
    while process_with(&token) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = pool.stats();
    assert_eq!((stats.hits, stats.misses), (2, 0), "both users got a ready kernel: {stats:?}");
    pool.release(second).await.unwrap();
}

#[tokio::test]
async fn stats_count_ready_kernels_hits_and_misses() {
    let pool = KernelPool::new(1);
    let stats = pool.stats();
    assert_eq!((stats.size, stats.ready, stats.starting, stats.hits, stats.misses), (1, 0, 0, 0, 0));
    let boxes = builder();
    // Nothing ready yet: a miss, and the pool starts filling.
    let cold = pool.acquire(&boxes).await.unwrap();
    assert_eq!((pool.stats().hits, pool.stats().misses), (0, 1));
    while pool.stats().ready < 1 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pool.stats().starting, 0, "the pool is full");
    let warm = pool.acquire(&boxes).await.unwrap();
    assert_eq!((pool.stats().hits, pool.stats().misses), (1, 1));
    pool.release(cold).await.unwrap();
    pool.release(warm).await.unwrap();
}

#[tokio::test]
async fn a_box_of_another_pool_is_not_taken_back() {
    let pool = KernelPool::new(1);
    let stranger = builder().build().unwrap();
    let err = pool.release(stranger).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("not acquired from this pool"), "{err}");
}

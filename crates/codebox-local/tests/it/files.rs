//! Files in a LocalBox: upload, download, listing, and paths that must be refused.

use bytes::Bytes;
use codebox_core::{CodeBox, CodeBoxExt, ErrorKind};
use futures::StreamExt;

use crate::started;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_gigabyte_moves_in_chunks_with_flat_memory() {
    let lb = started().await;
    const SIZE: usize = 1 << 30;
    const CHUNK: usize = 1 << 20;
    let chunk = Bytes::from(vec![7u8; CHUNK]);
    let before = rss_kib();
    let chunks = futures::stream::iter((0..SIZE / CHUNK).map(move |_| Ok(chunk.clone())));
    let info = lb.upload("big/one-gib.bin", Box::pin(chunks)).await.unwrap();
    assert_eq!(info.size, SIZE as u64);
    assert_eq!(info.path, "big/one-gib.bin");
    let mut total = 0usize;
    let mut peak = 0u64;
    let mut stream = lb.download("big/one-gib.bin").await.unwrap();
    while let Some(c) = stream.next().await {
        let c = c.unwrap();
        assert!(c.iter().all(|b| *b == 7));
        total += c.len();
        if total % (64 << 20) < c.len() {
            peak = peak.max(rss_kib());
        }
    }
    assert_eq!(total, SIZE);
    let grown = peak.max(rss_kib()).saturating_sub(before);
    // A whole-file buffer would add 1 GiB; chunks keep the process within a few MiB.
    assert!(grown < 128 * 1024, "RSS grew by {grown} KiB moving 1 GiB");
    lb.delete_file("big/one-gib.bin").await.unwrap();
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn paths_that_escape_are_refused_and_nothing_is_written() {
    let lb = started().await;
    let wd = lb.working_dir().await.unwrap();
    let outside = wd.parent().unwrap().join(format!("escaped-{}", lb.id()));
    let name = outside.file_name().unwrap().to_str().unwrap().to_owned();
    for path in [
        format!("../{name}"),
        outside.to_string_lossy().into_owned(),
        format!("a/../../{name}"),
        "a\0b".into(),
        "".into(),
    ] {
        let err = lb.upload_bytes(&path, "x").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnsafePath, "{path:?}: {err}");
    }
    assert!(!outside.exists());
    assert!(!wd.join("a").exists(), "a refused upload created a directory");
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn symlinks_planted_by_code_are_never_followed() {
    let lb = started().await;
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "host secret").unwrap();
    let code = format!(
        "import os\nos.symlink({dir:?}, 'dir-link')\nos.symlink({file:?}, 'file-link')\nos.makedirs('real/sub')\nos.symlink('../real', 'real/sub/up')",
        dir = outside.path().to_str().unwrap(),
        file = outside.path().join("secret").to_str().unwrap(),
    );
    assert!(lb.exec(&code).await.unwrap().is_ok());
    for path in ["file-link", "dir-link/secret", "real/sub/up/sub"] {
        let err = lb.download(path).await.map(|_| ()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnsafePath, "download {path}: {err}");
    }
    let err = lb.upload_bytes("dir-link/planted", "x").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnsafePath);
    let err = lb.upload_bytes("file-link", "overwritten").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnsafePath);
    assert!(!outside.path().join("planted").exists());
    assert_eq!(std::fs::read_to_string(outside.path().join("secret")).unwrap(), "host secret");
    let err = lb.list_files("dir-link", false).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnsafePath);
    // A recursive listing shows the links but does not descend through them.
    let all = lb.list_files("", true).await.unwrap();
    assert!(all.iter().any(|f| f.path == "dir-link" && !f.is_dir));
    assert!(!all.iter().any(|f| f.path.starts_with("dir-link/")));
    assert!(all.iter().any(|f| f.path == "real/sub/up"));
    // Deleting a link removes the link, not its target.
    lb.delete_file("file-link").await.unwrap();
    assert!(outside.path().join("secret").exists());
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn files_are_listed_and_deleted() {
    let lb = started().await;
    lb.upload_bytes("d/one.txt", "1").await.unwrap();
    lb.upload_bytes("d/e/two.txt", "22").await.unwrap();
    let flat = lb.list_files("d", false).await.unwrap();
    assert_eq!(flat.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["d/e", "d/one.txt"]);
    assert!(flat[0].is_dir && flat[1].size == 1 && flat[1].modified.is_some());
    let deep = lb.list_files("./d", true).await.unwrap();
    assert_eq!(deep.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["d/e", "d/e/two.txt", "d/one.txt"]);
    let err = lb.delete_file("d/e").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    lb.delete_file("d/e/two.txt").await.unwrap();
    lb.delete_file("d/e").await.unwrap();
    assert_eq!(lb.delete_file("d/e").await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(lb.download("d").await.map(|_| ()).unwrap_err().kind(), ErrorKind::InvalidInput);
    assert_eq!(lb.download_bytes("d/one.txt").await.unwrap().as_ref(), b"1");
    lb.stop().await.unwrap();
}

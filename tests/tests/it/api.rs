//! The API as a crate outside the workspace's libraries sees it: `codebox` with features
//! `local`, `remote` and `rustls` (this crate also turns on `server`, which nothing here
//! uses), and code generic over `impl CodeBox` that callers feed the shared and owned boxes
//! the facade hands out.

use std::sync::Arc;

use codebox::{CodeBox, CodeBoxExt, CodeBoxSettings, ErrorKind, LocalBox, RemoteBox};

/// What a library generic over boxes looks like.
fn describe(b: impl CodeBox) -> String {
    format!("{} streams={}", b.id(), b.capabilities().streaming)
}

/// The same through an async method and a convenience of `CodeBoxExt`.
async fn first_line(b: impl CodeBox) -> codebox::Result<String> {
    let bytes = b.download_bytes("a.txt").await?;
    Ok(String::from_utf8_lossy(&bytes).lines().next().unwrap_or_default().to_owned())
}

fn remote_settings() -> CodeBoxSettings {
    // Port 9 (discard) on loopback: nothing listens there.
    CodeBoxSettings::new().with_api_key("sk-outside").with_base_url("https://127.0.0.1:9")
}

#[test]
fn impl_codebox_takes_arc_dyn_and_box_dyn() {
    let shared: Arc<dyn CodeBox> = codebox::from_settings(&remote_settings()).unwrap();
    let expected = format!("{} streams={}", shared.id(), shared.capabilities().streaming);
    assert_eq!(describe(Arc::clone(&shared)), expected);

    let owned: Box<dyn CodeBox> = Box::new(RemoteBox::from_settings(&remote_settings()).unwrap());
    assert!(describe(owned).ends_with("streams=true"));

    let local: Box<dyn CodeBox> = Box::new(LocalBox::builder().build().unwrap());
    assert!(describe(local).contains("streams="));
}

#[tokio::test]
async fn async_generic_code_reaches_the_box_behind_the_wrapper() {
    // The boxes are not started: the answer, naming the box, can only come from the box itself.
    let shared: Arc<dyn CodeBox> = codebox::from_settings(&remote_settings()).unwrap();
    let id = shared.id().to_owned();
    let err = first_line(shared).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotRunning, "{err}");
    assert!(err.to_string().contains(&id), "{err}");

    let owned: Box<dyn CodeBox> = Box::new(RemoteBox::from_settings(&remote_settings()).unwrap());
    let id = owned.id().to_owned();
    let err = first_line(owned).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotRunning, "{err}");
    assert!(err.to_string().contains(&id), "{err}");
}

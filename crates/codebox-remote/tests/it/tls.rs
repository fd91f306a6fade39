//! TLS through rustls against a real TLS server (Python's `ssl` over `http.server`) with a
//! certificate made by `openssl` for this test.

use std::path::Path;

use codebox_core::{CodeBox, ErrorKind};
use codebox_remote::{Protocol, RemoteBox};

use crate::tls_server::{TlsServer, make_certificate};

/// The TLS server with the Python the other server tests use.
fn start(dir: &Path) -> TlsServer {
    crate::tls_server::start(&crate::python_server::provision_venv(), dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_works_with_a_trusted_root_and_fails_cleanly_without() {
    let dir = tempfile::tempdir().unwrap();
    make_certificate(dir.path());
    let server = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || start(&dir)
    })
    .await
    .unwrap();
    let base = format!("https://localhost:{}", server.port);

    let untrusted =
        RemoteBox::builder().with_base_url(&base).with_protocol(Protocol::CodeboxApiServer).build().unwrap();
    let err = untrusted.start().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");

    let pem = std::fs::read(dir.path().join("cert.pem")).unwrap();
    let trusted = RemoteBox::builder()
        .with_base_url(&base)
        .with_protocol(Protocol::CodeboxApiServer)
        .with_root_certificates_pem(pem)
        .build()
        .unwrap();
    trusted.start().await.unwrap();
    assert!(trusted.status().await.unwrap().is_running());

    let bad = RemoteBox::builder()
        .with_base_url(&base)
        .with_root_certificates_pem(b"not a certificate".to_vec())
        .with_api_key("k")
        .build()
        .unwrap_err();
    assert_eq!(bad.kind(), ErrorKind::InvalidInput);
}

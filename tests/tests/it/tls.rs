//! The facade speaks TLS when built with `rustls`: boxes it makes reach an `https://` server
//! (Python's `ssl` over `http.server`, answering the codebox-api server's health check) with
//! a certificate `openssl` makes for this test.

use std::path::Path;
use std::sync::Arc;

use codebox::remote::Protocol;
use codebox::{CodeBox, CodeBoxSettings, ErrorKind, RemoteBox};

use crate::tls_server::{TlsServer, make_certificate};

/// The TLS server with the system's Python (its standard library is all it needs).
fn start(dir: &Path) -> TlsServer {
    crate::tls_server::start(Path::new("python3"), dir)
}

/// Code generic over boxes, fed what the facade hands out.
async fn start_and_check(b: impl CodeBox) -> codebox::Result<bool> {
    b.start().await?;
    Ok(b.status().await?.is_running())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facade_boxes_reach_an_https_server() {
    let dir = tempfile::tempdir().unwrap();
    make_certificate(dir.path());
    let server = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || start(&dir)
    })
    .await
    .unwrap();
    let base = format!("https://localhost:{}", server.port);

    // The box `connect()` would make: TLS is spoken (without `rustls` this is an
    // InvalidInput error before any connection), and the test certificate, which is in no
    // trusted root store, is refused.
    let settings = CodeBoxSettings::new().with_api_key("sk-tls").with_base_url(&base);
    let from_env_rule = codebox::from_settings(&settings).unwrap();
    let err = from_env_rule.start().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");

    // Trusting the test certificate, the handshake completes and the server answers.
    let pem = std::fs::read(dir.path().join("cert.pem")).unwrap();
    let trusted = RemoteBox::builder()
        .with_base_url(&base)
        .with_protocol(Protocol::CodeboxApiServer)
        .with_root_certificates_pem(pem.clone())
        .build()
        .unwrap();
    let shared: Arc<dyn CodeBox> = Arc::new(trusted);
    assert!(start_and_check(Arc::clone(&shared)).await.unwrap());

    let owned: Box<dyn CodeBox> = Box::new(
        RemoteBox::builder()
            .with_base_url(&base)
            .with_protocol(Protocol::CodeboxApiServer)
            .with_root_certificates_pem(pem)
            .build()
            .unwrap(),
    );
    assert!(start_and_check(owned).await.unwrap());
}

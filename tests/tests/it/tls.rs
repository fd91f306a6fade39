//! The facade speaks TLS when built with `rustls`: boxes it makes reach an `https://` server
//! (Python's `ssl` over `http.server`, answering the codebox-api server's health check) with
//! a certificate `openssl` makes for this test.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use codebox::remote::Protocol;
use codebox::{CodeBox, CodeBoxSettings, ErrorKind, RemoteBox};

const SERVER: &str = r#"
import http.server, ssl, sys
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{"status": "ok"}'
        self.send_response(200)
        self.send_header('content-type', 'application/json')
        self.send_header('content-length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(('127.0.0.1', 0), Health)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

/// The server process, killed when the test ends however it ends.
struct TlsServer {
    child: Child,
    port: u16,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A self-signed certificate for `localhost` and 127.0.0.1, valid for a day.
fn make_certificate(dir: &Path) {
    let ok = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("running openssl");
    assert!(ok.success(), "openssl could not make a certificate");
}

fn start(dir: &Path) -> TlsServer {
    let mut child = Command::new("python3")
        .args(["-c", SERVER])
        .arg(dir.join("cert.pem"))
        .arg(dir.join("key.pem"))
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("starting the TLS server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port = line.trim().parse().expect("the TLS server's port");
    TlsServer { child, port }
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

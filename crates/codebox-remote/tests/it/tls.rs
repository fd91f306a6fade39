//! TLS through rustls against a real TLS server (Python's `ssl` over `http.server`) with a
//! certificate made by `openssl` for this test.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use codebox_core::{CodeBox, ErrorKind};
use codebox_remote::{Protocol, RemoteBox};

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
    let python = crate::python_server::provision_venv();
    let mut child = Command::new(python)
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

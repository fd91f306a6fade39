//! Long file: every envd method and its error cases through one real server and box, which one file sets up once.
//! envd over real HTTP in front of a real LocalBox: a listener on 127.0.0.1 whose every
//! request goes to [`handle`](super::handle) for one session of the server's registry, and a
//! client that speaks the wire by hand (multipart, gzip, Connect envelopes), as E2B's SDK
//! does.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use codebox_core::CodeBox;
use codebox_http::server::ConnectionLimits;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::state::AppState;
use crate::{Server, ServerConfig, factory_fn};

/// The upload limit of the test server: small, so that going past it is cheap.
const UPLOAD_LIMIT: u64 = 1 << 20;
/// The JSON limit of the test server.
const JSON_LIMIT: u64 = 64 * 1024;

/// envd for one LocalBox session, on 127.0.0.1.
struct Envd {
    addr: SocketAddr,
    state: Arc<AppState>,
    client: Client<HttpConnector, Full<Bytes>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Envd {
    async fn start() -> Self {
        Self::with_sandbox(None).await
    }

    /// envd for a box confined by `policy` (a plain LocalBox without one).
    async fn with_sandbox(policy: Option<codebox_local::SandboxPolicy>) -> Self {
        let config = ServerConfig::new()
            .with_addr("127.0.0.1:0".parse().unwrap())
            .with_api_key("envd-test-key")
            .with_max_upload_bytes(UPLOAD_LIMIT)
            .with_max_json_bytes(JSON_LIMIT)
            .with_keepalive_interval(Duration::from_millis(200));
        let factory = factory_fn(move |_request| {
            let policy = policy.clone();
            async move {
                let mut builder = codebox_local::LocalBox::builder();
                if let Some(policy) = policy {
                    builder = builder.with_sandbox(policy);
                }
                Ok(Arc::new(builder.build()?) as Arc<dyn CodeBox>)
            }
        });
        let server = Server::bind(config, factory).await.unwrap();
        let state = Arc::clone(&server.state);
        let owner = state.keys.owners().next().unwrap();
        let (session, _) = state.registry.get_or_create(owner, Some("envd"), None).await.unwrap();
        // The server's own listener is not served: this one routes everything to envd.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handler = {
            let state = Arc::clone(&state);
            let session = Arc::clone(&session);
            move |req, _peer| {
                let state = Arc::clone(&state);
                let session = Arc::clone(&session);
                async move { super::handle(&state, session, req).await }
            }
        };
        tokio::spawn(codebox_http::server::serve(
            listener,
            handler,
            ConnectionLimits::default(),
            async {
                let _ = stopped.await;
            },
            std::future::ready(()),
        ));
        let client = Client::builder(TokioExecutor::new()).build_http();
        Self { addr, state, client, stop: Some(stop) }
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        self.state.registry.close().await;
    }

    async fn send(&self, req: http::request::Builder, body: impl Into<Bytes>) -> Reply {
        let req = req.body(Full::new(body.into())).unwrap();
        let resp = self.client.request(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Reply { status, headers, body }
    }

    fn uri(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn get_file(&self, path: &str) -> Reply {
        let uri = self.uri(&format!("/files?path={}", encode(path)));
        self.send(Request::get(uri), Bytes::new()).await
    }

    async fn write_files(&self, query_path: Option<&str>, files: &[(&str, &[u8])]) -> Reply {
        let boundary = "e2bBoundary7x";
        let mut body = Vec::new();
        for (name, content) in files {
            body.extend(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
                     Content-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            );
            body.extend(*content);
            body.extend(b"\r\n");
        }
        body.extend(format!("--{boundary}--\r\n").as_bytes());
        let uri = match query_path {
            Some(p) => self.uri(&format!("/files?path={}", encode(p))),
            None => self.uri("/files"),
        };
        let req = Request::post(uri).header("content-type", format!("multipart/form-data; boundary={boundary}"));
        self.send(req, body).await
    }

    /// A unary Connect call.
    async fn unary(&self, method: &str, message: Value) -> Reply {
        let req = Request::post(self.uri(&format!("/{method}")))
            .header("content-type", "application/json")
            .header("connect-protocol-version", "1");
        self.send(req, message.to_string()).await
    }

    /// A server-streaming Connect call with `timeout_ms`, read to its end.
    async fn stream(&self, method: &str, message: Value, timeout_ms: Option<u64>) -> Stream {
        let resp = self.stream_open(method, envelope(0, message.to_string().as_bytes()), timeout_ms).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Stream::parse(body)
    }

    async fn stream_open(
        &self,
        method: &str,
        body: Bytes,
        timeout_ms: Option<u64>,
    ) -> hyper::Response<hyper::body::Incoming> {
        let mut req = Request::post(self.uri(&format!("/{method}")))
            .header("content-type", "application/connect+json")
            .header("connect-protocol-version", "1")
            .header("keepalive-ping-interval", "1");
        if let Some(ms) = timeout_ms {
            req = req.header("connect-timeout-ms", ms.to_string());
        }
        self.client.request(req.body(Full::new(body)).unwrap()).await.unwrap()
    }
}

fn encode(path: &str) -> String {
    percent_encoding::utf8_percent_encode(path, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn envelope(flags: u8, message: &[u8]) -> Bytes {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[flags]);
    buf.extend_from_slice(&(message.len() as u32).to_be_bytes());
    buf.extend_from_slice(message);
    buf.freeze()
}

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.text()))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A Connect error with `code` and Connect's status for it.
    #[track_caller]
    fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "{}", self.text());
        assert_eq!(self.json()["code"], code, "{}", self.text());
        assert!(self.json()["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
}

/// A stream's messages and its end.
#[derive(Debug)]
struct Stream {
    messages: Vec<Value>,
    end: Value,
}

impl Stream {
    fn parse(mut body: Bytes) -> Self {
        let mut messages = Vec::new();
        loop {
            assert!(body.len() >= 5, "a stream ends with its end-of-stream envelope: {body:?}");
            let flags = body.get_u8();
            let len = body.get_u32() as usize;
            let message: Value = serde_json::from_slice(&body[..len]).unwrap();
            body.advance(len);
            if flags == 2 {
                assert!(body.is_empty(), "nothing follows the end of the stream");
                return Self { messages, end: message };
            }
            assert_eq!(flags, 0);
            messages.push(message);
        }
    }

    fn events(&self) -> Vec<&Value> {
        self.messages.iter().map(|m| &m["event"]).filter(|e| e.get("keepalive").is_none()).collect()
    }

    /// The bytes of every `data` event of `which` (stdout or stderr).
    fn output(&self, which: &str) -> String {
        use base64::Engine;
        let mut out = Vec::new();
        for event in self.events() {
            if let Some(b64) = event["data"][which].as_str() {
                out.extend(base64::engine::general_purpose::STANDARD.decode(b64).unwrap());
            }
        }
        String::from_utf8(out).unwrap()
    }

    fn error_code(&self) -> Option<&str> {
        self.end["error"]["code"].as_str()
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

#[tokio::test]
async fn health_and_files_as_the_sdk_sends_them() {
    let envd = Envd::start().await;
    let reply = envd.send(Request::get(envd.uri("/health")), Bytes::new()).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);

    // files.write: one part, `path` in the query, the full path as the file name.
    let reply = envd.write_files(Some("/home/user/a.txt"), &[("/home/user/a.txt", b"hello")]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json(), json!([{"name": "a.txt", "type": "file", "path": "/home/user/a.txt"}]));
    let reply = envd.get_file("/home/user/a.txt").await;
    assert_eq!((reply.status, &reply.body[..]), (StatusCode::OK, &b"hello"[..]));
    // Relative paths start at /home/user.
    assert_eq!(&envd.get_file("a.txt").await.body[..], b"hello");

    // files.write_files: several parts, no `path`; parents are made; order is kept.
    let reply = envd
        .write_files(None, &[("/home/user/d/e/one.bin", b"\x00\x01\r\n--"), ("data/two.txt", b""), ("three", b"3")])
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let written = reply.json();
    let paths: Vec<&str> = written.as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["/home/user/d/e/one.bin", "/home/user/data/two.txt", "/home/user/three"]);
    assert_eq!(&envd.get_file("/home/user/d/e/one.bin").await.body[..], b"\x00\x01\r\n--");
    assert_eq!(envd.get_file("data/two.txt").await.body.len(), 0);

    // Raw bytes, plain and gzipped.
    let req = Request::post(envd.uri("/files?path=%2Fhome%2Fuser%2Fraw.bin"))
        .header("content-type", "application/octet-stream");
    assert_eq!(envd.send(req, &b"raw bytes"[..]).await.status, StatusCode::OK);
    assert_eq!(&envd.get_file("raw.bin").await.body[..], b"raw bytes");
    let big: Vec<u8> = (0..100_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
    let req = Request::post(envd.uri("/files?path=z%2Fbig.bin"))
        .header("content-type", "application/octet-stream")
        .header("content-encoding", "gzip");
    let reply = envd.send(req, gzip(&big)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()[0]["path"], "/home/user/z/big.bin");
    assert_eq!(envd.get_file("z/big.bin").await.body, big);

    // A download gzipped on request.
    let req = Request::get(envd.uri("/files?path=z%2Fbig.bin")).header("accept-encoding", "gzip");
    let reply = envd.send(req, Bytes::new()).await;
    assert_eq!(reply.headers["content-encoding"], "gzip");
    let mut inflated = Vec::new();
    flate2::read::GzDecoder::new(&reply.body[..]).read_to_end(&mut inflated).unwrap();
    assert_eq!(inflated, big);
    envd.shutdown().await;
}

#[tokio::test]
async fn file_requests_that_cannot_be_served_say_why() {
    let envd = Envd::start().await;
    let missing = envd.get_file("/home/user/nope.txt").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["code"], 404);
    assert!(missing.json()["message"].as_str().unwrap().contains("nope.txt"));
    envd.write_files(None, &[("dir/x", b"x")]).await;
    let dir = envd.get_file("/home/user/dir").await;
    assert_eq!((dir.status, dir.json()["code"].as_u64()), (StatusCode::BAD_REQUEST, Some(400)));
    for outside in ["/etc/passwd", "/home/user/../../etc/passwd", "../x", "/home/username/x"] {
        assert_eq!(envd.get_file(outside).await.status, StatusCode::BAD_REQUEST, "{outside}");
        let reply = envd.write_files(Some(outside), &[(outside, b"x")]).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{outside}: {}", reply.text());
    }
    let no_path = envd.send(Request::get(envd.uri("/files")), Bytes::new()).await;
    assert_eq!(no_path.status, StatusCode::BAD_REQUEST);
    let raw_without_path =
        envd.send(Request::post(envd.uri("/files")).header("content-type", "application/octet-stream"), "x").await;
    assert_eq!(raw_without_path.status, StatusCode::BAD_REQUEST);
    let twice = envd.write_files(None, &[("same", b"1"), ("/home/user/same", b"2")]).await;
    assert_eq!(twice.status, StatusCode::BAD_REQUEST, "{}", twice.text());

    // Past the upload limit: raw, multipart, and a small gzip that inflates past it.
    let too_big = vec![7u8; UPLOAD_LIMIT as usize + 1];
    let req = Request::post(envd.uri("/files?path=big")).header("content-type", "application/octet-stream");
    assert_eq!(envd.send(req, too_big.clone()).await.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(envd.write_files(None, &[("big", &too_big)]).await.status, StatusCode::PAYLOAD_TOO_LARGE);
    let bomb = gzip(&vec![0u8; 8 * UPLOAD_LIMIT as usize]);
    let req = Request::post(envd.uri("/files?path=bomb"))
        .header("content-type", "application/octet-stream")
        .header("content-encoding", "gzip");
    let reply = envd.send(req, bomb).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", reply.text());
    assert_eq!(envd.get_file("bomb").await.status, StatusCode::NOT_FOUND, "the partial file is removed");
    let req = Request::post(envd.uri("/files?path=notgz"))
        .header("content-type", "application/octet-stream")
        .header("content-encoding", "gzip");
    assert_eq!(envd.send(req, "plain text").await.status, StatusCode::BAD_REQUEST);
    let req = Request::post(envd.uri("/files?path=br"))
        .header("content-type", "application/octet-stream")
        .header("content-encoding", "br");
    assert_eq!(envd.send(req, "x").await.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    envd.shutdown().await;
}

#[tokio::test]
async fn filesystem_calls_answer_as_envd_does() {
    let envd = Envd::start().await;
    let made = envd.unary("filesystem.Filesystem/MakeDir", json!({"path": "/home/user/proj/src"})).await;
    assert_eq!(made.status, StatusCode::OK, "{}", made.text());
    assert_eq!(made.headers["content-type"], "application/json");
    let entry = &made.json()["entry"];
    assert_eq!(
        (entry["type"].as_str(), entry["path"].as_str()),
        (Some("FILE_TYPE_DIRECTORY"), Some("/home/user/proj/src"))
    );
    envd.unary("filesystem.Filesystem/MakeDir", json!({"path": "proj/src"})).await.assert_error(409, "already_exists");

    envd.write_files(None, &[("proj/src/main.rs", b"fn main() {}"), ("proj/README", b"hi")]).await;
    let stat = envd.unary("filesystem.Filesystem/Stat", json!({"path": "/home/user/proj/README"})).await;
    let entry = &stat.json()["entry"];
    assert_eq!(entry["name"], "README");
    assert_eq!(entry["type"], "FILE_TYPE_FILE");
    assert_eq!(entry["size"], "2", "int64 is a string");
    assert_eq!(entry["owner"], "user");
    assert!(entry["permissions"].as_str().unwrap().starts_with("-rw"));
    let modified = entry["modifiedTime"].as_str().unwrap();
    assert!(humantime::parse_rfc3339(modified).is_ok(), "{modified}");
    envd.unary("filesystem.Filesystem/Stat", json!({"path": "/home/user/nothing"}))
        .await
        .assert_error(404, "not_found");
    envd.unary("filesystem.Filesystem/Stat", json!({"path": "/etc/passwd"})).await.assert_error(404, "not_found");
    let home = envd.unary("filesystem.Filesystem/Stat", json!({"path": "/home/user"})).await.json();
    assert_eq!(
        (home["entry"]["type"].as_str(), home["entry"]["path"].as_str()),
        (Some("FILE_TYPE_DIRECTORY"), Some("/home/user"))
    );

    let listed = envd.unary("filesystem.Filesystem/ListDir", json!({"path": "/home/user/proj", "depth": 1})).await;
    let mut names: Vec<String> =
        listed.json()["entries"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap().to_owned()).collect();
    names.sort();
    assert_eq!(names, ["/home/user/proj/README", "/home/user/proj/src"]);
    let deep = envd.unary("filesystem.Filesystem/ListDir", json!({"path": "proj", "depth": "2"})).await;
    assert_eq!(deep.json()["entries"].as_array().unwrap().len(), 3, "{}", deep.text());
    envd.unary("filesystem.Filesystem/ListDir", json!({"path": "/etc"})).await.assert_error(400, "invalid_argument");
    envd.unary("filesystem.Filesystem/ListDir", json!({"path": "missing"})).await.assert_error(404, "not_found");

    let moved = envd
        .unary(
            "filesystem.Filesystem/Move",
            json!({"source": "/home/user/proj/README", "destination": "/home/user/README.md"}),
        )
        .await;
    assert_eq!(moved.json()["entry"]["path"], "/home/user/README.md", "{}", moved.text());
    assert_eq!(&envd.get_file("README.md").await.body[..], b"hi");
    envd.unary("filesystem.Filesystem/Move", json!({"source": "gone", "destination": "x"}))
        .await
        .assert_error(404, "not_found");

    // Remove takes a directory with what is in it.
    let removed = envd.unary("filesystem.Filesystem/Remove", json!({"path": "/home/user/proj"})).await;
    assert_eq!((removed.status, removed.json()), (StatusCode::OK, json!({})), "{}", removed.text());
    envd.unary("filesystem.Filesystem/Stat", json!({"path": "proj/src/main.rs"})).await.assert_error(404, "not_found");
    envd.unary("filesystem.Filesystem/Remove", json!({"path": "proj"})).await.assert_error(404, "not_found");
    envd.unary("filesystem.Filesystem/Remove", json!({"path": "/home/user"}))
        .await
        .assert_error(400, "invalid_argument");
    envd.shutdown().await;
}

#[tokio::test]
async fn connect_protocol_errors_are_connect_errors() {
    let envd = Envd::start().await;
    envd.unary("filesystem.Filesystem/Chmod", json!({})).await.assert_error(501, "unimplemented");
    envd.unary("process.Process/Update", json!({})).await.assert_error(501, "unimplemented");
    envd.unary("nosuch.Service/Do", json!({})).await.assert_error(404, "not_found");
    let req = Request::post(envd.uri("/filesystem.Filesystem/Stat")).header("content-type", "application/json");
    envd.send(req, "{\"path\": ").await.assert_error(400, "invalid_argument");
    envd.unary("filesystem.Filesystem/Stat", json!({"path": 7})).await.assert_error(400, "invalid_argument");
    envd.unary("filesystem.Filesystem/ListDir", json!({"path": "", "depth": -1}))
        .await
        .assert_error(400, "invalid_argument");
    let huge = json!({"path": "x".repeat(JSON_LIMIT as usize)});
    envd.unary("filesystem.Filesystem/Stat", huge.clone()).await.assert_error(429, "resource_exhausted");
    let req = Request::post(envd.uri("/filesystem.Filesystem/Stat")).header("content-type", "application/proto");
    envd.send(req, Bytes::new()).await.assert_error(501, "unimplemented");
    let req = Request::post(envd.uri("/filesystem.Filesystem/Stat")).header("content-type", "text/plain");
    envd.send(req, "{}").await.assert_error(400, "invalid_argument");
    let get = envd
        .send(
            Request::get(envd.uri("/filesystem.Filesystem/Stat")).header("content-type", "application/json"),
            Bytes::new(),
        )
        .await;
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);
    let req = Request::post(envd.uri("/filesystem.Filesystem/Stat"))
        .header("content-type", "application/json")
        .header("connect-timeout-ms", "soon");
    envd.send(req, "{}").await.assert_error(400, "invalid_argument");
    // A unary method called as a stream, and the other way round.
    let wrong = envd.stream("filesystem.Filesystem/Stat", json!({"path": "x"}), None).await;
    assert_eq!(wrong.error_code(), Some("invalid_argument"));
    envd.unary("process.Process/Start", json!({})).await.assert_error(400, "invalid_argument");

    // Bad envelopes: short, compressed, a length that lies, two messages, one too large.
    let bodies = [
        (Bytes::from_static(b"\x00\x00"), "invalid_argument"),
        (envelope(1, b"{}"), "invalid_argument"),
        (Bytes::from_static(b"\x00\x00\x00\x00\x09{}"), "invalid_argument"),
        ([envelope(0, b"{}"), envelope(0, b"{}")].concat().into(), "invalid_argument"),
        (envelope(0, b"[1,2]"), "invalid_argument"),
        (envelope(0, b"not json"), "invalid_argument"),
    ];
    for (body, code) in bodies {
        let resp = envd.stream_open("process.Process/Start", body.clone(), None).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "application/connect+json");
        let stream = Stream::parse(resp.into_body().collect().await.unwrap().to_bytes());
        assert!(stream.messages.is_empty());
        assert_eq!(stream.error_code(), Some(code), "{body:?}");
    }
    // A length past the JSON limit is refused from the header alone.
    let mut lying = BytesMut::from(&b"\x00"[..]);
    lying.extend_from_slice(&(JSON_LIMIT as u32 + 1).to_be_bytes());
    lying.extend_from_slice(b"{}");
    let stream = Stream::parse(
        envd.stream_open("process.Process/Start", lying.freeze(), None)
            .await
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes(),
    );
    assert_eq!(stream.error_code(), Some("resource_exhausted"));
    envd.shutdown().await;
}

/// A stream read envelope by envelope as it comes.
struct Following {
    body: hyper::body::Incoming,
    buf: BytesMut,
}

impl Following {
    async fn open(envd: &Envd, method: &str, message: Value) -> Self {
        let resp = envd.stream_open(method, envelope(0, message.to_string().as_bytes()), None).await;
        assert_eq!(resp.status(), StatusCode::OK);
        Self { body: resp.into_body(), buf: BytesMut::new() }
    }

    /// The next envelope: its flags and message.
    async fn next(&mut self) -> (u8, Value) {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
                if self.buf.len() >= 5 + len {
                    let flags = self.buf[0];
                    let message = serde_json::from_slice(&self.buf[5..5 + len]).unwrap();
                    self.buf.advance(5 + len);
                    return (flags, message);
                }
            }
            let frame = self.body.frame().await.expect("the stream ended early").unwrap();
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }

    /// The next event that is not a keepalive.
    async fn event(&mut self) -> Value {
        loop {
            let (flags, message) = self.next().await;
            assert_eq!(flags, 0, "an event, not the end: {message}");
            if message["event"].get("keepalive").is_none() {
                return message["event"].clone();
            }
        }
    }

    /// The end event and the end of the stream after it.
    async fn end(&mut self) -> Value {
        let end = self.event().await;
        let (flags, last) = self.next().await;
        assert_eq!((flags, last), (2, json!({})));
        end["end"].clone()
    }
}

fn bash(cmd: &str) -> Value {
    json!({
        "process": {"cmd": "/bin/bash", "args": ["-l", "-c", cmd], "envs": {"GREETING": "hi there"}, "cwd": "/home/user"},
        "stdin": false
    })
}

fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// `commands.run`: start first, output, the end with the exit code; in a subdirectory too.
async fn commands_run(envd: &Envd) {
    let run = envd.stream("process.Process/Start", bash("echo $GREETING; echo oops >&2; exit 3"), Some(60_000)).await;
    let events = run.events();
    assert!(events[0]["start"]["pid"].as_u64().is_some(), "{run:?}");
    assert_eq!(run.output("stdout"), "hi there\n");
    assert_eq!(run.output("stderr"), "oops\n");
    assert_eq!(events.last().unwrap()["end"], json!({"exitCode": 3, "exited": true, "status": "exit status 3"}));
    assert_eq!(run.end, json!({}));

    envd.unary("filesystem.Filesystem/MakeDir", json!({"path": "/home/user/sub"})).await;
    let mut in_sub = bash("basename \"$PWD\"; cat ../note.txt");
    in_sub["process"]["cwd"] = json!("/home/user/sub");
    envd.write_files(None, &[("note.txt", b"noted")]).await;
    let run = envd.stream("process.Process/Start", in_sub, None).await;
    assert_eq!(run.output("stdout"), "sub\nnoted");
    assert_eq!(run.events().last().unwrap()["end"]["exitCode"], 0);
    let mut outside = bash("pwd");
    outside["process"]["cwd"] = json!("/etc");
    assert_eq!(envd.stream("process.Process/Start", outside, None).await.error_code(), Some("invalid_argument"));
}

#[tokio::test]
async fn commands_run_streams_output_and_the_exit_code() {
    let envd = Envd::start().await;
    commands_run(&envd).await;
    // A silence longer than the client's keepalive interval (1 s here) carries keepalives.
    let quiet = envd.stream("process.Process/Start", bash("sleep 2; echo after"), None).await;
    let first_output = quiet.messages.iter().position(|m| m["event"].get("data").is_some()).unwrap();
    assert!(quiet.messages[..first_output].iter().any(|m| m["event"] == json!({"keepalive": {}})), "{quiet:?}");
    assert_eq!(quiet.output("stdout"), "after\n");
    envd.shutdown().await;
}

#[tokio::test]
async fn commands_run_in_a_confined_box() {
    assert!(codebox_local::running_as_root(), "the confined case needs root (CI runs as root)");
    let policy = codebox_local::SandboxPolicy::default()
        .with_isolation(codebox_local::Isolation::Bubblewrap)
        .with_require_isolation(true)
        .with_session_uids(Some(codebox_local::UidAllocator::new(353_000..353_010).unwrap()));
    let envd = Envd::with_sandbox(Some(policy)).await;
    commands_run(&envd).await;
    let whoami = envd.stream("process.Process/Start", bash("id -u"), None).await;
    assert!(whoami.output("stdout").starts_with("3530"), "{whoami:?}");
    envd.shutdown().await;
}

#[tokio::test]
async fn a_deadline_kills_the_command_and_ends_the_stream() {
    let envd = Envd::start().await;
    let run = envd.stream("process.Process/Start", bash("echo started; exec sleep 600"), Some(300)).await;
    assert_eq!(run.error_code(), Some("deadline_exceeded"), "{run:?}");
    assert!(run.events().iter().all(|e| e.get("end").is_none()), "no end event: {run:?}");
    let pid = run.events()[0]["start"]["pid"].as_u64().unwrap();
    // The process was killed: followed again, it is gone or ends killed.
    let followed = envd.stream("process.Process/Connect", json!({"process": {"pid": pid}}), None).await;
    match followed.error_code() {
        Some(code) => assert_eq!(code, "not_found", "{followed:?}"),
        None => assert_eq!(followed.events().last().unwrap()["end"]["status"], "signal: killed", "{followed:?}"),
    }
    envd.shutdown().await;
}

#[tokio::test]
async fn background_processes_take_input_and_signals_and_are_listed() {
    let envd = Envd::start().await;
    let mut cat = bash("cat");
    cat["stdin"] = json!(true);
    cat["tag"] = json!("the-cat");
    let mut started = Following::open(&envd, "process.Process/Start", cat).await;
    let pid = started.event().await["start"]["pid"].as_u64().unwrap();

    let listed = envd.unary("process.Process/List", json!({})).await.json();
    let entry = listed["processes"].as_array().unwrap().iter().find(|p| p["pid"] == pid).unwrap().clone();
    assert_eq!(entry["tag"], "the-cat");
    assert_eq!(entry["config"]["cmd"], "/bin/bash");
    assert_eq!(entry["config"]["args"], json!(["-l", "-c", "cat"]));
    assert_eq!(entry["config"]["cwd"], "/home/user");

    let input = json!({"process": {"pid": pid}, "input": {"stdin": b64(b"ping\n")}});
    let sent = envd.unary("process.Process/SendInput", input).await;
    assert_eq!((sent.status, sent.json()), (StatusCode::OK, json!({})), "{}", sent.text());
    assert_eq!(started.event().await["data"]["stdout"], b64(b"ping\n"));
    // Followed again: the start event, then what comes.
    let mut followed = Following::open(&envd, "process.Process/Connect", json!({"process": {"tag": "the-cat"}})).await;
    assert_eq!(followed.event().await["start"]["pid"], pid);
    let closed = envd.unary("process.Process/CloseStdin", json!({"process": {"pid": pid}})).await;
    assert_eq!(closed.status, StatusCode::OK, "{}", closed.text());
    assert_eq!(started.end().await, json!({"exitCode": 0, "exited": true, "status": "exit status 0"}));
    assert_eq!(followed.end().await["exitCode"], 0);

    // `commands.kill`: SIGKILL by pid ends the stream with the signal.
    let mut sleeper = Following::open(&envd, "process.Process/Start", bash("exec sleep 600")).await;
    let pid = sleeper.event().await["start"]["pid"].as_u64().unwrap();
    let signal = json!({"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"});
    assert_eq!(envd.unary("process.Process/SendSignal", signal).await.status, StatusCode::OK);
    assert_eq!(sleeper.end().await, json!({"exitCode": -1, "exited": false, "status": "signal: killed"}));

    let gone = json!({"process": {"pid": pid}, "signal": "SIGNAL_SIGTERM"});
    envd.unary("process.Process/SendSignal", gone).await.assert_error(404, "not_found");
    let unknown = json!({"process": {"pid": 4_000_000}, "input": {"stdin": b64(b"x")}});
    envd.unary("process.Process/SendInput", unknown).await.assert_error(404, "not_found");
    envd.unary("process.Process/CloseStdin", json!({"process": {"tag": "nobody"}}))
        .await
        .assert_error(404, "not_found");
    let unspecified = json!({"process": {"pid": pid}, "signal": "SIGNAL_UNSPECIFIED"});
    envd.unary("process.Process/SendSignal", unspecified).await.assert_error(400, "invalid_argument");
    envd.unary("process.Process/SendSignal", json!({"signal": 9})).await.assert_error(400, "invalid_argument");
    let stream = envd.stream("process.Process/Connect", json!({"process": {"pid": 4_000_000}}), None).await;
    assert_eq!(stream.error_code(), Some("not_found"), "{stream:?}");
    let pty = json!({"process": {"cmd": "/bin/bash"}, "pty": {"size": {"cols": 80, "rows": 24}}});
    assert_eq!(envd.stream("process.Process/Start", pty, None).await.error_code(), Some("unimplemented"));
    envd.shutdown().await;
}

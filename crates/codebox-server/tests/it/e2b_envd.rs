//! envd through the server's real E2B routing, in front of real LocalBoxes: a sandbox made
//! by the control plane, then files, filesystem and process calls as the SDK sends them
//! (`E2b-Sandbox-Id`, `E2b-Sandbox-Port: 49983`, `X-Access-Token`; or under `/e2b`). The
//! protocol's edge cases are covered next to the handler (`e2b::envd::tests`).

use std::sync::Arc;

use base64::Engine;
use bytes::{Buf, Bytes};
use codebox_core::CodeBox;
use codebox_server::{Server, factory_fn};
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use serde_json::{Value, json};

use crate::support::{KEY, OTHER_KEY, Reply, client, test_config};

struct Sandbox {
    base: String,
    id: String,
    token: String,
}

impl Sandbox {
    /// A sandbox of `key` on the server at `base`.
    async fn create(base: &str, key: &str) -> Self {
        let req = Request::post(format!("{base}/v2/sandboxes"))
            .header("x-api-key", key)
            .header("content-type", "application/json");
        let reply = send(req, json!({"templateID": "base"}).to_string()).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        let sandbox = reply.json();
        Self {
            base: base.to_owned(),
            id: sandbox["sandboxID"].as_str().unwrap().to_owned(),
            token: sandbox["envdAccessToken"].as_str().unwrap().to_owned(),
        }
    }

    /// An envd request to `path` (under `prefix`), with `token`.
    fn envd(&self, method: &str, prefix: &str, path: &str, token: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(format!("{}{prefix}{path}", self.base))
            .header("e2b-sandbox-id", &self.id)
            .header("e2b-sandbox-port", "49983")
            .header("x-access-token", token)
    }

    async fn unary(&self, method: &str, message: Value) -> Reply {
        let req = self.envd("POST", "", &format!("/{method}"), &self.token).header("content-type", "application/json");
        send(req, message.to_string()).await
    }
}

async fn send(req: http::request::Builder, body: impl Into<Bytes>) -> Reply {
    let resp = client().request(req.body(Full::new(body.into())).unwrap()).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply { status, headers, body }
}

/// The messages of a Connect stream, its end-of-stream message last.
fn envelopes(mut body: Bytes) -> Vec<(u8, Value)> {
    let mut out = Vec::new();
    while body.has_remaining() {
        let flags = body.get_u8();
        let len = body.get_u32() as usize;
        out.push((flags, serde_json::from_slice(&body[..len]).unwrap()));
        body.advance(len);
    }
    out
}

#[tokio::test]
async fn files_filesystem_and_commands_through_the_e2b_routing() {
    let factory =
        factory_fn(
            |_request| async move { Ok(Arc::new(codebox_local::LocalBox::builder().build()?) as Arc<dyn CodeBox>) },
        );
    let server = Server::bind(test_config(), factory).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run_until(async {
        let _ = stopped.await;
    }));
    let sandbox = Sandbox::create(&base, KEY).await;

    let health = send(sandbox.envd("GET", "", "/health", &sandbox.token), Bytes::new()).await;
    assert_eq!(health.status, StatusCode::NO_CONTENT);

    // files.write and files.read, the second under the /e2b prefix.
    let boundary = "b0undary";
    let form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"/home/user/notes/a.txt\"\r\n\r\n\
         hello e2b\r\n--{boundary}--\r\n"
    );
    let req = sandbox
        .envd("POST", "", "/files?path=%2Fhome%2Fuser%2Fnotes%2Fa.txt", &sandbox.token)
        .header("content-type", format!("multipart/form-data; boundary={boundary}"));
    let written = send(req, form).await;
    assert_eq!(written.status, StatusCode::OK, "{}", written.text());
    assert_eq!(written.json(), json!([{"name": "a.txt", "type": "file", "path": "/home/user/notes/a.txt"}]));
    let read = send(sandbox.envd("GET", "/e2b", "/files?path=notes%2Fa.txt", &sandbox.token), Bytes::new()).await;
    assert_eq!((read.status, &read.body[..]), (StatusCode::OK, &b"hello e2b"[..]));

    let listed = sandbox.unary("filesystem.Filesystem/ListDir", json!({"path": "/home/user/notes", "depth": 1})).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text());
    assert_eq!(listed.json()["entries"][0]["path"], "/home/user/notes/a.txt");
    let missing = sandbox.unary("filesystem.Filesystem/Stat", json!({"path": "/home/user/none"})).await;
    assert_eq!((missing.status, missing.json()["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));

    // commands.run.
    let start = json!({
        "process": {"cmd": "/bin/bash", "args": ["-l", "-c", "cat notes/a.txt; exit 4"], "envs": {}, "cwd": "/home/user"},
        "stdin": false
    })
    .to_string();
    let mut enveloped = vec![0u8];
    enveloped.extend((start.len() as u32).to_be_bytes());
    enveloped.extend(start.as_bytes());
    let req = sandbox
        .envd("POST", "", "/process.Process/Start", &sandbox.token)
        .header("content-type", "application/connect+json")
        .header("connect-timeout-ms", "60000");
    let run = send(req, enveloped).await;
    assert_eq!(run.status, StatusCode::OK, "{}", run.text());
    let messages = envelopes(run.body);
    assert!(messages[0].1["event"]["start"]["pid"].is_u64(), "{messages:?}");
    let stdout: Vec<u8> = messages
        .iter()
        .filter_map(|(_, m)| m["event"]["data"]["stdout"].as_str())
        .flat_map(|b64| base64::engine::general_purpose::STANDARD.decode(b64).unwrap())
        .collect();
    assert_eq!(stdout, b"hello e2b");
    let (_, end) = &messages[messages.len() - 2];
    assert_eq!(end["event"]["end"]["exitCode"], 4);
    assert_eq!(messages.last().unwrap(), &(2, json!({})));

    // Another sandbox's token, and a token of another key's sandbox, reach nothing here.
    let other = Sandbox::create(&base, OTHER_KEY).await;
    for token in ["not-the-token", other.token.as_str()] {
        let refused = send(sandbox.envd("GET", "", "/files?path=notes%2Fa.txt", token), Bytes::new()).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.text());
    }
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

//! E2B's protocol where the SDK does not go: missing and wrong keys and tokens, another
//! key's sandbox, unknown templates, malformed bodies, debug mode refused (off, or from a
//! peer that is not loopback), and a client that goes away mid-execution. The SDK itself
//! runs against `codebox serve` in codebox-cli's `e2b` tests.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::support::{KEY, OTHER_KEY, Reply, TestServer, client, eventually, test_config};

/// The fingerprint of [`KEY`]: `printf %s test-key-1 | sha256sum | cut -c1-12`.
const KEY_FINGERPRINT: &str = "1255558df586";

/// One E2B request: `headers` as given, a JSON body when there is one.
async fn e2b(server: &TestServer, method: Method, path: &str, headers: &[(&str, &str)], body: Option<Value>) -> Reply {
    let mut req = Request::builder().method(method).uri(server.url(path));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let body = match body {
        Some(json) => {
            req = req.header("content-type", "application/json");
            Bytes::from(json.to_string())
        }
        None => Bytes::new(),
    };
    let resp = client().request(req.body(Full::new(body)).unwrap()).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply { status, headers, body }
}

/// A sandbox of `key`: its id and access token.
async fn create(server: &TestServer, key: &str, body: Value) -> (String, String) {
    let reply = e2b(server, Method::POST, "/v2/sandboxes", &[("X-API-KEY", key)], Some(body)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let sandbox = reply.json();
    assert_eq!(sandbox["domain"], "codebox.invalid", "{sandbox}");
    assert_eq!(sandbox["envdVersion"], "0.5.7");
    assert_eq!(sandbox["envdAccessToken"], sandbox["trafficAccessToken"]);
    (sandbox["sandboxID"].as_str().unwrap().to_owned(), sandbox["envdAccessToken"].as_str().unwrap().to_owned())
}

/// Run `code` in sandbox `id` with `token`: the reply, its lines checked for E2B's traps.
async fn execute(server: &TestServer, id: &str, token: &str, body: Value) -> Reply {
    let headers = [("E2b-Sandbox-Id", id), ("E2b-Sandbox-Port", "49999"), ("X-Access-Token", token)];
    e2b(server, Method::POST, "/execute", &headers, Some(body)).await
}

fn stream_lines(reply: &Reply) -> Vec<Value> {
    let text = reply.text();
    assert!(text.ends_with('\n'), "{text:?}");
    text.lines()
        .map(|line| {
            assert!(!line.trim().is_empty(), "a blank line in {text:?}");
            let value: Value = serde_json::from_str(line).unwrap();
            assert!(value["type"].is_string(), "a line without a type: {line}");
            value
        })
        .collect()
}

#[tokio::test]
async fn the_control_plane_needs_a_key_and_answers_in_e2bs_error_shape() {
    let server = TestServer::start().await;
    for headers in [&[][..], &[("X-API-KEY", "not-a-key")][..]] {
        let reply = e2b(&server, Method::POST, "/v2/sandboxes", headers, Some(json!({}))).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text());
        assert_eq!(reply.json()["code"], 401);
        assert!(reply.json()["message"].is_string());
    }
    let key = [("X-API-KEY", KEY)];
    let unknown = e2b(&server, Method::POST, "/v2/sandboxes", &key, Some(json!({"templateID": "no-such"}))).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.text());
    assert_eq!(unknown.json()["code"], 404);
    assert!(unknown.text().contains("no-such"), "{}", unknown.text());
    let mut req = Request::post(server.url("/v2/sandboxes")).header("X-API-KEY", KEY);
    req = req.header("content-type", "application/json");
    let resp = client().request(req.body(Full::new(Bytes::from("{\"templateID\": "))).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["code"], 400, "{body}");
    let bad_env = json!({"templateID": "base", "envVars": {"CODEBOX_X": "1"}});
    let reply = e2b(&server, Method::POST, "/v2/sandboxes", &key, Some(bad_env)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    let nothing = e2b(&server, Method::GET, "/sandboxes/x/nothing-here", &key, None).await;
    assert_eq!(nothing.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_sandbox_lives_lists_and_dies_for_its_own_key_only() {
    let server = TestServer::start().await;
    let key = [("X-API-KEY", KEY)];
    let other = [("X-API-KEY", OTHER_KEY)];
    let (id, _) = create(&server, KEY, json!({"templateID": "code-interpreter-v1", "metadata": {"team": "a"}})).await;
    let info = e2b(&server, Method::GET, &format!("/sandboxes/{id}"), &key, None).await;
    assert_eq!(info.status, StatusCode::OK, "{}", info.text());
    let info = info.json();
    assert_eq!(info["sandboxID"], id.as_str());
    assert_eq!(info["templateID"], "code-interpreter-v1");
    assert_eq!(info["state"], "running");
    assert_eq!(info["metadata"], json!({"team": "a"}));
    for field in ["clientID", "startedAt", "endAt", "envdVersion", "cpuCount", "memoryMB", "diskSizeMB"] {
        assert!(!info[field].is_null(), "{field} missing from {info}");
    }
    // The session is an ordinary session of the key.
    let native = server.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(native.status, StatusCode::OK);
    // Another key's sandbox does not exist for it.
    for (method, path) in [
        (Method::GET, format!("/sandboxes/{id}")),
        (Method::DELETE, format!("/sandboxes/{id}")),
        (Method::POST, format!("/sandboxes/{id}/timeout")),
        (Method::POST, format!("/v2/sandboxes/{id}/connect")),
        (Method::GET, format!("/sandboxes/{id}/metrics")),
    ] {
        let reply = e2b(&server, method.clone(), &path, &other, Some(json!({"timeout": 60}))).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{method} {path}: {}", reply.text());
        assert_eq!(reply.json()["code"], 404);
    }
    let listed = e2b(&server, Method::GET, "/v2/sandboxes", &other, None).await;
    assert_eq!(listed.json(), json!([]));
    let timeout_path = format!("/sandboxes/{id}/timeout");
    let timeout = e2b(&server, Method::POST, &timeout_path, &key, Some(json!({"timeout": 60}))).await;
    assert_eq!(timeout.status, StatusCode::NO_CONTENT);
    let too_long = json!({"timeout": 10 * 86_400});
    let reply = e2b(&server, Method::POST, &format!("/sandboxes/{id}/timeout"), &key, Some(too_long)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    let connect = e2b(&server, Method::POST, &format!("/v2/sandboxes/{id}/connect"), &key, Some(json!({}))).await;
    assert_eq!(connect.status, StatusCode::OK, "{}", connect.text());
    // This server keeps no state directory: pausing is refused with a message.
    let pause = e2b(&server, Method::POST, &format!("/sandboxes/{id}/pause"), &key, Some(json!({}))).await;
    assert!(pause.status.is_client_error() || pause.status.is_server_error(), "{}", pause.text());
    assert!(pause.json()["message"].as_str().unwrap().contains("pause"), "{}", pause.text());
    // The scripted box measures nothing: no samples.
    let metrics_path = format!("/sandboxes/{id}/metrics?start=0&end=9999999999");
    let metrics = e2b(&server, Method::GET, &metrics_path, &key, None).await;
    assert_eq!(metrics.json(), json!([]));
    let kill = e2b(&server, Method::DELETE, &format!("/sandboxes/{id}"), &key, None).await;
    assert_eq!(kill.status, StatusCode::NO_CONTENT);
    let again = e2b(&server, Method::DELETE, &format!("/sandboxes/{id}"), &key, None).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn listings_filter_by_metadata_and_state_and_come_in_pages() {
    let server = TestServer::start().await;
    let key = [("X-API-KEY", KEY)];
    for i in 0..3 {
        create(&server, KEY, json!({"metadata": {"run": "list test", "n": i.to_string()}})).await;
    }
    create(&server, KEY, json!({"metadata": {"run": "other"}})).await;
    // The SDK encodes the metadata filter, and then the parameter again.
    let first = e2b(&server, Method::GET, "/v2/sandboxes?metadata=run%3Dlist%2Btest&state=running&limit=2", &key, None);
    let first = first.await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    assert_eq!(first.json().as_array().unwrap().len(), 2);
    let next = first.headers.get("x-next-token").expect("a next page").to_str().unwrap().to_owned();
    let path = format!("/v2/sandboxes?metadata=run%3Dlist%2Btest&limit=2&nextToken={next}");
    let second = e2b(&server, Method::GET, &path, &key, None).await;
    assert_eq!(second.json().as_array().unwrap().len(), 1, "{}", second.text());
    assert!(second.headers.get("x-next-token").is_none(), "the last page has no next token");
    let paused = e2b(&server, Method::GET, "/v2/sandboxes?state=paused", &key, None).await;
    assert_eq!(paused.json(), json!([]));
    let bad = e2b(&server, Method::GET, "/v2/sandboxes?state=sleeping", &key, None).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn sandbox_traffic_needs_the_sandboxs_own_token() {
    let server = TestServer::start().await;
    let (id, token) = create(&server, KEY, json!({})).await;
    let (other_id, other_token) = create(&server, OTHER_KEY, json!({})).await;
    let code = json!({"code": "print hi"});
    let bare = [("E2b-Sandbox-Id", id.as_str()), ("E2b-Sandbox-Port", "49999")];
    let no_token = e2b(&server, Method::POST, "/execute", &bare, Some(code.clone())).await;
    assert_eq!(no_token.status, StatusCode::UNAUTHORIZED, "{}", no_token.text());
    for (sandbox, wrong) in
        [(id.as_str(), "0".repeat(64)), (id.as_str(), other_token.clone()), (&other_id, token.clone())]
    {
        let reply = execute(&server, sandbox, &wrong, code.clone()).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{sandbox}: {}", reply.text());
        assert_eq!(reply.json()["code"], 401);
    }
    // envd traffic is held to the same token (the traffic token header counts too).
    let envd = [("E2b-Sandbox-Id", id.as_str()), ("E2b-Sandbox-Port", "49983"), ("X-Access-Token", "nope")];
    assert_eq!(e2b(&server, Method::GET, "/health", &envd, None).await.status, StatusCode::UNAUTHORIZED);
    let contexts = [("E2b-Sandbox-Id", id.as_str()), ("E2b-Sandbox-Port", "49999")];
    let traffic = [contexts[0], contexts[1], ("E2B-Traffic-Access-Token", token.as_str())];
    let health = e2b(&server, Method::GET, "/health", &traffic, None).await;
    assert_eq!(health.status, StatusCode::OK, "{}", health.text());
    // A killed sandbox's token is good no more, even for a new sandbox of the same key.
    let kill = e2b(&server, Method::DELETE, &format!("/sandboxes/{id}"), &[("X-API-KEY", KEY)], None).await;
    assert_eq!(kill.status, StatusCode::NO_CONTENT);
    let reply = execute(&server, &id, &token, code).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text());
}

#[tokio::test]
async fn executions_stream_e2bs_lines_and_refuse_bad_requests() {
    let server = TestServer::start().await;
    let (id, token) = create(&server, KEY, json!({})).await;
    let reply = execute(&server, &id, &token, json!({"code": "print hi", "context_id": null, "language": null})).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let lines = stream_lines(&reply);
    assert_eq!(lines[0]["type"], "number_of_executions", "{lines:?}");
    assert_eq!(lines[1], json!({"type": "stdout", "text": "hi\n", "timestamp": lines[1]["timestamp"]}));
    assert!(lines[1]["timestamp"].is_string());
    assert_eq!(lines.last().unwrap()["type"], "end_of_execution");
    let raised = stream_lines(&execute(&server, &id, &token, json!({"code": "raise"})).await);
    let error = raised.iter().find(|l| l["type"] == "error").expect("an error line");
    assert_eq!(error["name"], "ValueError");
    assert_eq!(error["value"], "bad");
    assert!(error["traceback"].is_string(), "{error}");
    let both = json!({"code": "print x", "context_id": "c1", "language": "python"});
    let reply = execute(&server, &id, &token, both).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    assert_eq!(reply.json()["code"], 400);
    let headers = [("E2b-Sandbox-Id", id.as_str()), ("E2b-Sandbox-Port", "49999"), ("X-Access-Token", token.as_str())];
    let mut req = Request::post(server.url("/execute")).header("content-type", "application/json");
    for (name, value) in headers {
        req = req.header(name, value);
    }
    let resp = client().request(req.body(Full::new(Bytes::from("{\"code\": 1"))).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let missing = execute(&server, &id, &token, json!({"language": "python"})).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST, "{}", missing.text());
    let nowhere = e2b(&server, Method::GET, "/nowhere", &headers, None).await;
    assert_eq!(nowhere.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_prefix_serves_the_same_surface() {
    let server = TestServer::start().await;
    let reply = e2b(&server, Method::POST, "/e2b/v2/sandboxes", &[("X-API-KEY", KEY)], Some(json!({}))).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let id = reply.json()["sandboxID"].as_str().unwrap().to_owned();
    let token = reply.json()["envdAccessToken"].as_str().unwrap().to_owned();
    let headers = [("E2b-Sandbox-Id", id.as_str()), ("E2b-Sandbox-Port", "49999"), ("X-Access-Token", token.as_str())];
    let run = e2b(&server, Method::POST, "/e2b/execute", &headers, Some(json!({"code": "print p"}))).await;
    assert_eq!(run.status, StatusCode::OK, "{}", run.text());
    assert!(stream_lines(&run).iter().any(|l| l["text"] == "p\n"));
}

#[tokio::test]
async fn a_client_that_goes_away_interrupts_its_code() {
    let server = TestServer::start().await;
    let (id, token) = create(&server, KEY, json!({})).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let body = json!({"code": "wait"}).to_string();
    let head = format!(
        "POST /execute HTTP/1.1\r\nHost: x\r\nE2b-Sandbox-Id: {id}\r\nE2b-Sandbox-Port: 49999\r\n\
         X-Access-Token: {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut reader = BufReader::new(stream);
    let mut seen = String::new();
    while !seen.contains("waiting") {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).await.unwrap() > 0, "the stream ended early: {seen}");
        seen.push_str(&line);
    }
    drop(reader);
    let probe = server.factory.probe(0);
    eventually("the execution to be cancelled", || probe.cancelled.load(Ordering::SeqCst) == 1).await;
}

#[tokio::test]
async fn debug_mode_is_refused_unless_the_operator_allows_it() {
    let server = TestServer::start().await;
    let debug = [("E2b-Sandbox-Id", "debug_sandbox_id"), ("E2b-Sandbox-Port", "49999")];
    let refused = e2b(&server, Method::POST, "/execute", &debug, Some(json!({"code": "print d"}))).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.text());
    assert!(refused.text().contains("debug mode is off"), "{}", refused.text());
    assert!(server.factory.probes.lock().unwrap().is_empty(), "no session was made");

    let server = TestServer::with_config(test_config().with_e2b_debug_as(KEY_FINGERPRINT)).await;
    let run = e2b(&server, Method::POST, "/execute", &debug, Some(json!({"code": "print d"}))).await;
    assert_eq!(run.status, StatusCode::OK, "{}", run.text());
    assert!(stream_lines(&run).iter().any(|l| l["text"] == "d\n"));
    // The debug sandbox is a session of the key debug traffic acts as.
    assert_eq!(server.get("/v1/sessions/debug_sandbox_id").await.status, StatusCode::OK);
}

#[tokio::test]
async fn debug_mode_is_refused_from_a_peer_that_is_not_loopback() {
    // This machine's address on its outward interface (a UDP "connection" sends nothing).
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    probe.connect("192.0.2.1:9").or_else(|_| probe.connect("203.0.113.1:9")).expect("a route off this machine");
    let outward = probe.local_addr().unwrap().ip();
    assert!(!outward.is_loopback(), "this machine needs an address other than loopback for this test");
    let config = test_config().with_addr("0.0.0.0:0".parse().unwrap()).with_e2b_debug_as(KEY_FINGERPRINT);
    let server = TestServer::with_config(config).await;
    let mut stream = tokio::net::TcpStream::connect((outward, server.addr.port())).await.unwrap();
    let body = json!({"code": "print d"}).to_string();
    let head = format!(
        "POST /execute HTTP/1.1\r\nHost: x\r\nConnection: close\r\nE2b-Sandbox-Id: debug_sandbox_id\r\n\
         E2b-Sandbox-Port: 49999\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains("loopback"), "{answer}");
    assert!(server.factory.probes.lock().unwrap().is_empty(), "no session was made");
}

#[tokio::test]
async fn a_debug_key_that_names_no_key_is_refused_at_start() {
    let config = test_config().with_e2b_debug_as("000000000000");
    let factory = std::sync::Arc::new(crate::support::ScriptedFactory::default());
    let Err(err) = codebox_server::Server::bind(config, factory).await else {
        panic!("a server whose debug key names no key started");
    };
    assert!(err.to_string().contains("e2b_debug_as"), "{err}");
}

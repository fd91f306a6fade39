//! The native API's routes, each exercised over HTTP.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::json;

use crate::support::{KEY, OTHER_KEY, TestServer, eventually};

#[tokio::test]
async fn health_needs_no_key_and_metrics_do() {
    let server = TestServer::start().await;
    let health = server.send(Method::GET, "/health", None, None, Bytes::new()).await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json(), json!({"status": "ok"}));
    assert!(health.headers.contains_key("x-request-id"));

    let metrics = server.send(Method::GET, "/metrics", None, None, Bytes::new()).await;
    assert_eq!(metrics.status, StatusCode::UNAUTHORIZED);
    let metrics = server.get("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(metrics.text().contains("codebox_sessions 0\n"), "{}", metrics.text());
}

#[tokio::test]
async fn a_session_lives_until_it_is_deleted() {
    let server = TestServer::start().await;
    let created = server.post_json("/v1/sessions", json!({"id": "mine"})).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let info = created.json();
    assert_eq!(info["id"], "mine");
    assert_eq!(info["status"]["state"], "idle");
    assert_eq!(info["capabilities"]["max_upload_bytes"], codebox_server::DEFAULT_MAX_UPLOAD_BYTES);

    // Asking for the same id again attaches.
    let again = server.post_json("/v1/sessions", json!({"id": "mine"})).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(server.factory.created.load(Ordering::SeqCst), 1);

    // A session made with no body gets a fresh id.
    let fresh = server.send(Method::POST, "/v1/sessions", Some(KEY), None, Bytes::new()).await;
    assert_eq!(fresh.status, StatusCode::CREATED, "{}", fresh.text());
    let fresh_id = fresh.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(fresh_id.len(), 32);

    let listed = server.get("/v1/sessions").await.json();
    let ids: BTreeSet<&str> = listed.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, BTreeSet::from(["mine", fresh_id.as_str()]));

    assert_eq!(server.get("/v1/sessions/mine").await.json()["id"], "mine");
    let deleted = server.send(Method::DELETE, "/v1/sessions/mine", Some(KEY), None, Bytes::new()).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert!(server.factory.probe(0).stopped.load(Ordering::SeqCst), "the box was stopped");
    assert_eq!(server.get("/v1/sessions/mine").await.status, StatusCode::NOT_FOUND);
    let deleted = server.send(Method::DELETE, "/v1/sessions/mine", Some(KEY), None, Bytes::new()).await;
    assert_eq!(deleted.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn executions_stream_numbered_events_and_end() {
    let server = TestServer::start().await;
    let id = server.session().await;
    let reply = server.post_json(&format!("/v1/sessions/{id}/execute"), json!({"code": "print hi"})).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["content-type"], "application/x-ndjson");
    let lines = reply.lines();
    assert_eq!(lines[0], json!({"seq": 0, "event": {"type": "stdout", "text": "hi\n"}}));
    assert_eq!(lines[1]["seq"], 1);
    assert_eq!(lines[1]["event"]["type"], "end");
    assert_eq!(lines[1]["event"]["outcome"], "ok");

    let reply = server.post_json(&format!("/v1/sessions/{id}/execute"), json!({"code": "raise"})).await;
    let lines = reply.lines();
    assert_eq!(lines[0]["event"]["type"], "error");
    assert_eq!(lines[0]["event"]["name"], "ValueError");
    assert_eq!(lines[1]["event"]["outcome"], "error");
}

#[tokio::test]
async fn a_box_failing_mid_execution_ends_the_stream_with_an_error_line() {
    let server = TestServer::start().await;
    let id = server.session().await;
    let lines = server.post_json(&format!("/v1/sessions/{id}/execute"), json!({"code": "die"})).await.lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["seq"], 0);
    assert_eq!(
        lines[1],
        json!({"seq": 1, "error": {
            "kind": "kernel_died",
            "message": "kernel died: killed by signal 9 (SIGKILL)",
            "cause": {"type": "signaled", "signal": 9},
        }})
    );
    let metrics = server.get("/metrics").await.text();
    assert!(metrics.contains("codebox_executions_total{outcome=\"failed\"} 1"), "{metrics}");
}

#[tokio::test]
async fn silence_gets_keepalive_lines_and_interrupt_ends_the_execution() {
    let server = TestServer::start().await;
    let id = server.session().await;
    let url = server.url(&format!("/v1/sessions/{id}/execute"));
    let client = reqwest_like::client();
    let mut resp = reqwest_like::post_json(&client, &url, KEY, json!({"code": "wait"})).await;
    let first = reqwest_like::next_line(&mut resp).await.unwrap();
    assert_eq!(first["event"]["text"], "waiting\n");
    let second = reqwest_like::next_line(&mut resp).await.unwrap();
    assert_eq!(second, json!({"keepalive": true}));

    let interrupted =
        server.send(Method::POST, &format!("/v1/sessions/{id}/interrupt"), Some(KEY), None, Bytes::new()).await;
    assert_eq!(interrupted.status, StatusCode::NO_CONTENT);
    let mut last = json!(null);
    while let Some(line) = reqwest_like::next_line(&mut resp).await {
        last = line;
    }
    assert_eq!(last["event"]["type"], "end");
    assert_eq!(last["event"]["outcome"], "interrupted");
    assert_eq!(last["seq"], 1);
}

#[tokio::test]
async fn files_go_up_come_back_list_and_delete() {
    let server = TestServer::start().await;
    let id = server.session().await;
    let content = Bytes::from(vec![7u8; 300_000]);
    let put = server
        .send(Method::PUT, &format!("/v1/sessions/{id}/files/dir/a%20b.bin"), Some(KEY), None, content.clone())
        .await;
    assert_eq!(put.status, StatusCode::CREATED, "{}", put.text());
    assert_eq!(put.json()["path"], "dir/a b.bin");
    assert_eq!(put.json()["size"], 300_000);

    let got = server.get(&format!("/v1/sessions/{id}/files/dir/a%20b.bin")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.headers["content-length"], "300000");
    assert_eq!(got.body, content);

    let listed = server.get(&format!("/v1/sessions/{id}/files?dir=dir")).await;
    assert_eq!(listed.json()[0]["name"], "a b.bin");

    let deleted = server
        .send(Method::DELETE, &format!("/v1/sessions/{id}/files/dir/a%20b.bin"), Some(KEY), None, Bytes::new())
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(server.get(&format!("/v1/sessions/{id}/files/dir/a%20b.bin")).await.status, StatusCode::NOT_FOUND);
    let metrics = server.get("/metrics").await.text();
    assert!(metrics.contains("codebox_file_bytes_total{direction=\"upload\"} 300000"), "{metrics}");
    assert!(metrics.contains("codebox_file_bytes_total{direction=\"download\"} 300000"), "{metrics}");
}

#[tokio::test]
async fn install_commands_restart() {
    let server = TestServer::start().await;
    let id = server.session().await;
    let install = server.post_json(&format!("/v1/sessions/{id}/install"), json!({"packages": ["requests==2.0"]})).await;
    assert_eq!(install.json(), json!({"output": "installed requests==2.0"}));
    let cmd = server.post_json(&format!("/v1/sessions/{id}/commands"), json!({"program": "echo", "args": ["a"]})).await;
    assert_eq!(cmd.json()["stdout"], "echo a\n");
    assert_eq!(cmd.json()["exit_code"], 0);
    let restart = server.send(Method::POST, &format!("/v1/sessions/{id}/restart"), Some(KEY), None, Bytes::new()).await;
    assert_eq!(restart.status, StatusCode::NO_CONTENT);
}

// A box that cannot list its packages says so in its capabilities, and the route answers
// 501 with the box's reason; an unknown session is 404.
#[tokio::test]
async fn packages_of_a_box_that_cannot_list_them_are_unsupported() {
    let server = TestServer::start().await;
    let id = server.session().await;
    let session = server.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(session.json()["capabilities"]["packages"], false, "{:?}", session.json());
    let packages = server.get(&format!("/v1/sessions/{id}/packages")).await;
    assert_eq!(packages.status, StatusCode::NOT_IMPLEMENTED);
    assert_eq!(packages.error_kind(), "unsupported");
    assert_eq!(server.get("/v1/sessions/no-such-session/packages").await.status, StatusCode::NOT_FOUND);
}

// A box without a history says so, and both routes answer 501; a bad `limit` is 400 before
// the box is asked; an unknown session is 404.
#[tokio::test]
async fn history_of_a_box_without_one_is_unsupported_and_bad_limits_are_refused() {
    let server = TestServer::start().await;
    let id = server.session().await;
    let session = server.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(session.json()["capabilities"]["history"], false, "{:?}", session.json());
    for path in [
        format!("/v1/sessions/{id}/history"),
        format!("/v1/sessions/{id}/history?limit=5"),
        format!("/v1/sessions/{id}/stats"),
    ] {
        let reply = server.get(&path).await;
        assert_eq!(reply.status, StatusCode::NOT_IMPLEMENTED, "{path}");
        assert_eq!(reply.error_kind(), "unsupported", "{path}");
    }
    for query in ["limit=10001", "limit=ten", "limit=-1", "since=1"] {
        let reply = server.get(&format!("/v1/sessions/{id}/history?{query}")).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(reply.error_kind(), "invalid_input", "{query}");
    }
    assert_eq!(server.get("/v1/sessions/no-such-session/history").await.status, StatusCode::NOT_FOUND);
    assert_eq!(server.get("/v1/sessions/no-such-session/stats").await.status, StatusCode::NOT_FOUND);
}

// A box without code contexts says so, and every context route answers 501; an unknown
// session is 404 first.
#[tokio::test]
async fn contexts_of_a_box_without_them_are_unsupported() {
    let server = TestServer::start().await;
    let id = server.session().await;
    let session = server.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(session.json()["capabilities"]["contexts"], false, "{:?}", session.json());
    for (method, path) in [
        (Method::POST, format!("/v1/sessions/{id}/contexts")),
        (Method::GET, format!("/v1/sessions/{id}/contexts")),
        (Method::POST, format!("/v1/sessions/{id}/contexts/c1/restart")),
        (Method::POST, format!("/v1/sessions/{id}/contexts/c1/interrupt")),
        (Method::DELETE, format!("/v1/sessions/{id}/contexts/c1")),
    ] {
        let reply = server.send(method, &path, Some(KEY), None, Bytes::new()).await;
        assert_eq!(reply.status, StatusCode::NOT_IMPLEMENTED, "{path}");
        assert_eq!(reply.error_kind(), "unsupported", "{path}");
    }
    let missing =
        server.send(Method::GET, "/v1/sessions/no-such-session/contexts", Some(KEY), None, Bytes::new()).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

// A box that does not measure itself says so and its metrics route answers 501; a bad
// `since` is 400 before the box is asked; another key's session and an unknown one are 404.
#[tokio::test]
async fn metrics_of_a_box_without_them_are_unsupported_and_bad_since_is_refused() {
    let server = TestServer::start().await;
    let id = server.session().await;
    let session = server.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(session.json()["capabilities"]["metrics"], false, "{:?}", session.json());
    for path in [format!("/v1/sessions/{id}/metrics"), format!("/v1/sessions/{id}/metrics?since=0")] {
        let reply = server.get(&path).await;
        assert_eq!(reply.status, StatusCode::NOT_IMPLEMENTED, "{path}");
        assert_eq!(reply.error_kind(), "unsupported", "{path}");
    }
    for query in ["since=soon", "since=1.5", "since=-1", "since=", "limit=1"] {
        let reply = server.get(&format!("/v1/sessions/{id}/metrics?{query}")).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(reply.error_kind(), "invalid_input", "{query}");
    }
    let path = format!("/v1/sessions/{id}/metrics");
    let theirs = server.send(Method::GET, &path, Some(OTHER_KEY), None, Bytes::new()).await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND);
    assert_eq!(server.get("/v1/sessions/no-such-session/metrics").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn sessions_belong_to_their_key() {
    let server = TestServer::start().await;
    let id = server.session().await;
    for (method, path) in [
        (Method::GET, format!("/v1/sessions/{id}")),
        (Method::DELETE, format!("/v1/sessions/{id}")),
        (Method::GET, format!("/v1/sessions/{id}/files/x")),
        (Method::POST, format!("/v1/sessions/{id}/interrupt")),
        (Method::GET, format!("/v1/sessions/{id}/packages")),
        (Method::GET, format!("/v1/sessions/{id}/history")),
        (Method::GET, format!("/v1/sessions/{id}/stats")),
        (Method::GET, format!("/v1/sessions/{id}/contexts")),
        (Method::DELETE, format!("/v1/sessions/{id}/contexts/c1")),
    ] {
        let reply = server.send(method, &path, Some(OTHER_KEY), None, Bytes::new()).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(reply.error_kind(), "not_found");
    }
    let other_list = server.send(Method::GET, "/v1/sessions", Some(OTHER_KEY), None, Bytes::new()).await;
    assert_eq!(other_list.json(), json!([]));
    // The same id under another key is another session.
    let theirs = server
        .send(Method::POST, "/v1/sessions", Some(OTHER_KEY), Some("application/json"), json!({"id": id}).to_string())
        .await;
    assert_eq!(theirs.status, StatusCode::CREATED);
    assert_eq!(server.factory.created.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn idle_sessions_are_reaped() {
    let config = crate::support::test_config().with_idle_timeout(std::time::Duration::from_millis(100));
    let server = TestServer::with_config(config).await;
    let id = server.session().await;
    let probe = server.factory.probe(0);
    eventually("the idle session to be stopped", || probe.stopped.load(Ordering::SeqCst)).await;
    assert_eq!(server.get(&format!("/v1/sessions/{id}")).await.status, StatusCode::NOT_FOUND);
    assert!(server.get("/metrics").await.text().contains("codebox_sessions_reaped_total 1"));
}

#[tokio::test]
async fn shutdown_interrupts_running_executions_and_stops_every_box() {
    let mut server = TestServer::start().await;
    let id = server.session().await;
    let _other = server.session().await;
    let client = reqwest_like::client();
    let url = server.url(&format!("/v1/sessions/{id}/execute"));
    let mut resp = reqwest_like::post_json(&client, &url, KEY, json!({"code": "wait"})).await;
    assert_eq!(reqwest_like::next_line(&mut resp).await.unwrap()["event"]["text"], "waiting\n");
    let reader = tokio::spawn(async move {
        let mut last = json!(null);
        while let Some(line) = reqwest_like::next_line(&mut resp).await {
            last = line;
        }
        last
    });
    server.shutdown().await;
    let last = reader.await.unwrap();
    assert_eq!(last["event"]["outcome"], "interrupted", "the execution ended cleanly: {last}");
    assert_eq!(server.factory.probe(0).interrupted.load(Ordering::SeqCst), 1);
    assert!(server.factory.probe(0).stopped.load(Ordering::SeqCst));
    assert!(server.factory.probe(1).stopped.load(Ordering::SeqCst));
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err(), "the listener is closed");
}

#[tokio::test]
async fn http2_is_served_on_the_same_port() {
    let server = TestServer::start().await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<Bytes>>();
    let req = hyper::Request::get(server.url("/health")).body(http_body_util::Full::new(Bytes::new())).unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
}

#[test]
fn the_openapi_document_lists_exactly_the_routes() {
    let doc: serde_json::Value = serde_json::from_str(include_str!("../../openapi.json")).unwrap();
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .filter(|m| *m != "parameters")
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String)> =
        codebox_server::routes().into_iter().map(|(m, p)| (m.to_string(), p.to_owned())).collect();
    assert_eq!(documented, served);
}

#[tokio::test]
async fn the_openapi_document_is_served() {
    let server = TestServer::start().await;
    let doc = server.get("/openapi.json").await;
    assert_eq!(doc.status, StatusCode::OK);
    assert!(doc.json()["openapi"].as_str().unwrap().starts_with("3."));
}

/// A streaming reader of NDJSON responses.
pub(crate) mod reqwest_like {
    use bytes::{Bytes, BytesMut};
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;

    pub(crate) struct Lines {
        body: Incoming,
        buf: BytesMut,
    }

    pub(crate) fn client() -> Client<HttpConnector, Full<Bytes>> {
        Client::builder(TokioExecutor::new()).build_http()
    }

    pub(crate) async fn post_json(
        client: &Client<HttpConnector, Full<Bytes>>,
        url: &str,
        key: &str,
        json: serde_json::Value,
    ) -> Lines {
        let req = hyper::Request::post(url)
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(json.to_string())))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        Lines { body: resp.into_body(), buf: BytesMut::new() }
    }

    pub(crate) async fn next_line(lines: &mut Lines) -> Option<serde_json::Value> {
        loop {
            if let Some(pos) = lines.buf.iter().position(|b| *b == b'\n') {
                let line = lines.buf.split_to(pos + 1);
                return Some(serde_json::from_slice(&line[..pos]).unwrap());
            }
            let frame = lines.body.frame().await?.ok()?;
            if let Ok(data) = frame.into_data() {
                lines.buf.extend_from_slice(&data);
            }
        }
    }
}

#[tokio::test]
async fn sessions_of_an_earlier_run_are_gone_with_410_and_deleted_ones_are_unknown() {
    let state = tempfile::tempdir().unwrap();
    let config = || crate::support::test_config().with_state_dir(state.path());
    let mut first = TestServer::with_config(config()).await;
    let kept = first.session().await;
    let deleted = first.session().await;
    let reply = first.send(Method::DELETE, &format!("/v1/sessions/{deleted}"), Some(KEY), None, Bytes::new()).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    // One server per state directory.
    let err = codebox_server::Server::bind(config(), first.factory.clone()).await.unwrap_err().to_string();
    assert!(err.contains("another server is using the state directory"), "{err}");
    first.shutdown().await;

    let second = TestServer::with_config(config()).await;
    let reply = second.get(&format!("/v1/sessions/{kept}")).await;
    assert_eq!(reply.status, StatusCode::GONE, "{}", reply.text());
    assert_eq!(reply.error_kind(), "session_lost");
    assert!(reply.text().contains("lost when the server restarted"), "{}", reply.text());
    let reply = second.post_json(&format!("/v1/sessions/{kept}/execute"), json!({"code": "1"})).await;
    assert_eq!(reply.status, StatusCode::GONE);
    let reply = second.send(Method::DELETE, &format!("/v1/sessions/{kept}"), Some(KEY), None, Bytes::new()).await;
    assert_eq!(reply.status, StatusCode::GONE);
    // Only to its owner; a session deleted on purpose is simply unknown.
    let reply = second.send(Method::GET, &format!("/v1/sessions/{kept}"), Some(OTHER_KEY), None, Bytes::new()).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(second.get(&format!("/v1/sessions/{deleted}")).await.status, StatusCode::NOT_FOUND);
    // Creating it again by name gives a working session.
    let reply = second.post_json("/v1/sessions", json!({"id": kept})).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    assert_eq!(second.get(&format!("/v1/sessions/{kept}")).await.status, StatusCode::OK);
}

//! A server that runs as one node of several: the session ids it mints name it, ids chosen
//! by clients still work, `/ready` follows draining, and a draining server keeps serving the
//! sessions it has while it refuses new ones.

use std::time::Duration;

use bytes::Bytes;
use codebox_server::{NODE_SEPARATOR, NodeId};
use hyper::{Method, StatusCode};

use crate::support::{KEY, TestServer, test_config};

fn node_server_config(node: &str) -> codebox_server::ServerConfig {
    test_config().with_node_id(NodeId::new(node).unwrap())
}

#[tokio::test]
async fn minted_ids_name_the_node_and_client_ids_keep_working() {
    let server = TestServer::with_config(node_server_config("codebox-3")).await;
    let id = server.session().await;
    let (node, random) = id.rsplit_once(NODE_SEPARATOR).unwrap();
    assert_eq!(node, "codebox-3");
    assert_eq!(random.len(), 32, "{id}");
    assert!(random.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    assert_eq!(server.get(&format!("/v1/sessions/{id}")).await.status, StatusCode::OK);

    // An id the client chose is taken as it is.
    let reply = server.post_json("/v1/sessions", serde_json::json!({"id": "my-own-id"})).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    assert_eq!(reply.json()["id"], "my-own-id");

    // codebox-api 0.1 ids are integers: they carry the ordinal in fixed places.
    let start = server.get("/api/v1/codebox/start").await;
    assert_eq!(start.status, StatusCode::OK, "{}", start.text());
    let int_id = start.json()["id"].as_u64().map(u128::from).unwrap_or_else(|| {
        // Wider than u64: read the number's digits.
        let text = start.text();
        let digits: String = text.chars().filter(char::is_ascii_digit).collect();
        digits.parse().unwrap()
    });
    let digits = int_id.to_string();
    assert_eq!(digits.len(), 38, "{digits}");
    assert!(digits.starts_with("10003"), "{digits}");
    assert_eq!(server.get(&format!("/api/v1/codebox/{digits}/")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_server_without_a_node_mints_plain_ids() {
    let server = TestServer::start().await;
    let id = server.session().await;
    assert!(!id.contains(NODE_SEPARATOR), "{id}");
    assert_eq!(id.len(), 32);
}

#[tokio::test]
async fn readiness_fails_while_draining_and_the_sessions_it_has_are_still_served() {
    let config = node_server_config("codebox-0").with_drain_period(Duration::from_secs(600));
    let mut server = TestServer::with_config(config).await;
    let ready = server.send(Method::GET, "/ready", None, None, Bytes::new()).await;
    assert_eq!((ready.status, ready.json()["status"].clone()), (StatusCode::OK, serde_json::json!("ready")));
    let id = server.session().await;

    // The shutdown signal starts the drain; the test's server has no state directory, so
    // the session cannot be paused and is served until the drain ends.
    let stop = server.stop_signal();
    stop.send(()).unwrap();
    crate::support::eventually_async("readiness to fail", || async {
        server.send(Method::GET, "/ready", None, None, Bytes::new()).await.status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let ready = server.send(Method::GET, "/ready", Some(KEY), None, Bytes::new()).await;
    assert_eq!(ready.json()["status"], "draining");
    assert_eq!(server.send(Method::GET, "/health", None, None, Bytes::new()).await.status, StatusCode::OK);

    let refused = server.post_json("/v1/sessions", serde_json::json!({})).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{}", refused.text());
    assert!(refused.headers.get("retry-after").is_some(), "{:?}", refused.headers);
    let execution =
        server.post_json(&format!("/v1/sessions/{id}/execute"), serde_json::json!({"code": "print hi"})).await;
    assert_eq!(execution.status, StatusCode::OK, "{}", execution.text());
    assert!(execution.text().contains("hi"), "{}", execution.text());

    // Once no session is left to serve, the drain ends early and the server goes down.
    let deleted = server.send(Method::DELETE, &format!("/v1/sessions/{id}"), Some(KEY), None, Bytes::new()).await;
    assert!(deleted.status.is_success(), "{}", deleted.text());
    server.shutdown().await;
}

//! Session parameters, lifetimes and listings at the HTTP level, over scripted boxes
//! (the same through real kernels and RemoteBox: codebox-remote's `sessions` tests).

use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::json;

use crate::support::{KEY, OTHER_KEY, TestServer, eventually, test_config};

#[tokio::test]
async fn session_bodies_that_do_not_parse_or_cross_a_bound_are_400() {
    let server = TestServer::start().await;
    for body in [
        json!({"metadata": {"k": 5}}),
        json!({"limits": {"cpus": "two"}}),
        json!({"timeout": -1}),
        json!({"env": ["A"]}),
    ] {
        let reply = server.post_json("/v1/sessions", body.clone()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(reply.text().contains("malformed JSON"), "{body}: {}", reply.text());
    }
    let reply = server.post_json("/v1/sessions", json!({"timeout": 86401})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.text().contains("maximum of 86400 s"), "{}", reply.text());
    let id = server.session().await;
    let path = format!("/v1/sessions/{id}/timeout");
    for body in [json!({}), json!({"timeout": "soon"}), json!({"timeout": 0}), json!({"timeout": 86401})] {
        let reply = server.post_json(&path, body.clone()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}: {}", reply.text());
        assert_eq!(reply.error_kind(), "invalid_input");
    }
    let reply = server.send(Method::POST, &path, Some(KEY), Some("text/plain"), "60").await;
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let reply = server.send(Method::POST, &path, Some(OTHER_KEY), Some("application/json"), r#"{"timeout":60}"#).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "another key's session");
    let reply = server.post_json(&path, json!({"timeout": 60})).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["timeout"], 60);
}

#[tokio::test]
async fn an_expired_session_is_stopped_and_gone_on_every_route_until_its_id_lives_again() {
    let server = TestServer::start().await;
    let reply = server.post_json("/v1/sessions", json!({"id": "brief", "timeout": 1})).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    assert_eq!(reply.json()["timeout"], 1);
    let probe = server.factory.probe(0);
    eventually("the expired session's box to stop", || probe.stopped.load(Ordering::SeqCst)).await;
    for (method, path) in [
        (Method::GET, "/v1/sessions/brief"),
        (Method::DELETE, "/v1/sessions/brief"),
        (Method::POST, "/v1/sessions/brief/interrupt"),
        (Method::GET, "/v1/sessions/brief/files"),
    ] {
        let reply = server.send(method.clone(), path, Some(KEY), None, "").await;
        assert_eq!(reply.status, StatusCode::GONE, "{method} {path}: {}", reply.text());
        assert_eq!(reply.error_kind(), "expired");
        assert!(reply.text().contains("session brief expired at 20"), "{}", reply.text());
    }
    let other = server.send(Method::GET, "/v1/sessions/brief", Some(OTHER_KEY), None, "").await;
    assert_eq!(other.status, StatusCode::NOT_FOUND, "only its owner is told");
    assert_eq!(server.get("/v1/sessions").await.json(), json!([]));
    // The same id created again is a new session; once deleted, it is simply not there.
    let reply = server.post_json("/v1/sessions", json!({"id": "brief"})).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert!(reply.json().get("expires_at").is_none(), "no lifetime asked for, none given");
    assert_eq!(server.get("/v1/sessions/brief").await.status, StatusCode::OK);
    let reply = server.send(Method::DELETE, "/v1/sessions/brief", Some(KEY), None, "").await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(server.get("/v1/sessions/brief").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_session_idles_out_on_its_own_idle_timeout() {
    let server = TestServer::with_config(test_config().with_idle_timeout(Duration::from_secs(3600))).await;
    let reply = server.post_json("/v1/sessions", json!({"id": "short", "idle_timeout": 1})).await;
    assert_eq!(reply.json()["idle_timeout"], 1);
    let patient = server.post_json("/v1/sessions", json!({"id": "patient"})).await;
    assert_eq!(patient.json()["idle_timeout"], 3600);
    let probe = server.factory.probe(0);
    eventually("the session to idle out", || probe.stopped.load(Ordering::SeqCst)).await;
    assert_eq!(server.get("/v1/sessions/short").await.status, StatusCode::NOT_FOUND);
    assert_eq!(server.get("/v1/sessions/patient").await.status, StatusCode::OK);
    let reply = server.post_json("/v1/sessions", json!({"idle_timeout": 3601})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.text().contains("maximum of 3600 s"), "{}", reply.text());
}

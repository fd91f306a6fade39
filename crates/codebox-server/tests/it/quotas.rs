//! Per-key request rates, per-key session quotas, operator keys, and the catalogue routes
//! (`/v1/templates`, `/v1/pool`), through a real server.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use codebox_core::{CodeBox, PoolStats, ResourceLimits, Result, TemplateInfo};
use codebox_server::{BoxFactory, BoxRequest, Server};
use hyper::{Method, StatusCode};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::support::{KEY, OTHER_KEY, ScriptedFactory, TestServer, client, request, test_config};

const OPERATOR_KEY: &str = "operator-key-1";

/// The fingerprint the server shows for `key`: the first 12 hex digits of its SHA-256.
fn fingerprint(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect::<String>()[..12].to_owned()
}

async fn get_as(server: &TestServer, path: &str, key: &str) -> crate::support::Reply {
    server.send(Method::GET, path, Some(key), None, Bytes::new()).await
}

#[tokio::test]
async fn a_key_over_its_rate_gets_429_with_retry_after_and_health_stays_open() {
    let server = TestServer::with_config(test_config().with_rate_limit(1, 3)).await;
    // The bucket starts full: the burst is served.
    for _ in 0..3 {
        assert_eq!(server.get("/v1/sessions").await.status, StatusCode::OK);
    }
    // One token a second comes back: long before 50 requests are through, one is refused.
    let mut refused = None;
    for _ in 0..50 {
        let reply = server.get("/v1/sessions").await;
        if reply.status != StatusCode::OK {
            refused = Some(reply);
            break;
        }
    }
    let refused = refused.expect("some request over the rate was refused");
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "{}", refused.text());
    assert_eq!(refused.error_kind(), "rate_limited");
    assert_eq!(refused.headers["retry-after"], "1", "whole seconds, at least 1");
    assert!(refused.text().contains("1 requests per second"), "{}", refused.text());
    // Refused before any work: no session was made by a refused create either.
    let create = server.post_json("/v1/sessions", json!({})).await;
    if create.status == StatusCode::TOO_MANY_REQUESTS {
        assert_eq!(server.factory.created.load(std::sync::atomic::Ordering::SeqCst), 0);
    }
    // Probes are never limited, and the other key has a bucket of its own.
    for _ in 0..20 {
        assert_eq!(server.send(Method::GET, "/health", None, None, Bytes::new()).await.status, StatusCode::OK);
        assert_eq!(server.send(Method::GET, "/health", Some(KEY), None, Bytes::new()).await.status, StatusCode::OK);
    }
    let metrics = get_as(&server, "/metrics", OTHER_KEY).await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(!metrics.text().contains("codebox_requests_rate_limited_total 0"), "{}", metrics.text());
}

#[tokio::test]
async fn the_compatibility_routes_share_the_key_s_rate() {
    let server = TestServer::with_config(test_config().with_rate_limit(1, 1)).await;
    assert_eq!(server.get("/v1/sessions").await.status, StatusCode::OK);
    let mut statuses = Vec::new();
    for _ in 0..50 {
        let reply = server.get("/api/v1/health").await;
        statuses.push(reply.status);
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(reply.headers["retry-after"], "1");
            return;
        }
    }
    panic!("the compatibility routes were never limited: {statuses:?}");
}

#[tokio::test]
async fn a_rate_of_zero_is_no_limit() {
    let server = TestServer::with_config(test_config().with_rate_limit(0, 0)).await;
    for _ in 0..300 {
        assert_eq!(server.get("/v1/sessions").await.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn a_bad_rate_configuration_is_refused_at_bind() {
    let factory = Arc::new(ScriptedFactory::default()) as Arc<dyn BoxFactory>;
    let err = Server::bind(test_config().with_rate_limit(5, 0), factory).await.unwrap_err();
    assert!(err.to_string().contains("rate_burst must be at least 1"), "{err}");
}

#[tokio::test]
async fn the_session_quota_s_429_carries_retry_after() {
    let server = TestServer::with_config(test_config().with_max_sessions_per_key(1)).await;
    server.session().await;
    let over = server.post_json("/v1/sessions", json!({})).await;
    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS, "{}", over.text());
    assert_eq!(over.error_kind(), "rate_limited");
    assert_eq!(over.headers["retry-after"], "5", "the server's retry_after, in whole seconds");
}

#[tokio::test]
async fn an_operator_sees_and_stops_every_key_s_sessions_and_a_normal_key_cannot() {
    let server = TestServer::with_config(test_config().with_operator_key(OPERATOR_KEY)).await;
    let mine = server.session().await;
    let theirs = server.send(Method::POST, "/v1/sessions", Some(OTHER_KEY), Some("application/json"), "{}").await;
    let theirs = theirs.json()["id"].as_str().unwrap().to_owned();

    // A normal key: its own sessions only, without an owner field; another's is 404.
    let listed = server.get("/v1/sessions").await.json();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], mine.as_str());
    assert!(listed[0].get("owner").is_none(), "{listed:?}");
    let path = format!("/v1/sessions/{theirs}");
    assert_eq!(get_as(&server, &path, KEY).await.status, StatusCode::NOT_FOUND);
    let refused = server.send(Method::DELETE, &path, Some(KEY), None, Bytes::new()).await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND);
    assert_eq!(get_as(&server, &path, OTHER_KEY).await.status, StatusCode::OK, "still there");

    // The operator: every session, each with its owner's fingerprint and never a key.
    let all = get_as(&server, "/v1/sessions", OPERATOR_KEY).await;
    assert_eq!(all.status, StatusCode::OK);
    assert!(!all.text().contains(KEY) && !all.text().contains(OTHER_KEY), "{}", all.text());
    let all = all.json();
    let owners: Vec<(String, String)> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_str().unwrap().to_owned(), s["owner"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(owners.len(), 2, "{owners:?}");
    assert!(owners.contains(&(mine.clone(), fingerprint(KEY))), "{owners:?}");
    assert!(owners.contains(&(theirs.clone(), fingerprint(OTHER_KEY))), "{owners:?}");
    let one = get_as(&server, &path, OPERATOR_KEY).await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.json()["owner"], fingerprint(OTHER_KEY).as_str());

    // ... and stops another key's session: its box is stopped and its owner sees it gone.
    let stopped = server.send(Method::DELETE, &path, Some(OPERATOR_KEY), None, Bytes::new()).await;
    assert_eq!(stopped.status, StatusCode::NO_CONTENT, "{}", stopped.text());
    assert_eq!(get_as(&server, &path, OTHER_KEY).await.status, StatusCode::NOT_FOUND);
    assert!(server.factory.probe(1).stopped.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(get_as(&server, &format!("/v1/sessions/{mine}"), KEY).await.status, StatusCode::OK);
    assert_eq!(get_as(&server, &path, OPERATOR_KEY).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_operator_naming_an_id_several_keys_use_gets_409() {
    let server = TestServer::with_config(test_config().with_operator_key(OPERATOR_KEY)).await;
    for key in [KEY, OTHER_KEY] {
        let reply =
            server.send(Method::POST, "/v1/sessions", Some(key), Some("application/json"), r#"{"id":"shared"}"#).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    }
    let reply = server.send(Method::DELETE, "/v1/sessions/shared", Some(OPERATOR_KEY), None, Bytes::new()).await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.text());
    assert!(reply.text().contains("several keys"), "{}", reply.text());
    // Each owner still has its own.
    for key in [KEY, OTHER_KEY] {
        assert_eq!(get_as(&server, "/v1/sessions/shared", key).await.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn an_operator_key_that_is_also_a_normal_key_is_refused() {
    let factory = Arc::new(ScriptedFactory::default()) as Arc<dyn BoxFactory>;
    let err = Server::bind(test_config().with_operator_key(KEY), factory).await.unwrap_err();
    assert!(err.to_string().contains("give each key one role"), "{err}");
}

/// A factory with a catalogue and a pool to describe; boxes come from a [`ScriptedFactory`].
#[derive(Debug, Default)]
struct CatalogueFactory {
    boxes: ScriptedFactory,
}

fn catalogue() -> Vec<TemplateInfo> {
    let mut python = TemplateInfo::new("python", "python3", "python");
    python.description = "Python with the data stack".into();
    python.packages = vec!["numpy".into(), "pandas".into()];
    python.limits = ResourceLimits::new().with_memory_bytes(1 << 30);
    python.builtin = true;
    python.ready = true;
    vec![python, TemplateInfo::new("bash", "bash", "bash")]
}

fn pools() -> Vec<PoolStats> {
    let mut python = PoolStats::new("python");
    python.target = 2;
    python.ready = 1;
    python.starting = 1;
    python.hits = 7;
    python.misses = 3;
    vec![python]
}

#[async_trait]
impl BoxFactory for CatalogueFactory {
    async fn create(&self, request: &BoxRequest) -> Result<Arc<dyn CodeBox>> {
        self.boxes.create(request).await
    }

    fn templates(&self) -> Vec<TemplateInfo> {
        catalogue()
    }

    fn pool_stats(&self) -> Vec<PoolStats> {
        pools()
    }
}

#[tokio::test]
async fn templates_and_pool_answer_with_the_factory_s_catalogue() {
    let server = Server::bind(test_config(), Arc::new(CatalogueFactory::default())).await.unwrap();
    let addr = server.local_addr();
    let task = tokio::spawn(server.run_until(std::future::pending()));
    let client = client();
    let get = |path: &'static str, key: Option<&'static str>| {
        let client = client.clone();
        async move { request(&client, addr, Method::GET, path, key, None, Bytes::new()).await }
    };
    let templates = get("/v1/templates", Some(KEY)).await;
    assert_eq!(templates.status, StatusCode::OK, "{}", templates.text());
    let listed: Vec<TemplateInfo> = serde_json::from_slice(&templates.body).unwrap();
    assert_eq!(listed, catalogue());
    assert_eq!(templates.json()[0]["limits"]["memory_bytes"], 1 << 30);
    let pool = get("/v1/pool", Some(KEY)).await;
    assert_eq!(pool.status, StatusCode::OK, "{}", pool.text());
    let stats: Vec<PoolStats> = serde_json::from_slice(&pool.body).unwrap();
    assert_eq!(stats, pools());
    assert_eq!(pool.json()[0]["hits"], 7);
    // Authenticated like every other route.
    for path in ["/v1/templates", "/v1/pool"] {
        let reply = get(path, None).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(get(path, Some("not-a-key")).await.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let wrong = request(&client, addr, Method::POST, "/v1/pool", Some(KEY), None, Bytes::new()).await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong.headers["allow"], "GET");
    task.abort();
}

#[tokio::test]
async fn a_factory_without_a_catalogue_lists_empty_arrays() {
    let server = TestServer::start().await;
    for path in ["/v1/templates", "/v1/pool"] {
        let reply = server.get(path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert_eq!(reply.json(), json!([]), "{path}");
    }
}

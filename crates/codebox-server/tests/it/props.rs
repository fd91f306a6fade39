//! Property tests of the JSON a tenant sends: any body on any route that reads JSON gets an
//! answer (never a dropped connection from a panicking handler, never a 500), and the
//! server keeps answering after it.

use bytes::Bytes;
use hyper::{Method, StatusCode};
use proptest::prelude::*;

use crate::support::{KEY, TestServer};

/// Any JSON value, the numbers that break duration conversions included.
fn json() -> impl Strategy<Value = serde_json::Value> {
    let number = prop_oneof![
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(serde_json::Value::Number)),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        prop_oneof![Just(1e300), Just(1.9e19), Just(-1.0), Just(f64::MAX), Just(1.8446744073709552e19)]
            .prop_map(serde_json::Value::from),
    ];
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        number,
        ".{0,8}".prop_map(serde_json::Value::from),
    ];
    let keys = prop_oneof![
        Just("code".to_owned()),
        Just("options".to_owned()),
        Just("timeout".to_owned()),
        Just("cwd".to_owned()),
        Just("env".to_owned()),
        Just("program".to_owned()),
        Just("args".to_owned()),
        Just("packages".to_owned()),
        Just("kernel".to_owned()),
        Just("id".to_owned()),
        Just("language".to_owned()),
        "[a-z]{1,6}",
    ];
    leaf.prop_recursive(3, 24, 4, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(keys.clone(), inner, 0..5)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The routes that read a JSON body, for session `id`.
fn routes(id: &str) -> Vec<String> {
    vec![
        "/v1/sessions".to_owned(),
        format!("/v1/sessions/{id}/execute"),
        format!("/v1/sessions/{id}/commands"),
        format!("/v1/sessions/{id}/install"),
        format!("/api/v2/codebox/{id}/exec"),
        format!("/api/v1/codebox/{id}/run"),
    ]
}

#[test]
fn any_json_on_any_json_route_gets_an_answer_and_the_server_stays_up() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let server = rt.block_on(TestServer::start());
    let id = rt.block_on(server.session());
    let config = ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() };
    proptest!(config, |(body in json(), route in 0usize..6, wrap in any::<bool>())| {
        // Half the bodies are wrapped as an execution's options, where the durations are.
        let body = if wrap { serde_json::json!({"code": "1", "program": "true", "options": body}) } else { body };
        let path = routes(&id)[route].clone();
        let reply = rt.block_on(server.send(
            Method::POST,
            &path,
            Some(KEY),
            Some("application/json"),
            Bytes::from(body.to_string()),
        ));
        prop_assert!(reply.status != StatusCode::INTERNAL_SERVER_ERROR, "{path} {body}: {}", reply.text());
    });
    let health = rt.block_on(server.get("/health"));
    assert_eq!(health.status, StatusCode::OK);
}

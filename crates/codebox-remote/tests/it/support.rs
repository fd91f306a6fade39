//! Shared helpers.

use std::time::Duration;

use codebox_remote::{Protocol, RemoteBox, RetryPolicy};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate, Times};

pub(crate) const KEY: &str = "sk-test-key-never-shown";

/// A box attached to session `s1` of `base`, with fast retries.
pub(crate) fn attached(base: &str) -> RemoteBox {
    builder(base).build().unwrap()
}

pub(crate) fn builder(base: &str) -> codebox_remote::RemoteBoxBuilder {
    RemoteBox::builder()
        .with_base_url(base)
        .with_api_key(KEY)
        .with_session_id("s1")
        .with_retry(RetryPolicy::default().with_backoff(Duration::from_millis(5), Duration::from_millis(20)))
}

pub(crate) fn codeboxapi(base: &str, protocol: Protocol) -> RemoteBox {
    RemoteBox::builder()
        .with_base_url(base)
        .with_api_key(KEY)
        .with_session_id("s1")
        .with_protocol(protocol)
        .build()
        .unwrap()
}

pub(crate) fn session_info() -> serde_json::Value {
    serde_json::json!({
        "id": "s1",
        "status": {"state": "idle", "kernel": "python3"},
        "capabilities": {
            "streaming": true, "interrupt": true, "restart": true, "install": true, "commands": true,
            "delete_file": true, "recursive_list": true, "languages": ["python"]
        },
        "created_at": 1.0,
        "last_used_at": 2.0
    })
}

/// Answer `verb route` on `server` with `response`; the server checks when dropped that it
/// was asked `times` times (`..` for any number).
pub(crate) async fn answer(
    server: &MockServer,
    verb: &str,
    route: impl Into<String>,
    response: ResponseTemplate,
    times: impl Into<Times>,
) {
    Mock::given(method(verb)).and(path(route)).respond_with(response).expect(times).mount(server).await;
}

/// Answer only the first request of `verb route` with `response`; later ones go to the
/// mocks mounted after this one.
pub(crate) async fn answer_first(
    server: &MockServer,
    verb: &str,
    route: impl Into<String>,
    response: ResponseTemplate,
) {
    Mock::given(method(verb)).and(path(route)).respond_with(response).up_to_n_times(1).expect(1).mount(server).await;
}

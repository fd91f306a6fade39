//! Sessions with parameters, lifetimes and listings, through [`Client`] and [`RemoteBox`]
//! against a real in-process server whose boxes are real LocalBox kernels.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use codebox_core::{
    ApiKey, BoxRequest, CodeBox, CodeBoxError, CodeBoxExt, CodeBoxSettings, ErrorKind, ResourceLimits, factory_fn,
};
use codebox_http::client::{ClientConfig, HttpClient, Request};
use codebox_local::LocalBox;
use codebox_remote::{Client, Protocol, RemoteBox, SessionFilter, SessionRequest, SessionState};
use codebox_server::{Server, ServerConfig};
use tokio::sync::oneshot;

const KEY: &str = "sk-sessions";
const OTHER_KEY: &str = "sk-sessions-other";

/// A running server and what its factory was asked; stops when dropped.
struct Running {
    base: String,
    requests: Arc<Mutex<Vec<BoxRequest>>>,
    _stop: oneshot::Sender<()>,
}

/// The most a session may ask for on the test server.
fn max_limits() -> ResourceLimits {
    ResourceLimits::new().with_memory_bytes(2 << 30).with_cpus(2.0).with_processes(512).with_disk_bytes(4 << 30)
}

async fn serve() -> Running {
    let config = ServerConfig::new()
        .with_addr("127.0.0.1:0".parse().unwrap())
        .with_api_key(KEY)
        .with_api_key(OTHER_KEY)
        .with_max_session_timeout(Duration::from_secs(3600))
        .with_default_limits(ResourceLimits::new().with_memory_bytes(1 << 30).with_processes(256))
        .with_max_limits(max_limits());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&requests);
    // A catalogue of one template, `python`, over LocalBox: what a factory does with a
    // request (refuse what it does not know, apply the environment) is done here for real.
    let factory = factory_fn(move |request: BoxRequest| {
        let seen = Arc::clone(&seen);
        async move {
            seen.lock().unwrap().push(request.clone());
            if let Some(template) = request.template.as_deref().filter(|t| *t != "python") {
                return Err(CodeBoxError::invalid(format!("unknown template {template:?}; templates: python")));
            }
            let mut builder = LocalBox::builder();
            if let Some(kernel) = request.kernel {
                builder = builder.with_kernel(kernel);
            }
            for (k, v) in request.env {
                builder = builder.with_env(k, v);
            }
            Ok(Arc::new(builder.build()?) as Arc<dyn CodeBox>)
        }
    });
    let server = Server::bind(config, factory).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run_until(async {
        let _ = stopped.await;
    }));
    Running { base, requests, _stop: stop }
}

fn client(base: &str, key: &str) -> Client {
    Client::from_settings(&CodeBoxSettings::new().with_api_key(key).with_base_url(base)).unwrap()
}

/// Wait (without a deadline of its own worth asserting) until `session` answers with an
/// error, and return it.
async fn first_error(session: &RemoteBox) -> CodeBoxError {
    for _ in 0..600 {
        if let Err(e) = session.info().await {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("session {} never ended", session.id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_parameters_reach_the_box_and_come_back_in_its_info() {
    let server = serve().await;
    let client = client(&server.base, KEY);
    let limits = ResourceLimits::new().with_cpus(1.5);
    let sandbox = client
        .create(
            SessionRequest::new()
                .with_template("python")
                .with_language("python")
                .with_env("GREETING", "hello from env")
                .with_metadata("user", "alice")
                .with_limits(limits.clone())
                .with_timeout(Duration::from_secs(600))
                .with_idle_timeout(Duration::from_secs(120)),
        )
        .await
        .unwrap();

    let out = sandbox.exec("import os; print(os.environ['GREETING'])").await.unwrap();
    assert_eq!(out.stdout(), "hello from env\n");

    let info = sandbox.info().await.unwrap();
    assert_eq!(info.id, sandbox.id());
    assert_eq!(info.state, SessionState::Running);
    assert_eq!(info.template.as_deref(), Some("python"));
    assert_eq!(info.language.as_deref(), Some("python"));
    assert_eq!(info.metadata.get("user").map(String::as_str), Some("alice"));
    assert_eq!(info.env_keys, vec!["GREETING".to_string()], "names only, never values");
    // What was asked for, and the server's defaults for the rest.
    assert_eq!(info.limits, limits.clone().with_memory_bytes(1 << 30).with_processes(256));
    assert_eq!((info.timeout, info.idle_timeout), (Some(600), 120));
    let expires_at = info.expires_at.expect("a session with a timeout has an end");
    assert!((expires_at - info.created_at - 600.0).abs() < 1e-3, "{expires_at} vs {}", info.created_at);
    assert!(info.status.isolation.is_some(), "the isolation the box got is reported: {:?}", info.status);
    assert!(info.kernel.is_some());

    let asked = server.requests.lock().unwrap().last().cloned().unwrap();
    assert_eq!(asked.template.as_deref(), Some("python"));
    assert_eq!(asked.language.as_deref(), Some("python"));
    assert_eq!(asked.env.get("GREETING").map(String::as_str), Some("hello from env"));
    assert_eq!(asked.limits, info.limits);
    sandbox.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bound_is_refused_with_a_400_that_names_it() {
    let server = serve().await;
    let client = client(&server.base, KEY);
    let many: Vec<(String, String)> = (0..33).map(|i| (format!("k{i}"), "v".into())).collect();
    let too_many_keys = many.into_iter().fold(SessionRequest::new(), |r, (k, v)| r.with_metadata(k, v));
    let cases = [
        (
            SessionRequest::new().with_limits(ResourceLimits::new().with_cpus(4.0)),
            "`limits.cpus` is above this server's maximum of 2",
        ),
        (
            SessionRequest::new().with_limits(ResourceLimits::new().with_memory_bytes(3 << 30)),
            "`limits.memory_bytes` is above this server's maximum of 2147483648",
        ),
        (
            SessionRequest::new().with_limits(ResourceLimits::new().with_processes(0)),
            "`limits.processes` must be above zero",
        ),
        (too_many_keys, "at most 32"),
        (SessionRequest::new().with_metadata("k", "v".repeat(513)), "at most 512"),
        (SessionRequest::new().with_metadata("k".repeat(65), "v"), "1 to 64 bytes"),
        (SessionRequest::new().with_env("", "v"), "not an environment variable name"),
        (SessionRequest::new().with_env("A=B", "v"), "not an environment variable name"),
        (SessionRequest::new().with_env("CODEBOX_API_KEY", "v"), "set by codebox itself"),
        (SessionRequest::new().with_timeout(Duration::from_secs(3601)), "maximum of 3600 s"),
        (SessionRequest::new().with_idle_timeout(Duration::from_secs(901)), "maximum of 900 s"),
        (SessionRequest::new().with_kernel("no such kernel"), "not a kernel name"),
        // The factory refuses a template it does not have, and its message reaches the caller.
        (SessionRequest::new().with_template("cobol"), "unknown template \"cobol\"; templates: python"),
    ];
    for (request, says) in cases {
        let err = client.create(request.clone()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{request:?}: {err}");
        assert_eq!(err.http().map(|h| h.status), Some(400), "{request:?}: {err}");
        assert!(err.to_string().contains(says), "{request:?}: {err}");
    }
    assert!(client.list(SessionFilter::new()).await.unwrap().is_empty(), "no refused session was kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_past_its_lifetime_is_stopped_and_then_gone_with_the_time_it_expired() {
    let server = serve().await;
    let client = client(&server.base, KEY);
    let sandbox = client.create(SessionRequest::new().with_timeout(Duration::from_secs(1))).await.unwrap();
    let expires_at = sandbox.info().await.unwrap().expires_at.unwrap();
    let err = first_error(&sandbox).await;
    assert_eq!(err.kind(), ErrorKind::Expired, "{err}");
    assert_eq!(err.http().map(|h| h.status), Some(410));
    let at = humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs_f64(expires_at));
    let message = err.to_string();
    assert!(message.contains(&format!("session {} expired at {at}", sandbox.id())), "{message}");
    // Every request naming it says the same: attaching, running code.
    let attached = client.get(sandbox.id()).await.unwrap_err();
    assert_eq!(attached.kind(), ErrorKind::Expired, "{attached}");
    let exec = sandbox.exec("print(1)").await.unwrap_err();
    assert_eq!(exec.kind(), ErrorKind::Expired, "{exec}");
    assert!(client.list(SessionFilter::new()).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_timeout_moves_the_end_of_a_sessions_life() {
    let server = serve().await;
    let client = client(&server.base, KEY);
    let sandbox = client.create(SessionRequest::new().with_timeout(Duration::from_secs(2))).await.unwrap();
    let before = sandbox.info().await.unwrap();
    let after = sandbox.set_timeout(Duration::from_secs(3600)).await.unwrap();
    assert_eq!(after.timeout, Some(3600));
    assert!(after.expires_at.unwrap() > before.expires_at.unwrap() + 3000.0, "{after:?}");
    // Past the first end, the session lives on.
    let first_end = std::time::UNIX_EPOCH + Duration::from_secs_f64(before.expires_at.unwrap());
    while std::time::SystemTime::now() <= first_end + Duration::from_millis(500) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(sandbox.exec("print(2 + 2)").await.unwrap().stdout(), "4\n");
    let err = sandbox.set_timeout(Duration::from_secs(3601)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("maximum of 3600 s"), "{err}");
    // Shortening works the same way (E2B semantics: now + timeout).
    let shorter = sandbox.set_timeout(Duration::from_secs(1)).await.unwrap();
    assert_eq!(shorter.timeout, Some(1));
    assert_eq!(first_error(&sandbox).await.kind(), ErrorKind::Expired);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_filters_by_state_and_metadata_and_pages() {
    let server = serve().await;
    let client = client(&server.base, KEY);
    let mut boxes = Vec::new();
    for user in ["alice", "bob", "alice"] {
        boxes.push(client.create(SessionRequest::new().with_metadata("user", user)).await.unwrap());
    }
    let ids = |infos: &[codebox_remote::SessionInfo]| infos.iter().map(|i| i.id.clone()).collect::<Vec<_>>();
    let all = client.list(SessionFilter::new()).await.unwrap();
    assert_eq!(ids(&all), boxes.iter().map(|b| b.id().to_owned()).collect::<Vec<_>>(), "oldest first");
    let alice = client.list(SessionFilter::new().with_metadata("user", "alice")).await.unwrap();
    assert_eq!(ids(&alice), vec![boxes[0].id().to_owned(), boxes[2].id().to_owned()]);
    let running = client.list(SessionFilter::new().with_state(SessionState::Running)).await.unwrap();
    assert_eq!(running.len(), 3);
    assert!(client.list(SessionFilter::new().with_state(SessionState::Stopped)).await.unwrap().is_empty());
    // Pages of one, followed by the client to the end: the same sessions.
    let paged = client.list(SessionFilter::new().with_metadata("user", "alice").with_page_size(1)).await.unwrap();
    assert_eq!(ids(&paged), ids(&alice));
    // Another key sees none of them.
    assert!(self::client(&server.base, OTHER_KEY).list(SessionFilter::new()).await.unwrap().is_empty());

    // On the wire: a JSON array, and the next page's token in a header.
    let http = HttpClient::new(ClientConfig::default()).unwrap();
    let get = |query: &str| {
        Request::new(http::Method::GET, &format!("{}/v1/sessions?{query}", server.base))
            .unwrap()
            .bearer(&ApiKey::new(KEY))
            .unwrap()
    };
    let resp = http.send(get("limit=2")).await.unwrap();
    let token = resp.headers().get("x-next-token").unwrap().to_str().unwrap().to_owned();
    let page: Vec<serde_json::Value> = resp.json().await.unwrap();
    assert_eq!(page.len(), 2);
    let resp = http.send(get(&format!("limit=2&next_token={token}"))).await.unwrap();
    assert!(resp.headers().get("x-next-token").is_none(), "the last page has no next token");
    let page: Vec<serde_json::Value> = resp.json().await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0]["id"], boxes[2].id());
    for bad in ["state=asleep", "limit=0", "limit=5000", "next_token=nope", "colour=red"] {
        let err = http.send(get(bad)).await.unwrap_err();
        assert_eq!(err.http().map(|h| h.status), Some(400), "{bad}: {err}");
    }
    for b in boxes {
        b.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_native_protocol_manages_sessions() {
    let hosted = RemoteBox::builder()
        .with_base_url("http://127.0.0.1:9")
        .with_api_key(KEY)
        .with_protocol(Protocol::CodeboxApi)
        .with_metadata("user", "alice")
        .build()
        .unwrap_err();
    assert_eq!(hosted.kind(), ErrorKind::Unsupported, "{hosted}");
    let plain = RemoteBox::builder()
        .with_base_url("http://127.0.0.1:9")
        .with_api_key(KEY)
        .with_protocol(Protocol::CodeboxApi)
        .with_kernel("python3")
        .build()
        .unwrap();
    assert_eq!(plain.info().await.unwrap_err().kind(), ErrorKind::Unsupported);
    assert_eq!(plain.set_timeout(Duration::from_secs(5)).await.unwrap_err().kind(), ErrorKind::Unsupported);
    let client = Client::builder()
        .with_base_url("http://127.0.0.1:9")
        .with_api_key(KEY)
        .with_protocol(Protocol::CodeboxApi)
        .build()
        .unwrap();
    assert_eq!(client.list(SessionFilter::new()).await.unwrap_err().kind(), ErrorKind::Unsupported);
    assert_eq!(client.templates().await.unwrap_err().kind(), ErrorKind::Unsupported);
    assert_eq!(client.create(SessionRequest::new()).await.unwrap_err().kind(), ErrorKind::Unsupported);
}

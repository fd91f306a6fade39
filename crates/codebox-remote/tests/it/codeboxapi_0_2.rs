//! The codebox-api 0.2 protocol mode against wiremock.

use bytes::Bytes;
use codebox_core::{CodeBox, CodeBoxExt, ErrorKind, ExecEvent, MimeBundle};
use codebox_remote::Protocol;
use wiremock::matchers::{body_json, body_string_contains, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::{KEY, answer, codeboxapi};

/// The single-box server's health answer.
fn healthy() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(serde_json::json!({"status": "ok"}))
}

#[tokio::test]
async fn hosted_mode_sends_bearer_and_factory_id_and_maps_tagged_chunks() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/codebox/s1/exec"))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .and(header("factory-id", "default"))
        .and(body_json(serde_json::json!({"code": "print(1)", "kernel": "ipython", "timeout": null, "cwd": null})))
        .respond_with(ResponseTemplate::new(200).set_body_string("<txt>1\n</txt><img>aGk=</img><err>oops</err>"))
        .expect(1)
        .mount(&server)
        .await;
    let b = codeboxapi(&server.uri(), Protocol::CodeboxApi);
    b.start().await.unwrap();
    let ex = b.exec("print(1)").await.unwrap();
    assert_eq!(ex.stdout(), "1\n");
    assert_eq!(ex.stderr(), "oops");
    assert_eq!(ex.images()[0].bytes, b"hi");
    assert!(matches!(&ex.events[1], ExecEvent::Display { data, .. } if data.get(MimeBundle::PNG).is_some()));
}

#[tokio::test]
async fn upload_is_multipart_and_download_streams() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/files/upload"))
        .and(body_string_contains("filename=\"data.csv\""))
        .and(body_string_contains("a,b\n1,2\n"))
        .respond_with(ResponseTemplate::new(200).set_body_string("null"))
        .expect(1)
        .mount(&server)
        .await;
    let content = ResponseTemplate::new(200).set_body_bytes(b"a,b\n1,2\n".to_vec());
    answer(&server, "GET", "/files/download/data.csv", content, 1).await;
    answer(&server, "GET", "/", healthy(), ..).await;
    let b = codeboxapi(&server.uri(), Protocol::CodeboxApiServer);
    b.start().await.unwrap();
    let info = b.upload_bytes("data.csv", "a,b\n1,2\n").await.unwrap();
    assert_eq!(info.size, 8);
    assert_eq!(b.download_bytes("data.csv").await.unwrap(), Bytes::from_static(b"a,b\n1,2\n"));
}

#[tokio::test]
async fn what_the_protocol_lacks_is_reported_and_unsupported() {
    let server = MockServer::start().await;
    let b = codeboxapi(&server.uri(), Protocol::CodeboxApi);
    b.start().await.unwrap();
    let caps = b.capabilities();
    assert!(!caps.install && !caps.interrupt && !caps.restart && !caps.commands && !caps.delete_file);
    assert_eq!(b.install(&["numpy".into()]).await.unwrap_err().kind(), ErrorKind::Unsupported);
    assert!(!caps.packages);
    assert_eq!(b.packages().await.unwrap_err().kind(), ErrorKind::Unsupported);
    assert!(!caps.history);
    assert_eq!(b.history(10).await.unwrap_err().kind(), ErrorKind::Unsupported);
    assert_eq!(b.execution_stats().await.unwrap_err().kind(), ErrorKind::Unsupported);
    assert!(!caps.contexts);
    assert_eq!(b.create_context(None, None).await.unwrap_err().kind(), ErrorKind::Unsupported);
    assert_eq!(b.contexts().await.unwrap_err().kind(), ErrorKind::Unsupported);
    assert_eq!(b.restart_context("c").await.unwrap_err().kind(), ErrorKind::Unsupported);
    assert_eq!(b.interrupt_context("c").await.unwrap_err().kind(), ErrorKind::Unsupported);
    assert_eq!(b.delete_context("c").await.unwrap_err().kind(), ErrorKind::Unsupported);
    let in_context = codebox_core::RunOptions::new().with_context("c");
    assert_eq!(b.run("1", in_context).await.unwrap_err().kind(), ErrorKind::Unsupported);
    assert!(!caps.metrics);
    assert_eq!(b.metrics().await.unwrap_err().kind(), ErrorKind::Unsupported);
    assert_eq!(b.metrics_since(0).await.unwrap_err().kind(), ErrorKind::Unsupported);
    assert!(!caps.artifacts, "the protocol's executions carry no artifacts");
    assert_eq!(b.interrupt().await.unwrap_err().kind(), ErrorKind::Unsupported);
    assert_eq!(b.restart().await.unwrap_err().kind(), ErrorKind::Unsupported);
    assert_eq!(b.list_files("", false).await.unwrap_err().kind(), ErrorKind::Unsupported);
    assert_eq!(b.delete_file("x").await.unwrap_err().kind(), ErrorKind::Unsupported);
    let cmd = codebox_core::CommandSpec::new("ls");
    assert_eq!(b.run_command(cmd).await.unwrap_err().kind(), ErrorKind::Unsupported);
    let r = b.run("1", codebox_core::RunOptions::new().with_language("r")).await.unwrap_err();
    assert_eq!(r.kind(), ErrorKind::Unsupported);
}

#[tokio::test]
async fn a_stream_ending_inside_a_chunk_is_a_protocol_error() {
    let server = MockServer::start().await;
    let cut = ResponseTemplate::new(200).set_body_string("<txt>complete</txt><txt>cut");
    answer(&server, "POST", "/exec", cut, 1).await;
    let b = codeboxapi(&server.uri(), Protocol::CodeboxApiServer);
    answer(&server, "GET", "/", healthy(), ..).await;
    b.start().await.unwrap();
    assert_eq!(b.exec("x").await.unwrap_err().kind(), ErrorKind::Protocol);
}

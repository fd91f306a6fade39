//! RemoteBox::pause and Client::resume against a real in-process server keeping a state
//! directory, with LocalBox sessions.

use std::sync::Arc;

use codebox_core::{CodeBox, CodeBoxExt, ErrorKind, SnapshotRung};
use codebox_local::{LocalBox, LocalFactory};
use codebox_remote::{Client, SessionRequest};
use codebox_server::{Server, ServerConfig};
use tokio::sync::oneshot;

const KEY: &str = "sk-pause";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_box_pauses_and_the_client_resumes_it_with_its_variables() {
    let state = tempfile::tempdir().unwrap();
    let config =
        ServerConfig::new().with_addr("127.0.0.1:0".parse().unwrap()).with_api_key(KEY).with_state_dir(state.path());
    let factory = LocalFactory::builder(LocalBox::builder()).build().unwrap();
    let server = Server::bind(config, Arc::new(factory)).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run_until(async {
        let _ = stopped.await;
    }));
    let client = Client::builder().with_base_url(&base).with_api_key(KEY).build().unwrap();

    let remote = client.create(SessionRequest::new()).await.unwrap();
    assert!(remote.capabilities().pause, "{:?}", remote.capabilities());
    remote.exec("total = sum(range(10))\nf = open('/dev/null')").await.unwrap();
    let report = remote.pause().await.unwrap();
    assert_eq!(report.rung, SnapshotRung::Namespace, "{report:?}");
    assert_eq!(report.unrestored.len(), 1, "{report:?}");
    assert_eq!(report.unrestored[0].name, "f");
    let listed = client.list(Default::default()).await.unwrap();
    assert_eq!(listed[0].state, codebox_remote::SessionState::Paused);

    let (back, resumed) = client.resume(remote.id()).await.unwrap();
    assert_eq!(resumed.unrestored[0].name, "f");
    assert_eq!(back.exec("print(total)").await.unwrap().stdout(), "45\n");
    let err = client.resume(remote.id()).await.err().unwrap();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "resuming a running session: {err}");
    let err = client.resume("never-was").await.err().unwrap();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    remote.stop().await.unwrap();
}

//! A box's typed failures reach a RemoteBox through a real server as the same variants a
//! LocalBox gives: a kernel's death with its cause, an execution timeout that lost the
//! kernel's state.

use std::sync::Arc;
use std::time::Duration;

use codebox_core::{CodeBox, CodeBoxError, CodeBoxExt, CodeBoxSettings, KernelDeath, RunOptions, TimeoutKind};
use codebox_local::LocalBox;
use codebox_remote::RemoteBox;
use codebox_server::{Server, ServerConfig, factory_fn};
use tokio::sync::oneshot;

const KEY: &str = "sk-typed-errors";

/// A server whose sessions are LocalBoxes that kill a kernel one second after it ignored
/// an interrupt; stops when the sender drops.
async fn serve() -> (String, oneshot::Sender<()>) {
    let factory = factory_fn(|request| async move {
        let mut builder = LocalBox::builder().with_interrupt_grace(Duration::from_secs(1));
        if let Some(kernel) = request.kernel {
            builder = builder.with_kernel(kernel);
        }
        Ok(Arc::new(builder.build()?) as Arc<dyn CodeBox>)
    });
    let config = ServerConfig::new().with_addr("127.0.0.1:0".parse().unwrap()).with_api_key(KEY);
    let server = Server::bind(config, factory).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run_until(async {
        let _ = stopped.await;
    }));
    (base, stop)
}

async fn remote(base: &str) -> RemoteBox {
    let remote = RemoteBox::from_settings(&CodeBoxSettings::new().with_api_key(KEY).with_base_url(base)).unwrap();
    remote.start().await.unwrap();
    remote
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_kernel_is_kernel_died_with_its_cause() {
    let (base, _stop) = serve().await;
    let remote = remote(&base).await;
    let err = remote.run("import os\nos.kill(os.getpid(), 9)", RunOptions::new()).await.unwrap_err();
    match &err {
        CodeBoxError::KernelDied { cause, .. } => assert_eq!(*cause, KernelDeath::Signaled { signal: 9 }),
        other => panic!("expected KernelDied, got {other:?}"),
    }
    assert!(err.http().is_none());
    remote.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_that_restarted_the_kernel_says_its_state_was_lost() {
    let (base, _stop) = serve().await;
    let remote = remote(&base).await;
    remote.exec("kept = 1").await.unwrap();
    // A catastrophic regex runs in C holding the GIL: the interrupt is never handled, so
    // the box kills and restarts the kernel.
    let code = "import re\nre.match(r'(a+)+$', 'a' * 40 + 'b')";
    let err = remote.run(code, RunOptions::new().with_timeout(Duration::from_millis(500))).await.unwrap_err();
    match &err {
        CodeBoxError::Timeout { kind, after, state_lost, .. } => {
            assert_eq!(*kind, TimeoutKind::Execution);
            assert_eq!(*after, Some(Duration::from_millis(500)));
            assert!(state_lost);
        }
        other => panic!("expected an execution timeout, got {other:?}"),
    }
    assert!(!err.is_retryable(), "an execution is never retried");
    assert!(err.to_string().contains("state was lost"), "{err}");
    let after = remote.exec("kept").await.unwrap();
    assert_eq!(after.error().map(|e| e.name.as_str()), Some("NameError"));
    remote.stop().await.unwrap();
}

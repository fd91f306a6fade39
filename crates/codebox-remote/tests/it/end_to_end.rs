//! RemoteBox against a real in-process `codebox serve` backed by LocalBox on 127.0.0.1:0.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use codebox_core::conformance::{ConformanceOptions, processes_end_with_the_box, run_all};
use codebox_core::{CodeBox, CodeBoxExt, CodeBoxSettings, ErrorKind, ExecEvent, Execution, RunOptions};
use codebox_local::{LocalBox, LocalBoxBuilder, LocalFactory};
use codebox_remote::RemoteBox;
use codebox_server::{Server, ServerConfig};
use futures::StreamExt;
use tokio::sync::oneshot;

const KEY: &str = "sk-end-to-end";

/// A running server; stops when dropped.
struct Running {
    base: String,
    _stop: oneshot::Sender<()>,
}

async fn serve() -> Running {
    serve_boxes(LocalBox::builder()).await
}

/// A running server whose sessions are boxes of `boxes`.
async fn serve_boxes(boxes: LocalBoxBuilder) -> Running {
    let config = ServerConfig::new().with_addr("127.0.0.1:0".parse().unwrap()).with_api_key(KEY);
    // Every session gets its own LocalBox.
    let factory = LocalFactory::builder(boxes).build().unwrap();
    let server = Server::bind(config, Arc::new(factory)).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run_until(async {
        let _ = stopped.await;
    }));
    Running { base, _stop: stop }
}

fn settings(base: &str) -> CodeBoxSettings {
    CodeBoxSettings::new().with_api_key(KEY).with_base_url(base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_box_passes_the_conformance_suite_against_a_real_server() {
    let server = serve().await;
    let remote = RemoteBox::from_settings(&settings(&server.base)).unwrap();
    let report = run_all(&remote, &ConformanceOptions::default().with_require_matplotlib(true)).await;
    // The server's boxes run background processes, so the suite's process checks ran.
    assert!(remote.capabilities().processes, "{:?}", remote.capabilities());
    // Stops the box: last.
    let ended = processes_end_with_the_box(&remote).await;
    remote.stop().await.unwrap();
    report.assert_all_passed();
    ended.unwrap();
}

/// The comparable part of an execution: its events without timings.
fn shape(ex: &Execution) -> (Vec<ExecEvent>, codebox_core::Outcome) {
    (ex.events.clone(), ex.outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_and_local_give_the_same_results() {
    let server = serve().await;
    let remote = RemoteBox::from_settings(&settings(&server.base)).unwrap();
    remote.start().await.unwrap();
    let local = LocalBox::builder().build().unwrap();
    local.start().await.unwrap();
    let cells = [
        "print('out'); import sys; print('err', file=sys.stderr)",
        "x = 41\nx + 1",
        "from IPython.display import display, HTML\ndisplay(HTML('<b>hi</b>'))\n'value'",
        "raise ValueError('bad input')",
        "print('ünïcödé ✓')",
    ];
    for code in cells {
        let r = remote.exec(code).await.unwrap();
        let l = local.exec(code).await.unwrap();
        assert_eq!(shape(&r), shape(&l), "cell {code:?}");
    }
    remote.stop().await.unwrap();
    local.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_by_id_drop_cancels_and_stop_ends_the_session() {
    let server = serve().await;
    let owner = RemoteBox::from_settings(&settings(&server.base)).unwrap();
    owner.start().await.unwrap();
    owner.exec("shared = 'from the owner'").await.unwrap();

    let attached = RemoteBox::from_id(owner.id(), &settings(&server.base)).unwrap();
    attached.start().await.unwrap();
    assert_eq!(attached.exec("shared").await.unwrap().text(), "'from the owner'");

    // Dropping a running execution's stream interrupts it on the server: the kernel is free
    // again for the next execution, and the state survives.
    let mut stream = owner
        .run_stream("import time\nprint('spinning', flush=True)\nwhile True: time.sleep(0.05)", RunOptions::new())
        .await
        .unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first, ExecEvent::stdout("spinning\n"));
    drop(stream);
    let next = owner.run("shared", RunOptions::new().with_timeout(Duration::from_secs(60))).await.unwrap();
    assert_eq!(next.text(), "'from the owner'");
    assert!(next.is_ok(), "{next:?}");

    let listed = owner.list_files("", false).await.unwrap();
    assert!(listed.iter().all(|f| !f.path.starts_with('/')));
    let out = owner.run_command(codebox_core::CommandSpec::new("echo").arg("hi")).await.unwrap();
    assert_eq!(out.stdout, "hi\n");

    owner.stop().await.unwrap();
    let err = attached.exec("1").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let gone = RemoteBox::from_id(owner.id(), &settings(&server.base)).unwrap();
    assert_eq!(gone.start().await.unwrap_err().kind(), ErrorKind::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_an_authentication_error_without_the_key() {
    let server = serve().await;
    let b = RemoteBox::builder().with_base_url(&server.base).with_api_key("sk-wrong-secret").build().unwrap();
    let err = b.start().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Authentication);
    assert!(!format!("{err} {err:?}").contains("wrong-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_with_prior_knowledge_works_end_to_end() {
    let server = serve().await;
    let config = codebox_remote::ClientConfig::new().with_http2_prior_knowledge(true);
    let b =
        RemoteBox::builder().with_base_url(&server.base).with_api_key(KEY).with_client_config(config).build().unwrap();
    b.start().await.unwrap();
    let ex = b.exec("print('over h2')").await.unwrap();
    assert_eq!(ex.stdout(), "over h2\n");
    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i % 241) as u8).collect();
    b.upload_bytes("h2.bin", content.clone()).await.unwrap();
    assert_eq!(b.download_bytes("h2.bin").await.unwrap().as_ref(), content.as_slice());
    // Several executions at once share one HTTP/2 connection; an execution stream dropped
    // early cancels only its own execution.
    let mut spinning =
        b.run_stream("import time\nprint('go', flush=True)\ntime.sleep(60)", Default::default()).await.unwrap();
    assert!(matches!(spinning.next().await, Some(Ok(ExecEvent::Stdout { .. }))));
    drop(spinning);
    assert_eq!(b.exec("'after'").await.unwrap().text(), "'after'");
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_box_that_created_its_session_deletes_it() {
    let server = serve().await;
    let owner = RemoteBox::from_settings(&settings(&server.base)).unwrap();
    owner.start().await.unwrap();
    let id = owner.id().to_owned();
    drop(owner);
    let probe = RemoteBox::from_id(&id, &settings(&server.base)).unwrap();
    // The delete runs in the background; wait for it to land.
    let mut last = None;
    for _ in 0..200 {
        match probe.start().await {
            Err(e) if e.kind() == ErrorKind::NotFound => return,
            other => last = Some(other),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the session of a dropped box is still there: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_queued_behind_a_long_one_waits_longer_than_the_read_timeout() {
    let server = serve().await;
    let b = Arc::new(
        RemoteBox::builder()
            .with_base_url(&server.base)
            .with_api_key(KEY)
            .with_read_timeout(Duration::from_secs(2))
            .build()
            .unwrap(),
    );
    b.start().await.unwrap();
    // The first execution runs twice as long as the read timeout (printing, so its own
    // stream is never silent that long); the second waits for it before the server answers.
    let code = "import time\nfor i in range(8):\n    print('first', i, flush=True)\n    time.sleep(0.5)\n'done'";
    let mut first = b.run_stream(code, RunOptions::new()).await.unwrap();
    assert!(matches!(first.next().await, Some(Ok(ExecEvent::Stdout { .. }))));
    let second = tokio::spawn({
        let b = Arc::clone(&b);
        async move { b.exec("'second'").await }
    });
    let rest = Execution::collect(first).await;
    let second = second.await.unwrap().unwrap();
    assert_eq!(second.text(), "'second'");
    let rest = rest.unwrap();
    assert_eq!(rest.result().and_then(|r| r.plain()).as_deref(), Some("'done'"));
    assert!(rest.stdout().ends_with("first 7\n"), "{rest:?}");
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hosted_codebox_api_mode_works_against_the_servers_v2_routes() {
    let server = serve().await;
    // A base URL ending in /v2 selects the codebox-api 0.2 protocol, as the hosted service's does.
    let b = RemoteBox::from_settings(&settings(&format!("{}/api/v2", server.base))).unwrap();
    assert_eq!(b.protocol(), codebox_remote::Protocol::CodeboxApi);
    b.start().await.unwrap();
    let ex = b.exec("print('via v2')").await.unwrap();
    assert_eq!(ex.stdout(), "via v2\n");
    let content: Vec<u8> = (0..100_000u32).map(|i| (i % 199) as u8).collect();
    assert_eq!(b.upload_bytes("v2.bin", content.clone()).await.unwrap().size, 100_000);
    assert_eq!(b.download_bytes("v2.bin").await.unwrap().as_ref(), content.as_slice());
    let ex = b.run("echo from bash", RunOptions::new().with_language("bash")).await.unwrap();
    assert_eq!(ex.stdout(), "from bash\n");
    assert_eq!(b.restart().await.unwrap_err().kind(), ErrorKind::Unsupported);
    // The 0.2 protocol has no routes for the rest of the file API: refused, and said so.
    assert!(!b.capabilities().file_ops);
    assert_eq!(b.stat("v2.bin").await.unwrap_err().kind(), ErrorKind::Unsupported);
    assert_eq!(b.make_dir("d").await.unwrap_err().kind(), ErrorKind::Unsupported);
    assert_eq!(b.rename("v2.bin", "v3.bin").await.unwrap_err().kind(), ErrorKind::Unsupported);
    assert_eq!(b.list_dir("", 2).await.unwrap_err().kind(), ErrorKind::Unsupported);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_codebox_api_mode_reports_exceptions_and_outcomes_from_the_servers_v2_routes() {
    let server = serve().await;
    let b = RemoteBox::from_settings(&settings(&format!("{}/api/v2", server.base))).unwrap();
    b.start().await.unwrap();

    let ex = b.exec("print('out')\nraise ValueError('bad input')").await.unwrap();
    assert_eq!(ex.stdout(), "out\n");
    let error = ex.error().expect("the exception is an error event");
    assert_eq!((error.name.as_str(), error.value.as_str()), ("ValueError", "bad input"), "{ex:?}");
    assert_eq!(error.traceback.last().map(String::as_str), Some("ValueError: bad input"), "{error:?}");
    assert!(ex.stderr().is_empty(), "the exception is not also standard error: {ex:?}");
    assert_eq!(ex.outcome, codebox_core::Outcome::Error);

    let ex = b.exec("import sys\nprint('careful', file=sys.stderr)").await.unwrap();
    assert_eq!(ex.stderr(), "careful\n");
    assert!(ex.error().is_none() && ex.is_ok(), "{ex:?}");

    // The server ends an execution past its timeout with a notice: that is the outcome.
    let slow = RunOptions::new().with_timeout(Duration::from_secs(1));
    let ex = b.run("import time\ntime.sleep(60)", slow).await.unwrap();
    assert_eq!(ex.outcome, codebox_core::Outcome::TimedOut, "{ex:?}");
    assert!(ex.stderr().is_empty(), "{ex:?}");
    assert_eq!(b.exec("print('still here')").await.unwrap().stdout(), "still here\n");
}

// Installing through the server, with no network: the test has the box build a tiny wheel,
// downloads it into the find-links directory of the server's pip settings (install takes
// names, never paths), and installs it by name. It imports, and `packages()` lists it as the
// box's own, ahead of the environment the box was given. A package no index has fails with
// pip's own reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_install_of_a_wheel_the_test_builds_is_listed_as_the_boxs_own() {
    let wheels = tempfile::tempdir().unwrap();
    // The session's uid reads the directory through pip's sandbox.
    std::fs::set_permissions(wheels.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = serve_boxes(LocalBox::builder().with_env("PIP_FIND_LINKS", wheels.path().to_string_lossy())).await;
    let remote = RemoteBox::from_settings(&settings(&server.base)).unwrap();
    remote.start().await.unwrap();
    assert!(remote.capabilities().packages);
    let name = format!("codebox_remote_probe_{}", remote.id().replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
    let wheel = format!("{name}-0.1-py3-none-any.whl");
    let make_wheel = format!(
        "import zipfile\n\
         name = {name:?}\n\
         with zipfile.ZipFile({wheel:?}, 'w') as z:\n    \
         z.writestr(f'{{name}}/__init__.py', 'VALUE = 42\\n')\n    \
         z.writestr(f'{{name}}-0.1.dist-info/METADATA', f'Metadata-Version: 2.1\\nName: {{name}}\\nVersion: 0.1\\n')\n    \
         z.writestr(f'{{name}}-0.1.dist-info/WHEEL', 'Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n')\n    \
         z.writestr(f'{{name}}-0.1.dist-info/RECORD', '')"
    );
    let built = remote.exec(&make_wheel).await.unwrap();
    assert!(built.is_ok(), "{built:?}");
    let bytes = remote.download_bytes(&wheel).await.unwrap();
    std::fs::write(wheels.path().join(&wheel), &bytes).unwrap();
    std::fs::set_permissions(wheels.path().join(&wheel), std::fs::Permissions::from_mode(0o644)).unwrap();

    let out = remote.install_one(&name).await.unwrap();
    assert!(out.contains("Successfully installed"), "{out}");
    let ex = remote.exec(&format!("import {name}\n{name}.VALUE")).await.unwrap();
    assert_eq!(ex.text(), "42", "{ex:?}");
    let packages = remote.packages().await.unwrap();
    let first = &packages[0];
    assert_eq!((first.name.as_str(), first.version.as_str(), first.installed_by_box), (name.as_str(), "0.1", true));
    assert_eq!(packages.iter().filter(|p| p.installed_by_box).count(), 1, "{packages:?}");
    assert!(packages.iter().any(|p| p.name == "ipykernel" && !p.installed_by_box), "{packages:?}");

    let err = remote.install_one("codebox-no-such-package-7f3e").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Install, "{err}");
    assert!(err.to_string().contains("No matching distribution"), "{err}");
    remote.stop().await.unwrap();
}

// The session's history through the server is the box's own: newest first, any limit up to
// everything, the same records that stats count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_history_and_stats_are_the_sessions_own() {
    let server = serve().await;
    let remote = RemoteBox::from_settings(&settings(&server.base)).unwrap();
    remote.start().await.unwrap();
    assert!(remote.capabilities().history);
    remote.exec("print('one')").await.unwrap();
    remote.exec("1 / 0").await.unwrap();
    remote.run("echo two", RunOptions::new().with_language("bash")).await.unwrap();
    let all = remote.history(usize::MAX).await.unwrap();
    let heads: Vec<&str> = all.iter().map(|r| r.code_head.as_str()).collect();
    assert_eq!(heads, ["echo two", "1 / 0", "print('one')"]);
    assert_eq!(all[1].error_name.as_deref(), Some("ZeroDivisionError"));
    assert_eq!(remote.history(1).await.unwrap(), all[..1]);
    let stats = remote.execution_stats().await.unwrap();
    assert_eq!(stats.total, 3);
    assert_eq!(stats.by_outcome.get(&codebox_core::Outcome::Error), Some(&1));
    remote.stop().await.unwrap();
}

// Code contexts through the server are the session's own: made with a cwd and listed, run
// side by side with the session's kernel, recorded in its history under their id; an id
// that needs escaping reaches the server whole and is unknown there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_code_contexts_are_the_sessions_own() {
    let server = serve().await;
    let remote = RemoteBox::from_settings(&settings(&server.base)).unwrap();
    remote.start().await.unwrap();
    assert!(remote.capabilities().contexts);
    remote.upload_bytes("work/note.txt", "from work").await.unwrap();
    let made = remote.create_context(Some("python"), Some("work")).await.unwrap();
    assert_eq!((made.language.as_str(), made.cwd.as_deref(), made.default), ("python", Some("work"), false));
    let listed = remote.contexts().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed[0].default && listed[1] == made, "{listed:?}");

    let in_made = RunOptions::new().with_context(&made.id);
    let ex = remote.run("print(open('note.txt').read())", in_made.clone()).await.unwrap();
    assert_eq!(ex.stdout(), "from work\n");
    let records = remote.history(1).await.unwrap();
    assert_eq!(records[0].context.as_deref(), Some(made.id.as_str()));

    for odd in ["no/such ctx", "ctx?x=1", "%41"] {
        let err = remote.run("1", RunOptions::new().with_context(odd)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{odd}: {err}");
        assert!(err.to_string().contains(odd), "{odd}: {err}");
        assert_eq!(remote.delete_context(odd).await.unwrap_err().kind(), ErrorKind::NotFound, "{odd}");
        assert_eq!(remote.interrupt_context(odd).await.unwrap_err().kind(), ErrorKind::NotFound, "{odd}");
    }
    remote.delete_context(&made.id).await.unwrap();
    assert_eq!(remote.run("1", in_made).await.unwrap_err().kind(), ErrorKind::NotFound);
    remote.stop().await.unwrap();
}

// The session's live metrics through the server: the newest sample, the series since a
// moment, and a refusal once the box is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_metrics_are_the_sessions_own_sample_and_series() {
    let server = serve().await;
    let remote = RemoteBox::from_settings(&settings(&server.base)).unwrap();
    remote.start().await.unwrap();
    assert!(remote.capabilities().metrics);
    let latest = remote.metrics().await.unwrap();
    assert!(!latest.final_sample && latest.processes.is_some_and(|p| p >= 1), "{latest:?}");
    assert!(latest.memory_used_bytes.is_some_and(|m| m > 0), "{latest:?}");
    let series = remote.metrics_since(0).await.unwrap();
    assert!(series.last().is_some_and(|s| s.timestamp_ms >= latest.timestamp_ms), "{series:?}");
    assert!(remote.metrics_since(u64::MAX).await.unwrap().is_empty());
    remote.stop().await.unwrap();
    assert_eq!(remote.metrics().await.unwrap_err().kind(), ErrorKind::NotRunning);
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_executions_carry_their_artifacts_and_save_images_on_request() {
    let server = serve().await;
    let remote = RemoteBox::from_settings(&settings(&server.base)).unwrap();
    remote.start().await.unwrap();
    assert!(remote.capabilities().artifacts);
    let ex = remote
        .exec("import os\nos.makedirs('out', exist_ok=True)\nopen('out/made.txt', 'w').write('abc')")
        .await
        .unwrap();
    let listed: Vec<_> = ex.artifacts().iter().map(|a| (a.path.as_str(), a.size, a.is_created())).collect();
    assert_eq!(listed, [("out/made.txt", 3, true)]);
    let bash = RunOptions::new().with_language("bash");
    let ex = remote.run("echo more >> out/made.txt", bash).await.unwrap();
    assert_eq!(
        ex.artifacts().iter().map(|a| (a.path.as_str(), a.is_created())).collect::<Vec<_>>(),
        [("out/made.txt", false)]
    );
    // A 1x1 PNG, displayed; saved only because the options say so.
    let show = "import base64\nfrom IPython.display import Image, display\n\
                display(Image(data=base64.b64decode('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==')))";
    assert!(remote.exec(show).await.unwrap().artifacts().is_empty());
    let ex = remote.run(show, RunOptions::new().with_save_images(true)).await.unwrap();
    let [png] = ex.artifacts() else { panic!("{:?}", ex.artifacts()) };
    assert_eq!(png.path, format!("images/{}-1.png", ex.execution_count.unwrap()));
    assert!(remote.download_bytes(&png.path).await.unwrap().starts_with(b"\x89PNG\r\n\x1a\n"));
    remote.stop().await.unwrap();
}

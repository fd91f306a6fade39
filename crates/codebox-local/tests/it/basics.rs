//! The basics of a LocalBox: state between executions, rich output, streaming, options.

use std::time::Duration;

use codebox_core::{CodeBox, CodeBoxExt, ExecEvent, MimeBundle, Outcome, RunOptions};
use futures::StreamExt;

use crate::started;

#[tokio::test]
async fn state_survives_between_executions_and_values_come_back() {
    let lb = started().await;
    let ex = lb.exec("x = 20").await.unwrap();
    assert!(ex.is_ok());
    let ex = lb.exec("print('hello'); x + 22").await.unwrap();
    assert_eq!(ex.stdout(), "hello\n");
    assert_eq!(ex.result().and_then(MimeBundle::plain).as_deref(), Some("42"));
    assert_eq!(ex.execution_count, Some(2));
    assert_eq!(ex.outcome, Outcome::Ok);
    lb.stop().await.unwrap();
}

/// The kernel starts with debugpy hidden (see the launcher); user code must not notice, and
/// the working directory is on `sys.path` again for it.
#[tokio::test]
async fn the_kernel_launcher_leaves_nothing_behind_for_user_code() {
    let lb = started().await;
    lb.upload_bytes("mymodule.py", "VALUE = 7\n").await.unwrap();
    let code =
        "import sys, gc, debugpy, mymodule\nprint(sys.modules['debugpy'] is debugpy, gc.isenabled(), mymodule.VALUE)";
    let ex = lb.exec(code).await.unwrap();
    assert!(ex.is_ok(), "{:?}", ex.error());
    assert_eq!(ex.stdout(), "True True 7\n");
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn a_cell_that_prints_plots_twice_and_returns_gives_four_outputs_in_order() {
    let lb = started().await;
    let code = "import matplotlib.pyplot as plt\nprint('start')\nplt.plot([1,2,3]); plt.show()\nplt.plot([3,2,1]); plt.show()\n'done'";
    let ex = lb.exec(code).await.unwrap();
    let kinds: Vec<&str> = ex
        .events
        .iter()
        .map(|e| match e {
            ExecEvent::Stdout { .. } => "stdout",
            ExecEvent::Display { .. } => "display",
            ExecEvent::Result { .. } => "result",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["stdout", "display", "display", "result"], "{:?}", ex.events);
    let images = ex.images();
    assert_eq!(images.len(), 2);
    assert!(images.iter().all(|i| i.bytes.starts_with(b"\x89PNG")));
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn exceptions_are_data_with_a_plain_traceback() {
    let lb = started().await;
    let ex = lb.exec("def f():\n    1/0\nf()").await.unwrap();
    assert_eq!(ex.outcome, Outcome::Error);
    let err = ex.error().expect("an error event");
    assert_eq!(err.name, "ZeroDivisionError");
    let tb = err.traceback.join("\n");
    assert!(tb.contains("1/0"), "{tb}");
    assert!(!tb.contains('\u{1b}'), "ANSI codes in {tb:?}");
    // The box still works.
    assert_eq!(lb.exec("1+1").await.unwrap().text(), "2");
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn events_stream_as_they_happen() {
    let lb = started().await;
    let mut stream = lb
        .run_stream("import time\nprint('a', flush=True)\ntime.sleep(0.5)\nprint('b')", RunOptions::new())
        .await
        .unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first, ExecEvent::stdout("a\n"));
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    while let Some(e) = stream.next().await {
        rest.push(e.unwrap());
    }
    // "b" came after "a" was already in our hands: the first event was not held back.
    assert!(started.elapsed() > Duration::from_millis(100));
    assert_eq!(rest.first(), Some(&ExecEvent::stdout("b\n")));
    assert!(rest.last().unwrap().is_end());
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn cwd_and_env_apply_to_one_execution_only() {
    let lb = started().await;
    lb.run_command(codebox_core::CommandSpec::new("mkdir").arg("sub")).await.unwrap();
    let opts = RunOptions::new().with_cwd("sub").with_env("CODEBOX_TEST_VAR", "yes");
    let ex = lb
        .run("import os; print(os.path.basename(os.getcwd()), os.environ.get('CODEBOX_TEST_VAR'))", opts)
        .await
        .unwrap();
    assert_eq!(ex.stdout(), "sub yes\n");
    let ex = lb
        .exec("import os; print(os.path.basename(os.getcwd()) != 'sub', os.environ.get('CODEBOX_TEST_VAR'))")
        .await
        .unwrap();
    assert_eq!(ex.stdout(), "True None\n");
    let err = lb.run("1", RunOptions::new().with_cwd("../..")).await.unwrap_err();
    assert_eq!(err.kind(), codebox_core::ErrorKind::UnsafePath);
    let err = lb.run("1", RunOptions::new().with_env("A=B", "x")).await.unwrap_err();
    assert_eq!(err.kind(), codebox_core::ErrorKind::InvalidInput);
    let err = lb.run("1", RunOptions::new().with_cwd("no-such-dir")).await.unwrap_err();
    assert_eq!(err.kind(), codebox_core::ErrorKind::NotFound);
    // A directory removed between the check and the run: nothing stays half applied.
    lb.run_command(codebox_core::CommandSpec::new("mkdir").arg("gone")).await.unwrap();
    let opts = RunOptions::new().with_cwd("gone").with_env("CODEBOX_HALF", "1");
    let ex = lb.run("import os; os.chdir('..'); os.rmdir('gone'); print('removed')", opts.clone()).await.unwrap();
    assert_eq!(ex.stdout(), "removed\n");
    let err = lb.run("1", opts).await.unwrap_err();
    assert_eq!(err.kind(), codebox_core::ErrorKind::NotFound, "{err}");
    let ex = lb.exec("import os; print(os.environ.get('CODEBOX_HALF'))").await.unwrap();
    assert_eq!(ex.stdout(), "None\n");
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn bash_runs_as_a_language_and_commands_run_in_the_working_dir() {
    let lb = started().await;
    let ex = lb.run("echo out; echo err >&2; pwd", RunOptions::new().with_language("bash")).await.unwrap();
    let wd = lb.working_dir().await.unwrap();
    assert!(ex.stdout().starts_with("out\n"), "{ex:?}");
    assert!(ex.stdout().contains(wd.to_str().unwrap()));
    assert_eq!(ex.stderr(), "err\n");
    let ex = lb.run("exit 3", RunOptions::new().with_language("bash")).await.unwrap();
    assert_eq!(ex.outcome, Outcome::Error);
    assert!(ex.error().unwrap().value.contains('3'));

    let out = lb
        .run_command(codebox_core::CommandSpec::new("sh").args(["-c", "echo $FOO; pwd; exit 4"]).with_env("FOO", "bar"))
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(4));
    assert_eq!(out.stdout, format!("bar\n{}\n", wd.display()));
    let out = lb
        .run_command(codebox_core::CommandSpec::new("sleep").arg("30").with_timeout(Duration::from_millis(300)))
        .await
        .unwrap();
    assert!(out.timed_out);
    assert_eq!(out.exit_code, None);
    let err = lb.run_command(codebox_core::CommandSpec::new("no-such-program-xyz")).await.unwrap_err();
    assert_eq!(err.kind(), codebox_core::ErrorKind::NotFound);
    let err = lb.run("1", RunOptions::new().with_language("cobol")).await.unwrap_err();
    assert_eq!(err.kind(), codebox_core::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("bash"), "{err}");
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn restart_forgets_variables_but_keeps_files() {
    let lb = started().await;
    lb.exec("x = 1\nopen('kept.txt','w').write('k')").await.unwrap();
    let pid = lb.kernel_pid().await.unwrap();
    lb.restart().await.unwrap();
    assert_ne!(lb.kernel_pid().await.unwrap(), pid);
    let ex = lb.exec("x").await.unwrap();
    assert_eq!(ex.error().unwrap().name, "NameError");
    assert_eq!(lb.exec("open('kept.txt').read()").await.unwrap().text(), "'k'");
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn stop_removes_the_working_dir_and_boxes_are_independent() {
    let (a, b) = tokio::join!(started(), started());
    assert_ne!(a.id(), b.id());
    a.exec("v = 'a'").await.unwrap();
    b.exec("v = 'b'").await.unwrap();
    let (ra, rb) = tokio::join!(a.exec("v"), b.exec("v"));
    assert_eq!(ra.unwrap().text(), "'a'");
    assert_eq!(rb.unwrap().text(), "'b'");
    let wd = a.working_dir().await.unwrap();
    assert!(wd.is_dir());
    a.stop().await.unwrap();
    assert!(!wd.exists());
    assert_eq!(a.exec("1").await.unwrap_err().kind(), codebox_core::ErrorKind::NotRunning);
    assert_eq!(a.status().await.unwrap().state, codebox_core::BoxState::Stopped);
    b.stop().await.unwrap();
}

#[tokio::test]
async fn install_runs_pip_and_reports_its_failure() {
    let lb = started().await;
    let err = lb.install(&["codebox-no-such-package-zzz==0.0.0".to_owned()]).await.unwrap_err();
    assert_eq!(err.kind(), codebox_core::ErrorKind::Install);
    assert!(err.to_string().contains("codebox-no-such-package-zzz"), "{err}");
    let err = lb.install(&["--index-url=http://evil".to_owned()]).await.unwrap_err();
    assert_eq!(err.kind(), codebox_core::ErrorKind::InvalidInput);
    lb.stop().await.unwrap();
}

// What the box writes cannot break its own listing: a `json.py` in the working directory
// does not stand in for the module, and a `.dist-info` without metadata in its packages
// directory is left out.
#[tokio::test]
async fn packages_are_listed_whatever_the_box_writes() {
    let lb = started().await;
    let plant = "import os\n\
                 open('json.py', 'w').write('raise SystemExit(3)\\n')\n\
                 os.makedirs('.codebox/site-packages/broken-1.0.dist-info', exist_ok=True)\n\
                 open('.codebox/site-packages/broken-1.0.dist-info/METADATA', 'w').write('')";
    let ex = lb.exec(plant).await.unwrap();
    assert!(ex.is_ok(), "{ex:?}");
    let packages = lb.packages().await.unwrap();
    assert!(packages.iter().any(|p| p.name == "ipykernel"), "{packages:?}");
    assert!(packages.iter().all(|p| !p.name.eq_ignore_ascii_case("broken")), "{packages:?}");
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn installed_packages_import_without_a_restart() {
    // A tiny wheel built on the spot, found by name in a find-links directory of the box's
    // pip settings, so the test needs no network (install takes names, never paths).
    let wheels = tempfile::tempdir().unwrap();
    let lb = crate::builder().with_env("PIP_FIND_LINKS", wheels.path().to_string_lossy()).build().unwrap();
    lb.start().await.unwrap();
    let name = format!("codebox_probe_{}", lb.id().replace('-', "_"));
    let make_wheel = format!(
        "import zipfile, os\n\
         name = {name:?}\n\
         whl = os.path.abspath(f'{{name}}-0.1-py3-none-any.whl')\n\
         with zipfile.ZipFile(whl, 'w') as z:\n    \
         z.writestr(f'{{name}}/__init__.py', 'VALUE = 42\\n')\n    \
         z.writestr(f'{{name}}-0.1.dist-info/METADATA', f'Metadata-Version: 2.1\\nName: {{name}}\\nVersion: 0.1\\n')\n    \
         z.writestr(f'{{name}}-0.1.dist-info/WHEEL', 'Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n')\n    \
         z.writestr(f'{{name}}-0.1.dist-info/RECORD', '')\n\
         print(whl)"
    );
    let ex = lb.exec(&make_wheel).await.unwrap();
    assert!(ex.is_ok(), "{ex:?}");
    let wheel = std::path::PathBuf::from(ex.stdout().trim());
    std::fs::copy(&wheel, wheels.path().join(wheel.file_name().unwrap())).unwrap();
    let before = lb.exec(&format!("import {name}")).await.unwrap();
    assert_eq!(before.error().unwrap().name, "ModuleNotFoundError");
    let output = lb.install(std::slice::from_ref(&name)).await.unwrap();
    assert!(output.contains("Successfully installed"), "{output}");
    let after = lb.exec(&format!("import {name}\n{name}.VALUE")).await.unwrap();
    let python = lb.python().await.unwrap();
    let cleanup =
        codebox_core::CommandSpec::new(python.to_string_lossy()).args(["-m", "pip", "uninstall", "-y", &name]);
    lb.run_command(cleanup).await.unwrap();
    assert_eq!(after.text(), "42", "{after:?}");
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn a_pool_hands_out_ready_kernels() {
    let pool = codebox_local::KernelPool::new(1);
    let builder = crate::builder().with_pool(pool.clone());
    pool.prewarm(&builder).await.unwrap();
    assert_eq!(pool.ready(), 1);
    let lb = builder.clone().build().unwrap();
    lb.start().await.unwrap();
    assert_eq!(lb.exec("1+1").await.unwrap().text(), "2");
    // The pool refills in the background.
    for _ in 0..200 {
        if pool.ready() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pool.ready(), 1);
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn unknown_kernels_are_refused_with_the_list_of_available_ones() {
    let lb = crate::builder().with_kernel("no-such-kernel").build().unwrap();
    let err = lb.start().await.unwrap_err();
    assert_eq!(err.kind(), codebox_core::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("python3"), "{err}");
}

#[tokio::test]
async fn a_kernelspec_from_the_jupyter_path_runs_over_tcp_with_signal_interrupts() {
    // The Python the other tests use, behind a wrapper whose prefix holds a kernelspec.
    let probe = started().await;
    let real = probe.python().await.unwrap();
    probe.stop().await.unwrap();
    let prefix = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(prefix.path().join("bin")).unwrap();
    let wrapper = prefix.path().join("bin/python");
    std::fs::write(&wrapper, format!("#!/bin/sh\nexec {} \"$@\"\n", real.display())).unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let spec_dir = prefix.path().join("share/jupyter/kernels/spec-py");
    std::fs::create_dir_all(&spec_dir).unwrap();
    let spec = serde_json::json!({
        "argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "spec-py", "language": "python", "interrupt_mode": "signal",
    });
    std::fs::write(spec_dir.join("kernel.json"), spec.to_string()).unwrap();

    // Unsandboxed: under bubblewrap every kernel speaks IPC and is interrupted by message.
    let lb = crate::builder()
        .with_python(&wrapper)
        .with_kernel("spec-py")
        .with_sandbox(codebox_local::SandboxPolicy::default().with_isolation(codebox_local::Isolation::None))
        .build()
        .unwrap();
    lb.start().await.unwrap();
    assert_eq!(lb.status().await.unwrap().isolation.as_deref(), Some("none"));
    assert!(lb.exec("import sys; sys.argv[-1]").await.unwrap().text().contains(".json"));
    assert!(lb.capabilities().languages.contains(&"spec-py".to_owned()));
    let mut stream =
        lb.run_stream("import time\nprint('go', flush=True)\ntime.sleep(100)", RunOptions::new()).await.unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap(), ExecEvent::stdout("go\n"));
    lb.interrupt().await.unwrap();
    let ex =
        tokio::time::timeout(Duration::from_secs(30), codebox_core::Execution::collect(stream)).await.unwrap().unwrap();
    assert_eq!(ex.outcome, Outcome::Interrupted);
    lb.stop().await.unwrap();

    let err = crate::builder().with_python(&wrapper).with_kernel("nope").build().unwrap().start().await.unwrap_err();
    assert!(err.to_string().contains("spec-py"), "the list names discovered kernelspecs: {err}");
}

#[tokio::test]
async fn a_kernel_that_does_not_run_python_is_not_offered_python_or_install() {
    // The built-in kernel runs Python, known before it starts.
    let python_box = crate::builder().build().unwrap();
    let caps = python_box.capabilities();
    assert!(caps.languages.contains(&"python".to_owned()) && caps.install, "{caps:?}");

    // A kernelspec whose declared language is not Python. What it runs is ipykernel, so the
    // test can start it; the box goes by what the kernelspec says.
    let probe = started().await;
    let real = probe.python().await.unwrap();
    probe.stop().await.unwrap();
    let prefix = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(prefix.path().join("bin")).unwrap();
    let wrapper = prefix.path().join("bin/python");
    std::fs::write(&wrapper, format!("#!/bin/sh\nexec {} \"$@\"\n", real.display())).unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let spec_dir = prefix.path().join("share/jupyter/kernels/spec-scheme");
    std::fs::create_dir_all(&spec_dir).unwrap();
    let spec = serde_json::json!({
        "argv": [wrapper.to_string_lossy(), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "spec-scheme", "language": "scheme",
    });
    std::fs::write(spec_dir.join("kernel.json"), spec.to_string()).unwrap();
    let lb = crate::builder()
        .with_python(&wrapper)
        .with_kernel("spec-scheme")
        .with_sandbox(codebox_local::SandboxPolicy::default().with_isolation(codebox_local::Isolation::None))
        .build()
        .unwrap();

    // Before it starts, and after.
    for started in [false, true] {
        let caps = lb.capabilities();
        assert!(!caps.languages.contains(&"python".to_owned()), "started: {started}, {caps:?}");
        assert!(caps.languages.contains(&"spec-scheme".to_owned()) && caps.languages.contains(&"bash".to_owned()));
        assert!(!caps.install, "started: {started}");
        if !started {
            lb.start().await.unwrap();
        }
    }
    // Code with no language named, or the kernel's name, goes to the kernel; bash still runs.
    assert_eq!(lb.exec("1+1").await.unwrap().text(), "2");
    let named = lb.run("2+2", RunOptions::new().with_language("spec-scheme")).await.unwrap();
    assert_eq!(named.text(), "4");
    let bash = lb.run("echo hi", RunOptions::new().with_language("bash")).await.unwrap();
    assert_eq!(bash.stdout(), "hi\n");
    // Python is refused, not sent to the wrong kernel; so is what needs Python statements.
    for language in ["python", "python3"] {
        let err = lb.run("1", RunOptions::new().with_language(language)).await.unwrap_err();
        assert_eq!(err.kind(), codebox_core::ErrorKind::InvalidInput, "{err}");
        assert!(err.to_string().contains("needs a Python kernel"), "{err}");
        assert!(err.to_string().contains("\"scheme\""), "{err}");
    }
    let err = lb.run("1", RunOptions::new().with_cwd(".")).await.unwrap_err();
    assert_eq!(err.kind(), codebox_core::ErrorKind::InvalidInput, "{err}");
    let err = lb.install(&["six".to_owned()]).await.unwrap_err();
    assert_eq!(err.kind(), codebox_core::ErrorKind::Unsupported, "{err}");
    lb.stop().await.unwrap();
}

//! `codebox run`: output streams, exit statuses, JSON events, images and usage errors.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn codebox(args: &[&str], stdin: Option<&str>, cwd: &std::path::Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_codebox"));
    cmd.args(args)
        .current_dir(cwd)
        // The environment picks the box: make sure it is a local one.
        .env_remove("CODEBOX_API_KEY")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn codebox");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn code_from_the_command_line_prints_stdout_and_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let out =
        codebox(&["run", "-c", "import sys\nprint('out')\nprint('err', file=sys.stderr)\n6 * 7"], None, dir.path());
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "out\n42\n");
    assert_eq!(text(&out.stderr), "err\n");
}

#[test]
fn raised_code_exits_1_with_its_traceback() {
    let dir = tempfile::tempdir().unwrap();
    let out = codebox(&["run", "-c", "def f():\n    raise ValueError('bad value')\nf()"], None, dir.path());
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("ValueError: bad value"), "{stderr}");
    assert!(stderr.contains("f()"), "traceback frames missing: {stderr}");
}

#[test]
fn code_from_a_file_and_from_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prog.py");
    std::fs::write(&file, "print('from file')").unwrap();
    let out = codebox(&["run", file.to_str().unwrap()], None, dir.path());
    assert_eq!(text(&out.stdout), "from file\n", "{out:?}");
    let out = codebox(&["run"], Some("print('from stdin')"), dir.path());
    assert_eq!(text(&out.stdout), "from stdin\n", "{out:?}");
}

#[test]
fn json_mode_prints_one_event_per_line_ending_with_end() {
    let dir = tempfile::tempdir().unwrap();
    let out = codebox(&["run", "--json", "-c", "print('a')\n1 + 1"], None, dir.path());
    assert!(out.status.success(), "{out:?}");
    let events: Vec<serde_json::Value> =
        text(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(events.first().unwrap()["type"], "stdout");
    assert!(events.iter().any(|e| e["type"] == "result" && e["data"]["text/plain"] == "2"), "{events:?}");
    let end = events.last().unwrap();
    assert_eq!(end["type"], "end");
    assert_eq!(end["outcome"], "ok");
}

#[test]
fn images_are_written_to_files_whose_paths_are_printed() {
    let dir = tempfile::tempdir().unwrap();
    let code = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()";
    let out = codebox(&["run", "-c", code], None, dir.path());
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout);
    let path = stdout.trim().strip_prefix("[image: ").and_then(|p| p.strip_suffix(']')).expect(&stdout);
    let bytes = std::fs::read(dir.path().join(path)).unwrap();
    assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
}

#[test]
fn a_timeout_interrupts_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let out = codebox(&["run", "--timeout", "1", "-c", "import time\ntime.sleep(60)"], None, dir.path());
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("timeout"), "{out:?}");
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = codebox(&["run", "--timeout=0", "-c", "1"], None, dir.path());
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("--timeout"), "{out:?}");
    let out = codebox(&["run", dir.path().join("missing.py").to_str().unwrap()], None, dir.path());
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("missing.py"), "{out:?}");
    let out = codebox(&["run", "--no-such-flag"], None, dir.path());
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn an_unreachable_server_is_a_box_failure() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_codebox"))
        .args(["run", "-c", "1"])
        .current_dir(dir.path())
        .env("CODEBOX_API_KEY", "sk-cli-test-secret")
        // Port 9 on loopback: nothing listens there.
        .env("CODEBOX_BASE_URL", "http://127.0.0.1:9")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("sk-cli-test-secret"), "the key leaked: {stderr}");
    assert!(stderr.contains("connect") || stderr.contains("Connection") || stderr.contains("connection"), "{stderr}");
}

#[test]
fn the_binary_speaks_tls_to_an_https_server() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_codebox"))
        .args(["run", "-c", "1"])
        .current_dir(dir.path())
        .env("CODEBOX_API_KEY", "sk-cli-test-secret")
        // Port 9 on loopback: nothing listens there. Without TLS built in, the URL would be
        // refused before any connection was tried.
        .env("CODEBOX_BASE_URL", "https://127.0.0.1:9")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("needs TLS"), "{stderr}");
    assert!(stderr.to_lowercase().contains("connect"), "{stderr}");
}

/// `codebox run` in a fresh `CODEBOX_HOME`, so it builds its own managed environment there
/// instead of using the shared one the other tests use (or `CODEBOX_PYTHON`).
fn codebox_in_fresh_home(args: &[&str], home: &std::path::Path, cwd: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_codebox"))
        .args(args)
        .current_dir(cwd)
        .env_remove("CODEBOX_API_KEY")
        .env_remove("CODEBOX_PYTHON")
        .env("CODEBOX_HOME", home)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Whether `line` is `<RFC 3339 UTC time> codebox: <what>`.
fn is_timestamped(line: &str) -> bool {
    let Some((time, rest)) = line.split_once(' ') else { return false };
    let shape = time.len() == "2026-01-02T03:04:05Z".len()
        && time.ends_with('Z')
        && time.char_indices().all(|(i, c)| match i {
            4 | 7 => c == '-',
            10 => c == 'T',
            13 | 16 => c == ':',
            19 => c == 'Z',
            _ => c.is_ascii_digit(),
        });
    shape && rest.starts_with("codebox: ")
}

/// Check that `stderr` is the progress of building the data profile's environment in
/// `python`: timestamped lines, one as each step starts and ends, and nothing else.
fn assert_build_steps(stderr: &str, python: &std::path::Path) {
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines.iter().all(|l| is_timestamped(l)), "every line is a timestamped progress line: {stderr}");
    let expected = [
        format!("building the Python environment {} (4 steps)", python.display()),
        "[1/4] creating the venv from ".to_owned(),
        "[1/4] venv done in ".to_owned(),
        "[2/4] installing ipykernel dill (profile data)".to_owned(),
        "[2/4] ipykernel dill done in ".to_owned(),
        "[3/4] installing numpy pandas (profile data)".to_owned(),
        "[3/4] numpy pandas done in ".to_owned(),
        "[4/4] installing matplotlib (profile data)".to_owned(),
        "[4/4] matplotlib done in ".to_owned(),
        format!("the Python environment {} is ready (", python.display()),
    ];
    let said: Vec<&str> = lines.iter().filter_map(|l| l.split_once(" codebox: ").map(|(_, what)| what)).collect();
    assert_eq!(said.len(), expected.len(), "one line as each step starts and ends: {stderr}");
    for (line, start) in said.iter().zip(&expected) {
        assert!(line.starts_with(start.as_str()), "{line:?} should start with {start:?}: {stderr}");
    }
}

#[test]
fn a_first_run_shows_each_step_of_building_the_environment_on_stderr_only() {
    let dir = tempfile::tempdir().unwrap();
    // Stderr is a pipe here: plain timestamped lines there, and the code's output alone on stdout.
    let home = tempfile::tempdir().unwrap();
    let out = codebox_in_fresh_home(&["run", "-c", "print('built')\n6 * 7"], home.path(), dir.path());
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "built\n42\n");
    assert_build_steps(&text(&out.stderr), &home.path().join("python"));

    // With --json, stdout stays JSON lines only while the environment is built.
    let json_home = tempfile::tempdir().unwrap();
    let out = codebox_in_fresh_home(&["run", "--json", "-c", "print('built')"], json_home.path(), dir.path());
    assert!(out.status.success(), "{out:?}");
    let events: Vec<serde_json::Value> =
        text(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("stdout is JSON lines only")).collect();
    assert_eq!(events.first().unwrap()["type"], "stdout", "{events:?}");
    assert_eq!(events.last().unwrap()["type"], "end", "{events:?}");
    assert_build_steps(&text(&out.stderr), &json_home.path().join("python"));

    // Once the environment is there, a run says nothing about it.
    let out = codebox_in_fresh_home(&["run", "-c", "print('again')"], home.path(), dir.path());
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "again\n");
    assert_eq!(text(&out.stderr), "");
}

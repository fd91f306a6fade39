//! `cargo xtask bench`: builds `codebox-bench` in release, runs each of its binaries, and
//! merges the JSON object each prints into one report with a description of the machine.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};

use crate::date::rfc3339_utc;
use crate::workspace::{Metadata, cargo, git, output, root, run as run_cmd};

const BENCH_PACKAGE: &str = "codebox-bench";
/// Lines of a failing binary's stderr kept in its error entry.
const STDERR_TAIL: usize = 20;

/// Options of `cargo xtask bench`.
#[derive(Debug)]
pub(crate) struct Options {
    /// Run only the binaries with these names.
    pub(crate) only: Vec<String>,
    /// Where to write the report (default `target/bench/report.json`).
    pub(crate) out: Option<PathBuf>,
    /// Kill a binary that runs longer than this.
    pub(crate) timeout: Duration,
    /// Arguments passed to every binary.
    pub(crate) args: Vec<String>,
}

/// Builds, runs and reports.
pub(crate) fn run(opts: &Options) -> Result<()> {
    let meta = Metadata::load()?;
    let available = &meta.package(BENCH_PACKAGE)?.bins;
    for name in &opts.only {
        if !available.contains(name) {
            bail!("no benchmark named `{name}` (available: {})", available.join(", "));
        }
    }
    let selected: Vec<&String> = available.iter().filter(|b| opts.only.is_empty() || opts.only.contains(b)).collect();
    if selected.is_empty() {
        bail!("{BENCH_PACKAGE} has no binaries in bench/src/bin");
    }

    eprintln!("==> building {BENCH_PACKAGE} (release)");
    run_cmd(cargo().args(["build", "--release", "--locked", "--package", BENCH_PACKAGE, "--bins"]))?;

    let machine = machine();
    let mut results = Map::new();
    for name in selected {
        let exe = meta.target_directory.join("release").join(name);
        eprintln!("\n==> bench {name}: {}", exe.display());
        let started = Instant::now();
        let outcome = run_one(&exe, &opts.args, &meta.target_directory, opts.timeout);
        let entry = match outcome {
            Ok(value) => value,
            Err(e) => {
                eprintln!("==> bench {name} failed: {}", e.message);
                e.into_entry()
            }
        };
        eprintln!("==> bench {name} took {:.1}s", started.elapsed().as_secs_f64());
        results.insert(name.clone(), entry);
    }

    let report = json!({ "machine": machine, "results": results });
    let out = opts.out.clone().unwrap_or_else(|| meta.target_directory.join("bench").join("report.json"));
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", out.display()))?;

    eprintln!("\n==> summary");
    for line in summarize(&report["results"]) {
        eprintln!("    {line}");
    }
    eprintln!("==> report written to {}", out.display());
    Ok(())
}

/// Why a benchmark binary produced no result.
#[derive(Debug)]
struct Failure {
    message: String,
    status: Option<i32>,
    stderr_tail: Vec<String>,
}

impl Failure {
    fn into_entry(self) -> Value {
        json!({ "error": self.message, "exit_code": self.status, "stderr_tail": self.stderr_tail })
    }
}

/// Runs one binary from the workspace root, with `CARGO_TARGET_DIR` set so it finds its caches:
/// stderr is shown live and its tail kept; stdout must be one JSON object.
fn run_one(exe: &Path, args: &[String], target_dir: &Path, timeout: Duration) -> Result<Value, Failure> {
    let fail = |message: String| Failure { message, status: None, stderr_tail: Vec::new() };
    let mut child = Command::new(exe)
        .args(args)
        .current_dir(root())
        .env("CARGO_TARGET_DIR", target_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| fail(format!("could not start {}: {e}", exe.display())))?;

    let mut stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        stdout.read_to_end(&mut buf).map(|_| buf)
    });
    let err_reader = std::thread::spawn(move || {
        let mut tail = VecDeque::with_capacity(STDERR_TAIL);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("    | {line}");
            if tail.len() == STDERR_TAIL {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        Vec::from(tail)
    });

    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                // The binary runs in its own process group: take its children (kernels, servers) too,
                // or they would hold the pipes open.
                let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).status();
                let _ = child.kill();
                break child.wait();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => break Err(e),
        }
    };
    let stdout = out_reader.join().ok().and_then(Result::ok).unwrap_or_default();
    let stderr_tail = err_reader.join().unwrap_or_default();
    let status = status.map_err(|e| fail(format!("waiting for {}: {e}", exe.display())))?;

    let failure = |message: String| Failure { message, status: status.code(), stderr_tail: stderr_tail.clone() };
    if timed_out {
        return Err(failure(format!("timed out after {timeout:?}")));
    }
    if !status.success() {
        return Err(failure(format!("exited with {status}")));
    }
    parse_result(&String::from_utf8_lossy(&stdout)).map_err(failure)
}

/// The JSON object a benchmark printed: the whole of stdout, or failing that its last line.
fn parse_result(stdout: &str) -> Result<Value, String> {
    let whole = stdout.trim();
    let parsed = serde_json::from_str::<Value>(whole).or_else(|e| {
        whole.lines().last().map_or(Err(e.to_string()), |l| serde_json::from_str(l).map_err(|e| e.to_string()))
    });
    match parsed {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(other) => Err(format!("printed JSON that is not an object: {other}")),
        Err(e) if whole.is_empty() => Err(format!("printed nothing on stdout ({e})")),
        Err(e) => {
            let start: String = whole.chars().take(200).collect();
            Err(format!("did not print one JSON object on stdout ({e}): {start}"))
        }
    }
}

/// Lines of the form `bench.path.to.ratio = value` for every ratio-like number (its key, or
/// an enclosing key, names a ratio, speedup or overhead), and one line per failed benchmark.
/// Thresholds (keys starting with `target`) are not measurements and are left out.
fn summarize(results: &Value) -> Vec<String> {
    fn walk(path: &str, in_ratio: bool, value: &Value, lines: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    let lower = key.to_lowercase();
                    if lower.starts_with("target") {
                        continue;
                    }
                    let ratio_like = in_ratio || ["ratio", "speedup", "overhead"].iter().any(|w| lower.contains(w));
                    walk(&format!("{path}.{key}"), ratio_like, v, lines);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    walk(&format!("{path}[{i}]"), in_ratio, v, lines);
                }
            }
            Value::Number(n) if in_ratio => {
                let shown = n.as_f64().map_or_else(|| n.to_string(), |f| format!("{f:.3}"));
                lines.push(format!("{path} = {shown}"));
            }
            _ => {}
        }
    }
    let mut lines = Vec::new();
    for (name, result) in results.as_object().into_iter().flatten() {
        if let Some(err) = result.get("error").and_then(Value::as_str) {
            lines.push(format!("{name}: FAILED: {err}"));
        } else {
            let before = lines.len();
            walk(name, false, result, &mut lines);
            if lines.len() == before {
                lines.push(format!("{name}: ok (no ratio fields)"));
            }
        }
    }
    lines
}

/// What the numbers were measured on.
fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let mem_total_bytes = read("/proc/meminfo").and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
    });
    let cpu = read("/proc/cpuinfo").and_then(|c| {
        c.lines().find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned()))
    });
    let os = read("/etc/os-release")
        .and_then(|r| r.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_owned())));
    let rustc = Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let commit = output(git(&root()).args(["rev-parse", "HEAD"])).ok().map(|s| s.trim().to_owned());
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "mem_total_bytes": mem_total_bytes,
        "mem_total_gib": mem_total_bytes.map(|b| (b as f64 / (1u64 << 30) as f64 * 10.0).round() / 10.0),
        "kernel": read("/proc/sys/kernel/osrelease").map(|k| k.trim().to_owned()),
        "os": os,
        "cpu": cpu,
        "rustc": rustc,
        "git_commit": commit,
        "date": rfc3339_utc(SystemTime::now()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn result_is_the_json_object_on_stdout() {
        assert_eq!(parse_result("{\"a\": 1}\n").unwrap(), json!({"a": 1}));
        // Stray lines before the object are tolerated; the object is the last line.
        assert_eq!(parse_result("warming up\n{\"a\": 1}\n").unwrap(), json!({"a": 1}));
    }

    #[test]
    fn stdout_without_one_json_object_is_a_failure() {
        assert!(parse_result("").unwrap_err().contains("printed nothing"));
        assert!(parse_result("[1, 2]").unwrap_err().contains("not an object"));
        assert!(parse_result("p50=3ms").unwrap_err().contains("did not print one JSON object"));
    }

    #[test]
    fn summary_lists_ratio_fields_and_failures() {
        let results = json!({
            "local": {
                "warm": {"p50_ms": 0.4, "ratio_vs_reference": 0.8123},
                "cold": {"speedup": 2},
                "ratios_over_reference": {"cold_p50": 0.657},
                "targets": {"warm_ratio_max": 0.9},
                "target_ratio_min": 1.0,
            },
            "remote": {"error": "exited with exit status: 1"},
            "server": {"p50_ms": 1.0},
        });
        assert_eq!(
            summarize(&results),
            [
                "local.cold.speedup = 2.000",
                "local.ratios_over_reference.cold_p50 = 0.657",
                "local.warm.ratio_vs_reference = 0.812",
                "remote: FAILED: exited with exit status: 1",
                "server: ok (no ratio fields)",
            ]
        );
    }

    #[test]
    fn failing_binary_becomes_an_error_entry_with_its_stderr() {
        let err = run_one(Path::new("sh"), &["-c".into(), "echo boom >&2; exit 3".into()], Path::new("target"), MINUTE)
            .unwrap_err();
        assert_eq!(err.status, Some(3));
        assert_eq!(err.stderr_tail, ["boom"]);
        let entry = err.into_entry();
        assert_eq!(entry["exit_code"], 3);
        assert!(entry["error"].as_str().unwrap().contains("exit status: 3"), "{entry}");
    }

    #[test]
    fn binary_that_overruns_is_killed_and_reported() {
        let err =
            run_one(Path::new("sleep"), &["30".into()], Path::new("target"), Duration::from_millis(200)).unwrap_err();
        assert_eq!(err.message, "timed out after 200ms");
    }

    #[test]
    fn successful_binary_yields_its_object() {
        let script = r#"echo "{\"ratio\": 1.5, \"target\": \"$CARGO_TARGET_DIR\"}""#;
        let value = run_one(Path::new("sh"), &["-c".into(), script.into()], Path::new("/t/target"), MINUTE).unwrap();
        assert_eq!(value, json!({"ratio": 1.5, "target": "/t/target"}));
    }

    #[test]
    fn machine_describes_this_host() {
        let m = machine();
        assert!(m["nproc"].as_u64().unwrap() >= 1, "{m}");
        assert!(m["mem_total_bytes"].as_u64().unwrap() > 0, "{m}");
        assert!(!m["kernel"].as_str().unwrap().is_empty(), "{m}");
        assert_eq!(m["date"].as_str().unwrap().len(), "2026-01-01T00:00:00Z".len(), "{m}");
    }

    #[test]
    fn rfc3339_formats_utc() {
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_795_297_191);
        assert_eq!(rfc3339_utc(t), "2026-11-21T21:39:51Z");
    }
}

//! The behaviour every backend must share, as a runnable suite.
//!
//! Every backend's tests call [`run_all`] on a started box and assert that the report
//! passed (then [`processes_end_with_the_box`], which stops the box); so LocalBox, RemoteBox against a real server, and anything added later are held
//! to the same contract. The checks that are not about Python (state across cells, streams,
//! errors as data, rich display, files, timeouts, interrupts, restarts) run the snippets of a
//! [`Dialect`]: Python's by default (the box's default kernel must then be a Python (IPython)
//! kernel, and the Python-only checks, such as matplotlib's figures, run too), or
//! [`Dialect::javascript`] and [`Dialect::typescript`] for a Deno kernel.
//!
//! Long file: the list of checks `run_all` runs and the core checks themselves; checks of a
//! newer area each live in a submodule (`file_ops`, `history`, `ports`, `contexts`, `metrics`,
//! `artifacts`, `processes`).
//!
//! ```no_run
//! # async fn demo(b: &dyn codebox_core::CodeBox) {
//! use codebox_core::conformance::{run_all, ConformanceOptions};
//! let report = run_all(b, &ConformanceOptions::default()).await;
//! report.assert_all_passed();
//! # }
//! ```
//!
//! Long file: the runner and the checks every backend has had from the start stay side by
//! side; checks of later features live in their own modules.

use std::fmt::Write as _;
use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;

use crate::{CodeBox, CodeBoxExt, ErrorKind, ExecEvent, Execution, FileInfo, FileKind, Outcome, Result, RunOptions};

mod artifacts;
mod contexts;
mod dialect;
mod file_ops;
mod history;
mod metrics;
mod ports;
mod processes;

pub use dialect::Dialect;
pub use processes::{check_processes, processes_end_with_the_box};

/// The environment variable naming the file where [`requires`] records a skipped test
/// (`cargo xtask ci` sets it and reports every line after the tests).
pub const SKIP_LOG_ENV: &str = "CODEBOX_TEST_SKIP_LOG";

/// Whether the calling test can run, given that it needs `what` and `present` says whether
/// this machine has it. When it cannot, this says so loudly on stderr, naming the test and
/// what it needs, and appends the same line to the file [`SKIP_LOG_ENV`] names; under
/// `CI=true` it panics instead, so a CI run never passes with a test skipped.
///
/// ```no_run
/// # fn running_as_root() -> bool { true }
/// # fn a_test() {
/// if !codebox_core::conformance::requires("root (session uids, cgroups)", running_as_root()) {
///     return;
/// }
/// # }
/// ```
#[expect(clippy::print_stderr, reason = "a skipped test must be seen by whoever runs the tests")]
pub fn requires(what: &str, present: bool) -> bool {
    if present {
        return true;
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    let line = format!("SKIPPED {test}: needs {what}");
    let ci =
        std::env::var("CI").is_ok_and(|v| !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "false" | "no"));
    assert!(!ci, "{line} (CI=true: a skipped test fails the run)");
    eprintln!("\n*** {line} ***\n");
    if let Some(log) = std::env::var_os(SKIP_LOG_ENV) {
        use std::io::Write as _;
        // One `write` of a whole line to an O_APPEND file: lines of tests in parallel do not mix.
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
        if let Err(e) = appended {
            panic!("{line}, and recording it in {} failed: {e}", std::path::Path::new(&log).display());
        }
    }
    false
}

/// Tunables for the suite.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConformanceOptions {
    /// Fail the matplotlib check when matplotlib is not installed in the box. When false,
    /// a box without matplotlib is only checked for a clean import error.
    pub require_matplotlib: bool,
    /// The size of the large file in the round-trip check (must exceed 64 MiB to be
    /// meaningful for chunked transfer).
    pub large_file_bytes: usize,
    /// The timeout used by the timeout check.
    pub timeout: Duration,
    /// The language of the code the checks run (default: [`Dialect::python`]).
    pub dialect: Dialect,
}

impl Default for ConformanceOptions {
    fn default() -> Self {
        Self {
            require_matplotlib: false,
            large_file_bytes: (64 << 20) + 4099,
            timeout: Duration::from_secs(1),
            dialect: Dialect::python(),
        }
    }
}

impl ConformanceOptions {
    /// Require matplotlib (and so a PNG) in the box.
    pub fn with_require_matplotlib(mut self, yes: bool) -> Self {
        self.require_matplotlib = yes;
        self
    }

    /// Set the large file size.
    pub fn with_large_file_bytes(mut self, bytes: usize) -> Self {
        self.large_file_bytes = bytes;
        self
    }

    /// Run the checks' code in this language.
    pub fn with_dialect(mut self, dialect: Dialect) -> Self {
        self.dialect = dialect;
        self
    }
}

/// What went wrong in a check that failed, in words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CheckFailure(pub String);

impl From<String> for CheckFailure {
    fn from(what: String) -> Self {
        Self(what)
    }
}

impl From<&str> for CheckFailure {
    fn from(what: &str) -> Self {
        Self(what.to_owned())
    }
}

/// The outcome of one check.
#[derive(Debug, Clone)]
pub struct CheckResult {
    /// The check's name.
    pub name: &'static str,
    /// `Ok` with a note, or `Err` with what went wrong.
    pub outcome: std::result::Result<String, CheckFailure>,
    /// How long the check took.
    pub elapsed: Duration,
}

/// The outcome of a whole run.
#[derive(Debug, Clone, Default)]
pub struct ConformanceReport {
    /// One entry per check, in the order they ran.
    pub checks: Vec<CheckResult>,
}

impl ConformanceReport {
    /// The checks that failed.
    pub fn failures(&self) -> Vec<&CheckResult> {
        self.checks.iter().filter(|c| c.outcome.is_err()).collect()
    }

    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.failures().is_empty() && !self.checks.is_empty()
    }

    /// A readable summary, one line per check.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            let (mark, text) = match &c.outcome {
                Ok(note) => ("ok  ", note.as_str()),
                Err(e) => ("FAIL", e.0.as_str()),
            };
            let _ = writeln!(out, "{mark} {:<28} {:>7.0} ms  {text}", c.name, c.elapsed.as_secs_f64() * 1e3);
        }
        out
    }

    /// Panic with the summary unless every check passed.
    #[track_caller]
    pub fn assert_all_passed(&self) {
        assert!(self.passed(), "conformance failures:\n{}", self.summary());
    }
}

type CheckOutcome = std::result::Result<String, CheckFailure>;

/// What a step of a check gives: a value, or why the check failed.
type Checked<T> = std::result::Result<T, CheckFailure>;

/// Start the box (if needed) and run every check against it. The box is left running.
pub async fn run_all(b: &dyn CodeBox, options: &ConformanceOptions) -> ConformanceReport {
    let mut report = ConformanceReport::default();
    if let Err(e) = b.start().await {
        report.checks.push(CheckResult {
            name: "start",
            outcome: Err(CheckFailure(e.to_string())),
            elapsed: Duration::ZERO,
        });
        return report;
    }
    macro_rules! check {
        ($name:literal, $fut:expr) => {
            report.checks.push(timed($name, $fut).await);
        };
    }
    let d = &options.dialect;
    check!("status_running", status_running(b));
    check!("state_persists", state_persists(b, d));
    check!("stdout_stderr_in_order", stdout_stderr_in_order(b, d));
    check!("stream_ends_once", stream_ends_once(b, d));
    check!("exception_is_data", exception_is_data(b, d));
    check!("rich_display", rich_display(b, d));
    check!("several_displays", several_displays(b, d));
    if d.python {
        check!("matplotlib_png", matplotlib_png(b, options.require_matplotlib));
        check!("packages_listed", packages_listed(b));
    }
    check!("file_round_trip", file_round_trip(b, options.large_file_bytes));
    check!("files_visible_to_code", files_visible_to_code(b, d));
    check!("list_and_delete", list_and_delete(b));
    check!("file_ops", file_ops::file_ops(b));
    check!("unsafe_paths_refused", unsafe_paths_refused(b, d));
    check!("symlink_escape_refused", symlink_escape_refused(b, d));
    check!("timeout_keeps_box", timeout_keeps_box(b, d, options.timeout));
    check!("interrupt", interrupt(b, d));
    check!("ports_reach_the_box", ports::ports_reach_the_box(b, d));
    check!("history_recorded", history::history_recorded(b, d));
    check!("contexts", contexts::contexts(b, d, options.timeout));
    check!("metrics_sane", metrics::metrics_sane(b));
    check!("processes", processes::check_processes(b));
    check!("artifacts_listed", artifacts::artifacts_listed(b, d));
    check!("restart_clears_state", restart_clears_state(b, d));
    check!("history_kept_after_restart", history::history_kept_after_restart(b, d));
    report
}

async fn timed(name: &'static str, fut: impl Future<Output = CheckOutcome>) -> CheckResult {
    let started = Instant::now();
    // A hung check must not hang the suite.
    let outcome = match tokio::time::timeout(Duration::from_secs(120), fut).await {
        Ok(outcome) => outcome,
        Err(_) => Err("did not finish within 120 s".into()),
    };
    CheckResult { name, outcome, elapsed: started.elapsed() }
}

fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Checked<()> {
    if cond { Ok(()) } else { Err(CheckFailure(msg())) }
}

async fn exec(b: &dyn CodeBox, code: &str) -> Checked<Execution> {
    b.run(code, RunOptions::default()).await.map_err(|e| CheckFailure(format!("run({code:?}) failed: {e}")))
}

fn describe(ex: &Execution) -> String {
    format!("outcome {:?}, stdout {:?}, stderr {:?}, error {:?}", ex.outcome, ex.stdout(), ex.stderr(), ex.error())
}

async fn status_running(b: &dyn CodeBox) -> CheckOutcome {
    let status = b.status().await.map_err(|e| e.to_string())?;
    ensure(status.is_running(), || format!("started box reports {status:?}"))?;
    let caps = b.capabilities();
    ensure(!caps.languages.is_empty(), || "capabilities list no language".into())?;
    Ok(format!("{:?}", status.state))
}

async fn state_persists(b: &dyn CodeBox, d: &Dialect) -> CheckOutcome {
    exec(b, &d.set_x).await?;
    let ex = exec(b, &d.x_plus_one).await?;
    ensure(ex.text() == "42", || format!("expected 42, got {}", describe(&ex)))?;
    ensure(ex.execution_count.is_some(), || "no execution count".into())?;
    Ok(String::new())
}

async fn stdout_stderr_in_order(b: &dyn CodeBox, d: &Dialect) -> CheckOutcome {
    let ex = exec(b, &d.print_one_two_three).await?;
    ensure(ex.stdout() == "one\nthree\n", || format!("stdout: {}", describe(&ex)))?;
    ensure(ex.stderr() == "two\n", || format!("stderr: {}", describe(&ex)))?;
    // Chunking is the backend's business (`print` may arrive as "one" then "\n"), so join
    // consecutive events of one stream before comparing the order of lines.
    let mut runs: Vec<(bool, String)> = Vec::new();
    for event in &ex.events {
        let (is_err, text) = match event {
            ExecEvent::Stdout { text } => (false, text),
            ExecEvent::Stderr { text } => (true, text),
            _ => continue,
        };
        match runs.last_mut() {
            Some((last, run)) if *last == is_err => run.push_str(text),
            _ => runs.push((is_err, text.clone())),
        }
    }
    let order: Vec<&str> = runs.iter().flat_map(|(_, run)| run.lines()).collect();
    ensure(order == ["one", "two", "three"], || format!("events out of order: {order:?}"))?;
    Ok(String::new())
}

async fn stream_ends_once(b: &dyn CodeBox, d: &Dialect) -> CheckOutcome {
    let mut stream = b.run_stream(&d.print_streamed, RunOptions::default()).await.map_err(|e| e.to_string())?;
    let mut ends = 0;
    let mut saw_output = false;
    while let Some(event) = stream.next().await {
        match event.map_err(|e| e.to_string())? {
            ExecEvent::End { outcome, .. } => {
                ends += 1;
                ensure(outcome == Outcome::Ok, || format!("outcome {outcome:?}"))?;
            }
            ExecEvent::Stdout { text } if text.contains("streamed") => saw_output = true,
            _ => ensure(ends == 0, || "an event arrived after the end".into())?,
        }
    }
    ensure(ends == 1, || format!("{ends} end events"))?;
    ensure(saw_output, || "stdout never arrived".into())?;
    Ok(String::new())
}

async fn exception_is_data(b: &dyn CodeBox, d: &Dialect) -> CheckOutcome {
    let ex = exec(b, &d.raise_in_function).await?;
    let err = ex.error().ok_or_else(|| format!("no error event: {}", describe(&ex)))?;
    ensure(err.name == d.raised_name, || format!("error name {:?}", err.name))?;
    ensure(err.value.contains(&d.raised_value_part), || format!("error value {:?}", err.value))?;
    let tb = err.traceback.join("\n");
    ensure(tb.contains("conformance_boom"), || format!("traceback lacks the frame: {tb:?}"))?;
    ensure(!tb.contains('\u{1b}'), || "traceback has terminal colour codes".into())?;
    ensure(ex.outcome == Outcome::Error, || format!("outcome {:?}", ex.outcome))?;
    let after = exec(b, "1 + 1").await?;
    ensure(after.text() == "2", || format!("box unusable after an exception: {}", describe(&after)))?;
    Ok(String::new())
}

async fn rich_display(b: &dyn CodeBox, d: &Dialect) -> CheckOutcome {
    let ex = exec(b, &d.display_bundle).await?;
    let displays = ex.displays();
    ensure(displays.len() == 1, || format!("{} displays: {}", displays.len(), describe(&ex)))?;
    let d = displays[0];
    ensure(d.text_of("text/html").as_deref() == Some("<b>bold</b>"), || format!("html: {d:?}"))?;
    ensure(d.plain().as_deref() == Some("bold"), || format!("plain: {d:?}"))?;
    ensure(d.get("application/json").is_some_and(|j| j["k"][1] == 2), || format!("json: {d:?}"))?;
    Ok(String::new())
}

async fn several_displays(b: &dyn CodeBox, d: &Dialect) -> CheckOutcome {
    let ex = exec(b, &d.display_three_then_value).await?;
    let shown: Vec<String> = ex.displays().iter().filter_map(|d| d.plain()).collect();
    ensure(shown == ["shown 0", "shown 1", "shown 2"], || format!("displays {shown:?}: {}", describe(&ex)))?;
    ensure(ex.stdout() == "printed 0\nprinted 1\nprinted 2\n", || describe(&ex))?;
    let last = d.quoted("last value");
    ensure(ex.result().and_then(|r| r.plain()) == Some(last), || describe(&ex))?;
    Ok(String::new())
}

/// `packages()` agrees with what code in the box imports: ipykernel (which every Python
/// kernel runs) is listed at the version its metadata gives, each name once, the box's own
/// installs first. A backend that says it cannot list packages must refuse as `Unsupported`.
async fn packages_listed(b: &dyn CodeBox) -> CheckOutcome {
    if !b.capabilities().packages {
        let err = b.packages().await.err().ok_or("capabilities say no packages(), yet it answered")?;
        ensure(err.kind() == ErrorKind::Unsupported, || format!("packages() refused with {err}"))?;
        return Ok("packages() unsupported".into());
    }
    let packages = b.packages().await.map_err(|e| format!("packages() failed: {e}"))?;
    let probe = exec(b, "import importlib.metadata as m\nprint(m.version('ipykernel'))").await?;
    let expected = probe.stdout().trim().to_owned();
    ensure(!expected.is_empty(), || format!("the box reports no ipykernel version: {}", describe(&probe)))?;
    let normalized = |name: &str| name.to_ascii_lowercase().replace(['-', '.'], "_");
    let ipykernel = packages.iter().find(|p| normalized(&p.name) == "ipykernel");
    ensure(ipykernel.is_some_and(|p| p.version == expected), || {
        format!("ipykernel {expected} expected in packages(), got {ipykernel:?}")
    })?;
    let mut seen = std::collections::BTreeSet::new();
    for p in &packages {
        ensure(!p.name.is_empty() && !p.version.is_empty(), || format!("an unnamed or unversioned entry: {p:?}"))?;
        ensure(seen.insert(normalized(&p.name)), || format!("{} is listed twice", p.name))?;
    }
    let own = packages.iter().take_while(|p| p.installed_by_box).count();
    ensure(packages[own..].iter().all(|p| !p.installed_by_box), || "the box's own installs are not all first".into())?;
    Ok(format!("{} packages, {own} of the box's own", packages.len()))
}

async fn matplotlib_png(b: &dyn CodeBox, required: bool) -> CheckOutcome {
    let probe = exec(b, "import importlib.util\nprint(importlib.util.find_spec('matplotlib') is not None)").await?;
    let present = probe.stdout().trim() == "True";
    if !present {
        ensure(!required, || "matplotlib is required but not installed in the box".into())?;
        return Ok("matplotlib not installed: PNG not checked".into());
    }
    let code = "import matplotlib.pyplot as plt\n\
                fig, ax = plt.subplots(figsize=(2, 2))\nax.plot([1, 3, 2])\nplt.show()\n\
                fig2, ax2 = plt.subplots(figsize=(2, 2))\nax2.bar([1, 2], [3, 4])\nplt.show()";
    let ex = exec(b, code).await?;
    let images = ex.images();
    let pngs: Vec<_> = images.iter().filter(|i| i.mime == "image/png").collect();
    ensure(pngs.len() == 2, || format!("expected 2 PNGs, got {}: {}", pngs.len(), describe(&ex)))?;
    for png in pngs {
        ensure(png.bytes.starts_with(b"\x89PNG\r\n\x1a\n"), || "image/png is not a PNG".into())?;
    }
    Ok("two PNG figures".into())
}

/// Deterministic content that differs at every offset class, so a shifted chunk is caught.
fn pattern_byte(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 13)) as u8
}

fn pattern_chunk(start: usize, len: usize) -> Bytes {
    Bytes::from((start..start + len).map(pattern_byte).collect::<Vec<u8>>())
}

async fn round_trip(b: &dyn CodeBox, path: &str, size: usize) -> Checked<()> {
    const CHUNK: usize = 1 << 20;
    let chunks = futures::stream::iter(
        (0..size).step_by(CHUNK).map(move |start| Ok(pattern_chunk(start, CHUNK.min(size - start)))),
    );
    let info = b.upload(path, Box::pin(chunks)).await.map_err(|e| format!("upload {path} ({size} B): {e}"))?;
    ensure(info.size == size as u64, || format!("upload {path}: FileInfo.size {} != {size}", info.size))?;
    ensure(!info.is_dir, || format!("upload {path}: reported as a directory"))?;
    let mut stream = b.download(path).await.map_err(|e| format!("download {path}: {e}"))?;
    let mut offset = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("download {path} at {offset}: {e}"))?;
        for (i, byte) in chunk.iter().enumerate() {
            if *byte != pattern_byte(offset + i) {
                return Err(format!("download {path}: byte {} differs", offset + i).into());
            }
        }
        offset += chunk.len();
    }
    ensure(offset == size, || format!("download {path}: {offset} bytes, expected {size}"))
}

async fn file_round_trip(b: &dyn CodeBox, large: usize) -> CheckOutcome {
    round_trip(b, "conformance/empty.bin", 0).await?;
    round_trip(b, "conformance/one.bin", 1).await?;
    round_trip(b, "conformance/odd.bin", 70_001).await?;
    round_trip(b, "conformance/large.bin", large).await?;
    // Overwriting replaces the content rather than appending to it.
    round_trip(b, "conformance/one.bin", 3).await?;
    b.delete_file("conformance/large.bin").await.map_err(|e| e.to_string())?;
    Ok(format!("0 B, 1 B, 70001 B, {large} B"))
}

async fn files_visible_to_code(b: &dyn CodeBox, d: &Dialect) -> CheckOutcome {
    b.upload_bytes("conformance/hello.txt", "hello from upload").await.map_err(|e| e.to_string())?;
    let ex = exec(b, &d.print_hello_file).await?;
    ensure(ex.stdout() == "hello from upload\n", || {
        format!("the kernel's cwd is not the box's directory: {}", describe(&ex))
    })?;
    exec(b, &d.write_made_file).await?;
    let got = b.download_bytes("conformance/made.txt").await.map_err(|e| e.to_string())?;
    ensure(got.as_ref() == b"made by code", || format!("downloaded {got:?}"))?;
    Ok(String::new())
}

async fn list_and_delete(b: &dyn CodeBox) -> CheckOutcome {
    let err_str = |e: crate::CodeBoxError| e.to_string();
    b.upload_bytes("conformance/tree/a.txt", "a").await.map_err(err_str)?;
    b.upload_bytes("conformance/tree/sub/b.txt", "bb").await.map_err(err_str)?;
    let flat = b.list_files("conformance/tree", false).await.map_err(err_str)?;
    let names: Vec<(&str, bool)> = {
        let mut v: Vec<_> = flat.iter().map(|f| (f.name.as_str(), f.is_dir)).collect();
        v.sort();
        v
    };
    ensure(names == [("a.txt", false), ("sub", true)], || format!("flat listing {flat:?}"))?;
    let a = flat.iter().find(|f| f.name == "a.txt").ok_or("a.txt missing")?;
    ensure(a.path == "conformance/tree/a.txt" && a.size == 1, || format!("a.txt info {a:?}"))?;
    let deep = b.list_files("conformance/tree", true).await.map_err(err_str)?;
    let deep_b = deep.iter().find(|f| f.path == "conformance/tree/sub/b.txt");
    ensure(deep_b.is_some_and(|f| f.size == 2 && f.name == "b.txt"), || format!("recursive listing {deep:?}"))?;
    let root = b.list_files("", false).await.map_err(err_str)?;
    ensure(root.iter().any(|f| f.name == "conformance" && f.is_dir), || format!("root listing {root:?}"))?;
    b.delete_file("conformance/tree/a.txt").await.map_err(err_str)?;
    let after = b.list_files("conformance/tree", false).await.map_err(err_str)?;
    ensure(!after.iter().any(|f| f.name == "a.txt"), || format!("a.txt still listed: {after:?}"))?;
    expect_kind(b.download("conformance/tree/a.txt").await.map(|_| ()), ErrorKind::NotFound, "download deleted")?;
    expect_kind(b.delete_file("conformance/tree/a.txt").await, ErrorKind::NotFound, "delete deleted")?;
    expect_kind(b.list_files("conformance/no-such-dir", false).await.map(|_| ()), ErrorKind::NotFound, "list missing")?;
    Ok(String::new())
}

fn expect_kind(result: Result<()>, kind: ErrorKind, what: &str) -> Checked<()> {
    match result {
        Ok(()) => Err(format!("{what}: succeeded, expected a {kind} error").into()),
        Err(e) if e.kind() == kind => Ok(()),
        Err(e) => Err(format!("{what}: expected a {kind} error, got {} ({e})", e.kind()).into()),
    }
}

async fn unsafe_paths_refused(b: &dyn CodeBox, d: &Dialect) -> CheckOutcome {
    for path in ["../conformance-escape.txt", "/tmp/conformance-escape.txt", "conformance/../../conformance-escape.txt"]
    {
        let up = b.upload_bytes(path, "escaped").await.map(|_| ());
        expect_kind(up, ErrorKind::UnsafePath, &format!("upload {path:?}"))?;
        expect_kind(b.download(path).await.map(|_| ()), ErrorKind::UnsafePath, &format!("download {path:?}"))?;
        expect_kind(b.delete_file(path).await, ErrorKind::UnsafePath, &format!("delete {path:?}"))?;
        if b.capabilities().file_ops {
            let unsafe_path = |r: Result<FileInfo>, what: &str| expect_kind(r.map(|_| ()), ErrorKind::UnsafePath, what);
            unsafe_path(b.stat(path).await, &format!("stat {path:?}"))?;
            unsafe_path(b.make_dir(path).await, &format!("make_dir {path:?}"))?;
            b.upload_bytes("conformance/inside.txt", "in").await.map_err(|e| e.to_string())?;
            unsafe_path(b.rename("conformance/inside.txt", path).await, &format!("rename to {path:?}"))?;
            unsafe_path(b.rename(path, "conformance/inside.txt").await, &format!("rename from {path:?}"))?;
        }
    }
    expect_kind(b.list_files("..", false).await.map(|_| ()), ErrorKind::UnsafePath, "list ..")?;
    expect_kind(b.list_files("/", false).await.map(|_| ()), ErrorKind::UnsafePath, "list /")?;
    let ex = exec(b, &d.print_escapes_exist).await?;
    ensure(ex.stdout().trim() == "False False", || format!("a refused upload wrote a file: {}", describe(&ex)))?;
    Ok(String::new())
}

async fn symlink_escape_refused(b: &dyn CodeBox, d: &Dialect) -> CheckOutcome {
    exec(b, &d.make_symlinks).await?;
    for path in ["conformance/passwd-link", "conformance/etc-link/passwd"] {
        expect_kind(b.download(path).await.map(|_| ()), ErrorKind::UnsafePath, &format!("download {path}"))?;
    }
    expect_kind(
        b.upload_bytes("conformance/etc-link/conformance-escape", "x").await.map(|_| ()),
        ErrorKind::UnsafePath,
        "upload through a symlinked directory",
    )?;
    expect_kind(
        b.upload_bytes("conformance/passwd-link", "x").await.map(|_| ()),
        ErrorKind::UnsafePath,
        "upload onto a symlink",
    )?;
    if b.capabilities().file_ops {
        let link = b.stat("conformance/passwd-link").await.map_err(|e| e.to_string())?;
        ensure(link.kind() == FileKind::Symlink, || format!("stat of a link is not the link: {link:?}"))?;
        let refused = |r: Result<FileInfo>, what: &str| expect_kind(r.map(|_| ()), ErrorKind::UnsafePath, what);
        refused(b.stat("conformance/etc-link/passwd").await, "stat through a symlinked directory")?;
        refused(b.make_dir("conformance/etc-link/conformance-escape").await, "make_dir through a symlinked directory")?;
        b.upload_bytes("conformance/inside.txt", "in").await.map_err(|e| e.to_string())?;
        refused(
            b.rename("conformance/inside.txt", "conformance/etc-link/conformance-escape").await,
            "rename into a symlinked directory",
        )?;
        refused(
            b.rename("conformance/etc-link/passwd", "conformance/stolen").await,
            "rename out of a symlinked directory",
        )?;
    }
    let ex = exec(b, &d.print_etc_escape_exists).await?;
    ensure(ex.stdout().trim() == "False", || "an upload through a symlink wrote outside the box".into())?;
    Ok(String::new())
}

async fn timeout_keeps_box(b: &dyn CodeBox, d: &Dialect, timeout: Duration) -> CheckOutcome {
    exec(b, &d.set_kept).await?;
    let started = Instant::now();
    let ex = b
        .run(&d.print_sleeping_then_wait, RunOptions::new().with_timeout(timeout))
        .await
        .map_err(|e| format!("a timed-out execution should be data, got an error: {e}"))?;
    let took = started.elapsed();
    ensure(ex.outcome == Outcome::TimedOut, || format!("expected TimedOut: {}", describe(&ex)))?;
    ensure(ex.stdout().contains("sleeping"), || format!("output before the timeout was lost: {}", describe(&ex)))?;
    ensure(took < Duration::from_secs(30), || format!("the timeout did not interrupt (took {took:?})"))?;
    let after = exec(b, "conformance_kept").await?;
    ensure(after.text() == d.quoted("still here"), || format!("state lost after a timeout: {}", describe(&after)))?;
    Ok(String::new())
}

async fn interrupt(b: &dyn CodeBox, d: &Dialect) -> CheckOutcome {
    let mut stream =
        b.run_stream(&d.print_waiting_then_wait, RunOptions::default()).await.map_err(|e| e.to_string())?;
    let mut events = Vec::new();
    // Interrupt only once the code is really running.
    while let Some(event) = stream.next().await {
        let event = event.map_err(|e| e.to_string())?;
        let started = matches!(&event, ExecEvent::Stdout { text } if text.contains("waiting"));
        events.push(event);
        if started {
            break;
        }
    }
    b.interrupt().await.map_err(|e| format!("interrupt: {e}"))?;
    let rest = Execution::collect(stream).await.map_err(|e| e.to_string())?;
    ensure(rest.outcome == Outcome::Interrupted, || format!("expected Interrupted: {}", describe(&rest)))?;
    let alive = d.quoted("alive");
    let after = exec(b, &alive).await?;
    ensure(after.text() == alive, || describe(&after))?;
    Ok(String::new())
}

async fn restart_clears_state(b: &dyn CodeBox, d: &Dialect) -> CheckOutcome {
    exec(b, &d.set_gone).await?;
    b.upload_bytes("conformance/kept.txt", "kept").await.map_err(|e| e.to_string())?;
    b.restart().await.map_err(|e| format!("restart: {e}"))?;
    let ex = exec(b, "conformance_gone").await?;
    ensure(ex.error().is_some_and(|e| e.name == d.undefined_name_error), || {
        format!("variable survived the restart: {}", describe(&ex))
    })?;
    let kept = b.download_bytes("conformance/kept.txt").await.map_err(|e| format!("file lost on restart: {e}"))?;
    ensure(kept.as_ref() == b"kept", || format!("file changed on restart: {kept:?}"))?;
    let status = b.status().await.map_err(|e| e.to_string())?;
    ensure(status.is_running(), || format!("not running after restart: {status:?}"))?;
    Ok(String::new())
}

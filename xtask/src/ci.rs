//! `cargo xtask ci`: the one entry point CI calls.
//!
//! Steps, in order, failing fast: `setup` (the system packages the tests need, installed
//! where that can be done unattended: see [`crate::prereqs`]), `fmt`, `tidy` (see
//! [`crate::tidy`]), `clippy`, `test` (then the tests that said they were skipped: listed
//! loudly, and a failure under `CI=true`), `leaks` (nothing the tests' boxes
//! had is left on the machine: see [`crate::leaks`]), `doc`, `features` (every distinct
//! combination of the facade's `local`, `remote`, `server`, `rustls` and `blocking` features, with
//! `cargo check`), `deploy` (the files under `deploy/`: see [`crate::deploy`]).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::workspace::{cargo, display};

/// The steps, in the order they run.
pub(crate) const STEPS: [&str; 9] = ["setup", "fmt", "tidy", "clippy", "test", "leaks", "doc", "features", "deploy"];

/// The facade's optional features; the matrix checks every distinct subset of them.
const FACADE: &str = "codebox";
const FACADE_FEATURES: [&str; 5] = ["local", "remote", "server", "rustls", "blocking"];
/// Features that turn on another (`rustls` implies `remote`): a subset with the first and not
/// the second builds exactly what the subset with both builds, so the matrix leaves it out.
const FACADE_IMPLIES: [(&str, &str); 1] = [("rustls", "remote")];

/// Options of `cargo xtask ci`.
#[derive(Debug, Default)]
pub(crate) struct Options {
    /// Steps not to run.
    pub(crate) skip: Vec<String>,
}

/// One command of a step.
#[derive(Debug)]
struct Job {
    step: &'static str,
    label: String,
    action: Action,
}

/// What a job does.
#[derive(Debug)]
enum Action {
    /// Run cargo.
    Cargo(Command),
    /// Check this machine for what the tests left behind.
    Leaks,
    /// Check the system packages the tests need, installing what is missing.
    Setup,
    /// Report the tests that said they were skipped; in CI, fail if any was.
    Skips,
    /// The house rules (see [`crate::tidy`]).
    Tidy,
    /// The deployment files (see [`crate::deploy`]).
    Deploy,
}

impl Job {
    fn shown(&self) -> String {
        match &self.action {
            Action::Cargo(cmd) => display(cmd),
            Action::Leaks => "leak check (processes, cgroups, files of session uids, temp dirs)".to_owned(),
            Action::Setup => "system prerequisites (bubblewrap, python3-venv, build tools, ...)".to_owned(),
            Action::Skips => format!("tests that were skipped ({})", skip_log().display()),
            Action::Tidy => "tidy (module comments, allow reasons, typed errors, file length, unused deps)".to_owned(),
            Action::Deploy => "deploy (nginx -t, kubectl kustomize, kubernetes-validate)".to_owned(),
        }
    }
}

/// Runs every step that is not skipped.
pub(crate) fn run(opts: &Options) -> Result<()> {
    for name in &opts.skip {
        if !STEPS.contains(&name.as_str()) {
            bail!("unknown step `{name}` (steps: {})", STEPS.join(", "));
        }
    }
    let in_ci = crate::workspace::in_ci(std::env::var("CI").ok().as_deref());
    if in_ci {
        eprintln!("==> lockfile: Cargo.lock must be the committed one");
        lockfile_unchanged(&crate::workspace::root())?;
    }
    // A log of an earlier run must not be reported as this one's.
    match std::fs::remove_file(skip_log()) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            bail!("could not remove {}: {e}", skip_log().display())
        }
        _ => {}
    }
    let jobs: Vec<Job> = plan().into_iter().filter(|j| !opts.skip.iter().any(|s| s == j.step)).collect();
    let started = Instant::now();
    let mut timings: Vec<(String, Duration)> = Vec::new();
    let total = jobs.len();
    for (i, mut job) in jobs.into_iter().enumerate() {
        eprintln!("\n==> [{}/{total}] {}: {}", i + 1, job.label, job.shown());
        let t = Instant::now();
        let shown = job.shown();
        let outcome = match &mut job.action {
            Action::Cargo(cmd) => {
                let status = cmd.status().with_context(|| format!("step `{}`: could not start cargo", job.label))?;
                if status.success() {
                    Ok(())
                } else {
                    Err(anyhow::anyhow!("step `{}` failed ({status}): {shown}", job.label))
                }
            }
            Action::Leaks => crate::leaks::check().with_context(|| format!("step `{}` failed", job.label)),
            Action::Setup => crate::prereqs::ensure().with_context(|| format!("step `{}` failed", job.label)),
            Action::Skips => skips_reported(&skip_log(), in_ci),
            Action::Tidy => crate::tidy::run().with_context(|| format!("step `{}` failed", job.label)),
            Action::Deploy => crate::deploy::run(&crate::deploy::Options::default())
                .with_context(|| format!("step `{}` failed", job.label)),
        };
        timings.push((job.label.clone(), t.elapsed()));
        if let Err(e) = outcome {
            summary(&timings);
            return Err(e);
        }
    }
    summary(&timings);
    eprintln!("==> ci passed in {:.0?}", started.elapsed());
    Ok(())
}

/// In CI, `cargo xtask` itself (a `cargo run` without `--locked`) would quietly rewrite a stale
/// Cargo.lock before the `--locked` steps see it; comparing with the commit catches that.
fn lockfile_unchanged(root: &std::path::Path) -> Result<()> {
    let mut diff = crate::workspace::git(root);
    diff.args(["diff", "--exit-code", "--stat", "HEAD", "--", "Cargo.lock"]);
    let out = diff.output().with_context(|| format!("running {}", display(&diff)))?;
    match out.status.code() {
        Some(0) => Ok(()),
        Some(1) => bail!(
            "step `lockfile` failed: Cargo.lock differs from the committed one (cargo had to update it); \
             commit the updated Cargo.lock\n{}",
            String::from_utf8_lossy(&out.stdout).trim()
        ),
        _ => bail!("step `lockfile`: {} failed: {}", display(&diff), String::from_utf8_lossy(&out.stderr).trim()),
    }
}

/// The environment variable through which a test records that it was skipped (see
/// `codebox_core::conformance::requires`; xtask depends on no workspace crate, so the name is
/// repeated here).
const SKIP_LOG_ENV: &str = "CODEBOX_TEST_SKIP_LOG";

/// Where the test step's skipped tests are recorded.
fn skip_log() -> std::path::PathBuf {
    crate::workspace::root().join("target").join("test-skips.log")
}

/// Says loudly which tests were skipped and why; in CI any skip fails the run, since a green
/// run must mean every test ran.
fn skips_reported(log: &std::path::Path, in_ci: bool) -> Result<()> {
    let lines = match std::fs::read_to_string(log) {
        Ok(text) => text.lines().map(str::to_owned).collect::<Vec<_>>(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => bail!("could not read {}: {e}", log.display()),
    };
    if lines.is_empty() {
        eprintln!("    no test was skipped");
        return Ok(());
    }
    eprintln!("\n*** {} test(s) were SKIPPED: ***", lines.len());
    for line in &lines {
        eprintln!("    {line}");
    }
    if in_ci {
        bail!("{} test(s) were skipped, and CI must run every test", lines.len());
    }
    eprintln!("*** the run is not complete: give this machine what they need and run again ***\n");
    Ok(())
}

fn summary(timings: &[(String, Duration)]) {
    eprintln!("\n==> step timings");
    for (label, took) in timings {
        eprintln!("    {label:<40} {:>8.1}s", took.as_secs_f64());
    }
}

/// Every command of every step, in order.
fn plan() -> Vec<Job> {
    let job = |step: &'static str, label: String, args: &[&str]| {
        let mut cmd = cargo();
        cmd.args(args);
        Job { step, label, action: Action::Cargo(cmd) }
    };
    let mut test = job("test", "test".into(), &["test", "--workspace", "--all-features", "--locked"]);
    if let Action::Cargo(cmd) = &mut test.action {
        cmd.env(SKIP_LOG_ENV, skip_log());
    }
    let mut jobs = vec![
        Job { step: "setup", label: "setup".into(), action: Action::Setup },
        job("fmt", "fmt".into(), &["fmt", "--all", "--check"]),
        Job { step: "tidy", label: "tidy".into(), action: Action::Tidy },
        job(
            "clippy",
            "clippy".into(),
            &["clippy", "--workspace", "--all-targets", "--all-features", "--locked", "--", "-D", "warnings"],
        ),
        test,
        Job { step: "test", label: "skipped tests".into(), action: Action::Skips },
        // After every test process has exited: their boxes must have left nothing behind.
        Job { step: "leaks", label: "leaks".into(), action: Action::Leaks },
    ];
    // `--lib`: the `codebox` binary of codebox-cli would otherwise be documented into the same
    // `target/doc/codebox/` as the facade library and overwrite it (cargo issue 6313).
    let mut doc = job("doc", "doc".into(), &["doc", "--workspace", "--no-deps", "--all-features", "--locked", "--lib"]);
    if let Action::Cargo(cmd) = &mut doc.action {
        cmd.env("RUSTDOCFLAGS", "-D warnings");
    }
    jobs.push(doc);
    for features in feature_matrix() {
        let mut args = vec!["check", "--package", FACADE, "--locked", "--no-default-features"];
        let list = features.join(",");
        if !features.is_empty() {
            args.extend(["--features", &list]);
        }
        let label = if features.is_empty() { "none".to_owned() } else { list.clone() };
        jobs.push(job("features", format!("features: {label}"), &args));
    }
    jobs.push(Job { step: "deploy", label: "deploy".into(), action: Action::Deploy });
    jobs
}

/// Every distinct subset of the facade's features, smallest first: the subsets that leave out
/// a feature another one implies are the same build as the subset with it, and are left out.
fn feature_matrix() -> Vec<Vec<&'static str>> {
    let n = FACADE_FEATURES.len();
    let mut subsets: Vec<Vec<&str>> = (0..1u32 << n)
        .map(|mask| FACADE_FEATURES.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, f)| *f).collect())
        .filter(|subset: &Vec<&str>| {
            FACADE_IMPLIES.iter().all(|(feature, implied)| !subset.contains(feature) || subset.contains(implied))
        })
        .collect();
    subsets.sort_by_key(Vec::len);
    subsets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_matrix_is_every_distinct_combination() {
        let matrix = feature_matrix();
        assert_eq!(
            matrix,
            vec![
                vec![],
                vec!["local"],
                vec!["remote"],
                vec!["server"],
                vec!["blocking"],
                vec!["local", "remote"],
                vec!["local", "server"],
                vec!["remote", "server"],
                vec!["remote", "rustls"],
                vec!["local", "blocking"],
                vec!["remote", "blocking"],
                vec!["server", "blocking"],
                vec!["local", "remote", "server"],
                vec!["local", "remote", "rustls"],
                vec!["remote", "server", "rustls"],
                vec!["local", "remote", "blocking"],
                vec!["local", "server", "blocking"],
                vec!["remote", "server", "blocking"],
                vec!["remote", "rustls", "blocking"],
                vec!["local", "remote", "server", "rustls"],
                vec!["local", "remote", "server", "blocking"],
                vec!["local", "remote", "rustls", "blocking"],
                vec!["remote", "server", "rustls", "blocking"],
                vec!["local", "remote", "server", "rustls", "blocking"],
            ]
        );
    }

    /// The matrix's list of features and what implies what must be the facade's own, or a
    /// new feature would go unchecked.
    #[test]
    fn facade_features_are_the_ones_its_manifest_declares() {
        let manifest = std::fs::read_to_string(crate::workspace::root().join("crates/codebox/Cargo.toml")).unwrap();
        let section = manifest.split("[features]").nth(1).unwrap().split("\n[").next().unwrap();
        let declared: Vec<(&str, &str)> =
            section.lines().filter_map(|line| line.split_once(" = ")).filter(|(name, _)| *name != "default").collect();
        let names: Vec<&str> = declared.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, FACADE_FEATURES);
        for (name, enables) in declared {
            for other in FACADE_FEATURES {
                let implied = FACADE_IMPLIES.contains(&(name, other));
                assert_eq!(enables.contains(&format!("\"{other}\"")), implied, "{name} = {enables}, {other}");
            }
        }
    }

    #[test]
    fn plan_runs_the_steps_in_order_with_warnings_as_errors() {
        let plan = plan();
        let shown: Vec<String> = plan.iter().map(Job::shown).collect();
        assert!(matches!(plan[0].action, Action::Setup), "the prerequisites come first");
        assert_eq!(shown[1], "cargo fmt --all --check");
        assert!(matches!(plan[2].action, Action::Tidy), "tidy runs before the long steps");
        assert_eq!(shown[3], "cargo clippy --workspace --all-targets --all-features --locked -- -D warnings");
        assert_eq!(
            shown[4],
            format!("CODEBOX_TEST_SKIP_LOG={} cargo test --workspace --all-features --locked", skip_log().display())
        );
        assert!(matches!(plan[5].action, Action::Skips), "skipped tests are reported right after the tests");
        assert!(matches!(plan[6].action, Action::Leaks), "the leak check runs right after the tests");
        assert_eq!(
            shown[7],
            "RUSTDOCFLAGS='-D warnings' cargo doc --workspace --no-deps --all-features --locked --lib"
        );
        assert_eq!(shown[8], "cargo check --package codebox --locked --no-default-features");
        assert_eq!(
            shown[31],
            "cargo check --package codebox --locked --no-default-features --features local,remote,server,rustls,blocking"
        );
        assert_eq!(shown[32], "deploy (nginx -t, kubectl kustomize, kubernetes-validate)");
        assert_eq!(shown.len(), 33);
        let steps: Vec<&str> = plan.iter().map(|j| j.step).collect();
        assert!(
            steps.windows(2).all(|w| STEPS.iter().position(|s| *s == w[0]) <= STEPS.iter().position(|s| *s == w[1]))
        );
    }

    #[test]
    fn skips_are_listed_and_fail_only_in_ci() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("skips.log");
        skips_reported(&log, true).expect("no log: nothing was skipped");
        std::fs::write(&log, "SKIPPED a::b: needs root\n").unwrap();
        skips_reported(&log, false).expect("outside CI a skip is reported, not a failure");
        let err = skips_reported(&log, true).unwrap_err().to_string();
        assert!(err.contains("1 test(s) were skipped"), "{err}");
    }

    #[test]
    fn unknown_step_is_refused_before_anything_runs() {
        let err = run(&Options { skip: vec!["lint".into()] }).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown step `lint` (steps: setup, fmt, tidy, clippy, test, leaks, doc, features, deploy)"
        );
    }

    fn git_in(dir: &std::path::Path, args: &[&str]) {
        let mut cmd = crate::workspace::git(dir);
        cmd.args(["-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c", "commit.gpgsign=false"]).args(args);
        assert!(cmd.status().unwrap().success(), "git {args:?}");
    }

    #[test]
    fn lockfile_rewritten_after_the_commit_is_caught() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        git_in(dir, &["init", "--quiet"]);
        std::fs::write(dir.join("Cargo.lock"), "version = 4\n").unwrap();
        git_in(dir, &["add", "Cargo.lock"]);
        git_in(dir, &["commit", "--quiet", "-m", "lock"]);
        lockfile_unchanged(dir).unwrap();

        std::fs::write(dir.join("Cargo.lock"), "version = 4\n\n[[package]]\nname = \"new\"\n").unwrap();
        let err = lockfile_unchanged(dir).unwrap_err().to_string();
        assert!(err.contains("Cargo.lock differs from the committed one"), "{err}");
        assert!(err.contains("1 file changed"), "{err}");
    }
}

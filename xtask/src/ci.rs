//! `cargo xtask ci`: the one entry point CI calls.
//!
//! Steps, in order, failing fast: `fmt`, `clippy`, `test`, `doc`, `features` (every
//! combination of the facade's `local`, `remote` and `server` features, with `cargo check`).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::workspace::{cargo, display};

/// The steps, in the order they run.
pub(crate) const STEPS: [&str; 5] = ["fmt", "clippy", "test", "doc", "features"];

/// The facade's optional features; the matrix checks every subset of them.
const FACADE: &str = "codebox";
const FACADE_FEATURES: [&str; 3] = ["local", "remote", "server"];

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
    cmd: Command,
}

/// Runs every step that is not skipped.
pub(crate) fn run(opts: &Options) -> Result<()> {
    for name in &opts.skip {
        if !STEPS.contains(&name.as_str()) {
            bail!("unknown step `{name}` (steps: {})", STEPS.join(", "));
        }
    }
    let jobs: Vec<Job> = plan().into_iter().filter(|j| !opts.skip.iter().any(|s| s == j.step)).collect();
    let started = Instant::now();
    let mut timings: Vec<(String, Duration)> = Vec::new();
    let total = jobs.len();
    for (i, mut job) in jobs.into_iter().enumerate() {
        eprintln!("\n==> [{}/{total}] {}: {}", i + 1, job.label, display(&job.cmd));
        let t = Instant::now();
        let status = job.cmd.status().with_context(|| format!("step `{}`: could not start cargo", job.label))?;
        timings.push((job.label.clone(), t.elapsed()));
        if !status.success() {
            summary(&timings);
            bail!("step `{}` failed ({status}): {}", job.label, display(&job.cmd));
        }
    }
    summary(&timings);
    eprintln!("==> ci passed in {:.0?}", started.elapsed());
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
        Job { step, label, cmd }
    };
    let mut jobs = vec![
        job("fmt", "fmt".into(), &["fmt", "--all", "--check"]),
        job(
            "clippy",
            "clippy".into(),
            &["clippy", "--workspace", "--all-targets", "--all-features", "--locked", "--", "-D", "warnings"],
        ),
        job("test", "test".into(), &["test", "--workspace", "--all-features", "--locked"]),
    ];
    let mut doc = job("doc", "doc".into(), &["doc", "--workspace", "--no-deps", "--all-features", "--locked"]);
    doc.cmd.env("RUSTDOCFLAGS", "-D warnings");
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
    jobs
}

/// Every subset of the facade's features, smallest first.
fn feature_matrix() -> Vec<Vec<&'static str>> {
    let n = FACADE_FEATURES.len();
    let mut subsets: Vec<Vec<&str>> = (0..1u32 << n)
        .map(|mask| FACADE_FEATURES.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, f)| *f).collect())
        .collect();
    subsets.sort_by_key(Vec::len);
    subsets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_matrix_is_every_combination() {
        let matrix = feature_matrix();
        assert_eq!(
            matrix,
            vec![
                vec![],
                vec!["local"],
                vec!["remote"],
                vec!["server"],
                vec!["local", "remote"],
                vec!["local", "server"],
                vec!["remote", "server"],
                vec!["local", "remote", "server"],
            ]
        );
    }

    #[test]
    fn plan_runs_the_steps_in_order_with_warnings_as_errors() {
        let shown: Vec<String> = plan().iter().map(|j| display(&j.cmd)).collect();
        assert_eq!(shown[0], "cargo fmt --all --check");
        assert_eq!(shown[1], "cargo clippy --workspace --all-targets --all-features --locked -- -D warnings");
        assert_eq!(shown[2], "cargo test --workspace --all-features --locked");
        assert_eq!(shown[3], "RUSTDOCFLAGS='-D warnings' cargo doc --workspace --no-deps --all-features --locked");
        assert_eq!(shown[4], "cargo check --package codebox --locked --no-default-features");
        assert_eq!(
            shown[11],
            "cargo check --package codebox --locked --no-default-features --features local,remote,server"
        );
        assert_eq!(shown.len(), 12);
    }

    #[test]
    fn unknown_step_is_refused_before_anything_runs() {
        let err = run(&Options { skip: vec!["lint".into()] }).unwrap_err();
        assert_eq!(err.to_string(), "unknown step `lint` (steps: fmt, clippy, test, doc, features)");
    }
}

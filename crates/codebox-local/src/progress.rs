//! What building a Python environment reports while it works: its steps (the venv, then each
//! group of packages), with their place in the build and how long they took.
//!
//! This crate never prints: a build emits `tracing` events (steps at info, the tools' own
//! lines at debug) and hands each [`ProvisionEvent`] to the hook given to
//! [`LocalBoxBuilder::with_progress`](crate::LocalBoxBuilder::with_progress) or
//! [`provision_at`](crate::provision_at). Rendering (a progress bar, log lines) is the
//! caller's business.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A hook that receives provisioning progress. It is called on the thread doing the build,
/// so it should return quickly.
pub type ProgressFn = Arc<dyn Fn(&ProvisionEvent) + Send + Sync>;

/// One step of building an environment: creating the venv, or installing one group of
/// packages.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProvisionStep {
    /// A short label: `venv`, or the packages of the group (`numpy pandas`).
    pub name: String,
    /// What the step does, for people: `creating the venv from /usr/bin/python3`.
    pub description: String,
    /// Where the step comes in this build, from 1.
    pub index: usize,
    /// How many steps this build has.
    pub total: usize,
}

/// What happened while building an environment, in order: perhaps [`Waiting`], then
/// [`Started`], each step's [`StepStarted`], [`Output`] lines and [`StepFinished`], then
/// [`Finished`]. A build that fails stops where it failed (the error says why); an
/// environment that is already there reports nothing; one another process was building
/// reports [`Waiting`], then [`Finished`] once that build made it ready.
///
/// `Display` gives one line for people, so `|event| eprintln!("{event}")` is a complete hook.
///
/// [`Waiting`]: ProvisionEvent::Waiting
/// [`Started`]: ProvisionEvent::Started
/// [`StepStarted`]: ProvisionEvent::StepStarted
/// [`Output`]: ProvisionEvent::Output
/// [`StepFinished`]: ProvisionEvent::StepFinished
/// [`Finished`]: ProvisionEvent::Finished
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProvisionEvent {
    /// Another process is building the environment; this one waits for its lock.
    Waiting {
        /// The environment's directory.
        dir: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// This process builds the environment.
    Started {
        /// The environment's directory.
        dir: PathBuf,
        /// How many steps the build has.
        total: usize,
    },
    /// A step began.
    StepStarted {
        /// The step.
        step: ProvisionStep,
        /// Time since the build started.
        elapsed: Duration,
    },
    /// One line of output from the step's tool (pip's `Collecting numpy`, ...).
    Output {
        /// The step.
        step: ProvisionStep,
        /// The line, without its newline.
        line: String,
    },
    /// A step finished successfully.
    StepFinished {
        /// The step.
        step: ProvisionStep,
        /// How long the step took.
        took: Duration,
        /// Time since the build started.
        elapsed: Duration,
    },
    /// The environment is ready.
    Finished {
        /// The environment's directory.
        dir: PathBuf,
        /// How long the build (or the wait for another process's) took.
        elapsed: Duration,
    },
}

impl fmt::Display for ProvisionStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}/{}] {}", self.index, self.total, self.name)
    }
}

/// What a build at `dir` makes, for people: Deno's builds are `<home>/deno/<version>`.
fn what_is_built(dir: &std::path::Path) -> &'static str {
    if dir.parent().and_then(|p| p.file_name()).is_some_and(|n| n == "deno") {
        "Deno"
    } else {
        "the Python environment"
    }
}

impl fmt::Display for ProvisionEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Waiting { dir, lock } => write!(
                f,
                "waiting for another process to finish building {} {} (lock {})",
                what_is_built(dir),
                dir.display(),
                lock.display()
            ),
            Self::Started { dir, total } => {
                write!(f, "building {} {} ({total} steps)", what_is_built(dir), dir.display())
            }
            Self::StepStarted { step, .. } => write!(f, "[{}/{}] {}", step.index, step.total, step.description),
            Self::Output { step, line } => write!(f, "{step}: {line}"),
            Self::StepFinished { step, took, .. } => write!(f, "{step} done in {:.1}s", took.as_secs_f64()),
            Self::Finished { dir, elapsed } => {
                let what = what_is_built(dir);
                write!(f, "{what} {} is ready ({:.1}s)", dir.display(), elapsed.as_secs_f64())
            }
        }
    }
}

/// Reports a build's events to the `tracing` subscriber and to the hook, if any.
pub(crate) struct Reporter<'a> {
    hook: Option<&'a ProgressFn>,
}

impl<'a> Reporter<'a> {
    pub(crate) fn new(hook: Option<&'a ProgressFn>) -> Self {
        Self { hook }
    }

    pub(crate) fn report(&self, event: ProvisionEvent) {
        // A tool's own lines are detail; the steps are what an operator's log should show.
        if matches!(event, ProvisionEvent::Output { .. }) {
            tracing::debug!(target: "codebox_local::provision", "{event}");
        } else {
            tracing::info!(target: "codebox_local::provision", "{event}");
        }
        if let Some(hook) = self.hook {
            hook(&event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step() -> ProvisionStep {
        ProvisionStep { name: "numpy pandas".into(), description: "installing numpy pandas".into(), index: 2, total: 3 }
    }

    #[test]
    fn each_event_reads_as_one_line_naming_its_step() {
        let lines = [
            ProvisionEvent::StepStarted { step: step(), elapsed: Duration::from_secs(4) },
            ProvisionEvent::Output { step: step(), line: "Collecting numpy".into() },
            ProvisionEvent::StepFinished {
                step: step(),
                took: Duration::from_millis(12_340),
                elapsed: Duration::from_secs(16),
            },
        ]
        .map(|e| e.to_string());
        assert_eq!(
            lines,
            [
                "[2/3] installing numpy pandas",
                "[2/3] numpy pandas: Collecting numpy",
                "[2/3] numpy pandas done in 12.3s",
            ]
        );
        let ready = ProvisionEvent::Finished { dir: "/env".into(), elapsed: Duration::from_secs(41) };
        assert_eq!(ready.to_string(), "the Python environment /env is ready (41.0s)");
    }

    #[test]
    fn the_hook_hears_every_event_in_order() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let hook: ProgressFn = Arc::new(move |e: &ProvisionEvent| sink.lock().unwrap().push(e.clone()));
        let reporter = Reporter::new(Some(&hook));
        let first = ProvisionEvent::Started { dir: "/env".into(), total: 3 };
        let second = ProvisionEvent::StepStarted { step: step(), elapsed: Duration::ZERO };
        reporter.report(first.clone());
        reporter.report(second.clone());
        assert_eq!(*seen.lock().unwrap(), [first, second]);
    }
}

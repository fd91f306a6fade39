//! How `codebox run` shows the building of the managed Python environment: a progress bar
//! on stderr when stderr is a terminal, else one timestamped line per step. Never on stdout,
//! which carries the code's output (with `--json`, nothing but JSON).

// Writing progress to stderr is this module's whole job.
#![allow(clippy::print_stderr)]

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use codebox::local::ProvisionEvent;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a bar redraws by itself, so its spinner and clock move while pip is quiet.
const TICK: Duration = Duration::from_millis(120);
/// The spinner shown while another process builds the environment.
const WAITING_TEMPLATE: &str = "{spinner} {wide_msg}";
/// The bar of this process's build: steps done of all, time so far, what happens now.
const STEPS_TEMPLATE: &str = "{spinner} [{bar:16}] {pos}/{len} {elapsed:>3} {wide_msg}";

/// Where provisioning progress goes.
#[derive(Debug)]
pub(crate) enum ProgressView {
    /// A bar on the terminal, made when the first event arrives (usually none does).
    Bar(Mutex<Option<ProgressBar>>),
    /// Plain lines, each starting with the UTC time, for logs and pipes.
    Lines,
}

impl ProgressView {
    /// A bar when stderr is a terminal, else lines.
    pub(crate) fn for_stderr() -> Self {
        if std::io::stderr().is_terminal() { Self::Bar(Mutex::new(None)) } else { Self::Lines }
    }

    /// Show one event.
    pub(crate) fn show(&self, event: &ProvisionEvent) {
        match self {
            Self::Lines => {
                // The tools' own lines would bury the steps in a log; a failure's error
                // carries the last of them.
                if !matches!(event, ProvisionEvent::Output { .. }) {
                    eprintln!("{}", timestamped_line(SystemTime::now(), event));
                }
            }
            Self::Bar(bar) => show_on_bar(&mut bar.lock().unwrap_or_else(|e| e.into_inner()), event),
        }
    }
}

/// `2026-11-29T19:40:41Z codebox: [2/4] installing numpy pandas (profile data)`.
fn timestamped_line(at: SystemTime, event: &ProvisionEvent) -> String {
    format!("{} codebox: {event}", humantime::format_rfc3339_seconds(at))
}

fn show_on_bar(bar: &mut Option<ProgressBar>, event: &ProvisionEvent) {
    match event {
        ProvisionEvent::Waiting { .. } => {
            let spinner = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            spinner.set_style(style(WAITING_TEMPLATE));
            spinner.set_message(event.to_string());
            spinner.enable_steady_tick(TICK);
            replace(bar, spinner);
        }
        ProvisionEvent::Started { total, .. } => {
            let steps = ProgressBar::with_draw_target(Some(*total as u64), ProgressDrawTarget::stderr());
            steps.set_style(style(STEPS_TEMPLATE));
            steps.println(format!("codebox: {event}"));
            steps.enable_steady_tick(TICK);
            replace(bar, steps);
        }
        ProvisionEvent::StepStarted { step, .. } => {
            if let Some(b) = bar {
                b.set_position(step.index.saturating_sub(1) as u64);
                b.set_message(step.description.clone());
            }
        }
        ProvisionEvent::Output { step, line } => {
            if let Some(b) = bar {
                b.set_message(format!("{}: {}", step.name, line.trim()));
            }
        }
        ProvisionEvent::StepFinished { step, .. } => {
            if let Some(b) = bar {
                b.set_position(step.index as u64);
                b.println(format!("codebox: {event}"));
            }
        }
        ProvisionEvent::Finished { .. } => {
            if let Some(b) = bar.take() {
                b.finish_and_clear();
            }
            eprintln!("codebox: {event}");
        }
        // A later kind of event: the bar keeps going.
        _ => {}
    }
}

/// Put `next` in the place of the current bar, clearing that one off the terminal.
fn replace(bar: &mut Option<ProgressBar>, next: ProgressBar) {
    if let Some(old) = bar.replace(next) {
        old.finish_and_clear();
    }
}

fn style(template: &str) -> ProgressStyle {
    // The templates are constants of this file; a bad one is a bug the test below catches.
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_starts_with_the_utc_time_and_names_the_step() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_445_241);
        let event = ProvisionEvent::Finished { dir: "/env".into(), elapsed: Duration::from_secs(41) };
        assert_eq!(
            timestamped_line(at, &event),
            "2025-11-29T19:40:41Z codebox: the Python environment /env is ready (41.0s)"
        );
    }

    #[test]
    fn the_bar_templates_are_valid() {
        for template in [WAITING_TEMPLATE, STEPS_TEMPLATE] {
            assert!(ProgressStyle::with_template(template).is_ok(), "{template}");
        }
    }
}

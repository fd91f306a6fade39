//! A box's execution history: the channel its executions send events through records each
//! execution into the box's ring as its `End` goes by, or as the error that ends it instead
//! (a kernel that died) goes by. Recording is a push under a mutex, no I/O, so the execution
//! path does not slow down. The same channel attaches the execution's artifacts to its `End`
//! (see `artifacts`), so kernel and bash executions get both the same way.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use codebox_core::{CodeBoxError, ErrorKind, ExecEvent, ExecutionRecord, HistoryRing, Outcome, Result};
use tokio::sync::mpsc;

use crate::artifacts::ArtifactScan;

/// How many executions a box remembers; older ones are dropped first.
pub const HISTORY_CAPACITY: usize = 1000;

/// The box's history, shared by its executions; it lives as long as the box, not its kernel.
pub(crate) type SharedHistory = Arc<Mutex<HistoryRing>>;

/// An empty history of [`HISTORY_CAPACITY`] records.
pub(crate) fn new_history() -> SharedHistory {
    Arc::new(Mutex::new(HistoryRing::new(HISTORY_CAPACITY)))
}

/// What a box keeps of one execution: its record in the box's history and, when asked, the
/// files it created or changed. A box built without execution tracking keeps neither.
pub(crate) struct Tracking {
    /// The box's history.
    pub(crate) history: SharedHistory,
    /// The scan for the execution's artifacts, started before its code was sent.
    pub(crate) artifacts: Option<ArtifactScan>,
}

/// The sending half of an execution's event channel, which notes what goes through it and
/// records the execution into the box's history when its `End` (or the error that ends it)
/// is sent, whether or not the caller still reads the stream.
pub(crate) struct RecordingSender {
    tx: mpsc::Sender<Result<ExecEvent>>,
    history: Option<SharedHistory>,
    /// The record being filled in; taken when the execution ends.
    record: Option<ExecutionRecord>,
    /// The artifact scan, taken when the `End` goes by.
    artifacts: Option<ArtifactScan>,
    started: Instant,
}

impl RecordingSender {
    /// A channel of `buffer` events for an execution of `code` starting now, tracked as
    /// `tracking` says (`None`: not at all).
    pub(crate) fn channel(
        buffer: usize,
        tracking: Option<Tracking>,
        code: &str,
    ) -> (Self, mpsc::Receiver<Result<ExecEvent>>) {
        let (tx, rx) = mpsc::channel(buffer);
        let (history, artifacts) = match tracking {
            Some(Tracking { history, artifacts }) => (Some(history), artifacts),
            None => (None, None),
        };
        // Duration and outcome are filled in by the End event.
        let record =
            history.is_some().then(|| ExecutionRecord::new(code, SystemTime::now(), Duration::ZERO, Outcome::Ok));
        (Self { tx, history, record, artifacts, started: Instant::now() }, rx)
    }

    /// Record the execution as one of the code context `context` (`None`: the box's own kernel).
    pub(crate) fn in_context(mut self, context: Option<String>) -> Self {
        if let Some(record) = self.record.as_mut() {
            record.context = context;
        }
        self
    }

    /// Send an item to the caller, noting it first. The `End` of a tracked execution gets
    /// its artifacts here, found on the blocking pool before it is sent: the execution does
    /// not count as finished (the box's next execution waits) until they are known.
    pub(crate) async fn send(
        &mut self,
        mut item: Result<ExecEvent>,
    ) -> std::result::Result<(), mpsc::error::SendError<Result<ExecEvent>>> {
        match &mut item {
            Ok(ExecEvent::End { execution_count, artifacts, artifacts_truncated, .. }) => {
                if let Some(scan) = self.artifacts.take() {
                    let found = scan.finish(*execution_count).await;
                    (*artifacts, *artifacts_truncated) = (found.artifacts, found.truncated);
                }
            }
            Ok(event) => {
                if let Some(scan) = self.artifacts.as_mut() {
                    scan.note(event);
                }
            }
            Err(e) => self.note_failure(e),
        }
        if let Ok(event) = &item {
            self.note(event);
        }
        self.tx.send(item).await
    }

    /// Resolves once the caller has dropped the stream.
    pub(crate) async fn closed(&self) {
        self.tx.closed().await;
    }

    fn note(&mut self, event: &ExecEvent) {
        let Some(record) = self.record.as_mut() else { return };
        match event {
            ExecEvent::End { execution_count, duration_ms, outcome, .. } => {
                record.count = *execution_count;
                record.duration = Duration::try_from_secs_f64(duration_ms / 1e3).unwrap_or_default();
                record.outcome = *outcome;
                self.push_record();
            }
            ExecEvent::Error(info) => {
                record.error_name = Some(info.name.clone());
                record.output_bytes += event.payload_len() as u64;
            }
            other => record.output_bytes += other.payload_len() as u64,
        }
    }
}

impl RecordingSender {
    /// Record an execution that ends with an error instead of an `End`: its kernel died, or
    /// it ran past its timeout and the kernel had to be killed.
    fn note_failure(&mut self, err: &CodeBoxError) {
        let Some(record) = self.record.as_mut() else { return };
        record.duration = self.started.elapsed();
        record.outcome = if err.kind() == ErrorKind::Timeout { Outcome::TimedOut } else { Outcome::Error };
        record.error_name = Some(err.kind().as_str().to_owned());
        self.push_record();
    }

    fn push_record(&mut self) {
        if let (Some(record), Some(history)) = (self.record.take(), &self.history) {
            history.lock().unwrap_or_else(|e| e.into_inner()).push(record);
        }
    }
}

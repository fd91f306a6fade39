//! A box's execution history: the channel its executions send events through records each
//! execution into the box's ring as its `End` goes by. Recording is a push under a mutex,
//! no I/O, so the execution path does not slow down.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use codebox_core::{ExecEvent, ExecutionRecord, HistoryRing, Outcome, Result};
use tokio::sync::mpsc;

/// How many executions a box remembers; older ones are dropped first.
pub const HISTORY_CAPACITY: usize = 1000;

/// The box's history, shared by its executions; it lives as long as the box, not its kernel.
pub(crate) type SharedHistory = Arc<Mutex<HistoryRing>>;

/// An empty history of [`HISTORY_CAPACITY`] records.
pub(crate) fn new_history() -> SharedHistory {
    Arc::new(Mutex::new(HistoryRing::new(HISTORY_CAPACITY)))
}

/// The sending half of an execution's event channel, which notes what goes through it and
/// records the execution into the box's history when its `End` is sent, whether or not the
/// caller still reads the stream.
pub(crate) struct RecordingSender {
    tx: mpsc::Sender<Result<ExecEvent>>,
    history: SharedHistory,
    /// The record being filled in; taken when the execution ends.
    record: Option<ExecutionRecord>,
}

impl RecordingSender {
    /// A channel of `buffer` events for an execution of `code` starting now.
    pub(crate) fn channel(
        buffer: usize,
        history: SharedHistory,
        code: &str,
    ) -> (Self, mpsc::Receiver<Result<ExecEvent>>) {
        let (tx, rx) = mpsc::channel(buffer);
        // Duration and outcome are filled in by the End event.
        let record = ExecutionRecord::new(code, SystemTime::now(), Duration::ZERO, Outcome::Ok);
        (Self { tx, history, record: Some(record) }, rx)
    }

    /// Record the execution as one of the code context `context` (`None`: the box's own kernel).
    pub(crate) fn in_context(mut self, context: Option<String>) -> Self {
        if let Some(record) = self.record.as_mut() {
            record.context = context;
        }
        self
    }

    /// Send an item to the caller, noting it first.
    pub(crate) async fn send(
        &mut self,
        item: Result<ExecEvent>,
    ) -> std::result::Result<(), mpsc::error::SendError<Result<ExecEvent>>> {
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
            ExecEvent::End { execution_count, duration_ms, outcome } => {
                record.count = *execution_count;
                record.duration = Duration::try_from_secs_f64(duration_ms / 1e3).unwrap_or_default();
                record.outcome = *outcome;
                if let Some(record) = self.record.take() {
                    self.history.lock().unwrap_or_else(|e| e.into_inner()).push(record);
                }
            }
            ExecEvent::Error(info) => {
                record.error_name = Some(info.name.clone());
                record.output_bytes += event.payload_len() as u64;
            }
            other => record.output_bytes += other.payload_len() as u64,
        }
    }
}

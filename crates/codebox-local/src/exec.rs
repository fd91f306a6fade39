//! Running one execution: Jupyter messages in, [`ExecEvent`]s out, with timeout, interrupt,
//! output cap and death handling.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use codebox_core::{
    CodeBoxError, ErrorInfo, EventStream, ExecEvent, KernelDeath, MimeBundle, Outcome, Result, TimeoutKind,
};
use serde_json::{Value, json};
use tokio::sync::{OwnedMutexGuard, mpsc};
use tokio::time::Instant;

use crate::history::{RecordingSender, Tracking};
use crate::kernel::{Channel, ExitReason, Kernel, Routed};
use crate::output::OutputCap;
use crate::protocol::strip_ansi;

/// Limits that apply to one execution.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExecLimits {
    pub(crate) timeout: Option<Duration>,
    pub(crate) output_limit: usize,
    pub(crate) interrupt_grace: Duration,
}

/// The message type of the marker that ends a Deno execution's outputs (see
/// `Driver::collect_trailing`).
const FLUSH_MARKER: &str = "codebox_flush";

/// The marker request's code. The kernel formats an execution's result asynchronously after
/// the execution returns: the marker waits for a timer, after every promise job already
/// queued, before it broadcasts.
const FLUSH_CODE: &str =
    "await new Promise((resolve) => setTimeout(resolve, 0)); Deno.jupyter.broadcast(\"codebox_flush\", {})";

/// Events buffered between the driver and the caller's stream.
/// How often an execution that was interrupted (for its timeout, or because its caller left)
/// and still runs is interrupted again, while its grace lasts. A SIGINT that lands just before
/// the kernel's main thread blocks does not wake it; the lean kernel repeats its own signal
/// until it is taken, other kernels (ipykernel) do not, and the end of the grace is a kill
/// that loses the kernel's state.
const INTERRUPT_AGAIN: Duration = Duration::from_secs(1);

const EVENT_BUFFER: usize = 32;
/// Kernel messages buffered between the socket readers and the driver.
const MESSAGE_BUFFER: usize = 64;

pub(crate) fn receiver_stream(rx: mpsc::Receiver<Result<ExecEvent>>) -> EventStream {
    Box::pin(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }))
}

/// Wait for the kernel's death and return its cause.
pub(crate) async fn wait_death(death: &mut tokio::sync::watch::Receiver<Option<KernelDeath>>) -> KernelDeath {
    let cause = death.wait_for(Option::is_some).await.map(|d| d.clone());
    match cause {
        Ok(d) => d.unwrap_or(KernelDeath::Unknown { detail: "gone".into() }),
        // The kernel's watcher is gone (the kernel was dropped): never resolves.
        Err(_) => std::future::pending().await,
    }
}

fn died(cause: KernelDeath) -> CodeBoxError {
    CodeBoxError::kernel_died(cause)
}

/// Run code silently (no outputs, no history) and wait for it; used to set and restore the
/// working directory and environment around an execution.
pub(crate) async fn run_silent(kernel: &Kernel, code: &str) -> Result<()> {
    let content = json!({
        "code": code, "silent": true, "store_history": false,
        "user_expressions": {}, "allow_stdin": false, "stop_on_error": false,
    });
    let mut req = kernel.request(Channel::Shell, "execute_request", content, MESSAGE_BUFFER).await?;
    let mut death = kernel.death();
    let (mut reply, mut idle) = (None, false);
    while reply.is_none() || !idle {
        tokio::select! {
            m = req.rx.recv() => match m {
                Some(Routed { channel: Channel::Shell, msg }) if msg.msg_type == "execute_reply" => reply = Some(msg.content),
                Some(Routed { channel: Channel::IoPub, msg }) if msg.msg_type == "status" => {
                    idle |= msg.content["execution_state"] == "idle";
                }
                Some(_) => {}
                None => return Err(CodeBoxError::protocol("the kernel's reply channel closed")),
            },
            cause = wait_death(&mut death) => return Err(died(cause)),
        }
    }
    let reply = reply.unwrap_or_default();
    if reply["status"] == "ok" {
        Ok(())
    } else {
        Err(CodeBoxError::invalid(format!(
            "could not prepare the execution: {}: {}",
            reply["ename"].as_str().unwrap_or("error"),
            reply["evalue"].as_str().unwrap_or("")
        )))
    }
}

/// Start an execution on `kernel` and return its event stream. `guard` keeps other
/// executions of the same box (or code context) waiting until this one has completely
/// finished. It is recorded in `history` under `context` (`None`: the box's own kernel).
#[expect(clippy::too_many_arguments, reason = "one call per kind of kernel execution; a struct would only rename them")]
pub(crate) async fn execute(
    box_id: &str,
    kernel: Arc<Kernel>,
    code: &str,
    limits: ExecLimits,
    around: Option<(String, String)>,
    guard: OwnedMutexGuard<()>,
    tracking: Option<Tracking>,
    context: Option<String>,
) -> Result<EventStream> {
    if let Some((before, _)) = &around {
        run_silent(&kernel, before).await?;
    }
    let started = Instant::now();
    let content = json!({
        "code": code, "silent": false, "store_history": true,
        "user_expressions": {}, "allow_stdin": false, "stop_on_error": true,
    });
    let req = kernel.request(Channel::Shell, "execute_request", content, MESSAGE_BUFFER).await?;
    let (tx, rx) = RecordingSender::channel(EVENT_BUFFER, tracking, code);
    let tx = tx.in_context(context);
    let span = tracing::debug_span!("execution", box_id, kernel = %kernel.name, execution_id = %req.id);
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let driver = Driver { kernel, limits, tx, started, cap: OutputCap::new(limits.output_limit) };
            driver.run(req, around.map(|(_, after)| after)).await;
            drop(guard);
        },
        span,
    ));
    Ok(receiver_stream(rx))
}

struct Driver {
    kernel: Arc<Kernel>,
    limits: ExecLimits,
    tx: RecordingSender,
    started: Instant,
    cap: OutputCap,
}

#[derive(Default)]
struct Progress {
    reply: Option<Value>,
    idle: bool,
    execution_count: Option<u64>,
}

impl Driver {
    async fn emit(&mut self, event: ExecEvent) {
        for e in self.cap.push(event) {
            // A closed receiver is noticed in the main loop.
            let _ = self.tx.send(Ok(e)).await;
        }
    }

    async fn run(mut self, mut req: crate::kernel::Request, after: Option<String>) {
        let mut death = self.kernel.death();
        let interrupts_before = self.kernel.interrupts_sent();
        let mut progress = Progress::default();
        let far = self.started + Duration::from_secs(86_400 * 365);
        let deadline = self.limits.timeout.map(|t| self.started + t);
        let mut timed_out = false;
        let mut cancelled = false;
        let mut grace_until: Option<Instant> = None;
        let mut again_at: Option<Instant> = None;
        while progress.reply.is_none() || !progress.idle {
            tokio::select! {
                biased;
                m = req.rx.recv() => match m {
                    Some(routed) => self.handle(routed, &mut progress).await,
                    None => {
                        let _ = self.tx.send(Err(CodeBoxError::protocol("the kernel's reply channel closed"))).await;
                        return;
                    }
                },
                cause = wait_death(&mut death) => {
                    let err = if self.kernel.exit_reason() == ExitReason::TimeoutKill {
                        CodeBoxError::timeout_state_lost(TimeoutKind::Execution, self.limits.timeout)
                    } else {
                        died(cause)
                    };
                    self.flush_tail().await;
                    let _ = self.tx.send(Err(err)).await;
                    return;
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() && !timed_out && !cancelled => {
                    tracing::debug!("execution timed out; interrupting");
                    timed_out = true;
                    let _ = self.kernel.interrupt().await;
                    grace_until = Some(Instant::now() + self.limits.interrupt_grace);
                    again_at = Some(Instant::now() + INTERRUPT_AGAIN);
                }
                _ = tokio::time::sleep_until(again_at.unwrap_or(far)), if again_at.is_some() => {
                    tracing::debug!("the execution still runs; interrupting it again");
                    let _ = self.kernel.interrupt().await;
                    again_at = Some(Instant::now() + INTERRUPT_AGAIN);
                }
                _ = tokio::time::sleep_until(grace_until.unwrap_or(far)), if grace_until.is_some() => {
                    // The kernel ignores the interrupt (C code holding the GIL): only a kill helps.
                    tracing::warn!(pid = self.kernel.pid(), "the kernel ignored the interrupt; killing it");
                    self.kernel.kill(ExitReason::TimeoutKill);
                    grace_until = None;
                    again_at = None;
                    // The death arm reports it.
                }
                _ = self.tx.closed(), if !cancelled => {
                    tracing::debug!("the caller dropped the stream; interrupting");
                    cancelled = true;
                    if !timed_out {
                        let _ = self.kernel.interrupt().await;
                        grace_until = Some(Instant::now() + self.limits.interrupt_grace);
                        again_at = Some(Instant::now() + INTERRUPT_AGAIN);
                    }
                }
            }
        }
        if self.kernel.outputs_trail_idle() {
            self.collect_trailing(&mut req, &mut death).await;
        }
        let duration = self.started.elapsed();
        if let Some(after) = after
            && let Err(e) = run_silent(&self.kernel, &after).await
        {
            tracing::warn!("restoring the working directory and environment failed: {e}");
        }
        let reply = progress.reply.unwrap_or_default();
        let count = reply["execution_count"].as_u64().or(progress.execution_count);
        let outcome = match reply["status"].as_str() {
            Some("ok") => Outcome::Ok,
            _ if timed_out => Outcome::TimedOut,
            _ if reply["ename"] == "KeyboardInterrupt" => Outcome::Interrupted,
            _ if self.kernel.interrupt_is_plain_error() && self.kernel.interrupts_sent() != interrupts_before => {
                Outcome::Interrupted
            }
            Some("aborted") => Outcome::Interrupted,
            _ => Outcome::Error,
        };
        self.flush_tail().await;
        let _ = self.tx.send(Ok(ExecEvent::end(count, duration, outcome))).await;
    }

    /// Collect the outputs of a kernel that publishes them from a queue which may fall
    /// behind its `idle` status (Deno's: its REPL thread's messages reach IOPub through a
    /// drainer, the status does not). A silent request broadcasts [`FLUSH_MARKER`] through
    /// that same queue: it comes out after every output queued before it, and the outputs
    /// that trail come under the execution's parent header (drained before the marker
    /// request began) or the marker request's (after), in that order.
    async fn collect_trailing(
        &mut self,
        execution: &mut crate::kernel::Request,
        death: &mut tokio::sync::watch::Receiver<Option<KernelDeath>>,
    ) {
        let content = json!({
            "code": FLUSH_CODE, "silent": true,
            "store_history": false, "user_expressions": {}, "allow_stdin": false, "stop_on_error": false,
        });
        let Ok(mut req) = self.kernel.request(Channel::Shell, "execute_request", content, MESSAGE_BUFFER).await else {
            return;
        };
        // The marker request's own status and reply, kept apart from the execution's.
        let mut marker_request = Progress::default();
        let mut marked = false;
        let mut under_marker = Vec::new();
        // A kernel that never answers must not hold the execution forever.
        let give_up = Instant::now() + self.limits.interrupt_grace;
        while !marked || marker_request.reply.is_none() || !marker_request.idle {
            tokio::select! {
                m = req.rx.recv() => match m {
                    Some(routed) if routed.msg.msg_type == FLUSH_MARKER => marked = true,
                    Some(routed) if routed.channel == Channel::IoPub && routed.msg.msg_type != "status" => {
                        under_marker.push(routed);
                    }
                    Some(routed) => self.handle(routed, &mut marker_request).await,
                    None => return,
                },
                _ = wait_death(death) => return,
                _ = tokio::time::sleep_until(give_up) => {
                    tracing::debug!("the kernel did not answer the output flush; trailing outputs may be lost");
                    break;
                }
            }
        }
        // IOPub is read in order: every message the kernel sent under the execution's header
        // before the marker is already waiting in its channel.
        let mut execution_progress = Progress::default();
        while let Ok(routed) = execution.rx.try_recv() {
            self.handle(routed, &mut execution_progress).await;
        }
        for routed in under_marker {
            // The marker request's `execute_input` is not the execution's.
            if routed.msg.msg_type != "execute_input" {
                self.handle(routed, &mut marker_request).await;
            }
        }
    }

    async fn flush_tail(&mut self) {
        for e in self.cap.finish() {
            let _ = self.tx.send(Ok(e)).await;
        }
    }

    async fn handle(&mut self, routed: Routed, progress: &mut Progress) {
        let Routed { channel, msg } = routed;
        let c = msg.content;
        match (channel, msg.msg_type.as_str()) {
            (Channel::Shell, "execute_reply") => progress.reply = Some(c),
            (Channel::IoPub, "status") => progress.idle |= c["execution_state"] == "idle",
            (Channel::IoPub, "execute_input") => progress.execution_count = c["execution_count"].as_u64(),
            (Channel::IoPub, "stream") => {
                let text = c["text"].as_str().unwrap_or_default().to_owned();
                let event = if c["name"] == "stderr" { ExecEvent::Stderr { text } } else { ExecEvent::Stdout { text } };
                self.emit(event).await;
            }
            (Channel::IoPub, "display_data") => {
                let display_id = c["transient"]["display_id"].as_str().map(str::to_owned);
                self.emit(ExecEvent::Display { data: bundle(&c["data"]), display_id }).await;
            }
            (Channel::IoPub, "update_display_data") => {
                if let Some(id) = c["transient"]["display_id"].as_str() {
                    self.emit(ExecEvent::UpdateDisplay { data: bundle(&c["data"]), display_id: id.to_owned() }).await;
                }
            }
            (Channel::IoPub, "execute_result") => {
                let execution_count = c["execution_count"].as_u64();
                self.emit(ExecEvent::Result { data: bundle(&c["data"]), execution_count }).await;
            }
            (Channel::IoPub, "error") => self.emit(ExecEvent::Error(error_info(&c))).await,
            (Channel::IoPub, "clear_output") => {
                self.emit(ExecEvent::ClearOutput { wait: c["wait"].as_bool().unwrap_or(false) }).await
            }
            (_, other) => tracing::trace!(msg_type = other, "skipping a kernel message"),
        }
    }
}

fn bundle(data: &Value) -> MimeBundle {
    match data {
        Value::Object(map) => MimeBundle(map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
        _ => MimeBundle::new(),
    }
}

fn error_info(c: &Value) -> ErrorInfo {
    let traceback = c["traceback"]
        .as_array()
        .map(|lines| lines.iter().filter_map(Value::as_str).map(strip_ansi).collect())
        .unwrap_or_default();
    ErrorInfo {
        name: c["ename"].as_str().unwrap_or("Error").to_owned(),
        value: strip_ansi(c["evalue"].as_str().unwrap_or_default()),
        traceback,
    }
}

/// Python statements that set the working directory and environment of one execution, and
/// restore them afterwards. They run as separate silent requests, so the user's code is sent
/// unchanged (its last expression is still displayed, tracebacks keep their line numbers).
pub(crate) fn around_code(cwd: Option<&Path>, env: &BTreeMap<String, String>) -> (String, String) {
    let lit = |s: &str| serde_json::to_string(s).expect("a string serializes");
    let keys: Vec<String> = env.keys().map(|k| lit(k)).collect();
    let restore = "__codebox_os.chdir(__codebox_saved[0])\n\
                   for __codebox_k, __codebox_v in __codebox_saved[1].items():\n    \
                   if __codebox_v is None: __codebox_os.environ.pop(__codebox_k, None)\n    \
                   else: __codebox_os.environ[__codebox_k] = __codebox_v\n\
                   del __codebox_saved, __codebox_os\n";
    let mut apply = String::new();
    for (k, v) in env {
        apply.push_str(&format!("    __codebox_os.environ[{}] = {}\n", lit(k), lit(v)));
    }
    if let Some(cwd) = cwd {
        apply.push_str(&format!("    __codebox_os.chdir({})\n", lit(&cwd.to_string_lossy())));
    }
    // If applying fails half way (say the directory vanished), undo what was done.
    let indented: String = restore.lines().map(|l| format!("    {l}\n")).collect();
    let before = format!(
        "import os as __codebox_os\n\
         __codebox_saved = (__codebox_os.getcwd(), {{k: __codebox_os.environ.get(k) for k in [{}]}})\n\
         try:\n{apply}    pass\n\
         except BaseException:\n{indented}    raise\n",
        keys.join(", ")
    );
    (before, restore.to_owned())
}

/// Refuse environment variables the OS cannot represent.
pub(crate) fn check_env(env: &BTreeMap<String, String>) -> Result<()> {
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(CodeBoxError::invalid(format!(
                "environment variable {k:?} is not valid: names must be non-empty without `=` or NUL, values without NUL"
            )));
        }
    }
    Ok(())
}

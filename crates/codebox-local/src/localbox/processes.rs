//! A box's background processes ([`CodeBox::start_process`](codebox_core::CodeBox::start_process)):
//! a table of the processes it runs, each followed by a task that owns the child, reads its
//! output and fans it out to every stream that follows it, signals its process group and
//! reports its end.
//!
//! Output is fanned out through a bounded channel of chunks (at most [`CHUNK`] bytes each,
//! [`BACKLOG`] chunks kept): a reader that falls behind loses the oldest chunks it has not
//! read rather than making the box buffer without bound. Nothing a process does outlives
//! its box: `stop` kills every process and waits for its end, and a box dropped without
//! `stop` kills them too (the table's shutdown channel closes, and a task dropped with its
//! runtime kills its process group as it goes).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use codebox_core::{
    CodeBoxError, ProcessEvent, ProcessExit, ProcessId, ProcessInfo, ProcessSignal, ProcessSpec, ProcessStream, Result,
};
use futures::{StreamExt, stream};
use rustix::process::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;

use crate::boxprocess::{BoxProcess, exec_failure_text, is_exec_failure, signal_group};

/// How many background processes a box runs at once unless configured otherwise.
pub const DEFAULT_MAX_PROCESSES: usize = 32;

/// The most bytes of one output event.
const CHUNK: usize = 64 * 1024;

/// How many events a reader may fall behind before it loses the oldest: with [`CHUNK`], at
/// most 4 MiB of output kept per process, however slow its readers.
const BACKLOG: usize = 64;

/// How long an ended process stays in the table, so that a `connect_process` that comes
/// just after its end still gets its `End`; it is not listed meanwhile.
const ENDED_GRACE: Duration = Duration::from_secs(10);

/// How long output is still read after the process itself exited, while something it left
/// behind (outside its process group) holds its pipes open.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// The background processes of one box.
pub(super) struct Processes {
    table: Arc<Mutex<Table>>,
    /// Told `true` by `stop`; dropped with the box. Either way every process is killed.
    shutdown: watch::Sender<bool>,
    /// Held through a start, so that concurrent starts cannot pass the maximum together.
    start_lock: tokio::sync::Mutex<()>,
}

impl Default for Processes {
    fn default() -> Self {
        Self { table: Arc::default(), shutdown: watch::Sender::new(false), start_lock: tokio::sync::Mutex::new(()) }
    }
}

#[derive(Default)]
struct Table {
    /// The last id given (ids start at 1 and are never reused).
    last_pid: ProcessId,
    /// The box stopped: no process starts any more.
    closed: bool,
    by_pid: BTreeMap<ProcessId, Arc<Entry>>,
}

impl Table {
    fn running(&self) -> usize {
        self.by_pid.values().filter(|e| !e.ended()).count()
    }
}

/// One process of the table.
struct Entry {
    info: ProcessInfo,
    events: broadcast::Sender<ProcessEvent>,
    /// Its end, once it ended.
    exit: watch::Sender<Option<ProcessExit>>,
    /// Its standard input, while open (`None` from the start without `spec.stdin`).
    stdin: tokio::sync::Mutex<Option<ChildStdin>>,
    signals: mpsc::UnboundedSender<Signal>,
}

impl Entry {
    fn ended(&self) -> bool {
        self.exit.borrow().is_some()
    }
}

fn lock(table: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    table.lock().unwrap_or_else(|e| e.into_inner())
}

fn unknown(pid: ProcessId) -> CodeBoxError {
    CodeBoxError::not_found(format!("process {pid} (no process of this box has that id, or it has ended)"))
}

impl Processes {
    /// Start `process` (a program the box's handle prepared) as process `spec` describes.
    pub(super) async fn start(&self, process: BoxProcess, spec: ProcessSpec, max: usize) -> Result<ProcessStream> {
        let _starting = self.start_lock.lock().await;
        {
            let table = lock(&self.table);
            if table.closed {
                return Err(CodeBoxError::not_running("the box was stopped"));
            }
            let running = table.running();
            if running >= max {
                return Err(CodeBoxError::invalid(format!(
                    "this box runs {running} background processes, its maximum: wait for one to end or signal one"
                )));
            }
        }
        // Under bubblewrap the child is bwrap, whose program runs in a session of its own
        // inside: a signal other than SIGKILL must reach that program, not bwrap.
        let behind_init = process.placement == crate::boxprocess::Placement::InBox
            && process.confinement.level() == codebox_sandbox::IsolationLevel::Bubblewrap;
        let mut child = process.spawn_background(spec.stdin)?;
        let stdin = child.stdin.take();
        let (events, first_reader) = broadcast::channel(BACKLOG);
        let (signals, signal_rx) = mpsc::unbounded_channel();
        let pid = {
            let mut table = lock(&self.table);
            if table.closed {
                // `child` is killed as it drops (kill_on_drop) and its group with it.
                signal_group(&child, Signal::KILL);
                return Err(CodeBoxError::not_running("the box was stopped"));
            }
            table.last_pid += 1;
            let pid = table.last_pid;
            let entry = Arc::new(Entry {
                info: ProcessInfo::new(pid, spec.clone()),
                events,
                exit: watch::Sender::new(None),
                stdin: tokio::sync::Mutex::new(stdin),
                signals,
            });
            table.by_pid.insert(pid, entry.clone());
            let group_id = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
            let follow = Follow {
                behind_init,
                group_id,
                entry,
                child: GroupGuard(child),
                program: process.program.clone(),
                timeout: spec.command.timeout,
                shutdown: self.shutdown.subscribe(),
                signals: signal_rx,
                table: Arc::downgrade(&self.table),
                pid,
            };
            tokio::spawn(follow.run());
            pid
        };
        let start = stream::once(async move { Ok(ProcessEvent::Start { pid }) });
        Ok(Box::pin(start.chain(events_of(first_reader))))
    }

    /// Follow process `pid` from now on.
    pub(super) fn connect(&self, pid: ProcessId) -> Result<ProcessStream> {
        let table = lock(&self.table);
        let entry = table.by_pid.get(&pid).ok_or_else(|| unknown(pid))?;
        // Under the table's lock, which the end is sent under: either the end is known here,
        // or this reader subscribed before it was sent.
        if let Some(exit) = entry.exit.borrow().clone() {
            return Ok(Box::pin(stream::once(async move { Ok(ProcessEvent::End(exit)) })));
        }
        Ok(Box::pin(events_of(entry.events.subscribe())))
    }

    /// The processes running now.
    pub(super) fn list(&self) -> Vec<ProcessInfo> {
        lock(&self.table).by_pid.values().filter(|e| !e.ended()).map(|e| e.info.clone()).collect()
    }

    fn running_entry(&self, pid: ProcessId) -> Result<Arc<Entry>> {
        let table = lock(&self.table);
        table.by_pid.get(&pid).filter(|e| !e.ended()).cloned().ok_or_else(|| unknown(pid))
    }

    /// Write `data` to process `pid`'s standard input.
    pub(super) async fn input(&self, pid: ProcessId, data: Bytes) -> Result<()> {
        let entry = self.running_entry(pid)?;
        if !entry.info.spec.stdin {
            return Err(CodeBoxError::invalid(format!("process {pid} was started without `stdin`")));
        }
        let mut stdin = entry.stdin.lock().await;
        let pipe =
            stdin.as_mut().ok_or_else(|| CodeBoxError::invalid(format!("process {pid}'s standard input is closed")))?;
        let written = async {
            pipe.write_all(&data).await?;
            pipe.flush().await
        };
        written.await.map_err(|e| match e.kind() {
            // It closed its end: it ended, or will not read again.
            std::io::ErrorKind::BrokenPipe => {
                CodeBoxError::invalid(format!("process {pid} no longer reads its standard input"))
            }
            _ => CodeBoxError::io(format!("writing to process {pid}"), e),
        })
    }

    /// Close process `pid`'s standard input (closing it twice is fine).
    pub(super) async fn close_input(&self, pid: ProcessId) -> Result<()> {
        let entry = self.running_entry(pid)?;
        if !entry.info.spec.stdin {
            return Err(CodeBoxError::invalid(format!("process {pid} was started without `stdin`")));
        }
        entry.stdin.lock().await.take();
        Ok(())
    }

    /// Send `signal` to process `pid`'s process group.
    pub(super) fn signal(&self, pid: ProcessId, signal: ProcessSignal) -> Result<()> {
        let entry = self.running_entry(pid)?;
        let signal = match signal {
            ProcessSignal::Sigterm => Signal::TERM,
            ProcessSignal::Sigkill => Signal::KILL,
            ProcessSignal::Sigint => Signal::INT,
            other => return Err(CodeBoxError::unsupported(format!("signal {other:?}"))),
        };
        // The task that owns the child sends it, while the child is not reaped yet.
        entry.signals.send(signal).map_err(|_| unknown(pid))
    }

    /// Kill every process and wait for their ends; no process starts after.
    pub(super) async fn close_all(&self) {
        let ends: Vec<watch::Receiver<Option<ProcessExit>>> = {
            let mut table = lock(&self.table);
            table.closed = true;
            table.by_pid.values().map(|e| e.exit.subscribe()).collect()
        };
        self.shutdown.send_replace(true);
        for mut end in ends {
            // An error: the task is gone, and its process with it.
            let _ = end.wait_for(Option::is_some).await;
        }
    }
}

/// The events of a process from a reader of its channel; a reader that fell behind skips
/// what it lost.
fn events_of(rx: broadcast::Receiver<ProcessEvent>) -> impl futures::Stream<Item = Result<ProcessEvent>> + Send {
    stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        loop {
            match rx.recv().await {
                Ok(event) => {
                    let last = matches!(event, ProcessEvent::End(_));
                    return Some((Ok(event), (!last).then_some(rx)));
                }
                Err(broadcast::error::RecvError::Lagged(lost)) => {
                    tracing::debug!(lost, "a slow reader of a background process lost its oldest output");
                }
                Err(broadcast::error::RecvError::Closed) => {
                    let gone = CodeBoxError::not_running("the process's box went away before the process ended");
                    return Some((Err(gone), None));
                }
            }
        }
    })
}

/// The child, whose process group is killed if it is dropped before it was reaped (its
/// task dropped with the runtime, or the box dropped mid-way).
struct GroupGuard(Child);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        signal_group(&self.0, Signal::KILL);
    }
}

/// The task following one process.
struct Follow {
    entry: Arc<Entry>,
    child: GroupGuard,
    program: String,
    timeout: Option<Duration>,
    shutdown: watch::Receiver<bool>,
    signals: mpsc::UnboundedReceiver<Signal>,
    table: Weak<Mutex<Table>>,
    pid: ProcessId,
    /// The id of the process group the child leads (its host pid), kept for after it was
    /// reaped.
    group_id: i32,
    /// The child is a sandbox (bubblewrap) that runs the program in a session of its own.
    behind_init: bool,
}

impl Follow {
    async fn run(mut self) {
        let started = Instant::now();
        let mut stdout = self.child.0.stdout.take().expect("piped");
        let mut stderr = self.child.0.stderr.take().expect("piped");
        let (mut out_open, mut err_open) = (true, true);
        let (mut obuf, mut ebuf) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
        let far = started + Duration::from_secs(86_400 * 365);
        let deadline = self.timeout.map_or(far, |t| started + t);
        let mut drain_until = far;
        let (mut timed_out, mut shutting_down) = (false, false);
        let mut status = None;
        while status.is_none() || out_open || err_open {
            tokio::select! {
                r = stdout.read(&mut obuf), if out_open => match r {
                    Ok(n) if n > 0 => self.emit(ProcessEvent::Stdout { data: Bytes::copy_from_slice(&obuf[..n]) }),
                    _ => out_open = false,
                },
                r = stderr.read(&mut ebuf), if err_open => match r {
                    Ok(n) if n > 0 => {
                        let data = if is_exec_failure(&ebuf[..n]) {
                            Bytes::from(exec_failure_text(&self.program))
                        } else {
                            Bytes::copy_from_slice(&ebuf[..n])
                        };
                        self.emit(ProcessEvent::Stderr { data });
                    }
                    _ => err_open = false,
                },
                s = self.child.0.wait(), if status.is_none() => {
                    // What it left in its group still holds its pipes: those go with it
                    // (while they live, the group's id cannot be reused).
                    if (out_open || err_open)
                        && let Some(group) = rustix::process::Pid::from_raw(self.group_id)
                    {
                        let _ = rustix::process::kill_process_group(group, Signal::KILL);
                    }
                    status = Some(s);
                    drain_until = Instant::now() + DRAIN_AFTER_EXIT;
                }
                () = tokio::time::sleep_until(drain_until), if status.is_some() => break,
                () = tokio::time::sleep_until(deadline), if status.is_none() && !timed_out => {
                    timed_out = true;
                    signal_group(&self.child.0, Signal::KILL);
                }
                Some(signal) = self.signals.recv(), if status.is_none() => self.send(signal),
                _ = self.shutdown.changed(), if !shutting_down => {
                    // Told to stop, or the box is gone (the channel closed).
                    shutting_down = true;
                    signal_group(&self.child.0, Signal::KILL);
                }
            }
        }
        let exit = match status {
            Some(Ok(s)) => exit_of(s, timed_out),
            Some(Err(e)) => {
                tracing::warn!(pid = self.pid, "waiting for a background process failed: {e}");
                ProcessExit::default()
            }
            None => ProcessExit::default(),
        };
        self.finish(exit).await;
    }

    /// Send `signal` to the process and what it started. SIGKILL goes to the child's group
    /// (bubblewrap takes its sandbox down with it); another signal, under bubblewrap, to
    /// every process below bwrap, so that the program's handler runs rather than bwrap dying
    /// and its sandbox being killed. Called only while the child is unreaped.
    fn send(&self, signal: Signal) {
        if !self.behind_init || signal == Signal::KILL {
            signal_group(&self.child.0, signal);
            return;
        }
        // Never a walk from pid 0 (the whole machine): only below a child we know.
        if self.group_id <= 1 {
            return;
        }
        for pid in codebox_sandbox::proctree::descendants(self.group_id) {
            codebox_sandbox::proctree::signal_if_below(self.group_id, pid, signal);
        }
    }

    fn emit(&self, event: ProcessEvent) {
        // No reader is fine: the process runs on, and a later reader follows from then.
        let _ = self.entry.events.send(event);
    }

    /// Send the end, close its input, and leave the table after the grace.
    async fn finish(self, exit: ProcessExit) {
        {
            // Under the table's lock, as `connect` looks: see there.
            let table = self.table.upgrade();
            let _locked = table.as_deref().map(lock);
            self.entry.exit.send_replace(Some(exit.clone()));
            let _ = self.entry.events.send(ProcessEvent::End(exit));
        }
        // A write blocked on a pipe nobody reads fails now that the process is gone, and
        // drops the input itself; never wait for it here.
        if let Ok(mut stdin) = self.entry.stdin.try_lock() {
            stdin.take();
        }
        tokio::time::sleep(ENDED_GRACE).await;
        if let Some(table) = self.table.upgrade() {
            lock(&table).by_pid.remove(&self.pid);
        }
    }
}

/// How a process that exited with `status` ended.
fn exit_of(status: std::process::ExitStatus, timed_out: bool) -> ProcessExit {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        _ if timed_out => ProcessExit::signalled(status.signal().unwrap_or(Signal::KILL.as_raw()), true),
        (Some(code), _) => ProcessExit::code(code),
        (None, Some(signal)) => ProcessExit::signalled(signal, false),
        (None, None) => ProcessExit::default(),
    }
}

//! The blocking API holds to the contract of every box: the conformance suite runs through it.
//!
//! The suite is async, so [`ThroughBlocking`] implements the async `CodeBox` trait over a
//! blocking box: every method makes its blocking call on a plain thread (no runtime there,
//! as in a program that is not async) and awaits the answer. Streams go the other way: an
//! execution's events and a download's chunks are read from the blocking iterators on such
//! a thread, and an upload's chunks are read from the suite's stream there; so are a
//! background process's events. Port streams have no blocking form, so this box says it has
//! no ports and the suite's port check reports that it skipped them.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::SinkExt;

use codebox::blocking::{self, BlockingBox};
use codebox::conformance::{ConformanceOptions, run_all};
use codebox::{
    BoxMetrics, BoxStatus, ByteStream, Capabilities, CodeBox, CommandOutput, CommandSpec, ContextInfo, ErrorKind,
    EventStream, Execution, ExecutionRecord, ExecutionStats, FileInfo, LocalBox, PackageInfo, ProcessId, ProcessInfo,
    ProcessSignal, ProcessSpec, ProcessStream, Result, RunOptions,
};

#[derive(Debug, Clone)]
struct ThroughBlocking(Arc<BlockingBox<LocalBox>>);

impl ThroughBlocking {
    /// Run a blocking call on a thread of its own and await its answer.
    async fn on_thread<T: Send + 'static>(&self, f: impl FnOnce(&BlockingBox<LocalBox>) -> T + Send + 'static) -> T {
        let b = self.0.clone();
        let (tx, rx) = futures::channel::oneshot::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f(&b));
        });
        rx.await.expect("the blocking call's thread panicked")
    }
}

/// The items of a blocking iterator as an async stream, read on a thread of their own. The
/// thread stops (dropping the iterator, which cancels what it reads) once the stream is
/// dropped and the next item finds no one to take it.
fn stream_of<T: Send + 'static>(
    iter: impl Iterator<Item = Result<T>> + Send + 'static,
) -> std::pin::Pin<Box<dyn futures::Stream<Item = Result<T>> + Send>> {
    let (mut tx, rx) = futures::channel::mpsc::channel(8);
    std::thread::spawn(move || {
        for item in iter {
            if futures::executor::block_on(tx.send(item)).is_err() {
                return;
            }
        }
    });
    Box::pin(rx)
}

/// A reader over the suite's upload stream, pulled on the uploading thread.
struct StreamReader {
    chunks: futures::executor::BlockingStream<ByteStream>,
    pending: Bytes,
}

impl std::io::Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pending.is_empty() {
            match self.chunks.next() {
                None => return Ok(0),
                Some(Ok(chunk)) => self.pending = chunk,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending.split_to(n));
        Ok(n)
    }
}

#[async_trait]
impl CodeBox for ThroughBlocking {
    fn id(&self) -> &str {
        self.0.id()
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = self.0.capabilities();
        caps.ports = false;
        caps
    }

    async fn start(&self) -> Result<()> {
        self.on_thread(|b| b.start()).await
    }

    async fn stop(&self) -> Result<()> {
        self.on_thread(|b| b.stop()).await
    }

    async fn status(&self) -> Result<BoxStatus> {
        self.on_thread(|b| b.status()).await
    }

    async fn run_stream(&self, code: &str, options: RunOptions) -> Result<EventStream> {
        let code = code.to_owned();
        let events = self.on_thread(move |b| b.run_stream(&code, options)).await?;
        Ok(stream_of(events))
    }

    async fn run(&self, code: &str, options: RunOptions) -> Result<Execution> {
        let code = code.to_owned();
        self.on_thread(move |b| b.run(&code, options)).await
    }

    async fn upload(&self, path: &str, content: ByteStream) -> Result<FileInfo> {
        let path = path.to_owned();
        let reader = StreamReader { chunks: futures::executor::block_on_stream(content), pending: Bytes::new() };
        self.on_thread(move |b| b.upload(&path, reader)).await
    }

    async fn download(&self, path: &str) -> Result<ByteStream> {
        let path = path.to_owned();
        let chunks = self.on_thread(move |b| b.download(&path)).await?;
        Ok(stream_of(chunks))
    }

    async fn list_files(&self, dir: &str, recursive: bool) -> Result<Vec<FileInfo>> {
        let dir = dir.to_owned();
        self.on_thread(move |b| b.list_files(&dir, recursive)).await
    }

    async fn delete_file(&self, path: &str) -> Result<()> {
        let path = path.to_owned();
        self.on_thread(move |b| b.delete_file(&path)).await
    }

    async fn stat(&self, path: &str) -> Result<FileInfo> {
        let path = path.to_owned();
        self.on_thread(move |b| b.stat(&path)).await
    }

    async fn make_dir(&self, path: &str) -> Result<FileInfo> {
        let path = path.to_owned();
        self.on_thread(move |b| b.make_dir(&path)).await
    }

    async fn rename(&self, from: &str, to: &str) -> Result<FileInfo> {
        let (from, to) = (from.to_owned(), to.to_owned());
        self.on_thread(move |b| b.rename(&from, &to)).await
    }

    async fn list_dir(&self, dir: &str, depth: usize) -> Result<Vec<FileInfo>> {
        let dir = dir.to_owned();
        self.on_thread(move |b| b.list_dir(&dir, depth)).await
    }

    async fn install(&self, packages: &[String]) -> Result<String> {
        let packages = packages.to_vec();
        self.on_thread(move |b| b.install(&packages)).await
    }

    async fn packages(&self) -> Result<Vec<PackageInfo>> {
        self.on_thread(|b| b.packages()).await
    }

    async fn history(&self, limit: usize) -> Result<Vec<ExecutionRecord>> {
        self.on_thread(move |b| b.history(limit)).await
    }

    async fn execution_stats(&self) -> Result<ExecutionStats> {
        self.on_thread(|b| b.execution_stats()).await
    }

    async fn create_context(&self, language: Option<&str>, cwd: Option<&str>) -> Result<ContextInfo> {
        let (language, cwd) = (language.map(str::to_owned), cwd.map(str::to_owned));
        self.on_thread(move |b| b.create_context(language.as_deref(), cwd.as_deref())).await
    }

    async fn contexts(&self) -> Result<Vec<ContextInfo>> {
        self.on_thread(|b| b.contexts()).await
    }

    async fn restart_context(&self, id: &str) -> Result<()> {
        let id = id.to_owned();
        self.on_thread(move |b| b.restart_context(&id)).await
    }

    async fn delete_context(&self, id: &str) -> Result<()> {
        let id = id.to_owned();
        self.on_thread(move |b| b.delete_context(&id)).await
    }

    async fn interrupt_context(&self, id: &str) -> Result<()> {
        let id = id.to_owned();
        self.on_thread(move |b| b.interrupt_context(&id)).await
    }

    async fn port_url(&self, port: u16) -> Result<String> {
        self.on_thread(move |b| b.port_url(port)).await
    }

    async fn metrics(&self) -> Result<BoxMetrics> {
        self.on_thread(|b| b.metrics()).await
    }

    async fn start_process(&self, spec: ProcessSpec) -> Result<ProcessStream> {
        let events = self.on_thread(move |b| b.start_process(spec)).await?;
        Ok(stream_of(events))
    }

    async fn connect_process(&self, pid: ProcessId) -> Result<ProcessStream> {
        let events = self.on_thread(move |b| b.connect_process(pid)).await?;
        Ok(stream_of(events))
    }

    async fn processes(&self) -> Result<Vec<ProcessInfo>> {
        self.on_thread(|b| b.processes()).await
    }

    async fn process_input(&self, pid: ProcessId, data: Bytes) -> Result<()> {
        self.on_thread(move |b| b.process_input(pid, data)).await
    }

    async fn close_process_input(&self, pid: ProcessId) -> Result<()> {
        self.on_thread(move |b| b.close_process_input(pid)).await
    }

    async fn signal_process(&self, pid: ProcessId, signal: ProcessSignal) -> Result<()> {
        self.on_thread(move |b| b.signal_process(pid, signal)).await
    }

    async fn restart(&self) -> Result<()> {
        self.on_thread(|b| b.restart()).await
    }

    async fn interrupt(&self) -> Result<()> {
        self.on_thread(|b| b.interrupt()).await
    }

    async fn run_command(&self, command: CommandSpec) -> Result<CommandOutput> {
        self.on_thread(move |b| b.run_command(command)).await
    }
}

#[tokio::test]
async fn a_local_box_passes_the_conformance_suite_through_the_blocking_api() {
    // A box made inside the runtime would be refused: make it on a thread, as above.
    let made = std::thread::spawn(blocking::LocalBox::local).join().unwrap();
    let b = ThroughBlocking(Arc::new(made.unwrap()));
    let report = run_all(&b, &ConformanceOptions::default()).await;
    b.stop().await.unwrap();
    report.assert_all_passed();
    // Background processes went through the blocking API, not around it.
    let processes = report.checks.iter().find(|c| c.name == "processes").expect("a processes check");
    assert_eq!(processes.outcome.as_deref().ok(), Some(""), "{}", report.summary());
}

#[test]
fn the_blocking_api_runs_code_streams_events_and_moves_files() {
    let b = blocking::LocalBox::local().unwrap();
    b.start().unwrap();
    let events: Vec<_> = b.run_stream("print('a'); print('b')", RunOptions::default()).unwrap().collect();
    assert!(events.iter().all(Result::is_ok), "{events:?}");
    let ex = b.run_stream("x = 6 * 7\nx", RunOptions::default()).unwrap().collect_execution().unwrap();
    assert_eq!(ex.text(), "42");
    let big = vec![7u8; 3 * 1024 * 1024 + 5];
    let info = b.upload("big.bin", std::io::Cursor::new(big.clone())).unwrap();
    assert_eq!(info.size, big.len() as u64);
    let mut back = Vec::new();
    std::io::Read::read_to_end(&mut b.download("big.bin").unwrap(), &mut back).unwrap();
    assert!(back == big, "the downloaded file differs ({} bytes)", back.len());
    let err = b.download("missing.bin").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    b.stop().unwrap();
}

#[tokio::test]
async fn every_entry_point_refuses_a_call_from_inside_an_async_runtime() {
    let err = blocking::LocalBox::local().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.to_string().contains("inside an async runtime"), "{err}");
    // A box made outside (on a thread of its own) refuses too once called in here.
    let b = std::thread::spawn(|| blocking::LocalBox::local().unwrap()).join().unwrap();
    let err = b.status().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
}

//! The trait's own tests: object safety, and `Arc`/`Box` forwarding every method.

use std::sync::Mutex;

use futures::executor::block_on;

use super::*;
use crate::CodeBoxError;

#[test]
fn the_trait_is_object_safe() {
    fn takes(_: Option<std::sync::Arc<dyn CodeBox>>) {}
    takes(None);
}

/// A box that only records which of its methods were called. Every method is its own,
/// `run` included, so a wrapper that fell back to a default body would show up as a call
/// to `run_stream` instead.
#[derive(Debug, Default)]
struct Recorder {
    calls: Mutex<Vec<&'static str>>,
}

impl Recorder {
    fn record<T>(&self, method: &'static str) -> Result<T> {
        self.calls.lock().unwrap().push(method);
        Err(CodeBoxError::unsupported(method))
    }

    fn calls(&self) -> Vec<&'static str> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait]
impl CodeBox for Recorder {
    fn id(&self) -> &str {
        self.calls.lock().unwrap().push("id");
        "recorder"
    }

    fn capabilities(&self) -> Capabilities {
        self.calls.lock().unwrap().push("capabilities");
        Capabilities::full(["python"])
    }

    async fn start(&self) -> Result<()> {
        self.record("start")
    }

    async fn stop(&self) -> Result<()> {
        self.record("stop")
    }

    async fn status(&self) -> Result<BoxStatus> {
        self.record("status")
    }

    async fn run_stream(&self, _: &str, _: RunOptions) -> Result<EventStream> {
        self.record("run_stream")
    }

    async fn run(&self, _: &str, _: RunOptions) -> Result<Execution> {
        self.record("run")
    }

    async fn upload(&self, _: &str, _: ByteStream) -> Result<FileInfo> {
        self.record("upload")
    }

    async fn download(&self, _: &str) -> Result<ByteStream> {
        self.record("download")
    }

    async fn list_files(&self, _: &str, _: bool) -> Result<Vec<FileInfo>> {
        self.record("list_files")
    }

    async fn delete_file(&self, _: &str) -> Result<()> {
        self.record("delete_file")
    }

    async fn stat(&self, _: &str) -> Result<FileInfo> {
        self.record("stat")
    }

    async fn make_dir(&self, _: &str) -> Result<FileInfo> {
        self.record("make_dir")
    }

    async fn rename(&self, _: &str, _: &str) -> Result<FileInfo> {
        self.record("rename")
    }

    async fn list_dir(&self, _: &str, _: usize) -> Result<Vec<FileInfo>> {
        self.record("list_dir")
    }

    async fn install(&self, _: &[String]) -> Result<String> {
        self.record("install")
    }

    async fn packages(&self) -> Result<Vec<PackageInfo>> {
        self.record("packages")
    }

    async fn history(&self, _limit: usize) -> Result<Vec<ExecutionRecord>> {
        self.record("history")
    }

    async fn execution_stats(&self) -> Result<ExecutionStats> {
        self.record("execution_stats")
    }

    async fn pause(&self) -> Result<PauseReport> {
        self.record("pause")
    }

    async fn create_context(&self, _: Option<&str>, _: Option<&str>) -> Result<ContextInfo> {
        self.record("create_context")
    }

    async fn contexts(&self) -> Result<Vec<ContextInfo>> {
        self.record("contexts")
    }

    async fn restart_context(&self, _: &str) -> Result<()> {
        self.record("restart_context")
    }

    async fn delete_context(&self, _: &str) -> Result<()> {
        self.record("delete_context")
    }

    async fn interrupt_context(&self, _: &str) -> Result<()> {
        self.record("interrupt_context")
    }

    async fn connect_port(&self, _: u16) -> Result<PortStream> {
        self.record("connect_port")
    }

    async fn port_url(&self, _: u16) -> Result<String> {
        self.record("port_url")
    }

    async fn metrics(&self) -> Result<BoxMetrics> {
        self.record("metrics")
    }

    async fn start_process(&self, _: ProcessSpec) -> Result<ProcessStream> {
        self.record("start_process")
    }
    async fn connect_process(&self, _: ProcessId) -> Result<ProcessStream> {
        self.record("connect_process")
    }
    async fn processes(&self) -> Result<Vec<ProcessInfo>> {
        self.record("processes")
    }
    async fn process_input(&self, _: ProcessId, _: Bytes) -> Result<()> {
        self.record("process_input")
    }
    async fn close_process_input(&self, _: ProcessId) -> Result<()> {
        self.record("close_process_input")
    }
    async fn signal_process(&self, _: ProcessId, _: ProcessSignal) -> Result<()> {
        self.record("signal_process")
    }
    async fn restart(&self) -> Result<()> {
        self.record("restart")
    }

    async fn interrupt(&self) -> Result<()> {
        self.record("interrupt")
    }

    async fn run_command(&self, _: CommandSpec) -> Result<CommandOutput> {
        self.record("run_command")
    }
}

const EVERY_METHOD: [&str; 37] = [
    "id",
    "capabilities",
    "start",
    "stop",
    "status",
    "run_stream",
    "run",
    "upload",
    "download",
    "list_files",
    "delete_file",
    "stat",
    "make_dir",
    "rename",
    "list_dir",
    "install",
    "packages",
    "history",
    "execution_stats",
    "pause",
    "create_context",
    "contexts",
    "restart_context",
    "delete_context",
    "interrupt_context",
    "connect_port",
    "port_url",
    "metrics",
    "start_process",
    "connect_process",
    "processes",
    "process_input",
    "close_process_input",
    "signal_process",
    "restart",
    "interrupt",
    "run_command",
];

/// Calls every method of `b` once, in the order of [`EVERY_METHOD`]; each answer must be
/// the recorder's own.
fn call_every_method(b: impl CodeBox) {
    assert_eq!(b.id(), "recorder");
    assert_eq!(b.capabilities(), Capabilities::full(["python"]));
    block_on(async {
        let refused = |method: &str, err: CodeBoxError| {
            assert_eq!(err.kind(), crate::ErrorKind::Unsupported, "{method}: {err}");
            assert!(err.to_string().contains(method), "{method}: {err}");
        };
        refused("start", b.start().await.unwrap_err());
        refused("stop", b.stop().await.unwrap_err());
        refused("status", b.status().await.unwrap_err());
        refused("run_stream", b.run_stream("1", RunOptions::default()).await.err().unwrap());
        refused("run", b.run("1", RunOptions::default()).await.unwrap_err());
        refused("upload", b.upload("f", Box::pin(stream::empty())).await.unwrap_err());
        refused("download", b.download("f").await.err().unwrap());
        refused("list_files", b.list_files("", true).await.unwrap_err());
        refused("delete_file", b.delete_file("f").await.unwrap_err());
        refused("stat", b.stat("f").await.unwrap_err());
        refused("make_dir", b.make_dir("d").await.unwrap_err());
        refused("rename", b.rename("f", "g").await.unwrap_err());
        refused("list_dir", b.list_dir("", 2).await.unwrap_err());
        refused("install", b.install(&["p".to_owned()]).await.unwrap_err());
        refused("packages", b.packages().await.unwrap_err());
        refused("history", b.history(10).await.unwrap_err());
        refused("execution_stats", b.execution_stats().await.unwrap_err());
        refused("pause", b.pause().await.unwrap_err());
        refused("create_context", b.create_context(None, None).await.unwrap_err());
        refused("contexts", b.contexts().await.unwrap_err());
        refused("restart_context", b.restart_context("c").await.unwrap_err());
        refused("delete_context", b.delete_context("c").await.unwrap_err());
        refused("interrupt_context", b.interrupt_context("c").await.unwrap_err());
        refused("connect_port", b.connect_port(8000).await.err().unwrap());
        refused("port_url", b.port_url(8000).await.unwrap_err());
        refused("metrics", b.metrics().await.unwrap_err());
        refused("start_process", b.start_process(ProcessSpec::new(CommandSpec::new("true"))).await.err().unwrap());
        refused("connect_process", b.connect_process(1).await.err().unwrap());
        refused("processes", b.processes().await.unwrap_err());
        refused("process_input", b.process_input(1, Bytes::from_static(b"x")).await.unwrap_err());
        refused("close_process_input", b.close_process_input(1).await.unwrap_err());
        refused("signal_process", b.signal_process(1, ProcessSignal::Sigterm).await.unwrap_err());
        refused("restart", b.restart().await.unwrap_err());
        refused("interrupt", b.interrupt().await.unwrap_err());
        refused("run_command", b.run_command(CommandSpec::new("true")).await.unwrap_err());
    });
}

#[test]
fn arc_and_box_forward_every_method_to_the_box_they_hold() {
    let inner = Arc::new(Recorder::default());
    call_every_method(Arc::clone(&inner));
    assert_eq!(inner.calls(), EVERY_METHOD, "through Arc<Recorder>");

    let inner = Arc::new(Recorder::default());
    call_every_method(Arc::clone(&inner) as Arc<dyn CodeBox>);
    assert_eq!(inner.calls(), EVERY_METHOD, "through Arc<dyn CodeBox>");

    // A box held twice over: the forwarding composes.
    let inner = Arc::new(Recorder::default());
    call_every_method(Box::new(Arc::clone(&inner)));
    assert_eq!(inner.calls(), EVERY_METHOD, "through Box<Arc<Recorder>>");

    let inner = Arc::new(Recorder::default());
    call_every_method(Box::new(Arc::clone(&inner)) as Box<dyn CodeBox>);
    assert_eq!(inner.calls(), EVERY_METHOD, "through Box<dyn CodeBox>");
}

#[test]
fn conveniences_reach_the_held_box_through_a_wrapper() {
    let inner = Arc::new(Recorder::default());
    let b: Box<dyn CodeBox> = Box::new(Arc::clone(&inner));
    block_on(async {
        b.exec("1").await.unwrap_err();
        b.install_one("p").await.unwrap_err();
    });
    assert_eq!(inner.calls(), ["run", "install"]);
}

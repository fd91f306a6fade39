//! The blocking API: every box and [`Client`] method, called from ordinary (non-async) code.
//!
//! It mirrors the async API as `reqwest::blocking` mirrors `reqwest`: the same names, each
//! method returning when the work is done. Every call runs on one Tokio runtime of this
//! module's own (a single worker thread named `codebox-blocking`, started on first use and
//! living as long as the process), and the calling thread waits for the answer. Streams
//! become iterators: [`BlockingBox::run_stream`] yields events as they come, and
//! [`BlockingBox::download`] yields chunks and is an [`std::io::Read`].
//!
//! Called from inside an async runtime (a Tokio worker, or a `spawn_blocking` thread), every
//! method returns an [`Unsupported`](crate::ErrorKind::Unsupported) error instead of
//! blocking the runtime or panicking: async code uses the async API, or moves the blocking
//! calls to a thread of its own.
//!
//! ```no_run
//! # fn demo() -> codebox::Result<()> {
//! let sandbox = codebox::blocking::connect()?;
//! let out = sandbox.exec("print(6 * 7)")?;
//! assert_eq!(out.stdout(), "42\n");
//! sandbox.stop()?;
//! # Ok(()) }
//! ```
//!
//! Port streams ([`CodeBox::connect_port`]) have no blocking
//! form; [`BlockingBox::port_url`] names the URL of a server session's port.

use std::future::Future;
use std::io::Read;
use std::sync::{Arc, OnceLock, mpsc};

use bytes::Bytes;
use tokio::runtime::Runtime;

use crate::{
    BoxMetrics, BoxStatus, Capabilities, CodeBox, CodeBoxError, CodeBoxSettings, CommandOutput, CommandSpec,
    ContextInfo, Execution, ExecutionRecord, ExecutionStats, FileInfo, PackageInfo, ProcessId, ProcessInfo,
    ProcessSignal, ProcessSpec, Result, RunOptions,
};

mod client;
mod streams;

pub use streams::{Download, Events, ProcessEvents, StreamIter};

#[cfg(feature = "remote")]
#[cfg_attr(docsrs, doc(cfg(feature = "remote")))]
pub use client::{Client, ClientBuilder};

/// The size of the chunks an upload reads from its reader.
const UPLOAD_CHUNK: usize = 64 * 1024;

/// How many chunks or events wait between the runtime and a slow reader: enough to keep
/// the transfer going, few enough that memory stays flat.
const QUEUE_DEPTH: usize = 8;

/// The runtime every blocking call runs on, made on first use. Kept for the life of the
/// process, so that work a dropped box leaves behind (a remote box deleting its session)
/// finishes as it would under an async caller's runtime.
fn runtime() -> Result<&'static Runtime> {
    static RUNTIME: OnceLock<std::io::Result<Runtime>> = OnceLock::new();
    let made = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("codebox-blocking")
            .enable_all()
            .build()
    });
    match made {
        Ok(rt) => Ok(rt),
        Err(e) => Err(CodeBoxError::io(
            "starting the runtime of the blocking API",
            std::io::Error::new(e.kind(), e.to_string()),
        )),
    }
}

/// Refuse a blocking call made where a Tokio runtime is running: waiting there would stall
/// that runtime (or, with `block_on`, panic).
fn check_not_async() -> Result<()> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(CodeBoxError::unsupported(
            "a blocking call from inside an async runtime: use the async API there, or call it from a thread of your own",
        ));
    }
    Ok(())
}

/// Run `fut` on the blocking runtime and wait for its output on this thread.
pub(crate) fn wait<T: Send + 'static>(fut: impl Future<Output = Result<T>> + Send + 'static) -> Result<T> {
    check_not_async()?;
    let rt = runtime()?;
    let (tx, rx) = mpsc::sync_channel(1);
    rt.spawn(async move {
        // The caller waits on the other end; it cannot have gone.
        let _ = tx.send(fut.await);
    });
    rx.recv().map_err(|_| CodeBoxError::connection("the blocking API's runtime dropped a call before answering"))?
}

/// A started box from the environment: [`crate::connect`], blocking.
pub fn connect() -> Result<BlockingBox> {
    let b = from_env()?;
    b.start()?;
    Ok(b)
}

/// A box from the environment, not yet started: [`crate::from_env`], blocking.
pub fn from_env() -> Result<BlockingBox> {
    check_not_async()?;
    Ok(BlockingBox::from_arc(crate::from_env()?))
}

/// A box for these settings, not yet started: [`crate::from_settings`], blocking.
pub fn from_settings(settings: &CodeBoxSettings) -> Result<BlockingBox> {
    check_not_async()?;
    Ok(BlockingBox::from_arc(crate::from_settings(settings)?))
}

/// A box whose methods block: any async [`CodeBox`] behind the blocking API. The default,
/// `BlockingBox<dyn CodeBox>`, is what [`connect`] and [`from_env`] give; [`LocalBox`] and
/// [`RemoteBox`] add their backends' own methods.
pub struct BlockingBox<B: CodeBox + ?Sized + 'static = dyn CodeBox> {
    // An Option only so that Drop can hand the box to the runtime.
    inner: Option<Arc<B>>,
}

/// A [`LocalBox`](crate::LocalBox) whose methods block.
#[cfg(feature = "local")]
#[cfg_attr(docsrs, doc(cfg(feature = "local")))]
pub type LocalBox = BlockingBox<crate::LocalBox>;

/// A [`RemoteBox`](crate::RemoteBox) whose methods block.
#[cfg(feature = "remote")]
#[cfg_attr(docsrs, doc(cfg(feature = "remote")))]
pub type RemoteBox = BlockingBox<crate::RemoteBox>;

impl<B: CodeBox + ?Sized + 'static> std::fmt::Debug for BlockingBox<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("BlockingBox").field(&self.inner).finish()
    }
}

impl<B: CodeBox + ?Sized + 'static> Drop for BlockingBox<B> {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else { return };
        // A box's Drop may start work on the runtime it is dropped in (a remote box deletes
        // the session it created): drop it on ours.
        match runtime() {
            Ok(rt) => {
                rt.spawn(async move { drop(inner) });
            }
            Err(_) => drop(inner),
        }
    }
}

impl<B: CodeBox + 'static> BlockingBox<B> {
    /// The blocking form of an async box.
    pub fn new(inner: B) -> Self {
        Self { inner: Some(Arc::new(inner)) }
    }
}

impl<B: CodeBox + ?Sized + 'static> BlockingBox<B> {
    /// The blocking form of a shared async box.
    pub fn from_arc(inner: Arc<B>) -> Self {
        Self { inner: Some(inner) }
    }

    /// The async box behind this one, for code that has a runtime at hand.
    pub fn as_async(&self) -> &Arc<B> {
        self.inner.as_ref().unwrap_or_else(|| unreachable!("taken only in drop"))
    }

    fn call<T, F, Fut>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<B>) -> Fut,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        wait(f(self.as_async().clone()))
    }

    /// [`CodeBox::id`].
    pub fn id(&self) -> &str {
        self.as_async().id()
    }

    /// [`CodeBox::capabilities`].
    pub fn capabilities(&self) -> Capabilities {
        self.as_async().capabilities()
    }

    /// [`CodeBox::start`].
    pub fn start(&self) -> Result<()> {
        self.call(|b| async move { b.start().await })
    }

    /// [`CodeBox::stop`].
    pub fn stop(&self) -> Result<()> {
        self.call(|b| async move { b.stop().await })
    }

    /// [`CodeBox::status`].
    pub fn status(&self) -> Result<BoxStatus> {
        self.call(|b| async move { b.status().await })
    }

    /// [`CodeBox::run_stream`]: the events as an iterator, which ends after
    /// [`ExecEvent::End`](crate::ExecEvent::End). Dropping it early cancels the execution.
    pub fn run_stream(&self, code: &str, options: RunOptions) -> Result<Events> {
        let code = code.to_owned();
        let stream = self.call(|b| async move { b.run_stream(&code, options).await })?;
        Events::pump(stream)
    }

    /// [`CodeBox::run`].
    pub fn run(&self, code: &str, options: RunOptions) -> Result<Execution> {
        let code = code.to_owned();
        self.call(|b| async move { b.run(&code, options).await })
    }

    /// [`CodeBoxExt::exec`](crate::CodeBoxExt::exec): run code with default options.
    pub fn exec(&self, code: &str) -> Result<Execution> {
        self.run(code, RunOptions::default())
    }

    /// [`CodeBox::upload`] from a reader, read in chunks as the upload goes: memory stays
    /// flat whatever the size.
    pub fn upload(&self, path: &str, mut content: impl Read + Send + 'static) -> Result<FileInfo> {
        check_not_async()?;
        let rt = runtime()?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes>>(QUEUE_DEPTH);
        let chunks = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
        let b = self.as_async().clone();
        let path = path.to_owned();
        let upload = rt.spawn(async move { b.upload(&path, Box::pin(chunks)).await });
        // This thread reads; the runtime sends. A send fails once the upload has ended
        // (refused, say), and its error is the one to report.
        let mut buf = vec![0u8; UPLOAD_CHUNK];
        loop {
            let chunk = match content.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => Ok(Bytes::copy_from_slice(&buf[..n])),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => Err(CodeBoxError::io("reading the content to upload", e)),
            };
            let failed = chunk.is_err();
            if tx.blocking_send(chunk).is_err() || failed {
                break;
            }
        }
        drop(tx);
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        rt.spawn(async move {
            let _ = done_tx.send(upload.await);
        });
        match done_rx.recv() {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(CodeBoxError::protocol(format!("the upload's task ended abnormally: {join}"))),
            Err(_) => Err(CodeBoxError::connection("the blocking API's runtime dropped an upload before answering")),
        }
    }

    /// [`CodeBoxExt::upload_bytes`](crate::CodeBoxExt::upload_bytes): upload bytes held in memory.
    pub fn upload_bytes(&self, path: &str, content: impl Into<Bytes>) -> Result<FileInfo> {
        let content: Bytes = content.into();
        let path = path.to_owned();
        self.call(|b| async move { crate::CodeBoxExt::upload_bytes(&*b, &path, content).await })
    }

    /// [`CodeBox::download`]: the file's chunks as an iterator, which is also a reader.
    pub fn download(&self, path: &str) -> Result<Download> {
        let path = path.to_owned();
        let stream = self.call(|b| async move { b.download(&path).await })?;
        Download::pump(stream)
    }

    /// [`CodeBoxExt::download_bytes`](crate::CodeBoxExt::download_bytes): a whole file in memory.
    pub fn download_bytes(&self, path: &str) -> Result<Bytes> {
        let path = path.to_owned();
        self.call(|b| async move { crate::CodeBoxExt::download_bytes(&*b, &path).await })
    }

    /// [`CodeBox::list_files`].
    pub fn list_files(&self, dir: &str, recursive: bool) -> Result<Vec<FileInfo>> {
        let dir = dir.to_owned();
        self.call(|b| async move { b.list_files(&dir, recursive).await })
    }

    /// [`CodeBox::list_dir`].
    pub fn list_dir(&self, dir: &str, depth: usize) -> Result<Vec<FileInfo>> {
        let dir = dir.to_owned();
        self.call(|b| async move { b.list_dir(&dir, depth).await })
    }

    /// [`CodeBox::delete_file`].
    pub fn delete_file(&self, path: &str) -> Result<()> {
        let path = path.to_owned();
        self.call(|b| async move { b.delete_file(&path).await })
    }

    /// [`CodeBox::stat`].
    pub fn stat(&self, path: &str) -> Result<FileInfo> {
        let path = path.to_owned();
        self.call(|b| async move { b.stat(&path).await })
    }

    /// [`CodeBox::make_dir`].
    pub fn make_dir(&self, path: &str) -> Result<FileInfo> {
        let path = path.to_owned();
        self.call(|b| async move { b.make_dir(&path).await })
    }

    /// [`CodeBox::rename`].
    pub fn rename(&self, from: &str, to: &str) -> Result<FileInfo> {
        let (from, to) = (from.to_owned(), to.to_owned());
        self.call(|b| async move { b.rename(&from, &to).await })
    }

    /// [`CodeBox::install`].
    pub fn install(&self, packages: &[String]) -> Result<String> {
        let packages = packages.to_vec();
        self.call(|b| async move { b.install(&packages).await })
    }

    /// [`CodeBox::packages`].
    pub fn packages(&self) -> Result<Vec<PackageInfo>> {
        self.call(|b| async move { b.packages().await })
    }

    /// [`CodeBox::history`].
    pub fn history(&self, limit: usize) -> Result<Vec<ExecutionRecord>> {
        self.call(|b| async move { b.history(limit).await })
    }

    /// [`CodeBox::execution_stats`].
    pub fn execution_stats(&self) -> Result<ExecutionStats> {
        self.call(|b| async move { b.execution_stats().await })
    }

    /// [`CodeBox::pause`].
    pub fn pause(&self) -> Result<crate::PauseReport> {
        self.call(|b| async move { b.pause().await })
    }

    /// [`CodeBox::create_context`].
    pub fn create_context(&self, language: Option<&str>, cwd: Option<&str>) -> Result<ContextInfo> {
        let (language, cwd) = (language.map(str::to_owned), cwd.map(str::to_owned));
        self.call(|b| async move { b.create_context(language.as_deref(), cwd.as_deref()).await })
    }

    /// [`CodeBox::contexts`].
    pub fn contexts(&self) -> Result<Vec<ContextInfo>> {
        self.call(|b| async move { b.contexts().await })
    }

    /// [`CodeBox::restart_context`].
    pub fn restart_context(&self, id: &str) -> Result<()> {
        let id = id.to_owned();
        self.call(|b| async move { b.restart_context(&id).await })
    }

    /// [`CodeBox::delete_context`].
    pub fn delete_context(&self, id: &str) -> Result<()> {
        let id = id.to_owned();
        self.call(|b| async move { b.delete_context(&id).await })
    }

    /// [`CodeBox::interrupt_context`].
    pub fn interrupt_context(&self, id: &str) -> Result<()> {
        let id = id.to_owned();
        self.call(|b| async move { b.interrupt_context(&id).await })
    }

    /// [`CodeBox::port_url`].
    pub fn port_url(&self, port: u16) -> Result<String> {
        self.call(|b| async move { b.port_url(port).await })
    }

    /// [`CodeBox::metrics`].
    pub fn metrics(&self) -> Result<BoxMetrics> {
        self.call(|b| async move { b.metrics().await })
    }

    /// [`CodeBox::start_process`]: the process's events as an iterator,
    /// [`ProcessEvent::Start`](crate::ProcessEvent::Start) first and
    /// [`ProcessEvent::End`](crate::ProcessEvent::End) last. Dropping it does not stop the
    /// process.
    pub fn start_process(&self, spec: ProcessSpec) -> Result<ProcessEvents> {
        let stream = self.call(|b| async move { b.start_process(spec).await })?;
        ProcessEvents::pump(stream)
    }

    /// [`CodeBox::connect_process`]: follow a running process again.
    pub fn connect_process(&self, pid: ProcessId) -> Result<ProcessEvents> {
        let stream = self.call(move |b| async move { b.connect_process(pid).await })?;
        ProcessEvents::pump(stream)
    }

    /// [`CodeBox::processes`].
    pub fn processes(&self) -> Result<Vec<ProcessInfo>> {
        self.call(|b| async move { b.processes().await })
    }

    /// [`CodeBox::process_input`].
    pub fn process_input(&self, pid: ProcessId, data: impl Into<Bytes>) -> Result<()> {
        let data = data.into();
        self.call(move |b| async move { b.process_input(pid, data).await })
    }

    /// [`CodeBox::close_process_input`].
    pub fn close_process_input(&self, pid: ProcessId) -> Result<()> {
        self.call(move |b| async move { b.close_process_input(pid).await })
    }

    /// [`CodeBox::signal_process`].
    pub fn signal_process(&self, pid: ProcessId, signal: ProcessSignal) -> Result<()> {
        self.call(move |b| async move { b.signal_process(pid, signal).await })
    }

    /// [`CodeBox::restart`].
    pub fn restart(&self) -> Result<()> {
        self.call(|b| async move { b.restart().await })
    }

    /// [`CodeBox::interrupt`].
    pub fn interrupt(&self) -> Result<()> {
        self.call(|b| async move { b.interrupt().await })
    }

    /// [`CodeBox::run_command`].
    pub fn run_command(&self, command: CommandSpec) -> Result<CommandOutput> {
        self.call(|b| async move { b.run_command(command).await })
    }
}

#[cfg(feature = "local")]
impl BlockingBox<crate::LocalBox> {
    /// A local box with the defaults, not yet started: [`crate::LocalBox::new`].
    pub fn local() -> Result<Self> {
        check_not_async()?;
        Ok(Self::new(crate::LocalBox::new()?))
    }

    /// A local box from `CODEBOX_*` settings: [`crate::LocalBox::from_settings`].
    pub fn local_from_settings(settings: &CodeBoxSettings) -> Result<Self> {
        check_not_async()?;
        Ok(Self::new(crate::LocalBox::from_settings(settings)?))
    }
}

#[cfg(feature = "remote")]
impl BlockingBox<crate::RemoteBox> {
    /// A remote box from `CODEBOX_*` settings: [`crate::RemoteBox::from_settings`].
    pub fn remote_from_settings(settings: &CodeBoxSettings) -> Result<Self> {
        check_not_async()?;
        Ok(Self::new(crate::RemoteBox::from_settings(settings)?))
    }

    /// Attach to the existing session `id`: [`crate::RemoteBox::from_id`].
    pub fn from_id(id: impl Into<String>, settings: &CodeBoxSettings) -> Result<Self> {
        check_not_async()?;
        Ok(Self::new(crate::RemoteBox::from_id(id, settings)?))
    }

    /// [`crate::RemoteBox::info`].
    pub fn info(&self) -> Result<crate::SessionInfo> {
        self.call(|b| async move { b.info().await })
    }

    /// [`crate::RemoteBox::set_timeout`].
    pub fn set_timeout(&self, timeout: std::time::Duration) -> Result<crate::SessionInfo> {
        self.call(move |b| async move { b.set_timeout(timeout).await })
    }

    /// [`crate::RemoteBox::metrics_since`].
    pub fn metrics_since(&self, since_ms: u64) -> Result<Vec<BoxMetrics>> {
        self.call(move |b| async move { b.metrics_since(since_ms).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn inside_an_async_runtime_a_blocking_call_is_an_error() {
        let err = from_env().unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Unsupported, "{err}");
        assert!(err.to_string().contains("inside an async runtime"), "{err}");
    }
}

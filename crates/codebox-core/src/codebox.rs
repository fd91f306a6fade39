//! The `CodeBox` trait and its conveniences.

use std::fmt::Debug;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt, stream};

use crate::context::ContextInfo;
use crate::error::Result;
use crate::event::ExecEvent;
use crate::execution::Execution;
use crate::files::FileInfo;
use crate::history::{ExecutionRecord, ExecutionStats};
use crate::metrics::BoxMetrics;
use crate::options::{CommandOutput, CommandSpec, RunOptions};
use crate::packages::PackageInfo;
use crate::pause::PauseReport;
use crate::ports::PortStream;
use crate::process::{ProcessId, ProcessInfo, ProcessSignal, ProcessSpec, ProcessStream};
use crate::status::{BoxStatus, Capabilities};

/// A stream of execution events. It ends after [`ExecEvent::End`]; dropping it early
/// cancels the execution.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<ExecEvent>> + Send + 'static>>;

/// A stream of file content in chunks. Large files never sit in one buffer.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send + 'static>>;

/// An isolated place to run code: a Jupyter kernel on this machine, or a session on a
/// CodeBox server. Every backend implements this trait and passes the same conformance
/// suite, so code written against it runs unchanged on any of them.
///
/// The trait is object safe: `Arc<dyn CodeBox>` works. `Arc<T>` and `Box<T>` of any box
/// (`dyn CodeBox` included) are boxes themselves, forwarding every method to the box they
/// hold, so a function taking `impl CodeBox` accepts them. Conveniences (uploading a byte
/// slice, downloading to a file) live in [`CodeBoxExt`].
#[async_trait]
pub trait CodeBox: Send + Sync + Debug {
    /// A stable identifier for this box (a session id for remote boxes).
    fn id(&self) -> &str;

    /// What this backend can do.
    fn capabilities(&self) -> Capabilities;

    /// Start the box: spawn or attach to its kernel. Starting a running box does nothing.
    async fn start(&self) -> Result<()>;

    /// Stop the box and release its kernel. Stopping a stopped box does nothing.
    async fn stop(&self) -> Result<()>;

    /// The box's current state.
    async fn status(&self) -> Result<BoxStatus>;

    /// Run code and stream its events as they happen. The stream ends with
    /// [`ExecEvent::End`]; a raised exception arrives as [`ExecEvent::Error`] data.
    async fn run_stream(&self, code: &str, options: RunOptions) -> Result<EventStream>;

    /// Run code and collect everything it produced.
    async fn run(&self, code: &str, options: RunOptions) -> Result<Execution> {
        Execution::collect(self.run_stream(code, options).await?).await
    }

    /// Write a file in the box from a stream of chunks, creating parent directories.
    /// Returns the written file's metadata.
    async fn upload(&self, path: &str, content: ByteStream) -> Result<FileInfo>;

    /// Read a file from the box as a stream of chunks.
    async fn download(&self, path: &str) -> Result<ByteStream>;

    /// List a directory of the box (`""` or `"."` for the working directory).
    async fn list_files(&self, dir: &str, recursive: bool) -> Result<Vec<FileInfo>>;

    /// Delete a file or an empty directory.
    async fn delete_file(&self, path: &str) -> Result<()>;

    /// Metadata of one path: kind, size, mode, modified. A symbolic link is described, never
    /// followed. A missing path is [`ErrorKind::NotFound`](crate::ErrorKind::NotFound): that
    /// is how to ask whether a file exists.
    async fn stat(&self, path: &str) -> Result<FileInfo> {
        let _ = path;
        Err(crate::CodeBoxError::unsupported("stat"))
    }

    /// Make a directory and any missing parents. An existing directory is fine; an existing
    /// file (or link) on the way is an error. Returns the directory's metadata.
    async fn make_dir(&self, path: &str) -> Result<FileInfo> {
        let _ = path;
        Err(crate::CodeBoxError::unsupported("make_dir"))
    }

    /// Move a file or directory within the box. A file at `to` is replaced; a directory at
    /// `to` is never overwritten, and `to`'s parent must exist. Returns `to`'s metadata.
    async fn rename(&self, from: &str, to: &str) -> Result<FileInfo> {
        let _ = (from, to);
        Err(crate::CodeBoxError::unsupported("rename"))
    }

    /// List a directory down to `depth` levels (1: its entries only; as E2B's
    /// `files.list(path, depth)`). The default filters a recursive [`CodeBox::list_files`].
    async fn list_dir(&self, dir: &str, depth: usize) -> Result<Vec<FileInfo>> {
        check_list_depth(depth)?;
        if depth == 1 {
            return self.list_files(dir, false).await;
        }
        let base = match dir.trim_matches('/') {
            "" | "." => 0,
            d => crate::files::normalize_box_path(d)?.components().count(),
        };
        let all = self.list_files(dir, true).await?;
        Ok(all
            .into_iter()
            .filter(|f| f.path.split('/').filter(|p| !p.is_empty()).count().saturating_sub(base) <= depth)
            .collect())
    }

    /// Install packages into the box's environment. Fails with the installer's output.
    async fn install(&self, packages: &[String]) -> Result<String>;

    /// The packages the box's environment has, its own installs first, then by name. Read
    /// by the box's own interpreter, inside the box.
    async fn packages(&self) -> Result<Vec<PackageInfo>> {
        Err(crate::CodeBoxError::unsupported("packages"))
    }

    /// The box's newest `limit` executions, newest first. The box keeps a bounded number
    /// of them, across kernel restarts, for as long as it lives.
    async fn history(&self, limit: usize) -> Result<Vec<ExecutionRecord>> {
        let _ = limit;
        Err(crate::CodeBoxError::unsupported("history"))
    }

    /// Totals by outcome and duration statistics over the executions [`history`](Self::history) keeps.
    async fn execution_stats(&self) -> Result<ExecutionStats> {
        Err(crate::CodeBoxError::unsupported("execution_stats"))
    }

    /// Write the box's state to disk (its files, installed packages, history and each
    /// context's variables, as far as its [`SnapshotRung`](crate::SnapshotRung) goes), then
    /// stop its kernels and give back what it held (uid, cgroup, memory). The report names
    /// every variable that could not be kept.
    async fn pause(&self) -> Result<PauseReport> {
        Err(crate::CodeBoxError::unsupported("pause"))
    }

    /// Make a code context: a kernel of its own in this box (same working directory,
    /// confinement and limits), whose variables no other context sees. `language` must be
    /// one the box's kernel runs (`None`: the box's own); `cwd`, relative to the working
    /// directory, is where its code starts. Run code in it with [`RunOptions::with_context`].
    /// A box has a bounded number of contexts; past it this is an error.
    async fn create_context(&self, language: Option<&str>, cwd: Option<&str>) -> Result<ContextInfo> {
        let _ = (language, cwd);
        Err(crate::CodeBoxError::unsupported("create_context"))
    }

    /// The box's code contexts, the default one (the box's own kernel) first.
    async fn contexts(&self) -> Result<Vec<ContextInfo>> {
        Err(crate::CodeBoxError::unsupported("contexts"))
    }

    /// Restart the kernel of context `id`: its variables are gone, files stay. An unknown
    /// id is [`ErrorKind::NotFound`](crate::ErrorKind::NotFound).
    async fn restart_context(&self, id: &str) -> Result<()> {
        let _ = id;
        Err(crate::CodeBoxError::unsupported("restart_context"))
    }

    /// End context `id` and its kernel. The default context cannot be deleted.
    async fn delete_context(&self, id: &str) -> Result<()> {
        let _ = id;
        Err(crate::CodeBoxError::unsupported("delete_context"))
    }

    /// Interrupt whatever context `id` is running; the other contexts run on.
    async fn interrupt_context(&self, id: &str) -> Result<()> {
        let _ = id;
        Err(crate::CodeBoxError::unsupported("interrupt_context"))
    }

    /// Connect to TCP port `port` of the box, where a program in the box listens (on its own
    /// loopback). The port must be in [`PORT_RANGE`](crate::PORT_RANGE) (else
    /// [`InvalidInput`](crate::ErrorKind::InvalidInput)); nothing listening there is
    /// [`Connection`](crate::ErrorKind::Connection), which a server answers with 502.
    async fn connect_port(&self, port: u16) -> Result<PortStream> {
        crate::check_port(port.into())?;
        Err(crate::CodeBoxError::unsupported("connect_port"))
    }

    /// The URL at which port `port` of the box is reached over HTTP (a server's
    /// `/v1/sessions/{id}/ports/{port}/`), for a box that has one.
    async fn port_url(&self, port: u16) -> Result<String> {
        crate::check_port(port.into())?;
        Err(crate::CodeBoxError::unsupported("port_url"))
    }

    /// What the box uses now: CPU, memory, disk, network and processes. Fields the box
    /// cannot measure are `None` and named in [`BoxMetrics::unavailable`].
    async fn metrics(&self) -> Result<BoxMetrics> {
        Err(crate::CodeBoxError::unsupported("metrics"))
    }

    /// Start a process in the box (its confinement, uid, limits and working directory, as
    /// [`run_command`](Self::run_command)) and stream what it does: the stream's first event
    /// is [`ProcessEvent::Start`](crate::ProcessEvent::Start) with its id, its last
    /// [`ProcessEvent::End`](crate::ProcessEvent::End). The process runs on when the stream
    /// is dropped; it ends with the box. A box runs a bounded number at once.
    async fn start_process(&self, spec: ProcessSpec) -> Result<ProcessStream> {
        let _ = spec;
        Err(crate::CodeBoxError::unsupported("start_process"))
    }

    /// Follow process `pid` again: output from now on, then its end. An unknown or ended
    /// pid is [`ErrorKind::NotFound`](crate::ErrorKind::NotFound).
    async fn connect_process(&self, pid: ProcessId) -> Result<ProcessStream> {
        let _ = pid;
        Err(crate::CodeBoxError::unsupported("connect_process"))
    }

    /// The processes running in the box that [`start_process`](Self::start_process) started.
    async fn processes(&self) -> Result<Vec<ProcessInfo>> {
        Err(crate::CodeBoxError::unsupported("processes"))
    }

    /// Write `data` to process `pid`'s standard input (started with
    /// [`ProcessSpec::stdin`]; else [`InvalidInput`](crate::ErrorKind::InvalidInput)).
    async fn process_input(&self, pid: ProcessId, data: Bytes) -> Result<()> {
        let _ = (pid, data);
        Err(crate::CodeBoxError::unsupported("process_input"))
    }

    /// Close process `pid`'s standard input: it reads end-of-file.
    async fn close_process_input(&self, pid: ProcessId) -> Result<()> {
        let _ = pid;
        Err(crate::CodeBoxError::unsupported("close_process_input"))
    }

    /// Send `signal` to process `pid` (and the processes it started).
    async fn signal_process(&self, pid: ProcessId, signal: ProcessSignal) -> Result<()> {
        let _ = (pid, signal);
        Err(crate::CodeBoxError::unsupported("signal_process"))
    }

    /// Restart the kernel: variables are gone, files stay.
    async fn restart(&self) -> Result<()>;

    /// Interrupt whatever the kernel is running. The kernel keeps its state.
    async fn interrupt(&self) -> Result<()>;

    /// Run a program with arguments (no shell) inside the box.
    async fn run_command(&self, command: CommandSpec) -> Result<CommandOutput>;
}

/// The deepest listing [`CodeBox::list_dir`] accepts (as deep as a recursive listing goes).
pub const MAX_LIST_DEPTH: usize = 128;

/// Refuse a listing depth of 0 or past [`MAX_LIST_DEPTH`].
pub fn check_list_depth(depth: usize) -> Result<()> {
    if depth == 0 || depth > MAX_LIST_DEPTH {
        return Err(crate::CodeBoxError::invalid(format!(
            "a listing depth must be between 1 and {MAX_LIST_DEPTH}, not {depth}"
        )));
    }
    Ok(())
}

/// Conveniences over any [`CodeBox`].
///
/// Not meant to be implemented, and it cannot be: every [`CodeBox`] has it through the blanket
/// impl below, which leaves no type for another impl (a type that is not a [`CodeBox`] lacks
/// the supertrait), so no separate seal is needed and new conveniences break no one. A
/// backend changes what these do through [`CodeBox`]'s methods, which they call.
#[async_trait]
pub trait CodeBoxExt: CodeBox {
    /// Run code with default options.
    async fn exec(&self, code: &str) -> Result<Execution> {
        self.run(code, RunOptions::default()).await
    }

    /// Upload bytes held in memory.
    async fn upload_bytes(&self, path: &str, content: impl Into<Bytes> + Send) -> Result<FileInfo> {
        let content: Bytes = content.into();
        self.upload(path, Box::pin(stream::once(async move { Ok(content) }))).await
    }

    /// Download a whole file into memory. For large files prefer [`CodeBox::download`].
    async fn download_bytes(&self, path: &str) -> Result<Bytes> {
        let chunks: Vec<Bytes> = self.download(path).await?.try_collect().await?;
        match chunks.len() {
            1 => Ok(chunks.into_iter().next().unwrap_or_default()),
            _ => Ok(Bytes::from(chunks.concat())),
        }
    }

    /// Read a file's chunks one by one and hand each to `sink`. Memory stays flat.
    async fn download_each<F>(&self, path: &str, mut sink: F) -> Result<u64>
    where
        F: FnMut(Bytes) -> Result<()> + Send,
    {
        let mut stream = self.download(path).await?;
        let mut total = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            total += chunk.len() as u64;
            sink(chunk)?;
        }
        Ok(total)
    }

    /// Install one package.
    async fn install_one(&self, package: &str) -> Result<String> {
        self.install(&[package.to_owned()]).await
    }
}

impl<T: CodeBox + ?Sized> CodeBoxExt for T {}

/// Forwards every method of [`CodeBox`], the provided ones included, to `**self`, so that a
/// box's own `run` (say) is used, not the default. A forgotten method is a clippy error
/// (`missing_trait_methods`), which catches only methods with a default body; one without is
/// a compile error anyway.
macro_rules! forward_codebox {
    ($wrapper:ident) => {
        #[deny(clippy::missing_trait_methods)]
        #[async_trait]
        impl<T: CodeBox + ?Sized> CodeBox for $wrapper<T> {
            fn id(&self) -> &str {
                (**self).id()
            }

            fn capabilities(&self) -> Capabilities {
                (**self).capabilities()
            }

            async fn start(&self) -> Result<()> {
                (**self).start().await
            }

            async fn stop(&self) -> Result<()> {
                (**self).stop().await
            }

            async fn status(&self) -> Result<BoxStatus> {
                (**self).status().await
            }

            async fn run_stream(&self, code: &str, options: RunOptions) -> Result<EventStream> {
                (**self).run_stream(code, options).await
            }

            async fn run(&self, code: &str, options: RunOptions) -> Result<Execution> {
                (**self).run(code, options).await
            }

            async fn upload(&self, path: &str, content: ByteStream) -> Result<FileInfo> {
                (**self).upload(path, content).await
            }

            async fn download(&self, path: &str) -> Result<ByteStream> {
                (**self).download(path).await
            }

            async fn list_files(&self, dir: &str, recursive: bool) -> Result<Vec<FileInfo>> {
                (**self).list_files(dir, recursive).await
            }

            async fn delete_file(&self, path: &str) -> Result<()> {
                (**self).delete_file(path).await
            }

            async fn stat(&self, path: &str) -> Result<FileInfo> {
                (**self).stat(path).await
            }

            async fn make_dir(&self, path: &str) -> Result<FileInfo> {
                (**self).make_dir(path).await
            }

            async fn rename(&self, from: &str, to: &str) -> Result<FileInfo> {
                (**self).rename(from, to).await
            }

            async fn list_dir(&self, dir: &str, depth: usize) -> Result<Vec<FileInfo>> {
                (**self).list_dir(dir, depth).await
            }

            async fn install(&self, packages: &[String]) -> Result<String> {
                (**self).install(packages).await
            }

            async fn packages(&self) -> Result<Vec<PackageInfo>> {
                (**self).packages().await
            }

            async fn history(&self, limit: usize) -> Result<Vec<ExecutionRecord>> {
                (**self).history(limit).await
            }

            async fn execution_stats(&self) -> Result<ExecutionStats> {
                (**self).execution_stats().await
            }

            async fn pause(&self) -> Result<PauseReport> {
                (**self).pause().await
            }

            async fn create_context(&self, language: Option<&str>, cwd: Option<&str>) -> Result<ContextInfo> {
                (**self).create_context(language, cwd).await
            }

            async fn contexts(&self) -> Result<Vec<ContextInfo>> {
                (**self).contexts().await
            }

            async fn restart_context(&self, id: &str) -> Result<()> {
                (**self).restart_context(id).await
            }

            async fn delete_context(&self, id: &str) -> Result<()> {
                (**self).delete_context(id).await
            }

            async fn interrupt_context(&self, id: &str) -> Result<()> {
                (**self).interrupt_context(id).await
            }

            async fn connect_port(&self, port: u16) -> Result<PortStream> {
                (**self).connect_port(port).await
            }

            async fn port_url(&self, port: u16) -> Result<String> {
                (**self).port_url(port).await
            }

            async fn metrics(&self) -> Result<BoxMetrics> {
                (**self).metrics().await
            }

            async fn start_process(&self, spec: ProcessSpec) -> Result<ProcessStream> {
                (**self).start_process(spec).await
            }
            async fn connect_process(&self, pid: ProcessId) -> Result<ProcessStream> {
                (**self).connect_process(pid).await
            }
            async fn processes(&self) -> Result<Vec<ProcessInfo>> {
                (**self).processes().await
            }
            async fn process_input(&self, pid: ProcessId, data: Bytes) -> Result<()> {
                (**self).process_input(pid, data).await
            }
            async fn close_process_input(&self, pid: ProcessId) -> Result<()> {
                (**self).close_process_input(pid).await
            }
            async fn signal_process(&self, pid: ProcessId, signal: ProcessSignal) -> Result<()> {
                (**self).signal_process(pid, signal).await
            }
            async fn restart(&self) -> Result<()> {
                (**self).restart().await
            }

            async fn interrupt(&self) -> Result<()> {
                (**self).interrupt().await
            }

            async fn run_command(&self, command: CommandSpec) -> Result<CommandOutput> {
                (**self).run_command(command).await
            }
        }
    };
}

forward_codebox!(Arc);
forward_codebox!(Box);

#[cfg(test)]
mod tests;

//! The `CodeBox` trait and its conveniences.

use std::fmt::Debug;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt, stream};

use crate::error::Result;
use crate::event::ExecEvent;
use crate::execution::Execution;
use crate::files::FileInfo;
use crate::options::{CommandOutput, CommandSpec, RunOptions};
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
/// The trait is object safe: `Arc<dyn CodeBox>` works. Conveniences (uploading a byte
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

    /// Install packages into the box's environment. Fails with the installer's output.
    async fn install(&self, packages: &[String]) -> Result<String>;

    /// Restart the kernel: variables are gone, files stay.
    async fn restart(&self) -> Result<()>;

    /// Interrupt whatever the kernel is running. The kernel keeps its state.
    async fn interrupt(&self) -> Result<()>;

    /// Run a program with arguments (no shell) inside the box.
    async fn run_command(&self, command: CommandSpec) -> Result<CommandOutput>;
}

/// Conveniences over any [`CodeBox`].
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trait_is_object_safe() {
        fn takes(_: Option<std::sync::Arc<dyn CodeBox>>) {}
        takes(None);
    }
}

//! The iterators of the blocking API: async streams pumped by a task on its runtime to a
//! reader that blocks.

use std::io::Read;

use bytes::Bytes;
use futures::StreamExt;

use super::{QUEUE_DEPTH, check_not_async, runtime};
use crate::{ExecEvent, Execution, ProcessEvent, Result};

/// The items of an async stream as a blocking iterator, forwarded by a task on the blocking
/// API's runtime. The task ends, dropping the stream (which cancels an execution), when the
/// iterator is dropped.
pub struct StreamIter<T> {
    rx: tokio::sync::mpsc::Receiver<Result<T>>,
}

/// The events of an execution, as they happen: the iterator of
/// [`BlockingBox::run_stream`](super::BlockingBox::run_stream).
pub type Events = StreamIter<ExecEvent>;

/// A background process's events, as they happen: the iterator of
/// [`BlockingBox::start_process`](super::BlockingBox::start_process) and
/// [`BlockingBox::connect_process`](super::BlockingBox::connect_process).
pub type ProcessEvents = StreamIter<ProcessEvent>;

impl<T> std::fmt::Debug for StreamIter<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamIter").finish_non_exhaustive()
    }
}

impl<T: Send + 'static> StreamIter<T> {
    pub(super) fn pump(mut stream: std::pin::Pin<Box<dyn futures::Stream<Item = Result<T>> + Send>>) -> Result<Self> {
        check_not_async()?;
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE_DEPTH);
        runtime()?.spawn(async move {
            loop {
                tokio::select! {
                    item = stream.next() => match item {
                        Some(item) => if tx.send(item).await.is_err() { return },
                        None => return,
                    },
                    // The reader went away while the stream was quiet.
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Self { rx })
    }
}

impl<T> Iterator for StreamIter<T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Err(e) = check_not_async() {
            return Some(Err(e));
        }
        self.rx.blocking_recv()
    }
}

impl StreamIter<ExecEvent> {
    /// Read the rest of the events into an [`Execution`], as
    /// [`BlockingBox::run`](super::BlockingBox::run) does.
    pub fn collect_execution(self) -> Result<Execution> {
        let events = futures::stream::iter(self);
        futures::executor::block_on(Execution::collect(Box::pin(events)))
    }
}

/// A file's content in chunks, also a reader: the iterator of
/// [`BlockingBox::download`](super::BlockingBox::download).
pub struct Download {
    chunks: StreamIter<Bytes>,
    /// What is left of the chunk a `read` did not take whole.
    pending: Bytes,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download").field("pending", &self.pending.len()).finish_non_exhaustive()
    }
}

impl Download {
    pub(super) fn pump(stream: crate::ByteStream) -> Result<Self> {
        Ok(Self { chunks: StreamIter::pump(stream)?, pending: Bytes::new() })
    }
}

impl Iterator for Download {
    type Item = Result<Bytes>;

    fn next(&mut self) -> Option<Self::Item> {
        if !self.pending.is_empty() {
            return Some(Ok(std::mem::take(&mut self.pending)));
        }
        self.chunks.next()
    }
}

impl Read for Download {
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

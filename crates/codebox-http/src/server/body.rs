//! The response body type and the helpers that build responses.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use codebox_core::{CodeBoxError, Result};
use futures::{Stream, StreamExt};
use http::{HeaderValue, Response, StatusCode, header};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use serde::Serialize;
use tokio::time::{Instant, Sleep};

use super::ApiError;
use crate::wire::NDJSON;

/// The line sent during an execution's silence.
pub const KEEPALIVE_LINE: &[u8] = b"{\"keepalive\":true}\n";

/// A response body: empty, one buffer, or a stream of chunks (sized or not).
///
/// Streams are polled only as fast as the client reads, so memory stays flat however large
/// the body. Dropping the body (the client went away) drops the stream behind it.
pub struct Body {
    inner: UnsyncBoxBody<Bytes, CodeBoxError>,
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Body").field("size_hint", &http_body::Body::size_hint(&self.inner)).finish()
    }
}

impl Default for Body {
    fn default() -> Self {
        Self::empty()
    }
}

impl Body {
    /// An empty body.
    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    /// A body of one buffer.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let full = http_body_util::Full::new(bytes.into()).map_err(|never| match never {});
        Self { inner: UnsyncBoxBody::new(full) }
    }

    /// A body of unknown length from a stream of chunks (sent chunked on HTTP/1.1).
    pub fn from_stream<S>(stream: S) -> Self
    where
        S: Stream<Item = Result<Bytes>> + Send + 'static,
    {
        let frames = stream.map(|chunk| chunk.map(Frame::data));
        Self { inner: UnsyncBoxBody::new(http_body_util::StreamBody::new(frames)) }
    }

    /// A body of exactly `len` bytes from a stream of chunks. The length is announced
    /// (`Content-Length`); a stream that yields more or fewer bytes ends the body with an
    /// error, so the client sees a cut transfer rather than wrong data.
    pub fn sized_stream<S>(stream: S, len: u64) -> Self
    where
        S: Stream<Item = Result<Bytes>> + Send + 'static,
    {
        Self { inner: UnsyncBoxBody::new(SizedStream { stream: Box::pin(stream), remaining: len }) }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = CodeBoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;

struct SizedStream {
    stream: ChunkStream,
    remaining: u64,
}

impl http_body::Body for SizedStream {
    type Data = Bytes;
    type Error = CodeBoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        match self.stream.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                let len = chunk.len() as u64;
                if len > self.remaining {
                    self.remaining = 0;
                    return Poll::Ready(Some(Err(CodeBoxError::protocol("the file grew while it was being sent"))));
                }
                self.remaining -= len;
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => {
                Poll::Ready(Some(Err(CodeBoxError::protocol("the file shrank while it was being sent"))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// A JSON response.
pub fn json_response<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(json) => {
            let mut resp = Response::new(Body::full(json));
            *resp.status_mut() = status;
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        Err(e) => ApiError::from(CodeBoxError::protocol(format!("could not encode the response: {e}")).with_source(e))
            .to_response(),
    }
}

/// Turn a stream of lines ([`StreamLine`]s of an execution, [`ProcessLine`]s of a
/// background process) into NDJSON chunks, adding a keepalive line whenever nothing was
/// sent for `keepalive`.
///
/// [`StreamLine`]: crate::wire::StreamLine
/// [`ProcessLine`]: crate::wire::ProcessLine
pub fn ndjson_body<S, L>(lines: S, keepalive: Duration) -> Body
where
    S: Stream<Item = L> + Send + 'static,
    L: Serialize + Send + 'static,
{
    Body::from_stream(Keepalive::new(Box::pin(lines), keepalive))
}

/// A 200 `application/x-ndjson` response streaming `lines` (see [`ndjson_body`]).
pub fn ndjson_response<S, L>(lines: S, keepalive: Duration) -> Response<Body>
where
    S: Stream<Item = L> + Send + 'static,
    L: Serialize + Send + 'static,
{
    let mut resp = Response::new(ndjson_body(lines, keepalive));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

struct Keepalive<L> {
    lines: Pin<Box<dyn Stream<Item = L> + Send>>,
    sleep: Pin<Box<Sleep>>,
    period: Duration,
}

impl<L> Keepalive<L> {
    fn new(lines: Pin<Box<dyn Stream<Item = L> + Send>>, period: Duration) -> Self {
        Self { lines, sleep: Box::pin(tokio::time::sleep(period)), period }
    }
}

impl<L: Serialize> Stream for Keepalive<L> {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.lines.poll_next_unpin(cx) {
            Poll::Ready(Some(line)) => {
                let deadline = Instant::now() + self.period;
                self.sleep.as_mut().reset(deadline);
                let mut buf = match serde_json::to_vec(&line) {
                    Ok(buf) => buf,
                    Err(e) => {
                        return Poll::Ready(Some(Err(
                            CodeBoxError::protocol(format!("encoding an event: {e}")).with_source(e)
                        )));
                    }
                };
                buf.push(b'\n');
                Poll::Ready(Some(Ok(Bytes::from(buf))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match self.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    let deadline = Instant::now() + self.period;
                    self.sleep.as_mut().reset(deadline);
                    Poll::Ready(Some(Ok(Bytes::from_static(KEEPALIVE_LINE))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::StreamLine;
    use codebox_core::ExecEvent;
    use futures::stream;
    use http_body_util::BodyExt;

    #[tokio::test(start_paused = true)]
    async fn silence_becomes_keepalive_lines() {
        let lines = stream::once(async { StreamLine::Event { seq: 0, event: ExecEvent::stdout("a") } }).chain(
            stream::once(async {
                tokio::time::sleep(Duration::from_secs(25)).await;
                StreamLine::Event { seq: 1, event: ExecEvent::stdout("b") }
            }),
        );
        let body = ndjson_body(lines, Duration::from_secs(10)).collect().await.unwrap().to_bytes();
        let text = String::from_utf8(body.to_vec()).unwrap();
        let kinds: Vec<&str> = text.lines().map(|l| if l.contains("keepalive") { "k" } else { "e" }).collect();
        assert_eq!(kinds, ["e", "k", "k", "e"], "{text}");
    }

    #[tokio::test]
    async fn sized_streams_refuse_the_wrong_length() {
        let chunks = || stream::iter([Ok(Bytes::from_static(b"abc")), Ok(Bytes::from_static(b"de"))]);
        let ok = Body::sized_stream(chunks(), 5).collect().await.unwrap().to_bytes();
        assert_eq!(&ok[..], b"abcde");
        assert!(Body::sized_stream(chunks(), 4).collect().await.is_err());
        assert!(Body::sized_stream(chunks(), 6).collect().await.is_err());
    }
}

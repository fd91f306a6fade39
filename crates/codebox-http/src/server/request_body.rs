//! Reading request bodies with a size limit and a stall timeout.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use codebox_core::{ByteStream, CodeBoxError, ErrorKind, Result};
use futures::Stream;
use http_body::Body as HttpBody;
use tokio::time::{Instant, Sleep};

use super::body::status_error;

/// The error for a body over `limit` bytes: 413 `too_large`.
fn too_large(limit: u64) -> CodeBoxError {
    status_error(413, ErrorKind::TooLarge, format!("the request body exceeds the limit of {limit} bytes"))
}

/// The error for a client that sent nothing for `idle`: 408 `timeout`.
fn stalled(idle: Duration) -> CodeBoxError {
    status_error(
        408,
        ErrorKind::Timeout,
        format!("the client sent no body bytes for {:.1}s; the upload was abandoned", idle.as_secs_f64()),
    )
}

/// Read a whole (small) request body into memory, refusing more than `limit` bytes and a
/// client that sends nothing for `idle`.
pub async fn read_limited<B>(body: B, limit: u64, idle: Duration) -> Result<Bytes>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    use futures::StreamExt;
    let mut stream = stream_limited(body, limit, idle);
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk?);
    }
    Ok(buf.freeze())
}

/// A request body as a stream of chunks that fails with 413 `too_large` once more than
/// `limit` bytes arrived (before handing the offending chunk on), and with 408 `timeout`
/// when the client sends nothing for `idle`.
pub fn stream_limited<B>(body: B, limit: u64, idle: Duration) -> ByteStream
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    Box::pin(Limited {
        body: Box::pin(body),
        seen: 0,
        limit,
        idle,
        sleep: Box::pin(tokio::time::sleep(idle)),
        done: false,
    })
}

struct Limited<B> {
    body: Pin<Box<B>>,
    seen: u64,
    limit: u64,
    idle: Duration,
    sleep: Pin<Box<Sleep>>,
    done: bool,
}

impl<B> Stream for Limited<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            match self.body.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let deadline = Instant::now() + self.idle;
                    self.sleep.as_mut().reset(deadline);
                    let Ok(data) = frame.into_data() else { continue }; // trailers carry nothing we use
                    if data.is_empty() {
                        continue;
                    }
                    self.seen += data.len() as u64;
                    if self.seen > self.limit {
                        self.done = true;
                        return Poll::Ready(Some(Err(too_large(self.limit))));
                    }
                    return Poll::Ready(Some(Ok(data)));
                }
                Poll::Ready(Some(Err(e))) => {
                    self.done = true;
                    let err =
                        CodeBoxError::Connection { message: format!("reading the request body: {e}"), source: None };
                    return Poll::Ready(Some(Err(err)));
                }
                Poll::Ready(None) => {
                    self.done = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    if self.sleep.as_mut().poll(cx).is_ready() {
                        self.done = true;
                        return Poll::Ready(Some(Err(stalled(self.idle))));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{StreamExt, stream};
    use http_body::Frame;
    use http_body_util::StreamBody;

    fn body_of(chunks: Vec<&'static [u8]>) -> impl HttpBody<Data = Bytes, Error = std::io::Error> + Send + 'static {
        StreamBody::new(stream::iter(chunks.into_iter().map(|c| Ok(Frame::data(Bytes::from_static(c))))))
    }

    #[tokio::test]
    async fn bodies_within_the_limit_pass_whole() {
        let got = read_limited(body_of(vec![b"ab", b"cd"]), 4, Duration::from_secs(5)).await.unwrap();
        assert_eq!(&got[..], b"abcd");
    }

    #[tokio::test]
    async fn bodies_over_the_limit_fail_before_the_extra_bytes() {
        let mut s = stream_limited(body_of(vec![b"ab", b"cd", b"e"]), 4, Duration::from_secs(5));
        assert_eq!(&s.next().await.unwrap().unwrap()[..], b"ab");
        assert_eq!(&s.next().await.unwrap().unwrap()[..], b"cd");
        let err = s.next().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TooLarge);
        assert_eq!(err.http().unwrap().status, 413);
        assert!(s.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_client_times_out() {
        let slow = StreamBody::new(
            stream::once(async { Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"a"))) }).chain(stream::once(
                async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Ok(Frame::data(Bytes::from_static(b"b")))
                },
            )),
        );
        let err = read_limited(slow, 10, Duration::from_secs(2)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
        assert_eq!(err.http().unwrap().status, 408);
    }
}

//! Reading request bodies with a size limit and a stall timeout.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use codebox_core::{ByteStream, CodeBoxError, ErrorKind, Result, TimeoutKind};
use futures::Stream;
use http_body::Body as HttpBody;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use super::ApiError;

/// The error for a body over `limit` bytes: `too_large`, answered 413.
fn too_large(limit: u64) -> CodeBoxError {
    CodeBoxError::too_large(format!("the request body exceeds the limit of {limit} bytes"))
}

/// The error for a client that sent nothing for `idle`: a `transfer` timeout, answered 408
/// (see [`ApiError::from_body_error`]).
fn stalled(idle: Duration) -> CodeBoxError {
    CodeBoxError::timeout(TimeoutKind::Transfer, Some(idle))
}

/// The error for a request body that could not be read. A body the client framed wrongly
/// (a malformed chunk size, say: the HTTP parser reports it as invalid data or input) is
/// the client's mistake, `invalid_input` (400); anything else means the connection failed.
fn body_error(e: &(dyn std::error::Error + 'static)) -> CodeBoxError {
    let mut cause = Some(e);
    while let Some(err) = cause {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(io.kind(), std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput)
        {
            return CodeBoxError::invalid(format!("malformed request body: {io}"));
        }
        cause = err.source();
    }
    CodeBoxError::connection(format!("reading the request body: {e}"))
}

/// Read a whole (small) request body into memory, refusing more than `limit` bytes (413) and
/// a client that sends nothing for `idle` (408). A `Content-Length` over `limit` is refused
/// before any byte is read.
pub async fn read_limited<B>(body: B, limit: u64, idle: Duration) -> Result<Bytes, ApiError>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + 'static,
{
    use futures::StreamExt;
    let announced = body.size_hint().exact();
    let mut stream = stream_limited(body, limit, idle);
    // The announced length is at most `limit` here (else the stream fails at once), so
    // reserving it is bounded and saves the copies of a growing buffer.
    let mut buf = BytesMut::with_capacity(announced.unwrap_or(0).min(limit) as usize);
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk.map_err(|e| ApiError::from_body_error(&e))?);
    }
    Ok(buf.freeze())
}

/// Bytes of request bodies held in memory at once, shared by every request of a server:
/// without it, many concurrent bodies each under the per-body limit could together take
/// all memory. A body with a `Content-Length` takes its whole share when its first bytes
/// arrive, a chunked one chunk by chunk as the bytes arrive; each gives it back when its
/// [`BufferedBody`] drops.
#[derive(Debug, Clone)]
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
    total: u64,
    wait: Duration,
}

impl BodyBudget {
    /// A budget of `total` bytes. A body that finds it spent waits up to `wait` for other
    /// bodies to give bytes back, then fails with 503 and `Retry-After`.
    pub fn new(total: u64, wait: Duration) -> Self {
        let permits = usize::try_from(total).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS);
        Self { bytes: Arc::new(Semaphore::new(permits)), total: permits as u64, wait }
    }

    /// The bytes of the budget.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The bytes not held by any body now.
    pub fn available(&self) -> u64 {
        self.bytes.available_permits() as u64
    }

    async fn take(&self, bytes: usize) -> Result<OwnedSemaphorePermit, ApiError> {
        let n = u32::try_from(bytes).map_err(|_| self.spent())?;
        if let Ok(permit) = Arc::clone(&self.bytes).try_acquire_many_owned(n) {
            return Ok(permit);
        }
        match tokio::time::timeout(self.wait, Arc::clone(&self.bytes).acquire_many_owned(n)).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(self.spent()),
        }
    }

    fn spent(&self) -> ApiError {
        let message = format!(
            "the server is holding as many request bytes as it allows ({} bytes across all requests); try again \
             shortly",
            self.total
        );
        ApiError::new(503, ErrorKind::RateLimited, message).with_retry_after(Duration::from_secs(1))
    }
}

/// A request body read whole into memory, holding its share of a [`BodyBudget`] until it
/// drops.
#[derive(Debug)]
pub struct BufferedBody {
    /// The body's bytes.
    pub bytes: Bytes,
    _share: Option<OwnedSemaphorePermit>,
}

/// [`read_limited`] within `budget`: the bytes held count against the server-wide budget
/// while the returned body lives.
pub async fn read_budgeted<B>(
    body: B,
    limit: u64,
    idle: Duration,
    budget: &BodyBudget,
) -> Result<BufferedBody, ApiError>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + 'static,
{
    use futures::StreamExt;
    let announced = body.size_hint().exact();
    let mut stream = stream_limited(body, limit, idle);
    let mut share: Option<OwnedSemaphorePermit> = None;
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::from_body_error(&e))?;
        match (&mut share, announced) {
            // The whole announced length at once, when the first bytes show the client is
            // sending (at most `limit`: a larger announcement failed already). Taken chunk by
            // chunk, many large bodies arriving together could each hold a part of the budget
            // and none ever get the rest.
            (None, Some(length)) => {
                let length = length.min(limit) as usize;
                share = Some(budget.take(length.max(chunk.len())).await?);
                buf.reserve(length);
            }
            (None, None) => share = Some(budget.take(chunk.len()).await?),
            (Some(_), Some(_)) => {}
            (Some(held), None) => held.merge(budget.take(chunk.len()).await?),
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(BufferedBody { bytes: buf.freeze(), _share: share })
}

/// A request body as a stream of chunks that fails with `too_large` once more than `limit`
/// bytes arrived (before handing the offending chunk on), or at once when the request
/// announces more (`Content-Length`), and with a `transfer` timeout when the client sends
/// nothing for `idle`. The stream goes to a box, so its errors are [`CodeBoxError`]s;
/// [`ApiError::from_body_error`] is the answer to each (413, 408, ...).
pub fn stream_limited<B>(body: B, limit: u64, idle: Duration) -> ByteStream
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + 'static,
{
    if body.size_hint().lower() > limit {
        // Known to be too large: answer now instead of reading up to the limit (or waiting
        // for bytes a client never means to send).
        return Box::pin(futures::stream::once(std::future::ready(Err(too_large(limit)))));
    }
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
    B::Error: std::error::Error + 'static,
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
                    return Poll::Ready(Some(Err(body_error(&e))));
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
        assert_eq!(ApiError::from_body_error(&err).status, 413);
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn an_announced_length_over_the_limit_fails_before_reading() {
        let announced = http_body_util::Full::new(Bytes::from_static(b"0123456789"));
        let err = read_limited(announced, 4, Duration::from_secs(5)).await.unwrap_err();
        assert_eq!((err.status, err.kind), (413, ErrorKind::TooLarge));
    }

    #[tokio::test]
    async fn bodies_hold_their_bytes_of_the_budget_while_they_live() {
        let budget = BodyBudget::new(6, Duration::from_millis(10));
        let first = read_budgeted(body_of(vec![b"abcd"]), 10, Duration::from_secs(5), &budget).await.unwrap();
        assert_eq!((&first.bytes[..], budget.available()), (&b"abcd"[..], 2));
        let err = read_budgeted(body_of(vec![b"ab", b"cd"]), 10, Duration::from_secs(5), &budget).await.unwrap_err();
        assert_eq!((err.status, err.kind), (503, ErrorKind::RateLimited));
        assert!(err.retry_after.is_some());
        assert_eq!(budget.available(), 2, "a refused body gives back what it took");
        drop(first);
        let second = read_budgeted(body_of(vec![b"ab", b"cd"]), 10, Duration::from_secs(5), &budget).await.unwrap();
        assert_eq!(&second.bytes[..], b"abcd");
    }

    #[tokio::test]
    async fn a_malformed_body_is_the_clients_mistake_and_a_cut_one_a_connection_failure() {
        let failing = |kind: std::io::ErrorKind| {
            StreamBody::new(stream::iter([Err::<Frame<Bytes>, _>(std::io::Error::new(kind, "Invalid chunk size"))]))
        };
        let err =
            read_limited(failing(std::io::ErrorKind::InvalidInput), 10, Duration::from_secs(5)).await.unwrap_err();
        assert_eq!((err.status, err.kind), (400, ErrorKind::InvalidInput));
        let err =
            read_limited(failing(std::io::ErrorKind::ConnectionReset), 10, Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Connection);
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
        assert_eq!((err.status, err.kind), (408, ErrorKind::Timeout));
    }
}

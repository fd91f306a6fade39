//! The streams of the native API: NDJSON lines to execution events, and to the events of a
//! background process (framed alike).
//!
//! Lines are parsed as they arrive. Sequence numbers must count from 0 without gaps,
//! keepalive lines are skipped, an error line ends the stream with that error, and a stream
//! that ends without an `end` event is a protocol error.

use std::marker::PhantomData;
use std::time::Duration;

use bytes::BytesMut;
use futures::{StreamExt, stream};

use codebox_core::{ByteStream, CodeBoxError, EventStream, ExecEvent, ProcessEvent, ProcessStream, Result};
use codebox_http::wire::{ErrorBody, ErrorResponse, ProcessLine, StreamLine, error_from_response, status_for_kind};

/// The longest line accepted (one event with a large image can be tens of MiB).
const MAX_LINE: usize = 256 << 20;

/// How long to wait for the end of the body after the `end` event, so the connection can
/// be reused. A server that keeps the body open longer loses the connection instead.
const DRAIN_AFTER_END: Duration = Duration::from_secs(2);

/// What one line of a stream is.
enum Part<E> {
    Keepalive,
    Event(u64, E),
    Error(u64, ErrorBody),
}

/// A kind of line the server streams: an execution's or a background process's.
trait Line: Sized + 'static {
    type Event: Send + 'static;
    /// What the stream is called in errors.
    const NAME: &'static str;
    fn parse(line: &[u8]) -> serde_json::Result<Self>;
    fn part(self) -> Part<Self::Event>;
    fn is_end(event: &Self::Event) -> bool;
}

impl Line for StreamLine {
    type Event = ExecEvent;
    const NAME: &'static str = "execution stream";

    fn parse(line: &[u8]) -> serde_json::Result<Self> {
        serde_json::from_slice(line)
    }

    fn part(self) -> Part<ExecEvent> {
        match self {
            StreamLine::Keepalive { .. } => Part::Keepalive,
            StreamLine::Event { seq, event } => Part::Event(seq, event),
            StreamLine::Error { seq, error } => Part::Error(seq, error),
        }
    }

    fn is_end(event: &ExecEvent) -> bool {
        event.is_end()
    }
}

impl Line for ProcessLine {
    type Event = ProcessEvent;
    const NAME: &'static str = "process stream";

    fn parse(line: &[u8]) -> serde_json::Result<Self> {
        serde_json::from_slice(line)
    }

    fn part(self) -> Part<ProcessEvent> {
        match self {
            ProcessLine::Keepalive { .. } => Part::Keepalive,
            ProcessLine::Event { seq, event } => Part::Event(seq, event),
            ProcessLine::Error { seq, error } => Part::Error(seq, error),
        }
    }

    fn is_end(event: &ProcessEvent) -> bool {
        matches!(event, ProcessEvent::End(_))
    }
}

struct Decoder<L> {
    body: ByteStream,
    buf: BytesMut,
    next_seq: u64,
    finished: bool,
    lines: PhantomData<fn() -> L>,
}

/// Decode an execution response body into events.
pub(crate) fn decode(body: ByteStream) -> EventStream {
    Box::pin(decode_lines::<StreamLine>(body))
}

/// Decode a background process's response body into its events.
pub(crate) fn decode_process(body: ByteStream) -> ProcessStream {
    Box::pin(decode_lines::<ProcessLine>(body))
}

fn decode_lines<L: Line>(body: ByteStream) -> impl futures::Stream<Item = Result<L::Event>> + Send + 'static {
    let decoder = Decoder::<L> { body, buf: BytesMut::new(), next_seq: 0, finished: false, lines: PhantomData };
    stream::unfold(decoder, |mut d| async move {
        if d.finished {
            return None;
        }
        match d.next_event().await {
            Ok(Some(event)) => {
                if L::is_end(&event) {
                    d.finished = true;
                    d.drain().await;
                }
                Some((Ok(event), d))
            }
            Ok(None) => None,
            Err(e) => {
                d.finished = true;
                Some((Err(e), d))
            }
        }
    })
}

impl<L: Line> Decoder<L> {
    async fn next_event(&mut self) -> Result<Option<L::Event>> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line = self.buf.split_to(pos + 1);
                if let Some(event) = self.line(&line[..pos])? {
                    return Ok(Some(event));
                }
                continue;
            }
            if self.buf.len() > MAX_LINE {
                return Err(CodeBoxError::protocol(format!("an {} line is longer than {MAX_LINE} bytes", L::NAME)));
            }
            match self.body.next().await {
                Some(chunk) => self.buf.extend_from_slice(&chunk?),
                None => {
                    // A last line without its newline still counts.
                    let rest = std::mem::take(&mut self.buf);
                    if let Some(event) = self.line(&rest)? {
                        return Ok(Some(event));
                    }
                    return Err(CodeBoxError::protocol(format!(
                        "the {} ended without an end event (the connection was cut or the server failed)",
                        L::NAME
                    )));
                }
            }
        }
    }

    /// One line: an event, or `None` for a keepalive or a blank line.
    fn line(&mut self, line: &[u8]) -> Result<Option<L::Event>> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        let parsed = L::parse(line).map_err(|e| {
            let shown = String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned();
            CodeBoxError::protocol(format!("malformed {} line ({e}): {shown}", L::NAME))
        })?;
        match parsed.part() {
            Part::Keepalive => Ok(None),
            Part::Event(seq, event) => {
                self.check_seq(seq)?;
                Ok(Some(event))
            }
            Part::Error(seq, error) => {
                self.check_seq(seq)?;
                Err(error_from_line(error))
            }
        }
    }

    fn check_seq(&mut self, seq: u64) -> Result<()> {
        if seq != self.next_seq {
            return Err(CodeBoxError::protocol(format!(
                "{} out of order: expected event {}, got {seq}",
                L::NAME,
                self.next_seq
            )));
        }
        self.next_seq += 1;
        Ok(())
    }

    /// Read the body to its end (bounded) so the connection goes back to the pool.
    async fn drain(&mut self) {
        let body = &mut self.body;
        let _ = tokio::time::timeout(DRAIN_AFTER_END, async {
            while let Some(Ok(chunk)) = body.next().await {
                if !chunk.iter().all(u8::is_ascii_whitespace) && !chunk.starts_with(b"{\"keepalive\"") {
                    break;
                }
            }
        })
        .await;
        self.buf.clear();
    }
}

/// The error an error line stands for: the variant a box in this process gives when the
/// line carries its detail (a kernel's death, an execution timeout), else an HTTP error with
/// the kind the server reported.
fn error_from_line(error: ErrorBody) -> CodeBoxError {
    if let Some(detail) = error.detail() {
        return detail.into_error();
    }
    let status = status_for_kind(error.kind);
    let body = serde_json::to_vec(&ErrorResponse { error }).unwrap_or_default();
    error_from_response(status, Vec::new(), &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use codebox_core::{ErrorKind, Execution, KernelDeath, Outcome, TimeoutKind};

    fn body(chunks: &[&str]) -> ByteStream {
        let chunks: Vec<Result<Bytes>> = chunks.iter().map(|c| Ok(Bytes::from(c.to_string()))).collect();
        Box::pin(stream::iter(chunks))
    }

    #[tokio::test]
    async fn lines_split_across_chunks_and_keepalives_are_skipped() {
        let b = body(&[
            "{\"seq\":0,\"event\":{\"type\":\"std",
            "out\",\"text\":\"hi\\n\"}}\n{\"keepalive\":true}\n\n",
            "{\"seq\":1,\"event\":{\"type\":\"end\",\"execution_count\":1,\"duration_ms\":3.1,\"outcome\":\"ok\"}}\n",
        ]);
        let ex = Execution::collect(decode(b)).await.unwrap();
        assert_eq!(ex.stdout(), "hi\n");
        assert_eq!(ex.outcome, Outcome::Ok);
        assert_eq!(ex.execution_count, Some(1));
    }

    #[tokio::test]
    async fn gaps_malformed_lines_cut_streams_and_error_lines_fail() {
        let gap = body(&[
            "{\"seq\":0,\"event\":{\"type\":\"stdout\",\"text\":\"a\"}}\n",
            "{\"seq\":2,\"event\":{\"type\":\"stdout\",\"text\":\"b\"}}\n",
        ]);
        assert_eq!(Execution::collect(decode(gap)).await.unwrap_err().kind(), ErrorKind::Protocol);
        let malformed = body(&["{\"seq\":0,\"event\":{\"type\":\"stdout\"\n"]);
        assert_eq!(Execution::collect(decode(malformed)).await.unwrap_err().kind(), ErrorKind::Protocol);
        let cut = body(&["{\"seq\":0,\"event\":{\"type\":\"stdout\",\"text\":\"a\"}}\n"]);
        assert_eq!(Execution::collect(decode(cut)).await.unwrap_err().kind(), ErrorKind::Protocol);
        let died = body(&[
            "{\"seq\":0,\"event\":{\"type\":\"stdout\",\"text\":\"a\"}}\n",
            "{\"seq\":1,\"error\":{\"kind\":\"kernel_died\",\"message\":\"killed by signal 9\"}}\n",
        ]);
        let err = Execution::collect(decode(died)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::KernelDied);
        assert!(err.to_string().contains("signal 9"), "{err}");
    }

    #[tokio::test]
    async fn an_error_line_with_its_detail_is_the_variant_a_box_gives() {
        let died =
            body(&["{\"seq\":0,\"error\":{\"kind\":\"kernel_died\",\"message\":\"kernel died: killed by signal 9 \
             (SIGKILL)\",\"cause\":{\"type\":\"signaled\",\"signal\":9}}}\n"]);
        match Execution::collect(decode(died)).await.unwrap_err() {
            CodeBoxError::KernelDied { cause, .. } => assert_eq!(cause, KernelDeath::Signaled { signal: 9 }),
            other => panic!("expected KernelDied, got {other:?}"),
        }
        let lost = body(&[
            "{\"seq\":0,\"event\":{\"type\":\"stdout\",\"text\":\"a\"}}\n",
            "{\"seq\":1,\"error\":{\"kind\":\"timeout\",\"message\":\"m\",\"timeout\":\"execution\",\"after\":0.5,\
             \"state_lost\":true}}\n",
        ]);
        match Execution::collect(decode(lost)).await.unwrap_err() {
            CodeBoxError::Timeout { kind, after, state_lost, .. } => {
                assert_eq!((kind, after, state_lost), (TimeoutKind::Execution, Some(Duration::from_millis(500)), true));
            }
            other => panic!("expected an execution timeout, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn process_lines_decode_to_process_events() {
        let b = body(&[
            "{\"seq\":0,\"event\":{\"type\":\"start\",\"pid\":3}}\n{\"keepalive\":true}\n",
            "{\"seq\":1,\"event\":{\"type\":\"stdout\",\"data\":\"aGk=\"}}\n",
            "{\"seq\":2,\"event\":{\"type\":\"end\",\"exit_code\":0,\"timed_out\":false}}\n",
        ]);
        let events: Vec<ProcessEvent> = decode_process(b).map(|e| e.unwrap()).collect().await;
        assert_eq!(events.len(), 3, "{events:?}");
        assert_eq!(events[0], ProcessEvent::Start { pid: 3 });
        assert_eq!(events[1], ProcessEvent::Stdout { data: Bytes::from_static(b"hi") });
        assert!(matches!(&events[2], ProcessEvent::End(exit) if exit.success()));
        let cut = body(&["{\"seq\":0,\"event\":{\"type\":\"start\",\"pid\":3}}\n"]);
        let last = decode_process(cut).collect::<Vec<_>>().await.pop().unwrap();
        assert_eq!(last.unwrap_err().kind(), ErrorKind::Protocol);
        let gone = body(&["{\"seq\":0,\"error\":{\"kind\":\"not_found\",\"message\":\"process 9\"}}\n"]);
        let first = decode_process(gone).collect::<Vec<_>>().await.remove(0);
        assert_eq!(first.unwrap_err().kind(), ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn the_stream_stops_after_the_end_event() {
        let b = body(&[
            "{\"seq\":0,\"event\":{\"type\":\"end\",\"duration_ms\":1.0,\"outcome\":\"ok\"}}\n",
            "{\"seq\":1,\"event\":{\"type\":\"stdout\",\"text\":\"late\"}}\n",
        ]);
        let events: Vec<_> = decode(b).collect().await;
        assert_eq!(events.len(), 1);
    }
}

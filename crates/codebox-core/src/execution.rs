//! The collected result of one execution.

use std::time::Duration;

use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use crate::artifact::Artifact;
use crate::error::{CodeBoxError, Result};
use crate::event::{ErrorInfo, ExecEvent, MimeBundle, Outcome};

/// Everything one execution produced, in order, plus how it ended.
///
/// Made by collecting an execution's event stream ([`Execution::collect`]); no output is
/// dropped, including every display of a cell that shows several.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    /// Every output event in the order it happened (the final `End` is not repeated here).
    pub events: Vec<ExecEvent>,
    /// The kernel's execution counter, when it has one.
    pub execution_count: Option<u64>,
    /// Wall time from request to completion.
    pub duration: Duration,
    /// How the execution finished.
    pub outcome: Outcome,
    /// The files of the working directory it created or changed, when the backend tracks
    /// them (capability `artifacts`); see [`Execution::artifacts`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<Artifact>,
    /// Whether `artifacts` may be incomplete: the backend's search stopped at its bounds.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub artifacts_truncated: bool,
}

/// A decoded image from a display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// `image/png`, `image/jpeg` or `image/svg+xml`.
    pub mime: String,
    /// The image bytes (SVG as UTF-8 text).
    pub bytes: Vec<u8>,
}

impl Image {
    /// The usual file extension for this image type.
    pub fn extension(&self) -> &'static str {
        match self.mime.as_str() {
            MimeBundle::JPEG => "jpg",
            MimeBundle::SVG => "svg",
            _ => "png",
        }
    }
}

impl Execution {
    /// The execution that produced `events` and finished with `end`; `None` when `end` is
    /// not an [`ExecEvent::End`]. For a caller that reads the stream itself (to pass events
    /// on as they come) and then wants what [`collect`](Self::collect) gives.
    pub fn finished(events: Vec<ExecEvent>, end: ExecEvent) -> Option<Self> {
        match end {
            ExecEvent::End { execution_count, duration_ms, outcome, artifacts, artifacts_truncated } => Some(Self {
                events,
                execution_count,
                duration: Duration::from_secs_f64(duration_ms.max(0.0) / 1e3),
                outcome,
                artifacts,
                artifacts_truncated,
            }),
            _ => None,
        }
    }

    /// Collect a stream of events into an `Execution`.
    ///
    /// Fails with the stream's first error, or with a protocol error when the stream ends
    /// without an `End` event.
    pub async fn collect<S>(stream: S) -> Result<Self>
    where
        S: Stream<Item = Result<ExecEvent>>,
    {
        let mut stream = std::pin::pin!(stream);
        let mut events = Vec::new();
        while let Some(event) = stream.next().await {
            let event = event?;
            if event.is_end() {
                return Self::finished(events, event)
                    .ok_or_else(|| CodeBoxError::protocol("the execution stream's end event was not one"));
            }
            events.push(event);
        }
        Err(CodeBoxError::protocol("the execution stream ended without an end event"))
    }

    /// All standard output, concatenated.
    pub fn stdout(&self) -> String {
        self.events
            .iter()
            .filter_map(|e| match e {
                ExecEvent::Stdout { text } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    /// All standard error, concatenated.
    pub fn stderr(&self) -> String {
        self.events
            .iter()
            .filter_map(|e| match e {
                ExecEvent::Stderr { text } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    /// The textual output a notebook would show: stdout, then the `text/plain` of the
    /// cell's value when it has one. Displays and stderr are not included.
    pub fn text(&self) -> String {
        let mut out = self.stdout();
        if let Some(value) = self.result().and_then(MimeBundle::plain) {
            out.push_str(&value);
        }
        out
    }

    /// The value of the cell's last expression.
    pub fn result(&self) -> Option<&MimeBundle> {
        self.events.iter().find_map(|e| match e {
            ExecEvent::Result { data, .. } => Some(data),
            _ => None,
        })
    }

    /// Every display bundle, in order (not including the cell's value).
    pub fn displays(&self) -> Vec<&MimeBundle> {
        self.events
            .iter()
            .filter_map(|e| match e {
                ExecEvent::Display { data, .. } => Some(data),
                _ => None,
            })
            .collect()
    }

    /// Every image in displays and in the cell's value, decoded, in order.
    pub fn images(&self) -> Vec<Image> {
        let mut images = Vec::new();
        for event in &self.events {
            let data = match event {
                ExecEvent::Display { data, .. } | ExecEvent::Result { data, .. } => data,
                _ => continue,
            };
            for mime in [MimeBundle::PNG, MimeBundle::JPEG] {
                if let Some(bytes) = data.binary(mime) {
                    images.push(Image { mime: mime.to_owned(), bytes });
                }
            }
            if let Some(svg) = data.text_of(MimeBundle::SVG) {
                images.push(Image { mime: MimeBundle::SVG.to_owned(), bytes: svg.into_bytes() });
            }
        }
        images
    }

    /// The files of the working directory this execution created or changed (images it
    /// saved on request among them), ordered by path. Empty when the backend does not track
    /// them (capability `artifacts`) or the execution wrote nothing.
    pub fn artifacts(&self) -> &[Artifact] {
        &self.artifacts
    }

    /// The exception the code raised, if it raised one.
    pub fn error(&self) -> Option<&ErrorInfo> {
        self.events.iter().find_map(|e| match e {
            ExecEvent::Error(info) => Some(info),
            _ => None,
        })
    }

    /// Whether the code ran to the end without raising.
    pub fn is_ok(&self) -> bool {
        self.outcome == Outcome::Ok
    }

    /// Whether output was cut by the per-execution output cap.
    pub fn truncated_bytes(&self) -> u64 {
        self.events
            .iter()
            .map(|e| match e {
                ExecEvent::Truncated { dropped_bytes } => *dropped_bytes,
                _ => 0,
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;

    fn png_bundle(b64: &str) -> MimeBundle {
        let mut b = MimeBundle::text_plain("<Figure>");
        b.insert(MimeBundle::PNG, serde_json::Value::String(b64.into()));
        b
    }

    #[tokio::test]
    async fn collect_keeps_every_output_in_order() {
        let events = vec![
            Ok(ExecEvent::stdout("a\n")),
            Ok(ExecEvent::stderr("warn\n")),
            Ok(ExecEvent::Display { data: png_bundle("aGk="), display_id: None }),
            Ok(ExecEvent::Display { data: png_bundle("aG8="), display_id: None }),
            Ok(ExecEvent::stdout("b\n")),
            Ok(ExecEvent::Result { data: MimeBundle::text_plain("42"), execution_count: Some(7) }),
            Ok(ExecEvent::end(Some(7), Duration::from_millis(12), Outcome::Ok)),
        ];
        let ex = Execution::collect(stream::iter(events)).await.unwrap();
        assert_eq!(ex.stdout(), "a\nb\n");
        assert_eq!(ex.stderr(), "warn\n");
        assert_eq!(ex.text(), "a\nb\n42");
        assert_eq!(ex.displays().len(), 2);
        let images = ex.images();
        assert_eq!(images.iter().map(|i| i.bytes.as_slice()).collect::<Vec<_>>(), vec![b"hi".as_slice(), b"ho"]);
        assert_eq!(ex.execution_count, Some(7));
        assert!(ex.is_ok());
        assert_eq!(ex.events.len(), 6);
    }

    #[tokio::test]
    async fn a_stream_without_end_is_a_protocol_error() {
        let err = Execution::collect(stream::iter(vec![Ok(ExecEvent::stdout("x"))])).await.unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Protocol);
    }
}

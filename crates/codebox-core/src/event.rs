//! The events an execution produces, in the order they happen.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::artifact::Artifact;

/// One thing an execution produced. Streams yield these as they happen; an execution's
/// stream always ends with exactly one [`ExecEvent::End`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ExecEvent {
    /// Text written to standard output.
    Stdout {
        /// The text.
        text: String,
    },
    /// Text written to standard error.
    Stderr {
        /// The text.
        text: String,
    },
    /// A rich display (`display(...)`, a plot).
    Display {
        /// The representations of the displayed object.
        data: MimeBundle,
        /// The display id, when the object can be updated later.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        display_id: Option<String>,
    },
    /// An update to an earlier display with the same `display_id`.
    UpdateDisplay {
        /// The new representations.
        data: MimeBundle,
        /// Which display to update.
        display_id: String,
    },
    /// The value of the last expression of the cell.
    Result {
        /// The representations of the value.
        data: MimeBundle,
        /// The kernel's execution counter.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        execution_count: Option<u64>,
    },
    /// The code asked to clear its output so far.
    ClearOutput {
        /// Clear only when the next output arrives.
        wait: bool,
    },
    /// User code raised an exception. This is data, not a failure of the box.
    Error(ErrorInfo),
    /// Output was cut because it exceeded the per-execution cap.
    Truncated {
        /// How many bytes of output were dropped.
        dropped_bytes: u64,
    },
    /// The execution finished. Always the last event.
    End {
        /// The kernel's execution counter, when it has one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        execution_count: Option<u64>,
        /// Wall time from request to completion, in milliseconds.
        duration_ms: f64,
        /// How it finished.
        outcome: Outcome,
        /// The files of the working directory the execution created or changed, when the
        /// backend tracks them (capability `artifacts`). Absent on the wire when empty, so
        /// older readers and writers agree.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        artifacts: Vec<Artifact>,
        /// Whether `artifacts` may be incomplete: the search for them stopped at its bounds.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        artifacts_truncated: bool,
    },
}

impl ExecEvent {
    /// A stdout event.
    pub fn stdout(text: impl Into<String>) -> Self {
        Self::Stdout { text: text.into() }
    }

    /// A stderr event.
    pub fn stderr(text: impl Into<String>) -> Self {
        Self::Stderr { text: text.into() }
    }

    /// An end event.
    pub fn end(execution_count: Option<u64>, duration: Duration, outcome: Outcome) -> Self {
        Self::End {
            execution_count,
            duration_ms: duration.as_secs_f64() * 1e3,
            outcome,
            artifacts: Vec::new(),
            artifacts_truncated: false,
        }
    }

    /// This event with `artifacts` (and whether they may be incomplete) when it is an `End`;
    /// any other event is returned unchanged.
    pub fn with_artifacts(mut self, found: Vec<Artifact>, truncated: bool) -> Self {
        if let Self::End { artifacts, artifacts_truncated, .. } = &mut self {
            *artifacts = found;
            *artifacts_truncated = truncated;
        }
        self
    }

    /// Whether this is the final event of an execution.
    pub fn is_end(&self) -> bool {
        matches!(self, Self::End { .. })
    }

    /// The number of payload bytes this event carries, used for output caps.
    pub fn payload_len(&self) -> usize {
        match self {
            Self::Stdout { text } | Self::Stderr { text } => text.len(),
            Self::Display { data, .. } | Self::UpdateDisplay { data, .. } | Self::Result { data, .. } => {
                data.payload_len()
            }
            Self::Error(e) => e.name.len() + e.value.len() + e.traceback.iter().map(String::len).sum::<usize>(),
            _ => 0,
        }
    }
}

/// How an execution finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// The code ran to the end.
    Ok,
    /// The code raised an exception (see the [`ExecEvent::Error`] before the end).
    Error,
    /// The code was interrupted on request. The kernel kept its state.
    Interrupted,
    /// The code ran past its timeout and was interrupted. The kernel kept its state.
    TimedOut,
}

/// An exception raised by user code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// The exception's type name, e.g. `ZeroDivisionError`.
    pub name: String,
    /// The exception's message.
    pub value: String,
    /// The traceback lines, without terminal colour codes.
    pub traceback: Vec<String>,
}

impl std::fmt::Display for ErrorInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.name, self.value)
    }
}

/// The representations of one displayed object, keyed by MIME type.
///
/// Text types hold strings; binary images (`image/png`, `image/jpeg`) hold base64 text as
/// Jupyter sends them; `application/json` and other JSON types hold JSON values. Every type
/// is kept as it arrived, including ones this crate has no helper for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MimeBundle(pub BTreeMap<String, serde_json::Value>);

impl MimeBundle {
    /// `text/plain`.
    pub const TEXT: &'static str = "text/plain";
    /// `text/html`.
    pub const HTML: &'static str = "text/html";
    /// `text/markdown`.
    pub const MARKDOWN: &'static str = "text/markdown";
    /// `text/latex`.
    pub const LATEX: &'static str = "text/latex";
    /// `image/png`.
    pub const PNG: &'static str = "image/png";
    /// `image/jpeg`.
    pub const JPEG: &'static str = "image/jpeg";
    /// `image/svg+xml`.
    pub const SVG: &'static str = "image/svg+xml";
    /// `application/json`.
    pub const JSON: &'static str = "application/json";

    /// An empty bundle.
    pub fn new() -> Self {
        Self::default()
    }

    /// A bundle with one `text/plain` entry.
    pub fn text_plain(text: impl Into<String>) -> Self {
        let mut b = Self::new();
        b.insert(Self::TEXT, serde_json::Value::String(text.into()));
        b
    }

    /// Add or replace one representation.
    pub fn insert(&mut self, mime: impl Into<String>, value: serde_json::Value) {
        self.0.insert(mime.into(), value);
    }

    /// The raw value for a MIME type.
    pub fn get(&self, mime: &str) -> Option<&serde_json::Value> {
        self.0.get(mime)
    }

    /// The MIME types present.
    pub fn mime_types(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// A text representation (`text/plain`, `text/html`, ...). Jupyter sometimes sends text
    /// as a list of lines; those are joined.
    pub fn text_of(&self, mime: &str) -> Option<String> {
        match self.0.get(mime)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(lines) => {
                Some(lines.iter().filter_map(|l| l.as_str()).collect::<Vec<_>>().join(""))
            }
            other => Some(other.to_string()),
        }
    }

    /// `text/plain`, if present.
    pub fn plain(&self) -> Option<String> {
        self.text_of(Self::TEXT)
    }

    /// The decoded bytes of a base64-encoded binary type such as `image/png`.
    pub fn binary(&self, mime: &str) -> Option<Vec<u8>> {
        let text = self.text_of(mime)?;
        let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        base64::engine::general_purpose::STANDARD.decode(compact).ok()
    }

    /// The number of payload bytes across all representations.
    pub fn payload_len(&self) -> usize {
        self.0.iter().map(|(k, v)| k.len() + v.as_str().map_or_else(|| v.to_string().len(), str::len)).sum()
    }

    /// Whether the bundle has no representations.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_have_a_tagged_wire_form() {
        let ev = ExecEvent::stdout("hi\n");
        assert_eq!(serde_json::to_string(&ev).unwrap(), r#"{"type":"stdout","text":"hi\n"}"#);
        let ev = ExecEvent::Error(ErrorInfo { name: "E".into(), value: "v".into(), traceback: vec!["t".into()] });
        let json = serde_json::to_string(&ev).unwrap();
        assert_eq!(json, r#"{"type":"error","name":"E","value":"v","traceback":["t"]}"#);
        assert_eq!(serde_json::from_str::<ExecEvent>(&json).unwrap(), ev);
        let end = ExecEvent::end(Some(3), Duration::from_millis(5), Outcome::TimedOut);
        let back: ExecEvent = serde_json::from_str(&serde_json::to_string(&end).unwrap()).unwrap();
        assert_eq!(back, end);
    }

    #[test]
    fn an_end_without_artifacts_keeps_its_older_wire_form() {
        let end = ExecEvent::end(Some(1), Duration::from_millis(2), Outcome::Ok);
        assert_eq!(
            serde_json::to_value(&end).unwrap(),
            serde_json::json!({"type": "end", "execution_count": 1, "duration_ms": 2.0, "outcome": "ok"})
        );
        let older: ExecEvent = serde_json::from_str(r#"{"type":"end","duration_ms":1.0,"outcome":"error"}"#).unwrap();
        assert_eq!(older, ExecEvent::end(None, Duration::from_millis(1), Outcome::Error));
        let artifact = Artifact::new("a.txt", 1, None, crate::ArtifactChange::Created);
        let with = end.with_artifacts(vec![artifact.clone()], true);
        let json = serde_json::to_value(&with).unwrap();
        assert_eq!(json["artifacts"][0]["path"], "a.txt");
        assert_eq!(json["artifacts_truncated"], true);
        assert_eq!(serde_json::from_value::<ExecEvent>(json).unwrap(), with);
        assert_eq!(ExecEvent::stdout("x").with_artifacts(vec![artifact], false), ExecEvent::stdout("x"));
    }

    #[test]
    fn bundles_keep_unknown_types_and_decode_images() {
        let json = r#"{"text/plain":["a","b"],"image/png":"aGVs\nbG8=","application/x-custom":{"k":1}}"#;
        let b: MimeBundle = serde_json::from_str(json).unwrap();
        assert_eq!(b.plain().as_deref(), Some("ab"));
        assert_eq!(b.binary(MimeBundle::PNG).unwrap(), b"hello");
        assert_eq!(b.get("application/x-custom").unwrap()["k"], 1);
        assert_eq!(serde_json::to_value(&b).unwrap(), serde_json::from_str::<serde_json::Value>(json).unwrap());
    }
}

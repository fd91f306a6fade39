//! What a tool call gives back to a model: text capped for its context with a note of what
//! was cut, images as MCP image content within a count and size, and the structured content
//! of an execution.

use base64::Engine as _;
use codebox_core::{ExecEvent, Execution, MimeBundle, Outcome};
use rmcp::model::{CallToolResult, ContentBlock};
use serde_json::{Value, json};

/// The most characters of text one result carries: about 5,000 tokens of a model's context.
pub const MAX_TEXT_CHARS: usize = 20_000;
/// The most images one execution returns.
pub const MAX_IMAGES: usize = 4;
/// The largest image returned, in bytes (before base64).
pub const MAX_IMAGE_BYTES: usize = 1024 * 1024;

/// `text` within `max` characters: its head and tail, with a note in between of how much was
/// cut.
pub fn cap_text(text: &str, max: usize) -> String {
    let total = text.chars().count();
    if total <= max {
        return text.to_owned();
    }
    let head_chars = max / 2;
    let tail_chars = max - head_chars;
    let head: String = text.chars().take(head_chars).collect();
    let tail: String = text.chars().skip(total - tail_chars).collect();
    format!("{head}\n[... {} characters cut of {total} ...]\n{tail}", total - max)
}

/// The readable text of a bundle: plain text, else markdown, else LaTeX, else HTML.
fn bundle_text(data: &MimeBundle) -> Option<String> {
    [MimeBundle::TEXT, MimeBundle::MARKDOWN, MimeBundle::LATEX, MimeBundle::HTML]
        .iter()
        .find_map(|mime| data.text_of(mime))
}

/// The MCP result of an execution in the session `session_id`.
pub(crate) fn execution_result(session_id: &str, ex: &Execution) -> CallToolResult {
    let stdout = ex.stdout();
    let stderr = ex.stderr();
    let mut results = Vec::new();
    let mut images = Vec::new();
    let mut omitted_images = Vec::new();
    let mut text = String::new();
    for event in &ex.events {
        let data = match event {
            ExecEvent::Stdout { text: t } => {
                text.push_str(t);
                continue;
            }
            ExecEvent::Stderr { text: t } => {
                text.push_str(t);
                continue;
            }
            ExecEvent::Display { data, .. } | ExecEvent::Result { data, .. } => data,
            _ => continue,
        };
        let mut entry = serde_json::Map::new();
        if let Some(t) = bundle_text(data) {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&t);
            text.push('\n');
            entry.insert(MimeBundle::TEXT.to_owned(), Value::String(cap_text(&t, MAX_TEXT_CHARS)));
        }
        for mime in [MimeBundle::PNG, MimeBundle::JPEG] {
            let Some(bytes) = data.binary(mime) else { continue };
            if images.len() >= MAX_IMAGES || bytes.len() > MAX_IMAGE_BYTES {
                omitted_images.push(format!("{mime} of {} bytes", bytes.len()));
                entry.insert(mime.to_owned(), Value::String("omitted (see the note in the text)".into()));
                continue;
            }
            images.push(ContentBlock::image(base64::engine::general_purpose::STANDARD.encode(&bytes), mime));
            entry.insert(mime.to_owned(), Value::String(format!("image {} of the content", images.len())));
        }
        if let Some(svg) = data.text_of(MimeBundle::SVG) {
            entry.insert(MimeBundle::SVG.to_owned(), Value::String(cap_text(&svg, MAX_TEXT_CHARS)));
        }
        if !entry.is_empty() {
            results.push(Value::Object(entry));
        }
    }
    let error = ex.error().map(|e| {
        let traceback: Vec<String> = e.traceback.iter().map(|l| strip_ansi(l)).collect();
        let joined = traceback.join("\n");
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        if joined.is_empty() {
            text.push_str(&format!("{}: {}\n", e.name, e.value));
        } else {
            text.push_str(&joined);
            text.push('\n');
        }
        json!({"name": e.name, "value": e.value, "traceback": traceback})
    });
    let timed_out = ex.outcome == Outcome::TimedOut;
    match ex.outcome {
        Outcome::TimedOut => text.push_str("[the execution timed out and was interrupted]\n"),
        Outcome::Interrupted => text.push_str("[the execution was interrupted]\n"),
        _ => {}
    }
    let dropped = ex.truncated_bytes();
    if dropped > 0 {
        text.push_str(&format!("[the box dropped {dropped} bytes of output past its limit]\n"));
    }
    if !omitted_images.is_empty() {
        text.push_str(&format!(
            "[{} image(s) not returned (at most {MAX_IMAGES}, each at most {MAX_IMAGE_BYTES} bytes): {}]\n",
            omitted_images.len(),
            omitted_images.join(", ")
        ));
    }
    let structured = json!({
        "session_id": session_id,
        "execution_count": ex.execution_count,
        "stdout": cap_text(&stdout, MAX_TEXT_CHARS),
        "stderr": cap_text(&stderr, MAX_TEXT_CHARS),
        "results": results,
        "error": error,
        "timed_out": timed_out,
        "outcome": ex.outcome,
        // The files the execution created or changed, when the box lists them.
        "artifacts": ex.artifacts().iter().map(|a| json!({"path": a.path, "size": a.size, "change": a.change})).collect::<Vec<_>>(),
        "artifacts_truncated": ex.artifacts_truncated,
    });
    let mut content = vec![ContentBlock::text(cap_text(&text, MAX_TEXT_CHARS))];
    content.extend(images);
    let failed = ex.outcome != Outcome::Ok;
    let mut result = if failed { CallToolResult::error(content) } else { CallToolResult::success(content) };
    result.structured_content = Some(structured);
    result
}

/// A result of one text block (capped) and its structured form.
pub(crate) fn structured(text: &str, value: Value, is_error: bool) -> CallToolResult {
    let content = vec![ContentBlock::text(cap_text(text, MAX_TEXT_CHARS))];
    let mut result = if is_error { CallToolResult::error(content) } else { CallToolResult::success(content) };
    result.structured_content = Some(value);
    result
}

/// A tool-level failure the model should read (the box refused, a file is missing...).
pub(crate) fn failure(message: impl Into<String>) -> CallToolResult {
    let message = message.into();
    structured(&message, json!({"error": message}), true)
}

/// `text` without terminal colour codes (kernels colour their tracebacks).
pub(crate) fn strip_ansi(text: &str) -> String {
    String::from_utf8_lossy(&strip_ansi_escapes::strip(text)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_and_long_text_keeps_head_and_tail() {
        assert_eq!(cap_text("abc", 10), "abc");
        let long = format!("{}{}", "a".repeat(100), "z".repeat(100));
        let capped = cap_text(&long, 20);
        assert!(capped.starts_with(&"a".repeat(10)) && capped.ends_with(&"z".repeat(10)), "{capped}");
        assert!(capped.contains("[... 180 characters cut of 200 ...]"), "{capped}");
        // Characters, not bytes: a multi-byte character is never split.
        assert_eq!(cap_text(&"é".repeat(5), 5), "é".repeat(5));
        assert!(cap_text(&"é".repeat(50), 10).starts_with("ééééé\n[..."));
    }
}

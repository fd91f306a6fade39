//! The codebox-api 0.2 execution stream: `<txt>...</txt>`, `<img>...</img>` and
//! `<err>...</err>` chunks, back to back, parsed as they arrive.

use bytes::BytesMut;

use codebox_core::{CodeBoxError, Result};

/// The largest chunk accepted (an image can be large).
const MAX_CHUNK: usize = 256 << 20;

const TAGS: [&str; 3] = ["txt", "img", "err"];

/// One chunk of output, as the wire labels it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// `<txt>`: text the code printed, or the value of its last expression.
    Text(String),
    /// `<img>`: a base64 PNG.
    Image(String),
    /// `<err>`: text on standard error, or what the server says of an exception.
    Error(String),
}

/// Incremental parser of tagged chunks.
#[derive(Debug, Default)]
pub(crate) struct TaggedParser {
    buf: BytesMut,
}

impl TaggedParser {
    /// Add received bytes.
    pub(crate) fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete chunk, `None` when more bytes are needed.
    pub(crate) fn next_chunk(&mut self) -> Result<Option<Chunk>> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let Some(tag) = TAGS.iter().find(|t| self.buf.starts_with(format!("<{t}>").as_bytes())) else {
            // Not a tag, or only the beginning of one so far.
            let partial = TAGS.iter().any(|t| format!("<{t}>").as_bytes().starts_with(&self.buf));
            if partial {
                return Ok(None);
            }
            let shown = String::from_utf8_lossy(&self.buf[..self.buf.len().min(80)]).into_owned();
            return Err(CodeBoxError::protocol(format!(
                "expected <txt>, <img> or <err> in the execution stream, got {shown:?}"
            )));
        };
        let close = format!("</{tag}>");
        let Some(end) = find(&self.buf[5..], close.as_bytes()) else {
            if self.buf.len() > MAX_CHUNK {
                return Err(CodeBoxError::protocol(format!("an output chunk is longer than {MAX_CHUNK} bytes")));
            }
            return Ok(None);
        };
        let chunk = self.buf.split_to(5 + end + close.len());
        let content = String::from_utf8_lossy(&chunk[5..5 + end]).into_owned();
        Ok(Some(match *tag {
            "img" => Chunk::Image(content),
            "err" => Chunk::Error(content),
            _ => Chunk::Text(content),
        }))
    }

    /// Whether bytes are left that do not form a whole chunk.
    pub(crate) fn has_leftover(&self) -> bool {
        !self.buf.is_empty()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use codebox_core::ErrorKind;

    #[test]
    fn chunks_split_anywhere_are_reassembled() {
        let wire = "<txt>hello\n</txt><img>iVBO</img><err>Traceback: boom</err><txt>ü</txt>";
        let mut p = TaggedParser::default();
        let mut events = Vec::new();
        for byte in wire.as_bytes() {
            p.push(std::slice::from_ref(byte));
            while let Some(e) = p.next_chunk().unwrap() {
                events.push(e);
            }
        }
        assert!(!p.has_leftover());
        assert_eq!(events.len(), 4);
        assert_eq!(events[0], Chunk::Text("hello\n".into()));
        assert_eq!(events[1], Chunk::Image("iVBO".into()));
        assert_eq!(events[2], Chunk::Error("Traceback: boom".into()));
        assert_eq!(events[3], Chunk::Text("ü".into()));
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        let mut p = TaggedParser::default();
        p.push(b"{\"not\": \"tagged\"}");
        assert_eq!(p.next_chunk().unwrap_err().kind(), ErrorKind::Protocol);
        let mut p = TaggedParser::default();
        p.push(b"<tx");
        assert!(p.next_chunk().unwrap().is_none());
        assert!(p.has_leftover());
    }
}

//! Jupyter messages on the wire: building, signing (HMAC-SHA256) and parsing them.

use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use codebox_core::{CodeBoxError, Result};

use crate::util::{hex_decode, hex_encode, random_hex};

const DELIMITER: &[u8] = b"<IDS|MSG>";
const PROTOCOL_VERSION: &str = "5.3";

/// Signs and checks messages with the connection's key.
#[derive(Clone)]
pub(crate) struct Signer {
    mac: Hmac<Sha256>,
    session: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("key", &"<redacted>").field("session", &self.session).finish()
    }
}

/// A message received from the kernel, with its signature checked.
#[derive(Debug)]
pub(crate) struct Incoming {
    pub(crate) msg_type: String,
    pub(crate) parent_id: Option<String>,
    pub(crate) content: Value,
}

impl Signer {
    /// A signer for `key` (the hex text written into the connection file, used as bytes).
    pub(crate) fn new(key: &str, session: String) -> Self {
        let mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC accepts keys of any length");
        Self { mac, session }
    }

    fn sign(&self, parts: &[&[u8]]) -> String {
        let mut mac = self.mac.clone();
        for p in parts {
            mac.update(p);
        }
        hex_encode(&mac.finalize().into_bytes())
    }

    /// Build a request; returns its msg_id and the frames to send.
    pub(crate) fn request(&self, msg_type: &str, content: Value) -> (String, Vec<Bytes>) {
        let msg_id = random_hex(16);
        let header = json!({
            "msg_id": msg_id,
            "session": self.session,
            "username": "codebox",
            "date": now_iso8601(),
            "msg_type": msg_type,
            "version": PROTOCOL_VERSION,
        });
        let header = serde_json::to_vec(&header).expect("a JSON object serializes");
        let content = serde_json::to_vec(&content).expect("a JSON value serializes");
        let parent: &[u8] = b"{}";
        let metadata: &[u8] = b"{}";
        let sig = self.sign(&[&header, parent, metadata, &content]);
        let frames = vec![
            Bytes::from_static(DELIMITER),
            Bytes::from(sig.into_bytes()),
            Bytes::from(header),
            Bytes::from_static(parent),
            Bytes::from_static(metadata),
            Bytes::from(content),
        ];
        (msg_id, frames)
    }

    /// Check and decode a multipart message. Unsigned or badly signed messages are refused.
    pub(crate) fn parse(&self, frames: &[Bytes]) -> Result<Incoming> {
        let pos = frames
            .iter()
            .position(|f| f.as_ref() == DELIMITER)
            .ok_or_else(|| CodeBoxError::protocol("a kernel message without the <IDS|MSG> delimiter"))?;
        let rest = &frames[pos + 1..];
        if rest.len() < 5 {
            return Err(CodeBoxError::protocol("a kernel message with fewer than five frames"));
        }
        let mut mac = self.mac.clone();
        for part in &rest[1..5] {
            mac.update(part);
        }
        let expected =
            hex_decode(&rest[0]).ok_or_else(|| CodeBoxError::protocol("a kernel message with a bad signature"))?;
        mac.verify_slice(&expected).map_err(|_| CodeBoxError::protocol("a kernel message with a bad signature"))?;
        #[derive(serde::Deserialize)]
        struct Header {
            #[serde(default)]
            msg_type: String,
        }
        #[derive(serde::Deserialize)]
        struct Parent {
            #[serde(default)]
            msg_id: Option<String>,
        }
        let header: Header = serde_json::from_slice(&rest[1])
            .map_err(|e| CodeBoxError::protocol(format!("a kernel message with a bad header: {e}")))?;
        let parent: Parent = serde_json::from_slice(&rest[2]).unwrap_or(Parent { msg_id: None });
        let content: Value = serde_json::from_slice(&rest[4])
            .map_err(|e| CodeBoxError::protocol(format!("a kernel message with bad content: {e}")))?;
        Ok(Incoming { msg_type: header.msg_type, parent_id: parent.msg_id, content })
    }
}

/// The current UTC time in ISO 8601, as Jupyter headers carry it.
fn now_iso8601() -> String {
    iso8601(std::time::SystemTime::now())
}

/// `t` as `YYYY-MM-DDTHH:MM:SS.ffffffZ`. A clock before 1970 reads as 1970, which humantime
/// can format (it refuses earlier times).
fn iso8601(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_micros(t.max(std::time::UNIX_EPOCH)).to_string()
}

/// Remove terminal colour and cursor escape sequences from kernel text.
pub(crate) fn strip_ansi(text: &str) -> String {
    if !text.contains('\u{1b}') {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'[') {
            chars.next();
            // CSI: parameters, then one final byte in 0x40..=0x7e.
            for c in chars.by_ref() {
                if ('\u{40}'..='\u{7e}').contains(&c) {
                    break;
                }
            }
        } else {
            chars.next();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_requests_parse_back_and_forgeries_are_refused() {
        let signer = Signer::new("secret-key", "s1".into());
        let (id, mut frames) = signer.request("execute_request", json!({"code": "1+1"}));
        let msg = signer.parse(&frames).unwrap();
        assert_eq!(msg.msg_type, "execute_request");
        assert_eq!(msg.content["code"], "1+1");
        assert_eq!(msg.parent_id, None);
        assert_eq!(id.len(), 32);
        frames[5] = Bytes::from_static(br#"{"code":"evil"}"#);
        assert_eq!(signer.parse(&frames).unwrap_err().kind(), codebox_core::ErrorKind::Protocol);
        let other = Signer::new("other-key", "s1".into());
        let (_, frames) = other.request("x", json!({}));
        assert!(signer.parse(&frames).is_err());
    }

    #[test]
    fn dates_are_iso8601() {
        use std::time::{Duration, UNIX_EPOCH};
        assert_eq!(iso8601(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        assert_eq!(iso8601(UNIX_EPOCH - Duration::from_secs(1)), "1970-01-01T00:00:00.000000Z");
        let day_20_000 = UNIX_EPOCH + Duration::from_secs(20_000 * 86_400 + 3_723) + Duration::from_micros(42);
        assert_eq!(iso8601(day_20_000), "2024-10-04T01:02:03.000042Z");
        assert!(now_iso8601().ends_with('Z'));
    }

    #[test]
    fn ansi_sequences_are_removed() {
        assert_eq!(strip_ansi("\u{1b}[0;31mValueError\u{1b}[0m: x"), "ValueError: x");
        assert_eq!(strip_ansi("plain"), "plain");
    }

    #[test]
    fn the_key_is_not_in_debug() {
        let signer = Signer::new("top-secret", "s".into());
        assert!(!format!("{signer:?}").contains("top-secret"));
    }
}

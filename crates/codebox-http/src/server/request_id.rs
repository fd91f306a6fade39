//! Request ids: taken from the client's `x-request-id` when it is sane, made up otherwise.

use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderMap;

/// The header that carries a request id, both ways.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The id of one request, for logs and for the `x-request-id` response header.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RequestId(String);

impl RequestId {
    /// The client's id when it sent a short one of letters, digits and `-_.:`; a new one
    /// otherwise.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        headers
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| {
                !v.is_empty()
                    && v.len() <= 64
                    && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
            })
            .map(|v| Self(v.to_owned()))
            .unwrap_or_else(Self::generate)
    }

    /// A new id, unique within this process: a per-process prefix and a counter.
    pub fn generate() -> Self {
        static PREFIX: OnceLock<String> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(1);
        let prefix = PREFIX.get_or_init(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or_default();
            format!("{:08x}", (nanos ^ u64::from(std::process::id()).rotate_left(32)) as u32)
        });
        Self(format!("{prefix}-{:06x}", COUNTER.fetch_add(1, Ordering::Relaxed)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_kept_only_when_sane() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID_HEADER, "abc-123".parse().unwrap());
        assert_eq!(RequestId::from_headers(&h).as_str(), "abc-123");
        h.insert(REQUEST_ID_HEADER, "a b\"c".parse().unwrap());
        assert_ne!(RequestId::from_headers(&h).as_str(), "a b\"c");
        assert_ne!(RequestId::generate(), RequestId::generate());
    }
}

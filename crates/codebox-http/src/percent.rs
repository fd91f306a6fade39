//! Percent-encoding of URL components: the one rule the client encodes with and the server
//! decodes with, on top of the `percent-encoding` crate.
//!
//! Encoding keeps only RFC 3986's unreserved characters, so a `/` inside a path segment goes
//! out as `%2F`. Decoding is strict where the crate is lenient: a `%` not followed by two hex
//! digits, or bytes that are not UTF-8, are refused rather than passed through, so a
//! malformed name never reaches a box under a different spelling.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// Every byte but the unreserved characters of RFC 3986 (`A-Z a-z 0-9 - . _ ~`).
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Why a URL component could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A `%` not followed by two hex digits.
    #[error("malformed percent-encoding")]
    Malformed,
    /// The decoded bytes are not UTF-8.
    #[error("does not decode to UTF-8")]
    NotUtf8,
}

/// `s` with everything but the unreserved characters of RFC 3986 percent-encoded.
pub fn encode_component(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

/// Decode the `%XX` escapes of one URL component. A decoded `/` is kept as a character of the
/// result; callers that split paths split before decoding.
pub fn decode_component(s: &str) -> Result<String, DecodeError> {
    let bytes = s.as_bytes();
    let malformed = bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'%' && !bytes.get(i + 1..i + 3).is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)));
    if malformed {
        return Err(DecodeError::Malformed);
    }
    percent_decode_str(s).decode_utf8().map(|decoded| decoded.into_owned()).map_err(|_| DecodeError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_round_trip() {
        for s in ["plain", "a b/c", "na\u{ef}ve", "100%", "~._-", "?#&=+", ""] {
            assert_eq!(decode_component(&encode_component(s)).as_deref(), Ok(s), "{s:?}");
        }
        assert_eq!(encode_component("a dir/\u{fc}?.txt"), "a%20dir%2F%C3%BC%3F.txt");
    }

    #[test]
    fn bad_escapes_and_non_utf8_are_refused() {
        assert_eq!(decode_component("a%20b%2Fc").as_deref(), Ok("a b/c"));
        assert_eq!(decode_component("na%C3%AFve").as_deref(), Ok("na\u{ef}ve"));
        for bad in ["bad%2", "bad%zz", "%", "%%41", "%+1"] {
            assert_eq!(decode_component(bad), Err(DecodeError::Malformed), "{bad:?}");
        }
        for bad in ["%FF", "%c3%28"] {
            assert_eq!(decode_component(bad), Err(DecodeError::NotUtf8), "{bad:?}");
        }
    }
}

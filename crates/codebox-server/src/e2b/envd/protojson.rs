//! ProtoJSON as the SDK writes it and reads it: integers as numbers or strings (int64 is a
//! string on the wire), `bytes` as standard base64, timestamps as RFC 3339, enums by name
//! (numbers accepted too). Field names are lowerCamelCase; the request types also accept
//! the proto names through serde aliases.

use std::time::SystemTime;

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Deserializer};

/// An unsigned 32-bit field: a number or a decimal string.
pub(super) fn u32_field<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Wire {
        Number(u32),
        Text(String),
    }
    match Wire::deserialize(d)? {
        Wire::Number(n) => Ok(n),
        Wire::Text(t) => t.trim().parse().map_err(|_| serde::de::Error::custom(format!("{t:?} is not a uint32"))),
    }
}

/// An optional unsigned 32-bit field.
pub(super) fn opt_u32_field<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    u32_field(d).map(Some)
}

/// A `bytes` field: standard base64 (the URL-safe alphabet is accepted too, as ProtoJSON
/// parsers do).
pub(super) fn bytes_field<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
    let text = String::deserialize(d)?;
    let engine = base64::engine::general_purpose::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let url_safe = base64::engine::general_purpose::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine
        .decode(&text)
        .or_else(|_| url_safe.decode(&text))
        .map(Bytes::from)
        .map_err(|e| serde::de::Error::custom(format!("a bytes field is not base64: {e}")))
}

/// Bytes as ProtoJSON writes them: standard base64.
pub(super) fn base64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// A time as a ProtoJSON `Timestamp`: RFC 3339 in UTC.
pub(super) fn timestamp(time: SystemTime) -> String {
    humantime::format_rfc3339_nanos(time).to_string()
}

/// An enum field: its name, or its number.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub(super) enum EnumValue {
    /// The value's name, e.g. `SIGNAL_SIGKILL`.
    Name(String),
    /// The value's number.
    Number(i64),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Probe {
        #[serde(deserialize_with = "u32_field")]
        n: u32,
        #[serde(deserialize_with = "bytes_field")]
        b: Bytes,
    }

    #[test]
    fn numbers_come_as_numbers_or_strings_and_bytes_as_base64() {
        let p: Probe = serde_json::from_str(r#"{"n":"7","b":"aGk="}"#).unwrap();
        assert_eq!((p.n, &p.b[..]), (7, &b"hi"[..]));
        let p: Probe = serde_json::from_str(r#"{"n":7,"b":"aGk"}"#).unwrap();
        assert_eq!((p.n, &p.b[..]), (7, &b"hi"[..]));
        assert!(serde_json::from_str::<Probe>(r#"{"n":"x","b":""}"#).is_err());
        assert!(serde_json::from_str::<Probe>(r#"{"n":-1,"b":""}"#).is_err());
        assert!(serde_json::from_str::<Probe>(r#"{"n":1,"b":"!!"}"#).is_err());
        assert_eq!(base64(b"hi"), "aGk=");
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(86_400);
        assert_eq!(timestamp(t), "1970-01-02T00:00:00.000000000Z");
    }
}

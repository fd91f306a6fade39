//! Box paths in URLs: checked on this side first, then percent-encoded segment by segment.

use codebox_core::{Result, normalize_box_path};

/// The URL form of a file path: checked with [`normalize_box_path`] and each segment
/// percent-encoded, joined by `/`.
pub(crate) fn encode_file_path(path: &str) -> Result<String> {
    let normalized = normalize_box_path(path)?;
    let text = normalized.to_string_lossy();
    Ok(text.split('/').map(encode_component).collect::<Vec<_>>().join("/"))
}

/// A file path for a JSON body (not a URL): checked with [`normalize_box_path`].
pub(crate) fn checked_path(path: &str) -> Result<String> {
    Ok(normalize_box_path(path)?.to_string_lossy().into_owned())
}

/// A directory for a listing: `""` and `"."` mean the working directory.
pub(crate) fn checked_dir(dir: &str) -> Result<String> {
    let trimmed = dir.trim();
    if trimmed.is_empty() || trimmed == "." || trimmed == "./" {
        return Ok(String::new());
    }
    Ok(normalize_box_path(trimmed)?.to_string_lossy().into_owned())
}

pub(crate) use codebox_http::percent::encode_component;

#[cfg(test)]
mod tests {
    use super::*;
    use codebox_core::ErrorKind;

    #[test]
    fn segments_are_encoded_and_slashes_kept() {
        assert_eq!(encode_file_path("a dir/ü?.txt").unwrap(), "a%20dir/%C3%BC%3F.txt");
        assert_eq!(encode_file_path("./x//y%z").unwrap(), "x/y%25z");
        assert_eq!(encode_component("a/b"), "a%2Fb");
    }

    #[test]
    fn unsafe_paths_fail_before_any_request() {
        for bad in ["../x", "/etc/passwd", "", "a/../../b"] {
            assert_eq!(encode_file_path(bad).unwrap_err().kind(), ErrorKind::UnsafePath, "{bad:?}");
        }
        assert_eq!(checked_dir(".").unwrap(), "");
        assert_eq!(checked_dir("").unwrap(), "");
        assert_eq!(checked_dir("..").unwrap_err().kind(), ErrorKind::UnsafePath);
    }
}

//! File metadata and the one rule for paths inside a box.

use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{CodeBoxError, Result};

/// A file or directory inside a box.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// The path relative to the box's working directory, with `/` separators.
    pub path: String,
    /// The last path component.
    pub name: String,
    /// Size in bytes (0 for directories).
    pub size: u64,
    /// Whether this is a directory.
    pub is_dir: bool,
    /// Last modification time, when known. On the wire: seconds since the Unix epoch.
    #[serde(default, with = "unix_seconds")]
    pub modified: Option<SystemTime>,
    /// What the entry is, when the backend says (a link is reported as a link, never
    /// followed). Absent from older servers; [`FileInfo::kind`] then falls back on `is_dir`.
    #[serde(default, rename = "kind", skip_serializing_if = "Option::is_none")]
    pub file_kind: Option<FileKind>,
    /// The permission bits (`0o644`, say), when the backend says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

/// What a [`FileInfo`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (its target is never followed).
    Symlink,
    /// Anything else: a FIFO, a socket, a device.
    Other,
}

impl FileInfo {
    /// What the entry is: the backend's word when it gave one, else a file or a directory
    /// by `is_dir`.
    pub fn kind(&self) -> FileKind {
        self.file_kind.unwrap_or(if self.is_dir { FileKind::Dir } else { FileKind::File })
    }
}

/// The longest name one path component may have, in bytes (Linux's NAME_MAX).
const NAME_MAX: usize = 255;

/// Check a path given by a caller and return it as a relative path beneath the box's
/// working directory.
///
/// Absolute paths, `..` components, NUL bytes, components over 255 bytes and empty paths
/// are refused. `.` components
/// and repeated separators are dropped. This is a purely lexical check; backends must still
/// refuse symlinks that lead outside when they open the file.
pub fn normalize_box_path(path: &str) -> Result<PathBuf> {
    let refuse = |reason: &str| CodeBoxError::UnsafePath { path: path.to_owned(), reason: reason.to_owned() };
    if path.contains('\0') {
        return Err(refuse("contains a NUL byte"));
    }
    if path.starts_with('/') || path.starts_with('\\') || Path::new(path).is_absolute() {
        return Err(refuse("absolute paths are not allowed; use a path relative to the box's working directory"));
    }
    let mut out = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            // Linux names are at most 255 bytes (NAME_MAX); a longer one can name nothing,
            // and refusing it here answers the caller instead of failing in the filesystem.
            Component::Normal(part) if part.len() > NAME_MAX => {
                return Err(refuse("a path component is longer than 255 bytes"));
            }
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(refuse("`..` is not allowed")),
            Component::RootDir | Component::Prefix(_) => return Err(refuse("absolute paths are not allowed")),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(refuse("the path names no file"));
    }
    // The same rule once `.` steps are gone: `./\x` is as absolute-looking as `\x`.
    if out.as_os_str().as_encoded_bytes().starts_with(b"\\") {
        return Err(refuse("absolute paths are not allowed; use a path relative to the box's working directory"));
    }
    Ok(out)
}

pub(crate) mod unix_seconds {
    //! An optional time as fractional Unix seconds (`null` when unknown).
    use super::*;

    pub(crate) fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t.and_then(|t| t.duration_since(UNIX_EPOCH).ok()) {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        let secs = Option::<f64>::deserialize(d)?;
        Ok(secs.and_then(|s| Duration::try_from_secs_f64(s).ok()).and_then(|d| UNIX_EPOCH.checked_add(d)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_normalized() {
        assert_eq!(normalize_box_path("a/./b//c.txt").unwrap(), PathBuf::from("a/b/c.txt"));
        assert_eq!(normalize_box_path("data.csv").unwrap(), PathBuf::from("data.csv"));
        let longest = "a".repeat(255);
        assert_eq!(normalize_box_path(&longest).unwrap(), PathBuf::from(&longest));
    }

    #[test]
    fn unsafe_paths_are_refused() {
        let long = format!("d/{}", "a".repeat(256));
        for bad in ["../x", "a/../../x", "/etc/passwd", "", ".", "a\0b", "a/..", &long] {
            let err = normalize_box_path(bad).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::UnsafePath, "{bad:?}");
        }
    }

    #[test]
    fn modified_round_trips_as_unix_seconds() {
        let info = FileInfo {
            path: "a/b.txt".into(),
            name: "b.txt".into(),
            size: 3,
            is_dir: false,
            modified: Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            file_kind: Some(FileKind::File),
            mode: Some(0o644),
        };
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["modified"], 1_700_000_000.0);
        assert_eq!(json["kind"], "file");
        assert_eq!(json["mode"], 0o644);
        assert_eq!(serde_json::from_value::<FileInfo>(json).unwrap(), info);
    }

    #[test]
    fn an_older_servers_info_without_kind_or_mode_still_reads() {
        let json = serde_json::json!({"path": "d", "name": "d", "size": 0, "is_dir": true});
        let info: FileInfo = serde_json::from_value(json).unwrap();
        assert_eq!((info.kind(), info.mode, info.file_kind), (FileKind::Dir, None, None));
    }
}

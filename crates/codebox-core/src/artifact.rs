//! The files an execution left in the box's working directory.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// How an execution touched a file it lists as an artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ArtifactChange {
    /// The file did not exist before the execution started.
    Created,
    /// The file existed and the execution changed it (its content or its metadata).
    Changed,
}

/// A file of the working directory that one execution created or changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Artifact {
    /// The path relative to the box's working directory, with `/` separators.
    pub path: String,
    /// Its size in bytes when the execution ended.
    pub size: u64,
    /// Its last modification time, when known. On the wire: seconds since the Unix epoch.
    #[serde(default, with = "crate::files::unix_seconds")]
    pub modified: Option<SystemTime>,
    /// Whether the execution created it or changed it.
    pub change: ArtifactChange,
}

impl Artifact {
    /// An artifact at `path` (relative to the working directory).
    pub fn new(path: impl Into<String>, size: u64, modified: Option<SystemTime>, change: ArtifactChange) -> Self {
        Self { path: path.into(), size, modified, change }
    }

    /// Whether the execution created this file.
    pub fn is_created(&self) -> bool {
        self.change == ArtifactChange::Created
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn artifacts_have_a_plain_wire_form() {
        let a = Artifact::new("out/a.csv", 3, Some(UNIX_EPOCH + Duration::from_millis(1500)), ArtifactChange::Created);
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json, serde_json::json!({"path": "out/a.csv", "size": 3, "modified": 1.5, "change": "created"}));
        assert_eq!(serde_json::from_value::<Artifact>(json).unwrap(), a);
        let bare: Artifact =
            serde_json::from_value(serde_json::json!({"path": "b", "size": 0, "change": "changed"})).unwrap();
        assert_eq!((bare.modified, bare.is_created()), (None, false));
    }
}

//! A box's working directory on this machine: a temporary one it owns (0700, named so that a
//! later process can tell when its owner is gone), or one it was given.

use std::path::{Path, PathBuf};

use codebox_core::{CodeBoxError, Result};

use crate::rmtree::OwnedDir;

/// The working directory of a box.
pub(crate) enum WorkDir {
    /// Made for the box, removed when it stops (unless kept).
    Temp(OwnedDir),
    /// Named by the builder; never removed.
    Given(PathBuf),
}

impl WorkDir {
    pub(crate) fn path(&self) -> &Path {
        match self {
            Self::Temp(t) => t.path(),
            Self::Given(p) => p,
        }
    }
}

/// A fresh temporary working directory, readable by this process's user alone.
pub(crate) fn new_temp_workdir() -> Result<OwnedDir> {
    // 0700: the box's files are its owner's alone.
    tempfile::Builder::new()
        .prefix(&crate::kernel::workdir_prefix())
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir()
        .map(OwnedDir::adopt)
        .map_err(|e| CodeBoxError::io("creating a working directory", e))
}

//! What a box's language environment has installed.

use serde::{Deserialize, Serialize};

/// One package (a Python distribution) the box's environment has, as its code would import it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PackageInfo {
    /// The distribution's name, as its metadata spells it.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Whether the box installed it itself ([`CodeBox::install`](crate::CodeBox::install)),
    /// rather than finding it in the environment it was given.
    pub installed_by_box: bool,
}

impl PackageInfo {
    /// A package of that name and version.
    pub fn new(name: impl Into<String>, version: impl Into<String>, installed_by_box: bool) -> Self {
        Self { name: name.into(), version: version.into(), installed_by_box }
    }
}

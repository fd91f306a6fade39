//! Code contexts: several independent kernel states in one box. Each context is its own
//! kernel, with the box's working directory, confinement and limits; the box's own kernel is
//! the default context.

use serde::{Deserialize, Serialize};

use crate::error::CodeBoxError;

/// The id of the box's own kernel as a context. It cannot be deleted.
pub const DEFAULT_CONTEXT: &str = "default";

/// How many contexts a box may have besides its default one, unless configured otherwise.
pub const DEFAULT_MAX_CONTEXTS: usize = 8;

/// One code context of a box, as [`CodeBox::contexts`](crate::CodeBox::contexts) lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ContextInfo {
    /// The context's id: [`DEFAULT_CONTEXT`] for the box's own kernel.
    pub id: String,
    /// The language its kernel runs (`python`, `javascript`, ...).
    pub language: String,
    /// Its starting directory, relative to the box's working directory; `None` for the
    /// working directory itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Whether it is the box's own kernel.
    #[serde(default)]
    pub default: bool,
}

impl ContextInfo {
    /// A context `id` running `language`, starting in the box's working directory.
    pub fn new(id: impl Into<String>, language: impl Into<String>) -> Self {
        Self { id: id.into(), language: language.into(), cwd: None, default: false }
    }

    /// The box's own kernel, running `language`.
    pub fn default_context(language: impl Into<String>) -> Self {
        Self { default: true, ..Self::new(DEFAULT_CONTEXT, language) }
    }

    /// Set the starting directory.
    pub fn with_cwd(mut self, cwd: Option<String>) -> Self {
        self.cwd = cwd;
        self
    }
}

/// The error for a context id a box does not have (never made, deleted, or another box's).
pub fn unknown_context(id: &str) -> CodeBoxError {
    CodeBoxError::not_found(format!("code context {id:?} (not a context of this box)"))
}

/// The error for deleting the default context.
pub fn default_context_kept() -> CodeBoxError {
    CodeBoxError::invalid(format!(
        "the context {DEFAULT_CONTEXT:?} is the box's own kernel and cannot be deleted: restart it, or stop the box"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_info_wire_form() {
        let info = ContextInfo::new("ctx-1", "python").with_cwd(Some("work".into()));
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json, serde_json::json!({"id": "ctx-1", "language": "python", "cwd": "work", "default": false}));
        assert_eq!(serde_json::from_value::<ContextInfo>(json).unwrap(), info);
        let default = ContextInfo::default_context("python");
        assert!(default.default && default.id == DEFAULT_CONTEXT && default.cwd.is_none());
        assert_eq!(unknown_context("nope").kind(), crate::ErrorKind::NotFound);
        assert!(unknown_context("nope").to_string().contains("\"nope\""));
        assert_eq!(default_context_kept().kind(), crate::ErrorKind::InvalidInput);
    }
}

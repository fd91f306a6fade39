//! Pause and resume: what a box reports when its state is written to disk ([`PauseReport`])
//! and when it comes back from there ([`ResumeReport`]), and how much of a kernel's state
//! each way of saving keeps ([`SnapshotRung`]).

use serde::{Deserialize, Serialize};

/// How a kernel's state is kept across a pause, from the most kept to the least: a ladder,
/// reported per context like the isolation ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SnapshotRung {
    /// A checkpoint of the kernel's process (CRIU): everything, open files included.
    Criu,
    /// A snapshot of the kernel's namespace taken inside it (`dill`, else `pickle`): the
    /// variables that pickle come back, imports are re-run, the rest is named in
    /// [`PauseReport::unrestored`].
    Namespace,
    /// The box's files only: no variable comes back.
    Files,
}

impl SnapshotRung {
    /// Its name on the wire: `criu`, `namespace` or `files`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Criu => "criu",
            Self::Namespace => "namespace",
            Self::Files => "files",
        }
    }
}

impl std::fmt::Display for SnapshotRung {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A variable of a kernel that a pause could not keep, or a resume could not bring back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Unrestored {
    /// The code context whose variable it is (`default`: the box's own kernel).
    pub context: String,
    /// The variable's name.
    pub name: String,
    /// Its type, as the kernel names it (`TextIOWrapper`, `socket`).
    #[serde(rename = "type")]
    pub type_name: String,
    /// Why it is not kept: `an open file`, `a socket`, `a thread`, `a generator`, or the
    /// pickler's own complaint.
    pub reason: String,
}

impl Unrestored {
    /// Variable `name` of `context`, of type `type_name`, not kept because of `reason`.
    pub fn new(
        context: impl Into<String>,
        name: impl Into<String>,
        type_name: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self { context: context.into(), name: name.into(), type_name: type_name.into(), reason: reason.into() }
    }
}

impl std::fmt::Display for Unrestored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}, {}", self.name, self.type_name, self.reason)?;
        if self.context != crate::DEFAULT_CONTEXT {
            write!(f, ", in context {}", self.context)?;
        }
        f.write_str(")")
    }
}

/// What was kept of one code context's kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ContextSnapshot {
    /// The context (`default`: the box's own kernel).
    pub context: String,
    /// Its language.
    pub language: String,
    /// How its state was kept.
    pub rung: SnapshotRung,
    /// The variables kept (or brought back), by name.
    #[serde(default)]
    pub variables: Vec<String>,
    /// The modules imported again, as `name=module`.
    #[serde(default)]
    pub imports: Vec<String>,
    /// Why the rung is what it is, when it is not the best one, in plain words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl ContextSnapshot {
    /// Context `context` of `language`, kept as `rung`, with nothing listed yet.
    pub fn new(context: impl Into<String>, language: impl Into<String>, rung: SnapshotRung) -> Self {
        Self {
            context: context.into(),
            language: language.into(),
            rung,
            variables: Vec::new(),
            imports: Vec::new(),
            note: None,
        }
    }
}

/// What [`CodeBox::pause`](crate::CodeBox::pause) (or a local box's `save`) wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PauseReport {
    /// The box (or session) paused.
    pub box_id: String,
    /// The weakest rung over its contexts: what a caller may count on for all of them.
    pub rung: SnapshotRung,
    /// Each context's rung and what it kept.
    pub contexts: Vec<ContextSnapshot>,
    /// What could not be kept, by name: never dropped silently.
    #[serde(default)]
    pub unrestored: Vec<Unrestored>,
    /// How many files of the working directory the snapshot holds.
    pub files: u64,
    /// The snapshot's size on disk, in bytes.
    pub bytes_on_disk: u64,
    /// How long the pause took, in milliseconds.
    pub duration_ms: u64,
    /// Whether an execution was still running past the bound and was interrupted first.
    #[serde(default)]
    pub interrupted: bool,
}

impl PauseReport {
    /// A report of `box_id`, kept as `rung`, with nothing else filled in.
    pub fn new(box_id: impl Into<String>, rung: SnapshotRung) -> Self {
        Self {
            box_id: box_id.into(),
            rung,
            contexts: Vec::new(),
            unrestored: Vec::new(),
            files: 0,
            bytes_on_disk: 0,
            duration_ms: 0,
            interrupted: false,
        }
    }
}

/// What a resume brought back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ResumeReport {
    /// The box (or session) resumed.
    pub box_id: String,
    /// The weakest rung over its contexts.
    pub rung: SnapshotRung,
    /// Each context's rung and what came back.
    pub contexts: Vec<ContextSnapshot>,
    /// What did not come back, by name: what the pause could not keep and what failed to
    /// load. The first execution after the resume carries it too.
    #[serde(default)]
    pub unrestored: Vec<Unrestored>,
    /// How many files came back.
    pub files: u64,
    /// How long the resume took, in milliseconds (a kernel start included).
    pub duration_ms: u64,
}

impl ResumeReport {
    /// A report of `box_id`, kept as `rung`, with nothing else filled in.
    pub fn new(box_id: impl Into<String>, rung: SnapshotRung) -> Self {
        Self { box_id: box_id.into(), rung, contexts: Vec::new(), unrestored: Vec::new(), files: 0, duration_ms: 0 }
    }

    /// The words the first execution after a resume says about what did not come back;
    /// `None` when everything did.
    pub fn notice(&self) -> Option<String> {
        if self.unrestored.is_empty() {
            return None;
        }
        let names: Vec<String> = self.unrestored.iter().map(ToString::to_string).collect();
        Some(format!("codebox: resumed without: {}", names.join("; ")))
    }
}

/// The MIME type of the display a box's first execution after a resume carries, whose value
/// is the [`ResumeReport`]'s `unrestored` list.
pub const RESUME_NOTICE_MIME: &str = "application/vnd.codebox.resume+json";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rungs_order_from_most_kept() {
        assert!(SnapshotRung::Criu < SnapshotRung::Namespace && SnapshotRung::Namespace < SnapshotRung::Files);
        assert_eq!(serde_json::to_string(&SnapshotRung::Namespace).unwrap(), "\"namespace\"");
    }

    #[test]
    fn a_notice_names_every_variable_left_behind() {
        let mut r = ResumeReport::new("b", SnapshotRung::Namespace);
        assert_eq!(r.notice(), None);
        r.unrestored.push(Unrestored::new("default", "f", "TextIOWrapper", "an open file"));
        r.unrestored.push(Unrestored::new("c1", "s", "socket", "a socket"));
        let notice = r.notice().unwrap();
        assert!(notice.contains("f (TextIOWrapper, an open file)"), "{notice}");
        assert!(notice.contains("s (socket, a socket, in context c1)"), "{notice}");
        let json = serde_json::to_value(&r.unrestored[0]).unwrap();
        assert_eq!(json["type"], "TextIOWrapper");
    }
}

//! Paused sessions, kept on disk so that they outlive the server.
//!
//! With a state directory, every session's box keeps its snapshots in
//! `paused/<owner>-<id>/box/` (the owner is the record's fingerprint of its key, see
//! [`record`](crate::record)). A pause writes the box's snapshot there (atomically: the box's
//! own doing), then `session.json` beside it (temporary, fsync, rename): a session is paused
//! once, and only once, that file exists. So a server killed in the middle of a pause leaves
//! either the session's previous paused state or none (the session is then lost with the
//! restart, 410 `session_lost`), never half. The next server on the directory lists every
//! paused session and resumes one on its first request. A directory without `session.json`
//! at startup is what a running session or an unfinished pause left: it is removed.
//!
//! In the registry a paused session is a session whose box is a [`PausedBox`]: it holds
//! nothing but the session's place, answers `status` as stopped, lists and serves the files
//! of its snapshot (so that they stay downloadable when the snapshot cannot be resumed), and
//! refuses the rest.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use codebox_core::{
    BoxRequest, BoxState, BoxStatus, ByteStream, Capabilities, CodeBox, CodeBoxError, CommandOutput, CommandSpec,
    EventStream, FileInfo, PauseReport, Result, RunOptions,
};
use serde::{Deserialize, Serialize};

/// The directory of paused sessions, in the state directory.
const PAUSED_DIR: &str = "paused";
/// What makes a session's directory a paused session.
const SESSION_FILE: &str = "session.json";
/// The box's own state directory, inside a session's.
const BOX_DIR: &str = "box";

/// A paused session as its `session.json` holds it: enough to make its box again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PausedRecord {
    pub(crate) id: String,
    /// What the box was made from (its state directory is not written: it is where this is).
    pub(crate) request: BoxRequest,
    #[serde(default)]
    pub(crate) metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) timeout_secs: Option<u64>,
    pub(crate) idle_timeout_secs: u64,
    /// The session's own choice of pausing when it idles out.
    #[serde(default)]
    pub(crate) auto_pause: Option<bool>,
    /// When the session was made and paused, in Unix seconds.
    pub(crate) created_at: f64,
    pub(crate) paused_at: f64,
    /// What the pause kept, and what it could not.
    pub(crate) report: PauseReport,
}

/// Where paused sessions live (nowhere without a state directory: nothing is paused then).
#[derive(Debug, Default)]
pub(crate) struct PausedStore {
    root: Option<PathBuf>,
}

fn io_error(what: String) -> impl FnOnce(std::io::Error) -> CodeBoxError {
    move |e| CodeBoxError::io(what, e)
}

impl PausedStore {
    /// The store under `state_dir`, when there is one.
    pub(crate) fn new(state_dir: Option<&Path>) -> Self {
        Self { root: state_dir.map(|d| d.join(PAUSED_DIR)) }
    }

    /// Whether sessions can be paused at all.
    pub(crate) fn enabled(&self) -> bool {
        self.root.is_some()
    }

    fn session_dir(&self, owner: &str, id: &str) -> Option<PathBuf> {
        self.root.as_ref().map(|r| r.join(format!("{owner}-{id}")))
    }

    /// The state directory of the box of the owner's session `id`.
    pub(crate) fn box_dir(&self, owner: &str, id: &str) -> Option<PathBuf> {
        self.session_dir(owner, id).map(|d| d.join(BOX_DIR))
    }

    /// Mark the owner's session paused as `record` says (its box's snapshot is written).
    pub(crate) fn write(&self, owner: &str, record: &PausedRecord) -> Result<()> {
        let dir = self.session_dir(owner, &record.id).ok_or_else(|| CodeBoxError::unsupported("pause"))?;
        let bytes = serde_json::to_vec_pretty(record)
            .map_err(|e| CodeBoxError::io("writing a paused session", std::io::Error::other(e)))?;
        let tmp = dir.join(format!(".{SESSION_FILE}.tmp"));
        let mut file = std::fs::File::create(&tmp).map_err(io_error(format!("creating {}", tmp.display())))?;
        file.write_all(&bytes).map_err(io_error(format!("writing {}", tmp.display())))?;
        file.sync_all().map_err(io_error(format!("syncing {}", tmp.display())))?;
        std::fs::rename(&tmp, dir.join(SESSION_FILE)).map_err(io_error("marking a session paused".to_owned()))?;
        std::fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(io_error(format!("syncing {}", dir.display())))
    }

    /// The owner's session `id` runs again: it is no longer paused (its box keeps its
    /// snapshots where they are, for its next pause).
    pub(crate) fn resumed(&self, owner: &str, id: &str) {
        if let Some(dir) = self.session_dir(owner, id) {
            let _ = std::fs::remove_file(dir.join(SESSION_FILE));
        }
    }

    /// The owner's session `id` is gone: remove everything it kept.
    pub(crate) fn remove(&self, owner: &str, id: &str) {
        if let Some(dir) = self.session_dir(owner, id)
            && dir.exists()
            && let Err(e) = std::fs::remove_dir_all(&dir)
        {
            tracing::warn!(session = %id, error = %e, "removing a session's saved state failed");
        }
    }

    /// Every paused session on disk, with its owner's name and its size on disk. What is
    /// not a paused session (no `session.json`: a session that ran when its server went,
    /// or a pause cut short) is removed.
    pub(crate) fn load(&self) -> Vec<(String, PausedRecord, u64)> {
        let Some(root) = &self.root else { return Vec::new() };
        let Ok(children) = std::fs::read_dir(root) else { return Vec::new() };
        let mut out = Vec::new();
        for child in children.filter_map(std::result::Result::ok) {
            let path = child.path();
            let Some(name) = child.file_name().to_str().map(str::to_owned) else { continue };
            let Some((owner, id)) = name.split_once('-') else { continue };
            let record = std::fs::read(path.join(SESSION_FILE))
                .ok()
                .and_then(|b| serde_json::from_slice::<PausedRecord>(&b).ok())
                .filter(|r| r.id == id);
            match record {
                Some(record) => out.push((owner.to_owned(), record, size_on_disk(&path))),
                None => {
                    tracing::info!(dir = %path.display(), "removing the state of a session that was not paused");
                    let _ = std::fs::remove_dir_all(&path);
                }
            }
        }
        out
    }

    /// The owner's paused session `id`, as its `session.json` says.
    pub(crate) fn load_one(&self, owner: &str, id: &str) -> Option<PausedRecord> {
        let dir = self.session_dir(owner, id)?;
        let bytes = std::fs::read(dir.join(SESSION_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The size on disk of the owner's session `id`.
    pub(crate) fn size(&self, owner: &str, id: &str) -> u64 {
        self.session_dir(owner, id).map(|d| size_on_disk(&d)).unwrap_or_default()
    }
}

/// The bytes the files under `dir` take.
fn size_on_disk(dir: &Path) -> u64 {
    let mut total = 0;
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(children) = std::fs::read_dir(&dir) else { continue };
        for child in children.filter_map(std::result::Result::ok) {
            let Ok(meta) = child.path().symlink_metadata() else { continue };
            if meta.is_dir() {
                pending.push(child.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

/// The box of a paused session: nothing runs; `status`, `stop`, and reading the files of
/// its snapshot work, the rest is refused (the native API resumes the session before it
/// gets here, and falls back to these files when the snapshot cannot be resumed).
#[derive(Debug)]
pub(crate) struct PausedBox {
    id: String,
    /// The snapshot's copy of the working directory, when there is one.
    files: Option<PathBuf>,
}

impl PausedBox {
    /// The paused box of session `id`, whose snapshot's copy of the working directory is
    /// `files` (as its factory says).
    pub(crate) fn new(id: &str, files: Option<PathBuf>) -> Self {
        Self { id: id.to_owned(), files }
    }

    /// `path` inside the snapshot's files, checked one component at a time: no link is
    /// followed (the box made them), and nothing outside is reached. Nothing changes the
    /// snapshot meanwhile: no process of the box runs, and the directory is the server's.
    fn resolve(&self, path: &str) -> Result<PathBuf> {
        let root = self.files.as_ref().ok_or_else(|| self.refused())?;
        let relative = codebox_core::normalize_box_path(path)?;
        let mut at = root.clone();
        for part in relative.components() {
            at.push(part);
            let meta = std::fs::symlink_metadata(&at).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => CodeBoxError::not_found(format!("file {path}")),
                _ => CodeBoxError::io(format!("reading {path} of a paused session"), e),
            })?;
            if meta.file_type().is_symlink() {
                return Err(CodeBoxError::unsafe_path(path, "it goes through a symbolic link"));
            }
        }
        Ok(at)
    }

    fn refused(&self) -> CodeBoxError {
        CodeBoxError::not_running(format!(
            "session {} is paused: resume it (POST /v1/sessions/{}/resume, or any native API request)",
            self.id, self.id
        ))
    }
}

#[async_trait]
impl CodeBox for PausedBox {
    fn id(&self) -> &str {
        &self.id
    }

    fn capabilities(&self) -> Capabilities {
        let mut capabilities = Capabilities::minimal(Vec::<String>::new());
        capabilities.pause = true;
        capabilities
    }

    async fn start(&self) -> Result<()> {
        Err(self.refused())
    }

    async fn stop(&self) -> Result<()> {
        Ok(())
    }

    async fn status(&self) -> Result<BoxStatus> {
        Ok(BoxStatus::new(BoxState::Stopped).with_detail("paused"))
    }

    async fn run_stream(&self, _: &str, _: RunOptions) -> Result<EventStream> {
        Err(self.refused())
    }

    async fn upload(&self, _: &str, _: ByteStream) -> Result<FileInfo> {
        Err(self.refused())
    }

    async fn download(&self, path: &str) -> Result<ByteStream> {
        use futures::StreamExt;
        let at = self.resolve(path)?;
        if !std::fs::symlink_metadata(&at).is_ok_and(|m| m.is_file()) {
            return Err(CodeBoxError::invalid(format!("{path} is not a regular file")));
        }
        let file = std::fs::File::open(&at).map_err(|e| CodeBoxError::io(format!("opening {path}"), e))?;
        let file = std::sync::Arc::new(std::sync::Mutex::new(file));
        // Read on the blocking pool, a chunk at a time.
        let chunks = futures::stream::unfold(file, |file| async move {
            let reading = file.clone();
            let chunk = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; 256 << 10];
                let n = std::io::Read::read(&mut *reading.lock().unwrap_or_else(|e| e.into_inner()), &mut buf)?;
                buf.truncate(n);
                Ok::<_, std::io::Error>(buf)
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
            match chunk {
                Ok(buf) if buf.is_empty() => None,
                Ok(buf) => Some((Ok(bytes::Bytes::from(buf)), file)),
                Err(e) => Some((Err(CodeBoxError::io("reading a paused session's file", e)), file)),
            }
        });
        Ok(chunks.boxed())
    }

    async fn list_files(&self, dir: &str, recursive: bool) -> Result<Vec<FileInfo>> {
        if recursive {
            return Err(self.refused());
        }
        let (at, relative) = if dir.is_empty() || dir == "." || dir == "/" {
            (self.files.clone().ok_or_else(|| self.refused())?, PathBuf::new())
        } else {
            (self.resolve(dir)?, codebox_core::normalize_box_path(dir)?)
        };
        let children = std::fs::read_dir(&at).map_err(|e| CodeBoxError::io(format!("listing {dir}"), e))?;
        let mut out = Vec::new();
        for child in children.filter_map(std::result::Result::ok) {
            let Some(name) = child.file_name().to_str().map(str::to_owned) else { continue };
            // The box's own state is left out of listings, as a running box does.
            if relative.as_os_str().is_empty() && name == ".codebox" {
                continue;
            }
            let Ok(meta) = child.path().symlink_metadata() else { continue };
            let kind = meta.file_type();
            out.push(FileInfo {
                path: relative.join(&name).to_string_lossy().into_owned(),
                name,
                size: meta.len(),
                is_dir: kind.is_dir(),
                modified: meta.modified().ok(),
                file_kind: Some(if kind.is_symlink() {
                    codebox_core::FileKind::Symlink
                } else if kind.is_dir() {
                    codebox_core::FileKind::Dir
                } else if kind.is_file() {
                    codebox_core::FileKind::File
                } else {
                    codebox_core::FileKind::Other
                }),
                mode: Some(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777),
            });
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    async fn delete_file(&self, _: &str) -> Result<()> {
        Err(self.refused())
    }

    async fn install(&self, _: &[String]) -> Result<String> {
        Err(self.refused())
    }

    async fn restart(&self) -> Result<()> {
        Err(self.refused())
    }

    async fn interrupt(&self) -> Result<()> {
        Err(self.refused())
    }

    async fn run_command(&self, _: CommandSpec) -> Result<CommandOutput> {
        Err(self.refused())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codebox_core::SnapshotRung;

    fn record(id: &str) -> PausedRecord {
        PausedRecord {
            id: id.to_owned(),
            request: BoxRequest::new().with_template("python"),
            metadata: BTreeMap::new(),
            timeout_secs: Some(60),
            idle_timeout_secs: 300,
            auto_pause: None,
            created_at: 1.0,
            paused_at: 2.0,
            report: PauseReport::new(id, SnapshotRung::Namespace),
        }
    }

    #[test]
    fn only_a_finished_pause_is_a_paused_session_after_a_restart() {
        let state = tempfile::tempdir().unwrap();
        let store = PausedStore::new(Some(state.path()));
        std::fs::create_dir_all(store.box_dir("anonymous", "done").unwrap()).unwrap();
        std::fs::create_dir_all(store.box_dir("anonymous", "cut").unwrap()).unwrap();
        std::fs::write(store.box_dir("anonymous", "done").unwrap().join("f"), "12345").unwrap();
        store.write("anonymous", &record("done")).unwrap();
        let loaded = store.load();
        assert_eq!(loaded.len(), 1);
        let (owner, paused, size) = &loaded[0];
        assert_eq!((owner.as_str(), paused.id.as_str()), ("anonymous", "done"));
        assert_eq!(paused.request.template.as_deref(), Some("python"));
        assert!(*size > 5);
        assert!(!store.box_dir("anonymous", "cut").unwrap().exists(), "an unfinished pause stayed");
        store.resumed("anonymous", "done");
        assert!(store.load().is_empty());
    }
}

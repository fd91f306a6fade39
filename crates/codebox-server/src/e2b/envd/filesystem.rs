//! `filesystem.Filesystem`: `ListDir`, `Stat`, `MakeDir`, `Remove`, `Move`, on the box's
//! file methods. Paths are E2B's (`/home/user/...` or relative to it); entries come back as
//! E2B's `EntryInfo`.

use std::sync::Arc;
use std::time::SystemTime;

use codebox_core::{ErrorKind, FileInfo, FileKind};
use serde::{Deserialize, Serialize};

use super::connect::{Code, ConnectError, ConnectResult};
use super::protojson;
use crate::e2b::paths;
use crate::sessions::Session;

/// The user E2B's entries name as owner and group: the sandbox user.
const SANDBOX_USER: &str = "user";

/// Answer a unary call of the service; `unimplemented` for a method it does not serve.
pub(super) async fn call(
    session: &Arc<Session>,
    method: &str,
    message: serde_json::Value,
) -> ConnectResult<serde_json::Value> {
    match method {
        "ListDir" => list_dir(session, parse(message)?).await,
        "Stat" => stat(session, parse(message)?).await,
        "MakeDir" => make_dir(session, parse(message)?).await,
        "Remove" => remove(session, parse(message)?).await,
        "Move" => rename(session, parse(message)?).await,
        other => Err(ConnectError::new(
            Code::Unimplemented,
            format!("filesystem.Filesystem/{other} is not served (ListDir, Stat, MakeDir, Remove and Move are)"),
        )),
    }
}

/// Whether `method` is a method of the service that streams its answer.
pub(super) fn is_streaming(method: &str) -> bool {
    method == "WatchDir"
}

fn parse<T: serde::de::DeserializeOwned>(message: serde_json::Value) -> ConnectResult<T> {
    serde_json::from_value(message).map_err(|e| ConnectError::invalid(format!("malformed request message: {e}")))
}

fn answer<T: Serialize>(message: &T) -> ConnectResult<serde_json::Value> {
    serde_json::to_value(message).map_err(|e| ConnectError::new(Code::Internal, format!("encoding the answer: {e}")))
}

/// A request naming one path.
#[derive(Debug, Deserialize)]
struct PathRequest {
    #[serde(default)]
    path: String,
}

#[derive(Debug, Deserialize)]
struct ListDirRequest {
    #[serde(default)]
    path: String,
    /// How deep to list; 0 (absent) means 1, as envd does.
    #[serde(default, deserialize_with = "protojson::u32_field")]
    depth: u32,
}

#[derive(Debug, Deserialize)]
struct MoveRequest {
    #[serde(default)]
    source: String,
    #[serde(default)]
    destination: String,
}

/// E2B's `EntryInfo`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct EntryInfo {
    name: String,
    /// `FILE_TYPE_FILE` or `FILE_TYPE_DIRECTORY`; absent (unspecified) for anything else,
    /// which the SDK leaves out of listings.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    file_type: Option<&'static str>,
    path: String,
    /// int64: a string in ProtoJSON.
    size: String,
    mode: u32,
    permissions: String,
    owner: &'static str,
    group: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    modified_time: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    is_symlink: bool,
}

impl EntryInfo {
    fn of(info: &FileInfo) -> Self {
        let kind = info.kind();
        let file_type = match kind {
            // A link is described, never followed (its target may be outside the box): E2B
            // has no link type, so it is a file that says it is a link.
            FileKind::File | FileKind::Symlink => Some("FILE_TYPE_FILE"),
            FileKind::Dir => Some("FILE_TYPE_DIRECTORY"),
            FileKind::Other => None,
        };
        let mode = info.mode.unwrap_or(if kind == FileKind::Dir { 0o755 } else { 0o644 }) & 0o777;
        Self {
            name: info.name.clone(),
            file_type,
            path: paths::e2b_path(&info.path),
            size: info.size.to_string(),
            mode,
            permissions: permissions(kind, mode),
            owner: SANDBOX_USER,
            group: SANDBOX_USER,
            modified_time: info.modified.map(|t: SystemTime| protojson::timestamp(t)),
            is_symlink: kind == FileKind::Symlink,
        }
    }
}

/// The permissions as `ls -l` (and Go's `FileMode.String`) writes them: `drwxr-xr-x`.
fn permissions(kind: FileKind, mode: u32) -> String {
    let mut out = String::with_capacity(10);
    out.push(match kind {
        FileKind::Dir => 'd',
        FileKind::Symlink => 'L',
        FileKind::File => '-',
        FileKind::Other => '?',
    });
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 0o7;
        out.push(if bits & 0o4 != 0 { 'r' } else { '-' });
        out.push(if bits & 0o2 != 0 { 'w' } else { '-' });
        out.push(if bits & 0o1 != 0 { 'x' } else { '-' });
    }
    out
}

/// The box path of a request's path: `invalid_argument` outside `/home/user`.
fn box_path(path: &str) -> ConnectResult<String> {
    paths::box_path(path).map_err(ConnectError::from)
}

async fn list_dir(session: &Arc<Session>, req: ListDirRequest) -> ConnectResult<serde_json::Value> {
    let dir = box_path(&req.path)?;
    let depth = if req.depth == 0 { 1 } else { req.depth as usize };
    codebox_core::check_list_depth(depth)?;
    let _use = session.use_guard();
    let entries = session.codebox.list_dir(&dir, depth).await?;
    let entries: Vec<EntryInfo> = entries.iter().map(EntryInfo::of).collect();
    answer(&serde_json::json!({ "entries": entries }))
}

async fn stat(session: &Arc<Session>, req: PathRequest) -> ConnectResult<serde_json::Value> {
    // `files.exists` asks with any path: one outside the box does not exist in it.
    let path = paths::box_path(&req.path)
        .map_err(|e| ConnectError::new(Code::NotFound, format!("{:?}: no such file in the box ({e})", req.path)))?;
    if path.is_empty() {
        // The working directory itself, which a box describes only through what is in it.
        let home = FileInfo {
            path: String::new(),
            name: "user".to_owned(),
            size: 0,
            is_dir: true,
            modified: None,
            file_kind: Some(FileKind::Dir),
            mode: Some(0o755),
        };
        return answer(&serde_json::json!({ "entry": EntryInfo::of(&home) }));
    }
    let _use = session.use_guard();
    let info = session.codebox.stat(&path).await.map_err(|e| not_found_as(e, &req.path))?;
    answer(&serde_json::json!({ "entry": EntryInfo::of(&info) }))
}

async fn make_dir(session: &Arc<Session>, req: PathRequest) -> ConnectResult<serde_json::Value> {
    let path = box_path(&req.path)?;
    if path.is_empty() {
        return Err(ConnectError::new(Code::AlreadyExists, format!("{} already exists", paths::HOME)));
    }
    let _use = session.use_guard();
    // `files.make_dir` answers `False` for a directory that exists: ask before making it
    // (the box's `make_dir` is content with an existing directory).
    match session.codebox.stat(&path).await {
        Ok(_) => return Err(ConnectError::new(Code::AlreadyExists, format!("{} already exists", req.path))),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let info = session.codebox.make_dir(&path).await?;
    answer(&serde_json::json!({ "entry": EntryInfo::of(&info) }))
}

async fn remove(session: &Arc<Session>, req: PathRequest) -> ConnectResult<serde_json::Value> {
    let path = box_path(&req.path)?;
    if path.is_empty() {
        return Err(ConnectError::invalid(format!(
            "{} is the box's working directory; it cannot be removed",
            paths::HOME
        )));
    }
    let _use = session.use_guard();
    let info = session.codebox.stat(&path).await.map_err(|e| not_found_as(e, &req.path))?;
    if info.kind() == FileKind::Dir {
        // envd removes a directory with what is in it; the box removes an empty one, so
        // its content goes first, deepest first.
        let mut inside = session.codebox.list_files(&path, true).await?;
        inside.sort_by_key(|f| std::cmp::Reverse(f.path.matches('/').count()));
        for entry in inside {
            session.codebox.delete_file(&entry.path).await?;
        }
    }
    session.codebox.delete_file(&path).await.map_err(|e| not_found_as(e, &req.path))?;
    answer(&serde_json::json!({}))
}

async fn rename(session: &Arc<Session>, req: MoveRequest) -> ConnectResult<serde_json::Value> {
    let (from, to) = (box_path(&req.source)?, box_path(&req.destination)?);
    if from.is_empty() || to.is_empty() {
        return Err(ConnectError::invalid(format!("{} itself cannot be moved or replaced", paths::HOME)));
    }
    let _use = session.use_guard();
    let info = session.codebox.rename(&from, &to).await.map_err(|e| not_found_as(e, &req.source))?;
    answer(&serde_json::json!({ "entry": EntryInfo::of(&info) }))
}

/// A box's not-found error in E2B's words, naming the path the caller gave.
fn not_found_as(err: codebox_core::CodeBoxError, path: &str) -> ConnectError {
    if err.kind() == ErrorKind::NotFound {
        ConnectError::new(Code::NotFound, format!("{path}: no such file or directory"))
    } else {
        err.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_e2b_entry_infos() {
        let mut info = FileInfo {
            path: "data/a.txt".into(),
            name: "a.txt".into(),
            size: 8,
            is_dir: false,
            modified: Some(SystemTime::UNIX_EPOCH),
            file_kind: Some(FileKind::File),
            mode: Some(0o100644),
        };
        let json = serde_json::to_value(EntryInfo::of(&info)).unwrap();
        assert_eq!(json["type"], "FILE_TYPE_FILE");
        assert_eq!(json["path"], "/home/user/data/a.txt");
        assert_eq!(json["size"], "8");
        assert_eq!(json["mode"], 0o644);
        assert_eq!(json["permissions"], "-rw-r--r--");
        assert_eq!(json["modifiedTime"], "1970-01-01T00:00:00.000000000Z");
        assert!(json.get("isSymlink").is_none());
        info.file_kind = Some(FileKind::Dir);
        info.mode = Some(0o755);
        let json = serde_json::to_value(EntryInfo::of(&info)).unwrap();
        assert_eq!(
            (json["type"].as_str(), json["permissions"].as_str()),
            (Some("FILE_TYPE_DIRECTORY"), Some("drwxr-xr-x"))
        );
        info.file_kind = Some(FileKind::Other);
        assert!(serde_json::to_value(EntryInfo::of(&info)).unwrap().get("type").is_none());
    }
}

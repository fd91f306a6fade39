//! The on-disk record of live sessions, so that a restarted server can say "lost".
//!
//! With a state directory ([`ServerConfig::state_dir`](crate::ServerConfig::state_dir)) the
//! server keeps one empty file per live session in `live/`, named `<owner>-<id>` (the owner
//! is the position of its API key). A session that is deleted or reaped loses its file; a
//! graceful shutdown keeps them, and a crash cannot remove them. The next server on the
//! directory reads them as the sessions *lost* with the restart, adds them to the `lost`
//! file (the most recent [`MAX_LOST`]), and answers requests for them with 410 Gone instead
//! of 404. `server.lock` is held for the server's life, so two servers never share a record.
//!
//! Owners are key positions, so the record matches only while the server has the same keys
//! (in the same order); a mismatch makes a lost session look unknown (404), never another
//! owner's.

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use codebox_core::{CodeBoxError, ErrorKind, Result};
use codebox_http::server::status_error;

use crate::auth::Owner;

/// How many lost sessions are remembered across restarts.
pub(crate) const MAX_LOST: usize = 10_000;

const LIVE: &str = "live";
const LOST: &str = "lost";
const LOCK: &str = "server.lock";

/// The record (inert without a state directory).
#[derive(Debug, Default)]
pub(crate) struct SessionRecord {
    live_dir: Option<PathBuf>,
    lost: Mutex<HashSet<(Owner, String)>>,
    /// Held (locked) until the server is down.
    lock: Mutex<Option<File>>,
}

fn entry_name(owner: Owner, id: &str) -> String {
    format!("{}-{id}", owner.index())
}

fn parse_entry(name: &str) -> Option<(Owner, String)> {
    let (owner, id) = name.split_once('-')?;
    let owner = owner.parse::<u32>().ok()?;
    crate::sessions::valid_session_id(id).then(|| (Owner::from_index(owner), id.to_owned()))
}

fn io_err(what: String) -> impl FnOnce(io::Error) -> CodeBoxError {
    move |e| CodeBoxError::io(what, e)
}

impl SessionRecord {
    /// Open the record in `dir` (created 0700 if missing): lock it, turn the sessions left
    /// alive by the previous server into lost ones, and start an empty live set.
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(format!("creating the state directory {}", dir.display())))?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK))
            .map_err(io_err(format!("opening {}", dir.join(LOCK).display())))?;
        if let Err(e) = lock.try_lock() {
            return Err(match e {
                std::fs::TryLockError::WouldBlock => CodeBoxError::invalid(format!(
                    "another server is using the state directory {}: give each server its own",
                    dir.display()
                )),
                std::fs::TryLockError::Error(e) => CodeBoxError::io(format!("locking {}", dir.display()), e),
            });
        }
        let live_dir = dir.join(LIVE);
        std::fs::create_dir_all(&live_dir).map_err(io_err(format!("creating {}", live_dir.display())))?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));

        // Earlier losses first, then the sessions the previous server left alive.
        let lost_file = dir.join(LOST);
        let mut lost: VecDeque<String> = match std::fs::read_to_string(&lost_file) {
            Ok(text) => text.lines().filter(|l| parse_entry(l).is_some()).map(str::to_owned).collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => VecDeque::new(),
            Err(e) => return Err(CodeBoxError::io(format!("reading {}", lost_file.display()), e)),
        };
        let mut newly = Vec::new();
        for entry in std::fs::read_dir(&live_dir).map_err(io_err(format!("reading {}", live_dir.display())))? {
            let entry = entry.map_err(io_err(format!("reading {}", live_dir.display())))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if parse_entry(&name).is_some() {
                newly.push(name);
            }
            let _ = std::fs::remove_file(entry.path());
        }
        newly.sort();
        lost.retain(|l| !newly.contains(l));
        lost.extend(newly.iter().cloned());
        while lost.len() > MAX_LOST {
            lost.pop_front();
        }
        let text: String = lost.iter().map(|l| format!("{l}\n")).collect();
        let tmp = dir.join(format!("{LOST}.new"));
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &lost_file))
            .map_err(io_err(format!("writing {}", lost_file.display())))?;
        if !newly.is_empty() {
            tracing::warn!(
                sessions = newly.len(),
                "sessions of the previous server run were lost with it; their clients get 410 Gone"
            );
        }
        Ok(Self {
            live_dir: Some(live_dir),
            lost: Mutex::new(lost.iter().filter_map(|l| parse_entry(l)).collect()),
            lock: Mutex::new(Some(lock)),
        })
    }

    /// The owner's session `id` started.
    pub(crate) fn started(&self, owner: Owner, id: &str) {
        self.lost.lock().unwrap_or_else(|e| e.into_inner()).remove(&(owner, id.to_owned()));
        if let Some(dir) = &self.live_dir
            && let Err(e) = File::create(dir.join(entry_name(owner, id)))
        {
            tracing::warn!(session = %id, error = %e, "recording a live session failed");
        }
    }

    /// The owner's session `id` was deleted or reaped: a later request gets 404.
    pub(crate) fn ended(&self, owner: Owner, id: &str) {
        if let Some(dir) = &self.live_dir {
            let _ = std::fs::remove_file(dir.join(entry_name(owner, id)));
        }
    }

    /// Let another server open the directory (the server is down).
    pub(crate) fn release(&self) {
        self.lock.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// The 410 answer when the owner's session `id` was lost with a restart.
    pub(crate) fn lost_error(&self, owner: Owner, id: &str) -> Option<CodeBoxError> {
        let lost = self.lost.lock().unwrap_or_else(|e| e.into_inner()).contains(&(owner, id.to_owned()));
        lost.then(|| {
            status_error(
                410,
                ErrorKind::SessionLost,
                format!(
                    "session {id} was lost when the server restarted: its kernel, variables and files are gone; \
                     create a new session"
                ),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_bad_names_are_ignored() {
        let owner = Owner::from_index(3);
        assert_eq!(parse_entry(&entry_name(owner, "a-b.c")), Some((owner, "a-b.c".to_owned())));
        assert_eq!(parse_entry(&entry_name(Owner::ANONYMOUS, "x")), Some((Owner::ANONYMOUS, "x".to_owned())));
        for bad in ["", "3", "x-y", "3-", "3-..", "3-a/b"] {
            assert_eq!(parse_entry(bad), None, "{bad}");
        }
    }

    #[test]
    fn live_sessions_of_a_run_are_lost_in_the_next_and_one_server_holds_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Owner::from_index(0), Owner::from_index(1));
        let first = SessionRecord::open(dir.path()).unwrap();
        let err = SessionRecord::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("another server"), "{err}");
        first.started(a, "kept");
        first.started(a, "deleted");
        first.ended(a, "deleted");
        assert!(first.lost_error(a, "kept").is_none());
        drop(first);

        let second = SessionRecord::open(dir.path()).unwrap();
        let err = second.lost_error(a, "kept").expect("lost");
        assert_eq!(err.http().map(|h| h.status), Some(410));
        assert!(err.to_string().contains("lost when the server restarted"), "{err}");
        assert!(second.lost_error(b, "kept").is_none(), "another owner's id is not lost for this one");
        assert!(second.lost_error(a, "deleted").is_none(), "a deleted session is simply gone");
        second.started(a, "kept");
        assert!(second.lost_error(a, "kept").is_none(), "a new session of the same id is not lost");
        drop(second);

        // Losses are remembered across another restart, bounded.
        let third = SessionRecord::open(dir.path()).unwrap();
        assert!(third.lost_error(a, "kept").is_some());
    }
}

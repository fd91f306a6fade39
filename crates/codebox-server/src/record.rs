//! The on-disk record of live sessions, so that a restarted server can say "lost".
//!
//! With a state directory ([`ServerConfig::state_dir`](crate::ServerConfig::state_dir)) the
//! server keeps one empty file per live session in `live/`, named `<owner>-<id>`. A session
//! that is deleted or reaped loses its file; a graceful shutdown keeps them, and a crash
//! cannot remove them. The next server on the directory reads them as the sessions *lost*
//! with the restart, adds them to the `lost` file (the most recent [`MAX_LOST`]), and
//! answers requests for them with 410 Gone instead of 404. `server.lock` is held for the
//! server's life, so two servers never share a record.
//!
//! The owner in a name is a keyed fingerprint of its API key: HMAC-SHA256 of the key under
//! a random secret made on first use and kept in `record.key` (0600) beside the record. A
//! fingerprint names the same key whatever other keys come and go (a position in the key
//! list would not: a key added between two others would hand one owner's lost sessions to
//! another), and without the secret it cannot be checked against guessed keys. The record
//! never holds a key.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use codebox_core::{ApiKey, CodeBoxError, ErrorKind, Result};
use codebox_http::server::ApiError;

use crate::auth::Owner;

/// How many lost sessions are remembered across restarts.
pub(crate) const MAX_LOST: usize = 10_000;

const LIVE: &str = "live";
const LOST: &str = "lost";
const LOCK: &str = "server.lock";
const SECRET: &str = "record.key";

/// The owner part of entries of the anonymous owner (authentication off).
const ANONYMOUS: &str = "anonymous";

/// The record (inert without a state directory).
#[derive(Debug, Default)]
pub(crate) struct SessionRecord {
    live_dir: Option<PathBuf>,
    /// The fingerprint of each owner's key, by key position.
    owners: HashMap<Owner, String>,
    lost: Mutex<HashSet<(String, String)>>,
    /// Held (locked) until the server is down.
    lock: Mutex<Option<File>>,
}

/// Whether `owner` can be the owner part of an entry: a fingerprint or `anonymous`.
fn valid_owner(owner: &str) -> bool {
    owner == ANONYMOUS || (owner.len() == 64 && owner.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

fn parse_entry(name: &str) -> Option<(String, String)> {
    let (owner, id) = name.split_once('-')?;
    (valid_owner(owner) && crate::sessions::valid_session_id(id)).then(|| (owner.to_owned(), id.to_owned()))
}

/// The keyed fingerprint of `key`, in hex.
fn fingerprint(secret: &[u8], key: &ApiKey) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(key.expose().as_bytes());
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// The fingerprint secret in `dir`, made (32 random bytes, 0600) when missing.
fn secret(dir: &Path) -> Result<Vec<u8>> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(SECRET);
    let mut bytes = Vec::new();
    match File::open(&path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes).map_err(io_err(format!("reading {}", path.display())))?;
            if bytes.len() >= 32 {
                return Ok(bytes);
            }
            // A cut write of an earlier run: start over (its fingerprints match nothing).
            let _ = std::fs::remove_file(&path);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(CodeBoxError::io(format!("reading {}", path.display()), e)),
    }
    let mut fresh = [0u8; 32];
    getrandom::fill(&mut fresh)
        .map_err(|e| CodeBoxError::io("making the record's secret", io::Error::other(e.to_string())))?;
    let tmp = dir.join(format!("{SECRET}.new"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(format!("creating {}", tmp.display())))?;
    f.write_all(&fresh)
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(io_err(format!("writing {}", path.display())))?;
    Ok(fresh.to_vec())
}

fn io_err(what: String) -> impl FnOnce(io::Error) -> CodeBoxError {
    move |e| CodeBoxError::io(what, e)
}

impl SessionRecord {
    /// Open the record in `dir` (created 0700 if missing) for a server with `keys` (the
    /// owners are their positions): lock it, turn the sessions left alive by the previous
    /// server into lost ones, and start an empty live set.
    pub(crate) fn open(dir: &Path, keys: &[ApiKey]) -> Result<Self> {
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
        let secret = secret(dir)?;
        let owners =
            keys.iter().enumerate().map(|(i, k)| (Owner::from_index(i as u32), fingerprint(&secret, k))).collect();
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
            owners,
            lost: Mutex::new(lost.iter().filter_map(|l| parse_entry(l)).collect()),
            lock: Mutex::new(Some(lock)),
        })
    }

    /// The owner part of `owner`'s entries.
    pub(crate) fn owner_name(&self, owner: Owner) -> &str {
        if owner == Owner::ANONYMOUS {
            return ANONYMOUS;
        }
        // Every known owner has a fingerprint; without a record there is nothing to name.
        self.owners.get(&owner).map_or("", String::as_str)
    }

    /// The owner whose entries are named `name` (a paused session's directory is named so).
    pub(crate) fn owner_named(&self, name: &str) -> Option<Owner> {
        if name == ANONYMOUS {
            return Some(Owner::ANONYMOUS);
        }
        self.owners.iter().find(|(_, n)| n.as_str() == name).map(|(o, _)| *o)
    }

    fn entry_name(&self, owner: Owner, id: &str) -> String {
        format!("{}-{id}", self.owner_name(owner))
    }

    /// The owner's session `id` started.
    pub(crate) fn started(&self, owner: Owner, id: &str) {
        self.lost.lock().unwrap_or_else(|e| e.into_inner()).remove(&(self.owner_name(owner).to_owned(), id.to_owned()));
        if let Some(dir) = &self.live_dir
            && let Err(e) = File::create(dir.join(self.entry_name(owner, id)))
        {
            tracing::warn!(session = %id, error = %e, "recording a live session failed");
        }
    }

    /// The owner's session `id` was deleted or reaped: a later request gets 404.
    pub(crate) fn ended(&self, owner: Owner, id: &str) {
        if let Some(dir) = &self.live_dir {
            let _ = std::fs::remove_file(dir.join(self.entry_name(owner, id)));
        }
    }

    /// Let another server open the directory (the server is down).
    pub(crate) fn release(&self) {
        self.lock.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// The 410 answer when the owner's session `id` was lost with a restart.
    pub(crate) fn lost_error(&self, owner: Owner, id: &str) -> Option<ApiError> {
        let entry = (self.owner_name(owner).to_owned(), id.to_owned());
        let lost = self.lost.lock().unwrap_or_else(|e| e.into_inner()).contains(&entry);
        lost.then(|| {
            ApiError::new(
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

    fn keys(names: &[&str]) -> Vec<ApiKey> {
        names.iter().map(|k| ApiKey::new(*k)).collect()
    }

    #[test]
    fn entries_round_trip_and_bad_names_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let record = SessionRecord::open(dir.path(), &keys(&["k"])).unwrap();
        let owner = Owner::from_index(0);
        let (fp, id) = parse_entry(&record.entry_name(owner, "a-b.c")).unwrap();
        assert_eq!((fp.len(), id.as_str()), (64, "a-b.c"));
        assert_eq!(parse_entry(&record.entry_name(Owner::ANONYMOUS, "x")), Some((ANONYMOUS.into(), "x".into())));
        for bad in ["", "3", "x-y", "3-a", "3-", &format!("{fp}-.."), &format!("{fp}-a/b")] {
            assert_eq!(parse_entry(bad), None, "{bad}");
        }
    }

    #[test]
    fn live_sessions_of_a_run_are_lost_in_the_next_and_one_server_holds_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let two = keys(&["alpha", "beta"]);
        let (a, b) = (Owner::from_index(0), Owner::from_index(1));
        let first = SessionRecord::open(dir.path(), &two).unwrap();
        let err = SessionRecord::open(dir.path(), &two).unwrap_err().to_string();
        assert!(err.contains("another server"), "{err}");
        first.started(a, "kept");
        first.started(a, "deleted");
        first.ended(a, "deleted");
        assert!(first.lost_error(a, "kept").is_none());
        drop(first);

        let second = SessionRecord::open(dir.path(), &two).unwrap();
        let err = second.lost_error(a, "kept").expect("lost");
        assert_eq!((err.status, err.kind), (410, ErrorKind::SessionLost));
        assert!(err.to_string().contains("lost when the server restarted"), "{err}");
        assert!(second.lost_error(b, "kept").is_none(), "another owner's id is not lost for this one");
        assert!(second.lost_error(a, "deleted").is_none(), "a deleted session is simply gone");
        second.started(a, "kept");
        assert!(second.lost_error(a, "kept").is_none(), "a new session of the same id is not lost");
        drop(second);

        // Losses are remembered across another restart, bounded.
        let third = SessionRecord::open(dir.path(), &two).unwrap();
        assert!(third.lost_error(a, "kept").is_some());
    }

    #[test]
    fn lost_sessions_follow_their_key_not_its_position() {
        let dir = tempfile::tempdir().unwrap();
        let first = SessionRecord::open(dir.path(), &keys(&["alpha", "gamma"])).unwrap();
        first.started(Owner::from_index(1), "g-session");
        drop(first);
        // A key added between the two moves gamma to position 2.
        let second = SessionRecord::open(dir.path(), &keys(&["alpha", "beta", "gamma"])).unwrap();
        assert!(second.lost_error(Owner::from_index(2), "g-session").is_some(), "gamma's loss stays gamma's");
        assert!(second.lost_error(Owner::from_index(1), "g-session").is_none(), "beta is not told of it");
    }

    #[test]
    fn the_record_never_holds_a_key_and_its_secret_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let record = SessionRecord::open(dir.path(), &keys(&["the-secret-key-value"])).unwrap();
        record.started(Owner::from_index(0), "s");
        drop(record);
        let _again = SessionRecord::open(dir.path(), &keys(&["the-secret-key-value"])).unwrap();
        for entry in walk(dir.path()) {
            let name = entry.to_string_lossy().into_owned();
            assert!(!name.contains("the-secret-key-value"), "{name}");
            if entry.is_file() {
                let text = std::fs::read(&entry).unwrap();
                assert!(!text.windows(20).any(|w| w == b"the-secret-key-value"), "{name}");
            }
        }
        let mode = std::fs::metadata(dir.path().join(SECRET)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(walk(&path));
            }
            out.push(path);
        }
        out
    }
}

//! The sandboxes' access tokens: a random secret per session, given by create and connect,
//! good for its own session only (not for a later session that reuses the id), compared in
//! constant time.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::auth::Owner;
use crate::sessions::Session;

/// How far a session's creation time may move and still be the same session: a resumed
/// session's creation time went through the paused record's floating-point seconds.
const SAME_SESSION: Duration = Duration::from_millis(1);

/// One sandbox's token.
#[derive(Debug, Clone)]
struct Entry {
    owner: Owner,
    /// When the session it was made for was created.
    created_at: SystemTime,
    /// The token, as handed out.
    token: String,
    /// Its SHA-256, what callers' tokens are compared with.
    digest: [u8; 32],
    /// The E2B template the sandbox was created from.
    template: String,
}

/// Every sandbox's token, by sandbox (session) id; ids are unique per key only, so one id
/// may have several.
#[derive(Debug, Default)]
pub(crate) struct SandboxTokens {
    entries: Mutex<HashMap<String, Vec<Entry>>>,
}

fn same_time(a: SystemTime, b: SystemTime) -> bool {
    let gap = a.duration_since(b).or_else(|_| b.duration_since(a)).unwrap_or_default();
    gap < SAME_SESSION
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    // Without OS randomness there is no secret to hand out; a fixed token would be worse than
    // failing, and getrandom failing on Linux means the process cannot do much else either.
    getrandom::fill(&mut bytes).expect("the operating system's random number generator");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl SandboxTokens {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<Entry>>> {
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The token of `session` (made now if it has none) and the E2B template it was created
    /// from (`template` when it is new).
    pub(crate) fn issue(&self, session: &Session, template: &str) -> (String, String) {
        let mut entries = self.lock();
        let list = entries.entry(session.id.clone()).or_default();
        // A token of an earlier session of the same id and owner is good no more.
        list.retain(|e| e.owner != session.owner || same_time(e.created_at, session.created_at()));
        if let Some(entry) = list.iter().find(|e| e.owner == session.owner) {
            return (entry.token.clone(), entry.template.clone());
        }
        let token = random_token();
        let digest = Sha256::digest(token.as_bytes()).into();
        let entry = Entry {
            owner: session.owner,
            created_at: session.created_at(),
            token: token.clone(),
            digest,
            template: template.to_owned(),
        };
        list.push(entry);
        (token, template.to_owned())
    }

    /// The token of `session` and its template, when it was given one.
    pub(crate) fn of(&self, session: &Session) -> Option<(String, String)> {
        let entries = self.lock();
        entries
            .get(&session.id)?
            .iter()
            .find(|e| e.owner == session.owner && same_time(e.created_at, session.created_at()))
            .map(|e| (e.token.clone(), e.template.clone()))
    }

    /// The owner of sandbox `id` whose token `token` is, if any. Every token of the id is
    /// compared, each in constant time.
    pub(crate) fn owner_of(&self, id: &str, token: &[u8]) -> Option<Owner> {
        let digest: [u8; 32] = Sha256::digest(token).into();
        let entries = self.lock();
        let mut found = None;
        for entry in entries.get(id).into_iter().flatten() {
            if bool::from(entry.digest.ct_eq(&digest)) && found.is_none() {
                found = Some(entry.owner);
            }
        }
        found
    }

    /// Whether `session` is the session its owner's token of its id was made for.
    pub(crate) fn is_current(&self, session: &Session) -> bool {
        self.of(session).is_some()
    }

    /// Forget the token of the owner's sandbox `id` (it was killed).
    pub(crate) fn forget(&self, owner: Owner, id: &str) {
        let mut entries = self.lock();
        if let Some(list) = entries.get_mut(id) {
            list.retain(|e| e.owner != owner);
            if list.is_empty() {
                entries.remove(id);
            }
        }
    }

    /// Forget the tokens of sessions that no longer exist; `exists` says whether the owner
    /// still has a session of that id created at that time.
    pub(crate) fn retain(&self, exists: impl Fn(Owner, &str, SystemTime) -> bool) {
        let mut entries = self.lock();
        entries.retain(|id, list| {
            list.retain(|e| exists(e.owner, id, e.created_at));
            !list.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_distinct() {
        let (a, b) = (random_token(), random_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }

    #[test]
    fn creation_times_within_a_millisecond_are_one_session() {
        let t = SystemTime::now();
        assert!(same_time(t, t + Duration::from_micros(3)));
        assert!(same_time(t + Duration::from_micros(3), t));
        assert!(!same_time(t, t + Duration::from_millis(2)));
    }
}

//! Files held open for downloads, bounded server-wide and per API key.
//!
//! A download keeps its file open until the client has read it, and a client decides how
//! fast that is: over HTTP/2 with a flow-control window of zero, never. Without a bound,
//! one tenant's unread downloads would take every descriptor of the server (other tenants'
//! requests then fail with "Too many open files"), so each download takes a slot first:
//! at most as many as the server has connections in all, and at most an even share of
//! those per key. A key over its share gets 429, a full server 503, both with
//! `Retry-After`; neither touches anything of the box.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use codebox_core::ErrorKind;
use codebox_http::server::ApiError;

use crate::auth::Owner;

/// The download slots of a server (or, with [`DownloadSlots::named`], slots of another kind of
/// long-lived holding: connections tunnelled to a box's port).
#[derive(Debug)]
pub(crate) struct DownloadSlots {
    total: usize,
    per_key: usize,
    held: Mutex<HashMap<Owner, usize>>,
    /// What a slot holds, in the refusals: `downloads`.
    what: &'static str,
    /// What a key over its share should do.
    hint: &'static str,
}

/// One open download; its slot is given back when it drops (with the response body).
#[derive(Debug)]
pub(crate) struct DownloadSlot {
    slots: Arc<DownloadSlots>,
    owner: Owner,
}

impl DownloadSlots {
    /// `total` downloads at once, `total / keys` (at least one) for each key.
    pub(crate) fn new(total: usize, keys: usize) -> Arc<Self> {
        Self::named(total, keys, "downloads", "finish reading one before the next")
    }

    /// Slots of `what`, with `hint` for a key over its share.
    pub(crate) fn named(total: usize, keys: usize, what: &'static str, hint: &'static str) -> Arc<Self> {
        let total = total.max(1);
        let per_key = (total / keys.max(1)).max(1);
        Arc::new(Self { total, per_key, held: Mutex::new(HashMap::new()), what, hint })
    }

    /// A slot for a download of `owner`'s, or the error that says why not.
    pub(crate) fn take(self: &Arc<Self>, owner: Owner) -> Result<DownloadSlot, ApiError> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let all: usize = held.values().sum();
        let mine = held.get(&owner).copied().unwrap_or(0);
        let refuse = |status: u16, message: String| {
            ApiError::new(status, ErrorKind::RateLimited, message).with_retry_after(Duration::from_secs(1))
        };
        if mine >= self.per_key {
            return Err(refuse(429, format!("this API key has {mine} {} open, its limit; {}", self.what, self.hint)));
        }
        if all >= self.total {
            return Err(refuse(503, format!("the server has {all} {} open, its limit; try again shortly", self.what)));
        }
        *held.entry(owner).or_insert(0) += 1;
        Ok(DownloadSlot { slots: Arc::clone(self), owner })
    }
}

impl Drop for DownloadSlot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.owner) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.owner);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_holds_at_most_its_share_and_the_server_its_total() {
        let slots = DownloadSlots::new(4, 2);
        let (a, b) = (Owner::from_index(0), Owner::from_index(1));
        let a1 = slots.take(a).unwrap();
        let _a2 = slots.take(a).unwrap();
        let err = slots.take(a).unwrap_err();
        assert_eq!((err.status, err.kind), (429, ErrorKind::RateLimited));
        let _b1 = slots.take(b).unwrap();
        let _b2 = slots.take(b).unwrap();
        drop(a1);
        let _a3 = slots.take(a).unwrap();
        let full = DownloadSlots::new(1, 1);
        let _only = full.take(a).unwrap();
        assert_eq!(full.take(b).unwrap_err().status, 503);
    }
}

//! What every wire protocol shares: where the session lives, how to reach it, the
//! credentials, and whether it is believed to be running.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use codebox_core::{ApiKey, BoxState, BoxStatus, CodeBoxError, Result, RunOptions};
use codebox_http::client::{HttpClient, Request};

/// The connection to one session, fixed for the box's life but for its running state.
pub(crate) struct Connection {
    /// The session's id on the server.
    pub(crate) id: String,
    /// The session was attached by id rather than created by this box.
    pub(crate) attached: bool,
    /// The base URL, without a trailing `/`.
    pub(crate) base: String,
    pub(crate) http: HttpClient,
    api_key: Option<ApiKey>,
    /// The timeout of an execution whose options set none.
    execution_timeout: Option<Duration>,
    /// Whether the session is believed to exist on the server.
    running: AtomicBool,
    /// Whether `stop` was called.
    stopped: AtomicBool,
}

impl Connection {
    /// A connection to session `id`; an attached session counts as running from the start.
    pub(crate) fn new(
        id: String,
        attached: bool,
        base: String,
        http: HttpClient,
        api_key: Option<ApiKey>,
        execution_timeout: Option<Duration>,
    ) -> Self {
        Self {
            running: AtomicBool::new(attached),
            id,
            attached,
            base,
            http,
            api_key,
            execution_timeout,
            stopped: AtomicBool::new(false),
        }
    }

    /// The API key, for `Debug` (it shows redacted).
    pub(crate) fn api_key(&self) -> Option<&ApiKey> {
        self.api_key.as_ref()
    }

    /// A request with the credentials of this box.
    pub(crate) fn request(&self, method: http::Method, url: &str) -> Result<Request> {
        let mut req = Request::new(method, url)?;
        if let Some(key) = &self.api_key {
            req = req.bearer(key)?;
        }
        Ok(req)
    }

    /// Whether the session is believed to exist on the server.
    pub(crate) fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// The session exists (it was created, attached or found).
    pub(crate) fn mark_started(&self) {
        self.stopped.store(false, Ordering::Release);
        self.running.store(true, Ordering::Release);
    }

    /// `stop` was called; returns whether the session was running until now.
    pub(crate) fn mark_stopped(&self) -> bool {
        let was_running = self.running.swap(false, Ordering::AcqRel);
        self.stopped.store(true, Ordering::Release);
        was_running
    }

    /// Ending the session failed: it is still there.
    pub(crate) fn mark_still_running(&self) {
        self.running.store(true, Ordering::Release);
    }

    /// `Ok` when the session is running, else why not.
    pub(crate) fn ensure_running(&self) -> Result<()> {
        if self.is_running() {
            Ok(())
        } else if self.stopped.load(Ordering::Acquire) {
            Err(CodeBoxError::not_running(format!("box {} was stopped", self.id)))
        } else {
            Err(CodeBoxError::not_running(format!("box {} is not started; call start() first", self.id)))
        }
    }

    /// The status of a box whose session is not running.
    pub(crate) fn not_running_status(&self) -> BoxStatus {
        if self.stopped.load(Ordering::Acquire) {
            BoxStatus::new(BoxState::Stopped)
        } else {
            BoxStatus::new(BoxState::NotStarted)
        }
    }

    /// The execution options with the box's default timeout filled in.
    pub(crate) fn with_default_timeout(&self, mut options: RunOptions) -> RunOptions {
        if options.timeout.is_none() {
            options.timeout = self.execution_timeout;
        }
        options
    }
}

/// A fresh random session id: 32 hex digits from the standard library's random hasher keys.
pub(crate) fn new_session_id() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::with_capacity(32);
    for salt in 0..2u64 {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(salt);
        if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            h.write_u128(now.as_nanos());
        }
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_fresh_hex() {
        let (a, b) = (new_session_id(), new_session_id());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}

//! The session registry: one box per session, owned by one API key, reaped when idle or
//! past its lifetime. An expired session is remembered for a while so that requests naming
//! it are told when it expired (410 `expired`) rather than that it never existed.
//!
//! Long file: a session, the registry that holds it, and the reapers that end it share one
//! set of locks and invariants (a slot is removed before its box is stopped, an expired
//! session is remembered before it is forgotten), kept readable side by side.
//!
//! This is shared with the compatibility routes; the `pub(crate)` items below are their
//! interface and keep their signatures.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use codebox_core::{BoxState, CodeBox, CodeBoxError, ErrorKind};
use codebox_http::server::ApiError;
use codebox_http::wire::{SessionInfo, SessionState};
use tokio::sync::{OnceCell, Semaphore};

use crate::auth::Owner;
use crate::factory::BoxFactory;
use crate::metrics::Metrics;
use crate::params::SessionSpec;
use crate::record::SessionRecord;
use crate::state::ApiResult;

/// One session: a box, its owner, and its use.
pub(crate) struct Session {
    /// The id, unique among its owner's sessions.
    pub(crate) id: String,
    /// The key that created it.
    pub(crate) owner: Owner,
    /// The box.
    pub(crate) codebox: Arc<dyn CodeBox>,
    /// What it was created with.
    spec: SessionSpec,
    /// Its lifetime as last set, and when it ends.
    lifetime: Mutex<Option<Lifetime>>,
    /// When it was created.
    pub(crate) created_at: SystemTime,
    last_used_ms: AtomicU64,
    in_use: AtomicUsize,
    executions: AtomicUsize,
    /// A paused session's size on disk and when it was paused (its box is then a
    /// [`PausedBox`](crate::paused::PausedBox)).
    paused: Option<(u64, f64)>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("id", &self.id).field("owner", &self.owner).finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default()
}

/// A session's lifetime: how long it was given, and the moment that runs out.
#[derive(Debug, Clone, Copy)]
struct Lifetime {
    timeout: Duration,
    expires_at: SystemTime,
}

/// Unix seconds of `t`.
fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}

impl Session {
    fn new(id: String, owner: Owner, codebox: Arc<dyn CodeBox>, spec: SessionSpec) -> Self {
        let created_at = SystemTime::now();
        let lifetime = spec.timeout.map(|timeout| Lifetime { timeout, expires_at: created_at + timeout });
        Self {
            id,
            owner,
            codebox,
            spec,
            lifetime: Mutex::new(lifetime),
            created_at,
            last_used_ms: AtomicU64::new(now_ms()),
            in_use: AtomicUsize::new(0),
            executions: AtomicUsize::new(0),
            paused: None,
        }
    }

    /// Whether the session is paused.
    pub(crate) fn is_paused(&self) -> bool {
        self.paused.is_some()
    }

    /// Mark the session used now.
    pub(crate) fn touch(&self) {
        self.last_used_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Hold the session in use until the guard drops: the idle reaper leaves it alone, and
    /// it counts as used until then.
    pub(crate) fn use_guard(self: &Arc<Self>) -> SessionUse {
        self.touch();
        self.in_use.fetch_add(1, Ordering::AcqRel);
        SessionUse { session: Arc::clone(self), execution: false }
    }

    /// Like [`use_guard`](Self::use_guard), and also count a running execution (which
    /// shutdown interrupts after its grace period).
    pub(crate) fn execution_guard(self: &Arc<Self>) -> SessionUse {
        let mut guard = self.use_guard();
        self.executions.fetch_add(1, Ordering::AcqRel);
        guard.execution = true;
        guard
    }

    /// Whether an execution is running.
    pub(crate) fn is_executing(&self) -> bool {
        self.executions.load(Ordering::Acquire) > 0
    }

    fn lifetime(&self) -> Option<Lifetime> {
        *self.lifetime.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// When its lifetime ends, if it has one.
    pub(crate) fn expires_at(&self) -> Option<SystemTime> {
        self.lifetime().map(|l| l.expires_at)
    }

    /// Whether its lifetime has ended.
    fn is_expired(&self, now: SystemTime) -> bool {
        self.expires_at().is_some_and(|at| at <= now)
    }

    /// Give the session `timeout` more to live, from now (E2B's `set_timeout`).
    pub(crate) fn set_timeout(&self, timeout: Duration) {
        let lifetime = Lifetime { timeout, expires_at: SystemTime::now() + timeout };
        *self.lifetime.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(lifetime);
    }

    /// The caller's labels.
    pub(crate) fn metadata(&self) -> &std::collections::BTreeMap<String, String> {
        &self.spec.metadata
    }

    /// When it was created.
    pub(crate) fn created_at(&self) -> SystemTime {
        self.created_at
    }

    fn idle_for(&self) -> Option<Duration> {
        if self.in_use.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(Duration::from_millis(now_ms().saturating_sub(self.last_used_ms.load(Ordering::Relaxed))))
    }

    /// The wire description of the session. `max_upload_bytes` is the server's limit.
    pub(crate) async fn info(&self, max_upload_bytes: u64) -> SessionInfo {
        let status = match self.codebox.status().await {
            Ok(status) => status,
            Err(e) => codebox_core::BoxStatus::new(codebox_core::BoxState::Dead).with_detail(e.to_string()),
        };
        let mut capabilities = self.codebox.capabilities();
        capabilities.max_upload_bytes =
            Some(capabilities.max_upload_bytes.map_or(max_upload_bytes, |m| m.min(max_upload_bytes)));
        let state = match status.state {
            _ if self.paused.is_some() => SessionState::Paused,
            BoxState::NotStarted | BoxState::Starting => SessionState::Starting,
            BoxState::Stopped => SessionState::Stopped,
            BoxState::Dead => SessionState::Error,
            _ => SessionState::Running,
        };
        let request = &self.spec.request;
        let lifetime = self.lifetime();
        let mut info = SessionInfo::new(self.id.clone(), status, capabilities);
        info.created_at = unix_secs(self.created_at);
        info.last_used_at = self.last_used_ms.load(Ordering::Relaxed) as f64 / 1e3;
        info.state = state;
        info.template = request.template.clone();
        info.kernel = request.kernel.clone().or_else(|| info.status.kernel.clone());
        info.language = request.language.clone();
        info.metadata = self.spec.metadata.clone();
        info.env_keys = request.env.keys().cloned().collect();
        info.limits = request.limits.clone();
        info.timeout = lifetime.map(|l| l.timeout.as_secs());
        info.idle_timeout = self.spec.idle_timeout.as_secs();
        info.expires_at = lifetime.map(|l| unix_secs(l.expires_at));
        info.disk_bytes = self.paused.map(|(disk, _)| disk);
        info
    }
}

/// Holds a session in use; see [`Session::use_guard`].
#[derive(Debug)]
pub(crate) struct SessionUse {
    session: Arc<Session>,
    execution: bool,
}

impl Drop for SessionUse {
    fn drop(&mut self) {
        self.session.touch();
        if self.execution {
            self.session.executions.fetch_sub(1, Ordering::AcqRel);
        }
        self.session.in_use.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    owner: Owner,
    id: String,
}

/// A session being created, or created. Concurrent creators of the same id share one.
#[derive(Default)]
struct Slot {
    cell: OnceCell<Arc<Session>>,
}

/// Whether [`Registry::get_or_create`] made a new session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Created {
    /// A new session was started.
    New,
    /// The caller already had a session with this id.
    Existing,
}

/// The most expired sessions remembered at once; the oldest are forgotten first.
const MAX_EXPIRED_REMEMBERED: usize = 10_000;

/// A session stopped at the end of its lifetime, remembered for a while.
struct Expired {
    key: Key,
    expired_at: SystemTime,
    remembered_at: Instant,
}

/// Whose sessions a listing covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// One key's.
    Owner(Owner),
    /// Every key's (an operator's view).
    All,
}

impl Scope {
    fn covers(self, owner: Owner) -> bool {
        match self {
            Scope::Owner(o) => o == owner,
            Scope::All => true,
        }
    }
}

/// Every session, keyed by owner and id.
pub(crate) struct Registry {
    slots: Mutex<HashMap<Key, Arc<Slot>>>,
    /// Sessions stopped at the end of their lifetime, oldest first.
    expired: Mutex<VecDeque<Expired>>,
    /// How long an expired session is remembered.
    expired_retention: Duration,
    /// What a session that asks for nothing gets.
    default_spec: SessionSpec,
    factory: Arc<dyn BoxFactory>,
    max_sessions: usize,
    /// The most sessions one owner may hold.
    max_per_owner: usize,
    retry_after: Duration,
    metrics: Arc<Metrics>,
    closed: std::sync::atomic::AtomicBool,
    starts: Semaphore,
    record: SessionRecord,
    /// Paused sessions on disk.
    paused: crate::paused::PausedStore,
    /// One resume at a time per server: a session resumed twice at once would start twice.
    resumes: tokio::sync::Mutex<()>,
    /// Whether idle sessions are paused rather than stopped (each may say otherwise).
    pause_idle: bool,
    /// The bytes paused sessions may take on disk, server-wide and per key.
    paused_budget: (Option<u64>, Option<u64>),
    /// The node minted ids carry.
    node: Option<crate::node::NodeId>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("sessions", &self.lock().len()).field("max", &self.max_sessions).finish()
    }
}

/// Whether `id` can name a session: 1 to 128 letters, digits, `-`, `_` or `.`.
pub(crate) fn valid_session_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A fresh session id: 32 random hex digits, after `node` and `--` when the server has a node.
fn new_session_id(node: Option<&crate::node::NodeId>) -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness: ids stay unique (counter) if not unpredictable; ownership still guards them.
        static FALLBACK: AtomicU64 = AtomicU64::new(0);
        bytes[..8].copy_from_slice(&now_ms().to_le_bytes());
        bytes[8..].copy_from_slice(&FALLBACK.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    }
    let random: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    match node {
        Some(node) => node.session_id(&random),
        None => random,
    }
}

impl Registry {
    /// The registry of a server configured as `config`, whose boxes come from `factory`.
    pub(crate) fn new(
        factory: Arc<dyn BoxFactory>,
        config: &crate::config::ServerConfig,
        metrics: Arc<Metrics>,
        record: SessionRecord,
    ) -> Self {
        let paused = crate::paused::PausedStore::new(config.state_dir.as_deref());
        let registry = Self {
            slots: Mutex::new(HashMap::new()),
            expired: Mutex::new(VecDeque::new()),
            expired_retention: config.expired_retention,
            default_spec: SessionSpec::defaults(config),
            factory,
            max_sessions: config.max_sessions,
            max_per_owner: config.sessions_per_key(),
            retry_after: config.retry_after,
            metrics,
            closed: Default::default(),
            starts: Semaphore::new(config.max_concurrent_starts.max(1)),
            record,
            paused,
            resumes: tokio::sync::Mutex::new(()),
            pause_idle: config.on_idle == crate::config::OnIdle::Pause,
            paused_budget: (config.paused_disk_budget, config.paused_disk_per_key),
            node: config.node_id.clone(),
        };
        registry.load_paused();
        registry
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_expired(&self) -> MutexGuard<'_, VecDeque<Expired>> {
        self.expired.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The owner's session `id`, if it exists, has started and is within its lifetime. One
    /// found past its lifetime is stopped now, without waiting for the reaper.
    pub(crate) fn get(&self, owner: Owner, id: &str) -> Option<Arc<Session>> {
        let key = Key { owner, id: id.to_owned() };
        let session = {
            let mut slots = self.lock();
            let session = slots.get(&key)?.cell.get().cloned()?;
            if !session.is_expired(SystemTime::now()) {
                return Some(session);
            }
            slots.remove(&key);
            session
        };
        self.expire(&session);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { stop_box(&session).await });
        }
        None
    }

    /// Remember `session`, removed from the slots, as expired.
    fn expire(&self, session: &Session) {
        tracing::info!(session = %session.id, owner = %session.owner, "stopping a session at the end of its lifetime");
        self.record.ended(session.owner, &session.id);
        self.metrics.session_reaped();
        let expired_at = session.expires_at().unwrap_or_else(SystemTime::now);
        let mut expired = self.lock_expired();
        if expired.len() >= MAX_EXPIRED_REMEMBERED {
            expired.pop_front();
        }
        let key = Key { owner: session.owner, id: session.id.clone() };
        expired.push_back(Expired { key, expired_at, remembered_at: Instant::now() });
    }

    /// When the owner's session `id` expired, if it did lately.
    fn expired_at(&self, owner: Owner, id: &str) -> Option<SystemTime> {
        let expired = self.lock_expired();
        expired
            .iter()
            .rev()
            .find(|e| e.key.owner == owner && e.key.id == id && e.remembered_at.elapsed() < self.expired_retention)
            .map(|e| e.expired_at)
    }

    /// [`get`](Self::get), or a 404 `not_found` error naming the session (410 Gone, kind
    /// `not_found`, when the session was lost with a restart of the server).
    pub(crate) fn require(&self, owner: Owner, id: &str) -> ApiResult<Arc<Session>> {
        self.get(owner, id).ok_or_else(|| self.missing(owner, id))
    }

    /// The error for the owner's session `id` that does not exist: 410 Gone, kind
    /// `expired`, when it reached the end of its lifetime lately; 410 `session_lost` when it
    /// was lost with a restart of the server; else 404.
    pub(crate) fn missing(&self, owner: Owner, id: &str) -> ApiError {
        if let Some(at) = self.expired_at(owner, id) {
            let at = humantime::format_rfc3339_seconds(at);
            return ApiError::new(
                410,
                ErrorKind::Expired,
                format!("session {id} expired at {at}; create a new session (or extend one's timeout before it ends)"),
            );
        }
        self.record.lost_error(owner, id).unwrap_or_else(|| CodeBoxError::not_found(format!("session {id}")).into())
    }

    /// The started sessions within `scope` and their lifetime, oldest first (ties by id).
    pub(crate) fn list_in(&self, scope: Scope) -> Vec<Arc<Session>> {
        let now = SystemTime::now();
        let mut out: Vec<Arc<Session>> = self
            .lock()
            .iter()
            .filter(|(k, _)| scope.covers(k.owner))
            .filter_map(|(_, s)| s.cell.get().cloned())
            .filter(|s| !s.is_expired(now))
            .collect();
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.id.cmp(&b.id)));
        out
    }

    /// Every live session, of every owner.
    pub(crate) fn all(&self) -> Vec<Arc<Session>> {
        self.lock().values().filter_map(|s| s.cell.get().cloned()).collect()
    }

    /// How many sessions exist or are being created.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// A box that could not start for want of room on this machine (every session uid
    /// taken, say) is refused like a full server: 503 `rate_limited` with `Retry-After`,
    /// since the caller did nothing wrong and may succeed later.
    fn full_if_out_of_room(&self, e: CodeBoxError) -> ApiError {
        // A server behind a remote box said so itself: its answer stands.
        if e.kind() != ErrorKind::RateLimited || e.http().is_some() {
            return e.into();
        }
        tracing::warn!(error = %e, "a new session found no room on this machine");
        self.metrics.session_rejected();
        ApiError::new(
            503,
            ErrorKind::RateLimited,
            "the server has no room for another session now (every session uid is taken); try again later",
        )
        .with_retry_after(self.retry_after)
    }

    /// The owner's session `id` (a new id when `None`), creating and starting its box with
    /// `kernel` when it does not exist yet. Refused with 503 `rate_limited` and
    /// `Retry-After` when the server is full, with 429 `rate_limited` when the owner holds
    /// its own limit of sessions, and with 400 for an invalid id.
    pub(crate) async fn get_or_create(
        &self,
        owner: Owner,
        id: Option<&str>,
        kernel: Option<&str>,
    ) -> ApiResult<(Arc<Session>, Created)> {
        let mut spec = self.default_spec.clone();
        spec.request.kernel = kernel.map(str::to_owned);
        self.get_or_create_with(owner, id, spec).await
    }

    /// Like [`get_or_create`](Self::get_or_create), creating the box as `spec` says (an
    /// existing session is returned as it is).
    pub(crate) async fn get_or_create_with(
        &self,
        owner: Owner,
        id: Option<&str>,
        spec: SessionSpec,
    ) -> ApiResult<(Arc<Session>, Created)> {
        let id = match id {
            Some(id) if !valid_session_id(id) => {
                return Err(CodeBoxError::invalid(
                    "a session id is 1 to 128 letters, digits, `-`, `_` or `.` characters",
                )
                .into());
            }
            Some(id) => id.to_owned(),
            None => new_session_id(self.node.as_ref()),
        };
        let key = Key { owner, id: id.clone() };
        let slot = {
            let mut slots = self.lock();
            match slots.get(&key) {
                Some(slot) => Arc::clone(slot),
                // A draining server still serves the sessions it has, but starts no more.
                None if self.closed.load(Ordering::Acquire) => {
                    return Err(ApiError::new(503, ErrorKind::Connection, "the server is shutting down")
                        .with_retry_after(self.retry_after));
                }
                None => {
                    // A paused session holds no box: it takes no room but its disk.
                    if slots.values().filter(|s| !s.cell.get().is_some_and(|s| s.is_paused())).count()
                        >= self.max_sessions
                    {
                        self.metrics.session_rejected();
                        let message =
                            format!("the server is at its limit of {} sessions; try again later", self.max_sessions);
                        return Err(
                            ApiError::new(503, ErrorKind::RateLimited, message).with_retry_after(self.retry_after)
                        );
                    }
                    // One key must not take every slot and starve the others. Its own
                    // limit, so 429 (the caller can free sessions), not the 503 of a full server.
                    let running = |s: &Arc<Slot>| !s.cell.get().is_some_and(|s| s.is_paused());
                    if slots.iter().filter(|(k, s)| k.owner == owner && running(s)).count() >= self.max_per_owner {
                        self.metrics.session_rejected();
                        let message = format!(
                            "this API key holds its limit of {} sessions; delete one (or let one idle out) before \
                             creating another",
                            self.max_per_owner
                        );
                        return Err(
                            ApiError::new(429, ErrorKind::RateLimited, message).with_retry_after(self.retry_after)
                        );
                    }
                    let slot = Arc::new(Slot::default());
                    slots.insert(key.clone(), Arc::clone(&slot));
                    slot
                }
            }
        };
        let mut created = Created::Existing;
        let result = slot
            .cell
            .get_or_try_init(|| async {
                created = Created::New;
                let _turn = self
                    .starts
                    .acquire()
                    .await
                    .map_err(|_| ApiError::new(503, ErrorKind::Connection, "the server is shutting down"))?;
                let mut request = spec.request.clone();
                request.state_dir = self.paused.box_dir(self.record.owner_name(owner), &id);
                let codebox = self.factory.create(&request).await.map_err(|e| self.full_if_out_of_room(e))?;
                if let Err(e) = codebox.start().await {
                    let _ = codebox.stop().await;
                    return Err(self.full_if_out_of_room(e));
                }
                tracing::info!(session = %id, %owner, "session started");
                Ok(Arc::new(Session::new(id.clone(), owner, codebox, spec.clone())))
            })
            .await;
        match result {
            Ok(session) => {
                let session = Arc::clone(session);
                if created == Created::New {
                    // The id lives again: its earlier life's expiry no longer answers for it.
                    self.lock_expired().retain(|e| e.key != key);
                    self.metrics.session_created();
                    self.record.started(owner, &id);
                    let still_registered = self.lock().get(&key).is_some_and(|s| Arc::ptr_eq(s, &slot));
                    if !still_registered {
                        // Deleted or shut down while it was starting: do not leave its kernel behind.
                        self.record.ended(owner, &id);
                        let _ = session.codebox.stop().await;
                        return Err(CodeBoxError::not_found(format!("session {id} was stopped while starting")).into());
                    }
                }
                session.touch();
                Ok((session, created))
            }
            Err(e) => {
                let mut slots = self.lock();
                if slots.get(&key).is_some_and(|s| Arc::ptr_eq(s, &slot) && s.cell.get().is_none()) {
                    slots.remove(&key);
                }
                Err(e)
            }
        }
    }

    /// Remove the owner's session `id` and stop its box. False when there was none.
    pub(crate) async fn stop(&self, owner: Owner, id: &str) -> bool {
        let removed = {
            let mut slots = self.lock();
            let key = Key { owner, id: id.to_owned() };
            match slots.get(&key) {
                Some(slot) if slot.cell.get().is_some() => slots.remove(&key),
                _ => None,
            }
        };
        match removed.and_then(|slot| slot.cell.get().cloned()) {
            Some(session) => {
                self.record.ended(owner, id);
                stop_box(&session).await;
                self.paused.remove(self.record.owner_name(owner), id);
                true
            }
            None => false,
        }
    }

    /// Stop every session past its lifetime, remembering it as expired, and forget those
    /// expired longer ago than the retention; returns how many were stopped.
    pub(crate) async fn reap_expired(&self) -> usize {
        let now = SystemTime::now();
        let expired: Vec<Arc<Session>> = {
            let mut slots = self.lock();
            let keys: Vec<Key> = slots
                .iter()
                .filter(|(_, s)| s.cell.get().is_some_and(|s| s.is_expired(now)))
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter().filter_map(|k| slots.remove(&k)).filter_map(|s| s.cell.get().cloned()).collect()
        };
        for session in &expired {
            self.expire(session);
            stop_box(session).await;
            self.paused.remove(self.record.owner_name(session.owner), &session.id);
        }
        let mut remembered = self.lock_expired();
        while remembered.front().is_some_and(|e| e.remembered_at.elapsed() >= self.expired_retention) {
            remembered.pop_front();
        }
        expired.len()
    }

    /// Pause (or stop) every session that has been idle for longer than its idle timeout;
    /// returns how many. A session is paused when it asks to be (`auto_pause`) or, asking
    /// nothing, when the server pauses idle sessions; one that cannot be paused is stopped.
    pub(crate) async fn reap_idle(&self) -> usize {
        let is_idle = |s: &Session| !s.is_paused() && s.idle_for().is_some_and(|idle| idle > s.spec.idle_timeout);
        let idle: Vec<Arc<Session>> =
            self.lock().values().filter_map(|s| s.cell.get().cloned()).filter(|s| is_idle(s)).collect();
        let mut reaped = 0;
        for session in idle {
            if session.spec.auto_pause.unwrap_or(self.pause_idle) && self.paused.enabled() {
                match self.pause(session.owner, &session.id).await {
                    Ok(_) => {
                        tracing::info!(session = %session.id, owner = %session.owner, "idle session paused");
                        reaped += 1;
                        continue;
                    }
                    Err(e) => {
                        tracing::info!(session = %session.id, error = %e, "an idle session could not be paused: stopping it");
                    }
                }
            }
            let removed = {
                let mut slots = self.lock();
                let key = Key { owner: session.owner, id: session.id.clone() };
                // Still this session, and still idle: a request may have come meanwhile.
                let current = slots.get(&key).and_then(|s| s.cell.get().cloned());
                let still = current.is_some_and(|c| Arc::ptr_eq(&c, &session) && (is_idle(&c) || c.is_paused()));
                still && slots.remove(&key).is_some()
            };
            if !removed {
                continue;
            }
            tracing::info!(session = %session.id, owner = %session.owner, "stopping idle session");
            self.record.ended(session.owner, &session.id);
            stop_box(&session).await;
            self.paused.remove(self.record.owner_name(session.owner), &session.id);
            self.metrics.session_reaped();
            reaped += 1;
        }
        reaped
    }

    /// Refuse new sessions, remove every session and stop all their boxes. The record keeps
    /// them: the next server on the same state directory answers for them as lost.
    pub(crate) async fn close(&self) {
        let sessions: Vec<Arc<Session>> = {
            let mut slots = self.lock();
            self.closed.store(true, Ordering::Release);
            slots.drain().filter_map(|(_, s)| s.cell.get().cloned()).collect()
        };
        futures::future::join_all(sessions.iter().map(|s| stop_box(s))).await;
        self.record.release();
    }

    /// Refuse new sessions from now on.
    pub(crate) fn refuse_new(&self) {
        let _slots = self.lock();
        self.closed.store(true, Ordering::Release);
    }

    /// Whether new sessions are refused (the server is draining or shutting down).
    pub(crate) fn refuses_new(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The node minted session ids carry.
    pub(crate) fn node(&self) -> Option<&crate::node::NodeId> {
        self.node.as_ref()
    }
}

async fn stop_box(session: &Session) {
    if let Err(e) = session.codebox.stop().await {
        tracing::warn!(session = %session.id, error = %e, "stopping a box failed");
    }
}

/// Stop sessions at the end of their lifetime, next to the idle reaper. Requests find an
/// expired session themselves (see [`Registry::get`]); this stops those nobody asks for.
pub(crate) async fn reap_expired(state: Arc<crate::state::AppState>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let reaped = state.registry.reap_expired().await;
        if reaped > 0 {
            tracing::info!(reaped, "sessions stopped at the end of their lifetime");
        }
    }
}

/// Pausing and resuming sessions: a paused session stays in the registry with a
/// [`PausedBox`](crate::paused::PausedBox), and on disk (see [`crate::paused`]).
impl Registry {
    /// The copy of the working directory in the snapshot of `owner_name`'s paused session
    /// `id`, where its factory says it is.
    fn paused_files(&self, owner_name: &str, id: &str) -> Option<std::path::PathBuf> {
        self.paused.box_dir(owner_name, id).and_then(|dir| self.factory.snapshot_files(&dir))
    }

    /// Register the paused sessions a state directory holds (a server starting).
    fn load_paused(&self) {
        let mut slots = self.lock();
        for (owner_name, record, disk) in self.paused.load() {
            let Some(owner) = self.record.owner_named(&owner_name) else {
                tracing::warn!(session = %record.id, "a paused session of a key this server no longer has is left alone");
                continue;
            };
            let files = self.paused_files(&owner_name, &record.id);
            let session = paused_session(owner, &record, disk, files);
            let slot = Slot { cell: OnceCell::new_with(Some(Arc::new(session))) };
            slots.insert(Key { owner, id: record.id.clone() }, Arc::new(slot));
            tracing::info!(session = %record.id, %owner, "a paused session is back on the list");
        }
    }

    /// Pause the owner's session `id`: its box writes its state to disk and stops, and the
    /// session stays, paused, until it is resumed or deleted. Pausing a paused session
    /// answers what its pause kept.
    pub(crate) async fn pause(&self, owner: Owner, id: &str) -> ApiResult<codebox_core::PauseReport> {
        let session = self.require(owner, id)?;
        let owner_name = self.record.owner_name(owner).to_owned();
        if !self.paused.enabled() {
            return Err(CodeBoxError::unsupported(
                "pause: this server keeps no state directory (codebox serve --state-dir) to pause sessions in",
            )
            .into());
        }
        if session.is_paused() {
            let _turn = self.resumes.lock().await;
            let record = self.paused.load_one(&owner_name, id);
            return record.map(|r| r.report).ok_or_else(|| self.missing(owner, id));
        }
        let report = {
            let _use = session.use_guard();
            session.codebox.pause().await?
        };
        let lifetime = session.lifetime();
        let record = crate::paused::PausedRecord {
            id: id.to_owned(),
            request: session.spec.request.clone(),
            metadata: session.spec.metadata.clone(),
            timeout_secs: lifetime.map(|l| l.timeout.as_secs()),
            idle_timeout_secs: session.spec.idle_timeout.as_secs(),
            auto_pause: session.spec.auto_pause,
            created_at: unix_secs(session.created_at),
            paused_at: unix_secs(SystemTime::now()),
            report: report.clone(),
        };
        self.paused.write(&owner_name, &record)?;
        let disk = self.paused.size(&owner_name, id);
        let key = Key { owner, id: id.to_owned() };
        let files = self.paused_files(&owner_name, id);
        let slot = Slot { cell: OnceCell::new_with(Some(Arc::new(paused_session(owner, &record, disk, files)))) };
        self.lock().insert(key.clone(), Arc::new(slot));
        self.record.ended(owner, id);
        tracing::info!(session = %id, %owner, rung = %report.rung, disk, "session paused");
        self.keep_paused_budget(&key).await?;
        Ok(report)
    }

    /// The owner's session `id` ready for its box to be used: resumed first when it is
    /// paused (as any request to a paused session does), else as [`require`](Self::require).
    pub(crate) async fn require_live(&self, owner: Owner, id: &str) -> ApiResult<Arc<Session>> {
        let session = self.require(owner, id)?;
        if !session.is_paused() {
            return Ok(session);
        }
        match self.resume(owner, id).await {
            Ok((session, _)) => Ok(session),
            // Another request resumed it meanwhile: use it as it is now.
            Err(e) => match self.require(owner, id) {
                Ok(now) if !now.is_paused() => Ok(now),
                _ => Err(e),
            },
        }
    }

    /// Resume the owner's paused session `id`: its box is made again from its snapshot and
    /// started, and the session runs on. 404 when there is no such session, 409 when it is not paused.
    pub(crate) async fn resume(&self, owner: Owner, id: &str) -> ApiResult<(Arc<Session>, codebox_core::ResumeReport)> {
        let _turn = self.resumes.lock().await;
        let session = self.require(owner, id)?;
        if !session.is_paused() {
            return Err(ApiError::new(409, ErrorKind::InvalidInput, format!("session {id} is not paused")));
        }
        if self.refuses_new() {
            // Its state stays on disk: the server that comes back on this state directory has it.
            return Err(ApiError::new(
                503,
                ErrorKind::Connection,
                format!("session {id} is paused and this server is going away; it resumes once the server is back"),
            )
            .with_retry_after(self.retry_after));
        }
        let owner_name = self.record.owner_name(owner).to_owned();
        let record = self.paused.load_one(&owner_name, id).ok_or_else(|| self.missing(owner, id))?;
        let mut request = record.request.clone();
        request.state_dir = self.paused.box_dir(&owner_name, id);
        let (codebox, report) = {
            let _start = self
                .starts
                .acquire()
                .await
                .map_err(|_| ApiError::new(503, ErrorKind::Connection, "the server is shutting down"))?;
            self.factory.resume(&request).await.map_err(|e| {
                // The box names itself by its own id; the caller knows the session's.
                let mut err = self.full_if_out_of_room(e);
                err.message = format!("session {id} cannot be resumed: {}", err.message);
                err
            })?
        };
        let spec = SessionSpec {
            request: record.request.clone(),
            metadata: record.metadata.clone(),
            timeout: record.timeout_secs.map(Duration::from_secs),
            idle_timeout: Duration::from_secs(record.idle_timeout_secs),
            auto_pause: record.auto_pause,
        };
        let mut resumed = Session::new(id.to_owned(), owner, codebox, spec);
        resumed.created_at = UNIX_EPOCH + Duration::from_secs_f64(record.created_at.max(0.0));
        let resumed = Arc::new(resumed);
        let slot = Slot { cell: OnceCell::new_with(Some(Arc::clone(&resumed))) };
        self.lock().insert(Key { owner, id: id.to_owned() }, Arc::new(slot));
        self.paused.resumed(&owner_name, id);
        self.record.started(owner, id);
        tracing::info!(session = %id, %owner, rung = %report.rung, "session resumed");
        Ok((resumed, report))
    }
}

impl Registry {
    /// Remove the sessions paused longest until the paused sessions fit the server's budget
    /// and their key's; `just_paused` goes last, and if it alone is over a budget it is
    /// removed too and the pause fails saying so.
    async fn keep_paused_budget(&self, just_paused: &Key) -> ApiResult<()> {
        let (server_budget, key_budget) = self.paused_budget;
        if server_budget.is_none() && key_budget.is_none() {
            return Ok(());
        }
        // Oldest pause first, the one just made last.
        let mut paused: Vec<(Key, u64, f64)> = self
            .lock()
            .iter()
            .filter_map(|(k, s)| s.cell.get().and_then(|s| s.paused).map(|(disk, at)| (k.clone(), disk, at)))
            .collect();
        paused.sort_by(|a, b| (&a.0 == just_paused).cmp(&(&b.0 == just_paused)).then(a.2.total_cmp(&b.2)));
        let over = |paused: &[(Key, u64, f64)]| {
            let total: u64 = paused.iter().map(|p| p.1).sum();
            let of_key: u64 = paused.iter().filter(|p| p.0.owner == just_paused.owner).map(|p| p.1).sum();
            server_budget.is_some_and(|b| total > b) || key_budget.is_some_and(|b| of_key > b)
        };
        while over(&paused) {
            let key_over = key_budget.is_some_and(|b| {
                paused.iter().filter(|p| p.0.owner == just_paused.owner).map(|p| p.1).sum::<u64>() > b
            });
            // Over the key's budget: that key's oldest goes; else the server's oldest.
            let Some(index) = paused.iter().position(|p| !key_over || p.0.owner == just_paused.owner) else { break };
            let (key, disk, _) = paused.remove(index);
            let removed = self.lock().remove(&key).and_then(|s| s.cell.get().cloned());
            if let Some(session) = removed {
                self.expire(&session);
            }
            self.paused.remove(self.record.owner_name(key.owner), &key.id);
            if &key == just_paused {
                return Err(ApiError::new(
                    507,
                    ErrorKind::TooLarge,
                    format!(
                        "session {} took {disk} bytes paused, more than this server's budget for paused sessions \
                         ({}); it was removed",
                        key.id,
                        [
                            server_budget.map(|b| format!("{b} bytes in all")),
                            key_budget.map(|b| format!("{b} bytes per key"))
                        ]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join(", ")
                    ),
                ));
            }
            tracing::info!(session = %key.id, owner = %key.owner, disk, "a paused session was removed to keep the disk budget");
        }
        Ok(())
    }
}

/// The registry's entry of a paused session: its box holds nothing, its lifetime is not
/// running.
fn paused_session(
    owner: Owner,
    record: &crate::paused::PausedRecord,
    disk: u64,
    files: Option<std::path::PathBuf>,
) -> Session {
    let spec = SessionSpec {
        request: record.request.clone(),
        metadata: record.metadata.clone(),
        timeout: None,
        idle_timeout: Duration::from_secs(record.idle_timeout_secs),
        auto_pause: record.auto_pause,
    };
    let codebox: Arc<dyn CodeBox> = Arc::new(crate::paused::PausedBox::new(&record.id, files));
    let mut session = Session::new(record.id.clone(), owner, codebox, spec);
    session.created_at = UNIX_EPOCH + Duration::from_secs_f64(record.created_at.max(0.0));
    session.paused = Some((disk, record.paused_at));
    session
}

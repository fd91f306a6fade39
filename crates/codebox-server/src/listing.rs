//! `GET /v1/sessions`: which sessions a caller asked for (`state`, `metadata.KEY=VALUE`),
//! and pages of them (`limit`, `next_token`). The body stays a JSON array, as before paging
//! existed; the next page's token travels in the `x-next-token` response header.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use codebox_core::{CodeBoxError, Result};
use codebox_http::wire::{SessionInfo, SessionState};

use crate::sessions::{Session, valid_session_id};

/// The most sessions one page may hold.
pub(crate) const MAX_PAGE: usize = 1000;

/// What a listing keeps, and from where it starts.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ListQuery {
    /// Only sessions in this state.
    pub(crate) state: Option<SessionState>,
    /// Only sessions whose metadata has each of these keys with this value.
    pub(crate) metadata: BTreeMap<String, String>,
    /// At most this many (`None`: all of them, as before paging).
    pub(crate) limit: Option<usize>,
    /// After the session this token names.
    pub(crate) after: Option<PageToken>,
}

/// Where a page ended: the creation time and id of its last session (sessions are listed
/// oldest first, ties by id).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct PageToken {
    created_nanos: u128,
    id: String,
}

impl PageToken {
    fn of(session: &Session) -> Self {
        let created_nanos = session.created_at().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
        Self { created_nanos, id: session.id.clone() }
    }

    fn encode(&self) -> String {
        format!("{}.{}", self.created_nanos, self.id)
    }

    fn decode(token: &str) -> Result<Self> {
        let bad = || CodeBoxError::invalid(format!("`next_token` {token:?} is not a token this server gave"));
        let (nanos, id) = token.split_once('.').ok_or_else(bad)?;
        let created_nanos = nanos.parse().map_err(|_| bad())?;
        if !valid_session_id(id) {
            return Err(bad());
        }
        Ok(Self { created_nanos, id: id.to_owned() })
    }
}

impl ListQuery {
    /// The query of a request's URL (`None`: no query string). Unknown parameters, bad
    /// states, limits out of range and foreign tokens are refused.
    pub(crate) fn parse(query: Option<&str>) -> Result<Self> {
        let mut out = Self::default();
        for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = crate::api::percent_decode(&key.replace('+', " "))?;
            let value = crate::api::percent_decode(&value.replace('+', " "))?;
            if let Some(meta_key) = key.strip_prefix("metadata.") {
                if meta_key.is_empty() {
                    return Err(CodeBoxError::invalid("`metadata.` must be followed by a metadata key"));
                }
                out.metadata.insert(meta_key.to_owned(), value);
                continue;
            }
            match key.as_str() {
                "state" => {
                    out.state = Some(SessionState::parse(&value).ok_or_else(|| {
                        CodeBoxError::invalid(format!(
                            "`state` {value:?} is not a session state (starting, running, stopped, error or paused)"
                        ))
                    })?)
                }
                "limit" => match value.parse::<usize>() {
                    Ok(n @ 1..=MAX_PAGE) => out.limit = Some(n),
                    _ => {
                        return Err(CodeBoxError::invalid(format!(
                            "`limit` {value:?} is not a number from 1 to {MAX_PAGE}"
                        )));
                    }
                },
                "next_token" => out.after = Some(PageToken::decode(&value)?),
                other => {
                    return Err(CodeBoxError::invalid(format!(
                        "unknown query parameter {other:?} (state, metadata.KEY, limit, next_token)"
                    )));
                }
            }
        }
        Ok(out)
    }

    /// Whether `session` passes the metadata filter (the state needs its status: see [`page`](Self::page)).
    fn metadata_matches(&self, session: &Session) -> bool {
        self.metadata.iter().all(|(k, v)| session.metadata().get(k) == Some(v))
    }

    /// One page of `sessions` (oldest first) described by `describe`, and the token of the
    /// next page when there is more.
    pub(crate) async fn page<F, Fut>(
        &self,
        sessions: Vec<Arc<Session>>,
        describe: F,
    ) -> (Vec<SessionInfo>, Option<String>)
    where
        F: Fn(Arc<Session>) -> Fut,
        Fut: std::future::Future<Output = SessionInfo>,
    {
        let candidates = sessions
            .into_iter()
            .filter(|s| self.after.as_ref().is_none_or(|after| PageToken::of(s) > *after))
            .filter(|s| self.metadata_matches(s));
        let mut infos = Vec::new();
        let mut last = None;
        let mut more = false;
        for session in candidates {
            if self.limit.is_some_and(|limit| infos.len() >= limit) {
                more = true;
                break;
            }
            let token = PageToken::of(&session);
            let info = describe(session).await;
            // Past this session, included or not: the next page starts after it.
            last = Some(token);
            if self.state.is_none_or(|state| info.state == state) {
                infos.push(info);
            }
        }
        (infos, if more { last.map(|t| t.encode()) } else { None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_and_bad_ones_are_refused() {
        let q = ListQuery::parse(Some("state=running&metadata.user=alice%20b&limit=2")).unwrap();
        assert_eq!(q.state, Some(SessionState::Running));
        assert_eq!(q.metadata.get("user").map(String::as_str), Some("alice b"));
        assert_eq!(q.limit, Some(2));
        assert_eq!(ListQuery::parse(None).unwrap(), ListQuery::default());
        let token = PageToken { created_nanos: 12, id: "a.b".into() };
        assert_eq!(PageToken::decode(&token.encode()).unwrap(), token);
        for bad in ["state=asleep", "limit=0", "limit=1001", "limit=x", "next_token=zz", "colour=red", "metadata.=x"] {
            let err = ListQuery::parse(Some(bad)).unwrap_err();
            assert_eq!(err.kind(), codebox_core::ErrorKind::InvalidInput, "{bad}");
        }
    }
}

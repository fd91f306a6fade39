//! Bearer API keys, compared in constant time, and the caller identity they map to.

use std::fmt;

use codebox_core::ApiKey;
use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// Who is calling: one configured API key, named by its position so that logs can tell
/// callers apart without ever showing a key.
///
/// Sessions belong to an owner; another owner asking for them gets 404.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Owner(u32);

impl Owner {
    /// The single owner of every session when authentication is off.
    pub(crate) const ANONYMOUS: Owner = Owner(u32::MAX);

    /// The owner whose key is at position `index` of the server's keys.
    pub(crate) fn from_index(index: u32) -> Self {
        Self(index)
    }
}

impl fmt::Debug for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Self::ANONYMOUS { f.write_str("anonymous") } else { write!(f, "key#{}", self.0) }
    }
}

/// What the `Authorization` header of a request says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Caller {
    /// A configured key (or anyone, when authentication is off).
    Known(Owner),
    /// No `Authorization: Bearer` header.
    Missing,
    /// A key that is not configured.
    Invalid,
}

impl Caller {
    /// The owner, when the caller is known.
    pub(crate) fn owner(self) -> Option<Owner> {
        match self {
            Self::Known(owner) => Some(owner),
            _ => None,
        }
    }
}

/// The accepted keys.
#[derive(Clone)]
pub(crate) struct ApiKeys {
    /// The SHA-256 of each key, in configuration order. A caller's token is hashed and
    /// compared against these, so every comparison covers 32 bytes whatever the lengths and
    /// the time taken does not tell a key's length either.
    digests: Vec<[u8; 32]>,
    no_auth: bool,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeys").field("count", &self.digests.len()).field("no_auth", &self.no_auth).finish()
    }
}

impl ApiKeys {
    pub(crate) fn new(keys: Vec<ApiKey>, no_auth: bool) -> Self {
        let digests = keys.iter().map(|key| Sha256::digest(key.expose().as_bytes()).into()).collect();
        Self { digests, no_auth }
    }

    /// Identify the caller from the request headers. Every configured key is compared,
    /// each in constant time, so the time taken says nothing about which bytes matched.
    pub(crate) fn identify(&self, headers: &HeaderMap) -> Caller {
        if self.no_auth {
            return Caller::Known(Owner::ANONYMOUS);
        }
        let Some(value) = headers.get(http::header::AUTHORIZATION) else { return Caller::Missing };
        let bytes = value.as_bytes();
        let Some(token) = bearer_token(bytes) else { return Caller::Invalid };
        let token: [u8; 32] = Sha256::digest(token).into();
        // The first matching key wins; `NONE` while none has, chosen without branching.
        const NONE: u32 = u32::MAX;
        let mut found = NONE;
        for (i, digest) in self.digests.iter().enumerate() {
            let first_match = token.ct_eq(digest) & found.ct_eq(&NONE);
            found.conditional_assign(&(i as u32), first_match);
        }
        if found == NONE { Caller::Invalid } else { Caller::Known(Owner(found)) }
    }
}

fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, auth.parse().unwrap());
        h
    }

    #[test]
    fn keys_map_to_owners() {
        let keys = ApiKeys::new(vec![ApiKey::new("alpha"), ApiKey::new("beta")], false);
        assert_eq!(keys.identify(&headers("Bearer beta")), Caller::Known(Owner(1)));
        assert_eq!(keys.identify(&headers("bearer alpha")), Caller::Known(Owner(0)));
        assert_eq!(keys.identify(&headers("Bearer alph")), Caller::Invalid);
        assert_eq!(keys.identify(&headers("Bearer alphaa")), Caller::Invalid);
        assert_eq!(keys.identify(&headers("Basic alpha")), Caller::Invalid);
        assert_eq!(keys.identify(&headers("Bearer ")), Caller::Invalid);
        assert_eq!(keys.identify(&HeaderMap::new()), Caller::Missing);
        let open = ApiKeys::new(vec![], true);
        assert_eq!(open.identify(&HeaderMap::new()), Caller::Known(Owner::ANONYMOUS));
    }

    #[test]
    fn debug_never_shows_keys() {
        let keys = ApiKeys::new(vec![ApiKey::new("s3cret-value")], false);
        assert!(!format!("{keys:?}").contains("s3cret"));
    }
}

//! Bearer API keys, compared in constant time, the caller identity they map to, and the
//! role each key carries (a normal key, or an operator key that sees every key's sessions).

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

/// What a key may do besides using its own sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Its own sessions only; another key's are 404 to it.
    Normal,
    /// Lists, inspects and stops every key's sessions too.
    Operator,
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

/// How many hexadecimal digits of a key's SHA-256 its fingerprint shows: enough to tell a
/// server's keys apart, far too few to help anyone guess a key.
const FINGERPRINT_DIGITS: usize = 12;

/// The accepted keys.
#[derive(Clone)]
pub(crate) struct ApiKeys {
    /// The SHA-256 of each key: the normal keys in configuration order, then the operator
    /// keys. A caller's token is hashed and compared against these, so every comparison
    /// covers 32 bytes whatever the lengths and the time taken does not tell a key's length
    /// either.
    digests: Vec<[u8; 32]>,
    /// How many of `digests`, from the start, are normal keys; the rest are operator keys.
    normal: usize,
    no_auth: bool,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeys")
            .field("count", &self.digests.len())
            .field("operators", &(self.digests.len() - self.normal))
            .field("no_auth", &self.no_auth)
            .finish()
    }
}

impl ApiKeys {
    /// The normal `keys`, then the `operator_keys`: owners are numbered in that order, as
    /// [`all_keys`] lists them.
    pub(crate) fn new(keys: &[ApiKey], operator_keys: &[ApiKey], no_auth: bool) -> Self {
        let digests = all_keys(keys, operator_keys).map(|key| Sha256::digest(key.expose().as_bytes()).into()).collect();
        Self { digests, normal: keys.len(), no_auth }
    }

    /// Every owner a key can identify (the anonymous one too when authentication is off).
    pub(crate) fn owners(&self) -> impl Iterator<Item = Owner> + '_ {
        let anonymous = self.no_auth.then_some(Owner::ANONYMOUS);
        (0..self.digests.len() as u32).map(Owner).chain(anonymous)
    }

    /// The role of `owner`'s key. With authentication off everyone is the one normal caller:
    /// there is no other key's session to see.
    pub(crate) fn role(&self, owner: Owner) -> Role {
        if owner != Owner::ANONYMOUS && owner.0 as usize >= self.normal && (owner.0 as usize) < self.digests.len() {
            Role::Operator
        } else {
            Role::Normal
        }
    }

    /// What names `owner`'s key in listings without showing it: the first
    /// [`FINGERPRINT_DIGITS`] hexadecimal digits of the key's SHA-256 (as
    /// `printf %s "$KEY" | sha256sum` prints them), or `anonymous` with authentication off.
    pub(crate) fn fingerprint(&self, owner: Owner) -> String {
        match self.digests.get(owner.0 as usize) {
            Some(digest) if owner != Owner::ANONYMOUS => {
                let mut hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                hex.truncate(FINGERPRINT_DIGITS);
                hex
            }
            _ => "anonymous".to_owned(),
        }
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

/// The normal keys, then the operator keys: the order owners are numbered in, here and in
/// the session record.
pub(crate) fn all_keys<'a>(keys: &'a [ApiKey], operator_keys: &'a [ApiKey]) -> impl Iterator<Item = &'a ApiKey> {
    keys.iter().chain(operator_keys)
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
        let keys = ApiKeys::new(&[ApiKey::new("alpha"), ApiKey::new("beta")], &[], false);
        assert_eq!(keys.identify(&headers("Bearer beta")), Caller::Known(Owner(1)));
        assert_eq!(keys.identify(&headers("bearer alpha")), Caller::Known(Owner(0)));
        assert_eq!(keys.identify(&headers("Bearer alph")), Caller::Invalid);
        assert_eq!(keys.identify(&headers("Bearer alphaa")), Caller::Invalid);
        assert_eq!(keys.identify(&headers("Basic alpha")), Caller::Invalid);
        assert_eq!(keys.identify(&headers("Bearer ")), Caller::Invalid);
        assert_eq!(keys.identify(&HeaderMap::new()), Caller::Missing);
        let open = ApiKeys::new(&[], &[], true);
        assert_eq!(open.identify(&HeaderMap::new()), Caller::Known(Owner::ANONYMOUS));
    }

    #[test]
    fn debug_never_shows_keys() {
        let keys = ApiKeys::new(&[ApiKey::new("s3cret-value")], &[ApiKey::new("op-s3cret")], false);
        assert!(!format!("{keys:?}").contains("s3cret"));
    }

    #[test]
    fn operator_keys_come_after_the_normal_ones() {
        let keys = ApiKeys::new(&[ApiKey::new("alpha")], &[ApiKey::new("root")], false);
        assert_eq!(keys.identify(&headers("Bearer root")), Caller::Known(Owner(1)));
        assert_eq!(keys.role(Owner(0)), Role::Normal);
        assert_eq!(keys.role(Owner(1)), Role::Operator);
        assert_eq!(keys.role(Owner(2)), Role::Normal, "no such key");
        assert_eq!(keys.owners().collect::<Vec<_>>(), [Owner(0), Owner(1)]);
        let open = ApiKeys::new(&[], &[], true);
        assert_eq!(open.role(Owner::ANONYMOUS), Role::Normal);
        assert_eq!(open.fingerprint(Owner::ANONYMOUS), "anonymous");
    }

    #[test]
    fn fingerprints_are_a_prefix_of_the_sha256() {
        let keys = ApiKeys::new(&[ApiKey::new("alpha")], &[], false);
        // printf %s alpha | sha256sum
        assert_eq!(keys.fingerprint(Owner(0)), "8ed3f6ad685b");
    }
}

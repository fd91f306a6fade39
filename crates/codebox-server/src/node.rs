//! The node a server runs as, and how it marks the session ids it mints so that a stock
//! reverse proxy in front of several servers can tell from an id alone which server owns it.
//!
//! A server with a node id `codebox-1` mints native (and E2B) session ids `codebox-1--<32 hex>`:
//! the node is everything before the last `--`, which no node id contains. The codebox-api 0.1
//! client keeps its id as an integer below 2^128, so those ids carry the node's ordinal (the
//! digits after the node id's last `-`, as in a StatefulSet pod's name) instead: the decimal
//! id is `1`, the ordinal in four digits, then 33 random digits. `deploy/nginx/codebox.conf`
//! pulls both forms apart with a regular expression; ids chosen by clients carry no node and
//! are routed by their hash there. See `docs/scaling.md`.

use codebox_core::{CodeBoxError, Result};

/// The separator between a node id and the random part of a session id it minted.
pub const NODE_SEPARATOR: &str = "--";

/// The longest node id: a DNS label, as a pod's name is.
const MAX_NODE_ID: usize = 63;

/// The largest ordinal a 0.1 id can carry (four decimal digits).
const MAX_ORDINAL: u32 = 9999;

/// A validated node id: 1 to 63 ASCII letters, digits and `-`, starting and ending with a
/// letter or digit, without `--`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeId(String);

impl NodeId {
    /// `id` as a node id, or why it cannot be one.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        let fine = !id.is_empty()
            && id.len() <= MAX_NODE_ID
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !id.starts_with('-')
            && !id.ends_with('-')
            && !id.contains(NODE_SEPARATOR);
        if fine {
            Ok(Self(id))
        } else {
            Err(CodeBoxError::invalid(format!(
                "node id {id:?} is not 1 to {MAX_NODE_ID} letters, digits and `-` (not at either end, never `--`)"
            )))
        }
    }

    /// The node id of a machine called `hostname`: its first label, lowercased, when that
    /// is a valid node id (a pod's hostname is its name).
    pub fn from_hostname(hostname: &str) -> Option<Self> {
        let label = hostname.trim().split('.').next()?.to_ascii_lowercase();
        Self::new(label).ok()
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The ordinal at the end of the id (`codebox-2` → 2), if it has one small enough for a
    /// 0.1 id to carry.
    pub fn ordinal(&self) -> Option<u32> {
        let (_, digits) = self.0.rsplit_once('-')?;
        if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().filter(|n| *n <= MAX_ORDINAL)
    }

    /// A session id minted on this node, around `random` (a lowercase hex string).
    pub(crate) fn session_id(&self, random: &str) -> String {
        format!("{}{NODE_SEPARATOR}{random}", self.0)
    }

    /// A codebox-api 0.1 id (an integer below 2^128) minted on this node from `random`:
    /// `1`, the ordinal in four digits, then 33 digits of `random`, when the node has an
    /// ordinal; `random` itself otherwise.
    pub(crate) fn api01_id(node: Option<&Self>, random: u128) -> u128 {
        match node.and_then(Self::ordinal) {
            Some(ordinal) => {
                let tail = random % 10u128.pow(33);
                (10_000 + u128::from(ordinal)) * 10u128.pow(33) + tail
            }
            None => random,
        }
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_dns_labels_without_the_separator() {
        for good in ["codebox-0", "a", "Node7", &"x".repeat(63)] {
            assert!(NodeId::new(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "a--b", "a.b", "a_b", "a b", &"x".repeat(64)] {
            let err = NodeId::new(bad).unwrap_err();
            assert!(err.to_string().contains("node id"), "{bad}: {err}");
        }
        assert_eq!(NodeId::from_hostname("Codebox-2.codebox-pods.ns.svc\n").unwrap().as_str(), "codebox-2");
        assert_eq!(NodeId::from_hostname("under_score"), None);
    }

    #[test]
    fn session_ids_carry_the_node_before_the_last_separator() {
        let node = NodeId::new("codebox-12").unwrap();
        let id = node.session_id("0123abcd");
        assert_eq!(id, "codebox-12--0123abcd");
        assert!(crate::sessions::valid_session_id(&node.session_id(&"f".repeat(32))));
        assert_eq!(id.rsplit_once(NODE_SEPARATOR).unwrap().0, "codebox-12");
    }

    #[test]
    fn api01_ids_carry_the_ordinal_in_fixed_places() {
        let node = NodeId::new("codebox-7").unwrap();
        assert_eq!(node.ordinal(), Some(7));
        for random in [0, 1, u128::MAX, 10u128.pow(33) - 1] {
            let id = NodeId::api01_id(Some(&node), random).to_string();
            assert_eq!(id.len(), 38, "{id}");
            assert!(id.starts_with("10007"), "{id}");
        }
        let last = NodeId::new("codebox-9999").unwrap();
        assert!(NodeId::api01_id(Some(&last), u128::MAX).to_string().starts_with("19999"));
        assert_eq!(NodeId::new("codebox-10000").unwrap().ordinal(), None);
        assert_eq!(NodeId::new("laptop").unwrap().ordinal(), None);
        assert_eq!(NodeId::api01_id(NodeId::new("laptop").ok().as_ref(), 42), 42);
        assert_eq!(NodeId::api01_id(None, 42), 42);
    }
}

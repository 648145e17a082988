//! API keys, kept only as SHA-256 hashes.
//!
//! Ingest's `/v1/events/<source>` and the control API both accept a key in
//! `Authorization: Bearer <key>` or `X-Api-Key: <key>` and compare its hash with every
//! stored hash in constant time, so neither the key nor which entry matched leaks
//! through timing.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The stored form of `key`: `sha256:<hex>`.
pub fn hash(key: &str) -> String {
    let digest = Sha256::digest(key.trim().as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The digest in a stored `sha256:<64 hex digits>` hash; `None` when malformed.
pub fn parse_hash(stored: &str) -> Option<[u8; 32]> {
    let hex = stored.strip_prefix("sha256:")?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(digest)
}

/// The key a request presents, from its `Authorization: Bearer` or `X-Api-Key` value.
pub fn presented<'a>(
    authorization: Option<&'a str>,
    x_api_key: Option<&'a str>,
) -> Option<&'a str> {
    x_api_key
        .or_else(|| authorization.and_then(|value| value.strip_prefix("Bearer ")))
        .map(str::trim)
        .filter(|key| !key.is_empty())
}

/// Stored key hashes, each with what it grants.
#[derive(Debug, Clone)]
pub struct KeyHashes<T> {
    entries: Vec<([u8; 32], T)>,
}

impl<T> KeyHashes<T> {
    /// Entries whose hash is malformed are left out (configuration validation names
    /// them before this is built).
    pub fn new(entries: impl IntoIterator<Item = (impl AsRef<str>, T)>) -> Self {
        Self {
            entries: entries
                .into_iter()
                .filter_map(|(stored, grant)| Some((parse_hash(stored.as_ref())?, grant)))
                .collect(),
        }
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What `key` grants. Every stored hash is compared, whatever matches.
    pub fn find(&self, key: &str) -> Option<&T> {
        let digest: [u8; 32] = Sha256::digest(key.trim().as_bytes()).into();
        let mut found = None;
        for (stored, grant) in &self.entries {
            if bool::from(stored.ct_eq(&digest)) && found.is_none() {
                found = Some(grant);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_matches_its_hash_and_nothing_else() {
        let stored = hash("sy_secret");
        assert_eq!(
            hash("test"),
            "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
        let keys = KeyHashes::new([(stored.as_str(), "ci"), (&hash("other"), "ops")]);
        assert_eq!(keys.find("sy_secret"), Some(&"ci"));
        assert_eq!(keys.find("other"), Some(&"ops"));
        assert_eq!(keys.find("sy_secreT"), None);
        assert_eq!(keys.find(""), None);
        assert!(parse_hash("sha256:abc").is_none());
        assert!(parse_hash(&"sha256:".replace(':', &format!(":{}", "zz".repeat(32)))).is_none());
    }

    #[test]
    fn the_key_comes_from_either_header() {
        assert_eq!(presented(Some("Bearer k1"), None), Some("k1"));
        assert_eq!(presented(Some("Bearer k1"), Some("k2")), Some("k2"));
        assert_eq!(presented(Some("Basic x"), None), None);
        assert_eq!(presented(Some("Bearer  "), None), None);
        assert_eq!(presented(None, None), None);
    }
}

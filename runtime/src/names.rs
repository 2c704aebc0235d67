//! Names built and parsed in one place: a subscription's name
//! (`<pipeline>/<handler>`) and a module's content hash (sha256, lowercase
//! hex), each written in several layers (config, store keys, HTTP paths,
//! CLI arguments).

use std::fmt;

use sha2::Digest as _;

/// A subscription's name: `<pipeline>/<handler>`, each part a config name
/// (no `/`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionName(String);

/// Why a text is not a subscription name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a subscription name: expected <pipeline>/<handler>, e.g. orders/validator")]
pub struct BadSubscriptionName(pub String);

impl SubscriptionName {
    /// The name of `handler` in `pipeline`.
    #[must_use]
    pub fn new(pipeline: &str, handler: &str) -> Self {
        Self(format!("{pipeline}/{handler}"))
    }

    /// Parse `<pipeline>/<handler>`.
    ///
    /// # Errors
    ///
    /// [`BadSubscriptionName`] unless the text is two non-empty parts around
    /// exactly one `/`.
    pub fn parse(text: &str) -> Result<Self, BadSubscriptionName> {
        match text.split_once('/') {
            Some((p, h)) if !p.is_empty() && !h.is_empty() && !h.contains('/') => Ok(Self(text.to_owned())),
            _ => Err(BadSubscriptionName(text.to_owned())),
        }
    }

    /// The pipeline part.
    #[must_use]
    pub fn pipeline(&self) -> &str {
        self.0.split_once('/').map_or(&self.0, |(p, _)| p)
    }

    /// The handler part.
    #[must_use]
    pub fn handler(&self) -> &str {
        self.0.split_once('/').map_or("", |(_, h)| h)
    }

    /// The whole name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SubscriptionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for SubscriptionName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<SubscriptionName> for String {
    fn from(name: SubscriptionName) -> Self {
        name.0
    }
}

/// The sha256 of a module's bytes in lowercase hex: a plugin version's
/// identity, and its key in the store's registry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentHash(String);

impl ContentHash {
    /// The hash of `bytes`.
    #[must_use]
    pub fn of(bytes: &[u8]) -> Self {
        use std::fmt::Write as _;
        let digest = sha2::Sha256::digest(bytes);
        let mut hex = String::with_capacity(64);
        for b in digest {
            let _ = write!(hex, "{b:02x}");
        }
        Self(hex)
    }

    /// The hex text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `bytes` hash to this.
    #[must_use]
    pub fn matches(&self, bytes: &[u8]) -> bool {
        Self::of(bytes) == *self
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<ContentHash> for String {
    fn from(hash: ContentHash) -> Self {
        hash.0
    }
}

impl PartialEq<str> for ContentHash {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_names_round_trip_and_refuse_bad_text() {
        let name = SubscriptionName::new("orders", "validator");
        assert_eq!(name.as_str(), "orders/validator");
        assert_eq!((name.pipeline(), name.handler()), ("orders", "validator"));
        assert_eq!(SubscriptionName::parse("orders/validator").unwrap(), name);
        for bad in ["", "orders", "/validator", "orders/", "a/b/c"] {
            assert!(SubscriptionName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn content_hash_is_sha256_hex() {
        let hash = ContentHash::of(b"abc");
        assert_eq!(hash.as_str(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(hash.matches(b"abc"));
        assert!(!hash.matches(b"abd"));
    }
}

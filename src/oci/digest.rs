//! Content digests (`sha256:<64 hex>`, `sha512:<128 hex>`) and incremental verification.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256, Sha512};

/// A validated content digest. Only sha256 and sha512 are accepted: they are the algorithms the
/// OCI image spec registers, and the only ones we can verify.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

/// A digest algorithm the OCI specification names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// `sha256`, what every registry uses.
    Sha256,
    /// `sha512`.
    Sha512,
}

/// A string that is not a valid digest (the string, shortened).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest {0:?}: expected sha256:<64 lowercase hex> or sha512:<128 lowercase hex>")]
pub struct DigestError(pub String);

impl Digest {
    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
    /// The lowercase hex of the hash.
    pub fn hex(&self) -> &str {
        &self.hex
    }
    /// The algorithm as written in the digest (`sha256`).
    pub fn algorithm_name(&self) -> &'static str {
        match self.algorithm {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }
    /// The sha256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        Digest {
            algorithm: Algorithm::Sha256,
            hex: hex::encode(Sha256::digest(bytes)),
        }
    }
    /// The digest of `bytes` with this digest's algorithm.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        let mut h = Hasher::new(self.algorithm);
        h.update(bytes);
        h.finish() == *self
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DigestError(s.chars().take(200).collect());
        let (alg, hex) = s.split_once(':').ok_or_else(err)?;
        let (algorithm, len) = match alg {
            "sha256" => (Algorithm::Sha256, 64),
            "sha512" => (Algorithm::Sha512, 128),
            _ => return Err(err()),
        };
        if hex.len() != len
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(err());
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_string(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm_name(), self.hex)
    }
}

/// Incremental hashing of a stream, for verifying a blob while it is written.
pub enum Hasher {
    /// Hashing with sha256.
    Sha256(Sha256),
    /// Hashing with sha512.
    Sha512(Sha512),
}

impl Hasher {
    /// A hasher for `algorithm`.
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }
    /// Add the next bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }
    /// The digest of every byte added.
    pub fn finish(self) -> Digest {
        match self {
            Hasher::Sha256(h) => Digest {
                algorithm: Algorithm::Sha256,
                hex: hex::encode(h.finalize()),
            },
            Hasher::Sha512(h) => Digest {
                algorithm: Algorithm::Sha512,
                hex: hex::encode(h.finalize()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let good = format!("sha256:{}", "a".repeat(64));
        let good512 = format!("sha512:{}", "0".repeat(128));
        let cases: &[(&str, bool)] = &[
            (&good, true),
            (&good512, true),
            ("sha256:abc", false),
            (&format!("sha256:{}", "A".repeat(64)), false),
            (&format!("md5:{}", "a".repeat(32)), false),
            (&format!("sha256:{}/..", "a".repeat(61)), false),
            ("sha256", false),
            ("", false),
            (&format!("sha256:{}", "a".repeat(65)), false),
        ];
        for (s, ok) in cases {
            assert_eq!(s.parse::<Digest>().is_ok(), *ok, "{s}");
        }
        assert_eq!(good.parse::<Digest>().unwrap().to_string(), good);
    }

    #[test]
    fn hashes_known_value() {
        let d = Digest::sha256_of(b"");
        assert_eq!(
            d.to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(d.matches(b""));
        assert!(!d.matches(b"x"));
    }
}

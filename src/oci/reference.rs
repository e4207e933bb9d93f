//! Repository names and manifest references (tag or digest), validated per the distribution spec.

use std::fmt;

use super::digest::Digest;

/// The longest repository name the spec allows.
pub const MAX_NAME_LEN: usize = 255;

/// Why a repository name or reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// No name at all.
    #[error("repository name is empty")]
    Empty,
    /// Longer than the limit.
    #[error("repository name is longer than {MAX_NAME_LEN} characters")]
    TooLong,
    /// A path component that breaks the OCI grammar.
    #[error("repository name component {0:?} is invalid: use lowercase letters, digits and single separators (. _ __ -)")]
    Component(String),
    /// A manifest reference that is neither a tag nor a digest.
    #[error("reference {0:?} is neither a tag ([A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}) nor a digest")]
    Reference(String),
}

/// A manifest reference: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    /// A tag, which the upstream may move.
    Tag(String),
    /// A digest: exact, immutable bytes.
    Digest(Digest),
}

impl Reference {
    /// A digest when `s` has an algorithm prefix, else a tag; both validated.
    pub fn parse(s: &str) -> Result<Reference, NameError> {
        if s.contains(':') {
            return s
                .parse::<Digest>()
                .map(Reference::Digest)
                .map_err(|_| NameError::Reference(clip(s)));
        }
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 128
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
        if ok {
            Ok(Reference::Tag(s.to_string()))
        } else {
            Err(NameError::Reference(clip(s)))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

fn clip(s: &str) -> String {
    s.chars().take(200).collect()
}

/// Check a repository name: `/`-separated components of `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`,
/// at most 255 characters. This also rules out `..`, empty components and percent-escapes.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    for component in name.split('/') {
        if !valid_component(component) {
            return Err(NameError::Component(clip(component)));
        }
    }
    Ok(())
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-", followed by an alphanumeric.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !is_alnum(b[i]) {
            return false;
        }
    }
    true
}

fn is_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let cases: &[(&str, bool)] = &[
            ("library/alpine", true),
            ("coredns/coredns", true),
            ("a/b/c/d", true),
            ("my-org/my__img.v2", true),
            ("a--b", true),
            ("", false),
            ("../etc", false),
            ("a/../b", false),
            ("a/./b", false),
            ("%2e%2e/x", false),
            ("Upper/case", false),
            ("a//b", false),
            ("/a", false),
            ("a/", false),
            ("a___b", false),
            ("a.-b", false),
            ("a:b", false),
            ("a b", false),
        ];
        for (n, ok) in cases {
            assert_eq!(validate_name(n).is_ok(), *ok, "{n}");
        }
        assert_eq!(validate_name(&"a".repeat(256)), Err(NameError::TooLong));
        assert!(validate_name(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn references() {
        assert_eq!(
            Reference::parse("latest").unwrap(),
            Reference::Tag("latest".into())
        );
        assert_eq!(
            Reference::parse("_v1.2-rc").unwrap(),
            Reference::Tag("_v1.2-rc".into())
        );
        let d = format!("sha256:{}", "b".repeat(64));
        assert!(matches!(
            Reference::parse(&d).unwrap(),
            Reference::Digest(_)
        ));
        for bad in [
            "",
            "-x",
            ".x",
            "a/b",
            "sha256:zz",
            &"t".repeat(129),
            "..",
            "a%2e",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }
}

//! Image references as people write them: `[registry/]repository[:tag][@digest]`.
//!
//! Owns: the Docker naming rules (no registry part means `docker.io`, a single-component Docker Hub
//! name gets `library/`, no tag means `latest`). Pure; used by prefetch, export and import.

use std::fmt;

use super::digest::Digest;
use super::reference::{validate_name, NameError, Reference};

/// A fully qualified image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// The registry host (with port), e.g. "docker.io", "127.0.0.1:5000".
    pub registry: String,
    /// The repository at that registry, normalised ("library/busybox").
    pub repository: String,
    /// The tag, when one was written (or `latest` when neither tag nor digest was).
    pub tag: Option<String>,
    /// The digest, when one was written.
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// Parse `s`; the error says what is wrong with it.
    pub fn parse(s: &str) -> Result<ImageRef, NameError> {
        let s = s.trim();
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (
                r,
                Some(
                    d.parse::<Digest>()
                        .map_err(|_| NameError::Reference(d.to_string()))?,
                ),
            ),
            None => (s, None),
        };
        // A tag follows the last ':' that comes after the last '/' (a port comes before it).
        let slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[slash..].rfind(':') {
            Some(i) => (&rest[..slash + i], Some(rest[slash + i + 1..].to_string())),
            None => (rest, None),
        };
        if let Some(t) = &tag {
            if !matches!(Reference::parse(t), Ok(Reference::Tag(_))) {
                return Err(NameError::Reference(t.clone()));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_ascii_lowercase(), rest.to_string())
            }
            _ => ("docker.io".to_string(), name.to_string()),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
            _ => registry,
        };
        let repository = if registry == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        validate_name(&repository)?;
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_string()),
            _ => tag,
        };
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// What to ask the registry for: the digest when one was written, else the tag.
    pub fn reference(&self) -> Reference {
        match (&self.digest, &self.tag) {
            (Some(d), _) => Reference::Digest(d.clone()),
            (None, Some(t)) => Reference::Tag(t.clone()),
            // parse() always sets one of the two.
            (None, None) => Reference::Tag("latest".into()),
        }
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_as_docker_does() {
        let d = "sha256:".to_string() + &"a".repeat(64);
        let table: &[(&str, &str)] = &[
            ("busybox", "docker.io/library/busybox:latest"),
            ("nginx:1.25", "docker.io/library/nginx:1.25"),
            ("bitnami/redis", "docker.io/bitnami/redis:latest"),
            (
                "index.docker.io/library/alpine:3",
                "docker.io/library/alpine:3",
            ),
            ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9"),
            (
                "registry.k8s.io/coredns/coredns:v1.11.1",
                "registry.k8s.io/coredns/coredns:v1.11.1",
            ),
            ("127.0.0.1:5000/team/app", "127.0.0.1:5000/team/app:latest"),
            ("127.0.0.1:5000/team/app:v2", "127.0.0.1:5000/team/app:v2"),
            ("localhost/app:v1", "localhost/app:v1"),
            ("  quay.io/a/b:c  ", "quay.io/a/b:c"),
        ];
        for (input, want) in table {
            assert_eq!(
                ImageRef::parse(input).unwrap().to_string(),
                *want,
                "{input}"
            );
        }
        let r = ImageRef::parse(&format!("ghcr.io/o/app@{d}")).unwrap();
        assert_eq!(
            (r.tag.as_deref(), r.reference().to_string()),
            (None, d.clone())
        );
        let r = ImageRef::parse(&format!("ghcr.io/o/app:v1@{d}")).unwrap();
        assert_eq!(r.to_string(), format!("ghcr.io/o/app:v1@{d}"));
        assert!(matches!(r.reference(), Reference::Digest(_)));
    }

    #[test]
    fn refuses_what_no_registry_accepts() {
        for bad in ["", "UPPER/case", "a/b:bad tag", "a@sha256:zz", "a//b", "x:"] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?}");
        }
    }
}

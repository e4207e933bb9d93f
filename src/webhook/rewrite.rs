//! The image rewrite rule: one image string in, the mirror's spelling of it (or why not) out.
//! Pure; table-tested.
//!
//! `nginx` -> `<mirror>/docker.io/library/nginx`; `registry.k8s.io/pause:3.9@sha256:..` ->
//! `<mirror>/registry.k8s.io/pause:3.9@sha256:..` (or `<host>/pause:3.9@sha256:..` for a registry
//! with its own mirror host). The tag and the digest are kept exactly as written: no tag is
//! added where none was (the kubelet's `latest` and its pull policy stay as they were).

use std::collections::HashMap;

use crate::oci::glob_match;
use crate::oci::ImageRef;

use super::config::{canonical, WebhookConfig};

/// Why an image was left as it is (the `reason` label of the skips counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Skip {
    /// It already names the mirror (or one of its registry hosts).
    AlreadyMirrored,
    /// Its registry is not one the configuration mirrors.
    NotMirrored,
    /// It matches `exclude_images`.
    ExcludedImage,
    /// It is not an image reference (the kubelet will refuse it anyway).
    Unparseable,
    /// The object's namespace is excluded (or not included).
    ExcludedNamespace,
    /// The object carries `regmirror.io/rewrite: "false"`.
    OptedOut,
    /// A kind the webhook does not rewrite, or a workload while `workloads = false`.
    UnsupportedKind,
}

impl Skip {
    /// The metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Skip::AlreadyMirrored => "already_mirrored",
            Skip::NotMirrored => "registry_not_mirrored",
            Skip::ExcludedImage => "excluded_image",
            Skip::Unparseable => "unparseable",
            Skip::ExcludedNamespace => "excluded_namespace",
            Skip::OptedOut => "opted_out",
            Skip::UnsupportedKind => "unsupported_kind",
        }
    }
}

/// A rewritten image and the registry it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rewritten {
    pub image: String,
    pub registry: String,
}

/// The rule, built once from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct Rewriter {
    /// Registry (canonical) -> where its repositories live: "mirror/prefix" or "host".
    targets: HashMap<String, String>,
    /// Lower-case hosts that mean "already on the mirror".
    mirror_hosts: Vec<String>,
    exclude_images: Vec<String>,
}

impl Rewriter {
    pub(crate) fn new(c: &WebhookConfig) -> Rewriter {
        let mirror = c.mirror.to_ascii_lowercase();
        let mut mirror_hosts = vec![mirror.clone()];
        let targets = c
            .registries
            .iter()
            .map(|r| {
                let target = match &r.host {
                    Some(h) => {
                        mirror_hosts.push(h.to_ascii_lowercase());
                        h.to_ascii_lowercase()
                    }
                    None => format!("{mirror}/{}", r.prefix.as_deref().unwrap_or(&r.name)),
                };
                (canonical(&r.name), target)
            })
            .collect();
        Rewriter {
            targets,
            mirror_hosts,
            exclude_images: c.exclude_images.clone(),
        }
    }

    /// The mirror's spelling of `image`, or why it stays.
    pub(crate) fn rewrite(&self, image: &str) -> Result<Rewritten, Skip> {
        let first = image
            .split('/')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if image.contains('/') && self.mirror_hosts.contains(&first) {
            return Err(Skip::AlreadyMirrored);
        }
        let parsed = ImageRef::parse(image).map_err(|_| Skip::Unparseable)?;
        if image.trim() != image {
            return Err(Skip::Unparseable);
        }
        let Some(target) = self.targets.get(&parsed.registry) else {
            return Err(Skip::NotMirrored);
        };
        let name = parsed.name();
        if self.exclude_images.iter().any(|g| glob_match(g, &name)) {
            return Err(Skip::ExcludedImage);
        }
        let mut out = format!("{target}/{}", parsed.repository);
        // parse() fills in `latest` when neither tag nor digest is written; keep what was written.
        let before_digest = image.split('@').next().unwrap_or_default();
        let last = before_digest.rsplit('/').next().unwrap_or_default();
        if let (Some(tag), true) = (&parsed.tag, last.contains(':')) {
            out.push(':');
            out.push_str(tag);
        }
        if let Some(d) = &parsed.digest {
            out.push('@');
            out.push_str(&d.to_string());
        }
        Ok(Rewritten {
            image: out,
            registry: parsed.registry,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewriter() -> Rewriter {
        let c: WebhookConfig = toml::from_str(
            r#"
            tls_cert = "/c"
            tls_key = "/k"
            mirror = "Mirror.example.com:5000"
            exclude_images = ["docker.io/library/busybox", "ghcr.io/private/*"]
            [[registry]]
            name = "docker.io"
            [[registry]]
            name = "ghcr.io"
            [[registry]]
            name = "10.0.0.5:5001"
            prefix = "local"
            [[registry]]
            name = "registry.k8s.io"
            host = "k8s.mirror.example.com"
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        Rewriter::new(&c)
    }

    #[test]
    fn rewrite_table() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let m = "mirror.example.com:5000";
        let table: Vec<(String, Result<String, Skip>)> = vec![
            ("nginx".into(), Ok(format!("{m}/docker.io/library/nginx"))),
            (
                "nginx:1.25".into(),
                Ok(format!("{m}/docker.io/library/nginx:1.25")),
            ),
            (
                "library/nginx:latest".into(),
                Ok(format!("{m}/docker.io/library/nginx:latest")),
            ),
            (
                "docker.io/bitnami/redis".into(),
                Ok(format!("{m}/docker.io/bitnami/redis")),
            ),
            (
                "index.docker.io/library/alpine:3".into(),
                Ok(format!("{m}/docker.io/library/alpine:3")),
            ),
            (
                format!("nginx@{d}"),
                Ok(format!("{m}/docker.io/library/nginx@{d}")),
            ),
            (
                format!("ghcr.io/o/app:v1@{d}"),
                Ok(format!("{m}/ghcr.io/o/app:v1@{d}")),
            ),
            (
                "10.0.0.5:5001/team/app:2".into(),
                Ok(format!("{m}/local/team/app:2")),
            ),
            (
                "registry.k8s.io/pause:3.9".into(),
                Ok("k8s.mirror.example.com/pause:3.9".into()),
            ),
            (
                format!("registry.k8s.io/coredns/coredns@{d}"),
                Ok(format!("k8s.mirror.example.com/coredns/coredns@{d}")),
            ),
            (
                format!("{m}/docker.io/library/nginx"),
                Err(Skip::AlreadyMirrored),
            ),
            (
                "MIRROR.example.com:5000/ghcr.io/o/app".into(),
                Err(Skip::AlreadyMirrored),
            ),
            (
                "k8s.mirror.example.com/pause:3.9".into(),
                Err(Skip::AlreadyMirrored),
            ),
            (
                "quay.io/prometheus/node-exporter".into(),
                Err(Skip::NotMirrored),
            ),
            ("10.0.0.5:5002/app".into(), Err(Skip::NotMirrored)),
            ("busybox:1.36".into(), Err(Skip::ExcludedImage)),
            ("ghcr.io/private/tool".into(), Err(Skip::ExcludedImage)),
            ("Nginx".into(), Err(Skip::Unparseable)),
            ("nginx:".into(), Err(Skip::Unparseable)),
            ("nginx@sha256:short".into(), Err(Skip::Unparseable)),
            (" nginx".into(), Err(Skip::Unparseable)),
        ];
        let rw = rewriter();
        for (input, want) in table {
            let got = rw.rewrite(&input).map(|r| r.image);
            assert_eq!(got, want, "{input}");
            // Idempotent: the rewritten image is left alone the second time.
            if let Ok(out) = &got {
                assert_eq!(rw.rewrite(out), Err(Skip::AlreadyMirrored), "{out}");
            }
        }
    }
}

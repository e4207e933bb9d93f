//! The webhook's own TOML file (`regmirror webhook --config FILE`): where it listens, its
//! certificate, the mirror it rewrites to, which registries are mirrored and how their names map,
//! and which namespaces and images it leaves alone. Pure parsing and checks.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A mistake in the webhook's configuration; every message names the file and the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not TOML of the expected shape.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A key has a value the webhook cannot use.
    #[error("{path}: `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// One mirrored registry and where its images are found on the mirror.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RegistryEntry {
    /// The registry as image names write it: "docker.io", "registry.k8s.io", "10.0.0.5:5000".
    /// Docker Hub's other spellings (index.docker.io, registry-1.docker.io, no registry at all)
    /// count as "docker.io".
    pub name: String,
    /// Path prefix on the mirror (`<mirror>/<prefix>/<repository>`): the registry's name or one of
    /// its `aliases` in the mirror's `[[upstream]]`. Default: `name`. Needed for a name with a
    /// port, since image paths cannot hold a ':'.
    pub prefix: Option<String>,
    /// A host name of the mirror that stands for this registry alone (one of its upstream's
    /// `hosts`): images become `<host>/<repository>`. When set, `prefix` is not used.
    pub host: Option<String>,
}

/// The webhook's configuration file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct WebhookConfig {
    /// HTTPS listen address.
    pub listen: String,
    /// PEM certificate chain of the listener (re-read when it changes, as cert-manager rotates it).
    pub tls_cert: PathBuf,
    /// PEM private key of `tls_cert`.
    pub tls_key: PathBuf,
    /// How often the certificate files are checked for changes, in seconds (0: only on SIGHUP).
    pub tls_reload_interval_secs: u64,
    /// Longest TLS handshake, in seconds.
    pub tls_handshake_timeout_secs: u64,
    /// The mirror as image names write it, `host[:port]`: "mirror.example.com",
    /// "regmirror.regmirror.svc:5000".
    pub mirror: String,
    /// The registries whose images are rewritten; images of other registries are left alone.
    #[serde(rename = "registry")]
    pub registries: Vec<RegistryEntry>,
    /// Namespaces whose objects are never changed (besides the MutatingWebhookConfiguration's
    /// namespaceSelector, which also selects by namespace label).
    pub exclude_namespaces: Vec<String>,
    /// When not empty, only objects in these namespaces are changed.
    pub include_namespaces: Vec<String>,
    /// Images left alone: globs (`*` any run) over the normalised name without tag or digest,
    /// e.g. "docker.io/library/busybox", "ghcr.io/my-org/*".
    pub exclude_images: Vec<String>,
    /// Rewrite the pod templates of Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs and
    /// CronJobs as well as Pods (then `kubectl get deploy -o yaml` shows the mirror too).
    pub workloads: bool,
    /// Log format: "text" or "json".
    pub log_format: String,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            listen: "0.0.0.0:8443".into(),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            tls_reload_interval_secs: 10,
            tls_handshake_timeout_secs: 10,
            mirror: String::new(),
            registries: Vec::new(),
            exclude_namespaces: vec!["kube-system".into()],
            include_namespaces: Vec::new(),
            exclude_images: Vec::new(),
            workloads: true,
            log_format: "text".into(),
        }
    }
}

/// The annotation that keeps one object (or a pod template's pods) as written: `"false"`.
pub(crate) const OPT_OUT_ANNOTATION: &str = "regmirror.io/rewrite";

impl WebhookConfig {
    /// Read, parse and check `path`.
    pub(crate) fn load(path: &Path) -> Result<WebhookConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config: WebhookConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                path: path.to_path_buf(),
                key,
                message,
            })?;
        Ok(config)
    }

    /// The first problem, as (key, what to change).
    pub(crate) fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: &str| Err((k.to_string(), m.to_string()));
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad("listen", "expected an address such as \"0.0.0.0:8443\"");
        }
        if self.tls_cert.as_os_str().is_empty() || self.tls_key.as_os_str().is_empty() {
            return bad(
                "tls_cert",
                "the webhook serves HTTPS only: set tls_cert and tls_key (PEM files)",
            );
        }
        if self.tls_handshake_timeout_secs == 0 {
            return bad("tls_handshake_timeout_secs", "must be at least 1");
        }
        if !is_host_port(&self.mirror) {
            return bad(
                "mirror",
                "expected the mirror as image names write it, host[:port] without scheme or path, e.g. \"mirror.example.com:5000\"",
            );
        }
        if self.registries.is_empty() {
            return bad(
                "registry",
                "name at least one mirrored registry: [[registry]] name = \"docker.io\"",
            );
        }
        for (i, r) in self.registries.iter().enumerate() {
            let k = |f: &str| format!("registry[{i}].{f}");
            if !is_host_port(&r.name) {
                return bad(
                    &k("name"),
                    "expected a registry host[:port], e.g. \"ghcr.io\"",
                );
            }
            if let Some(h) = &r.host {
                if !is_host_port(h) {
                    return bad(&k("host"), "expected a host[:port] of the mirror");
                }
            } else {
                let prefix = r.prefix.as_deref().unwrap_or(&r.name);
                if !is_path_component(prefix) {
                    return bad(
                        &k("prefix"),
                        &format!("{prefix:?} cannot be a path segment of an image name (lower-case letters, digits, '.', '-', '_'; no port): set `prefix` to one of the upstream's aliases, or `host`"),
                    );
                }
            }
            if self.registries[..i]
                .iter()
                .any(|o| canonical(&o.name) == canonical(&r.name))
            {
                return bad(&k("name"), "listed twice");
            }
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return bad("log_format", "expected \"text\" or \"json\"");
        }
        Ok(())
    }
}

/// Docker Hub's spellings folded to "docker.io"; lower case.
pub(crate) fn canonical(registry: &str) -> String {
    match registry.to_ascii_lowercase().as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".into(),
        other => other.into(),
    }
}

fn is_host_port(s: &str) -> bool {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || s.starts_with('[') => (h, Some(p)),
        _ => (s, None),
    };
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'))
        && !host.starts_with(['.', '-'])
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

fn is_path_component(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str =
        "tls_cert = \"/c\"\ntls_key = \"/k\"\nmirror = \"mirror.example.com:5000\"\n";

    #[test]
    fn mistakes_name_the_key() {
        let cases = [
            (
                "listen = \"nowhere\"\n[[registry]]\nname = \"docker.io\"",
                "listen",
            ),
            (
                "[[registry]]\nname = \"docker.io\"\nprefix = \"Bad:1\"",
                "registry[0].prefix",
            ),
            (
                "[[registry]]\nname = \"10.0.0.5:5000\"",
                "registry[0].prefix",
            ),
            ("[[registry]]\nname = \"http://x\"", "registry[0].name"),
            ("", "registry"),
            (
                "[[registry]]\nname = \"docker.io\"\n[[registry]]\nname = \"index.docker.io\"",
                "registry[1].name",
            ),
            (
                "log_format = \"xml\"\n[[registry]]\nname = \"docker.io\"",
                "log_format",
            ),
        ];
        for (extra, key) in cases {
            let c: WebhookConfig = toml::from_str(&format!("{BASE}{extra}")).unwrap();
            assert_eq!(c.validate().unwrap_err().0, key, "{extra}");
        }
        let no_tls: WebhookConfig =
            toml::from_str("mirror = \"m\"\n[[registry]]\nname = \"docker.io\"").unwrap();
        assert_eq!(no_tls.validate().unwrap_err().0, "tls_cert");
        let bad_mirror: WebhookConfig = toml::from_str(
            "tls_cert = \"/c\"\ntls_key = \"/k\"\nmirror = \"https://m/x\"\n[[registry]]\nname = \"docker.io\"",
        )
        .unwrap();
        assert_eq!(bad_mirror.validate().unwrap_err().0, "mirror");
        let ok: WebhookConfig = toml::from_str(&format!(
            "{BASE}[[registry]]\nname = \"docker.io\"\n[[registry]]\nname = \"10.0.0.5:5000\"\nprefix = \"local\"\n[[registry]]\nname = \"registry.k8s.io\"\nhost = \"k8s.mirror.example.com\""
        ))
        .unwrap();
        ok.validate().unwrap();
        assert!(toml::from_str::<WebhookConfig>("unknown_key = 1").is_err());
    }
}

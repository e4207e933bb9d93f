//! `[auth]` (client authentication) and `[[access]]` (who may pull what), and their checks.
//!
//! Parsing and checking only: the htpasswd file is read by the edge at start-up, not here.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{invalid, Config, ConfigError};

/// Client authentication. Absent from the file: every client is admitted without credentials.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// htpasswd file of the users (bcrypt entries, as `htpasswd -B` writes them). Reloaded when
    /// the file changes (checked at most once a second).
    pub htpasswd: Option<PathBuf>,
    /// The token endpoint URL clients are sent to (`WWW-Authenticate: Bearer realm=...`). Unset:
    /// `<scheme>://<Host of the request>/token`, the scheme being the listener's. Set it when a
    /// reverse proxy terminates TLS in front of regmirror (`X-Forwarded-Proto` is not believed).
    pub realm: Option<String>,
    /// The `service` of the challenge and the audience of the tokens.
    pub service: String,
    /// Seconds a token issued by the token endpoint is valid.
    pub token_ttl_secs: u64,
    /// File holding the HS256 key tokens are signed with (at least 32 bytes). Unset:
    /// `<data_dir>/auth/token.key`, generated at the first start and kept.
    pub token_key_file: Option<PathBuf>,
    /// Let clients without credentials pull from every upstream (per upstream:
    /// `[[upstream]] anonymous_pull`).
    pub anonymous_pull: bool,
    /// `/metrics` only for authenticated users (Prometheus `basic_auth` with an htpasswd user);
    /// default: open, as exporters usually are (keep it off the internet by other means then).
    pub protect_metrics: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            htpasswd: None,
            realm: None,
            service: "regmirror".into(),
            token_ttl_secs: 900,
            token_key_file: None,
            anonymous_pull: false,
            protect_metrics: false,
        }
    }
}

/// One rule of the access policy. Rules are tried in order; the first that matches the client,
/// the upstream and the repository decides.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AccessRule {
    /// Who: user names of the htpasswd file (`*` wildcard: `"*"` is every authenticated user)
    /// and `"anonymous"` for clients without credentials. Empty: everyone.
    pub users: Vec<String>,
    /// Upstream names (`*` wildcard), e.g. "docker.io". Empty: every upstream.
    pub upstreams: Vec<String>,
    /// Repositories on the upstream (`*` matches any characters, `/` included), e.g.
    /// "library/*". Empty: every repository.
    pub repositories: Vec<String>,
    /// "allow" or "deny".
    pub action: AccessAction,
    /// What a denied client reads (`403 DENIED`), e.g. "this image is not mirrored here, see
    /// https://wiki.example/mirror".
    pub message: Option<String>,
}

/// What a matching [`AccessRule`] decides.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessAction {
    /// Admit the request.
    #[default]
    Allow,
    /// Refuse it with the rule's message.
    Deny,
}

/// The user name an access rule uses for clients without credentials.
pub const ANONYMOUS: &str = "anonymous";

impl Config {
    /// Check `[auth]`, `[[access]]` and the upstreams' access keys.
    pub(super) fn validate_access(&self) -> Result<(), ConfigError> {
        if let Some(a) = &self.auth {
            if a.htpasswd.is_none() {
                return Err(invalid(
                    "auth.htpasswd",
                    "required in [auth]: the htpasswd file of the users (htpasswd -Bc FILE USER)",
                ));
            }
            if let Some(p) = &a.htpasswd {
                std::fs::metadata(p)
                    .map_err(|e| invalid("auth.htpasswd", format!("{}: {e}", p.display())))?;
            }
            if let Some(r) = &a.realm {
                let u =
                    url::Url::parse(r).map_err(|e| invalid("auth.realm", format!("{r}: {e}")))?;
                if !matches!(u.scheme(), "http" | "https") {
                    return Err(invalid(
                        "auth.realm",
                        format!("{r}: expected an http(s) URL"),
                    ));
                }
            }
            if a.service.is_empty() || a.service.contains('"') {
                return Err(invalid("auth.service", "must be non-empty, without '\"'"));
            }
            if a.token_ttl_secs < 60 {
                return Err(invalid("auth.token_ttl_secs", "must be at least 60"));
            }
        }
        let anonymous_upstream = self.upstreams.iter().any(|u| u.anonymous_pull.is_some());
        if self.auth.is_none() && anonymous_upstream {
            return Err(invalid(
                "upstream.anonymous_pull",
                "has no effect without [auth]: every client may pull when authentication is off",
            ));
        }
        for (i, r) in self.access.iter().enumerate() {
            let key = |f: &str| format!("access[{i}].{f}");
            let named_users = r.users.iter().any(|u| u != ANONYMOUS);
            if self.auth.is_none() && named_users {
                return Err(invalid(
                    key("users"),
                    "names users, but there is no [auth] to authenticate them",
                ));
            }
            for (field, list) in [
                ("users", &r.users),
                ("upstreams", &r.upstreams),
                ("repositories", &r.repositories),
            ] {
                if list.iter().any(|p| p.is_empty()) {
                    return Err(invalid(
                        key(field),
                        "an empty pattern matches nothing; leave the key out to match all",
                    ));
                }
            }
            for p in &r.upstreams {
                if !p.contains('*') && self.upstream(p).is_none() {
                    return Err(invalid(
                        key("upstreams"),
                        format!(
                            "{p:?} is not a configured upstream (known: {})",
                            self.upstream_names()
                        ),
                    ));
                }
            }
            if r.action == AccessAction::Allow && r.message.is_some() {
                return Err(invalid(
                    key("message"),
                    "only a \"deny\" rule shows a message",
                ));
            }
        }
        for (i, u) in self.upstreams.iter().enumerate() {
            let key = |f: &str| format!("upstream[{i}].{f} (name = {:?})", u.name);
            if u.allow.iter().chain(&u.deny).any(|p| p.is_empty()) {
                return Err(invalid(
                    key("allow / deny"),
                    "an empty pattern matches nothing",
                ));
            }
            if u.deny_message.is_some() && u.allow.is_empty() && u.deny.is_empty() {
                return Err(invalid(
                    key("deny_message"),
                    "is shown for repositories refused by `allow` or `deny`, and neither is set",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<(), String> {
        let mut c = Config::from_toml(text)?;
        c.merge_builtins();
        c.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn access_keys_are_named_in_errors() {
        let cases = [
            ("[auth]\n", "auth.htpasswd"),
            (
                "[auth]\nhtpasswd = \"/nonexistent/htpasswd\"\n",
                "auth.htpasswd",
            ),
            (
                "[auth]\nhtpasswd = \"/dev/null\"\nrealm = \"nope\"\n",
                "auth.realm",
            ),
            (
                "[auth]\nhtpasswd = \"/dev/null\"\ntoken_ttl_secs = 5\n",
                "auth.token_ttl_secs",
            ),
            (
                "[[upstream]]\nname = \"a.io\"\nanonymous_pull = true\n",
                "anonymous_pull",
            ),
            ("[[access]]\nusers = [\"alice\"]\n", "access[0].users"),
            (
                "[[access]]\nupstreams = [\"nope.io\"]\n",
                "access[0].upstreams",
            ),
            (
                "[[access]]\nrepositories = [\"\"]\n",
                "access[0].repositories",
            ),
            ("[[access]]\naction = \"maybe\"\n", "action"),
            ("[[access]]\nmessage = \"hi\"\n", "access[0].message"),
            (
                "[[upstream]]\nname = \"a.io\"\ndeny_message = \"x\"\n",
                "deny_message",
            ),
        ];
        for (text, key) in cases {
            let err = check(text).unwrap_err();
            assert!(err.contains(key), "{text:?} -> {err}");
        }
        check(
            "[auth]\nhtpasswd = \"/dev/null\"\n[[upstream]]\nname = \"a.io\"\nanonymous_pull = true\n\
             deny = [\"x/*\"]\ndeny_message = \"no\"\n[[access]]\nusers = [\"anonymous\", \"ci-*\"]\n\
             upstreams = [\"a.io\", \"*.k8s.io\"]\naction = \"deny\"\nmessage = \"m\"\n",
        )
        .unwrap();
    }
}

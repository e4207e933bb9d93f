//! The access policy: may this client pull this repository of this upstream?
//!
//! Pure: built once from the configuration (`[[access]]` rules, each upstream's `allow` / `deny`
//! lists and `anonymous_pull`), then asked per request. Decides in this order:
//! 1. the upstream's lists, which bind everyone (`403 DENIED` with `deny_message`);
//! 2. the first `[[access]]` rule matching the client, upstream and repository;
//! 3. no rule matched: an authenticated user may pull; a client without credentials may where
//!    anonymous pulls are on (always when authentication is off).
//!
//! A client without credentials that a rule refuses *as anonymous* (the rule names
//! `"anonymous"`) is asked to authenticate instead of denied, since Docker clients send their
//! credentials only after a `401`.

use std::collections::HashMap;

use crate::config::{AccessAction, AccessRule, Config, ANONYMOUS};
use crate::oci::glob_match;

use super::Scope;

/// Who is asking, once authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Who<'a> {
    /// No credentials (or an anonymous token).
    Anonymous,
    /// A user of the htpasswd file.
    User(&'a str),
}

/// What the policy says about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Admit it.
    Allow,
    /// Refuse it with this message, whoever the client is.
    Deny(String),
    /// A client without credentials may not: ask it to authenticate.
    Authenticate,
}

/// One upstream's own lists.
#[derive(Debug, Clone, Default)]
struct UpstreamRules {
    allow: Vec<String>,
    deny: Vec<String>,
    deny_message: Option<String>,
    anonymous_pull: Option<bool>,
}

/// The policy of one server.
#[derive(Debug, Clone, Default)]
pub(crate) struct Policy {
    /// Authentication is on: anonymous clients may be asked for credentials.
    auth: bool,
    /// `auth.anonymous_pull`.
    anonymous_default: bool,
    rules: Vec<AccessRule>,
    upstreams: HashMap<String, UpstreamRules>,
}

impl Policy {
    /// The policy `config` describes.
    pub(crate) fn from_config(config: &Config) -> Policy {
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| {
                let rules = UpstreamRules {
                    allow: u.allow.clone(),
                    deny: u.deny.clone(),
                    deny_message: u.deny_message.clone(),
                    anonymous_pull: u.anonymous_pull,
                };
                (u.name.clone(), rules)
            })
            .collect();
        Policy {
            auth: config.auth.is_some(),
            anonymous_default: config.auth.as_ref().is_some_and(|a| a.anonymous_pull),
            rules: config.access.clone(),
            upstreams,
        }
    }

    /// Whether a client without credentials may pull what no rule says otherwise
    /// (`[auth] anonymous_pull`, or authentication off).
    pub(crate) fn anonymous_by_default(&self) -> bool {
        !self.auth || self.anonymous_default
    }

    /// Whether a client without credentials may pull anything at all (the token endpoint then
    /// hands out anonymous tokens).
    pub(crate) fn anonymous_possible(&self) -> bool {
        !self.auth
            || self.anonymous_default
            || self
                .upstreams
                .values()
                .any(|u| u.anonymous_pull == Some(true))
            || self.rules.iter().any(|r| {
                r.action == AccessAction::Allow
                    && (r.users.is_empty() || r.users.iter().any(|u| u == ANONYMOUS))
            })
    }

    /// The decision for `who` asking for `scope`.
    pub(crate) fn decide(&self, who: Who<'_>, scope: &Scope<'_>) -> Decision {
        let up = self.upstreams.get(scope.upstream);
        if let Some(up) = up {
            let listed = |list: &[String]| list.iter().any(|p| glob_match(p, scope.repository));
            if (!up.allow.is_empty() && !listed(&up.allow)) || listed(&up.deny) {
                return Decision::Deny(up.deny_message.clone().unwrap_or_else(|| {
                    format!(
                        "{}/{} is not available through this mirror",
                        scope.upstream, scope.repository
                    )
                }));
            }
        }
        if let Some(rule) = self.rules.iter().find(|r| matches(r, who, scope)) {
            return match rule.action {
                AccessAction::Allow => Decision::Allow,
                AccessAction::Deny
                    if self.auth && who == Who::Anonymous && !rule.users.is_empty() =>
                {
                    Decision::Authenticate
                }
                AccessAction::Deny => Decision::Deny(rule.message.clone().unwrap_or_else(|| {
                    let client = match who {
                        Who::Anonymous => "anonymous clients".to_string(),
                        Who::User(u) => format!("user {u:?}"),
                    };
                    format!(
                        "{client} may not pull {}/{} from this mirror",
                        scope.upstream, scope.repository
                    )
                })),
            };
        }
        match who {
            Who::User(_) => Decision::Allow,
            Who::Anonymous if !self.auth => Decision::Allow,
            Who::Anonymous => {
                let anonymous = up
                    .and_then(|u| u.anonymous_pull)
                    .unwrap_or(self.anonymous_default);
                if anonymous {
                    Decision::Allow
                } else {
                    Decision::Authenticate
                }
            }
        }
    }
}

/// Whether `rule` is about this client, upstream and repository.
fn matches(rule: &AccessRule, who: Who<'_>, scope: &Scope<'_>) -> bool {
    let any = |list: &[String], s: &str| list.is_empty() || list.iter().any(|p| glob_match(p, s));
    let user = rule.users.is_empty()
        || rule.users.iter().any(|p| match who {
            Who::Anonymous => p == ANONYMOUS,
            Who::User(u) => p != ANONYMOUS && glob_match(p, u),
        });
    user && any(&rule.upstreams, scope.upstream) && any(&rule.repositories, scope.repository)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::Action;

    fn policy(toml: &str) -> Policy {
        let mut c = Config::from_toml(toml).unwrap();
        c.no_builtin_upstreams = true;
        Policy::from_config(&c)
    }

    fn scope<'a>(upstream: &'a str, repository: &'a str) -> Scope<'a> {
        Scope {
            upstream,
            repository,
            action: Action::Pull,
        }
    }

    const AUTH: &str = "[auth]\nhtpasswd = \"/dev/null\"\n";

    #[test]
    fn decisions() {
        use Decision::*;
        use Who::*;
        let text = format!(
            "{AUTH}\
             [[upstream]]\nname = \"docker.io\"\nanonymous_pull = true\ndeny = [\"*/xmrig*\"]\n\
             deny_message = \"not mirrored here, see https://wiki.example/mirror\"\n\
             [[upstream]]\nname = \"ghcr.io\"\n\
             [[upstream]]\nname = \"quay.io\"\nallow = [\"prometheus/*\"]\n\
             [[access]]\nusers = [\"intern\"]\nrepositories = [\"secret/*\"]\naction = \"deny\"\n\
             message = \"ask the platform team\"\n\
             [[access]]\nusers = [\"anonymous\"]\nrepositories = [\"library/private*\"]\naction = \"deny\"\n\
             [[access]]\nusers = [\"anonymous\"]\nupstreams = [\"ghcr.io\"]\nrepositories = [\"public/*\"]\n\
             [[access]]\nusers = [\"ci-*\"]\nupstreams = [\"ghcr.io\"]\naction = \"deny\"\n"
        );
        let p = policy(&text);
        let notmirrored = Deny("not mirrored here, see https://wiki.example/mirror".into());
        let cases: Vec<(Who, &str, &str, Decision)> = vec![
            // docker.io: anonymous pulls on, its deny list binds everyone.
            (Anonymous, "docker.io", "library/alpine", Allow),
            (User("alice"), "docker.io", "library/alpine", Allow),
            (Anonymous, "docker.io", "someone/xmrig", notmirrored.clone()),
            (
                User("alice"),
                "docker.io",
                "someone/xmrig-cuda",
                notmirrored,
            ),
            // a rule naming anonymous asks for credentials; a user passes.
            (Anonymous, "docker.io", "library/private-x", Authenticate),
            (User("alice"), "docker.io", "library/private-x", Allow),
            // ghcr.io: no anonymous pulls, except where a rule allows them.
            (Anonymous, "ghcr.io", "org/app", Authenticate),
            (Anonymous, "ghcr.io", "public/app", Allow),
            (User("bob"), "ghcr.io", "org/app", Allow),
            // user globs and the operator's message.
            (
                User("ci-runner"),
                "ghcr.io",
                "org/app",
                Deny("user \"ci-runner\" may not pull ghcr.io/org/app from this mirror".into()),
            ),
            (
                User("intern"),
                "ghcr.io",
                "secret/x",
                Deny("ask the platform team".into()),
            ),
            (User("intern2"), "ghcr.io", "secret/x", Allow),
            // quay.io: an allow list.
            (User("alice"), "quay.io", "prometheus/node-exporter", Allow),
            (
                User("alice"),
                "quay.io",
                "coreos/etcd",
                Deny("quay.io/coreos/etcd is not available through this mirror".into()),
            ),
            // an upstream the policy does not know (allow_any_upstream): the defaults.
            (Anonymous, "other.io", "a/b", Authenticate),
            (User("alice"), "other.io", "a/b", Allow),
        ];
        for (who, up, repo, want) in cases {
            assert_eq!(p.decide(who, &scope(up, repo)), want, "{who:?} {up} {repo}");
        }
        assert!(p.anonymous_possible());
    }

    #[test]
    fn without_auth_everyone_is_anonymous_and_admitted() {
        use Decision::*;
        let p = policy("");
        assert_eq!(
            p.decide(Who::Anonymous, &scope("docker.io", "library/a")),
            Allow
        );
        assert!(p.anonymous_possible());
        // Lists and rules still apply, and a refusal is a denial: there is nothing to log in to.
        let p = policy(
            "[[upstream]]\nname = \"docker.io\"\ndeny = [\"bad/*\"]\n\
             [[access]]\nusers = [\"anonymous\"]\nrepositories = [\"x/*\"]\naction = \"deny\"\nmessage = \"no\"\n",
        );
        let cases = [
            (
                "bad/a",
                Deny("docker.io/bad/a is not available through this mirror".into()),
            ),
            ("x/a", Deny("no".into())),
            ("y/a", Allow),
        ];
        for (repo, want) in cases {
            assert_eq!(
                p.decide(Who::Anonymous, &scope("docker.io", repo)),
                want,
                "{repo}"
            );
        }
    }

    #[test]
    fn anonymous_defaults() {
        use Decision::*;
        let on = policy(&format!(
            "{AUTH}anonymous_pull = true\n[[upstream]]\nname = \"b.io\"\nanonymous_pull = false\n"
        ));
        assert_eq!(on.decide(Who::Anonymous, &scope("a.io", "r")), Allow);
        assert_eq!(on.decide(Who::Anonymous, &scope("b.io", "r")), Authenticate);
        let off = policy(AUTH);
        assert_eq!(
            off.decide(Who::Anonymous, &scope("a.io", "r")),
            Authenticate
        );
        assert!(!off.anonymous_possible());
        // A deny rule for everyone denies anonymous clients too (credentials would not help).
        let all = policy(&format!(
            "{AUTH}anonymous_pull = true\n[[access]]\nrepositories = [\"x\"]\naction = \"deny\"\nmessage = \"m\"\n"
        ));
        assert_eq!(
            all.decide(Who::Anonymous, &scope("a.io", "x")),
            Deny("m".into())
        );
        assert_eq!(
            all.decide(Who::User("u"), &scope("a.io", "x")),
            Deny("m".into())
        );
    }
}

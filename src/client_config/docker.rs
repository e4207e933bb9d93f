//! dockerd's `daemon.json`: `registry-mirrors`, and `insecure-registries` for a plain-HTTP or
//! unverified mirror.
//!
//! dockerd sends only Docker Hub pulls to `registry-mirrors`, with bare names (`/v2/library/busybox`),
//! which regmirror routes to its `default_upstream`. Other registries are reached by naming the
//! mirror in the image (`<mirror>/ghcr.io/owner/repo`, the prefix style), which needs the mirror in
//! `insecure-registries` when it is not trusted HTTPS.

use serde_json::{Map, Value};

use super::{Error, File, Output, Request, Style};

pub(super) fn generate(req: &Request, existing: Option<&str>) -> Result<Output, Error> {
    req.style_among(
        "docker",
        &[Style::Host],
        "dockerd sends bare Docker Hub names to registry-mirrors, which regmirror routes to its default \
         upstream; leave out --style",
    )?;
    let registries = req.registries_or(&["docker.io"]);
    let mut root = match existing {
        Some(text) if !text.trim().is_empty() => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => map,
            Ok(_) => return Err(merge_err("the file is not a JSON object")),
            Err(e) => return Err(merge_err(&format!("not valid JSON: {e}"))),
        },
        _ => Map::new(),
    };
    let mirror_url = req.mirror.url();
    // Ours first: dockerd tries mirrors in order.
    prepend_unique(&mut root, "registry-mirrors", &mirror_url, |v| {
        v.trim_end_matches('/') == mirror_url
    })?;
    if req.needs_insecure() {
        let host = req.mirror.host.clone();
        prepend_unique(&mut root, "insecure-registries", &host, |v| v == host)?;
    }
    let mut contents = serde_json::to_string_pretty(&Value::Object(root))
        .map_err(|e| merge_err(&e.to_string()))?;
    contents.push('\n');

    let mut notes = vec![format!(
        "Docker sends only docker.io pulls to registry-mirrors (and goes straight to Docker Hub when the \
         mirror fails); restart dockerd after changing daemon.json"
    )];
    let others: Vec<&String> = registries.iter().filter(|r| *r != "docker.io").collect();
    for r in others {
        notes.push(format!(
            "Docker cannot mirror {r}; pull its images through the mirror's path prefix instead: docker pull {}/<repository>",
            req.mirror.prefixed(r)
        ));
    }
    let mut files = vec![File {
        path: "daemon.json".into(),
        contents,
        private: false,
    }];
    files.extend(trust_files(req, &mut notes));
    Ok(Output { files, notes })
}

/// `certs.d/<mirror host>/ca.crt` (dockerd reads /etc/docker/certs.d) and the CLI's `config.json`
/// auth entry for the mirror host.
fn trust_files(req: &Request, notes: &mut Vec<String>) -> Vec<File> {
    let host = &req.mirror.host;
    let mut files = Vec::new();
    if let Some(ca) = req.trust.ca_file(format!("certs.d/{host}/ca.crt")) {
        files.push(ca);
        notes.push(format!(
            "dockerd trusts the mirror's CA from /etc/docker/certs.d/{host}/ca.crt (no restart needed)"
        ));
    }
    if let Some(auths) = req.trust.auths_file("config.json", host) {
        files.push(auths);
        notes.push(format!(
            "config.json is the docker CLI's (~/.docker/config.json or $DOCKER_CONFIG/config.json; merge its \
             auths entry, or run `docker login {host}`): it logs `docker pull {host}/...` in. Pulls that \
             dockerd sends to registry-mirrors carry the credentials stored for docker.io \
             (https://index.docker.io/v1/) instead, so a mirror that requires login for those must accept them"
        ));
    }
    files
}

fn merge_err(message: &str) -> Error {
    Error::Merge {
        path: "daemon.json".into(),
        message: message.to_string(),
    }
}

/// Put `value` first in the string array `key`, dropping entries `same` matches; other entries stay.
fn prepend_unique(
    root: &mut Map<String, Value>,
    key: &str,
    value: &str,
    same: impl Fn(&str) -> bool,
) -> Result<(), Error> {
    let old = match root.remove(key) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(merge_err(&format!("\"{key}\" is not an array"))),
    };
    let mut items = vec![Value::String(value.to_string())];
    items.extend(old.into_iter().filter(|v| !v.as_str().is_some_and(&same)));
    root.insert(key.to_string(), Value::Array(items));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::request;
    use super::super::Client;
    use super::*;

    fn json(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn daemon_json() {
        // (mirror, insecure, existing, expected daemon.json)
        let cases: &[(&str, bool, Option<&str>, &str)] = &[
            (
                "https://mirror.example.com",
                false,
                None,
                r#"{"registry-mirrors": ["https://mirror.example.com"]}"#,
            ),
            (
                "https://mirror.example.com:8443",
                true,
                None,
                r#"{"registry-mirrors": ["https://mirror.example.com:8443"],
                    "insecure-registries": ["mirror.example.com:8443"]}"#,
            ),
            (
                "http://127.0.0.1:5000",
                false,
                None,
                r#"{"registry-mirrors": ["http://127.0.0.1:5000"], "insecure-registries": ["127.0.0.1:5000"]}"#,
            ),
            (
                "https://mirror.example.com",
                false,
                Some(
                    r#"{"log-level": "debug", "registry-mirrors": ["https://other.example", "https://mirror.example.com/"],
                        "features": {"buildkit": true}}"#,
                ),
                r#"{"log-level": "debug", "features": {"buildkit": true},
                    "registry-mirrors": ["https://mirror.example.com", "https://other.example"]}"#,
            ),
            (
                "http://127.0.0.1:5000",
                false,
                Some(r#"{"insecure-registries": ["10.0.0.1:5000", "127.0.0.1:5000"]}"#),
                r#"{"registry-mirrors": ["http://127.0.0.1:5000"], "insecure-registries": ["127.0.0.1:5000", "10.0.0.1:5000"]}"#,
            ),
            (
                "https://mirror.example.com",
                false,
                Some("  \n"),
                r#"{"registry-mirrors": ["https://mirror.example.com"]}"#,
            ),
        ];
        for (mirror, insecure, existing, want) in cases {
            let req = request(Client::Docker, mirror, &[], None, *insecure);
            let out = generate(&req, *existing).unwrap();
            assert_eq!(out.files.len(), 1);
            assert_eq!(out.files[0].path.to_str(), Some("daemon.json"));
            assert!(out.files[0].contents.ends_with("}\n"));
            assert_eq!(
                json(&out.files[0].contents),
                json(want),
                "{mirror} {existing:?}"
            );
            assert!(out.notes[0].contains("only docker.io"));
        }
    }

    #[test]
    fn bad_existing_files_say_why() {
        let cases: &[(&str, &str)] = &[
            ("[1]", "not a JSON object"),
            ("{", "not valid JSON"),
            (
                r#"{"registry-mirrors": "https://x"}"#,
                "\"registry-mirrors\" is not an array",
            ),
        ];
        for (existing, want) in cases {
            let req = request(Client::Docker, "https://m.example", &[], None, false);
            let err = generate(&req, Some(existing)).unwrap_err().to_string();
            assert!(err.contains(want), "{existing}: {err}");
        }
    }

    #[test]
    fn other_registries_get_a_prefix_note_and_styles_are_refused() {
        let req = request(
            Client::Docker,
            "http://127.0.0.1:5000",
            &["docker.io", "ghcr.io"],
            None,
            false,
        );
        let out = generate(&req, None).unwrap();
        assert!(
            out.notes
                .iter()
                .any(|n| n.contains("docker pull 127.0.0.1:5000/ghcr.io/<repository>")),
            "{:?}",
            out.notes
        );
        for style in [Style::Ns, Style::Prefix] {
            let req = request(
                Client::Docker,
                "http://127.0.0.1:5000",
                &[],
                Some(style),
                false,
            );
            assert!(matches!(generate(&req, None), Err(Error::Style { .. })));
        }
    }
}

//! Manifest media types and `Accept` negotiation.

/// The four manifest media types regmirror asks upstreams for.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker manifest list (multi-arch).
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker schema 1, signed (JWS).
pub const DOCKER_MANIFEST_V1_SIGNED: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// Docker schema 1, unsigned.
pub const DOCKER_MANIFEST_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";

/// The four manifest types regmirror always asks upstreams for.
pub const ALL_MANIFESTS: [&str; 4] = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// Media types a client accepts, from every `Accept` header it sent (clients such as dockerd send
/// one header per type; others send one comma-separated header). Parameters (`;q=`) are dropped.
pub fn accepted_types<'a>(headers: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for header in headers {
        for part in header.split(',') {
            let t = part
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if !t.is_empty() && !out.contains(&t) {
                out.push(t);
            }
        }
    }
    out
}

/// The Accept list to send upstream: every type the client named, plus the four manifest types
/// (so a cached manifest can serve later clients that accept a different set).
pub fn upstream_accept(client: &[String]) -> Vec<String> {
    let mut out: Vec<String> = client
        .iter()
        .filter(|t| t.as_str() != "*/*")
        .cloned()
        .collect();
    for t in ALL_MANIFESTS {
        if !out.iter().any(|c| c == t) {
            out.push(t.to_string());
        }
    }
    out
}

/// Whether a manifest is Docker schema 1 (signed or not), by its declared type or its
/// `schemaVersion`.
pub fn is_schema1(body: &[u8], declared: Option<&str>) -> bool {
    #[derive(serde::Deserialize)]
    struct Peek {
        #[serde(rename = "schemaVersion")]
        schema_version: Option<u32>,
    }
    let declared = declared.map(|d| d.split(';').next().unwrap_or(d).trim());
    matches!(
        declared,
        Some(DOCKER_MANIFEST_V1_SIGNED | DOCKER_MANIFEST_V1)
    ) || serde_json::from_slice::<Peek>(body).is_ok_and(|p| p.schema_version == Some(1))
}

/// The media type of a manifest body: its `mediaType` field, else inferred from its shape
/// (an OCI manifest may omit `mediaType`), else the type the upstream declared.
pub fn manifest_media_type(body: &[u8], declared: Option<&str>) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Peek {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        layers: Option<serde_json::Value>,
        #[serde(rename = "schemaVersion")]
        schema_version: Option<u32>,
    }
    let declared = declared
        .map(|d| d.split(';').next().unwrap_or(d).trim().to_string())
        .filter(|d| !d.is_empty());
    let peek: Peek = match serde_json::from_slice(body) {
        Ok(p) => p,
        Err(_) => return declared,
    };
    if let Some(mt) = peek.media_type {
        return Some(mt);
    }
    if let Some(d) = declared.filter(|d| d != "application/octet-stream" && d != "text/plain") {
        return Some(d);
    }
    match (
        peek.schema_version,
        peek.manifests.is_some(),
        peek.layers.is_some(),
    ) {
        (Some(2), true, _) => Some(OCI_INDEX.to_string()),
        (Some(2), _, true) => Some(OCI_MANIFEST.to_string()),
        (Some(1), _, _) => Some(DOCKER_MANIFEST_V1_SIGNED.to_string()),
        _ => None,
    }
}

/// Whether a client that accepts `accepted` can take a manifest of type `media_type`.
/// An empty list or `*/*` accepts anything; a client that names only schema2 cannot take OCI.
pub fn client_accepts(accepted: &[String], media_type: &str) -> bool {
    if accepted.is_empty() {
        return true;
    }
    accepted
        .iter()
        .any(|a| a == "*/*" || a == media_type || a == "application/json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema1_is_recognised_by_type_or_version() {
        let v1 = br#"{"schemaVersion":1,"name":"a","tag":"b","fsLayers":[],"signatures":[]}"#;
        let v2 = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
        assert!(is_schema1(v1, None));
        assert!(is_schema1(v1, Some("application/json")));
        assert!(is_schema1(b"{}", Some(DOCKER_MANIFEST_V1_SIGNED)));
        assert!(is_schema1(
            b"not json",
            Some("application/vnd.docker.distribution.manifest.v1+json; charset=utf-8")
        ));
        assert!(!is_schema1(v2, Some(OCI_MANIFEST)));
        assert!(!is_schema1(b"not json", None));
    }

    #[test]
    fn accept_headers_are_merged_not_lost() {
        let six = [
            DOCKER_MANIFEST,
            DOCKER_LIST,
            OCI_MANIFEST,
            OCI_INDEX,
            DOCKER_MANIFEST_V1_SIGNED,
            "application/json",
        ];
        assert_eq!(accepted_types(six.iter().copied()).len(), 6);
        let folded = format!("{DOCKER_MANIFEST}, {OCI_INDEX};q=0.5");
        assert_eq!(
            accepted_types([folded.as_str()]),
            vec![DOCKER_MANIFEST.to_string(), OCI_INDEX.to_string()]
        );
        assert!(accepted_types(Vec::<&str>::new()).is_empty());
    }

    #[test]
    fn upstream_accept_has_all_four() {
        let acc = upstream_accept(&[DOCKER_MANIFEST_V1_SIGNED.to_string(), "*/*".into()]);
        assert_eq!(acc.len(), 5);
        assert_eq!(acc[0], DOCKER_MANIFEST_V1_SIGNED);
    }

    #[test]
    fn media_type_detection() {
        let cases: &[(&str, Option<&str>, Option<&str>)] = &[
            (
                r#"{"schemaVersion":2,"mediaType":"x/y"}"#,
                Some(OCI_MANIFEST),
                Some("x/y"),
            ),
            (
                r#"{"schemaVersion":2,"layers":[]}"#,
                None,
                Some(OCI_MANIFEST),
            ),
            (
                r#"{"schemaVersion":2,"manifests":[]}"#,
                None,
                Some(OCI_INDEX),
            ),
            (
                r#"{"schemaVersion":2,"manifests":[]}"#,
                Some(DOCKER_LIST),
                Some(DOCKER_LIST),
            ),
            ("not json", Some("a/b; charset=x"), Some("a/b")),
            ("not json", None, None),
        ];
        for (body, declared, want) in cases {
            assert_eq!(
                manifest_media_type(body.as_bytes(), *declared).as_deref(),
                *want,
                "{body}"
            );
        }
    }

    #[test]
    fn accepts() {
        assert!(client_accepts(&[], OCI_INDEX));
        assert!(client_accepts(&["*/*".into()], OCI_INDEX));
        assert!(!client_accepts(&[DOCKER_MANIFEST.into()], OCI_INDEX));
    }
}

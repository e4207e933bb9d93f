//! Property-based fuzzing of everything that parses untrusted input: request paths, repository
//! names, references, digests, `WWW-Authenticate` challenges, `Accept` headers and routing.
//! The HTTP/1.1 head classifier is private to the crate: its properties live next to it, in the
//! tests of `src/server/http1.rs`, with the same `PROPTEST_CASES` setting.
//!
//! Runs in CI for a bounded number of cases (`PROPTEST_CASES`, default 4096 per property). cargo-fuzz
//! needs a nightly toolchain, which this project's machines do not have; proptest gives the same
//! "no panic on any input, invariants hold" checks on stable.

use proptest::prelude::*;
use regmirror::api::Endpoint;
use regmirror::config::Config;
use regmirror::oci::{media, validate_name, Digest, Reference};
use regmirror::routing::{RequestFacts, RoutingTable};
use regmirror::upstream::auth::{parse_challenge, Challenge};

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4096);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Paths built from the pieces that matter, plus arbitrary bytes.
fn path_strategy() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/v2/".to_string()),
        Just("manifests/".to_string()),
        Just("blobs/".to_string()),
        Just("uploads/".to_string()),
        Just("tags/list".to_string()),
        Just("..".to_string()),
        Just("%2e%2e".to_string()),
        Just("/".to_string()),
        Just("sha256:".to_string()),
        "[a-z0-9._-]{0,12}",
        any::<String>(),
    ];
    prop::collection::vec(piece, 0..10).prop_map(|v| v.concat())
}

fn routing() -> RoutingTable {
    let mut c = Config::from_toml(
        "[[upstream]]\nname = \"127.0.0.1:5101\"\naliases = [\"local\"]\nhosts = [\"h.example\"]\n",
    )
    .unwrap();
    c.merge_builtins();
    c.validate().unwrap();
    RoutingTable::new(&c)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn endpoint_parse_never_panics_and_names_are_safe(path in path_strategy(), m in 0..6usize) {
        let method = [http::Method::GET, http::Method::HEAD, http::Method::PUT, http::Method::POST, http::Method::DELETE, http::Method::PATCH][m].clone();
        if let Ok(Endpoint::Manifest { name, .. } | Endpoint::Blob { name, .. } | Endpoint::TagsList { name }) = Endpoint::parse(&method, &path) {
            prop_assert!(!name.is_empty());
            let table = routing();
            if let Ok(route) = table.route(&RequestFacts { name: &name, ..Default::default() }) {
                // Whatever routing accepts is a valid repository name: no traversal, no escapes.
                prop_assert!(validate_name(&route.repository).is_ok());
                prop_assert!(!route.repository.split('/').any(|s| s == ".." || s == "." || s.is_empty()));
                prop_assert!(!route.repository.contains('%'));
                prop_assert!(route.repository.len() <= 255);
            }
        }
    }

    #[test]
    fn names_and_references(s in any::<String>(), t in "[a-zA-Z0-9_.:/-]{0,140}") {
        for input in [&s, &t] {
            if validate_name(input).is_ok() {
                prop_assert!(input.len() <= 255);
                prop_assert!(input.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b)));
            }
            if let Ok(r) = Reference::parse(input) {
                prop_assert_eq!(r.to_string(), input.to_string(), "references print as parsed");
            }
            if let Ok(d) = input.parse::<Digest>() {
                prop_assert_eq!(d.to_string(), input.to_string());
            }
        }
    }

    #[test]
    fn challenges_never_panic_and_round_trip(
        s in any::<String>(),
        realm in "[ -~]{1,40}",
        service in "[a-z0-9.:-]{0,20}",
        scope in "[a-z0-9/:,._-]{0,40}",
    ) {
        let _ = parse_challenge(&s);
        let escaped = realm.replace('\\', "\\\\").replace('"', "\\\"");
        let header = format!("Bearer realm=\"{escaped}\",service=\"{service}\",scope=\"{scope}\"");
        match parse_challenge(&header) {
            Some(Challenge::Bearer { realm: r, service: sv, scope: sc }) => {
                prop_assert_eq!(r, realm.trim().to_string());
                prop_assert_eq!(sv.unwrap_or_default(), service);
                prop_assert_eq!(sc.unwrap_or_default(), scope);
            }
            other => prop_assert!(false, "{header:?} -> {other:?}"),
        }
    }

    #[test]
    fn accept_and_media_type_never_panic(headers in prop::collection::vec(any::<String>(), 0..8), body in any::<Vec<u8>>()) {
        let types = media::accepted_types(headers.iter().map(String::as_str));
        let _ = media::upstream_accept(&types);
        let _ = media::manifest_media_type(&body, headers.first().map(String::as_str));
    }

    #[test]
    fn routing_never_panics(name in path_strategy(), host in any::<Option<String>>(), ns in any::<Option<String>>()) {
        let table = routing();
        let _ = table.route(&RequestFacts { listener_upstream: None, host: host.as_deref(), ns: ns.as_deref(), name: &name });
    }
}

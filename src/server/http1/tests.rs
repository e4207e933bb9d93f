//! Table and property tests of the HTTP/1.1 head classifier (`parse` / `take`).

use super::*;
use proptest::prelude::*;

/// Config's default `max_headers` (and hyper's limit with it).
const MAX: usize = 100;

/// What [`parse`] decided about a buffer, without the length.
#[derive(Debug, Clone, PartialEq)]
enum Class {
    Incomplete,
    Malformed,
    /// A complete head that hyper answers (the connection is handed over).
    Hyper,
    /// A complete head this loop answers.
    Taken {
        method: Method,
        target: String,
        close: bool,
    },
}

fn taken(method: Method, target: &str, close: bool) -> Class {
    Class::Taken {
        method,
        target: target.into(),
        close,
    }
}

/// The class of `buf`, and the consumed length when the head is complete.
fn classify(buf: &[u8], max_headers: usize) -> (Class, Option<usize>) {
    match parse(buf, max_headers) {
        Ok(None) => (Class::Incomplete, None),
        Err(()) => (Class::Malformed, None),
        Ok(Some((len, None))) => (Class::Hyper, Some(len)),
        Ok(Some((len, Some(p)))) => {
            assert_eq!(p.request.version(), Version::HTTP_11);
            let class = Class::Taken {
                method: p.request.method().clone(),
                target: p.request.uri().to_string(),
                close: p.close,
            };
            (class, Some(len))
        }
    }
}

/// `lines` joined with CRLF, ended by the blank line.
fn head(lines: &[&str]) -> Vec<u8> {
    let mut out = String::new();
    for l in lines {
        out.push_str(l);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// `GET /v2/ HTTP/1.1` with one more header line.
fn get_with(header: &str) -> Vec<u8> {
    head(&["GET /v2/ HTTP/1.1", "Host: m", header])
}

/// Each head and what the loop does with it, at the default `max_headers`.
fn cases() -> Vec<(Vec<u8>, Class)> {
    use Class::{Hyper, Incomplete, Malformed};
    let v2 = |close| taken(Method::GET, "/v2/", close);
    let long_name = format!("{}: x", "a".repeat(1 << 16));
    let long_target = format!("GET /{} HTTP/1.1", "a".repeat(u16::MAX as usize));
    let manifest = "/v2/library/busybox/manifests/latest";
    vec![
        // Taken: GET and HEAD over HTTP/1.1 without a body.
        (head(&["GET /v2/ HTTP/1.1", "Host: m"]), v2(false)),
        (
            head(&[&format!("HEAD {manifest} HTTP/1.1"), "Accept: a/b"]),
            taken(Method::HEAD, manifest, false),
        ),
        (head(&["GET /v2/ HTTP/1.1"]), v2(false)),
        (
            head(&["GET /v2/x/manifests/v1?ns=docker.io HTTP/1.1"]),
            taken(Method::GET, "/v2/x/manifests/v1?ns=docker.io", false),
        ),
        (b"GET /v2/ HTTP/1.1\nHost: m\n\n".to_vec(), v2(false)),
        (b"\r\nGET /v2/ HTTP/1.1\r\n\r\n".to_vec(), v2(false)),
        // Absolute-form: the whole URI is kept.
        (
            head(&[
                "GET http://127.0.0.1:5000/v2/ HTTP/1.1",
                "Host: 127.0.0.1:5000",
            ]),
            taken(Method::GET, "http://127.0.0.1:5000/v2/", false),
        ),
        (
            head(&["GET /v2/caf\u{e9} HTTP/1.1"]),
            taken(Method::GET, "/v2/caf\u{e9}", false),
        ),
        (
            b"GET /v2/ HTTP/1.1\r\nX-A: caf\xe9\r\n\r\n".to_vec(),
            v2(false),
        ),
        // Other versions and methods go to hyper.
        (head(&["GET /v2/ HTTP/1.0", "Host: m"]), Hyper),
        (
            head(&["GET /v2/ HTTP/1.0", "Connection: keep-alive"]),
            Hyper,
        ),
        (
            head(&["POST /v2/x/blobs/uploads/ HTTP/1.1", "Content-Length: 0"]),
            Hyper,
        ),
        (
            head(&["PUT /v2/x/manifests/v1 HTTP/1.1", "Content-Length: 2"]),
            Hyper,
        ),
        (head(&["DELETE /v2/x/manifests/v1 HTTP/1.1"]), Hyper),
        (head(&["OPTIONS * HTTP/1.1"]), Hyper),
        (head(&["get /v2/ HTTP/1.1"]), Hyper),
        // A body, an expectation or an upgrade goes to hyper; only a literal 0 length is taken.
        (get_with("Content-Length: 0"), v2(false)),
        (get_with("content-length:  0 "), v2(false)),
        (get_with("Content-Length: 5"), Hyper),
        (get_with("Content-Length: 00"), Hyper),
        (get_with("Transfer-Encoding: chunked"), Hyper),
        (get_with("transfer-encoding: identity"), Hyper),
        (get_with("Expect: 100-continue"), Hyper),
        (get_with("Upgrade: h2c"), Hyper),
        (get_with("Connection: keep-alive, Upgrade"), Hyper),
        (get_with("Connection: UPGRADE"), Hyper),
        // Connection: close is kept for the answer.
        (get_with("Connection: close"), v2(true)),
        (get_with("Connection: Close"), v2(true)),
        (get_with("Connection: keep-alive, close"), v2(true)),
        (get_with("Connection: keep-alive"), v2(false)),
        (get_with("Connection: closed"), v2(false)),
        (
            head(&[
                "GET /v2/ HTTP/1.1",
                "Connection: keep-alive",
                "Connection: close",
            ]),
            v2(true),
        ),
        // Partial heads.
        (Vec::new(), Incomplete),
        (b"GET".to_vec(), Incomplete),
        (b"GET /v2/ HTTP/1.".to_vec(), Incomplete),
        (b"GET /v2/ HTTP/1.1\r\n".to_vec(), Incomplete),
        (b"GET /v2/ HTTP/1.1\r\nHost: m\r\n".to_vec(), Incomplete),
        (b"GET /v2/ HTTP/1.1\r\nHost: m\r\n\r".to_vec(), Incomplete),
        // Garbage: control bytes, a TLS ClientHello, the HTTP/2 preface, a broken request line.
        (b"\x00\x01\x02\x03\r\n\r\n".to_vec(), Malformed),
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
            Malformed,
        ),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), Malformed),
        (head(&["GET  /v2/ HTTP/1.1"]), Malformed),
        (head(&["GET /v2/"]), Malformed),
        (get_with("no colon here"), Malformed),
        (b"GET /v2/\xff HTTP/1.1\r\n\r\n".to_vec(), Malformed),
        // Bytes invalid in a name or value are malformed for httparse already; what httparse
        // accepts and the http crate refuses (a name or a target over 64 KiB, `<` or a
        // backtick in the target) goes to hyper.
        (get_with("Bad Name: x"), Malformed),
        (get_with("B@d: x"), Malformed),
        (get_with("X-A: a\x01b"), Malformed),
        (get_with("X-A: a\x7fb"), Malformed),
        (get_with(&long_name), Hyper),
        (head(&["GET /v2/<x> HTTP/1.1"]), Hyper),
        (head(&["GET /v2/a`b HTTP/1.1"]), Hyper),
        (head(&[long_target.as_str()]), Hyper),
    ]
}

#[test]
fn heads_are_classified() {
    for (raw, want) in cases() {
        let what = String::from_utf8_lossy(&raw[..raw.len().min(200)]).into_owned();
        let (class, len) = classify(&raw, MAX);
        assert_eq!(class, want, "{what:?}");
        if !matches!(want, Class::Hyper | Class::Taken { .. }) {
            continue;
        }
        assert_eq!(len, Some(raw.len()), "{what:?}: the whole head is consumed");
        // Followed by a body or the next pipelined request: the same answer, the same length.
        for after in [&b"hello"[..], b"GET /next HTTP/1.1\r\n\r\n"] {
            let more = [&raw[..], after].concat();
            let got = classify(&more, MAX);
            assert_eq!(got, (want.clone(), Some(raw.len())), "{what:?} + {after:?}");
        }
    }
}

#[test]
fn more_headers_than_max_headers_is_malformed() {
    let raw = head(&["GET / HTTP/1.1", "A: 1", "B: 2"]);
    let len = Some(raw.len());
    assert_eq!(classify(&raw, 2), (taken(Method::GET, "/", false), len));
    assert_eq!(classify(&raw, 1), (Class::Malformed, None));
    assert_eq!(
        classify(&head(&["GET / HTTP/1.1"]), 0).0,
        taken(Method::GET, "/", false)
    );
}

#[test]
fn a_taken_request_keeps_its_headers_in_order() {
    let raw = head(&[
        "GET /v2/ HTTP/1.1",
        "Host: m",
        "Accept: a/b",
        "accept: c/d",
        "X-Empty:",
    ]);
    let Ok(Some((_, Some(p)))) = parse(&raw, MAX) else {
        panic!("not taken");
    };
    let h = p.request.headers();
    assert_eq!(h.len(), 4);
    assert_eq!(h[header::HOST], "m");
    let accept: Vec<_> = h
        .get_all(header::ACCEPT)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(accept, ["a/b", "c/d"]);
    assert_eq!(h["x-empty"], "");
    assert_eq!(p.request.uri().path(), "/v2/");
}

#[test]
fn an_absolute_form_target_keeps_its_authority() {
    let raw = head(&["GET http://127.0.0.1:5000/v2/x/blobs/sha256:ab HTTP/1.1"]);
    let Ok(Some((_, Some(p)))) = parse(&raw, MAX) else {
        panic!("not taken");
    };
    let uri = p.request.uri();
    assert_eq!(uri.path(), "/v2/x/blobs/sha256:ab");
    assert_eq!(uri.authority().map(|a| a.as_str()), Some("127.0.0.1:5000"));
}

// ----------------------------------------------------------------------------------------
// Properties

/// `PROPTEST_CASES` cases per property, 4096 unless set (as tests/fuzz_parsers.rs).
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

/// A well-formed request head built from the pieces the classifier looks at.
#[derive(Debug, Clone)]
struct Head {
    method: String,
    target: String,
    version: &'static str,
    headers: Vec<(String, String)>,
    eol: &'static str,
}

impl Head {
    fn bytes(&self) -> Vec<u8> {
        let Head {
            method,
            target,
            version,
            eol,
            ..
        } = self;
        let mut out = format!("{method} {target} {version}{eol}");
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}{eol}"));
        }
        out.push_str(eol);
        out.into_bytes()
    }

    /// The values of the headers named `name` (any case).
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the loop should answer it: the rules of the module doc, restated.
    fn is_ours(&self) -> bool {
        let connection = |v: &str| v.to_ascii_lowercase().contains("upgrade");
        ["GET", "HEAD"].contains(&self.method.as_str())
            && self.version == "HTTP/1.1"
            && self.target.parse::<http::Uri>().is_ok()
            && self.values("transfer-encoding").next().is_none()
            && self.values("expect").next().is_none()
            && self.values("upgrade").next().is_none()
            && self.values("content-length").all(|v| v.trim() == "0")
            && !self.values("connection").any(connection)
    }

    /// Whether the client asked to close the connection after the answer.
    fn asks_close(&self) -> bool {
        self.values("connection")
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    }
}

/// Header names the classifier looks at, in the cases clients send them, and others.
const NAMES: &[&str] = &[
    "Host",
    "Accept",
    "Content-Length",
    "content-length",
    "Transfer-Encoding",
    "Expect",
    "Upgrade",
    "Connection",
    "CONNECTION",
];
/// Header values that change the classifier's answer under one of [`NAMES`].
const VALUES: &[&str] = &[
    "0",
    " 0 ",
    "5",
    "chunked",
    "100-continue",
    "close",
    "Close",
    "keep-alive",
    "keep-alive, close",
    "keep-alive, Upgrade",
];

/// Mostly one of `fixed`, else a string matching `regex`.
fn one_of(fixed: &'static [&'static str], regex: &'static str) -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::sample::select(fixed).prop_map(String::from),
        1 => regex,
    ]
    .boxed()
}

fn head_strategy() -> impl Strategy<Value = Head> {
    let method = one_of(&["GET", "HEAD", "POST", "PUT", "get"], "[A-Z]{1,7}");
    let manifest = "/v2/[a-z0-9._/-]{1,40}/manifests/[a-z0-9.]{1,8}(\\?ns=[a-z0-9.:]{1,16})?";
    let target = prop_oneof![
        one_of(&["/v2/", "http://127.0.0.1:5000/v2/"], "/[!-~]{0,30}"),
        manifest,
    ];
    let version = prop_oneof![Just("HTTP/1.1"), Just("HTTP/1.0")];
    let name = one_of(NAMES, "[A-Za-z][A-Za-z0-9-]{0,15}");
    let value = one_of(VALUES, "[ -~]{0,24}");
    let headers = prop::collection::vec((name, value), 0..12);
    let eol = prop_oneof![Just("\r\n"), Just("\n")];
    (method, target, version, headers, eol).prop_map(|(method, target, version, headers, eol)| {
        Head {
            method,
            target,
            version,
            headers,
            eol,
        }
    })
}

/// The first line of a taken head, after the empty lines httparse skips.
fn request_line(head: &[u8]) -> &[u8] {
    let start = head
        .iter()
        .position(|b| !b"\r\n".contains(b))
        .unwrap_or(head.len());
    let line = head[start..]
        .split(|b| *b == b'\n')
        .next()
        .unwrap_or_default();
    line.strip_suffix(&b"\r"[..]).unwrap_or(line)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1024), max_headers in 0..16usize) {
        let (class, len) = classify(&bytes, max_headers);
        if let Some(len) = len {
            prop_assert!(len > 0 && len <= bytes.len());
        }
        if let Class::Taken { method, .. } = class {
            let line = request_line(&bytes[..len.unwrap_or(0)]);
            prop_assert!(method == Method::GET || method == Method::HEAD);
            prop_assert!(line.starts_with(b"GET ") || line.starts_with(b"HEAD "), "{line:?}");
            prop_assert!(line.ends_with(b" HTTP/1.1"), "{line:?}");
        }
    }

    #[test]
    fn a_head_with_one_byte_changed_is_taken_only_as_get_or_head_http11(h in head_strategy(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = h.bytes();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        let (class, len) = classify(&bytes, MAX);
        if let (Class::Taken { method, .. }, Some(len)) = (class, len) {
            let line = request_line(&bytes[..len]);
            prop_assert!(method == Method::GET || method == Method::HEAD);
            prop_assert!(line.starts_with(b"GET ") || line.starts_with(b"HEAD "), "{line:?}");
            prop_assert!(line.ends_with(b" HTTP/1.1"), "{line:?}");
        }
    }

    #[test]
    fn a_well_formed_head_is_taken_exactly_when_the_rules_say(h in head_strategy()) {
        let bytes = h.bytes();
        let (class, len) = classify(&bytes, MAX);
        prop_assert_eq!(len, Some(bytes.len()), "{:?}", class);
        match class {
            Class::Taken { method, target, close } => {
                prop_assert!(h.is_ours(), "taken: {:?}", h);
                prop_assert_eq!(method.as_str(), h.method.as_str());
                // http's Uri drops a fragment; the rest is the target as sent.
                prop_assert!(h.target.starts_with(&target), "{} vs {}", target, h.target);
                prop_assert_eq!(close, h.asks_close());
            }
            Class::Hyper => prop_assert!(!h.is_ours(), "handed over: {:?}", h),
            other => prop_assert!(false, "{:?} for {:?}", other, h),
        }
    }

    #[test]
    fn every_prefix_of_a_head_is_incomplete(h in head_strategy()) {
        let bytes = h.bytes();
        for end in 0..bytes.len() {
            prop_assert_eq!(parse(&bytes[..end], MAX).map(|r| r.is_none()), Ok(true), "prefix of {} bytes", end);
        }
    }

    #[test]
    fn the_consumed_length_is_the_head_length(h in head_strategy(), rest in prop::collection::vec(any::<u8>(), 0..256)) {
        let head = h.bytes();
        let alone = classify(&head, MAX);
        let followed = classify(&[&head[..], &rest[..]].concat(), MAX);
        prop_assert_eq!(alone.1, Some(head.len()));
        prop_assert_eq!(followed, alone);
    }

    #[test]
    fn max_headers_is_a_hard_limit(h in head_strategy()) {
        let bytes = h.bytes();
        let n = h.headers.len();
        prop_assert_ne!(classify(&bytes, n).0, Class::Malformed);
        if n > 0 {
            prop_assert_eq!(classify(&bytes, n - 1).0, Class::Malformed);
        }
    }
}

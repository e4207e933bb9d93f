use std::net::IpAddr;
use std::time::{Duration, Instant};

use http::HeaderMap;

use super::*;

fn limits(toml: &str, trusted: &[&str]) -> Limits {
    let c: LimitsConfig = toml::from_str(toml).unwrap();
    c.validate().unwrap();
    let trusted: Vec<String> = trusted.iter().map(|s| s.to_string()).collect();
    Limits::new(&c, crate::config::parse_trusted_proxies(&trusted).unwrap())
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}

#[test]
fn the_client_is_the_first_untrusted_hop_from_the_right() {
    let l = limits("", &["10.0.0.0/8", "192.168.1.1"]);
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        // An untrusted peer's headers are never believed.
        (
            "203.0.113.9",
            &[("x-forwarded-for", "198.51.100.1")],
            "203.0.113.9",
        ),
        (
            "203.0.113.9",
            &[("forwarded", "for=198.51.100.1")],
            "203.0.113.9",
        ),
        // A trusted proxy: the address it forwards.
        (
            "10.1.2.3",
            &[("x-forwarded-for", "198.51.100.1")],
            "198.51.100.1",
        ),
        (
            "192.168.1.1",
            &[("x-forwarded-for", "198.51.100.1")],
            "198.51.100.1",
        ),
        // A forged entry to the left of the real client is ignored.
        (
            "10.1.2.3",
            &[("x-forwarded-for", "1.2.3.4, 198.51.100.1")],
            "198.51.100.1",
        ),
        // Two trusted proxies in a row.
        (
            "10.1.2.3",
            &[("x-forwarded-for", "198.51.100.1, 10.9.9.9")],
            "198.51.100.1",
        ),
        // Several header lines are one list.
        (
            "10.1.2.3",
            &[
                ("x-forwarded-for", "1.2.3.4"),
                ("x-forwarded-for", "198.51.100.7"),
            ],
            "198.51.100.7",
        ),
        // Forwarded wins over X-Forwarded-For; quoted, bracketed, with ports.
        (
            "10.1.2.3",
            &[
                ("forwarded", r#"for="[2001:db8::17]:4711";proto=https"#),
                ("x-forwarded-for", "1.2.3.4"),
            ],
            "2001:db8::17",
        ),
        (
            "10.1.2.3",
            &[(
                "forwarded",
                "for=198.51.100.2:8080, for=10.0.0.5;by=10.0.0.1",
            )],
            "198.51.100.2",
        ),
        // An entry that is not an address stops the walk at the last proxy seen.
        ("10.1.2.3", &[("forwarded", "for=unknown")], "10.1.2.3"),
        (
            "10.1.2.3",
            &[("x-forwarded-for", "198.51.100.1, _hidden, 10.0.0.9")],
            "10.0.0.9",
        ),
        // No header: the proxy itself.
        ("10.1.2.3", &[], "10.1.2.3"),
        // A dual-stack socket's IPv4-mapped peer is the IPv4 address.
        (
            "::ffff:10.1.2.3",
            &[("x-forwarded-for", "198.51.100.1")],
            "198.51.100.1",
        ),
    ];
    for (peer, h, want) in cases {
        assert_eq!(
            l.client_addr(ip(peer), &headers(h)),
            ip(want),
            "peer {peer} headers {h:?}"
        );
    }
    let none = limits("", &[]);
    assert_eq!(
        none.client_addr(ip("127.0.0.1"), &headers(&[("x-forwarded-for", "1.2.3.4")])),
        ip("127.0.0.1"),
        "no trusted proxies: nobody's header is believed"
    );
}

#[test]
fn a_client_over_its_rate_waits_and_another_does_not() {
    let l = limits("requests_per_second = 2\nrequest_burst = 3", &[]);
    let a = ClientKey::Addr(ip("198.51.100.1"));
    let b = ClientKey::User("alice".into());
    for _ in 0..3 {
        assert!(l.admit(&a).is_ok());
    }
    let wait = l
        .admit(&a)
        .expect_err("the fourth request at once is over the burst");
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_millis(500),
        "2 per second: the next one is due within half a second, got {wait:?}"
    );
    assert!(l.admit(&b).is_ok(), "another client has its own budget");
    assert!(limits("", &[]).admit(&a).is_ok(), "no limit configured");
}

#[tokio::test]
async fn bytes_are_paced_to_the_client_rate() {
    let l = limits("client_bytes_per_second = \"1MiB\"", &[]);
    assert!(limits("", &[])
        .throttle(&ClientKey::Addr(ip("127.0.0.1")))
        .is_none());
    let t = l.throttle(&ClientKey::Addr(ip("127.0.0.1"))).unwrap();
    let started = Instant::now();
    let mut sent = 0;
    while sent < 1 << 20 {
        let n = t.wait((1 << 20) - sent).await;
        assert!(
            (1..=256 << 10).contains(&n),
            "one grant is at most the burst: {n}"
        );
        sent += n;
    }
    let took = started.elapsed();
    // A quarter second of burst, then 768 KiB at 1 MiB/s: about 0.75 s. Wide bounds only.
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(5),
        "1 MiB at 1 MiB/s took {took:?}"
    );
}

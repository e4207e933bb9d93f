//! Per-client limits with the real binary and Debian's distribution as upstream: requests per
//! second answered `429 TOOMANYREQUESTS` with `Retry-After` for the client over its rate only;
//! `trusted_proxies` whose `X-Forwarded-For` is believed (and nobody else's); blob bytes paced to
//! the per-client rate on the cold (streaming) and the warm (`sendfile`) path, digest intact.
//!
//! Clients are told apart by their source address: every 127.0.0.0/8 address is loopback, so a
//! client bound to 127.0.0.3 is another client than one bound to 127.0.0.1.

mod support;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use support::client::RegistryClient;
use support::env::sha256_digest;
use support::image::Blob;
use support::mirror::{MirrorConfig, Regmirror, UpstreamEntry};
use support::registry::Registry;
use support::seed::seed;

const TOOLS: &[&str] = &["docker-registry", "openssl"];

fn client_from(addr: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(addr.parse::<IpAddr>().unwrap())
        .no_proxy()
        .build()
        .unwrap()
}

/// GET `path` on `mirror` from `client`, with extra headers; (status, Retry-After).
async fn get(
    client: &reqwest::Client,
    mirror: &Regmirror,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Option<String>) {
    let mut req = client
        .get(format!("{}{path}", mirror.url))
        .header("accept", "application/vnd.oci.image.index.v1+json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let status = resp.status().as_u16();
    let _ = resp.bytes().await;
    (status, retry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_request_rate_gets_429_and_others_do_not() {
    require_tools!(TOOLS);
    let registry = Registry::plain().await;
    let seeded = seed(&registry, "team/multi", "team/single", "limits").await;
    let mut config = MirrorConfig::new(vec![UpstreamEntry::new(
        "upstream.example",
        &registry.url(),
    )
    .alias("up")]);
    // One request per 10 s per client after a burst of 3: the test cannot outrun a refill.
    config.extra = config.extra.top("trusted_proxies", vec!["127.0.0.2"]).top(
        "limits",
        toml::toml! { requests_per_second = 0.1
        request_burst = 3 },
    );
    let mirror = Regmirror::start(config).await;
    let path = format!("/v2/up/{}/manifests/v1", seeded.multi_repo);

    let a = client_from("127.0.0.1");
    for i in 0..3 {
        assert_eq!(
            get(&a, &mirror, &path, &[]).await.0,
            200,
            "request {i} within the burst"
        );
    }
    let (status, retry) = get(&a, &mirror, &path, &[]).await;
    assert_eq!(status, 429, "the fourth request at once is over the burst");
    let retry: u64 = retry.expect("429 carries Retry-After").parse().unwrap();
    assert!(
        (1..=10).contains(&retry),
        "Retry-After {retry} s for 0.1 request/s"
    );
    let body = a.get(format!("{}{path}", mirror.url)).send().await.unwrap();
    let json: serde_json::Value = serde_json::from_slice(&body.bytes().await.unwrap()).unwrap();
    assert_eq!(json["errors"][0]["code"], "TOOMANYREQUESTS", "{json}");

    // Another address is another client.
    let b = client_from("127.0.0.3");
    assert_eq!(
        get(&b, &mirror, &path, &[]).await.0,
        200,
        "another client is unaffected"
    );

    // Behind the trusted proxy (127.0.0.2), the forwarded address is the client.
    let proxy = client_from("127.0.0.2");
    let fwd = |ip: &'static str| [("x-forwarded-for", ip)];
    for _ in 0..3 {
        assert_eq!(
            get(&proxy, &mirror, &path, &fwd("198.51.100.1")).await.0,
            200
        );
    }
    assert_eq!(
        get(&proxy, &mirror, &path, &fwd("198.51.100.1")).await.0,
        429,
        "the forwarded client is limited"
    );
    assert_eq!(
        get(&proxy, &mirror, &path, &fwd("198.51.100.2")).await.0,
        200,
        "another client behind the same proxy has its own budget"
    );
    // A forged header from an address that is not a trusted proxy is ignored: 127.0.0.4 is
    // limited as itself, not as the exhausted 198.51.100.1.
    let forger = client_from("127.0.0.4");
    assert_eq!(
        get(&forger, &mirror, &path, &fwd("198.51.100.1")).await.0,
        200,
        "an untrusted client's X-Forwarded-For is not believed"
    );
    let log = mirror.requests();
    assert!(
        log.iter()
            .any(|r| r.raw["fields"]["client"] == "198.51.100.1" && r.status == 429),
        "the request log names the forwarded client"
    );
    assert!(
        log.iter().any(|r| r.raw["fields"]["client"] == "127.0.0.4"),
        "and the forger by its own address"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_bytes_are_paced_to_the_client_rate_cold_and_warm() {
    require_tools!(TOOLS);
    let registry = Registry::plain().await;
    let blob = Blob::new(
        "application/octet-stream",
        (0..6u32 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect(),
    );
    RegistryClient::new(&registry.url(), None)
        .push_blob("team/big", &blob)
        .await;
    let mut config = MirrorConfig::new(vec![UpstreamEntry::new(
        "upstream.example",
        &registry.url(),
    )
    .alias("up")]);
    config.extra = config
        .extra
        .top("limits", toml::toml! { client_bytes_per_second = "2MiB" });
    let mirror = Regmirror::start(config).await;
    let url = format!("{}/v2/up/team/big/blobs/{}", mirror.url, blob.digest);
    let client = client_from("127.0.0.1");
    // Cold (streamed while it fills), then warm (sent from the cached file).
    for pass in ["cold", "warm"] {
        let started = Instant::now();
        let resp = client.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{pass}");
        let body = resp.bytes().await.unwrap();
        let took = started.elapsed();
        assert_eq!(
            sha256_digest(&body),
            blob.digest,
            "{pass}: the bytes are the blob's"
        );
        // 6 MiB at 2 MiB/s after a 0.5 MiB burst: about 2.75 s. Wide bounds: the point is that
        // it is paced at all (unlimited, loopback takes milliseconds).
        assert!(
            took >= Duration::from_millis(2000) && took < Duration::from_secs(30),
            "{pass}: 6 MiB at 2 MiB/s took {took:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_may_cause_only_its_share_of_upstream_downloads() {
    require_tools!(TOOLS);
    let registry = Registry::plain().await;
    let blobs: Vec<Blob> = (0..3u8)
        .map(|n| {
            Blob::new(
                "application/octet-stream",
                (0..4u32 << 20)
                    .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8 ^ n)
                    .collect(),
            )
        })
        .collect();
    let client = RegistryClient::new(&registry.url(), None);
    for b in &blobs {
        client.push_blob("team/big", b).await;
    }
    let mut config = MirrorConfig::new(vec![UpstreamEntry::new(
        "upstream.example",
        &registry.url(),
    )
    .alias("up")]);
    // Paced to 1 MiB/s so that the first download is still running while the others are asked.
    config.extra = config.extra.top(
        "limits",
        toml::toml! { client_upstream_downloads = 1
        client_bytes_per_second = "1MiB" },
    );
    let mirror = Regmirror::start(config).await;
    let url = |b: &Blob| format!("{}/v2/up/team/big/blobs/{}", mirror.url, b.digest);
    let a = client_from("127.0.0.1");
    let mut first = a.get(url(&blobs[0])).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let chunk = first.chunk().await.unwrap().expect("the first bytes");
    assert!(!chunk.is_empty());

    let (status, retry) = get(
        &a,
        &mirror,
        &format!("/v2/up/team/big/blobs/{}", blobs[1].digest),
        &[],
    )
    .await;
    assert_eq!(
        status, 429,
        "a second uncached blob while the first is downloading"
    );
    assert!(retry.is_some(), "with Retry-After");
    let b = client_from("127.0.0.3");
    let other = b.get(url(&blobs[1])).send().await.unwrap();
    assert_eq!(
        other.status(),
        200,
        "another client may start its own download"
    );
    // Joining the download already running does not count: the same blob from the same client.
    let joined = a.get(url(&blobs[0])).send().await.unwrap();
    assert_eq!(
        joined.status(),
        200,
        "joining a running download is not a new one"
    );
    drop(joined);

    // When the first answer ends, the client may start another.
    let mut rest = chunk.to_vec();
    while let Some(c) = first.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    assert_eq!(sha256_digest(&rest), blobs[0].digest);
    let body = other.bytes().await.unwrap();
    assert_eq!(sha256_digest(&body), blobs[1].digest);
    let third = a.get(url(&blobs[2])).send().await.unwrap();
    assert_eq!(
        third.status(),
        200,
        "the permit was released with the first answer"
    );
    assert_eq!(
        sha256_digest(&third.bytes().await.unwrap()),
        blobs[2].digest
    );
}

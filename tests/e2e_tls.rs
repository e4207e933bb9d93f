//! An HTTPS upstream: distribution serving TLS with a certificate from a private CA. regmirror
//! trusts it through the upstream's `ca_file`, and refuses it (with a clear error) without.

mod support;

use support::env::tools_available;
use support::mirror::{MirrorConfig, Regmirror, UpstreamEntry};
use support::registry::Registry;
use support::seed::seed;
use support::skopeo::{self, CopyOptions};
use support::tls::make_certs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_with_a_private_ca() {
    if !tools_available(&["docker-registry", "skopeo", "openssl"]) {
        return;
    }
    // Seed over plain HTTP, then serve the same storage over TLS.
    let mut plain = Registry::plain().await;
    let seeded = seed(&plain, "team/multi", "team/single", "tls-upstream").await;
    plain.stop().await;
    let certs = make_certs(plain.dir.path());
    let tls = plain.tls_twin(&certs).await;
    let url = tls.url();
    let ca = certs.ca_file();

    let mut trusted = UpstreamEntry::new("secure.example", &url).alias("sec");
    trusted.ca_file = Some(ca.clone());
    let untrusted = UpstreamEntry::new("untrusted.example", &url).alias("unsec");
    let mirror = Regmirror::start(MirrorConfig::new(vec![trusted, untrusted])).await;
    let work = tempfile::tempdir().unwrap();

    let copied = skopeo::copy(
        &format!("{}/sec/team/multi:v1", mirror.addr()),
        work.path(),
        &CopyOptions {
            all: true,
            ..Default::default()
        },
    )
    .await
    .expect("copy through the mirror from the TLS upstream");
    assert_eq!(
        copied.manifest_digest(),
        seeded.index.manifest.digest,
        "index digest unchanged over TLS"
    );
    let mut got = copied.blob_digests();
    got.sort();
    let mut want: Vec<String> = seeded
        .index
        .children
        .iter()
        .flat_map(|c| {
            c.blobs()
                .into_iter()
                .map(|b| b.digest.clone())
                .collect::<Vec<_>>()
        })
        .collect();
    want.sort();
    want.dedup();
    assert_eq!(got, want, "every blob copied byte-identical");

    // Without the CA the certificate is refused: a clear OCI error, never a silent downgrade.
    let resp = reqwest::get(format!("{}/v2/unsec/team/multi/manifests/v1", mirror.url))
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body = resp.text().await.unwrap();
    assert!(
        body.contains("UNAVAILABLE") && body.to_lowercase().contains("certificate"),
        "{body}"
    );
}

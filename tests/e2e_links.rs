//! End to end: no cross-repository reads (issue #13 part 5). A private image pulled through
//! regmirror with its credentials for a Basic-auth upstream is not served, by digest, under
//! another upstream's repository nor under a repository its own upstream does not confirm, and
//! no request reaches the private upstream on behalf of the other upstreams' clients.
//!
//! Real parts only: distribution 2.8 (htpasswd Basic auth, token auth, and an open one), the
//! regmirror binary, skopeo. See tests/support/world.rs for the standard world.

mod support;

use std::collections::HashSet;

use reqwest::Method;
use support::mirror::UpstreamEntry;
use support::registry::Registry;
use support::skopeo::{self, assert_single_copy, CopyOptions};
use support::world::{World, TOK_ALIAS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_image_is_not_served_under_other_repositories() {
    require_tools!();
    let public = Registry::plain().await;
    let public_name = public.host();
    let w = World::start_with(|c| {
        c.upstreams
            .push(UpstreamEntry::new(&public_name, &public.url()))
    })
    .await;
    let m = w.mirror.addr();
    // The private image: `hub` wants Basic auth; only regmirror's config has the credentials.
    let img = &w.hub_seed.oci;
    let pulled = skopeo::copy(
        &format!("{m}/library/hello:oci"),
        w.work.path(),
        &CopyOptions::default(),
    )
    .await
    .unwrap();
    assert_single_copy(
        &pulled,
        img,
        "library/hello:oci from the Basic-auth upstream",
    );
    let private: Vec<String> = img.digests();
    // What the token upstream's team/single really holds may share a layer with it: there, the
    // upstream confirms and the one stored copy is served.
    let tok_holds: HashSet<String> = w.tok_seed.oci.digests().into_iter().collect();
    let client = w.mirror_client();
    let hub_lines = w.hub.access_lines().len();
    let elsewhere = [
        (format!("{TOK_ALIAS}/team/single"), &tok_holds),
        (format!("{public_name}/library/anything"), &HashSet::new()),
    ];
    let mut refused = 0;
    for (repo, holds) in &elsewhere {
        for (i, d) in private.iter().enumerate() {
            let r = if i == 0 {
                client.manifest(Method::GET, repo, d).await
            } else {
                client.blob(repo, d).await
            };
            if holds.contains(d) {
                assert_eq!(r.status, 200, "{repo} holds {d} upstream: {}", r.text());
                continue;
            }
            let code = if i == 0 {
                "MANIFEST_UNKNOWN"
            } else {
                "BLOB_UNKNOWN"
            };
            assert_eq!(
                (r.status.as_u16(), r.error_code().as_deref()),
                (404, Some(code)),
                "{d} (cached for docker.io/library/hello) under {repo}: {}",
                r.text()
            );
            assert!(r.body.len() < 1000, "an error, not the content");
            refused += 1;
        }
    }
    assert!(refused > private.len(), "{refused} refusals");
    assert_eq!(
        w.hub.access_lines()[hub_lines..].to_vec(),
        Vec::<String>::new(),
        "no request reached the private upstream for the other upstreams' repositories"
    );
    // Under another repository of the private upstream: regmirror asks it (a HEAD with its
    // credentials), which says no; nothing is downloaded or served.
    for d in &private[1..] {
        let r = client.blob("library/other", d).await;
        assert_eq!(
            (r.status.as_u16(), r.error_code().as_deref()),
            (404, Some("BLOB_UNKNOWN"))
        );
        assert_eq!(w.hub.count_blob_gets("library/other", d), 0);
        assert_eq!(
            w.hub
                .count_requests("HEAD", &format!("/v2/library/other/blobs/{d}")),
            1,
            "one confirmation asked for {d}"
        );
    }
    // The repository it was pulled for is still served from the cache.
    for d in &private[1..] {
        let r = client.blob("library/hello", d).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            w.hub.count_blob_gets("library/hello", d),
            1,
            "{d} fetched once"
        );
    }
    let records = w.mirror.requests();
    let refused_logged = records
        .iter()
        .filter(|r| r.status == 404 && r.path.contains("/library/anything/"))
        .count();
    assert_eq!(
        refused_logged,
        private.len(),
        "the request log shows each refusal"
    );
}

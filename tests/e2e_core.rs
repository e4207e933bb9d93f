//! End-to-end tests for "The core": routing styles, byte-exact manifests and blobs, the raw
//! distribution API surface, bad input, and digest verification of upstream bytes.

mod support;

use support::image::MultiImage;
use support::registry::Registry;
use support::seed::{seed, Seeded};
use support::skopeo::{self, CopyOptions, DirImage};

/// Assert a `--all` copy of `multi` is byte-identical: top manifest, every instance, every blob.
fn assert_multi_copy(copy: &DirImage, multi: &MultiImage, what: &str) {
    assert_eq!(copy.manifest_digest(), multi.manifest.digest, "{what}: top-level manifest digest");
    assert_eq!(copy.manifest(), multi.manifest.bytes.as_slice(), "{what}: top-level manifest bytes");
    let mut want_instances: Vec<String> = multi.children.iter().map(|c| c.manifest.digest.clone()).collect();
    want_instances.sort();
    assert_eq!(copy.instance_digests(), want_instances, "{what}: instance manifests");
    let mut want_blobs: Vec<String> =
        multi.children.iter().flat_map(|c| c.blobs().into_iter().map(|b| b.digest.clone())).collect();
    want_blobs.sort();
    want_blobs.dedup();
    assert_eq!(copy.blob_digests(), want_blobs, "{what}: blobs");
}

/// Assert a single-platform copy got exactly `img`.
fn assert_single_copy(copy: &DirImage, img: &support::image::Image, what: &str) {
    assert_eq!(copy.manifest_digest(), img.manifest.digest, "{what}: manifest digest");
    let mut want: Vec<String> = img.blobs().iter().map(|b| b.digest.clone()).collect();
    want.sort();
    assert_eq!(copy.blob_digests(), want, "{what}: blobs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_seeds_token_and_basic_registries_and_skopeo_copies_directly() {
    require_tools!();
    let work = tempfile::tempdir().unwrap();
    let token_reg = Registry::token("puller", "token-secret").await;
    let basic_reg = Registry::basic("puller", "basic-secret").await;
    let a: Seeded = seed(&token_reg, "team/multi", "team/single", "token-upstream").await;
    let b: Seeded = seed(&basic_reg, "library/busybox", "library/hello", "basic-upstream").await;
    assert_ne!(a.index.manifest.digest, b.index.manifest.digest, "labels make the upstreams' images distinct");

    for (reg, s) in [(&token_reg, &a), (&basic_reg, &b)] {
        let creds = reg.credentials.clone();
        let opts = CopyOptions { all: true, creds: creds.clone(), ..Default::default() };
        let idx = skopeo::copy(&format!("{}/{}:v1", reg.host(), s.multi_repo), work.path(), &opts).await.unwrap();
        assert_multi_copy(&idx, &s.index, "index");
        let list = skopeo::copy(&format!("{}/{}:list", reg.host(), s.multi_repo), work.path(), &opts).await.unwrap();
        assert_multi_copy(&list, &s.list, "manifest list");
        let arm = CopyOptions { arch: Some("arm64".into()), creds: creds.clone(), ..Default::default() };
        let one = skopeo::copy(&format!("{}/{}:v1", reg.host(), s.multi_repo), work.path(), &arm).await.unwrap();
        assert_single_copy(&one, s.index.child("arm64"), "arm64 from index");
        let plain = CopyOptions { creds, ..Default::default() };
        let d = skopeo::copy(&format!("{}/{}:docker", reg.host(), s.single_repo), work.path(), &plain).await.unwrap();
        assert_single_copy(&d, &s.docker, "docker single");
    }
    // Without credentials the upstreams refuse: the auth in front of them is real.
    let anon = skopeo::copy(&format!("{}/team/multi:v1", token_reg.host()), work.path(), &CopyOptions::default()).await;
    assert!(anon.is_err(), "anonymous pull from the token registry must fail");
    let anon = skopeo::copy(&format!("{}/library/busybox:v1", basic_reg.host()), work.path(), &CopyOptions::default()).await;
    assert!(anon.is_err(), "anonymous pull from the basic registry must fail");
    let granted = token_reg.token_server.as_ref().unwrap().requests().iter().filter(|r| r.granted).count();
    assert!(granted >= 2, "token server issued tokens");
    let layer = &a.index.child("amd64").layers[1].digest;
    assert!(token_reg.count_blob_gets("team/multi", layer) >= 1, "access log counts blob GETs");
}

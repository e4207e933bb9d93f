//! End-to-end tests for "The core": every routing style with byte-identical copies, the raw
//! distribution API surface, bad input, and digest verification of upstream bytes.
//!
//! Real parts only: distribution 2.8 upstreams (htpasswd Basic and token auth), the regmirror
//! binary, skopeo. See tests/support/world.rs for the standard world.

mod support;

use reqwest::Method;
use support::client::{raw_request, RegistryClient};
use support::fake_upstream::{fake_upstream, get_blob, Transfer};
use support::image::{MultiImage, DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use support::mirror::Regmirror;
use support::registry::Registry;
use support::seed::{seed, Seeded};
use support::skopeo::{self, assert_multi_copy, assert_single_copy, CopyOptions};
use support::world::{Forwarder, World, TOK_ALIAS, TOK_HOST};

fn tags_of(r: &support::client::Reply) -> Vec<String> {
    let v = r.json();
    let tags = v["tags"]
        .as_array()
        .unwrap_or_else(|| panic!("no tags array in {v}"));
    tags.iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

fn all() -> CopyOptions {
    CopyOptions {
        all: true,
        ..Default::default()
    }
}

fn arch(a: &str) -> CopyOptions {
    CopyOptions {
        arch: Some(a.into()),
        ..Default::default()
    }
}

/// Copy the index, the manifest list and both single images of `seed` through `prefix`
/// (`MIRROR_ADDR/<routing prefix>`), asserting byte-identical results.
async fn copy_seed_through(
    prefix: &str,
    seed: &Seeded,
    short_multi: &str,
    short_single: &str,
    work: &std::path::Path,
) {
    let idx = skopeo::copy(&format!("{prefix}/{short_multi}:v1"), work, &all())
        .await
        .unwrap();
    assert_multi_copy(
        &idx,
        &seed.index,
        &format!("{prefix}/{short_multi}:v1 (OCI index)"),
    );
    let list = skopeo::copy(&format!("{prefix}/{short_multi}:list"), work, &all())
        .await
        .unwrap();
    assert_multi_copy(
        &list,
        &seed.list,
        &format!("{prefix}/{short_multi}:list (Docker manifest list)"),
    );
    let oci = skopeo::copy(
        &format!("{prefix}/{short_single}:oci"),
        work,
        &CopyOptions::default(),
    )
    .await
    .unwrap();
    assert_single_copy(&oci, &seed.oci, &format!("{prefix}/{short_single}:oci"));
    let docker = skopeo::copy(
        &format!("{prefix}/{short_single}:docker"),
        work,
        &CopyOptions::default(),
    )
    .await
    .unwrap();
    assert_single_copy(
        &docker,
        &seed.docker,
        &format!("{prefix}/{short_single}:docker"),
    );
}

/// Assert the mirror logged a manifest request for `path` routed by `route` to `upstream`/`repository`.
fn assert_routed(mirror: &Regmirror, path: &str, route: &str, upstream: &str, repository: &str) {
    let records = mirror.requests();
    let hits: Vec<_> = records.iter().filter(|r| r.path == path).collect();
    assert!(
        !hits.is_empty(),
        "no request record for {path}; records: {:#?}",
        records.iter().map(|r| &r.path).collect::<Vec<_>>()
    );
    for r in hits {
        assert_eq!(
            (r.route.as_str(), r.upstream.as_str(), r.repository.as_str()),
            (route, upstream, repository),
            "request record for {path}: {}",
            r.raw
        );
        assert!(
            r.status == 200 || r.status == 304,
            "status of {path}: {}",
            r.raw
        );
        assert!(
            ["hit", "miss", "joined", "stale"].contains(&r.cache.as_str()),
            "cache field of {path}: {}",
            r.raw
        );
    }
}

/// Fetch `multi` and everything it references with raw API calls under `name` (+ `query`),
/// asserting statuses, digests and bytes. Returns the responses' `OCI-Namespace` headers.
async fn fetch_multi_raw(
    c: &RegistryClient,
    name: &str,
    query: &str,
    multi: &MultiImage,
    tag: &str,
) -> Vec<Option<String>> {
    let mut ns_headers = Vec::new();
    let top = c
        .manifest(Method::GET, name, &format!("{tag}{query}"))
        .await;
    assert_eq!(
        top.status,
        200,
        "GET /v2/{name}/manifests/{tag}{query}: {}",
        top.text()
    );
    assert_eq!(
        top.header("docker-content-digest"),
        Some(multi.manifest.digest.as_str()),
        "index digest via {name}{query}"
    );
    assert_eq!(
        top.body, multi.manifest.bytes,
        "index bytes via {name}{query}"
    );
    ns_headers.push(top.header("oci-namespace").map(str::to_string));
    for child in &multi.children {
        let m = c
            .manifest(
                Method::GET,
                name,
                &format!("{}{query}", child.manifest.digest),
            )
            .await;
        assert_eq!(
            m.status,
            200,
            "child manifest {} via {name}{query}: {}",
            child.manifest.digest,
            m.text()
        );
        assert_eq!(
            m.body, child.manifest.bytes,
            "child manifest bytes via {name}{query}"
        );
        assert_eq!(
            m.header("content-type"),
            Some(child.manifest.media_type.as_str())
        );
        ns_headers.push(m.header("oci-namespace").map(str::to_string));
        for b in child.blobs() {
            let r = c
                .get(&format!("/v2/{name}/blobs/{}{query}", b.digest), &[])
                .await;
            assert_eq!(
                r.status,
                200,
                "blob {} via {name}{query}: {}",
                b.digest,
                r.text()
            );
            assert!(
                r.body == b.bytes,
                "blob {} bytes via {name}{query}",
                b.digest
            );
            ns_headers.push(r.header("oci-namespace").map(str::to_string));
        }
    }
    ns_headers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_seeds_token_and_basic_registries_and_skopeo_copies_directly() {
    require_tools!();
    let work = tempfile::tempdir().unwrap();
    let token_reg = Registry::token("puller", "token-secret").await;
    let basic_reg = Registry::basic("puller", "basic-secret").await;
    let a = seed(&token_reg, "team/multi", "team/single", "token-upstream").await;
    let b = seed(
        &basic_reg,
        "library/busybox",
        "library/hello",
        "basic-upstream",
    )
    .await;
    assert_ne!(
        a.index.manifest.digest, b.index.manifest.digest,
        "labels make the upstreams' images distinct"
    );

    for (reg, s) in [(&token_reg, &a), (&basic_reg, &b)] {
        let creds = reg.credentials.clone();
        let opts = CopyOptions {
            all: true,
            creds: creds.clone(),
            ..Default::default()
        };
        let idx = skopeo::copy(
            &format!("{}/{}:v1", reg.host(), s.multi_repo),
            work.path(),
            &opts,
        )
        .await
        .unwrap();
        assert_multi_copy(&idx, &s.index, "index");
        let list = skopeo::copy(
            &format!("{}/{}:list", reg.host(), s.multi_repo),
            work.path(),
            &opts,
        )
        .await
        .unwrap();
        assert_multi_copy(&list, &s.list, "manifest list");
        let arm = CopyOptions {
            arch: Some("arm64".into()),
            creds: creds.clone(),
            ..Default::default()
        };
        let one = skopeo::copy(
            &format!("{}/{}:v1", reg.host(), s.multi_repo),
            work.path(),
            &arm,
        )
        .await
        .unwrap();
        assert_single_copy(&one, s.index.child("arm64"), "arm64 from index");
        let plain = CopyOptions {
            creds,
            ..Default::default()
        };
        let d = skopeo::copy(
            &format!("{}/{}:docker", reg.host(), s.single_repo),
            work.path(),
            &plain,
        )
        .await
        .unwrap();
        assert_single_copy(&d, &s.docker, "docker single");
    }
    // Without credentials the upstreams refuse: the auth in front of them is real.
    let anon = skopeo::copy(
        &format!("{}/team/multi:v1", token_reg.host()),
        work.path(),
        &CopyOptions::default(),
    )
    .await;
    assert!(
        anon.is_err(),
        "anonymous pull from the token registry must fail"
    );
    let anon = skopeo::copy(
        &format!("{}/library/busybox:v1", basic_reg.host()),
        work.path(),
        &CopyOptions::default(),
    )
    .await;
    assert!(
        anon.is_err(),
        "anonymous pull from the basic registry must fail"
    );
    let granted = token_reg
        .token_server
        .as_ref()
        .unwrap()
        .requests()
        .iter()
        .filter(|r| r.granted)
        .count();
    assert!(granted >= 2, "token server issued tokens");
    let layer = &a.index.child("amd64").layers[1].digest;
    assert!(
        token_reg.count_blob_gets("team/multi", layer) >= 1,
        "access log counts blob GETs"
    );

    // containerd's OAuth2 password grant works too, and the token opens the registry.
    let ts = token_reg.token_server.as_ref().unwrap();
    let http = reqwest::Client::new();
    let form = format!(
        "grant_type=password&username=puller&password=token-secret&service={}&scope=repository%3Ateam%2Fmulti%3Apull&client_id=test",
        ts.service
    );
    let resp = http
        .post(ts.realm())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(body["expires_in"], 300);
    let token = body["access_token"].as_str().unwrap();
    let r = http
        .get(format!("{}/v2/team/multi/manifests/v1", token_reg.url()))
        .header("accept", support::image::OCI_INDEX)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["docker-content-digest"].to_str().unwrap(),
        a.index.manifest.digest
    );
    // A token for one repository does not open another, and bad passwords get no token.
    let other = http
        .get(format!("{}/v2/team/single/manifests/oci", token_reg.url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 401);
    let bad = http
        .get(format!(
            "{}?service={}&scope=repository:team/multi:pull",
            ts.realm(),
            ts.service
        ))
        .basic_auth("puller", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_route_by_upstream_name() {
    require_tools!();
    let w = World::start().await;
    let m = w.mirror.addr();
    // docker.io (the Basic-auth upstream) named as the first path segment.
    copy_seed_through(
        &format!("{m}/docker.io"),
        &w.hub_seed,
        "library/busybox",
        "library/hello",
        w.work.path(),
    )
    .await;
    assert_routed(
        &w.mirror,
        "/v2/docker.io/library/busybox/manifests/v1",
        "prefix",
        "docker.io",
        "library/busybox",
    );
    // A host:port upstream name cannot appear in a skopeo reference; use the raw API.
    let name = format!("{}/team/multi", w.tok_name());
    fetch_multi_raw(&w.mirror_client(), &name, "", &w.tok_seed.index, "v1").await;
    fetch_multi_raw(&w.mirror_client(), &name, "", &w.tok_seed.list, "list").await;
    assert_routed(
        &w.mirror,
        &format!("/v2/{name}/manifests/v1"),
        "prefix",
        &w.tok_name(),
        "team/multi",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alias_route_and_second_pull_is_served_from_cache() {
    require_tools!();
    let w = World::start().await;
    let prefix = format!("{}/{TOK_ALIAS}", w.mirror.addr());
    copy_seed_through(
        &prefix,
        &w.tok_seed,
        "team/multi",
        "team/single",
        w.work.path(),
    )
    .await;
    assert_routed(
        &w.mirror,
        &format!("/v2/{TOK_ALIAS}/team/multi/manifests/v1"),
        "prefix",
        &w.tok_name(),
        "team/multi",
    );
    // Pull everything again: every blob reached the upstream exactly once (blobs are content
    // addressed, so the busybox layer shared by both repositories counts once in all: the
    // second repository costs one HEAD that confirms it holds the layer, not a GET).
    copy_seed_through(
        &prefix,
        &w.tok_seed,
        "team/multi",
        "team/single",
        w.work.path(),
    )
    .await;
    let s = &w.tok_seed;
    for img in s
        .index
        .children
        .iter()
        .chain(&s.list.children)
        .chain([&s.oci, &s.docker])
    {
        for b in img.blobs() {
            let n = w.tok.count_blob_gets_any(&b.digest);
            assert_eq!(
                n, 1,
                "upstream GETs of blob {} after two pulls through the mirror",
                b.digest
            );
        }
    }
    assert!(
        w.mirror.requests().iter().any(|r| r.cache == "hit"),
        "second pull produced cache hits"
    );
    // The upstream's credentials came from regmirror's config (skopeo pulled without any).
    let tokens = w.tok.token_server.as_ref().unwrap().requests();
    assert!(
        tokens
            .iter()
            .any(|t| t.granted && t.user.as_deref() == Some(support::world::TOK_USER.0)),
        "regmirror obtained a token with its configured credentials: {tokens:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_header_route() {
    require_tools!();
    let w = World::start().await;
    // The mirror listens on 127.0.0.1 only; socat on 127.0.0.2 makes skopeo send Host: 127.0.0.2:PORT.
    let fwd = Forwarder::start(TOK_HOST, &w.mirror.addr()).await;
    copy_seed_through(
        &fwd.addr,
        &w.tok_seed,
        "team/multi",
        "team/single",
        w.work.path(),
    )
    .await;
    assert_routed(
        &w.mirror,
        "/v2/team/multi/manifests/v1",
        "host",
        &w.tok_name(),
        "team/multi",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedicated_listener_route() {
    require_tools!();
    let w = World::start().await;
    let dedicated = w
        .mirror
        .dedicated_url(&w.tok_name())
        .trim_start_matches("http://")
        .to_string();
    copy_seed_through(
        &dedicated,
        &w.tok_seed,
        "team/multi",
        "team/single",
        w.work.path(),
    )
    .await;
    assert_routed(
        &w.mirror,
        "/v2/team/multi/manifests/v1",
        "listener",
        &w.tok_name(),
        "team/multi",
    );
    // The dedicated listener serves only its upstream: docker.io's images are not there.
    let c = RegistryClient::new(w.mirror.dedicated_url(&w.tok_name()), None);
    let r = c.manifest(Method::GET, "library/busybox", "v1").await;
    assert!(
        r.status == 404,
        "docker.io image via the token upstream's listener: {} {}",
        r.status,
        r.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_upstream_route_adds_library() {
    require_tools!();
    let w = World::start().await;
    let m = w.mirror.addr();
    // `busybox` -> docker.io `library/busybox`.
    let idx = skopeo::copy(&format!("{m}/busybox:v1"), w.work.path(), &all())
        .await
        .unwrap();
    assert_multi_copy(&idx, &w.hub_seed.index, "busybox:v1 via default upstream");
    let list = skopeo::copy(&format!("{m}/busybox:list"), w.work.path(), &all())
        .await
        .unwrap();
    assert_multi_copy(&list, &w.hub_seed.list, "busybox:list via default upstream");
    let hello = skopeo::copy(
        &format!("{m}/hello:docker"),
        w.work.path(),
        &CopyOptions::default(),
    )
    .await
    .unwrap();
    assert_single_copy(
        &hello,
        &w.hub_seed.docker,
        "hello:docker via default upstream",
    );
    let full = skopeo::copy(
        &format!("{m}/library/hello:oci"),
        w.work.path(),
        &CopyOptions::default(),
    )
    .await
    .unwrap();
    assert_single_copy(
        &full,
        &w.hub_seed.oci,
        "library/hello:oci via default upstream",
    );
    assert_routed(
        &w.mirror,
        "/v2/busybox/manifests/v1",
        "default",
        "docker.io",
        "library/busybox",
    );
    assert_routed(
        &w.mirror,
        "/v2/library/hello/manifests/oci",
        "default",
        "docker.io",
        "library/hello",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ns_query_route() {
    require_tools!();
    let w = World::start().await;
    let c = w.mirror_client();
    // containerd style: ?ns=127.0.0.1%3APORT on every request, repository without prefix.
    let encoded: String = url::form_urlencoded::byte_serialize(w.tok_name().as_bytes()).collect();
    let q = format!("?ns={encoded}");
    for ns in fetch_multi_raw(&c, "team/multi", &q, &w.tok_seed.index, "v1").await {
        assert_eq!(
            ns.as_deref(),
            Some(w.tok_name().as_str()),
            "OCI-Namespace header"
        );
    }
    fetch_multi_raw(&c, "team/multi", &q, &w.tok_seed.list, "list").await;
    assert_routed(
        &w.mirror,
        "/v2/team/multi/manifests/v1",
        "ns",
        &w.tok_name(),
        "team/multi",
    );
    // ?ns=docker.io with a single-segment name gets library/.
    for ns in fetch_multi_raw(&c, "busybox", "?ns=docker.io", &w.hub_seed.index, "v1").await {
        assert_eq!(ns.as_deref(), Some("docker.io"), "OCI-Namespace header");
    }
    assert_routed(
        &w.mirror,
        "/v2/busybox/manifests/v1",
        "ns",
        "docker.io",
        "library/busybox",
    );
    // HEAD with ?ns= carries the same digest.
    let head = c
        .manifest(Method::HEAD, "team/multi", &format!("v1{q}"))
        .await;
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("docker-content-digest"),
        Some(w.tok_seed.index.manifest.digest.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_platform_copy_gets_the_requested_platform() {
    require_tools!();
    let w = World::start().await;
    let prefix = format!("{}/{TOK_ALIAS}/team/multi", w.mirror.addr());
    for (tag, multi) in [("v1", &w.tok_seed.index), ("list", &w.tok_seed.list)] {
        for a in ["amd64", "arm64"] {
            let copy = skopeo::copy(&format!("{prefix}:{tag}"), w.work.path(), &arch(a))
                .await
                .unwrap();
            assert_single_copy(
                &copy,
                multi.child(a),
                &format!("{prefix}:{tag} --override-arch {a}"),
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_root_manifest_headers_tags_list_and_accept_headers() {
    require_tools!();
    let w = World::start().await;
    let c = w.mirror_client();
    let root = c.get("/v2/", &[]).await;
    assert_eq!(root.status, 200, "GET /v2/: {}", root.text());
    assert_eq!(
        root.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );

    // GET and HEAD agree on Content-Type, Docker-Content-Digest and Content-Length.
    let s = &w.tok_seed;
    let name = format!("{TOK_ALIAS}/team/multi");
    let cases: Vec<(&str, &str, &support::image::Blob, &str)> = vec![
        (&name, "v1", &s.index.manifest, OCI_INDEX),
        (&name, "list", &s.list.manifest, DOCKER_LIST),
        (
            &name,
            &s.index.children[1].manifest.digest,
            &s.index.children[1].manifest,
            OCI_MANIFEST,
        ),
        (
            "tok/team/single",
            "docker",
            &s.docker.manifest,
            DOCKER_MANIFEST,
        ),
        ("tok/team/single", "oci", &s.oci.manifest, OCI_MANIFEST),
    ];
    for (n, reference, blob, media_type) in cases {
        let get = c.manifest(Method::GET, n, reference).await;
        let head = c.manifest(Method::HEAD, n, reference).await;
        for (what, r) in [("GET", &get), ("HEAD", &head)] {
            assert_eq!(r.status, 200, "{what} {n}:{reference}: {}", r.text());
            assert_eq!(
                r.header("content-type"),
                Some(media_type),
                "{what} {n}:{reference} Content-Type"
            );
            assert_eq!(
                r.header("docker-content-digest"),
                Some(blob.digest.as_str()),
                "{what} {n}:{reference} digest"
            );
            assert_eq!(
                r.header("content-length"),
                Some(blob.size().to_string().as_str()),
                "{what} {n}:{reference} length"
            );
        }
        assert_eq!(get.body, blob.bytes, "GET {n}:{reference} bytes");
        assert!(head.body.is_empty(), "HEAD {n}:{reference} has no body");
    }

    // Blob GET and HEAD.
    let layer = &s.index.children[0].layers[1];
    let path = format!("/v2/{name}/blobs/{}", layer.digest);
    let head = c.send(Method::HEAD, &path, &[], None, "").await;
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(layer.size().to_string().as_str())
    );
    assert_eq!(
        head.header("docker-content-digest"),
        Some(layer.digest.as_str())
    );

    // tags/list, whole and paginated; Link points into the mirror's namespace.
    let full = c.get(&format!("/v2/{name}/tags/list"), &[]).await;
    assert_eq!(full.status, 200, "tags/list: {}", full.text());
    let mut all_tags = tags_of(&full);
    all_tags.sort(); // distribution 2.8 lists tags unsorted without `n`
    assert_eq!(all_tags, s.multi_tags());
    // dockerd sends one Accept header per media type.
    let accepts = [
        ("accept", DOCKER_MANIFEST),
        ("accept", DOCKER_LIST),
        ("accept", OCI_MANIFEST),
        ("accept", OCI_INDEX),
        (
            "accept",
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
        ),
        ("accept", "application/json"),
    ];
    for (reference, blob) in [("v1", &s.index.manifest), ("list", &s.list.manifest)] {
        let r = c
            .send(
                Method::GET,
                &format!("/v2/{name}/manifests/{reference}"),
                &accepts,
                None,
                "",
            )
            .await;
        assert_eq!(
            r.status,
            200,
            "separate Accept headers for {reference}: {}",
            r.text()
        );
        assert_eq!(
            r.header("docker-content-digest"),
            Some(blob.digest.as_str())
        );
        assert_eq!(r.body, blob.bytes);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_list_honours_n_and_last() {
    require_tools!();
    let w = World::start().await;
    let c = w.mirror_client();
    let s = &w.tok_seed;
    let name = format!("{TOK_ALIAS}/team/multi");
    let mut collected = Vec::new();
    let mut next = format!("/v2/{name}/tags/list?n=2");
    for page in 0.. {
        assert!(page < 5, "pagination does not end");
        let r = c.get(&next, &[]).await;
        assert_eq!(r.status, 200, "GET {next}: {}", r.text());
        let tags = tags_of(&r);
        if tags.len() > 2 {
            let up = RegistryClient::new(&w.tok.url(), w.tok.credentials.clone());
            let direct = up
                .send(
                    Method::GET,
                    "/v2/team/multi/tags/list?n=2",
                    &[],
                    None,
                    "repository:team/multi:pull",
                )
                .await;
            panic!(
                "GET {next} returned {} tags {tags:?} (Link: {:?}); the upstream itself answers ?n=2 with {}",
                tags.len(),
                r.header("link"),
                direct.text().trim()
            );
        }
        collected.extend(tags.clone());
        match r.header("link") {
            Some(link) => {
                let target = link
                    .trim()
                    .strip_prefix('<')
                    .and_then(|l| l.split_once('>'))
                    .map(|(t, _)| t)
                    .unwrap();
                assert!(
                    target.starts_with(&format!("/v2/{name}/tags/list?")),
                    "Link {link:?} must point into the mirror's namespace /v2/{name}/"
                );
                next = target.to_string();
            }
            None => {
                if tags.len() == 2 && collected.len() < s.multi_tags().len() {
                    // No Link: continue by hand with `last`.
                    next = format!("/v2/{name}/tags/list?n=2&last={}", tags[1]);
                } else {
                    break;
                }
            }
        }
    }
    assert_eq!(
        collected,
        s.multi_tags(),
        "paginated tags (sorted, each once)"
    );
    let after = c
        .get(&format!("/v2/{name}/tags/list?n=10&last=v2"), &[])
        .await;
    assert_eq!(
        tags_of(&after),
        vec!["v3".to_string(), "v4".to_string()],
        "last=v2"
    );
}

/// `raw_request` off the async runtime.
async fn raw(
    addr: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> support::client::RawReply {
    let (addr, method, target) = (addr.to_string(), method.to_string(), target.to_string());
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let body = body.to_vec();
    tokio::task::spawn_blocking(move || {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        raw_request(&addr, &method, &target, &h, &body)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_and_nothing_is_written_outside_the_data_dir() {
    require_tools!();
    let w = World::start().await;
    let m = w.mirror.addr();
    // Warm the cache a little so the data dir has its normal shape.
    let warm = w
        .mirror_client()
        .manifest(Method::GET, "busybox", "v1")
        .await;
    assert_eq!(warm.status, 200);
    let root = w.mirror.root.clone();
    let sentinel = root.join("sentinel.txt");
    std::fs::write(&sentinel, b"untouched").unwrap();
    let before = support::env::snapshot_tree(&root, &[&w.mirror.data_dir]);
    let uploads_before = w.tok.count_prefix("POST", "/v2/") + w.hub.count_prefix("POST", "/v2/");

    let hex = "a".repeat(64);
    let long_name = "a".repeat(300);
    let long_path = format!("{}x", "abcdefghij/".repeat(25));
    let tok = w.tok_name();
    #[rustfmt::skip]
    let cases: Vec<(&str, String, u16, &str)> = vec![
        // Path traversal in names, plain and percent-encoded.
        ("GET", "/v2/tok/../../etc/passwd/manifests/latest".into(), 400, "NAME_INVALID"),
        ("GET", "/v2/../../../etc/passwd/manifests/latest".into(), 400, "NAME_INVALID"),
        ("GET", "/v2/library/../../x/blobs/sha256:".to_string() + &hex, 400, "NAME_INVALID"),
        ("GET", "/v2/%2e%2e/%2e%2e/etc/manifests/latest".into(), 400, "NAME_INVALID"),
        ("GET", "/v2/tok/team/%2E%2E%2f%2E%2E%2fescape/manifests/latest".into(), 400, "NAME_INVALID"),
        ("GET", "/v2/tok/team/..%2f..%2f/blobs/sha256:".to_string() + &hex, 400, "NAME_INVALID"),
        ("GET", "/v2/Library/BusyBox/manifests/v1".into(), 400, "NAME_INVALID"),
        // Names over 255 characters.
        ("GET", format!("/v2/{long_name}/manifests/latest"), 400, "NAME_INVALID"),
        ("GET", format!("/v2/tok/{long_path}/manifests/latest"), 400, "NAME_INVALID"),
        // Invalid digests.
        ("GET", "/v2/library/busybox/blobs/sha256:abc".into(), 400, "DIGEST_INVALID"),
        ("GET", format!("/v2/library/busybox/blobs/sha256:{}", "g".repeat(64)), 400, "DIGEST_INVALID"),
        ("GET", format!("/v2/library/busybox/blobs/sha256:{}", "A".repeat(64)), 400, "DIGEST_INVALID"),
        ("GET", "/v2/library/busybox/blobs/sha256:..%2f..%2f..%2fetc%2fpasswd".into(), 400, "DIGEST_INVALID"),
        ("GET", "/v2/library/busybox/blobs/md5:d41d8cd98f00b204e9800998ecf8427e".into(), 400, "DIGEST_INVALID"),
        ("HEAD", "/v2/library/busybox/blobs/sha256:1234".into(), 400, ""),
        ("GET", "/v2/library/busybox/manifests/sha256:zzzz".into(), 400, "DIGEST_INVALID"),
        ("GET", "/v2/library/busybox/manifests/-not.a.tag".into(), 400, "TAG_INVALID"),
        // Unknown upstreams.
        ("GET", "/v2/nosuch.example.com/foo/manifests/latest".into(), 404, "NAME_UNKNOWN"),
        ("GET", "/v2/foo/manifests/latest?ns=nosuch.example.org".into(), 404, "NAME_UNKNOWN"),
        // Well-formed requests for what the upstream does not have.
        ("GET", "/v2/tok/team/multi/manifests/no-such-tag".into(), 404, "MANIFEST_UNKNOWN"),
        ("GET", format!("/v2/tok/team/multi/manifests/sha256:{hex}"), 404, "MANIFEST_UNKNOWN"),
        ("GET", format!("/v2/tok/team/multi/blobs/sha256:{hex}"), 404, "BLOB_UNKNOWN"),
        ("GET", format!("/v2/library/busybox/blobs/sha256:{hex}"), 404, "BLOB_UNKNOWN"),
        // Push and delete attempts.
        ("POST", "/v2/library/busybox/blobs/uploads/".into(), 405, "UNSUPPORTED"),
        ("POST", format!("/v2/tok/team/multi/blobs/uploads/?digest=sha256:{hex}"), 405, "UNSUPPORTED"),
        ("POST", format!("/v2/{tok}/team/multi/blobs/uploads/?mount=sha256:{hex}&from=team/single"), 405, "UNSUPPORTED"),
        ("PATCH", "/v2/library/busybox/blobs/uploads/0f9b2c2e-1111-2222-3333-444455556666".into(), 405, "UNSUPPORTED"),
        ("PUT", format!("/v2/library/busybox/blobs/uploads/0f9b2c2e-1111-2222-3333-444455556666?digest=sha256:{hex}"), 405, "UNSUPPORTED"),
        ("PUT", "/v2/library/busybox/manifests/latest".into(), 405, "UNSUPPORTED"),
        ("PUT", "/v2/tok/team/multi/manifests/v1".into(), 405, "UNSUPPORTED"),
        ("DELETE", format!("/v2/library/busybox/manifests/{}", w.hub_seed.index.manifest.digest), 405, "UNSUPPORTED"),
        ("DELETE", format!("/v2/tok/team/multi/blobs/{}", w.tok_seed.oci.layers[1].digest), 405, "UNSUPPORTED"),
    ];
    let mut failures = Vec::new();
    for (method, target, status, code) in &cases {
        let body: &[u8] = if *method == "PUT" {
            b"{\"schemaVersion\":2}"
        } else {
            b""
        };
        let headers: &[(&str, &str)] = if *method == "PUT" {
            &[("Content-Type", OCI_MANIFEST)]
        } else {
            &[]
        };
        let r = raw(&m, method, target, headers, body).await;
        let got_code = r.error_code().unwrap_or_default();
        if r.status != *status || (!code.is_empty() && got_code != *code) {
            failures.push(format!(
                "{method} {target}: want {status} {code}, got {} {}",
                r.status,
                r.text().trim()
            ));
        }
        if *code == "NAME_UNKNOWN" {
            // The message names what is configured, so the user knows what to write instead.
            let text = r.text();
            if !(text.contains("docker.io") && text.contains(&tok)) {
                failures.push(format!("{method} {target}: NAME_UNKNOWN message should list configured upstreams: {text}"));
            }
        }
        let json_error = r
            .header("content-type")
            .is_some_and(|ct| ct.contains("json"));
        if *method != "HEAD" && r.status >= 400 && !json_error {
            failures.push(format!(
                "{method} {target}: error without a JSON Content-Type: {:?}",
                r.headers
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad-input cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // Nothing was created or removed next to the data dir, the sentinel is intact, and no push reached
    // an upstream.
    let after = support::env::snapshot_tree(&root, &[&w.mirror.data_dir]);
    assert_eq!(before, after, "files outside the data dir changed");
    assert_eq!(std::fs::read(&sentinel).unwrap(), b"untouched");
    let uploads_after = w.tok.count_prefix("POST", "/v2/") + w.hub.count_prefix("POST", "/v2/");
    assert_eq!(
        uploads_before, uploads_after,
        "a push attempt reached an upstream"
    );
    for f in support::env::files_under(&w.mirror.data_dir) {
        let p = f.to_string_lossy();
        assert!(
            !p.contains("..") && !p.contains("passwd") && !p.contains("escape"),
            "suspicious file in data dir: {p}"
        );
    }
    assert!(
        w.mirror.is_running_ref(),
        "regmirror survived the bad input"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_with_wrong_upstream_bytes_is_never_served_complete_or_cached() {
    // Needs no external tool: the upstream is in-process.
    let up = fake_upstream();
    let mirror = up.mirror_in_front().await;

    // The manifest itself is fine.
    let c = RegistryClient::new(&mirror.url, None);
    let man = c.manifest(Method::GET, "evil-up/evil/app", "v1").await;
    assert_eq!(man.status, 200, "{}", man.text());
    assert_eq!(man.body, up.manifest.bytes);

    let url = format!(
        "{}/v2/evil-up/evil/app/blobs/{}",
        mirror.url, up.layer_digest
    );
    for attempt in 1..=2 {
        let got = get_blob(&url).await;
        eprintln!("attempt {attempt}: {}", got.describe());
        match &got {
            Transfer::Refused(_) | Transfer::Aborted(_) => {}
            Transfer::Complete(b) if b == &up.bad => {
                panic!(
                    "attempt {attempt}: clean 200 with the complete wrong bytes for {}",
                    up.layer_digest
                )
            }
            Transfer::Complete(b) if b == &up.good => {
                panic!("attempt {attempt}: impossible: the good bytes were never served")
            }
            Transfer::Complete(b) => panic!(
                "attempt {attempt}: clean 200 with {} unexpected bytes",
                b.len()
            ),
        }
    }
    // Also through the default route (a different path to the same digest).
    let got = get_blob(&format!(
        "{}/v2/evil/app/blobs/{}",
        mirror.url, up.layer_digest
    ))
    .await;
    assert!(
        !matches!(got, Transfer::Complete(_)),
        "default route served the corrupt blob: {got:?}"
    );
    assert!(
        up.hits.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "the mirror fetched from the lying upstream"
    );

    // Nothing under the data dir holds the bad bytes or is named after the digest with them.
    let hex = up.layer_digest.trim_start_matches("sha256:");
    // (Spool files under `<data_dir>/tmp/` may exist while a fill runs; they must not hold the
    // complete bad bytes either.)
    for f in support::env::files_under(&mirror.data_dir) {
        let meta = std::fs::metadata(&f).unwrap();
        if meta.len() == up.bad.len() as u64 {
            assert_ne!(
                std::fs::read(&f).unwrap(),
                up.bad,
                "{} holds the corrupt blob",
                f.display()
            );
        }
        let rel = f.strip_prefix(&mirror.data_dir).unwrap();
        assert!(
            rel.starts_with("tmp") || !rel.to_string_lossy().contains(hex),
            "{} is a cache entry for the unverified digest",
            rel.display()
        );
    }
    // The mirror still works afterwards.
    let root = c.get("/v2/", &[]).await;
    assert_eq!(root.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_list_link_from_a_paginating_upstream_points_into_the_mirror_namespace() {
    // Needs no external tool: the upstream is in-process.
    let up = fake_upstream();
    let mirror = up.mirror_in_front().await;
    let c = RegistryClient::new(&mirror.url, None);
    for client_name in ["evil-up/evil/app", "evil/app"] {
        let mut next = format!("/v2/{client_name}/tags/list?n=2");
        let mut collected = Vec::new();
        let mut links = 0;
        for page in 0.. {
            assert!(page < 5, "pagination does not end");
            let r = c.get(&next, &[]).await;
            assert_eq!(r.status, 200, "GET {next}: {}", r.text());
            collected.extend(tags_of(&r));
            let Some(link) = r.header("link") else { break };
            links += 1;
            let target = link
                .trim()
                .strip_prefix('<')
                .and_then(|l| l.split_once('>'))
                .map(|(t, _)| t)
                .unwrap();
            assert!(
                target.starts_with(&format!("/v2/{client_name}/tags/list?")),
                "Link {link:?} (asked as {client_name}) must point into the mirror's namespace"
            );
            next = target.to_string();
        }
        assert_eq!(
            collected,
            ["a", "b", "c", "d", "e"],
            "tags of {client_name} following Link"
        );
        assert_eq!(links, 2, "pages of 2 over 5 tags have two Link headers");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_fetch_each_blob_from_upstream_once() {
    require_tools!();
    let w = World::start().await;
    let reference = format!("{}/{TOK_ALIAS}/team/multi:v1", w.mirror.addr());
    let opts = all();
    let (a, b, c) = tokio::join!(
        skopeo::copy(&reference, w.work.path(), &opts),
        skopeo::copy(&reference, w.work.path(), &opts),
        skopeo::copy(&reference, w.work.path(), &opts),
    );
    for copy in [a, b, c] {
        assert_multi_copy(&copy.unwrap(), &w.tok_seed.index, "concurrent copy");
    }
    for img in &w.tok_seed.index.children {
        for blob in img.blobs() {
            let n = w.tok.count_blob_gets_any(&blob.digest);
            assert_eq!(
                n, 1,
                "upstream GETs of blob {} after three concurrent pulls",
                blob.digest
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_by_digest_is_served_from_cache_with_the_upstream_gone() {
    require_tools!();
    let mut w = World::start().await;
    let m = w.mirror.addr();
    let first = skopeo::copy(&format!("{m}/busybox:v1"), w.work.path(), &all())
        .await
        .unwrap();
    assert_multi_copy(&first, &w.hub_seed.index, "warm-up copy");
    w.hub.stop().await;
    let by_digest = format!("{m}/busybox@{}", w.hub_seed.index.manifest.digest);
    let again = skopeo::copy(&by_digest, w.work.path(), &all())
        .await
        .unwrap();
    assert_multi_copy(
        &again,
        &w.hub_seed.index,
        "copy by digest with the upstream stopped",
    );
    let arm = skopeo::copy(&by_digest, w.work.path(), &arch("arm64"))
        .await
        .unwrap();
    assert_single_copy(
        &arm,
        w.hub_seed.index.child("arm64"),
        "arm64 by digest with the upstream stopped",
    );
    // Something never cached is an error the client can read, not a hang.
    let missing = w
        .mirror_client()
        .manifest(Method::GET, "busybox", "list")
        .await;
    assert!(
        missing.status.is_client_error() || missing.status.is_server_error(),
        "uncached tag with upstream down: {}",
        missing.status
    );
    assert!(
        missing.error_code().is_some(),
        "OCI error body: {}",
        missing.text()
    );
}

/// SIGTERM: regmirror stops accepting, lets the request in progress finish, and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_transfer_in_progress_and_exits_cleanly() {
    require_tools!();
    let mut w = World::start().await;
    let c = w.mirror_client();
    let img = &w.hub_seed.oci;
    let layer = img.layers[0].digest.clone();
    // Warm the cache, then start a download and signal while the response is being read.
    let url = format!("{}/v2/library/hello/blobs/{layer}", w.mirror.url);
    assert_eq!(c.http.get(&url).send().await.unwrap().status(), 200);
    let resp = c.http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // SAFETY: kill(2) on the PID of a child this test started.
    assert_eq!(
        unsafe { libc::kill(w.mirror.pid() as i32, libc::SIGTERM) },
        0
    );
    let body = resp
        .bytes()
        .await
        .expect("the transfer in progress completes");
    assert_eq!(
        support::env::sha256_digest(&body),
        layer,
        "complete and correct after SIGTERM"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let status = loop {
        if let Some(s) = w.mirror.exit_status() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "regmirror still running 15 s after SIGTERM"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(
        status.success(),
        "exit status after SIGTERM: {status:?}\n{}",
        w.mirror.log()
    );
}

/// `serve --listen --data-dir` without a config file: the flags win over the defaults, and text
/// logs written to a file (not a terminal) carry no colour codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_flags_override_the_defaults_and_file_logs_have_no_colour() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("flag-data");
    let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_regmirror"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env_remove("REGMIRROR_CONFIG")
        .env_remove("REGMIRROR_LISTEN")
        .env_remove("REGMIRROR_DATA_DIR")
        .env_remove("REGMIRROR_LOG_FORMAT")
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let guard = support::env::ChildGuard::new(child, "regmirror serve with flags");
    let (url, _) = support::mirror::parse_listening(&line)
        .unwrap_or_else(|| panic!("no listener line: {line:?}"));
    assert!(
        url.starts_with("http://127.0.0.1:"),
        "--listen was used: {url}"
    );
    let c = RegistryClient::new(&url, None);
    assert_eq!(c.get("/healthz", &[]).await.status, 200);
    assert_eq!(c.get("/v2/", &[]).await.status, 200);
    assert!(
        data.join("tmp").is_dir(),
        "--data-dir was used: {}",
        data.display()
    );
    drop(guard);
    let stderr = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(stderr.contains("request"), "text request log: {stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "no ANSI escape codes in a log file: {stderr:?}"
    );
}

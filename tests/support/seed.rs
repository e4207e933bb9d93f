//! The standard image set pushed to an upstream registry, and the digests tests compare against.
//!
//! In `multi_repo`: tag `v1` (and `v2`, `v3`, `v4`) is an OCI index (amd64 + arm64), tag `list` a
//! byte-exact Docker manifest list (amd64 + arm64). In `single_repo`: tag `oci` is a single-platform
//! OCI manifest, tag `docker` a single-platform Docker schema2 manifest. `label` is written into
//! every image, so two upstreams seeded with different labels share no manifest digest.

use super::client::RegistryClient;
use super::image::{docker_manifest_list, image, oci_index, Format, Image, MultiImage, Platform};
use super::registry::Registry;

/// Tags pointing at the OCI index in `multi_repo`.
pub const INDEX_TAGS: &[&str] = &["v1", "v2", "v3", "v4"];
/// Tag of the Docker manifest list in `multi_repo`.
pub const LIST_TAG: &str = "list";

/// What was pushed, with every digest.
#[derive(Debug, Clone)]
pub struct Seeded {
    pub multi_repo: String,
    pub single_repo: String,
    pub index: MultiImage,
    pub list: MultiImage,
    pub oci: Image,
    pub docker: Image,
}

impl Seeded {
    /// Every tag of `multi_repo`, sorted as distribution lists them.
    pub fn multi_tags(&self) -> Vec<String> {
        let mut t: Vec<String> = INDEX_TAGS
            .iter()
            .chain([LIST_TAG].iter())
            .map(|s| s.to_string())
            .collect();
        t.sort();
        t
    }
}

/// Push one single-platform image's blobs and manifest (by `reference`, a tag or its digest).
pub async fn push_image(client: &RegistryClient, repo: &str, img: &Image, reference: &str) {
    for b in img.blobs() {
        client.push_blob(repo, b).await;
    }
    client.push_manifest(repo, reference, &img.manifest).await;
}

/// Push an index or list: children by digest first, then the index under each tag.
pub async fn push_multi(client: &RegistryClient, repo: &str, multi: &MultiImage, tags: &[&str]) {
    for c in &multi.children {
        push_image(client, repo, c, &c.manifest.digest).await;
    }
    for t in tags {
        client.push_manifest(repo, t, &multi.manifest).await;
    }
}

/// Push the standard set to `registry` (with its own credentials).
pub async fn seed(registry: &Registry, multi_repo: &str, single_repo: &str, label: &str) -> Seeded {
    let client = RegistryClient::new(&registry.url(), registry.credentials.clone());
    seed_with(&client, multi_repo, single_repo, label).await
}

/// Push the standard set through `client`.
pub async fn seed_with(
    client: &RegistryClient,
    multi_repo: &str,
    single_repo: &str,
    label: &str,
) -> Seeded {
    let index = oci_index(label);
    let list = docker_manifest_list(label);
    let oci = image(
        Format::Oci,
        Platform::amd64(),
        &format!("{label} single oci"),
    );
    let docker = image(
        Format::Docker,
        Platform::amd64(),
        &format!("{label} single docker"),
    );
    push_multi(client, multi_repo, &index, INDEX_TAGS).await;
    push_multi(client, multi_repo, &list, &[LIST_TAG]).await;
    push_image(client, single_repo, &oci, "oci").await;
    push_image(client, single_repo, &docker, "docker").await;
    Seeded {
        multi_repo: multi_repo.into(),
        single_repo: single_repo.into(),
        index,
        list,
        oci,
        docker,
    }
}

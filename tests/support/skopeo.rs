//! `skopeo copy` from a registry into a `dir:` layout, isolated from the machine's container
//! configuration, and the layout read back for comparison.
//!
//! skopeo's `dir:` transport stores bytes as received: `manifest.json` is the top-level manifest
//! (index, list or single manifest), `<hex>.manifest.json` each copied instance with `--all`, and
//! `<hex>` each blob (named by its sha256 hex).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::env::sha256_digest;
use super::image::{Image, MultiImage};

/// Options of one copy.
#[derive(Debug, Default, Clone)]
pub struct CopyOptions {
    /// Copy every instance of an index or list (`--all`).
    pub all: bool,
    /// `--override-arch` for single-platform copies of an index.
    pub arch: Option<String>,
    /// `--src-creds user:pass`.
    pub creds: Option<(String, String)>,
}

/// The result of a copy into `dir:`.
#[derive(Debug)]
pub struct DirImage {
    pub path: PathBuf,
    pub files: BTreeMap<String, Vec<u8>>,
}

impl DirImage {
    /// Bytes of the top-level manifest.
    pub fn manifest(&self) -> &[u8] {
        self.files
            .get("manifest.json")
            .map(Vec::as_slice)
            .expect("manifest.json in dir: layout")
    }

    pub fn manifest_digest(&self) -> String {
        sha256_digest(self.manifest())
    }

    /// Digests of instance manifests copied with `--all` (from `<hex>.manifest.json`), checked
    /// against their bytes.
    pub fn instance_digests(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .files
            .iter()
            .filter_map(|(name, bytes)| {
                let hex = name.strip_suffix(".manifest.json")?;
                let d = format!("sha256:{hex}");
                assert_eq!(
                    sha256_digest(bytes),
                    d,
                    "{name} holds bytes of another digest"
                );
                Some(d)
            })
            .collect();
        out.sort();
        out
    }

    /// Digests of blob files, checked against their bytes.
    pub fn blob_digests(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .files
            .iter()
            .filter(|(name, _)| name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(|(name, bytes)| {
                let d = format!("sha256:{name}");
                assert_eq!(
                    sha256_digest(bytes),
                    d,
                    "blob file {name} holds bytes of another digest"
                );
                d
            })
            .collect();
        out.sort();
        out
    }
}

/// Copy `docker://{reference}` (e.g. `127.0.0.1:PORT/name:tag`, plain HTTP) into a new dir under
/// `work`. Returns skopeo's stderr on failure.
pub async fn copy(reference: &str, work: &Path, opts: &CopyOptions) -> Result<DirImage, String> {
    let dest = work.join(format!("copy-{}", rand::random::<u32>()));
    let conf = work.join("skopeo-registries.conf");
    std::fs::write(&conf, "unqualified-search-registries = []\n").map_err(|e| e.to_string())?;
    let mut cmd = tokio::process::Command::new("skopeo");
    cmd.env("CONTAINERS_REGISTRIES_CONF", &conf)
        .env("REGISTRY_AUTH_FILE", work.join("skopeo-auth.json"))
        .arg("--insecure-policy")
        .arg("copy")
        .arg("--src-tls-verify=false")
        .arg("--retry-times=0");
    if opts.all {
        cmd.arg("--all");
    }
    if let Some(a) = &opts.arch {
        cmd.arg(format!("--override-arch={a}"));
    }
    match &opts.creds {
        Some((u, p)) => cmd.arg(format!("--src-creds={u}:{p}")),
        None => cmd.arg("--src-no-creds"),
    };
    cmd.arg(format!("docker://{reference}"))
        .arg(format!("dir:{}", dest.display()));
    cmd.kill_on_drop(true);
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), cmd.output())
        .await
        .map_err(|_| format!("skopeo copy {reference} timed out"))?
        .map_err(|e| format!("run skopeo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "skopeo copy docker://{reference} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut files = BTreeMap::new();
    for e in std::fs::read_dir(&dest).map_err(|e| e.to_string())? {
        let e = e.map_err(|e| e.to_string())?;
        let name = e.file_name().to_string_lossy().into_owned();
        files.insert(name, std::fs::read(e.path()).map_err(|e| e.to_string())?);
    }
    Ok(DirImage { path: dest, files })
}

/// Assert a `--all` copy of `multi` is byte-identical: top manifest, every instance, every blob.
pub fn assert_multi_copy(copy: &DirImage, multi: &MultiImage, what: &str) {
    assert_eq!(
        copy.manifest_digest(),
        multi.manifest.digest,
        "{what}: top-level manifest digest"
    );
    assert_eq!(
        copy.manifest(),
        multi.manifest.bytes.as_slice(),
        "{what}: top-level manifest bytes"
    );
    let mut want_instances: Vec<String> = multi
        .children
        .iter()
        .map(|c| c.manifest.digest.clone())
        .collect();
    want_instances.sort();
    assert_eq!(
        copy.instance_digests(),
        want_instances,
        "{what}: instance manifests"
    );
    assert_eq!(copy.blob_digests(), blob_digests_of(multi), "{what}: blobs");
}

/// Assert a single-platform copy got exactly `img`.
pub fn assert_single_copy(copy: &DirImage, img: &Image, what: &str) {
    assert_eq!(
        copy.manifest_digest(),
        img.manifest.digest,
        "{what}: manifest digest"
    );
    assert_eq!(
        copy.manifest(),
        img.manifest.bytes.as_slice(),
        "{what}: manifest bytes"
    );
    let mut want: Vec<String> = img.blobs().iter().map(|b| b.digest.clone()).collect();
    want.sort();
    assert_eq!(copy.blob_digests(), want, "{what}: blobs");
}

/// Every blob digest of `multi`'s instances, sorted, each once.
pub fn blob_digests_of(multi: &MultiImage) -> Vec<String> {
    let mut want: Vec<String> = multi
        .children
        .iter()
        .flat_map(|c| c.blobs().into_iter().map(|b| b.digest.clone()))
        .collect();
    want.sort();
    want.dedup();
    want
}

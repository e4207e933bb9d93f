//! `regmirror import`: an OCI image layout tarball (plain or zstd) -> the cache.
//!
//! Two phases, so that a damaged or altered archive changes nothing:
//! 1. verify: every `blobs/<algorithm>/<hex>` is streamed to a staging directory under the store's
//!    own staging area while it is hashed, and must hash to its name; `index.json` must name every
//!    image by its full reference; every manifest, config and layer an image needs must be in the
//!    archive (or already cached).
//! 2. commit: blobs, then manifests (children before indexes), then tag records, so a reader never
//!    finds a tag whose content is missing.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{io, is_index, references, Error, Result, CONTAINERD_NAME, REF_NAME};
use crate::cache::records;
use crate::oci::{media, Digest, Hasher, ImageRef};
use crate::storage::Storage;

/// Largest `index.json`, `oci-layout` or manifest read into memory.
const MAX_SMALL_FILE: u64 = 16 << 20;

/// What an import added.
#[derive(Debug, Default)]
pub(crate) struct Imported {
    /// The references now served, as named in the archive.
    pub(crate) images: Vec<String>,
    pub(crate) manifests: usize,
    /// Blobs added, and blobs that were cached already.
    pub(crate) blobs: usize,
    pub(crate) blobs_present: usize,
    pub(crate) bytes: u64,
    /// Index entries whose manifest is not in the archive (platforms left out by the export).
    pub(crate) skipped_platforms: Vec<String>,
}

/// The archive unpacked and verified in a staging directory (removed on drop).
struct Staged {
    dir: PathBuf,
    files: HashMap<Digest, (PathBuf, u64)>,
    index: Option<Vec<u8>>,
    layout: Option<Vec<u8>>,
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What phase 1 decided to store.
#[derive(Default)]
struct Plan {
    blobs: BTreeMap<Digest, u64>,
    /// Manifests in commit order (children first): (upstream, repository, digest, media type, body).
    manifests: Vec<(String, String, Digest, String, Vec<u8>)>,
    /// (image, digest, media type, size).
    tags: Vec<(ImageRef, Digest, String, u64)>,
}

/// Import `file` into `storage`, staging under `staging_dir` (on the store's disk).
pub(crate) async fn import(
    storage: Arc<dyn Storage>,
    staging_dir: &Path,
    file: &Path,
) -> Result<Imported> {
    let dir = staging_dir.join(format!(
        "import-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let file = file.to_path_buf();
    let staged = tokio::task::spawn_blocking(move || unpack(&file, dir))
        .await
        .map_err(|e| Error::Invalid(format!("import task failed: {e}")))??;
    let mut report = Imported::default();
    let plan = plan(storage.as_ref(), &staged, &mut report).await?;
    commit(storage.as_ref(), &staged, plan, &mut report).await?;
    Ok(report)
}

fn unpack(file: &Path, dir: PathBuf) -> Result<Staged> {
    std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
    let mut staged = Staged {
        dir,
        files: HashMap::new(),
        index: None,
        layout: None,
    };
    let what = format!("read {}", file.display());
    let mut f = std::fs::File::open(file).map_err(io(what.clone()))?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic).map_err(io(what.clone()))?;
    let f = std::io::BufReader::new(std::fs::File::open(file).map_err(io(what.clone()))?);
    let reader: Box<dyn Read> = if n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        Box::new(zstd::Decoder::with_buffer(f).map_err(io(what.clone()))?)
    } else {
        Box::new(f)
    };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(io(what.clone()))? {
        let mut entry = entry.map_err(io(what.clone()))?;
        if entry.header().entry_type().is_dir() {
            continue;
        }
        let path = entry
            .path()
            .map_err(io(what.clone()))?
            .to_string_lossy()
            .to_string();
        let path = path.trim_start_matches("./").to_string();
        match path.as_str() {
            "index.json" => staged.index = Some(small(&mut entry, &path)?),
            "oci-layout" => staged.layout = Some(small(&mut entry, &path)?),
            p if p.starts_with("blobs/") => {
                let digest: Digest =
                    p["blobs/".len()..]
                        .replacen('/', ":", 1)
                        .parse()
                        .map_err(|_| {
                            Error::Invalid(format!("{p} in the archive is not named by a digest"))
                        })?;
                let dest = staged.dir.join(digest.hex());
                let size = stage(&mut entry, &dest, &digest, &path)?;
                staged.files.insert(digest, (dest, size));
            }
            other => tracing::debug!(
                path = other,
                "ignoring a file that is not part of the OCI layout"
            ),
        }
    }
    Ok(staged)
}

fn small(r: &mut impl Read, path: &str) -> Result<Vec<u8>> {
    let mut v = Vec::new();
    r.take(MAX_SMALL_FILE)
        .read_to_end(&mut v)
        .map_err(io(format!("read {path} in the archive")))?;
    Ok(v)
}

/// Copy one blob to `dest`, hashing it; it must hash to `digest`.
fn stage(r: &mut impl Read, dest: &Path, digest: &Digest, path: &str) -> Result<u64> {
    let mut out = std::fs::File::create(dest).map_err(io(format!("create {}", dest.display())))?;
    let mut hasher = Hasher::new(digest.algorithm());
    let mut buf = vec![0u8; 256 << 10];
    let mut size = 0u64;
    loop {
        let n = r
            .read(&mut buf)
            .map_err(io(format!("read {path} in the archive")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        std::io::Write::write_all(&mut out, &buf[..n])
            .map_err(io(format!("write {}", dest.display())))?;
        size += n as u64;
    }
    let actual = hasher.finish();
    if &actual != digest {
        return Err(Error::Tampered {
            path: path.to_string(),
            expected: digest.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(size)
}

/// The full reference an index entry names, from its annotations.
fn entry_name(e: &serde_json::Value) -> Result<ImageRef> {
    let a = &e["annotations"];
    let name = a[CONTAINERD_NAME].as_str().or_else(|| a[REF_NAME].as_str()).ok_or_else(|| {
        Error::Invalid(format!(
            "index.json entry {} names no image (annotation {CONTAINERD_NAME} or {REF_NAME}); nothing was imported",
            e["digest"]
        ))
    })?;
    let img = ImageRef::parse(name).map_err(|err| {
        Error::Invalid(format!("index.json names {name:?}, which is not a full image reference ({err}); nothing was imported"))
    })?;
    if !name.contains('/') {
        return Err(Error::Invalid(format!(
            "index.json names {name:?} without a registry and repository; nothing was imported"
        )));
    }
    Ok(img)
}

async fn plan(storage: &dyn Storage, staged: &Staged, report: &mut Imported) -> Result<Plan> {
    if staged.layout.is_none() {
        return Err(Error::Invalid(
            "the archive has no oci-layout file: not an OCI image layout".into(),
        ));
    }
    let index = staged.index.as_ref().ok_or_else(|| {
        Error::Invalid("the archive has no index.json: not an OCI image layout".into())
    })?;
    let index: serde_json::Value = serde_json::from_slice(index)
        .map_err(|e| Error::Invalid(format!("index.json is not JSON: {e}")))?;
    let mut plan = Plan::default();
    for e in index["manifests"].as_array().into_iter().flatten() {
        let img = entry_name(e)?;
        let d: Digest = e["digest"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::Invalid(format!("index.json entry for {img} has no digest")))?;
        let (mt, size) = add_manifest(
            storage,
            staged,
            &img,
            &d,
            e["mediaType"].as_str(),
            &mut plan,
            report,
        )
        .await?;
        if img.tag.is_some() {
            plan.tags.push((img.clone(), d, mt, size));
        }
        report.images.push(img.to_string());
    }
    Ok(plan)
}

/// Plan the manifest `d` of `img` and what it needs; returns its media type and size.
async fn add_manifest(
    storage: &dyn Storage,
    staged: &Staged,
    img: &ImageRef,
    d: &Digest,
    declared: Option<&str>,
    plan: &mut Plan,
    report: &mut Imported,
) -> Result<(String, u64)> {
    let (path, size) = staged
        .files
        .get(d)
        .ok_or_else(|| Error::Missing(format!("manifest {d} of {img} is not in the archive")))?;
    if *size > MAX_SMALL_FILE {
        return Err(Error::Invalid(format!(
            "manifest {d} of {img} is {size} bytes: too large"
        )));
    }
    let body = std::fs::read(path).map_err(io(format!("read {}", path.display())))?;
    let mt = media::manifest_media_type(&body, declared)
        .ok_or_else(|| Error::Invalid(format!("{d} of {img} is not an image manifest")))?;
    let (children, blobs) = references(&body);
    if is_index(&mt) {
        for (cd, desc) in children {
            if staged.files.contains_key(&cd) {
                Box::pin(add_manifest(
                    storage,
                    staged,
                    img,
                    &cd,
                    desc["mediaType"].as_str(),
                    plan,
                    report,
                ))
                .await?;
            } else if records::manifest(storage, &cd).await?.is_none() {
                report.skipped_platforms.push(format!(
                    "{img} {}",
                    crate::prefetch::platform_name(&desc["platform"])
                ));
            }
        }
    } else {
        for (bd, _) in blobs {
            match staged.files.get(&bd) {
                Some((_, s)) => {
                    plan.blobs.insert(bd, *s);
                }
                None if records::blob_size(storage, &bd).await?.is_some() => {}
                None => {
                    return Err(Error::Missing(format!(
                        "blob {bd} of {img} is not in the archive"
                    )));
                }
            }
        }
    }
    if !plan
        .manifests
        .iter()
        .any(|(u, r, x, _, _)| x == d && u == &img.registry && r == &img.repository)
    {
        plan.manifests.push((
            img.registry.clone(),
            img.repository.clone(),
            d.clone(),
            mt.clone(),
            body,
        ));
    }
    Ok((mt, *size))
}

async fn commit(
    storage: &dyn Storage,
    staged: &Staged,
    plan: Plan,
    report: &mut Imported,
) -> Result<()> {
    for (d, size) in &plan.blobs {
        if records::blob_size(storage, d).await?.is_some() {
            report.blobs_present += 1;
            continue;
        }
        // plan() put only digests of staged files in plan.blobs.
        let (path, _) = &staged.files[d];
        storage
            .put_file(&records::blob_key(d), path)
            .await
            .map_err(crate::cache::Error::from)?;
        report.blobs += 1;
        report.bytes += size;
    }
    for (upstream, repo, d, mt, body) in &plan.manifests {
        records::put_manifest(storage, (upstream, repo), d, mt, body).await?;
        report.manifests += 1;
        report.bytes += body.len() as u64;
    }
    for (img, d, mt, size) in &plan.tags {
        let tag = img.tag.as_deref().unwrap_or("latest");
        records::put_tag(storage, &img.registry, &img.repository, tag, d, mt, *size).await?;
    }
    Ok(())
}

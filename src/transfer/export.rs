//! `regmirror export`: cached images -> an OCI image layout tarball.
//!
//! Manifests come from storage whole (they are small); blobs are copied from the store's local
//! files into the tar stream, never held in memory. The tarball is written beside the target and
//! renamed into place when complete. Entries have fixed owners, modes and times, so the same
//! images give the same bytes.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::{io, is_index, references, Error, Result, CONTAINERD_NAME, REF_NAME};
use crate::cache::records;
use crate::oci::{media, Digest, ImageRef};
use crate::storage::Storage;

/// What an export wrote.
#[derive(Debug, Default)]
pub(crate) struct Exported {
    pub(crate) images: usize,
    pub(crate) manifests: usize,
    pub(crate) blobs: usize,
    /// Bytes of blobs and manifests (before compression).
    pub(crate) bytes: u64,
    /// Index entries left out because they are not cached: "IMAGE platform".
    pub(crate) skipped_platforms: Vec<String>,
}

/// Everything the archive holds, collected before it is written.
#[derive(Default)]
struct Contents {
    manifests: BTreeMap<Digest, Bytes>,
    blobs: BTreeMap<Digest, (std::fs::File, u64)>,
    index: Vec<serde_json::Value>,
}

/// Export `images` from `storage` to `out`, zstd-compressed when `zstd` is set.
pub(crate) async fn export(
    storage: &dyn Storage,
    images: &[ImageRef],
    out: &Path,
    zstd: bool,
) -> Result<Exported> {
    let mut c = Contents::default();
    let mut report = Exported::default();
    for img in images {
        let (digest, media_type) = resolve(storage, img).await?;
        let size = collect(storage, img, &digest, &mut c, &mut report).await?;
        let name = img.to_string();
        c.index.push(serde_json::json!({
            "mediaType": media_type,
            "digest": digest.to_string(),
            "size": size,
            "annotations": { REF_NAME: name, CONTAINERD_NAME: name },
        }));
        report.images += 1;
    }
    report.manifests = c.manifests.len();
    report.blobs = c.blobs.len();
    report.bytes = c.manifests.values().map(|b| b.len() as u64).sum::<u64>()
        + c.blobs.values().map(|(_, s)| s).sum::<u64>();
    let out = out.to_path_buf();
    tokio::task::spawn_blocking(move || write(c, &out, zstd))
        .await
        .map_err(|e| Error::Invalid(format!("export task failed: {e}")))??;
    Ok(report)
}

/// The cached digest and media type `img` names.
async fn resolve(storage: &dyn Storage, img: &ImageRef) -> Result<(Digest, String)> {
    if let Some(d) = &img.digest {
        return match records::manifest(storage, d).await? {
            Some((mt, _)) => Ok((d.clone(), mt)),
            None => Err(Error::NotCached(img.to_string())),
        };
    }
    let tag = img.tag.as_deref().unwrap_or("latest");
    records::tag(storage, &img.registry, &img.repository, tag)
        .await?
        .ok_or_else(|| Error::NotCached(img.to_string()))
}

/// Add the manifest `d` and what it references; returns its size.
async fn collect(
    storage: &dyn Storage,
    img: &ImageRef,
    top: &Digest,
    c: &mut Contents,
    report: &mut Exported,
) -> Result<u64> {
    let mut pending = vec![top.clone()];
    let mut top_size = 0;
    while let Some(d) = pending.pop() {
        if c.manifests.contains_key(&d) {
            continue;
        }
        let (mt, body) = records::manifest(storage, &d)
            .await?
            .ok_or_else(|| Error::NotCached(format!("manifest {d} of {img}")))?;
        if &d == top {
            top_size = body.len() as u64;
        }
        let (children, blobs) = references(&body);
        if is_index(&mt) {
            for (cd, desc) in children {
                if records::manifest(storage, &cd).await?.is_some() {
                    pending.push(cd);
                } else {
                    report.skipped_platforms.push(format!(
                        "{img} {}",
                        crate::prefetch::platform_name(&desc["platform"])
                    ));
                }
            }
        } else {
            for (bd, _) in blobs {
                if c.blobs.contains_key(&bd) {
                    continue;
                }
                let file = storage
                    .open_file(&records::blob_key(&bd))
                    .await
                    .map_err(|_| Error::NotCached(format!("blob {bd} of {img}")))?
                    .ok_or_else(|| Error::Invalid("export needs a local-disk store".into()))?;
                c.blobs.insert(bd, file);
            }
        }
        c.manifests.insert(d, body);
    }
    Ok(top_size)
}

fn header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

fn blob_path(d: &Digest) -> String {
    format!("blobs/{}/{}", d.algorithm_name(), d.hex())
}

fn write(c: Contents, out: &Path, zstd: bool) -> Result<()> {
    let tmp = PathBuf::from(format!("{}.part", out.display()));
    let file = std::fs::File::create(&tmp).map_err(io(format!("create {}", tmp.display())))?;
    let buffered = std::io::BufWriter::with_capacity(1 << 20, file);
    let what = format!("write {}", tmp.display());
    let result = if zstd {
        let enc = zstd::Encoder::new(buffered, 3).map_err(io(what.clone()))?;
        write_tar(c, enc.auto_finish()).map_err(io(what.clone()))
    } else {
        write_tar(c, buffered).map_err(io(what.clone()))
    };
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, out).map_err(io(format!("rename to {}", out.display())))
}

fn write_tar<W: Write>(c: Contents, w: W) -> std::io::Result<()> {
    let mut tar = tar::Builder::new(w);
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    tar.append_data(&mut header(layout.len() as u64), "oci-layout", &layout[..])?;
    let index = serde_json::to_vec_pretty(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": c.index,
    }))?;
    tar.append_data(&mut header(index.len() as u64), "index.json", &index[..])?;
    let mut dirs = std::collections::BTreeSet::new();
    for d in c.manifests.keys().chain(c.blobs.keys()) {
        dirs.insert(format!("blobs/{}/", d.algorithm_name()));
    }
    for dir in std::iter::once("blobs/".to_string()).chain(dirs) {
        let mut h = header(0);
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        tar.append_data(&mut h, dir, std::io::empty())?;
    }
    for (d, body) in &c.manifests {
        tar.append_data(&mut header(body.len() as u64), blob_path(d), &body[..])?;
    }
    for (d, (file, size)) in c.blobs {
        if c.manifests.contains_key(&d) {
            continue;
        }
        tar.append_data(
            &mut header(size),
            blob_path(&d),
            std::io::Read::take(file, size),
        )?;
    }
    tar.into_inner()?.flush()
}

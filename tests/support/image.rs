//! Images built in memory, offline and deterministically (fixed mtimes, owners, gzip headers):
//! layers, configs, single-platform manifests (OCI or Docker schema2), OCI indexes and Docker
//! manifest lists. Nothing here does I/O except reading `/bin/busybox`.

use std::io::Write;
use std::sync::OnceLock;

use super::env::sha256_digest;

/// Static busybox from Debian's `busybox-static`, used as the layer's `bin/busybox`.
pub const BUSYBOX: &str = "/bin/busybox";

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Every manifest media type, for an `Accept` header that takes anything.
pub const ALL_MANIFEST_TYPES: &[&str] = &[OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// Content-addressed bytes.
#[derive(Debug, Clone)]
pub struct Blob {
    pub digest: String,
    pub media_type: String,
    pub bytes: Vec<u8>,
}

impl Blob {
    pub fn new(media_type: &str, bytes: Vec<u8>) -> Blob {
        Blob {
            digest: sha256_digest(&bytes),
            media_type: media_type.into(),
            bytes,
        }
    }

    pub fn size(&self) -> usize {
        self.bytes.len()
    }

    /// A descriptor for this blob.
    pub fn descriptor(&self) -> serde_json::Value {
        serde_json::json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size()})
    }
}

/// A gzip-compressed tar layer and the digest of its uncompressed tar (the config's diff_id).
#[derive(Debug, Clone)]
pub struct Layer {
    pub gz: Vec<u8>,
    pub diff_id: String,
}

/// Which manifest format a single-platform image uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Oci,
    Docker,
}

/// A file to put into a layer.
pub enum Entry<'a> {
    Dir(&'a str),
    File {
        path: &'a str,
        mode: u32,
        data: &'a [u8],
    },
    Symlink {
        path: &'a str,
        target: &'a str,
    },
}

/// Build a deterministic tar.gz layer.
pub fn layer(entries: &[Entry<'_>]) -> Layer {
    let mut tar = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            Entry::Dir(path) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                tar.append_data(&mut h, path, std::io::empty())
                    .expect("tar dir");
            }
            Entry::File { path, mode, data } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                tar.append_data(&mut h, path, *data).expect("tar file");
            }
            Entry::Symlink { path, target } => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                tar.append_link(&mut h, path, target).expect("tar symlink");
            }
        }
    }
    let raw = tar.into_inner().expect("finish tar");
    // GzBuilder writes mtime 0 and no file name: same input, same bytes.
    let mut gz = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).expect("gzip");
    Layer {
        gz: gz.finish().expect("gzip finish"),
        diff_id: sha256_digest(&raw),
    }
}

/// The shared base layer: `bin/busybox` plus `bin/sh` and a few applet links (built once).
pub fn busybox_layer() -> &'static Layer {
    static L: OnceLock<Layer> = OnceLock::new();
    L.get_or_init(|| {
        let busybox = std::fs::read(BUSYBOX)
            .unwrap_or_else(|e| panic!("read {BUSYBOX} (busybox-static): {e}"));
        layer(&[
            Entry::Dir("bin"),
            Entry::File {
                path: "bin/busybox",
                mode: 0o755,
                data: &busybox,
            },
            Entry::Symlink {
                path: "bin/sh",
                target: "busybox",
            },
            Entry::Symlink {
                path: "bin/cat",
                target: "busybox",
            },
            Entry::Symlink {
                path: "bin/echo",
                target: "busybox",
            },
            Entry::Symlink {
                path: "bin/ls",
                target: "busybox",
            },
            Entry::Dir("etc"),
            Entry::Dir("tmp"),
        ])
    })
}

/// A platform (architecture, optional variant); OS is always linux.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            architecture: architecture.into(),
            variant: variant.map(str::to_string),
        }
    }

    pub fn amd64() -> Platform {
        Platform::new("amd64", None)
    }

    pub fn arm64() -> Platform {
        Platform::new("arm64", Some("v8"))
    }

    fn json(&self) -> serde_json::Value {
        let mut p = serde_json::json!({"architecture": self.architecture, "os": "linux"});
        if let Some(v) = &self.variant {
            p["variant"] = serde_json::Value::String(v.clone());
        }
        p
    }
}

/// A single-platform image: manifest, config and layers.
#[derive(Debug, Clone)]
pub struct Image {
    pub format: Format,
    pub platform: Platform,
    pub manifest: Blob,
    pub config: Blob,
    pub layers: Vec<Blob>,
}

impl Image {
    /// Config and layers: what must be pushed before the manifest.
    pub fn blobs(&self) -> Vec<&Blob> {
        std::iter::once(&self.config)
            .chain(self.layers.iter())
            .collect()
    }

    /// Every digest the image consists of (manifest, config, layers).
    pub fn digests(&self) -> Vec<String> {
        std::iter::once(self.manifest.digest.clone())
            .chain(self.blobs().iter().map(|b| b.digest.clone()))
            .collect()
    }

    /// A descriptor with platform, for an index or manifest list.
    fn platform_descriptor(&self) -> serde_json::Value {
        let mut d = self.manifest.descriptor();
        d["platform"] = self.platform.json();
        d
    }
}

/// Build an image: the busybox layer plus a small layer with `/etc/regmirror-test` whose text
/// (`label`) makes every image distinct.
pub fn image(format: Format, platform: Platform, label: &str) -> Image {
    let text = format!("{label}\narch={}\n", platform.architecture);
    let top = layer(&[
        Entry::Dir("etc"),
        Entry::File {
            path: "etc/regmirror-test",
            mode: 0o644,
            data: text.as_bytes(),
        },
    ]);
    let base = busybox_layer();
    let (layer_type, config_type, manifest_type) = match format {
        Format::Oci => (OCI_LAYER_GZIP, OCI_CONFIG, OCI_MANIFEST),
        Format::Docker => (DOCKER_LAYER_GZIP, DOCKER_CONFIG, DOCKER_MANIFEST),
    };
    let mut config = platform.json();
    config["created"] = "2024-01-01T00:00:00Z".into();
    config["config"] = serde_json::json!({
        "Env": ["PATH=/bin"],
        "Cmd": ["/bin/cat", "/etc/regmirror-test"],
        "Labels": {"org.regmirror.test": label},
    });
    config["rootfs"] =
        serde_json::json!({"type": "layers", "diff_ids": [base.diff_id, top.diff_id]});
    config["history"] = serde_json::json!([
        {"created": "2024-01-01T00:00:00Z", "created_by": "regmirror test harness: busybox"},
        {"created": "2024-01-01T00:00:00Z", "created_by": format!("regmirror test harness: {label}")},
    ]);
    let config = Blob::new(config_type, serde_json::to_vec(&config).expect("json"));
    let layers = vec![
        Blob::new(layer_type, base.gz.clone()),
        Blob::new(layer_type, top.gz),
    ];
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": config.descriptor(),
        "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
    });
    let manifest = Blob::new(
        manifest_type,
        serde_json::to_vec_pretty(&manifest).expect("json"),
    );
    Image {
        format,
        platform,
        manifest,
        config,
        layers,
    }
}

/// A multi-platform image: an OCI index or a Docker manifest list and its children.
#[derive(Debug, Clone)]
pub struct MultiImage {
    pub manifest: Blob,
    pub children: Vec<Image>,
}

impl MultiImage {
    /// The digests of the per-platform manifests, sorted.
    pub fn child_digests(&self) -> Vec<String> {
        let mut d: Vec<String> = self
            .children
            .iter()
            .map(|c| c.manifest.digest.clone())
            .collect();
        d.sort();
        d
    }

    /// The child for `architecture`.
    pub fn child(&self, architecture: &str) -> &Image {
        self.children
            .iter()
            .find(|c| c.platform.architecture == architecture)
            .unwrap_or_else(|| panic!("no {architecture} child"))
    }

    /// Every digest: index, child manifests, configs and layers (deduplicated, sorted).
    pub fn digests(&self) -> Vec<String> {
        let mut all: Vec<String> = std::iter::once(self.manifest.digest.clone())
            .chain(self.children.iter().flat_map(|c| c.digests()))
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

/// An OCI index of OCI manifests for amd64 and arm64 (each with its own label text).
pub fn oci_index(label: &str) -> MultiImage {
    let children = vec![
        image(
            Format::Oci,
            Platform::amd64(),
            &format!("{label} oci amd64"),
        ),
        image(
            Format::Oci,
            Platform::arm64(),
            &format!("{label} oci arm64 (a different file)"),
        ),
    ];
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": children.iter().map(Image::platform_descriptor).collect::<Vec<_>>(),
        "annotations": {"org.regmirror.test": label},
    });
    MultiImage {
        manifest: Blob::new(OCI_INDEX, serde_json::to_vec(&index).expect("json")),
        children,
    }
}

/// A Docker manifest list of schema2 manifests for amd64 and arm64, serialised with an unusual
/// three-space indentation and a trailing newline: a mirror that re-encodes it changes its digest.
pub fn docker_manifest_list(label: &str) -> MultiImage {
    let children = vec![
        image(
            Format::Docker,
            Platform::amd64(),
            &format!("{label} docker amd64"),
        ),
        image(
            Format::Docker,
            Platform::arm64(),
            &format!("{label} docker arm64 (a different file)"),
        ),
    ];
    let list = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": children.iter().map(Image::platform_descriptor).collect::<Vec<_>>(),
    });
    let mut bytes = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"   ");
    let mut ser = serde_json::Serializer::with_formatter(&mut bytes, fmt);
    serde::Serialize::serialize(&list, &mut ser).expect("json");
    bytes.push(b'\n');
    MultiImage {
        manifest: Blob::new(DOCKER_LIST, bytes),
        children,
    }
}

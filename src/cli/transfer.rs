//! `regmirror export` / `regmirror import`: arguments and messages. The archive format and the
//! verification live in [`crate::transfer`].

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::human_size as human;
use crate::config::Config;
use crate::oci::ImageRef;
use crate::storage::{self, Role};

/// Where the cache is (as for `regmirror cache`).
#[derive(Debug, clap::Args)]
pub(super) struct Location {
    /// Configuration file whose data_dir to use.
    #[arg(long, env = "REGMIRROR_CONFIG")]
    config: Option<PathBuf>,
    /// The data directory (overrides the configuration's).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// Write cached images to an OCI image layout tarball.
#[derive(Debug, clap::Args)]
pub(super) struct ExportArgs {
    /// Cached images, e.g. "registry.k8s.io/pause:3.9" (platforms not cached are left out).
    #[arg(required = true)]
    images: Vec<String>,
    /// The tarball to write (`skopeo copy oci-archive:FILE:IMAGE ...` reads it uncompressed).
    #[arg(short, long)]
    output: PathBuf,
    /// Compress the tarball with zstd (`regmirror import` reads both).
    #[arg(long)]
    zstd: bool,
    #[command(flatten)]
    location: Location,
}

/// Add the images of an OCI image layout tarball to the cache.
#[derive(Debug, clap::Args)]
pub(super) struct ImportArgs {
    /// The tarball (plain or zstd), as `regmirror export` or any OCI tool writes it with full
    /// image names in `io.containerd.image.name` or `org.opencontainers.image.ref.name`.
    file: PathBuf,
    #[command(flatten)]
    location: Location,
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

async fn open(loc: &Location, create: bool) -> Result<storage::Opened, String> {
    let config = Config::load(loc.config.as_deref()).map_err(|e| e.to_string())?;
    let dir = loc.data_dir.clone().unwrap_or(config.data_dir.clone());
    if !create && !dir.is_dir() {
        return Err(format!(
            "data directory {} does not exist (set --data-dir or data_dir in --config)",
            dir.display()
        ));
    }
    storage::open(&dir, config.s3_backend(), Role::Tool)
        .await
        .map_err(|e| format!("cannot open the data directory {}: {e}", dir.display()))
}

pub(super) fn export(args: ExportArgs) -> ExitCode {
    let images: Result<Vec<ImageRef>, String> = args
        .images
        .iter()
        .map(|i| ImageRef::parse(i).map_err(|e| format!("image reference {i:?}: {e}")))
        .collect();
    let result = images.and_then(|images| {
        runtime()?.block_on(async {
            let opened = open(&args.location, false).await?;
            crate::transfer::export::export(
                opened.storage.as_ref(),
                &images,
                &args.output,
                args.zstd,
            )
            .await
            .map_err(|e| e.to_string())
        })
    });
    match result {
        Ok(r) => {
            for s in &r.skipped_platforms {
                eprintln!("regmirror: not cached, left out: {s}");
            }
            println!(
                "exported {} image(s) to {}: {} manifest(s), {} blob(s), {}",
                r.images,
                args.output.display(),
                r.manifests,
                r.blobs,
                human(r.bytes)
            );
            ExitCode::SUCCESS
        }
        Err(e) => super::fail(e),
    }
}

pub(super) fn import(args: ImportArgs) -> ExitCode {
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            let opened = open(&args.location, true).await?;
            crate::transfer::import::import(opened.storage, &opened.staging_dir, &args.file)
                .await
                .map_err(|e| e.to_string())
        })
    });
    match result {
        Ok(r) => {
            for s in &r.skipped_platforms {
                eprintln!("regmirror: not in the archive, left out: {s}");
            }
            for i in &r.images {
                println!("imported {i}");
            }
            println!(
                "imported {} image(s): {} manifest(s), {} blob(s) added ({} already cached), {}",
                r.images.len(),
                r.manifests,
                r.blobs,
                r.blobs_present,
                human(r.bytes)
            );
            ExitCode::SUCCESS
        }
        Err(e) => super::fail(e),
    }
}

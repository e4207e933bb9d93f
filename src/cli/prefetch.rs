//! `regmirror prefetch`: arguments, the source (a mirror URL or the data directory), the exit
//! status. The walk and the output live in [`crate::prefetch`].

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::oci::ImageRef;
use crate::prefetch::progress::{Mode, Progress};
use crate::prefetch::source::{DirectSource, MirrorSource, Source};
use crate::prefetch::{inputs, walk, Platform, Platforms, Status};

/// Pull images into the cache ahead of use.
#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// Image references, e.g. "registry.k8s.io/pause:3.9", "busybox", "ghcr.io/o/app@sha256:...".
    images: Vec<String>,
    /// A file of references, one a line, `#` comments ("-": stdin); `kubeadm config images list`
    /// output works as it is. May be repeated.
    #[arg(short = 'f', long = "file")]
    files: Vec<PathBuf>,
    /// Every `image:` in the Kubernetes YAML / JSON files under this directory. May be repeated.
    #[arg(long)]
    from_manifests: Vec<PathBuf>,
    /// The control-plane images of this Kubernetes version (e.g. v1.31.2), as `kubeadm config
    /// images list --kubernetes-version VERSION` prints them (kubeadm must be on PATH).
    #[arg(long, value_name = "VERSION")]
    from_kubeadm: Option<String>,
    /// Pull through this running mirror (its coalescing and policies apply), e.g.
    /// http://127.0.0.1:5000. Without it the cache of the data directory is filled directly.
    #[arg(long)]
    mirror: Option<String>,
    /// Accept an invalid TLS certificate from --mirror.
    #[arg(long, requires = "mirror")]
    insecure: bool,
    /// Configuration (upstreams, data_dir) for filling the cache directly.
    #[arg(long, env = "REGMIRROR_CONFIG", conflicts_with = "mirror")]
    config: Option<PathBuf>,
    /// The data directory to fill directly (overrides the configuration's).
    #[arg(long, conflicts_with = "mirror")]
    data_dir: Option<PathBuf>,
    /// Platforms of multi-platform images, comma-separated (default: this machine's).
    #[arg(long, value_delimiter = ',')]
    platform: Vec<String>,
    /// Every platform of multi-platform images (attestations included).
    #[arg(long, conflicts_with = "platform")]
    all_platforms: bool,
    /// Most blobs fetched at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// List what would be fetched and its size; fetch no blob (manifests are read).
    #[arg(long)]
    dry_run: bool,
    /// Plain lines, outcomes only, no bars.
    #[arg(short, long)]
    quiet: bool,
    /// One JSON report on stdout at the end, for scripts.
    #[arg(long, conflicts_with = "quiet")]
    json: bool,
}

/// Run the command: 0 when every image is cached, 1 when any failed, 2 for a usage mistake.
pub(super) fn main(args: Args) -> ExitCode {
    let images = match references(&args) {
        Ok(i) => i,
        Err(e) => return super::fail(e),
    };
    let platforms = if args.all_platforms {
        Platforms::All
    } else if args.platform.is_empty() {
        Platforms::These(vec![Platform::host()])
    } else {
        match args.platform.iter().map(|p| Platform::parse(p)).collect() {
            Ok(ps) => Platforms::These(ps),
            Err(e) => return super::fail(e),
        }
    };
    let mode = if args.json {
        Mode::Json
    } else if args.quiet {
        Mode::Quiet
    } else if std::io::stdout().is_terminal() {
        Mode::Bars
    } else {
        Mode::Plain
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return super::fail(format!("cannot start the async runtime: {e}")),
    };
    rt.block_on(async move {
        let source = match open_source(&args).await {
            Ok(s) => s,
            Err(e) => return super::fail(e),
        };
        let names: Vec<String> = images.iter().map(|i| i.to_string()).collect();
        let progress = Arc::new(Progress::new(mode, &names));
        let opts = walk::Options {
            platforms,
            concurrency: args.concurrency,
            dry_run: args.dry_run,
        };
        let start = Instant::now();
        let reports = walk::run(source, images, opts, progress.clone()).await;
        progress.finish(&reports, start.elapsed());
        if reports.iter().any(|r| r.status == Status::Failed) {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        }
    })
}

/// Every reference from the arguments, files and manifests, parsed, each once.
fn references(args: &Args) -> Result<Vec<ImageRef>, String> {
    let mut raw: Vec<String> = args.images.clone();
    for f in &args.files {
        let text = if f.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin())
        } else {
            std::fs::read_to_string(f)
        }
        .map_err(|e| format!("cannot read image list {}: {e}", f.display()))?;
        raw.extend(inputs::parse_list(&text));
    }
    for d in &args.from_manifests {
        raw.extend(
            inputs::scan_manifests(d)
                .map_err(|e| format!("cannot read manifests under {}: {e}", d.display()))?,
        );
    }
    if let Some(v) = &args.from_kubeadm {
        raw.extend(inputs::kubeadm_images(std::ffi::OsStr::new("kubeadm"), v)?);
    }
    let mut out: Vec<ImageRef> = Vec::new();
    for r in raw {
        let img = ImageRef::parse(&r).map_err(|e| format!("image reference {r:?}: {e}"))?;
        if !out.contains(&img) {
            out.push(img);
        }
    }
    if out.is_empty() {
        return Err(
            "no images to prefetch: name them, or pass -f FILE, --from-manifests DIR or --from-kubeadm VERSION".into(),
        );
    }
    Ok(out)
}

async fn open_source(args: &Args) -> Result<Arc<dyn Source>, String> {
    if let Some(url) = &args.mirror {
        let s = MirrorSource::new(url, args.insecure).map_err(|e| e.to_string())?;
        return Ok(Arc::new(s));
    }
    let data_dir = args.data_dir.as_ref().map(|d| d.display().to_string());
    let config = Config::load_with(args.config.as_deref(), move |k| match k {
        "REGMIRROR_DATA_DIR" => data_dir.clone(),
        _ => None,
    })
    .map_err(|e| e.to_string())?;
    let opened = crate::storage::open(
        &config.data_dir,
        config.s3_backend(),
        crate::storage::Role::Tool,
    )
    .await
    .map_err(|e| {
        format!(
            "cannot open the data directory {}: {e}",
            config.data_dir.display()
        )
    })?;
    let cache = crate::cache::Cache::new(&config, opened.storage.clone(), opened.staging_dir)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(DirectSource {
        cache: Arc::new(cache),
        storage: opened.storage,
        commit_timeout: Duration::from_secs(config.fill_timeout_secs.max(60)),
    }))
}

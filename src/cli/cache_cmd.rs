//! `regmirror cache ls|du|rm|gc`: inspect and trim the data directory, also while the server runs.

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;

use crate::cache::{evict, inventory};
use crate::config::human_size as human;
use crate::config::{ByteSize, Config};

/// Where the cache is: a config file's `data_dir`, or a directory given directly.
#[derive(Debug, clap::Args)]
pub(super) struct Location {
    /// Configuration file whose data_dir (and eviction settings) to use.
    #[arg(long, env = "REGMIRROR_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// The data directory (overrides the configuration's).
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(super) enum CacheCommand {
    /// List cached images: upstream/repository:tag, digest, cached size, last access.
    Ls {
        /// Only entries starting with this, e.g. "docker.io/library/".
        #[arg(default_value = "")]
        filter: String,
    },
    /// Totals: objects and bytes by kind, tags by upstream.
    Du,
    /// Remove an upstream, a repository or one tag, with the content no other cached tag needs.
    Rm {
        /// "UPSTREAM", "UPSTREAM/REPOSITORY" or "UPSTREAM/REPOSITORY:TAG".
        target: String,
    },
    /// Run eviction now (the configuration's max_size / max_age, or these).
    Gc {
        #[arg(long)]
        max_size: Option<ByteSize>,
        #[arg(long)]
        max_age_secs: Option<u64>,
    },
}

pub(super) async fn run(loc: &Location, cmd: &CacheCommand) -> Result<(), String> {
    let config = Config::load(loc.config.as_deref()).map_err(|e| e.to_string())?;
    let dir = loc.data_dir.clone().unwrap_or(config.data_dir.clone());
    if !dir.is_dir() {
        return Err(format!(
            "data directory {} does not exist (set --data-dir or data_dir in --config)",
            dir.display()
        ));
    }
    let storage = crate::storage::open(&dir, config.s3_backend(), crate::storage::Role::Tool)
        .await
        .map_err(|e| e.to_string())?
        .storage;
    let storage = storage.as_ref();
    let err = |e: crate::cache::Error| e.to_string();
    match cmd {
        CacheCommand::Ls { filter } => {
            println!(
                "{:<60} {:<20} {:>12} {:>14}",
                "IMAGE", "DIGEST", "CACHED", "LAST ACCESS"
            );
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            for i in inventory::images(storage, filter).await.map_err(err)? {
                let short = i.digest.get(..19).unwrap_or(&i.digest);
                let name = format!("{}/{}:{}", i.upstream, i.repository, i.tag);
                let ago = if i.last_access == 0 {
                    "-".to_string()
                } else {
                    format!("{}s ago", now.saturating_sub(i.last_access))
                };
                println!(
                    "{name:<60} {short:<20} {:>12} {ago:>14}",
                    human(i.cached_bytes)
                );
            }
        }
        CacheCommand::Du => {
            let blobs = storage.list("blobs/").await.map_err(|e| e.to_string())?;
            let manifests = storage
                .list("manifests/")
                .await
                .map_err(|e| e.to_string())?;
            let tags = storage.list("tags/").await.map_err(|e| e.to_string())?;
            let sum = |v: &[crate::storage::ObjectMeta]| v.iter().map(|m| m.size).sum::<u64>();
            println!(
                "blobs      {:>8} objects {:>12}",
                blobs.len(),
                human(sum(&blobs))
            );
            println!(
                "manifests  {:>8} objects {:>12}",
                manifests.len(),
                human(sum(&manifests))
            );
            println!(
                "total                       {:>12}",
                human(sum(&blobs) + sum(&manifests))
            );
            let mut by_upstream = std::collections::BTreeMap::new();
            for t in &tags {
                if let Some((u, _, _)) = inventory::parse_tag_key(&t.key) {
                    *by_upstream.entry(u).or_insert(0u64) += 1;
                }
            }
            for (u, n) in by_upstream {
                println!("tags       {n:>8}         {u}");
            }
        }
        CacheCommand::Rm { target } => {
            let r = inventory::remove(storage, target).await.map_err(err)?;
            if r.tags == 0 {
                return Err(format!(
                    "nothing cached matches {target:?} (see `regmirror cache ls`)"
                ));
            }
            println!(
                "removed {} tag(s), {} object(s), {}",
                r.tags,
                r.objects,
                human(r.bytes)
            );
        }
        CacheCommand::Gc {
            max_size,
            max_age_secs,
        } => {
            let mut policy = evict::Policy::from_config(&config);
            if let Some(s) = max_size {
                policy.max_size = Some(s.0);
            }
            if let Some(a) = max_age_secs {
                policy.max_age = Some(Duration::from_secs(*a));
            }
            if policy.max_size.is_none() && policy.max_age.is_none() {
                return Err("no eviction limit: set max_size / max_age_secs in the config or pass --max-size / --max-age-secs".into());
            }
            let r = evict::run(storage, policy, &|_| false).await.map_err(err)?;
            println!(
                "evicted {} object(s), {}; {} object(s), {} remain",
                r.evicted_objects,
                human(r.evicted_bytes),
                r.objects,
                human(r.bytes)
            );
        }
    }
    Ok(())
}

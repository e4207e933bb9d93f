//! `regmirror cache ls|du|rm|gc`: inspect and trim the cache (the data directory, or the S3
//! bucket of `storage = "s3"`), also while servers run. With `redis_url` and a bucket, `ls`
//! shows the last accesses the replicas recorded in Redis and `gc` runs as one of them: it takes
//! the eviction lease and keeps what any replica reads (see `cache::shared_evict`).

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
    let s3 = config.s3_backend();
    // With a bucket, the data directory only holds spool files: a tool run elsewhere than a
    // server (an operator's machine) uses a temporary one.
    let mut _scratch = None;
    let dir = match s3 {
        Some(_) if !dir.is_dir() => {
            let s = Scratch::new()?;
            let p = s.0.clone();
            _scratch = Some(s);
            p
        }
        _ => dir,
    };
    if !dir.is_dir() {
        return Err(format!(
            "data directory {} does not exist (set --data-dir or data_dir in --config)",
            dir.display()
        ));
    }
    let storage = crate::storage::open(&dir, s3, crate::storage::Role::Tool)
        .await
        .map_err(|e| e.to_string())?
        .storage;
    if let Some(s3) = s3 {
        reachable(storage.as_ref(), s3).await?;
    }
    let shared = match config.coord() {
        Ok(Some(settings)) => {
            let coord =
                crate::coord::Coord::new(settings).map_err(|e| format!("redis_url: {e}"))?;
            crate::cache::shared_store(Some(&coord), storage.as_ref())
        }
        _ => None,
    };
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
            let recorded = match &shared {
                Some(store) => store.last_access().await.unwrap_or_else(|e| {
                    eprintln!("warning: {e}: LAST ACCESS shows the bucket's write times, not the replicas' reads");
                    Default::default()
                }),
                None => Default::default(),
            };
            for mut i in inventory::images(storage, filter).await.map_err(err)? {
                if let Ok(d) = i.digest.parse() {
                    let key = crate::cache::keys::manifest(&d);
                    if let Some(t) = recorded.get(&key) {
                        i.last_access = i.last_access.max(*t);
                    }
                }
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
            let r = match &shared {
                None => evict::run(storage, policy, &|_| false).await.map_err(err)?,
                Some(store) => {
                    use crate::cache::shared_evict::{run, Outcome};
                    match run(storage, store, policy, &|_| false).await.map_err(err)? {
                        Outcome::Ran(r) => r,
                        Outcome::SkippedLease => {
                            return Err(format!(
                                "another replica is evicting {} now (it holds the eviction lease); nothing removed, try again later",
                                store.name
                            ))
                        }
                        Outcome::SkippedRedisDown(e) => {
                            return Err(format!(
                                "not evicting {}: {e}. The bucket is shared; without Redis the lease and the replicas' reads are unknown",
                                store.name
                            ))
                        }
                    }
                }
            };
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

/// A temporary directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch, String> {
        let p = std::env::temp_dir().join(format!("regmirror-cache-{}", std::process::id()));
        std::fs::create_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(Scratch(p))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A clear error when the bucket cannot be reached (network, endpoint, credentials).
async fn reachable(
    storage: &dyn crate::storage::Storage,
    s3: &crate::config::S3Config,
) -> Result<(), String> {
    match storage.head("tags/reachability-probe").await {
        Err(e) if e.is_unavailable() => Err(format!(
            "cannot reach the bucket s3://{}/{} at {}: {e} (check s3.endpoint, s3.bucket and the AWS credentials)",
            s3.bucket,
            s3.prefix,
            s3.endpoint.as_deref().unwrap_or("AWS")
        )),
        _ => Ok(()),
    }
}

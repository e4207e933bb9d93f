//! A fleet of replicas on one Redis in front of a counting upstream (shared by
//! `e2e_replicas.rs` and `e2e_redis_modes.rs`): the upstream streams its blobs in 1 MiB chunks
//! `delay` apart so fills overlap and counts every request; clients compare every byte.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, Response, StatusCode};
use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest as _, Sha256};

use super::background::BackgroundServer;
use super::mirror::{Extra, MirrorConfig, Regmirror, UpstreamEntry};

pub const REPO: &str = "team/app";
pub const TAG: &str = "v1";
pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// A blob of the counting upstream.
#[derive(Clone)]
pub struct UpBlob {
    pub bytes: Bytes,
    pub digest: String,
}

pub fn blob_of(seed: u32, size: usize) -> UpBlob {
    let v = super::faults::random_bytes(size, u64::from(seed));
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&v)));
    UpBlob {
        bytes: Bytes::from(v),
        digest,
    }
}

/// The counting upstream: blobs streamed in 1 MiB chunks `delay` apart, one tagged manifest.
pub struct Upstream {
    pub server: BackgroundServer,
    /// (method, path) -> requests.
    pub counts: Arc<Mutex<HashMap<(String, String), usize>>>,
    /// When each blob's last GET finished sending.
    pub sent: Arc<Mutex<HashMap<String, Instant>>>,
    pub manifest_digest: String,
}

impl Upstream {
    pub fn start(blobs: Vec<UpBlob>, delay: Duration) -> Upstream {
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blobs[0].digest, "size": blobs[0].bytes.len()},
            "layers": [],
        }))
        .unwrap();
        let manifest_digest = format!("sha256:{}", hex::encode(Sha256::digest(&manifest)));
        let manifest = Bytes::from(manifest);
        let by_digest: Arc<HashMap<String, UpBlob>> =
            Arc::new(blobs.into_iter().map(|b| (b.digest.clone(), b)).collect());
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let sent = Arc::new(Mutex::new(HashMap::new()));
        let (c, s, md) = (counts.clone(), sent.clone(), manifest_digest.clone());
        let router = axum::Router::new().fallback(move |req: Request<Body>| {
            let (c, s, blobs, m, md) = (
                c.clone(),
                s.clone(),
                by_digest.clone(),
                manifest.clone(),
                md.clone(),
            );
            async move {
                let path = req.uri().path().to_string();
                let head = req.method() == Method::HEAD;
                *c.lock()
                    .unwrap()
                    .entry((req.method().to_string(), path.clone()))
                    .or_default() += 1;
                let builder =
                    Response::builder().header("docker-distribution-api-version", "registry/2.0");
                if path == "/v2/" {
                    return builder.status(200).body(Body::empty()).unwrap();
                }
                if path == format!("/v2/{REPO}/manifests/{TAG}")
                    || path == format!("/v2/{REPO}/manifests/{md}")
                {
                    return builder
                        .status(200)
                        .header("content-type", MANIFEST_TYPE)
                        .header("docker-content-digest", &md)
                        .header("content-length", m.len())
                        .body(if head { Body::empty() } else { Body::from(m) })
                        .unwrap();
                }
                let Some(d) = path.strip_prefix(&format!("/v2/{REPO}/blobs/")) else {
                    return builder.status(404).body(Body::empty()).unwrap();
                };
                let Some(b) = blobs.get(d).cloned() else {
                    return builder.status(404).body(Body::empty()).unwrap();
                };
                let builder = builder
                    .status(StatusCode::OK)
                    .header("content-type", "application/octet-stream")
                    .header("docker-content-digest", &b.digest)
                    .header("content-length", b.bytes.len());
                if head {
                    return builder.body(Body::empty()).unwrap();
                }
                let chunks: Vec<Bytes> = (0..b.bytes.len())
                    .step_by(1 << 20)
                    .map(|i| b.bytes.slice(i..(i + (1 << 20)).min(b.bytes.len())))
                    .collect();
                let n = chunks.len();
                let digest = b.digest.clone();
                let body = futures::stream::iter(chunks.into_iter().enumerate()).then(
                    move |(i, chunk)| {
                        let (s, digest) = (s.clone(), digest.clone());
                        async move {
                            tokio::time::sleep(delay).await;
                            if i + 1 == n {
                                s.lock().unwrap().insert(digest, Instant::now());
                            }
                            Ok::<_, std::io::Error>(chunk)
                        }
                    },
                );
                builder.body(Body::from_stream(body)).unwrap()
            }
        });
        Upstream {
            server: BackgroundServer::start(router),
            counts,
            sent,
            manifest_digest,
        }
    }

    pub fn count(&self, method: &str, path: &str) -> usize {
        self.counts
            .lock()
            .unwrap()
            .get(&(method.to_string(), path.to_string()))
            .copied()
            .unwrap_or(0)
    }

    pub fn blob_gets(&self, b: &UpBlob) -> usize {
        self.count("GET", &format!("/v2/{REPO}/blobs/{}", b.digest))
    }

    pub fn tag_requests(&self) -> usize {
        let p = format!("/v2/{REPO}/manifests/{TAG}");
        self.count("GET", &p) + self.count("HEAD", &p)
    }
}

/// `n` replicas on the Redis of `redis_url`, in front of `up`.
pub async fn fleet(up: &Upstream, redis_url: &str, n: usize, extra_up: Extra) -> Vec<Regmirror> {
    let mut out = Vec::new();
    for _ in 0..n {
        let name = up.server.addr.to_string();
        let mut config = MirrorConfig::new(vec![UpstreamEntry::new(&name, &up.server.url())]);
        config.no_builtin_upstreams = true;
        config.default_upstream = name;
        config.extra = Extra {
            top: extra_up.top.clone(),
            upstream: extra_up.upstream.clone(),
        }
        .top("redis_url", redis_url)
        .top("lease_secs", 3);
        out.push(Regmirror::start(config).await);
    }
    // Every replica has learnt the fleet's secret and announced itself.
    for m in &out {
        super::redis::wait_coordinated(m).await;
    }
    out
}

/// What one client got.
pub struct Pull {
    pub first_byte: Option<Instant>,
    pub result: Result<(), String>,
}

/// GET a blob and compare every byte with what the upstream holds (byte equality: the sha256
/// of what was received is the blob's).
pub async fn pull(client: reqwest::Client, url: String, want: Bytes) -> Pull {
    let resp = match client.get(&url).send().await {
        Ok(r) if r.status() == 200 => r,
        Ok(r) => {
            return Pull {
                first_byte: None,
                result: Err(format!("status {}", r.status())),
            }
        }
        Err(e) => {
            return Pull {
                first_byte: None,
                result: Err(e.to_string()),
            }
        }
    };
    let mut stream = resp.bytes_stream();
    let mut pos = 0usize;
    let mut first_byte = None;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                return Pull {
                    first_byte,
                    result: Err(format!("cut at {pos}: {e}")),
                }
            }
        };
        first_byte.get_or_insert_with(Instant::now);
        if pos + chunk.len() > want.len() || chunk[..] != want[pos..pos + chunk.len()] {
            return Pull {
                first_byte,
                result: Err(format!("WRONG BYTES at {pos}")),
            };
        }
        pos += chunk.len();
    }
    let result = if pos == want.len() {
        Ok(())
    } else {
        Err(format!("short: {pos} bytes"))
    };
    Pull { first_byte, result }
}

pub fn blob_url(m: &Regmirror, b: &UpBlob) -> String {
    format!("{}/v2/{REPO}/blobs/{}", m.url, b.digest)
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

//! A tiny in-process upstream for behaviour distribution cannot be made to show: a blob whose bytes
//! do not match its digest, and tags paginated with `Link` headers. Plus [`get_blob`], which tells
//! a refused, an aborted and a complete transfer apart.

use super::image::OCI_MANIFEST;

/// A tiny in-process upstream: `evil/app:v1` is an image whose layer bytes do not match the
/// layer's digest; `evil/app` tags a..e are paginated with `Link` headers.
pub struct FakeUpstream {
    pub server: super::background::BackgroundServer,
    pub hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub good: Vec<u8>,
    pub bad: Vec<u8>,
    pub layer_digest: String,
    pub manifest: super::image::Blob,
}

impl FakeUpstream {
    /// A regmirror with only this upstream: named `127.0.0.1:PORT`, alias `evil-up`, and the
    /// default upstream.
    pub async fn mirror_in_front(&self) -> super::mirror::Regmirror {
        let name = self.server.addr.to_string();
        let mut config = super::mirror::MirrorConfig::new(vec![super::mirror::UpstreamEntry::new(
            &name,
            &self.server.url(),
        )
        .alias("evil-up")]);
        config.no_builtin_upstreams = true;
        config.default_upstream = name;
        super::mirror::Regmirror::start(config).await
    }
}

pub fn fake_upstream() -> FakeUpstream {
    use super::image::{Blob, OCI_CONFIG, OCI_LAYER_GZIP};
    use axum::body::Body;
    use axum::http::{Request, Response, StatusCode};
    use std::sync::atomic::{AtomicUsize, Ordering};

    // 512 KiB so the mirror streams in many chunks; the bad copy differs in its last byte only.
    let good: Vec<u8> = (0..512 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut bad = good.clone();
    *bad.last_mut().unwrap() ^= 0xff;
    let layer = Blob::new(OCI_LAYER_GZIP, good.clone());
    let config = Blob::new(
        OCI_CONFIG,
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec(),
    );
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.descriptor(), "layers": [layer.descriptor()],
    });
    let manifest = Blob::new(OCI_MANIFEST, serde_json::to_vec(&manifest).unwrap());
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let (h, m, c, l, b) = (
        hits.clone(),
        manifest.clone(),
        config.clone(),
        layer.digest.clone(),
        bad.clone(),
    );
    let router = axum::Router::new().fallback(move |req: Request<Body>| {
        let (h, m, c, l, b) = (h.clone(), m.clone(), c.clone(), l.clone(), b.clone());
        async move {
            let path = req.uri().path().to_string();
            let reply = |status: StatusCode, ct: &str, digest: &str, body: Vec<u8>| {
                let len = body.len();
                let body = if req.method() == axum::http::Method::HEAD {
                    Vec::new()
                } else {
                    body
                };
                Response::builder()
                    .status(status)
                    .header("content-type", ct)
                    .header("docker-content-digest", digest)
                    .header("docker-distribution-api-version", "registry/2.0")
                    .header("content-length", len)
                    .body(Body::from(body))
                    .unwrap()
            };
            if path == "/v2/" {
                return reply(StatusCode::OK, "application/json", "", b"{}".to_vec());
            }
            if path == "/v2/evil/app/manifests/v1"
                || path == format!("/v2/evil/app/manifests/{}", m.digest)
            {
                return reply(StatusCode::OK, OCI_MANIFEST, &m.digest, m.bytes.clone());
            }
            if path == format!("/v2/evil/app/blobs/{}", c.digest) {
                return reply(
                    StatusCode::OK,
                    "application/octet-stream",
                    &c.digest,
                    c.bytes.clone(),
                );
            }
            if path == "/v2/evil/app/tags/list" {
                return paginated_tags(req.uri().query().unwrap_or(""));
            }
            if path == format!("/v2/evil/app/blobs/{l}") {
                if req.method() == axum::http::Method::GET {
                    h.fetch_add(1, Ordering::SeqCst);
                }
                // Claims the right digest, sends the wrong bytes.
                return reply(StatusCode::OK, "application/octet-stream", &l, b.clone());
            }
            let err = br#"{"errors":[{"code":"NOT_FOUND","message":"not here"}]}"#.to_vec();
            reply(StatusCode::NOT_FOUND, "application/json", "", err)
        }
    });
    FakeUpstream {
        server: super::background::BackgroundServer::start(router),
        hits,
        good,
        bad,
        layer_digest: layer.digest,
        manifest,
    }
}

/// Tags a..e of `evil/app`, paginated by `n` and `last` with a `Link` header like Docker Hub's.
pub fn paginated_tags(query: &str) -> axum::http::Response<axum::body::Body> {
    let params: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
    let all = ["a", "b", "c", "d", "e"];
    let n: usize = params
        .get("n")
        .and_then(|n| n.parse().ok())
        .unwrap_or(all.len());
    let last = params.get("last").cloned().unwrap_or_default();
    let rest: Vec<&str> = all.iter().copied().filter(|t| *t > last.as_str()).collect();
    let page: Vec<&str> = rest.iter().copied().take(n).collect();
    let mut resp = axum::http::Response::builder()
        .status(200)
        .header("content-type", "application/json");
    if rest.len() > page.len() {
        let link = format!(
            "</v2/evil/app/tags/list?last={}&n={n}>; rel=\"next\"",
            page.last().unwrap()
        );
        resp = resp.header("link", link);
    }
    let body = serde_json::json!({"name": "evil/app", "tags": page});
    resp.body(axum::body::Body::from(body.to_string())).unwrap()
}

/// What a client got for one blob GET.
#[derive(Debug, PartialEq)]
pub enum Transfer {
    Refused(u16),
    Aborted(String),
    Complete(Vec<u8>),
}

impl Transfer {
    pub fn describe(&self) -> String {
        match self {
            Transfer::Complete(b) => format!("complete 200 with {} bytes", b.len()),
            other => format!("{other:?}"),
        }
    }
}

pub async fn get_blob(url: &str) -> Transfer {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap();
    get_blob_with(&client, url).await
}

/// [`get_blob`] with the caller's client.
pub async fn get_blob_with(client: &reqwest::Client, url: &str) -> Transfer {
    let resp = match client.get(url).send().await {
        Ok(r) => r,
        Err(e) => return Transfer::Aborted(e.to_string()),
    };
    if resp.status() != 200 {
        return Transfer::Refused(resp.status().as_u16());
    }
    match resp.bytes().await {
        Ok(b) => Transfer::Complete(b.to_vec()),
        Err(e) => Transfer::Aborted(format!("{e:?}")),
    }
}

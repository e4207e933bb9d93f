//! The internal fill endpoint, client side: read the bytes of a fill from the replica that holds
//! its lease, as they arrive there.
//!
//! `GET <owner>/_regmirror/fills/<digest>?from=N` with the fleet's secret in [`SECRET_HEADER`]
//! and the lease's fencing token in [`TOKEN_HEADER`]. The owner streams its spool (all but the
//! last byte until its own digest check passed) or, once committed, its stored copy. The bytes
//! are never trusted: the caller hashes them as it would an upstream's.

use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::Error;
use crate::oci::Digest;

/// Header carrying the shared secret of internal fill requests.
pub(crate) const SECRET_HEADER: &str = "x-regmirror-fill-secret";
/// Header carrying the fencing token of the lease the joiner follows.
pub(crate) const TOKEN_HEADER: &str = "x-regmirror-fill-token";
/// Path prefix of the internal fill endpoint.
pub(crate) const FILL_PATH: &str = "/_regmirror/fills/";

/// An answer of the owner replica.
pub(crate) struct PeerBody {
    /// The blob's total size, when the owner knows it.
    pub(crate) size: Option<u64>,
    /// The bytes from the requested offset.
    pub(crate) body: std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, Error>> + Send>>,
}

/// The HTTP client to other replicas.
pub(crate) struct Peers {
    http: Option<reqwest::Client>,
}

impl Peers {
    pub(super) fn new() -> Peers {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            // Between two chunks: an owner waiting on a slow upstream still sends within this.
            .read_timeout(Duration::from_secs(60))
            .no_proxy()
            .build()
            .ok();
        Peers { http }
    }

    /// Start reading `digest` from `owner` at `from`.
    pub(crate) async fn fetch(
        &self,
        owner: &str,
        digest: &Digest,
        from: u64,
        token: u64,
        secret: &str,
    ) -> Result<PeerBody, Error> {
        let fail = |reason: String| Error::Peer {
            url: owner.to_string(),
            reason: reason.into(),
        };
        let http = self
            .http
            .as_ref()
            .ok_or_else(|| fail("no HTTP client".into()))?;
        let url = format!("{owner}{FILL_PATH}{digest}?from={from}");
        let resp = http
            .get(&url)
            .header(SECRET_HEADER, secret)
            .header(TOKEN_HEADER, token.to_string())
            .send()
            .await
            .map_err(|e| fail(format!("{e}")))?;
        if !resp.status().is_success() {
            return Err(fail(format!("answered {}", resp.status())));
        }
        let size = resp
            .headers()
            .get("x-regmirror-blob-size")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let url = owner.to_string();
        let body = resp
            .bytes_stream()
            .map(move |c| {
                c.map_err(|e| Error::Peer {
                    url: url.clone(),
                    reason: format!("transfer cut: {e}").into(),
                })
            })
            .boxed();
        Ok(PeerBody { size, body })
    }
}

//! The typed calls the cache makes: one per registry operation, each returning what the registry
//! said in domain terms. HTTP methods, paths, statuses and headers stay in here.

use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use super::{describe, Error, Request, Result, Upstream};
use crate::oci::{Digest, RangeSpec, Reference};

/// A body streaming from the upstream; an error ends it.
pub(crate) type Body = BoxStream<'static, Result<Bytes>>;

/// A whole blob on its way.
pub(crate) struct BlobStream {
    /// The announced size (Content-Length), if any.
    pub(crate) size: Option<u64>,
    pub(crate) body: Body,
}

/// A part of a blob, as the upstream answered a range request.
pub(crate) struct BlobPart {
    /// First byte and end (exclusive) of the part.
    pub(crate) start: u64,
    pub(crate) end: u64,
    /// The blob's whole size, when the upstream said it.
    pub(crate) size: Option<u64>,
    /// None for HEAD.
    pub(crate) body: Option<Body>,
}

/// What a manifest HEAD said.
#[derive(Debug, Clone)]
pub(crate) struct ManifestHead {
    /// `Docker-Content-Digest`, when sent.
    pub(crate) digest: Option<Digest>,
    /// The media type (Content-Type without parameters), when sent.
    pub(crate) media_type: Option<String>,
    /// Content-Length, when sent.
    pub(crate) size: Option<u64>,
}

/// A manifest as the upstream sent it, unverified.
pub(crate) struct ManifestBody {
    /// `Docker-Content-Digest`, when sent.
    pub(crate) digest: Option<Digest>,
    /// The Content-Type header as sent.
    pub(crate) content_type: Option<String>,
    pub(crate) body: Bytes,
}

/// One page of a tags list.
pub(crate) struct TagsList {
    pub(crate) body: Bytes,
    pub(crate) content_type: Option<String>,
    /// The `Link` header (next page), unmodified.
    pub(crate) link: Option<String>,
}

impl Upstream {
    /// GET a whole blob, streamed.
    pub(crate) async fn get_blob(&self, repo: &str, digest: &Digest) -> Result<BlobStream> {
        let mut req = Request::new(Method::GET, repo, format!("blobs/{digest}"));
        req.streaming = true;
        let resp = self.send(&req).await?;
        Ok(BlobStream {
            size: content_length(resp.headers()),
            body: body_stream(resp),
        })
    }

    /// HEAD a blob: its size, when the upstream says it.
    pub(crate) async fn head_blob(&self, repo: &str, digest: &Digest) -> Result<Option<u64>> {
        let req = Request::new(Method::HEAD, repo, format!("blobs/{digest}"));
        let resp = self.send(&req).await?;
        Ok(content_length(resp.headers()))
    }

    /// GET (or HEAD) a byte range of a blob. An upstream that ignores the range is an error.
    pub(crate) async fn blob_range(
        &self,
        repo: &str,
        digest: &Digest,
        range: RangeSpec,
        head: bool,
    ) -> Result<BlobPart> {
        let method = if head { Method::HEAD } else { Method::GET };
        let mut req = Request::new(method, repo, format!("blobs/{digest}"));
        req.streaming = true;
        let spec = match range {
            RangeSpec::From(a, Some(b)) => format!("bytes={a}-{b}"),
            RangeSpec::From(a, None) => format!("bytes={a}-"),
            RangeSpec::Suffix(n) => format!("bytes=-{n}"),
        };
        req.headers.insert(
            http::header::RANGE,
            spec.parse().map_err(|_| Error::Invalid("range".into()))?,
        );
        let resp = self.send(&req).await?;
        let (start, end, size) = header(resp.headers(), http::header::CONTENT_RANGE)
            .as_deref()
            .and_then(parse_content_range)
            .filter(|_| resp.status() == StatusCode::PARTIAL_CONTENT)
            .ok_or_else(|| Error::Invalid("upstream ignored the range request".into()))?;
        let body = (!head).then(|| body_stream(resp));
        Ok(BlobPart {
            start,
            end,
            size,
            body,
        })
    }

    /// HEAD a manifest, asking for the `accept` media types.
    pub(crate) async fn head_manifest(
        &self,
        repo: &str,
        reference: &Reference,
        accept: &[String],
    ) -> Result<ManifestHead> {
        let req = manifest_request(Method::HEAD, repo, reference, accept)?;
        let resp = self.send(&req).await?;
        let h = resp.headers();
        Ok(ManifestHead {
            digest: header_digest(h),
            media_type: header(h, http::header::CONTENT_TYPE)
                .map(|v| v.split(';').next().unwrap_or(&v).trim().to_string()),
            size: content_length(h),
        })
    }

    /// GET a manifest, asking for the `accept` media types; more than `limit` bytes is
    /// [`Error::TooLarge`].
    pub(crate) async fn get_manifest(
        &self,
        repo: &str,
        reference: &Reference,
        accept: &[String],
        limit: u64,
    ) -> Result<ManifestBody> {
        let req = manifest_request(Method::GET, repo, reference, accept)?;
        let (headers, body) = self.send_whole(&req, limit).await?;
        let digest = header_digest(&headers);
        let content_type = header(&headers, http::header::CONTENT_TYPE);
        Ok(ManifestBody {
            digest,
            content_type,
            body,
        })
    }

    /// One page of the tags list (`query`: the client's pagination, without `?`); more than
    /// `limit` bytes is [`Error::TooLarge`].
    pub(crate) async fn tags(
        &self,
        repo: &str,
        query: Option<String>,
        limit: u64,
    ) -> Result<TagsList> {
        let mut req = Request::new(Method::GET, repo, "tags/list".into());
        req.query = query;
        let (headers, body) = self.send_whole(&req, limit).await?;
        let content_type = header(&headers, http::header::CONTENT_TYPE);
        let link = header(&headers, http::header::LINK);
        Ok(TagsList {
            body,
            content_type,
            link,
        })
    }
}

/// A manifest request asking for exactly these media types.
fn manifest_request(
    method: Method,
    repo: &str,
    reference: &Reference,
    accept: &[String],
) -> Result<Request> {
    let mut req = Request::new(method, repo, format!("manifests/{reference}"));
    // One comma-joined header: proxies such as tinyproxy keep only one line of a repeated header,
    // and a registry that sees no manifest type it knows answers with schema 1.
    let joined = accept.join(", ");
    if !joined.is_empty() {
        let v = HeaderValue::from_str(&joined)
            .map_err(|_| Error::Invalid(format!("Accept value {joined:?}")))?;
        req.headers.insert(http::header::ACCEPT, v);
    }
    Ok(req)
}

fn body_stream(resp: reqwest::Response) -> Body {
    resp.bytes_stream()
        .map_err(|e| Error::Unavailable(format!("reading blob: {}", describe(&e))))
        .boxed()
}

fn header(h: &HeaderMap, name: http::HeaderName) -> Option<String> {
    h.get(name)?.to_str().ok().map(str::to_string)
}

/// A digest the upstream sent in `Docker-Content-Digest`.
fn header_digest(h: &HeaderMap) -> Option<Digest> {
    h.get("docker-content-digest")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Read a whole response body, refusing more than `limit` bytes.
pub(super) async fn read_limited(resp: reqwest::Response, limit: u64) -> Result<Bytes> {
    if content_length(resp.headers()).is_some_and(|n| n > limit) {
        return Err(Error::TooLarge { limit });
    }
    let mut buf = BytesMut::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Error::Unavailable(describe(&e)))?;
        if buf.len() as u64 + chunk.len() as u64 > limit {
            return Err(Error::TooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// `bytes a-b/size` -> (a, b + 1, Some(size)); size may be `*`.
fn parse_content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, size) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    Some((a, b.checked_add(1)?, size.trim().parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 0-9/100"),
            Some((0, 10, Some(100)))
        );
        assert_eq!(parse_content_range("bytes 5-5/*"), Some((5, 6, None)));
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }
}

//! Zero-copy blob bodies.
//!
//! A blob answer whose bytes are a range of a local file carries a [`SendFile`] in its response
//! extensions as well as an ordinary streaming body. The HTTP/1.1 front ([`crate::server`]) takes
//! the file region out and hands it to the kernel with `sendfile(2)`; any other connection (HTTP/2,
//! tests calling the router directly) polls the body, which takes the region itself and streams it.
//! Whichever takes it first owns it, so the bytes are sent exactly once.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use bytes::Bytes;
use futures::{Stream, StreamExt};

use crate::cache::FileRegion;
use crate::edge::{DownloadPermit, Throttle};

/// What the edge asked of one blob answer: its byte pace, and the upstream download it counts
/// against its client (released when the answer ends).
#[derive(Default)]
pub(crate) struct Pace {
    pub throttle: Option<Throttle>,
    pub permit: Option<DownloadPermit>,
}

/// A file region that the connection may send with `sendfile(2)`.
#[derive(Clone)]
pub(crate) struct SendFile {
    region: Arc<Mutex<Option<FileRegion>>>,
    served: metrics::Counter,
    throttle: Option<Throttle>,
    /// Held while any clone (the body, the response extension) lives.
    _permit: Option<Arc<DownloadPermit>>,
}

impl SendFile {
    /// Wrap `region`; `source` labels the served-bytes counter ("cache" or "upstream");
    /// `throttle` paces the bytes when the client has a byte limit.
    pub(crate) fn new(region: FileRegion, source: &'static str, pace: Pace) -> SendFile {
        SendFile {
            region: Arc::new(Mutex::new(Some(region))),
            served: metrics::counter!(crate::metrics::BYTES_SERVED, "source" => source),
            throttle: pace.throttle,
            _permit: pace.permit.map(Arc::new),
        }
    }

    /// How many of the next `n` bytes may be sent now (waits for the client's byte limit).
    pub(crate) async fn allow(&self, n: usize) -> usize {
        match &self.throttle {
            Some(t) => t.wait(n).await,
            None => n,
        }
    }

    /// The region, unless the body (or another caller) took it already.
    pub(crate) fn take(&self) -> Option<FileRegion> {
        self.region.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Count `n` bytes as sent to the client.
    pub(crate) fn served(&self, n: u64) {
        self.served.increment(n);
    }

    /// The streaming body for connections that do not use `sendfile`.
    pub(crate) fn body(&self) -> Body {
        let this = self.clone();
        let stream = futures::stream::once(async move {
            match this.take() {
                Some(region) => {
                    let served = this.served.clone();
                    let stream = region.into_stream().inspect(move |chunk| {
                        if let Ok(c) = chunk {
                            served.increment(c.len() as u64);
                        }
                    });
                    paced(stream, this.throttle.clone(), this._permit.clone()).boxed()
                }
                None => futures::stream::empty().boxed(),
            }
        })
        .flatten();
        Body::from_stream(stream)
    }
}

/// `stream` with each chunk split and delayed as the pace's throttle allows, holding its
/// download permit until the stream is dropped.
pub(crate) fn paced<E: Send + 'static>(
    stream: impl Stream<Item = Result<Bytes, E>> + Send + 'static,
    throttle: Option<Throttle>,
    permit: Option<Arc<DownloadPermit>>,
) -> futures::stream::BoxStream<'static, Result<Bytes, E>> {
    let stream = stream.inspect(move |_| {
        let _held = &permit;
    });
    let Some(throttle) = throttle else {
        return stream.boxed();
    };
    stream
        .flat_map(move |item| {
            let throttle = throttle.clone();
            futures::stream::unfold(Some(item), move |left| {
                let throttle = throttle.clone();
                async move {
                    match left? {
                        Ok(mut chunk) if !chunk.is_empty() => {
                            let n = throttle.wait(chunk.len()).await;
                            let now = chunk.split_to(n);
                            let rest = (!chunk.is_empty()).then_some(Ok(chunk));
                            Some((Ok(now), rest))
                        }
                        other => Some((other, None)),
                    }
                }
            })
        })
        .boxed()
}

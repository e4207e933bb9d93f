//! Zero-copy blob bodies.
//!
//! A blob answer whose bytes are a range of a local file carries a [`SendFile`] in its response
//! extensions as well as an ordinary streaming body. The HTTP/1.1 front ([`crate::server`]) takes
//! the file region out and hands it to the kernel with `sendfile(2)`; any other connection (HTTP/2,
//! tests calling the router directly) polls the body, which takes the region itself and streams it.
//! Whichever takes it first owns it, so the bytes are sent exactly once.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use futures::StreamExt;

use crate::cache::FileRegion;

/// A file region that the connection may send with `sendfile(2)`.
#[derive(Clone)]
pub(crate) struct SendFile {
    region: Arc<Mutex<Option<FileRegion>>>,
    served: metrics::Counter,
}

impl SendFile {
    /// Wrap `region`; `source` labels the served-bytes counter ("cache" or "upstream").
    pub(crate) fn new(region: FileRegion, source: &'static str) -> SendFile {
        SendFile {
            region: Arc::new(Mutex::new(Some(region))),
            served: metrics::counter!(crate::metrics::BYTES_SERVED, "source" => source),
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
                    region
                        .into_stream()
                        .inspect(move |chunk| {
                            if let Ok(c) = chunk {
                                served.increment(c.len() as u64);
                            }
                        })
                        .boxed()
                }
                None => futures::stream::empty().boxed(),
            }
        })
        .flatten();
        Body::from_stream(stream)
    }
}

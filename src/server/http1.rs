//! The HTTP/1.1 front: a small request loop ahead of hyper that sends blob bodies with
//! `sendfile(2)`.
//!
//! hyper writes every body from user-space buffers, so each cached byte would be copied from the
//! page cache into a buffer and from the buffer into the socket. This loop reads requests without
//! a body (GET and HEAD over HTTP/1.1), hands each to the same axum router hyper would call, and
//! writes the answer itself: a blob answer that carries a [`SendFile`] goes from the file to the
//! socket inside the kernel; any other answer is written from its body as hyper would.
//!
//! Everything else — a request with a body, HTTP/1.0, `Expect`, `Upgrade`, HTTP/2, a malformed
//! or oversized head — hands the connection, with the bytes already read, to hyper for the rest
//! of its life ([`Handover`]), so hyper's protocol and error handling stay in charge there.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::{Buf, Bytes, BytesMut};
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::Limits;
use crate::api::zero_copy::SendFile;
use crate::cache::FileRegion;
use crate::sys;

/// Most bytes handed to one `sendfile` call.
const MAX_SENDFILE: u64 = 16 << 20;
/// Bytes checked to be in the page cache at a time before `sendfile` reads them.
const PROBE_WINDOW: u64 = 16 << 20;
/// Body bytes gathered before a write when an answer is written from its body.
const WRITE_BUFFER: usize = 64 * 1024;

/// A connection (and the bytes read from it but not answered) for hyper to serve from here on.
pub(super) struct Handover {
    read: Bytes,
    stream: TcpStream,
}

/// Serve requests on `stream` until the client closes, an error, shutdown, or a request this loop
/// does not take; then return the connection for hyper.
pub(super) async fn serve(
    mut stream: TcpStream,
    peer: crate::edge::Peer,
    router: axum::Router,
    limits: Limits,
    stop: CancellationToken,
) -> Option<Handover> {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    loop {
        let req = match next_request(&mut stream, &mut buf, limits, &stop).await {
            Next::Request(r) => r,
            Next::Handover => {
                return Some(Handover {
                    read: buf.freeze(),
                    stream,
                })
            }
            Next::Close => return None,
        };
        let close = req.close;
        let head = req.request.method() == Method::HEAD;
        let mut request = req.request;
        request.extensions_mut().insert(peer);
        let resp = match router.clone().oneshot(request).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        match respond(&mut stream, resp, head, close).await {
            Ok(true) if !stop.is_cancelled() => {}
            Ok(_) => {
                let _ = stream.shutdown().await;
                return None;
            }
            Err(e) => {
                tracing::debug!(error = %e, "connection ended while answering");
                return None;
            }
        }
    }
}

/// A parsed request that this loop answers.
struct Parsed {
    request: Request<Body>,
    /// The client asked to close the connection after this answer.
    close: bool,
}

enum Next {
    Request(Parsed),
    Handover,
    Close,
}

/// Read until one request head is complete, and decide who answers it.
async fn next_request(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    limits: Limits,
    stop: &CancellationToken,
) -> Next {
    let mut deadline = None;
    loop {
        if !buf.is_empty() {
            match parse(buf, limits.max_headers) {
                Ok(Some((len, Some(parsed)))) => {
                    buf.advance(len);
                    return Next::Request(parsed);
                }
                // Not ours: hyper reads this request again from its first byte.
                Ok(Some((_, None))) => return Next::Handover,
                // Malformed or too many headers: hyper answers with the right error.
                Err(()) => return Next::Handover,
                Ok(None) if buf.len() >= limits.max_header_bytes => return Next::Handover,
                Ok(None) => {}
            }
            // The head has started: it must complete within the header timeout.
            deadline.get_or_insert_with(|| tokio::time::Instant::now() + limits.header_timeout);
        }
        let wait = match deadline {
            Some(d) => d.saturating_duration_since(tokio::time::Instant::now()),
            // Idle between requests: the same bound as hyper's, the header timeout.
            None => limits.header_timeout,
        };
        tokio::select! {
            read = tokio::time::timeout(wait, stream.read_buf(buf)) => match read {
                Ok(Ok(n)) if n > 0 => {}
                // Closed, failed, or too slow (idle, or a head that trickles in).
                _ => return Next::Close,
            },
            _ = stop.cancelled(), if buf.is_empty() => return Next::Close,
        }
    }
}

/// Parse one request head from the start of `buf`: Ok(None) when incomplete, Err on a malformed
/// head, else its length and the request when this loop takes it (None: hand over to hyper).
fn parse(buf: &[u8], max_headers: usize) -> Result<Option<(usize, Option<Parsed>)>, ()> {
    let mut headers = vec![httparse::EMPTY_HEADER; max_headers];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    Ok(Some((len, take(&req))))
}

/// The request, if it is one this loop answers: HTTP/1.1, GET or HEAD, no body, no upgrade.
fn take(req: &httparse::Request) -> Option<Parsed> {
    if req.version != Some(1) {
        return None;
    }
    let method = match req.method? {
        "GET" => Method::GET,
        "HEAD" => Method::HEAD,
        _ => return None,
    };
    let mut builder = Request::builder()
        .method(method)
        .uri(req.path?)
        .version(Version::HTTP_11);
    let mut close = false;
    for h in req.headers.iter() {
        let name = header::HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        if name == header::TRANSFER_ENCODING || name == header::EXPECT || name == header::UPGRADE {
            return None;
        }
        if name == header::CONTENT_LENGTH && h.value.trim_ascii() != b"0" {
            return None;
        }
        if name == header::CONNECTION {
            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            if v.contains("upgrade") {
                return None;
            }
            close |= v.split(',').any(|t| t.trim() == "close");
        }
        builder = builder.header(name, HeaderValue::from_bytes(h.value).ok()?);
    }
    let request = builder.body(Body::empty()).ok()?;
    Some(Parsed { request, close })
}

/// Write one answer. Returns whether the connection may carry another request.
async fn respond(
    stream: &mut TcpStream,
    resp: Response<Body>,
    head_request: bool,
    close: bool,
) -> io::Result<bool> {
    let (mut parts, body) = resp.into_parts();
    let send_file = parts.extensions.remove::<SendFile>();
    let status = parts.status;
    let bodyless = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let h = &mut parts.headers;
    let mut length = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if length.is_none() && !bodyless {
        length = http_body::Body::size_hint(&body).exact();
        match length {
            Some(n) => {
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            None => {
                h.insert(
                    header::TRANSFER_ENCODING,
                    HeaderValue::from_static("chunked"),
                );
            }
        }
    }
    if close {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if !h.contains_key(header::DATE) {
        if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(std::time::SystemTime::now()))
        {
            h.insert(header::DATE, v);
        }
    }
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in h.iter() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if bodyless {
        stream.write_all(&out).await?;
        return Ok(!close);
    }
    if let Some(sf) = send_file {
        if let Some(mut region) = sf.take() {
            if Some(region.remaining()) != length {
                return Err(io::Error::other("file region and Content-Length disagree"));
            }
            drop(body);
            // Corked, the head and the file leave in full-sized segments (nginx's tcp_nopush);
            // uncorking sends the tail at once. Measured on loopback: uncorked, sendfile's 64 KiB
            // batches go out as a full segment plus a sliver, which doubled CPU per GB (3.06x
            // nginx vs 1.83x corked) for about 10 % more throughput.
            sys::set_cork(stream, true);
            stream.write_all(&out).await?;
            let sent = send_region(stream, &mut region, &sf).await;
            sys::set_cork(stream, false);
            sent?;
            return Ok(!close);
        }
    }
    write_body(stream, out, body, length).await?;
    Ok(!close)
}

/// Write `head` and then `body`, with Content-Length framing when `length` is known, chunked
/// otherwise. A body that fails or disagrees with its length ends the connection (an error).
async fn write_body(
    stream: &mut TcpStream,
    mut out: Vec<u8>,
    mut body: Body,
    length: Option<u64>,
) -> io::Result<()> {
    let mut sent: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(io::Error::other)?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers: not used by the registry API
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        if length.is_some_and(|l| sent > l) {
            return Err(io::Error::other("body longer than its Content-Length"));
        }
        if length.is_none() {
            out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        }
        if out.len() + data.len() <= WRITE_BUFFER {
            out.extend_from_slice(&data);
        } else {
            stream.write_all(&out).await?;
            out.clear();
            stream.write_all(&data).await?;
        }
        if length.is_none() {
            out.extend_from_slice(b"\r\n");
        }
    }
    match length {
        Some(l) if sent != l => {
            stream.write_all(&out).await?;
            return Err(io::Error::other("body shorter than its Content-Length"));
        }
        Some(_) => {}
        None => out.extend_from_slice(b"0\r\n\r\n"),
    }
    stream.write_all(&out).await
}

/// Send a file region to the socket inside the kernel.
///
/// `sendfile` blocks if the file's pages are not in memory; that would stall an async worker, so
/// a region whose next pages are not cached is first read in on the blocking pool (`readahead`).
async fn send_region(
    stream: &mut TcpStream,
    region: &mut FileRegion,
    sf: &SendFile,
) -> io::Result<()> {
    // Offsets below this were found in the page cache (probed once per window, not per call).
    let mut cached_until = 0;
    loop {
        let ready = region.ready().await?;
        if ready == 0 {
            return Ok(());
        }
        let (pos, count) = (region.pos(), ready.min(MAX_SENDFILE) as usize);
        // A fill's spool was written moments ago: its pages are in memory (dirty pages are not
        // dropped before writeback), so only committed files are probed.
        if region.is_filling() {
            cached_until = pos + count as u64;
        } else if pos >= cached_until {
            let window = ready.min(PROBE_WINDOW) as usize;
            if !pages_cached(region.file(), pos, window) {
                let file = region.file().clone();
                tokio::task::spawn_blocking(move || sys::readahead(&file, pos, window))
                    .await
                    .map_err(io::Error::other)??;
            }
            cached_until = pos + window as u64;
        }
        let count = count.min((cached_until - pos) as usize);
        let count = sf.allow(count).await;
        let file = region.file();
        let sent = stream
            .async_io(Interest::WRITABLE, || {
                sys::sendfile(stream, file, pos, count)
            })
            .await?;
        if sent == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shorter than its region",
            ));
        }
        region.advance(sent as u64);
        sf.served(sent as u64);
    }
}

/// Whether the first and the last byte of `pos..pos+count` are in the page cache.
fn pages_cached(file: &std::fs::File, pos: u64, count: usize) -> bool {
    sys::byte_cached(file, pos) && sys::byte_cached(file, pos + count as u64 - 1)
}

impl Handover {
    /// The connection as hyper's I/O type.
    pub(super) fn into_io(self) -> hyper_util::rt::TokioIo<Handover> {
        hyper_util::rt::TokioIo::new(self)
    }
}

impl AsyncRead for Handover {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(out.remaining());
            out.put_slice(&self.read[..n]);
            self.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, out)
    }
}

impl AsyncWrite for Handover {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;

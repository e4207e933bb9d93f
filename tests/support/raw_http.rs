//! HTTP/1.x spoken by hand over one TCP connection: request heads written byte for byte, responses
//! parsed without an HTTP library (status line, headers, a body delimited by `Content-Length`, by
//! chunked coding or by the end of the connection). For tests that pin down the wire itself:
//! keep-alive, pipelining, HTTP/1.0, `Connection: close`, absolute-form targets.
//!
//! Blocking std I/O with a read timeout on every socket, so a server that stops answering fails
//! the test instead of hanging it. Bytes read past the end of one response stay buffered for the
//! next one (pipelined answers arrive back to back).

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// How long a read may wait for the server before the test fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// How a response body was delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body by definition (HEAD, 1xx, 204, 304).
    NoBody,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Neither: the body ends when the server closes the connection.
    Close,
}

/// One response as it arrived.
#[derive(Debug, Clone)]
pub struct Response {
    /// `HTTP/1.1` or `HTTP/1.0`, from the status line.
    pub version: String,
    pub status: u16,
    /// Header names as sent, values trimmed, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub framing: Framing,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        super::client::find_header(&self.headers, name)
    }

    /// Whether any `Connection` header lists `token` (case-insensitive).
    pub fn connection_has(&self, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("connection"))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The first OCI error code of a JSON error body (`{"errors":[{"code":...}]}`).
    pub fn error_code(&self) -> Option<String> {
        super::client::oci_error_code(&self.body)
    }

    /// Status line and headers, for assertion messages (bodies can be megabytes).
    pub fn head_text(&self) -> String {
        let mut s = format!("{} {}", self.version, self.status);
        for (k, v) in &self.headers {
            s.push_str(&format!("\n{k}: {v}"));
        }
        s
    }
}

/// A request head: `METHOD TARGET VERSION`, `Host: host`, `headers`, blank line.
pub fn request(
    method: &str,
    target: &str,
    version: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> Vec<u8> {
    let mut r = format!("{method} {target} {version}\r\nHost: {host}\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// One client connection.
pub struct Conn {
    stream: TcpStream,
    /// Received bytes not yet consumed by a parsed response.
    buf: Vec<u8>,
    /// `127.0.0.1:PORT` of the server, for messages and `Host` headers.
    pub addr: String,
}

impl Conn {
    pub fn connect(addr: &str) -> Conn {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("set read timeout");
        let _ = stream.set_nodelay(true);
        Conn {
            stream,
            buf: Vec::new(),
            addr: addr.to_string(),
        }
    }

    /// Write all of `bytes` in one `write_all`.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("write to {}: {e}", self.addr));
    }

    /// Send a request head (no body) and read its response.
    pub fn exchange(&mut self, method: &str, head: &[u8]) -> Response {
        self.send(head);
        self.read_response(method)
    }

    /// Read one more piece from the socket into the buffer; 0 at the end of the stream.
    fn fill(&mut self, what: &str) -> usize {
        let mut chunk = [0u8; 64 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                n
            }
            Err(e) => panic!(
                "reading {what} from {}: {e} (after {} buffered bytes)",
                self.addr,
                self.buf.len()
            ),
        }
    }

    /// Take `n` bytes, reading as needed; panics if the server closes first.
    fn take(&mut self, n: usize, what: &str) -> Vec<u8> {
        while self.buf.len() < n {
            if self.fill(what) == 0 {
                panic!(
                    "{} closed the connection after {} of {n} bytes of {what}",
                    self.addr,
                    self.buf.len()
                );
            }
        }
        self.buf.drain(..n).collect()
    }

    /// Take one CRLF-terminated line (without the CRLF).
    fn line(&mut self, what: &str) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).take(i).collect();
                return String::from_utf8(line)
                    .unwrap_or_else(|e| panic!("{what} from {} is not UTF-8: {e}", self.addr));
            }
            if self.fill(what) == 0 {
                panic!(
                    "{} closed the connection inside {what}; got {:?}",
                    self.addr,
                    String::from_utf8_lossy(&self.buf)
                );
            }
        }
    }

    /// Read a status line and headers (skipping interim 1xx responses).
    pub fn read_head(&mut self) -> (String, u16, Vec<(String, String)>) {
        loop {
            let status_line = self.line("a status line");
            let mut parts = status_line.splitn(3, ' ');
            let version = parts.next().unwrap_or_default().to_string();
            let status: u16 = parts
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("not a status line: {status_line:?}"));
            assert!(
                version == "HTTP/1.1" || version == "HTTP/1.0",
                "not an HTTP/1.x status line: {status_line:?}"
            );
            let mut headers = Vec::new();
            loop {
                let l = self.line("the response headers");
                if l.is_empty() {
                    break;
                }
                let (k, v) = l
                    .split_once(':')
                    .unwrap_or_else(|| panic!("malformed header line {l:?}"));
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
            if !(100..200).contains(&status) {
                return (version, status, headers);
            }
        }
    }

    /// Read one whole response to a request made with `method` (a HEAD answer has no body).
    pub fn read_response(&mut self, method: &str) -> Response {
        let (version, status, headers) = self.read_head();
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let chunked = get("transfer-encoding")
            .map(|v| v.to_ascii_lowercase().contains("chunked"))
            .unwrap_or(false);
        let length = get("content-length").map(|v| {
            v.parse::<u64>()
                .unwrap_or_else(|_| panic!("bad Content-Length {v:?}"))
        });
        let (framing, body) = if method == "HEAD" || status == 204 || status == 304 {
            (Framing::NoBody, Vec::new())
        } else if chunked {
            (Framing::Chunked, self.read_chunked())
        } else if let Some(n) = length {
            (Framing::Length(n), self.take(n as usize, "a response body"))
        } else {
            (Framing::Close, self.read_to_end())
        };
        Response {
            version,
            status,
            headers,
            body,
            framing,
        }
    }

    fn read_chunked(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let size_line = self.line("a chunk size");
            let hex = size_line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(hex, 16)
                .unwrap_or_else(|_| panic!("bad chunk size line {size_line:?}"));
            if size == 0 {
                // Trailers, then the blank line.
                while !self.line("the chunked trailer").is_empty() {}
                return body;
            }
            body.extend(self.take(size, "a chunk"));
            let end = self.take(2, "a chunk's CRLF");
            assert_eq!(end, b"\r\n", "chunk not followed by CRLF");
        }
    }

    fn read_to_end(&mut self) -> Vec<u8> {
        while self.fill("a close-delimited body") > 0 {}
        std::mem::take(&mut self.buf)
    }

    /// Read exactly `n` bytes of a body whose head was read with [`Conn::read_head`].
    pub fn read_exact_body(&mut self, n: usize) -> Vec<u8> {
        self.take(n, "part of a body")
    }

    /// Bytes received but not consumed by any response (stray bytes after a complete answer).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Assert that the server ends the connection cleanly with nothing more to say: the next
    /// read returns 0 (FIN). A reset is a failure: it may destroy response bytes the client
    /// has not read yet.
    pub fn assert_closed_by_server(&mut self) {
        assert_eq!(
            self.buf.len(),
            0,
            "unexpected bytes after the response: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        let mut b = [0u8; 1024];
        match self.stream.read(&mut b) {
            Ok(0) => {}
            Ok(n) => panic!(
                "expected the server to close; it sent {n} more bytes: {:?}",
                String::from_utf8_lossy(&b[..n])
            ),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("the server kept the connection open for {READ_TIMEOUT:?}")
            }
            Err(e) => panic!("expected a clean close (read = 0), got: {e}"),
        }
    }

    /// The socket, for tests that shut it down.
    pub fn stream_ref(&self) -> &TcpStream {
        &self.stream
    }
}

//! Network faults between regmirror and a real upstream: a TCP relay on 127.0.0.1 whose
//! behaviour a test switches while it runs ([`Mode`]): forward (at once or through a slow link),
//! refuse connections, black-hole them, accept and stay silent, stall a response after its head,
//! or answer every request with one status.
//!
//! The relay runs on its own runtime (one worker thread), so it does what it was told whatever
//! the test's runtime is busy with. A switch first closes every connection the relay holds
//! (a client's pooled keep-alive connection too), so the new mode applies to all that follows,
//! exactly as when the network between two hosts changes. Everything is stopped when the relay
//! drops. Loopback only; every loop ends (connections at end of stream, the accept loop after
//! [`MAX_CONNECTIONS`], head reads after [`MAX_HEAD`] bytes).

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// What the relay does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Relay bytes both ways.
    Forward,
    /// Relay bytes both ways; those from the upstream arrive this much later (a slow link).
    Latency(Duration),
    /// Nothing listens: connects are refused. Switching away binds the same port again.
    Refuse,
    /// A listener with backlog 0, filled by the relay's own connects, that never accepts:
    /// further SYNs are dropped and a client's connect hangs until its own timeout.
    BlackHole,
    /// Relay bytes both ways; those from the upstream at most this many bytes a second (a
    /// narrow link: a big blob takes seconds to arrive).
    Throttle(u64),
    /// Accept, read the request, never answer.
    Silent,
    /// Forward requests, relay each response head (through the blank line); the first response
    /// with a body gets no body: nothing more is sent, and the connection stays open.
    StallBody,
    /// Answer every request with this status and an empty body (`Retry-After: 7` with 429),
    /// then close.
    Status(u16),
}

/// The `Retry-After` a [`Mode::Status`] relay sends with 429.
pub const RETRY_AFTER_SECS: u64 = 7;
/// Connections one mode accepts before its accept loop ends.
pub const MAX_CONNECTIONS: usize = 10_000;
/// Most bytes of a request or response head the relay reads looking for its end.
pub const MAX_HEAD: usize = 64 * 1024;
/// Connects the relay makes to its own black-hole listener to fill the backlog.
const BLACK_HOLE_FILLERS: usize = 3;

/// A relay on `127.0.0.1:port` in front of `target`; everything stops when it drops.
pub struct Relay {
    pub port: u16,
    target: SocketAddr,
    mode: Mode,
    runtime: Option<tokio::runtime::Runtime>,
    /// The accept loop of the current mode, when something listens and accepts.
    accept: Option<JoinHandle<()>>,
    /// Connections accepted in the current mode (finished ones are pruned as new ones arrive).
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// [`Mode::BlackHole`]: the listener that never accepts and the connects filling its backlog.
    black_hole: Vec<Socket>,
}

impl Relay {
    /// Start forwarding to `target` (`127.0.0.1:PORT`) on a free loopback port.
    pub async fn start(target: &str) -> Relay {
        let target: SocketAddr = target.parse().expect("relay target is IP:PORT");
        assert!(
            target.ip().is_loopback(),
            "the relay forwards to loopback only"
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("netfaults-relay")
            .enable_all()
            .build()
            .expect("relay runtime");
        let listener = listen(0, 128).await;
        let port = listener.local_addr().expect("relay address").port();
        let mut relay = Relay {
            port,
            target,
            mode: Mode::Forward,
            runtime: Some(runtime),
            accept: None,
            connections: Arc::default(),
            black_hole: Vec::new(),
        };
        relay.serve(listener, Mode::Forward);
        relay
    }

    /// `127.0.0.1:PORT`: the upstream's name in regmirror's config.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Close every connection and the listener of the current mode, then take up `mode`. When
    /// this returns the new mode is in force: refused, black-holed or listening.
    pub async fn set(&mut self, mode: Mode) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
            let _ = accept.await;
        }
        let open: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.connections.lock().expect("connections"));
        for c in &open {
            c.abort();
        }
        for c in open {
            let _ = c.await;
        }
        self.black_hole.clear();
        self.mode = mode;
        match mode {
            Mode::Refuse => {}
            Mode::BlackHole => self.fill_black_hole().await,
            _ => self.serve(listen(self.port, 128).await, mode),
        }
    }

    /// Accept on `listener` and treat each connection as `mode` says.
    fn serve(&mut self, listener: TcpListener, mode: Mode) {
        let (connections, target) = (self.connections.clone(), self.target);
        let runtime = self.runtime.as_ref().expect("relay runtime");
        self.accept = Some(runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            for _ in 0..MAX_CONNECTIONS {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let task = tokio::spawn(connection(client, mode, target));
                let mut open = connections.lock().expect("connections");
                open.retain(|c| !c.is_finished());
                open.push(task);
            }
        }));
    }

    /// Listen with backlog 0, fill the backlog with connects of our own, never accept; check
    /// that one more connect indeed hangs.
    async fn fill_black_hole(&mut self) {
        let listener = socket(self.port, 0).await;
        let addr = SockAddr::from(SocketAddr::from(([127, 0, 0, 1], self.port)));
        self.black_hole.push(listener);
        for _ in 0..BLACK_HOLE_FILLERS {
            let filler = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
                .expect("filler socket");
            filler.set_nonblocking(true).expect("non-blocking filler");
            // In progress (EINPROGRESS) or done: either way it takes its place in the queue.
            let _ = filler.connect(&addr);
            self.black_hole.push(filler);
        }
        // Loopback completes the first handshake almost at once; wait until it did, so the
        // queue is full before anyone else knocks.
        for _ in 0..100 {
            if self.black_hole[1..].iter().any(|f| f.peer_addr().is_ok()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let probe = tokio::time::timeout(
            Duration::from_millis(300),
            TcpStream::connect(("127.0.0.1", self.port)),
        )
        .await;
        assert!(
            probe.is_err(),
            "black hole on port {}: a connect did not hang ({probe:?})",
            self.port
        );
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Drops every task (and so every socket) without waiting; allowed inside a runtime.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A loopback TCP socket bound to `port` (0: any free one) and listening with `backlog`,
/// non-blocking. A port just released may still be held for a moment: retry, bounded.
async fn socket(port: u16, backlog: i32) -> Socket {
    let addr = SockAddr::from(SocketAddr::from(([127, 0, 0, 1], port)));
    let mut last = None;
    for _ in 0..100 {
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
        s.set_reuse_address(true).expect("SO_REUSEADDR");
        s.set_nonblocking(true).expect("non-blocking");
        match s.bind(&addr).and_then(|()| s.listen(backlog)) {
            Ok(()) => return s,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("relay cannot listen on 127.0.0.1:{port}: {last:?}");
}

async fn listen(port: u16, backlog: i32) -> TcpListener {
    socket(port, backlog).await.into()
}

/// One accepted connection under `mode`.
async fn connection(mut client: TcpStream, mode: Mode, target: SocketAddr) {
    match mode {
        Mode::Forward => {
            if let Ok(mut upstream) = TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            }
        }
        Mode::Latency(latency) => slow_link(client, target, latency).await,
        Mode::Throttle(rate) => narrow_link(client, target, rate).await,
        Mode::Silent => {
            let _ = tokio::io::copy(&mut client, &mut tokio::io::sink()).await;
        }
        Mode::StallBody => stall_body(client, target).await,
        Mode::Status(code) => answer_status(client, code).await,
        Mode::Refuse | Mode::BlackHole => unreachable!("{mode:?} accepts no connection"),
    }
}

/// Requests go through at once; every byte of the answers is held for `latency`, then sent (a
/// delay line: the link is slow, not narrow).
async fn slow_link(client: TcpStream, target: SocketAddr, latency: Duration) {
    let Ok(upstream) = TcpStream::connect(target).await else {
        return;
    };
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_upstream, mut to_upstream) = upstream.into_split();
    let (line, mut due) = tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(64);
    let requests = async {
        let _ = tokio::io::copy(&mut from_client, &mut to_upstream).await;
        let _ = to_upstream.shutdown().await;
    };
    let answers_in = async move {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n @ 1..) = from_upstream.read(&mut buf).await {
            let at = tokio::time::Instant::now() + latency;
            if line.send((at, buf[..n].to_vec())).await.is_err() {
                break;
            }
        }
    };
    let answers_out = async {
        while let Some((at, bytes)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if to_client.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = to_client.shutdown().await;
    };
    tokio::join!(requests, answers_in, answers_out);
}

/// Requests go through at once; answers at most `rate` bytes a second (16 KiB reads, each
/// followed by the pause its size costs at that rate).
async fn narrow_link(client: TcpStream, target: SocketAddr, rate: u64) {
    let Ok(upstream) = TcpStream::connect(target).await else {
        return;
    };
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_upstream, mut to_upstream) = upstream.into_split();
    let requests = async {
        let _ = tokio::io::copy(&mut from_client, &mut to_upstream).await;
        let _ = to_upstream.shutdown().await;
    };
    let answers = async {
        let start = tokio::time::Instant::now();
        let mut sent = 0u64;
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n @ 1..) = from_upstream.read(&mut buf).await {
            if to_client.write_all(&buf[..n]).await.is_err() {
                break;
            }
            sent += n as u64;
            let due = start + Duration::from_secs_f64(sent as f64 / rate.max(1) as f64);
            tokio::time::sleep_until(due).await;
        }
        let _ = to_client.shutdown().await;
    };
    tokio::join!(requests, answers);
}

/// Requests go through; of each answer the head comes back, and an answer without a body (to a
/// HEAD; 1xx, 204, 304, `Content-Length: 0`) whole, so the connection goes on. The first body
/// never comes: from then on nothing does, and the client's socket stays open until the client
/// closes it. Requests are taken to have no body (a pull sends GET and HEAD only).
async fn stall_body(client: TcpStream, target: SocketAddr) {
    let Ok(upstream) = TcpStream::connect(target).await else {
        return;
    };
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_upstream, mut to_upstream) = upstream.into_split();
    // Methods of the requests sent, oldest first: whether an answer has a body depends on them.
    let methods = Mutex::new(VecDeque::new());
    let requests = async {
        let mut pending = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n @ 1..) = from_client.read(&mut buf).await {
            pending.extend_from_slice(&buf[..n]);
            while let Some(end) = head_end(&pending) {
                let head: Vec<u8> = pending.drain(..end).collect();
                let method = head.split(|b| *b == b' ').next().unwrap_or_default();
                let method = String::from_utf8_lossy(method).into_owned();
                methods.lock().expect("methods").push_back(method);
            }
            if pending.len() >= MAX_HEAD {
                pending.clear();
            }
            if to_upstream.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        // The client left: let the upstream close its side, which ends `answers`.
        let _ = to_upstream.shutdown().await;
    };
    let answers = async {
        let mut pending = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        let mut stalled = false;
        while let Ok(n @ 1..) = from_upstream.read(&mut buf).await {
            if stalled {
                continue; // swallowed: the body never arrives
            }
            pending.extend_from_slice(&buf[..n]);
            while let Some(end) = head_end(&pending) {
                let head: Vec<u8> = pending.drain(..end).collect();
                let method = methods.lock().expect("methods").pop_front();
                let whole = has_no_body(&head, method.as_deref());
                if to_client.write_all(&head).await.is_err() || !whole {
                    stalled = true;
                    break;
                }
            }
            stalled |= pending.len() >= MAX_HEAD;
        }
    };
    tokio::join!(requests, answers);
    // `to_client` lives until here: the client never sees the end of the body.
    drop(to_client);
}

/// Whether the response with this head (to a `method` request) ends with its head.
fn has_no_body(head: &[u8], method: Option<&str>) -> bool {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let empty = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("content-length") && v.trim() == "0"
        })
    });
    method == Some("HEAD") || matches!(status, 100..=199 | 204 | 304) || empty
}

/// Read one request head, answer `code` with an empty body, close.
async fn answer_status(mut client: TcpStream, code: u16) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while head_end(&head).is_none() && head.len() < MAX_HEAD {
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let reason = reqwest::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Status");
    let retry_after = match code {
        429 => format!("Retry-After: {RETRY_AFTER_SECS}\r\n"),
        _ => String::new(),
    };
    let answer = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Length: 0\r\n{retry_after}Connection: close\r\n\r\n"
    );
    let _ = client.write_all(answer.as_bytes()).await;
    let _ = client.shutdown().await;
}

/// Length of the head in `bytes` through its blank line, once it is all there.
fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
}

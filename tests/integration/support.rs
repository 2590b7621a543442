//! Test support of the integration crate: the shared support
//! (tests/support/shared.rs), an in-process gateway and raw upstreams.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use canary_gateway::config::Config;
use canary_gateway::gateway::{self, Dependencies, Listeners, Running};
use tokio::net::{TcpListener, TcpStream};

#[path = "../support/shared.rs"]
mod shared;
pub use shared::*;

/// A gateway started in this process on 127.0.0.1:0.
pub struct Gateway {
    pub running: Option<Running>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts a gateway from config text; `{listen}` and `{admin}` default to
    /// 127.0.0.1:0 when the text has no [listener]/[admin] tables.
    pub async fn start(config_text: &str) -> Gateway {
        Gateway::start_with(config_text, Dependencies::default()).await
    }

    pub async fn start_with(config_text: &str, deps: Dependencies) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, config_text).unwrap();
        let config = Config::load(&path).unwrap();
        let listeners = Listeners {
            proxy: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            admin: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let running = gateway::start(config, listeners, deps).await.unwrap();
        Gateway {
            addr: running.proxy_addr,
            admin: running.admin_addr,
            running: Some(running),
            dir,
        }
    }

    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("gateway.toml")
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

/// Upstreams v1 and v2 and an in-process gateway splitting `w1`:`w2`
/// between them (v1 stable), with the extra `[split]` lines `split_extra`.
pub async fn two_versions(split_extra: &str, w1: u32, w2: u32) -> (Upstream, Upstream, Gateway) {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let gw = Gateway::start(&config(
        split_extra,
        &[("v1", w1, v1.addr), ("v2", w2, v2.addr)],
    ))
    .await;
    (v1, v2, gw)
}

/// A gateway with [`config`]'s versions (and `x-canary-version` as the
/// response header) whose admin token `token` is read from a file; keep the
/// returned directory while the gateway runs.
pub async fn gateway_with_token(
    versions: &[(&str, u32, SocketAddr)],
    token: &str,
) -> (Gateway, tempfile::TempDir) {
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("token");
    std::fs::write(&token_file, token).unwrap();
    let versions: Vec<(&str, u32, String)> = versions
        .iter()
        .map(|(name, weight, addr)| (*name, *weight, endpoints_line(&[*addr])))
        .collect();
    let text = gateway_config(
        &format!("token_file = \"{}\"\n", token_file.display()),
        "response_header = \"x-canary-version\"",
        &versions,
    );
    (Gateway::start(&text).await, secrets)
}

/// A raw HTTP/1.1 upstream for requests without bodies: it answers each
/// request with 200, the extra header lines `extra_headers` (each ending in
/// `\r\n`) and the request head exactly as received as its body.
pub struct EchoHeadUpstream {
    pub addr: SocketAddr,
    task: ServerTask,
}

impl EchoHeadUpstream {
    pub async fn start(extra_headers: &'static str) -> EchoHeadUpstream {
        use tokio::io::AsyncWriteExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = serve_connections(listener, move |mut stream| async move {
            let mut buf = Vec::new();
            while let Some(head) = read_head(&mut stream, &mut buf).await {
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{extra_headers}\r\n",
                    head.len()
                );
                if stream.write_all(resp.as_bytes()).await.is_err()
                    || stream.write_all(head.as_bytes()).await.is_err()
                {
                    return;
                }
            }
        });
        EchoHeadUpstream { addr, task }
    }
}

/// Reads one message head (through the blank line) from `stream`; `buf`
/// keeps bytes read past it. `None` on EOF or error before a full head.
pub async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = buf.drain(..end + 4).collect();
            return Some(String::from_utf8_lossy(&head).into_owned());
        }
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Reads from `stream` until EOF (or a reset); `None` if `limit` passed first.
pub async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let read = async {
        let mut chunk = [0u8; 8192];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(limit, read).await.ok()?;
    Some(out)
}

/// An HTTP/2 prior-knowledge (h2c) client connection to `addr`.
pub async fn h2c_client(
    addr: SocketAddr,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    h2c_client_for(addr).await
}

/// [`h2c_client`] for requests with bodies of type `B`.
pub async fn h2c_client_for<B>(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    h2c_connection_for(addr).await.0
}

/// [`h2c_client_for`], with the task that drives the connection: aborted,
/// it closes the connection (a client gone with its streams in flight).
pub async fn h2c_connection_for<B>(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<B>,
    tokio::task::JoinHandle<hyper::Result<()>>,
)
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    (sender, tokio::spawn(conn))
}

/// The status code of a raw HTTP/1.x response (`HTTP/1.1 NNN ...`).
pub fn raw_status(response: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(response.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
}

/// A raw HTTP/1.1 upstream that answers every request head (requests without
/// bodies) with the same bytes, e.g. a chunked response with trailers.
pub struct FixedUpstream {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub connections: Arc<AtomicU64>,
    /// Connections the gateway closed (or that this upstream closed).
    pub closed: Arc<AtomicU64>,
    task: ServerTask,
}

/// What a [`FixedUpstream::scripted`] upstream does with the n-th request
/// (from 0) of a connection: answer with these bytes and keep the connection
/// open (`false`) or close it after the answer (`true`); `None` closes the
/// connection without answering.
pub type Script = fn(usize) -> Option<(&'static [u8], bool)>;

type Answers = Arc<dyn Fn(usize) -> Option<(&'static [u8], bool)> + Send + Sync>;

impl FixedUpstream {
    pub async fn start(response: &'static [u8]) -> FixedUpstream {
        Self::serve(Arc::new(move |_| Some((response, false)))).await
    }

    pub async fn scripted(script: Script) -> FixedUpstream {
        Self::serve(Arc::new(script)).await
    }

    async fn serve(script: Answers) -> FixedUpstream {
        use tokio::io::AsyncWriteExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicU64::new(0));
        let accepted = connections.clone();
        let closed = Arc::new(AtomicU64::new(0));
        let ended = closed.clone();
        let task = serve_connections(listener, move |mut stream| {
            accepted.fetch_add(1, Ordering::SeqCst);
            let script = script.clone();
            let ended = ended.clone();
            async move {
                let mut buf = Vec::new();
                let mut n = 0;
                while read_head(&mut stream, &mut buf).await.is_some() {
                    let Some((response, close)) = script(n) else {
                        break;
                    };
                    n += 1;
                    if stream.write_all(response).await.is_err() || close {
                        break;
                    }
                }
                ended.fetch_add(1, Ordering::SeqCst);
            }
        });
        FixedUpstream {
            addr,
            connections,
            closed,
            task,
        }
    }
}

/// A chunked upload of "hello world" in two chunks, written by hand.
pub const CHUNKED_HELLO_WORLD: &[u8] = b"POST /upload HTTP/1.1\r\nHost: h\r\n\
    Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";

/// Frame types and the ACK flag of HTTP/2 (RFC 9113, 6).
pub mod h2_frame {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const ACK: u8 = 0x1;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    /// RST_STREAM's error code of a client that no longer wants the stream.
    pub const CANCEL: u32 = 0x8;
}

/// An HTTP/2 request's header block: every field an HPACK literal without
/// indexing and without Huffman coding (RFC 7541, 6.2.2), so no table is
/// kept; each name and value under 127 bytes.
pub fn h2_header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields {
        block.push(0);
        for text in [name, value] {
            assert!(text.len() < 127, "{text}: too long for this encoder");
            block.push(text.len() as u8);
            block.extend_from_slice(text.as_bytes());
        }
    }
    block
}

/// One HTTP/2 frame as it came from the gateway.
#[derive(Debug)]
pub struct RawFrame {
    pub kind: u8,
    pub flags: u8,
    pub payload: Vec<u8>,
}

/// A raw HTTP/2 client connection (framing only), for what hyper's client
/// does not show: which frames the gateway sends (GOAWAY) and when it
/// closes the connection.
pub struct RawH2<S> {
    io: S,
    buf: Vec<u8>,
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> RawH2<S> {
    /// Sends the client preface and empty SETTINGS on `io`.
    pub async fn start(io: S) -> RawH2<S> {
        let mut h2 = RawH2 {
            io,
            buf: Vec::new(),
        };
        h2.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        h2.send(h2_frame::SETTINGS, 0, &[]).await.unwrap();
        h2
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    /// Sends a connection-level frame (stream 0).
    pub async fn send(&mut self, kind: u8, flags: u8, payload: &[u8]) -> std::io::Result<()> {
        self.send_on(0, kind, flags, payload).await
    }

    /// Sends a frame on `stream`.
    pub async fn send_on(
        &mut self,
        stream: u32,
        kind: u8,
        flags: u8,
        payload: &[u8],
    ) -> std::io::Result<()> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut frame = vec![len[1], len[2], len[3], kind, flags];
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        self.write(&frame).await
    }

    /// The next frame; `None` once the gateway closed the connection (or
    /// reset it). Cancel-safe: what was read stays in the buffer.
    pub async fn next_frame(&mut self) -> Option<RawFrame> {
        use tokio::io::AsyncReadExt;
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let frame: Vec<u8> = self.buf.drain(..9 + len).collect();
                    return Some(RawFrame {
                        kind: frame[3],
                        flags: frame[4],
                        payload: frame[9..].to_vec(),
                    });
                }
            }
            let mut chunk = [0u8; 8192];
            match self.io.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// What an HTTP/2 client that makes no request saw of its connection.
#[derive(Debug, Default)]
pub struct IdleH2 {
    /// When the first GOAWAY came (from the start), and its error code.
    pub goaway: Option<(Duration, u32)>,
    /// When the gateway closed the connection.
    pub closed: Option<Duration>,
    /// Answers to the client's PINGs.
    pub pongs: usize,
}

/// Opens HTTP/2 on `io` and makes no request: sends a PING every
/// `ping_every`, answers the gateway's SETTINGS, and its PINGs when
/// `answer_pings`, until the gateway closes the connection or `limit`
/// passes.
pub async fn idle_h2<S>(io: S, ping_every: Duration, answer_pings: bool, limit: Duration) -> IdleH2
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use h2_frame::*;
    let start = tokio::time::Instant::now();
    let mut h2 = RawH2::start(io).await;
    let mut seen = IdleH2::default();
    let mut ping = tokio::time::interval(ping_every);
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            frame = h2.next_frame() => {
                let Some(frame) = frame else {
                    seen.closed = Some(start.elapsed());
                    break;
                };
                // A write that fails (the gateway closed) shows as the
                // next read's end.
                match (frame.kind, frame.flags & ACK != 0) {
                    (SETTINGS, false) => {
                        let _ = h2.send(SETTINGS, ACK, &[]).await;
                    }
                    (PING, false) if answer_pings => {
                        let _ = h2.send(PING, ACK, &frame.payload).await;
                    }
                    (PING, true) => seen.pongs += 1,
                    (GOAWAY, _) if seen.goaway.is_none() => {
                        let code = frame.payload.get(4..8).map_or(u32::MAX, |c| {
                            u32::from_be_bytes([c[0], c[1], c[2], c[3]])
                        });
                        seen.goaway = Some((start.elapsed(), code));
                    }
                    _ => {}
                }
            }
            _ = ping.tick() => {
                let _ = h2.send(PING, 0, b"clientpg").await;
            }
            () = &mut deadline => break,
        }
    }
    seen
}

/// An HTTP/2 client on `io` (to `gw`) that reads its download slowly
/// across the drain, and sends frames after the gateway's end of the
/// connection (PINGs here, as a client's keep-alive does; a reading client
/// sends WINDOW_UPDATEs too): it asks for 512 KiB, takes the default
/// windows' worth, answers the drain's GOAWAY and PING, allows the rest at
/// once and pings for a while before it reads again. It must get the whole
/// body, and the drain must end once it closes: the gateway's close
/// lingers, reading and dropping what the client sends. (Closed at once,
/// the socket met the PINGs with a reset, and a reset throws away what the
/// socket had not sent yet.)
pub async fn slow_reader_across_the_drain<S>(io: S, scheme: &str, gw: Gateway)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use h2_frame::*;
    const BODY: u32 = 512 * 1024;
    // The client's default windows (RFC 9113, 6.9.2).
    const WINDOW: u32 = 65_535;
    let mut h2 = RawH2::start(io).await;
    let path = format!("/download?bytes={BODY}&length=1");
    let block = h2_header_block(&[
        (":method", "GET"),
        (":scheme", scheme),
        (":authority", "localhost"),
        (":path", &path),
    ]);
    h2.send_on(1, HEADERS, END_STREAM | END_HEADERS, &block)
        .await
        .unwrap();
    // The body's bytes received, and whether its end was.
    let (mut data, mut ended) = (0u32, false);
    let mut count = |frame: &RawFrame, data: &mut u32| {
        if frame.kind == DATA {
            *data += frame.payload.len() as u32;
            ended |= frame.flags & END_STREAM != 0;
        }
    };
    // The windows' worth of the body, the rest held back by them.
    while data < WINDOW {
        let frame = h2.next_frame().await.expect("the download");
        if frame.kind == SETTINGS && frame.flags & ACK == 0 {
            h2.send(SETTINGS, ACK, &[]).await.unwrap();
        }
        count(&frame, &mut data);
    }

    // The drain: GOAWAY and a PING, answered; then the last GOAWAY (the
    // connection ends once its stream has).
    let shutdown = tokio::spawn(gw.shutdown());
    let mut goaways = 0;
    while goaways < 2 {
        let frame = h2.next_frame().await.expect("the drain's GOAWAY");
        match frame.kind {
            GOAWAY => goaways += 1,
            PING if frame.flags & ACK == 0 => h2.send(PING, ACK, &frame.payload).await.unwrap(),
            _ => {}
        }
        count(&frame, &mut data);
    }
    // The rest of the body allowed at once; the client then reads nothing
    // for a while, and sends PINGs.
    let more = (BODY + 4096).to_be_bytes();
    h2.send(WINDOW_UPDATE, 0, &more).await.unwrap();
    h2.send_on(1, WINDOW_UPDATE, 0, &more).await.unwrap();
    let mut shutdown = std::pin::pin!(shutdown);
    let pings = async {
        let mut every = tokio::time::interval(Duration::from_millis(50));
        for _ in 0..40 {
            every.tick().await;
            if h2.send(PING, 0, b"clientpg").await.is_err() {
                return;
            }
        }
    };
    // Closed at once, the drain ends while the client pings.
    tokio::select! {
        _ = &mut shutdown => {}
        () = pings => {}
    }
    let _ = h2.send(PING, 0, b"clientpg").await;
    while let Some(frame) = h2.next_frame().await {
        count(&frame, &mut data);
    }
    assert_eq!(data, BODY, "the whole body");
    assert!(ended, "the stream's end");
    // The client closes: the gateway's linger ends with it.
    drop(h2);
    tokio::time::timeout(Duration::from_secs(4), shutdown)
        .await
        .expect("the drain ends when the client closes")
        .unwrap();
}

/// A log sink for the test's thread.
#[derive(Clone, Default)]
pub struct Captured(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What this thread logs at `level` and above, until the guard drops.
pub fn capture(level: tracing::Level) -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

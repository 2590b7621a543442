//! TLS: termination on the listener (ALPN h2 and http/1.1, ECDSA and RSA
//! keys in PKCS#8, PKCS#1 and SEC1, rotation without dropping connections, a
//! bad pair rejected at start and on reload) and TLS to upstreams. The
//! certificates are made in the test with rcgen.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

use crate::support::{Gateway, Upstream, admin, eventually};
use crate::test_ca::Ca;

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name);
    std::fs::read_to_string(path).unwrap()
}

/// Writes `cert` and `key` atomically (rename), as certificate tools do.
fn write_pair(dir: &Path, cert: &str, key: &str) {
    for (name, text) in [("cert.pem", cert), ("key.pem", key)] {
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

fn tls_config(dir: &Path, upstream: SocketAddr) -> String {
    format!(
        "[listener]\naddress = \"127.0.0.1:0\"\n[listener.tls]\ncert = \"{}\"\nkey = \"{}\"\n\n\
         [admin]\naddress = \"127.0.0.1:0\"\n\n[split]\nstable = \"v1\"\n\n\
         [[versions]]\nname = \"v1\"\nweight = 100\nendpoints = [\"{upstream}\"]\n",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    )
}

/// A TLS client configuration trusting `ca`, offering `alpn`. Its session
/// cache (rustls' default) lets connections made with it resume.
fn client_config(ca: &CertificateDer<'static>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A TLS connection over `tcp` with `config`.
async fn handshake(tcp: TcpStream, config: Arc<rustls::ClientConfig>) -> TlsStream<TcpStream> {
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// A TLS client connection to `addr` trusting `ca`, offering `alpn`.
async fn connect(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
    alpn: &[&[u8]],
) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    handshake(tcp, client_config(ca, alpn)).await
}

/// A TLS client on a socket with a small receive buffer: a large response
/// fills it, so the gateway's writes block partway.
async fn connect_small_buffer(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
) -> TlsStream<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    handshake(tcp, client_config(ca, &[])).await
}

fn peer_cert(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

type Sender1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn http1(tls: TlsStream<TcpStream>) -> Sender1 {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

type Sender2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

async fn http2(tls: TlsStream<TcpStream>) -> Sender2 {
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

async fn get1(sender: &mut Sender1, path: &str) -> (u16, String) {
    let req = Request::get(path)
        .header("host", "localhost")
        .body(Full::default())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn start_with_pair(
    cert: &str,
    key: &str,
    upstream: SocketAddr,
) -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    write_pair(dir.path(), cert, key);
    (Gateway::start(&tls_config(dir.path(), upstream)).await, dir)
}

#[tokio::test]
async fn https_serves_http1_and_http2_chosen_by_alpn() {
    let up = Upstream::start("v1").await;
    let ca = Ca::new();
    let (cert, key, _) = ca.leaf(&["localhost"]);
    let (gw, _dir) = start_with_pair(&cert, &key, up.addr).await;

    // HTTP/1.1: the own server (a GET) and hyper's after the hand-off (a POST).
    let tls = connect(gw.addr, &ca.der, &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut s = http1(tls).await;
    assert_eq!(get1(&mut s, "/").await, (200, "v1".to_string()));
    let post = Request::post("/upload")
        .header("host", "localhost")
        .body(Full::new(Bytes::from(vec![7u8; 100_000])))
        .unwrap();
    let resp = s.send_request(post).await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(text.starts_with(b"100000 "), "{text:?}");
    assert_eq!(get1(&mut s, "/again").await, (200, "v1".to_string()));
    // A large response whose writes outrun the socket: every byte arrives (TLS
    // records left in rustls' buffer are pushed out), and the connection goes on.
    // Chunked, and with a length (moved through the gateway's buffer).
    for query in ["", "", "&length=1", "&length=1"] {
        let (status, body) = get1(&mut s, &format!("/download?bytes=3000000{query}")).await;
        assert_eq!((status, body.len()), (200, 3_000_000), "{query}");
    }
    assert_eq!(
        get1(&mut s, "/after-download").await,
        (200, "v1".to_string())
    );

    // A slow reader: the response's last TLS records must still go out
    // (the own server reads next, and never flushes a plain socket).
    // Chunked, and with a length.
    for query in ["", "&length=1"] {
        let mut slow = connect_small_buffer(gw.addr, &ca.der).await;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let get = format!("GET /download?bytes=4000000{query} HTTP/1.1\r\nhost: localhost\r\n\r\n");
        slow.write_all(get.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        let whole = |got: &[u8]| match memchr::memmem::find(got, b"\r\n\r\n") {
            _ if query.is_empty() => got.ends_with(b"0\r\n\r\n"),
            Some(head) => got.len() >= head + 4 + 4_000_000,
            None => false,
        };
        let read_all = async {
            while !whole(&got) {
                let n = slow.read(&mut buf).await.unwrap();
                assert!(n > 0, "{query}: closed early");
                got.extend_from_slice(&buf[..n]);
            }
        };
        tokio::time::timeout(Duration::from_secs(20), read_all)
            .await
            .expect("the response's tail never arrived");
        assert!(got.len() > 4_000_000);
    }

    // HTTP/2 by ALPN.
    let tls = connect(gw.addr, &ca.der, &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut h2 = http2(tls).await;
    let req = Request::get("https://localhost/")
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "v1");

    // No ALPN at all: HTTP/1.1.
    let tls = connect(gw.addr, &ca.der, &[]).await;
    let mut s = http1(tls).await;
    assert_eq!(get1(&mut s, "/").await, (200, "v1".to_string()));
    gw.shutdown().await;
}

/// Once ALPN chose h2 the connection is HTTP/2 (RFC 9113, 3.2), as nginx and
/// Envoy have it: HTTP/1.1 text sent on it is no request, the connection
/// closes unanswered.
#[tokio::test]
async fn https_h2_by_alpn_serves_no_http1() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start("v1").await;
    let ca = Ca::new();
    let (cert, key, _) = ca.leaf(&["localhost"]);
    let (gw, _dir) = start_with_pair(&cert, &key, up.addr).await;
    let mut tls = connect(gw.addr, &ca.der, &[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    // Until the close (the server's SETTINGS may come first), or until an
    // HTTP/1.1 answer (whose connection would stay open).
    let mut got = Vec::new();
    while !got.starts_with(b"HTTP/") {
        let mut chunk = [0u8; 4096];
        match tls.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
    assert!(
        !got.starts_with(b"HTTP/"),
        "served as HTTP/1.1: {}",
        String::from_utf8_lossy(&got)
    );
    gw.shutdown().await;
}

/// An HTTP/2 connection over TLS (ALPN h2) that makes no request is closed
/// after `idle`, GOAWAY first, though PINGs flow; HTTP/1.1 on the same
/// listener still closes after `idle` without one.
#[tokio::test]
async fn https_idle_http2_connections_get_goaway_despite_pings() {
    let up = Upstream::start("v1").await;
    let ca = Ca::new();
    let (cert, key, _) = ca.leaf(&["localhost"]);
    let dir = tempfile::tempdir().unwrap();
    write_pair(dir.path(), &cert, &key);
    let text = tls_config(dir.path(), up.addr) + "\n[timeouts]\nidle = \"1s\"\n";
    let gw = Gateway::start(&text).await;
    let h2 = connect(gw.addr, &ca.der, &[b"h2"]).await;
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut h1 = connect(gw.addr, &ca.der, &[b"http/1.1"]).await;
    let limit = Duration::from_secs(5);
    let h1_closed = async {
        use tokio::io::AsyncReadExt;
        let start = tokio::time::Instant::now();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(limit, h1.read_to_end(&mut rest)).await;
        (read.is_ok(), start.elapsed(), rest)
    };
    let (seen, (h1_closed, h1_after, rest)) = tokio::join!(
        crate::support::idle_h2(h2, Duration::from_millis(200), true, limit),
        h1_closed
    );
    let (at, code) = seen.goaway.unwrap_or_else(|| panic!("no GOAWAY: {seen:?}"));
    assert_eq!(code, 0, "{seen:?}");
    assert!(at >= Duration::from_millis(750), "{seen:?}");
    assert!(seen.pongs >= 3, "{seen:?}");
    assert!(seen.closed.is_some(), "not closed: {seen:?}");
    assert!(h1_closed, "the idle HTTP/1.1 connection was not closed");
    assert!(h1_after >= Duration::from_millis(750), "{h1_after:?}");
    assert!(rest.is_empty(), "{rest:?}");
    gw.shutdown().await;
}

/// At shutdown, a connection that never began its TLS handshake (a load
/// balancer's TCP check, a port scan) is closed once the drain's idle
/// window is over, as a plain connection that sent nothing is: the
/// shutdown ends in about a second. Before, it held it for
/// `request_header` (15 s here).
#[tokio::test]
async fn an_unbegun_tls_handshake_does_not_hold_the_shutdown() {
    let up = Upstream::start("v1").await;
    let ca = Ca::new();
    let (cert, key, _) = ca.leaf(&["localhost"]);
    let dir = tempfile::tempdir().unwrap();
    write_pair(dir.path(), &cert, &key);
    let text = tls_config(dir.path(), up.addr)
        + "\n[timeouts]\nshutdown_grace = \"20s\"\nrequest_header = \"15s\"\n";
    let gw = Gateway::start(&text).await;
    // Accepted before the connection below (the listener takes connections
    // in order), so the gateway holds it when the drain begins.
    let _bare = TcpStream::connect(gw.addr).await.unwrap();
    let mut served = connect(gw.addr, &ca.der, &[b"http/1.1"]).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    served
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = served.read_to_end(&mut answer).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    let stopped = tokio::time::timeout(Duration::from_secs(10), gw.shutdown()).await;
    assert!(
        stopped.is_ok(),
        "the shutdown waited for an unbegun handshake"
    );
}

/// A raw HTTP/2 client on `io` that opens its windows as far as they go
/// (so that the gateway sends the whole body at once, into its HTTP/2
/// layer and the sockets' buffers) and asks for `bytes` from the
/// upstream's `/download`, on stream 1.
async fn download_with_large_windows<S>(
    io: S,
    scheme: &str,
    bytes: usize,
) -> crate::support::RawH2<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use crate::support::{RawH2, h2_frame, h2_header_block};
    let mut raw = RawH2::start(io).await;
    let mut settings = vec![0, 4];
    settings.extend_from_slice(&0x7fff_ffffu32.to_be_bytes());
    raw.send(h2_frame::SETTINGS, 0, &settings).await.unwrap();
    raw.send(
        h2_frame::WINDOW_UPDATE,
        0,
        &(0x7fff_ffffu32 - 65_535).to_be_bytes(),
    )
    .await
    .unwrap();
    let path = format!("/download?bytes={bytes}&length=1");
    let head = h2_header_block(&[
        (":method", "GET"),
        (":scheme", scheme),
        (":authority", "localhost"),
        (":path", &path),
    ]);
    raw.send_on(
        1,
        h2_frame::HEADERS,
        h2_frame::END_STREAM | h2_frame::END_HEADERS,
        &head,
    )
    .await
    .unwrap();
    raw
}

/// At shutdown, an HTTP/2 client over TLS that is not reading gets all of
/// its response once it reads again: the stream has ended on the gateway's
/// side while the response's tail waits in the connection's buffers (the
/// HTTP/2 layer's, the TLS session's, the socket's), and the drain must
/// not cut it.
#[tokio::test]
async fn a_stalled_http2_reader_gets_its_whole_response_across_the_shutdown() {
    use crate::support::h2_frame;
    const BYTES: usize = 200 * 1024;
    let up = Upstream::start("v1").await;
    let ca = Ca::new();
    let (cert, key, _) = ca.leaf(&["localhost"]);
    let dir = tempfile::tempdir().unwrap();
    write_pair(dir.path(), &cert, &key);
    let text = tls_config(dir.path(), up.addr) + "\n[timeouts]\nshutdown_grace = \"20s\"\n";
    let gw = Gateway::start(&text).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(gw.addr).await.unwrap();
    let tls = handshake(tcp, client_config(&ca.der, &[b"h2"])).await;
    let mut raw = download_with_large_windows(tls, "https", BYTES).await;
    // Read nothing: the socket fills, the rest waits in the gateway.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopping = tokio::spawn(gw.shutdown());
    // Past the drain's idle window and the second without a request.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (mut data, mut ended) = (0, false);
    while let Some(frame) = raw.next_frame().await {
        if frame.kind == h2_frame::DATA {
            data += frame.payload.len();
            ended |= frame.flags & h2_frame::END_STREAM != 0;
        }
        if ended {
            break;
        }
    }
    assert_eq!((data, ended), (BYTES, true));
    // (This client never answers the drain's PING: the shutdown runs to
    // its grace period's end.)
    stopping.abort();
}

/// Over TLS too, a slow HTTP/2 reader gets its whole download when the
/// drain ends its connection, though it sends frames after that end (see
/// `slow_reader_across_the_drain`): the linger reads them through the TLS
/// session the gateway closed with `close_notify`.
#[tokio::test]
async fn https_a_slow_http2_reader_gets_its_whole_download_when_the_drain_ends_the_connection() {
    let up = Upstream::start("v1").await;
    let ca = Ca::new();
    let (cert, key, _) = ca.leaf(&["localhost"]);
    let (gw, _dir) = start_with_pair(&cert, &key, up.addr).await;
    let tls = connect(gw.addr, &ca.der, &[b"h2"]).await;
    crate::support::slow_reader_across_the_drain(tls, "https", gw).await;
}

/// At shutdown, an HTTP/2 client downloading a large body slowly (reading
/// its socket at about 1 MB/s and opening its window as it reads) gets all
/// of it. (A drain that closed a connection with no request in flight
/// after a quiet second reset this one, its WINDOW_UPDATEs unread, and the
/// client lost what it had not read yet while the access log said
/// complete: such a close was tried on 2026-12-05 and taken back.)
#[tokio::test]
async fn a_slow_http2_download_is_not_cut_by_the_drain() {
    use crate::support::h2_frame;
    const BYTES: usize = 4 * 1024 * 1024;
    let up = Upstream::start("v1").await;
    let text = crate::support::config("", &[("v1", 1, up.addr)])
        + "\n[timeouts]\nshutdown_grace = \"20s\"\n";
    let gw = Gateway::start(&text).await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    // Then opened again as it is read.
    let mut raw = download_with_large_windows(tcp, "http", BYTES).await;
    let (mut gw, mut stopping) = (Some(gw), None);
    let (mut data, mut ended) = (0, false);
    while let Some(frame) = raw.next_frame().await {
        if frame.kind == h2_frame::HEADERS
            && let Some(gw) = gw.take()
        {
            stopping = Some(tokio::spawn(gw.shutdown()));
        }
        if frame.kind == h2_frame::DATA {
            data += frame.payload.len();
            ended = frame.flags & h2_frame::END_STREAM != 0;
            let taken = (frame.payload.len() as u32).to_be_bytes();
            let _ = raw.send(h2_frame::WINDOW_UPDATE, 0, &taken).await;
            let _ = raw.send_on(1, h2_frame::WINDOW_UPDATE, 0, &taken).await;
            // About 1 MB a second.
            tokio::time::sleep(Duration::from_millis(16)).await;
        }
        if ended {
            break;
        }
    }
    assert_eq!((data, ended), (BYTES, true), "the download was cut");
    // (This client never answers the drain's PING: the shutdown runs to
    // its grace period's end.)
    if let Some(stopping) = stopping {
        stopping.abort();
    }
}

/// A response on a connection that closes after it (`Connection: close`)
/// ends with `close_notify` over TLS: the gateway shuts its write side,
/// which first sends what rustls still holds of the response (dropped
/// unflushed, a response's tail waiting there was lost).
#[tokio::test]
async fn https_responses_before_a_close_end_with_close_notify() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start("v1").await;
    let ca = Ca::new();
    let (cert, key, _) = ca.leaf(&["localhost"]);
    let (gw, _dir) = start_with_pair(&cert, &key, up.addr).await;
    let mut tls = connect(gw.addr, &ca.der, &[b"http/1.1"]).await;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let read = tls.read_to_end(&mut got).await;
    assert!(
        read.is_ok(),
        "{read:?} after {:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(got.ends_with(b"v1"), "{:?}", String::from_utf8_lossy(&got));
    gw.shutdown().await;
}

/// The `x-forwarded-proto` values an upstream's `/headers` answer lists.
fn forwarded_protos(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| l.strip_prefix("x-forwarded-proto: "))
        .collect()
}

/// A request that came over TLS goes upstream with `X-Forwarded-Proto:
/// https` (the client's own value replaced, `trust_forwarded_headers` being
/// off), whichever server and client carry it: over HTTP/1.1 the own server
/// and client, hyper's server after a hand-off (the general rewrite and
/// hyper's client for a body), and HTTP/2 chosen by ALPN.
#[tokio::test]
async fn https_requests_go_upstream_as_forwarded_https() {
    let up = Upstream::start("v1").await;
    let ca = Ca::new();
    let (cert, key, _) = ca.leaf(&["localhost"]);
    let (gw, _dir) = start_with_pair(&cert, &key, up.addr).await;

    let mut s = http1(connect(gw.addr, &ca.der, &[b"http/1.1"]).await).await;
    // The own server, then (Connection naming a field) hyper's from then on.
    let cases = [
        ("GET", None, ""),
        ("GET", Some("x-drop"), ""),
        ("GET", None, ""),
        ("POST", None, "a body"),
    ];
    for (method, connection, body) in cases {
        let mut req = Request::builder()
            .method(method)
            .uri("/headers")
            .header("host", "localhost")
            .header("x-forwarded-proto", "http");
        if let Some(connection) = connection {
            req = req.header("connection", connection).header("x-drop", "1");
        }
        let req = req.body(Full::new(Bytes::from(body))).unwrap();
        let resp = s.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let text = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&text);
        assert_eq!(
            forwarded_protos(&text),
            ["https"],
            "{method} {connection:?}: {text}"
        );
    }

    let mut h2 = http2(connect(gw.addr, &ca.der, &[b"h2"]).await).await;
    for body in ["", "a body"] {
        let req = Request::post("https://localhost/headers")
            .header("x-forwarded-proto", "http")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = h2.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let text = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&text);
        assert_eq!(forwarded_protos(&text), ["https"], "h2 {body:?}: {text}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn rsa_pkcs1_and_ecdsa_sec1_keys_serve() {
    let up = Upstream::start("v1").await;
    let ca = Ca::new();
    for (pkcs8, given) in [
        ("rsa-pkcs8.key.pem", "rsa-pkcs1.key.pem"),
        ("ec-pkcs8.key.pem", "ec-sec1.key.pem"),
        ("ec-pkcs8.key.pem", "ec-pkcs8.key.pem"),
    ] {
        let (cert, der) = ca.leaf_for(&["localhost"], &fixture(pkcs8));
        let (gw, _dir) = start_with_pair(&cert, &fixture(given), up.addr).await;
        let tls = connect(gw.addr, &ca.der, &[b"http/1.1"]).await;
        assert_eq!(peer_cert(&tls), der, "{given}");
        let mut s = http1(tls).await;
        assert_eq!(get1(&mut s, "/").await, (200, "v1".to_string()), "{given}");
        gw.shutdown().await;
    }
}

/// A client that kept its first connection's session resumes it on the
/// next (rustls' default session cache and TLS 1.3 tickets); with
/// `session_resumption = false` every connection is a full handshake.
#[tokio::test]
async fn sessions_resume_unless_turned_off() {
    use rustls::HandshakeKind::{Full, Resumed};
    let up = Upstream::start("v1").await;
    let ca = Ca::new();
    let (cert, key, _) = ca.leaf(&["localhost"]);
    for (setting, second) in [("", Resumed), ("session_resumption = false\n", Full)] {
        let dir = tempfile::tempdir().unwrap();
        write_pair(dir.path(), &cert, &key);
        let config =
            tls_config(dir.path(), up.addr).replace("\n[admin]", &format!("{setting}\n[admin]"));
        let gw = Gateway::start(&config).await;
        let client = client_config(&ca.der, &[b"http/1.1"]);
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let tcp = TcpStream::connect(gw.addr).await.unwrap();
            let tls = handshake(tcp, client.clone()).await;
            kinds.push(tls.get_ref().1.handshake_kind());
            // A response read: the tickets sent after the handshake with it.
            let mut s = http1(tls).await;
            assert_eq!(get1(&mut s, "/").await, (200, "v1".to_string()));
        }
        assert_eq!(kinds, [Some(Full), Some(second)], "setting {setting:?}");
        gw.shutdown().await;
    }
}

/// A client's session still resumes after 150 other clients' full
/// handshakes: tickets carry the session, so the server has no cache for
/// them to push it out of (rustls' default 256-session cache, two entries
/// per handshake, lost it after 128).
#[tokio::test]
async fn a_session_resumes_after_many_other_clients() {
    use rustls::HandshakeKind::{Full, Resumed};
    async fn visit(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> rustls::HandshakeKind {
        let tls = handshake(TcpStream::connect(addr).await.unwrap(), config).await;
        let kind = tls.get_ref().1.handshake_kind().unwrap();
        // A response read: the tickets sent after the handshake with it.
        let mut s = http1(tls).await;
        assert_eq!(get1(&mut s, "/").await, (200, "v1".to_string()));
        kind
    }
    let up = Upstream::start("v1").await;
    let ca = Ca::new();
    let (cert, key, _) = ca.leaf(&["localhost"]);
    let dir = tempfile::tempdir().unwrap();
    write_pair(dir.path(), &cert, &key);
    let gw = Gateway::start(&tls_config(dir.path(), up.addr)).await;
    let kept = client_config(&ca.der, &[b"http/1.1"]);
    let mut others = (*client_config(&ca.der, &[b"http/1.1"])).clone();
    others.resumption = rustls::client::Resumption::disabled();
    let others = Arc::new(others);
    assert_eq!(visit(gw.addr, kept.clone()).await, Full);
    for _ in 0..150 {
        assert_eq!(visit(gw.addr, others.clone()).await, Full);
    }
    assert_eq!(visit(gw.addr, kept).await, Resumed);
    gw.shutdown().await;
}

/// An expired pair written over a valid one (old files put back, a backup
/// restored) is refused: every client that checks the certificate would
/// refuse the connection. The valid pair serves on, the reload says why.
/// Over a pair that is itself expired it is taken (and at start it
/// serves: a restart must not fail over it).
#[tokio::test]
async fn an_expired_pair_is_refused_over_a_valid_one_only() {
    let up = Upstream::start("v1").await;
    let ca = Ca::new();
    let (cert, key, der) = ca.leaf(&["localhost"]);
    let (gw, dir) = start_with_pair(&cert, &key, up.addr).await;
    let (expired, expired_key) = ca.expired_leaf(&["localhost"]);
    write_pair(dir.path(), &expired, &expired_key);
    let reply = admin(gw.admin, "POST", "/reload", None, "").await;
    assert_eq!(reply.status, 422, "{}", reply.text());
    assert!(
        reply
            .text()
            .contains("the certificate expired on Wed, 01 Jan 2020 00:00:00 GMT, and the pair in force is valid"),
        "{}",
        reply.text()
    );
    let tls = connect(gw.addr, &ca.der, &[b"http/1.1"]).await;
    assert_eq!(peer_cert(&tls), der, "the expired pair must not serve");
    gw.shutdown().await;

    let (gw, dir) = start_with_pair(&expired, &expired_key, up.addr).await;
    let loaded = |status: &serde_json::Value| status["tls"]["loaded_at_ms"].as_u64();
    let status: serde_json::Value =
        serde_json::from_str(&admin(gw.admin, "GET", "/status", None, "").await.text()).unwrap();
    let (other, other_key) = ca.expired_leaf(&["localhost"]);
    write_pair(dir.path(), &other, &other_key);
    let before = loaded(&status);
    let reply = admin(gw.admin, "POST", "/reload", None, "").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let status: serde_json::Value =
        serde_json::from_str(&admin(gw.admin, "GET", "/status", None, "").await.text()).unwrap();
    assert!(
        loaded(&status).is_some() && loaded(&status) != before,
        "{status}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn rotation_keeps_open_connections_and_a_bad_pair_is_rejected() {
    let up = Upstream::start("v1").await;
    let ca = Ca::new();
    let (cert1, key1, der1) = ca.leaf(&["localhost"]);
    let (gw, dir) = start_with_pair(&cert1, &key1, up.addr).await;

    let tls = connect(gw.addr, &ca.der, &[b"http/1.1"]).await;
    assert_eq!(peer_cert(&tls), der1);
    let mut kept = http1(tls).await;
    assert_eq!(get1(&mut kept, "/").await.0, 200);
    let tls = connect(gw.addr, &ca.der, &[b"h2"]).await;
    let mut kept2 = http2(tls).await;

    // A new pair on disk: the file watcher swaps it in; new handshakes get it.
    let (cert2, key2, der2) = ca.leaf(&["localhost"]);
    write_pair(dir.path(), &cert2, &key2);
    let addr = gw.addr;
    let ca_der = ca.der.clone();
    assert!(
        eventually(Duration::from_secs(10), async || {
            peer_cert(&connect(addr, &ca_der, &[b"http/1.1"]).await) == der2
        })
        .await,
        "the rotated certificate is not served"
    );
    // The connections opened before the rotation still work.
    assert_eq!(
        get1(&mut kept, "/after-rotation").await,
        (200, "v1".to_string())
    );
    let req = Request::get("https://localhost/")
        .body(Full::<Bytes>::default())
        .unwrap();
    assert_eq!(kept2.send_request(req).await.unwrap().status(), 200);

    // A mismatched pair (cert 1, key 2): POST /reload refuses it, the current
    // pair keeps serving, /status and the metrics say so.
    write_pair(dir.path(), &cert1, &key2);
    let reply = admin(gw.admin, "POST", "/reload", None, "").await;
    assert_eq!(reply.status, 422, "{}", reply.text());
    assert!(reply.text().contains("does not match"), "{}", reply.text());
    let status = admin(gw.admin, "GET", "/status", None, "").await;
    let json: serde_json::Value = serde_json::from_str(&status.text()).unwrap();
    let error = json["tls"]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains("does not match the certificate"), "{json}");
    // The config part of the reload applied (last_reload says so); the
    // warnings say that the pair on disk is not what serves.
    let warned = json["warnings"].as_array().is_some_and(|w| {
        w.iter().any(|w| {
            let w = w.as_str().unwrap_or_default();
            w.contains("TLS certificate pair on disk") && w.contains("does not match")
        })
    });
    assert!(warned, "{json}");
    // The gauge is the process's: the other tests' TLS gateways, started or
    // reloaded meanwhile, set it back to 0 (one gateway per process in
    // production). Each refused reload sets it to 1 again: one of a few
    // reload-and-read rounds sees this gateway's value.
    let mut metrics = String::new();
    for _ in 0..20 {
        metrics = admin(gw.admin, "GET", "/metrics", None, "").await.text();
        if metrics.contains("canary_tls_reload_failing 1") {
            break;
        }
        admin(gw.admin, "POST", "/reload", None, "").await;
    }
    assert!(metrics.contains("canary_tls_reload_failing 1"), "{metrics}");
    assert!(
        metrics.contains("canary_tls_reloads_total{result=\"error\"}"),
        "{metrics}"
    );
    let tls = connect(gw.addr, &ca.der, &[b"http/1.1"]).await;
    assert_eq!(peer_cert(&tls), der2, "the rejected pair must not serve");
    assert_eq!(get1(&mut kept, "/still").await.0, 200);

    // A valid pair again: the error clears.
    let (cert3, key3, der3) = ca.leaf(&["localhost"]);
    write_pair(dir.path(), &cert3, &key3);
    let reply = admin(gw.admin, "POST", "/reload", None, "").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let tls = connect(gw.addr, &ca.der, &[b"http/1.1"]).await;
    assert_eq!(peer_cert(&tls), der3);
    let status = admin(gw.admin, "GET", "/status", None, "").await;
    let json: serde_json::Value = serde_json::from_str(&status.text()).unwrap();
    assert!(json["tls"]["last_error"].is_null(), "{json}");
    assert!(!json["warnings"].to_string().contains("TLS"), "{json}");
    gw.shutdown().await;
}

/// An expired certificate serves (a client that does not check it, as an
/// ALB towards its targets, keeps working; a restart must not fail over
/// it), and /status says it expired until a valid pair replaces it.
#[tokio::test]
async fn an_expired_certificate_serves_and_is_a_warning_until_replaced() {
    let up = Upstream::start("v1").await;
    let ca = Ca::new();
    let (cert, key) = ca.expired_leaf(&["localhost"]);
    let (gw, dir) = start_with_pair(&cert, &key, up.addr).await;
    let status = || async {
        let reply = admin(gw.admin, "GET", "/status", None, "").await;
        serde_json::from_str::<serde_json::Value>(&reply.text()).unwrap()
    };
    let json = status().await;
    assert_eq!(json["tls"]["not_after_ms"], 1_577_836_800_000u64, "{json}");
    let expired = json["warnings"].as_array().is_some_and(|w| {
        w.iter().any(|w| {
            let w = w.as_str().unwrap_or_default();
            w.contains("expired on Wed, 01 Jan 2020") && w.contains("cert.pem")
        })
    });
    assert!(expired, "{json}");
    let metrics = admin(gw.admin, "GET", "/metrics", None, "").await.text();
    assert!(
        metrics.contains("canary_tls_certificate_expiry_timestamp_seconds"),
        "{metrics}"
    );

    let (cert, key, der) = ca.leaf(&["localhost"]);
    write_pair(dir.path(), &cert, &key);
    let reply = admin(gw.admin, "POST", "/reload", None, "").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(peer_cert(&connect(gw.addr, &ca.der, &[b"h2"]).await), der);
    let json = status().await;
    assert!(!json["warnings"].to_string().contains("expired"), "{json}");
    assert!(json["tls"]["not_after_ms"].as_u64() > Some(1_577_836_800_000));
    gw.shutdown().await;
}

#[tokio::test]
async fn a_bad_pair_stops_the_start_with_a_clear_error() {
    let ca = Ca::new();
    let (cert1, _, _) = ca.leaf(&["localhost"]);
    let (_, key2, _) = ca.leaf(&["localhost"]);
    let dir = tempfile::tempdir().unwrap();
    let up: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let cases = [
        (
            cert1.as_str(),
            key2.as_str(),
            "does not match the certificate",
        ),
        (cert1.as_str(), cert1.as_str(), "no private key found"),
        (key2.as_str(), key2.as_str(), "no certificate found"),
    ];
    for (cert, key, expected) in cases {
        write_pair(dir.path(), cert, key);
        let config =
            canary_gateway::config::Config::parse(&tls_config(dir.path(), up), "test").unwrap();
        let listeners = canary_gateway::gateway::Listeners {
            proxy: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            admin: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let e = canary_gateway::gateway::start(config, listeners, Default::default())
            .await
            .err()
            .expect("the start must fail");
        // As the binary prints it (anyhow's `{:#}`: the error and its
        // sources): the reason once, not twice.
        let mut err = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            err.push_str(&format!(": {s}"));
            source = s.source();
        }
        assert!(
            err.contains(expected) && err.contains("listener.tls"),
            "{err}"
        );
        assert_eq!(err.matches(expected).count(), 1, "{err}");
    }
}

/// A body with a length, longer than what the gateway moves in one step.
fn long_body() -> Vec<u8> {
    (0..1_000_003u32).map(|i| (i * 31 % 251) as u8).collect()
}

/// An HTTPS upstream for `names`, answering `secure` (or [`long_body`] at
/// `/long`, and chunked in 8 KiB chunks at `/long-chunked`) and counting
/// its TLS connections.
async fn tls_upstream(ca: &Ca, names: &[&str]) -> (SocketAddr, Arc<AtomicU64>) {
    serve_tls(ca, names, |tls| async move {
        let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
            if req.uri().path() == "/long" {
                return Ok(Response::new(Full::new(Bytes::from(long_body())).boxed()));
            }
            if req.uri().path() == "/long-chunked" {
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                tokio::spawn(async move {
                    let body = Bytes::from(long_body());
                    for at in (0..body.len()).step_by(8192) {
                        let part = body.slice(at..body.len().min(at + 8192));
                        if tx.send(Ok(hyper::body::Frame::data(part))).await.is_err() {
                            return;
                        }
                    }
                });
                let streamed = crate::support::ChannelBody(rx).boxed();
                return Ok(Response::new(streamed));
            }
            let n = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes().len())
                .unwrap_or(0);
            Ok::<_, std::convert::Infallible>(Response::new(
                Full::new(Bytes::from(format!("secure {n}"))).boxed(),
            ))
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tls), service)
            .await;
    })
    .await
}

/// An HTTPS upstream on 127.0.0.1:0 with a certificate for `names`: each
/// connection whose handshake completes is counted and handed to `serve`.
async fn serve_tls<F, Fut>(ca: &Ca, names: &[&str], serve: F) -> (SocketAddr, Arc<AtomicU64>)
where
    F: Fn(tokio_rustls::server::TlsStream<TcpStream>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let acceptor = tls_acceptor(ca, names);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicU64::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, count, serve) = (acceptor.clone(), count.clone(), serve.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                serve(tls).await;
            });
        }
    });
    (addr, connections)
}

/// A TLS acceptor with a certificate for `names` issued by `ca`.
fn tls_acceptor(ca: &Ca, names: &[&str]) -> tokio_rustls::TlsAcceptor {
    let (cert, key, _) = ca.leaf(names);
    let chain = vec![rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

use rustls::pki_types::pem::PemObject;

/// A gateway config whose one version `v1` reaches `endpoints` over TLS,
/// trusting `ca` (written to a file in the returned directory) and checking
/// `server_name`; `sections`: more tables, before `[split]`.
fn tls_upstream_config(
    ca: &Ca,
    endpoints: &[SocketAddr],
    server_name: &str,
    sections: &str,
) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let endpoints: Vec<String> = endpoints.iter().map(|a| format!("\"{a}\"")).collect();
    let text = format!(
        "[listener]\naddress = \"127.0.0.1:0\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n{sections}\n\
         [split]\nstable = \"v1\"\n\n[[versions]]\nname = \"v1\"\nweight = 100\n\
         endpoints = [{}]\ntls = true\nca_file = \"{}\"\nserver_name = \"{server_name}\"\n",
        endpoints.join(", "),
        ca_file.display()
    );
    (dir, text)
}

#[tokio::test]
async fn upstream_tls_verifies_the_upstream_and_reuses_connections() {
    let ca = Ca::new();
    let (addr, connections) = tls_upstream(&ca, &["upstream.test"]).await;
    let config = |server_name: &str| tls_upstream_config(&ca, &[addr], server_name, "");
    let (_dir, text) = config("upstream.test");
    let gw = Gateway::start(&text).await;
    for _ in 0..5 {
        let reply = crate::support::get(gw.addr, "/", &[]).await;
        assert_eq!(
            (reply.status.as_u16(), reply.text()),
            (200, "secure 0".to_string())
        );
    }
    for _ in 0..3 {
        let reply = crate::support::send(gw.addr, "POST", "/upload", &[], "abc".to_string()).await;
        assert_eq!(
            (reply.status.as_u16(), reply.text()),
            (200, "secure 3".to_string())
        );
    }
    // A long body read from TLS and passed on, with a length and chunked:
    // every byte, and the connection is used again.
    for path in ["/long", "/long", "/long-chunked", "/long-chunked"] {
        let reply = crate::support::get(gw.addr, path, &[]).await;
        assert_eq!(reply.status, 200);
        assert!(
            reply.body == long_body(),
            "{path}: the body arrived changed"
        );
    }
    // One connection for the own client (GETs) and one for hyper's (POSTs), reused.
    let opened = connections.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&opened),
        "{opened} TLS connections for 12 requests"
    );
    gw.shutdown().await;

    // A name the certificate does not carry: the handshake fails, 502.
    let (_dir, text) = config("other.test");
    let gw = Gateway::start(&text).await;
    let reply = crate::support::get(gw.addr, "/", &[]).await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    gw.shutdown().await;
}

/// An HTTPS upstream that sends more than its response declares, in the
/// TLS record that ends it: those bytes wait decrypted in rustls, where a
/// peek at the socket does not see them, so the connection must not go
/// back to the pool: the next request gets its own answer, never them.
#[tokio::test]
async fn a_tls_upstream_that_sent_too_much_is_not_reused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = Ca::new();
    let (addr, connections) = serve_tls(&ca, &["upstream.test"], |mut tls| async move {
        let mut buf = Vec::new();
        loop {
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                let mut more = [0u8; 4096];
                match tls.read(&mut more).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&more[..n]),
                }
                continue;
            };
            let head: Vec<u8> = buf.drain(..end + 4).collect();
            let answer = if head.starts_with(b"GET /long ") {
                let mut a = b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n".to_vec();
                a.extend(std::iter::repeat_n(b'l', 100_000));
                a.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstale");
                a
            } else {
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfresh".to_vec()
            };
            if tls.write_all(&answer).await.is_err() {
                return;
            }
        }
    })
    .await;
    let (_dir, text) = tls_upstream_config(&ca, &[addr], "upstream.test", "");
    let gw = Gateway::start(&text).await;
    let reply = crate::support::get(gw.addr, "/long", &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), 100_000);
    for _ in 0..2 {
        let reply = crate::support::get(gw.addr, "/next", &[]).await;
        assert_eq!(
            (reply.status.as_u16(), reply.text()),
            (200, "fresh".to_string())
        );
    }
    // The second connection is the one a clean answer left in the pool.
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    gw.shutdown().await;
}

/// An upstream whose TLS handshake fails (a certificate for another name)
/// is ejected like one that refuses connections: the TCP connect alone is
/// no sign of health.
#[tokio::test]
async fn an_upstream_failing_its_handshake_is_ejected() {
    let ca = Ca::new();
    let (good, _) = tls_upstream(&ca, &["upstream.test"]).await;
    let (bad, _) = tls_upstream(&ca, &["other.test"]).await;
    let sections = "[upstream]\neject_base = \"60s\"\neject_max = \"120s\"\n";
    let (_dir, text) = tls_upstream_config(&ca, &[good, bad], "upstream.test", sections);
    let gw = Gateway::start(&text).await;
    let control = gw.running.as_ref().unwrap().control.clone();
    for i in 0..40 {
        // A fresh client connection each time; a failed handshake is
        // retried on the other endpoint.
        let reply = crate::support::get(gw.addr, "/", &[]).await;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.text());
    }
    let status = control.status();
    let endpoints = &status.versions[0].endpoints;
    let health = |addr: SocketAddr| {
        endpoints
            .iter()
            .find(|e| e.address == addr.to_string())
            .map(|e| e.health)
    };
    assert_eq!(health(bad), Some("ejected"), "{endpoints:?}");
    assert_eq!(health(good), Some("healthy"), "{endpoints:?}");
    gw.shutdown().await;
}

/// `upstream_response` runs from the request's write (configuration.md),
/// not from its arrival: a new upstream connection's slow handshake is
/// `upstream_connect`'s to time, and does not eat the answer's time.
#[tokio::test]
async fn a_slow_upstream_handshake_is_not_the_responses_time() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = Ca::new();
    let acceptor = tls_acceptor(&ca, &["upstream.test"]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // The handshake takes longer than upstream_response; the
                // answer then comes at once.
                tokio::time::sleep(Duration::from_millis(700)).await;
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut more = [0u8; 4096];
                    match tls.read(&mut more).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&more[..n]),
                    }
                }
                let _ = tls
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                let _ = tls.read(&mut [0u8; 16]).await;
            });
        }
    });
    let sections = "[timeouts]\nupstream_connect = \"5s\"\nupstream_response = \"300ms\"\n";
    let (_dir, text) = tls_upstream_config(&ca, &[addr], "upstream.test", sections);
    let gw = Gateway::start(&text).await;
    let reply = crate::support::get(gw.addr, "/", &[]).await;
    assert_eq!(
        (reply.status.as_u16(), reply.text()),
        (200, "ok".to_string())
    );
    gw.shutdown().await;
}

/// How often the SYN of a socket of this network namespace in SYN_SENT
/// towards `port` on 127.0.0.1 was sent again (`/proc/net/tcp`'s
/// `retrnsmt`), if there is one: a connect whose SYN went unanswered.
#[cfg(target_os = "linux")]
fn syn_retransmits_to(port: u16) -> Option<u32> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let remote = format!("0100007F:{port:04X}");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(2) == Some(&remote.as_str()) && fields.get(3) == Some(&"02") {
            u32::from_str_radix(fields.get(6)?, 16).ok()
        } else {
            None
        }
    })
}

/// `upstream_connect` is one deadline over the TCP connect and the TLS
/// handshake (configuration.md), not a timeout for each: a TCP connect that
/// took most of it leaves the handshake the rest. The upstream's accept
/// queue is full, so the gateway's SYN is dropped; the queue is emptied
/// once Linux has sent it again once (1 s), so the connect completes at a
/// later retransmission (about 2 s in); the upstream then never answers
/// the handshake. With one deadline of 4 s the 502 comes at 4 s; with a
/// timeout per step it came at about 2 s + 4 s.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn upstream_connect_bounds_the_tcp_connect_and_the_handshake_together() {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    // Backlog 1: Linux queues two connections, then drops SYNs.
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let _fillers = (
        TcpStream::connect(addr).await.unwrap(),
        TcpStream::connect(addr).await.unwrap(),
    );
    let ca = Ca::new();
    let connect = Duration::from_secs(4);
    let sections = format!(
        "[timeouts]\nupstream_connect = \"{}ms\"\n",
        connect.as_millis()
    );
    let (_dir, text) = tls_upstream_config(&ca, &[addr], "upstream.test", &sections);
    let gw = Gateway::start(&text).await;
    let started = std::time::Instant::now();
    let request = tokio::spawn(crate::support::get(gw.addr, "/", &[]));
    // The gateway's SYN was dropped, and dropped again: the queue is
    // emptied for its next one.
    assert!(
        eventually(Duration::from_secs(5), async || {
            syn_retransmits_to(addr.port()).is_some_and(|n| n >= 1)
        })
        .await,
        "the gateway never tried to connect again"
    );
    let mut accepted = Vec::new();
    for _ in 0..2 {
        accepted.push(listener.accept().await.unwrap().0);
    }
    // The gateway's connection, at its SYN's second retransmission: held,
    // the handshake never answered.
    let (gateway_side, _) = tokio::time::timeout(connect, listener.accept())
        .await
        .expect("the TCP connect did not complete within upstream_connect")
        .unwrap();
    let reply = request.await.unwrap();
    let took = started.elapsed();
    assert_eq!(reply.status, 502, "{}", reply.text());
    // 4 s with one deadline, 6 s with a timeout per step.
    assert!(
        took < connect + Duration::from_secs(1),
        "the connect took {took:?} with upstream_connect = {connect:?}"
    );
    drop((gateway_side, accepted));
    gw.shutdown().await;
}

#[test]
fn upstream_tls_keys_are_checked() {
    let base = "[listener]\naddress = \"127.0.0.1:0\"\n[split]\nstable = \"v1\"\n[[versions]]\nname = \"v1\"\nweight = 1\nendpoints = [\"127.0.0.1:1\"]\n";
    let err = canary_gateway::config::Config::parse(&format!("{base}ca_file = \"x.pem\"\n"), "t")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("versions[0].ca_file") && err.contains("tls = true"),
        "{err}"
    );
    let err = canary_gateway::config::Config::parse(
        &format!("{base}tls = true\nca_file = \"/nonexistent/ca.pem\"\n"),
        "t",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("versions[0].ca_file") && err.contains("/nonexistent/ca.pem"),
        "{err}"
    );
}

#[tokio::test]
async fn turning_upstream_tls_on_needs_a_restart() {
    let up = Upstream::start("v1").await;
    let ca = Ca::new();
    let text = crate::support::config("", &[("v1", 100, up.addr)]);
    let gw = Gateway::start(&text).await;
    assert_eq!(crate::support::get(gw.addr, "/", &[]).await.text(), "v1");
    let ca_file = gw.dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let edited = format!("{text}tls = true\nca_file = \"{}\"\n", ca_file.display());
    std::fs::write(gw.config_path(), edited).unwrap();
    let reply = admin(gw.admin, "POST", "/reload", None, "").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(reply.text().contains("versions.tls"), "{}", reply.text());
    // Still plain: the pooled and new connections agree with the running setting.
    for _ in 0..3 {
        assert_eq!(crate::support::get(gw.addr, "/", &[]).await.text(), "v1");
    }
    gw.shutdown().await;
}

/// Reads one request (head, then a body of its Content-Length) from an
/// upstream's TLS connection; `false` once the connection ended first.
async fn read_tls_request(
    tls: &mut tokio_rustls::server::TlsStream<TcpStream>,
    buf: &mut Vec<u8>,
) -> bool {
    use tokio::io::AsyncReadExt;
    let mut wanted = None;
    loop {
        if wanted.is_none()
            && let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n")
        {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            wanted = Some(end + 4 + length);
        }
        if let Some(n) = wanted
            && buf.len() >= n
        {
            buf.drain(..n);
            return true;
        }
        let mut more = [0u8; 4096];
        match tls.read(&mut more).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&more[..n]),
        }
    }
}

/// An HTTPS upstream that answers the first request of each connection and
/// hangs up on the next one once it has read it whole, without answering:
/// the keep-alive race (an upstream closing an idle connection just as a
/// request goes out on it), made certain. With `close_notify` it closes
/// TLS first; without, it closes the TCP connection alone (a FIN and no
/// alert), as Python's ssl module (gunicorn) and many other servers do.
/// Counts the connections it accepted.
async fn tls_upstream_hanging_up(ca: &Ca, close_notify: bool) -> (SocketAddr, Arc<AtomicU64>) {
    use tokio::io::AsyncWriteExt;
    serve_tls(ca, &["upstream.test"], move |mut tls| async move {
        let mut buf = Vec::new();
        if !read_tls_request(&mut tls, &mut buf).await {
            return;
        }
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        if tls.write_all(ok).await.is_err() || tls.flush().await.is_err() {
            return;
        }
        if !read_tls_request(&mut tls, &mut buf).await {
            return;
        }
        if close_notify {
            let _ = tls.shutdown().await;
        } else {
            // The socket under the session: its FIN goes out with
            // no TLS alert before it. Everything sent was read, so
            // the close is a FIN, not a reset.
            let (mut tcp, _) = tls.into_inner();
            let _ = tcp.shutdown().await;
        }
    })
    .await
}

/// A TLS upstream that closes an idle keep-alive connection with a bare
/// TCP close (no `close_notify`: rustls reports it as an unexpected EOF,
/// not as the end of the stream) is retried like a plain TCP close: the
/// request that took that pooled connection goes out again on a new one
/// when that is safe, and the client sees no error, nor do the version's
/// metrics (a 5xx there feeds the rollout's error rate).
#[tokio::test]
async fn a_tls_upstream_closing_without_close_notify_is_retried_like_a_plain_close() {
    use crate::support::{Client, h2c_client, metric_value, request};
    use http_body_util::Empty;
    let ca = Ca::new();
    // Metrics are the process's: each case counts under a version of its own.
    for (close_notify, version) in [(false, "bare-close"), (true, "close-notify")] {
        let (addr, connections) = tls_upstream_hanging_up(&ca, close_notify).await;
        let (_dir, text) = tls_upstream_config(&ca, &[addr], "upstream.test", "");
        let text = text.replace("\"v1\"", &format!("\"{version}\""));
        let gw = Gateway::start(&text).await;
        let mut client = Client::connect(gw.addr).await;
        let h2 = h2c_client(gw.addr).await;
        // What each request got, as "METHOD status body". Three of each in
        // a row: whatever the outcome of the one before, one of them at
        // least takes a pooled connection the upstream then drops.
        let mut answers = Vec::new();
        // Bodiless requests; a PUT whose body came with its head (the
        // upload path: the body can be sent again); an HTTP/2 client's
        // GET (its response head is read sized).
        for method in ["GET", "DELETE", "PUT", "h2 GET"] {
            for _ in 0..3 {
                let (status, body) = if method == "h2 GET" {
                    let req = Request::get(format!("http://{}/", gw.addr))
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    let resp = h2.clone().send_request(req).await.unwrap();
                    let status = resp.status();
                    (status, resp.into_body().collect().await.unwrap().to_bytes())
                } else {
                    let body = if method == "PUT" { "abc" } else { "" };
                    let reply = client.send(request(gw.addr, method, "/", &[], body));
                    let reply = reply.await.unwrap();
                    (reply.status, reply.body)
                };
                let body = String::from_utf8_lossy(&body);
                answers.push(format!("{method} {} {}", status.as_u16(), body.trim_end()));
            }
        }
        let expected: Vec<String> = ["GET", "DELETE", "PUT", "h2 GET"]
            .iter()
            .flat_map(|what| std::iter::repeat_n(format!("{what} 200 ok"), 3))
            .collect();
        assert_eq!(answers, expected, "close_notify {close_notify}");
        let sent = answers.len() as u64;
        // Every request but the first found the pooled connection dropped
        // and went out again on a new one.
        assert_eq!(connections.load(Ordering::SeqCst), sent);
        let metrics = async || admin(gw.admin, "GET", "/metrics", None, "").await.text();
        let ok = [("version", version), ("status", "2xx")];
        let counted = eventually(Duration::from_secs(5), async || {
            metric_value(&metrics().await, "canary_requests_total", &ok) == sent as f64
        })
        .await;
        let text = metrics().await;
        assert!(counted, "close_notify {close_notify}: {text}");
        let five = [("version", version), ("status", "5xx")];
        let errors = [("version", version)];
        assert_eq!(
            (
                metric_value(&text, "canary_requests_total", &five),
                metric_value(&text, "canary_upstream_errors_total", &errors),
            ),
            (0.0, 0.0),
            "close_notify {close_notify}: {text}"
        );
        // A POST may have been processed before the connection dropped:
        // never sent twice, as over plain TCP.
        let reply = client
            .send(request(gw.addr, "POST", "/", &[], ""))
            .await
            .unwrap();
        assert_eq!(reply.status, 502, "close_notify {close_notify}");
        assert_eq!(reply.header("x-canary-error"), Some("upstream-reset"));
        assert_eq!(connections.load(Ordering::SeqCst), sent);
        gw.shutdown().await;
    }
}

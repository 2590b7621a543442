//! Allocations per proxied request, counted by a bench-only global allocator
//! (issue #15's "allocation per request" lever).
//!
//! The gateway runs in this process (`gateway::start` on 127.0.0.1:0, one
//! current-thread runtime, as with `worker_threads = 1`), in front of a raw
//! upstream thread; a client thread sends requests of each load-benchmark
//! shape on one keep-alive connection. Client and upstream use fixed,
//! preallocated buffers and allocate nothing per request (the `direct` line
//! checks that: the client straight to the upstream), so every allocation
//! counted while requests flow is the gateway's: its data path plus its
//! background upkeep (once a second), spread over the requests.
//!
//! Run: `cargo bench --bench allocs` (LOAD_ALLOC_REQUESTS, default 20000,
//! requests per shape after 2000 of warm-up).

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};

use canary_gateway::config::Config;
use canary_gateway::gateway::{self, Dependencies, Listeners};

/// The system allocator, counting calls and bytes.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static REALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to `System`; the counters are
// plain atomics and never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        REALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(
            new_size.saturating_sub(layout.size()) as u64,
            Ordering::Relaxed,
        );
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn counters() -> (u64, u64, u64) {
    (
        ALLOCS.load(Ordering::Relaxed),
        REALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    )
}

const ALB_HEADERS: &str = "X-Forwarded-For: 203.0.113.195, 198.51.100.17\r\n\
X-Forwarded-Proto: https\r\nX-Forwarded-Port: 443\r\n\
X-Amzn-Trace-Id: Root=1-674c8f1a-3f2b9c0d7e6a5b4c3d2e1f0a;Parent=53995c3f42cd8ad8;Sampled=1\r\n\
User-Agent: Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\n\
Accept: application/json, text/plain, */*\r\nAccept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-GB,en;q=0.9,de;q=0.8\r\n\
Cookie: session=9f8e7d6c5b4a39281706f5e4d3c2b1a0; _ga=GA1.1.1234567890.1732900000; \
_ga_ABC123XYZ=GS1.1.1733000000.4.1.1733000100.0.0.0; csrftoken=Xq7pL2mN9vB4cT6yR1wE8uI3oP5aS0dF; lang=en-GB\r\n\
Connection: keep-alive\r\n";

/// A request shape of the load benchmark: the path tells the upstream
/// which response to send.
struct Shape {
    name: &'static str,
    path: &'static str,
    alb: bool,
    upload: usize,
    /// The upload goes chunked in chunks of this many bytes (0: with a
    /// Content-Length).
    upload_chunk: usize,
}

const SHAPES: [Shape; 8] = [
    Shape {
        name: "scenario 1: small GET, 100 B response",
        path: "/small",
        alb: false,
        upload: 0,
        upload_chunk: 0,
    },
    Shape {
        name: "scenario 2: ALB GET, 1 KB response",
        path: "/json",
        alb: true,
        upload: 0,
        upload_chunk: 0,
    },
    Shape {
        name: "scenario 3: ALB POST 16 KiB, 1 KB response",
        path: "/json",
        alb: true,
        upload: 16 * 1024,
        upload_chunk: 0,
    },
    Shape {
        name: "ALB POST 1 KiB chunked, 1 KB response",
        path: "/json",
        alb: true,
        upload: 1024,
        upload_chunk: 1024,
    },
    Shape {
        name: "ALB POST 256 KiB chunked by 16 KiB",
        path: "/json",
        alb: true,
        upload: 256 * 1024,
        upload_chunk: 16 * 1024,
    },
    Shape {
        name: "scenario 4: ALB GET, 256 KiB response",
        path: "/big",
        alb: true,
        upload: 0,
        upload_chunk: 0,
    },
    Shape {
        name: "ALB GET, 1 KB chunked response (one chunk)",
        path: "/chunked",
        alb: true,
        upload: 0,
        upload_chunk: 0,
    },
    Shape {
        name: "ALB GET, 256 KiB chunked in 8 KiB chunks",
        path: "/long-chunked",
        alb: true,
        upload: 0,
        upload_chunk: 0,
    },
];

fn request_bytes(shape: &Shape, host: SocketAddr) -> Vec<u8> {
    let method = if shape.upload > 0 { "POST" } else { "GET" };
    let mut r = format!("{method} {} HTTP/1.1\r\nHost: {host}\r\n", shape.path);
    if shape.alb {
        r.push_str(ALB_HEADERS);
    }
    if shape.upload_chunk > 0 {
        r.push_str("Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
    } else if shape.upload > 0 {
        r.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            shape.upload
        ));
    } else {
        r.push_str("\r\n");
    }
    let mut bytes = r.into_bytes();
    if shape.upload_chunk == 0 {
        bytes.resize(bytes.len() + shape.upload, b'x');
        return bytes;
    }
    for _ in 0..shape.upload / shape.upload_chunk {
        bytes.extend_from_slice(format!("{:x}\r\n", shape.upload_chunk).as_bytes());
        bytes.resize(bytes.len() + shape.upload_chunk, b'x');
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"0\r\n\r\n");
    bytes
}

/// A service's response with a `body_len` body: with a Content-Length, or
/// chunked in chunks of `chunk` bytes.
fn response_bytes(body_len: usize, chunk: Option<usize>) -> Vec<u8> {
    let framing = match chunk {
        Some(_) => "Transfer-Encoding: chunked".to_string(),
        None => format!("Content-Length: {body_len}"),
    };
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nServer: orders-service/2.14.3\r\n\
         Date: Tue, 01 Dec 2026 23:00:00 GMT\r\nContent-Type: application/json\r\n\
         {framing}\r\nConnection: keep-alive\r\n\
         Cache-Control: no-store, max-age=0\r\nVary: Accept-Encoding, Origin\r\n\
         X-Version: v1\r\nX-Request-Id: 5f0c6a2e-8d4b-4c1f-9e3a-7b2d1c0e9f8a\r\n\
         Set-Cookie: session=9f8e7d6c5b4a39281706f5e4d3c2b1a0; Path=/; Max-Age=3600; Secure; HttpOnly; SameSite=Lax\r\n\
         Strict-Transport-Security: max-age=31536000; includeSubDomains\r\n\r\n"
    )
    .into_bytes();
    let Some(chunk) = chunk else {
        r.resize(r.len() + body_len, b'x');
        return r;
    };
    let mut left = body_len;
    while left > 0 {
        let n = left.min(chunk);
        r.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        r.resize(r.len() + n, b'x');
        r.extend_from_slice(b"\r\n");
        left -= n;
    }
    r.extend_from_slice(b"0\r\n\r\n");
    r
}

/// Whether a head says its body is chunked, without allocating.
fn chunked(head: &[u8]) -> bool {
    head.split(|b| *b == b'\n').any(|line| {
        line.iter().position(|b| *b == b':').is_some_and(|colon| {
            line[..colon].eq_ignore_ascii_case(b"transfer-encoding")
                && line[colon + 1..]
                    .windows(7)
                    .any(|w| w.eq_ignore_ascii_case(b"chunked"))
        })
    })
}

/// Reads the rest of a chunked body (its bytes are `x`, so the last chunk
/// is the only place "0\r\n\r\n" appears); `read` is what came with the
/// head.
fn skip_chunked(stream: &mut TcpStream, buf: &mut [u8], read: usize) -> Option<()> {
    let mut tail = [0u8; 5];
    let mut push = |bytes: &[u8]| {
        for b in bytes {
            tail.copy_within(1.., 0);
            tail[4] = *b;
        }
        &tail == b"0\r\n\r\n"
    };
    let mut done = push(&buf[..read]);
    while !done {
        let n = stream.read(buf).ok()?;
        if n == 0 {
            return None;
        }
        done = push(&buf[..n]);
    }
    Some(())
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Content-Length of a head, without allocating.
fn content_length(head: &[u8]) -> usize {
    for line in head.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        if line[..colon].eq_ignore_ascii_case(b"content-length") {
            return line[colon + 1..]
                .iter()
                .filter(|b| b.is_ascii_digit())
                .fold(0usize, |n, b| n * 10 + usize::from(b - b'0'));
        }
    }
    0
}

/// Reads one message (head + Content-Length body) into `buf`, which keeps
/// any bytes of the next message; returns the head (path) selector byte.
fn read_message(stream: &mut TcpStream, buf: &mut [u8], filled: &mut usize) -> Option<u8> {
    loop {
        if let Some(end) = find_head_end(&buf[..*filled]) {
            if chunked(&buf[..end]) {
                // A response, or a chunked upload (the client sends one
                // request at a time).
                let kind = selector(&buf[..end]);
                buf.copy_within(end..*filled, 0);
                skip_chunked(stream, buf, *filled - end)?;
                *filled = 0;
                return Some(kind);
            }
            let total = end + content_length(&buf[..end]);
            while *filled < total {
                if *filled == buf.len() {
                    // Drop what is read of a long body, keep reading.
                    let head_kind = selector(&buf[..end]);
                    let mut left = total - *filled;
                    while left > 0 {
                        let chunk = left.min(buf.len());
                        let n = stream.read(&mut buf[..chunk]).ok()?;
                        if n == 0 {
                            return None;
                        }
                        left -= n;
                    }
                    *filled = 0;
                    return Some(head_kind);
                }
                let n = stream.read(&mut buf[*filled..]).ok()?;
                if n == 0 {
                    return None;
                }
                *filled += n;
            }
            let kind = selector(&buf[..end]);
            buf.copy_within(total..*filled, 0);
            *filled -= total;
            return Some(kind);
        }
        if *filled == buf.len() {
            return None;
        }
        let n = stream.read(&mut buf[*filled..]).ok()?;
        if n == 0 {
            return None;
        }
        *filled += n;
    }
}

/// The first letter of the request path (`s`mall, `j`son, `b`ig,
/// `c`hunked, `l`ong-chunked), or the
/// status line's `H` for a response.
fn selector(head: &[u8]) -> u8 {
    match head.iter().position(|b| *b == b'/') {
        Some(_) if head.starts_with(b"HTTP/") => head[0],
        Some(i) => head.get(i + 1).copied().unwrap_or(b's'),
        None => b's',
    }
}

/// The raw upstream: answers `/small` with 100 bytes, `/json` with 1 KB,
/// `/big` with 256 KiB, `/chunked` with 1 KB in one chunk and
/// `/long-chunked` with 256 KiB in 8 KiB chunks, from prebuilt responses.
fn upstream(listener: TcpListener) {
    let answers = std::sync::Arc::new([
        response_bytes(100, None),
        response_bytes(1024, None),
        response_bytes(256 * 1024, None),
        response_bytes(1024, Some(8192)),
        response_bytes(256 * 1024, Some(8192)),
    ]);
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let answers = answers.clone();
        std::thread::spawn(move || {
            let _ = stream.set_nodelay(true);
            let mut buf = vec![0u8; 64 * 1024];
            let mut filled = 0;
            while let Some(kind) = read_message(&mut stream, &mut buf, &mut filled) {
                let [small, json, big, chunked, long_chunked] = &*answers;
                let r = match kind {
                    b'j' => json,
                    b'b' => big,
                    b'c' => chunked,
                    b'l' => long_chunked,
                    _ => small,
                };
                if stream.write_all(r).is_err() {
                    return;
                }
            }
        });
    }
}

/// Sends `n` requests on one connection; panics on a broken exchange.
fn client(stream: &mut TcpStream, request: &[u8], n: usize, buf: &mut [u8]) {
    let mut filled = 0;
    for _ in 0..n {
        stream.write_all(request).expect("client write");
        read_message(stream, buf, &mut filled).expect("client read");
    }
}

/// Allocations, reallocations and bytes per request for `n` requests.
fn measure(addr: SocketAddr, shape: &Shape, n: usize) -> (f64, f64, f64) {
    let request = request_bytes(shape, addr);
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut buf = vec![0u8; 64 * 1024];
    client(&mut stream, &request, 2000, &mut buf);
    let (a0, r0, b0) = counters();
    client(&mut stream, &request, n, &mut buf);
    let (a1, r1, b1) = counters();
    let per = |x: u64| x as f64 / n as f64;
    (per(a1 - a0), per(r1 - r0), per(b1 - b0))
}

fn main() {
    // `cargo bench` passes `--bench`; this bench takes no arguments.
    let n: usize = std::env::var("LOAD_ALLOC_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(20_000);
    let up = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let up_addr = up.local_addr().expect("upstream addr");
    std::thread::spawn(move || upstream(up));

    let state = tempfile::tempdir().expect("temp dir");
    let config = format!(
        "[listener]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
         [state]\npath = \"{}\"\n[split]\nstable = \"v1\"\nresponse_header = \"x-canary-version\"\n\
         [[versions]]\nname = \"v1\"\nweight = 90\nendpoints = [\"{up_addr}\"]\n\
         [[versions]]\nname = \"v2\"\nweight = 10\nendpoints = [\"{up_addr}\"]\n",
        state.path().join("state.json").display()
    );
    let config = Config::parse(&config, "allocs bench").expect("bench config");
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listeners = Listeners::bind(&config).await.expect("bind gateway");
            let running = gateway::start(config, listeners, Dependencies::default())
                .await
                .expect("start gateway");
            addr_tx.send(running.proxy_addr).expect("send addr");
            std::future::pending::<()>().await;
        });
    });
    let gw_addr = addr_rx.recv().expect("gateway address");

    println!("allocations per request ({n} requests per line, one keep-alive connection)");
    println!(
        "  {:<44} {:>8} {:>12} {:>8} {:>12} {:>12}",
        "shape", "direct", "gateway", "reallocs", "bytes/req", "direct B/req"
    );
    for shape in &SHAPES {
        let (da, _, db) = measure(up_addr, shape, n);
        let (ga, gr, gb) = measure(gw_addr, shape, n);
        println!(
            "  {:<44} {:>8.2} {:>12.2} {:>8.2} {:>12.0} {:>12.0}",
            shape.name, da, ga, gr, gb, db
        );
        if da > 0.01 {
            println!(
                "    note: the client or upstream allocated: the gateway column includes that"
            );
        }
    }
}

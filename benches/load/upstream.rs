//! The raw upstream server (runs in a child process of the benchmark): one
//! listener per version, every request answered with a fixed response of
//! the scenario's shape (`--response small|service:<bytes>`, or
//! `chunked:<bytes>:<chunk>` for hand-run comparisons).
//!
//! A request carrying `x-bench-probe` is recorded (its head as it arrived and
//! the body bytes read); `GET /__recorded` answers with the last record, so
//! the shape probe can see what a proxy really forwards.

use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::UPSTREAM_BODY_LEN;
use crate::scenarios::{ResponseShape, json_body};

/// The path that answers with the last recorded probe request.
pub const RECORDED_PATH: &str = "/__recorded";
/// The request header that asks the upstream to record a request.
pub const PROBE_HEADER: &str = "x-bench-probe";

pub fn upstream_body(name: &str) -> Bytes {
    let mut s = format!("{name} says hello from the canary-gateway load benchmark upstream");
    while s.len() < UPSTREAM_BODY_LEN - 1 {
        s.push('.');
    }
    s.truncate(UPSTREAM_BODY_LEN - 1);
    s.push('\n');
    Bytes::from(s)
}

/// The last probe request one listener saw: head bytes and body length.
type Record = Arc<Mutex<Option<(Vec<u8>, usize)>>>;

pub fn run_upstream(names: &str, shape: ResponseShape) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut listeners = Vec::new();
        for name in names.split(',') {
            // The gateway's backlog: a proxy opening a few hundred upstream
            // connections at once gets none of its SYNs dropped (tokio's
            // 128 made some wait a second, into every proxy's p99).
            let listener = canary_gateway::gateway::listen(([127, 0, 0, 1], 0).into())?;
            let port = listener.local_addr()?.port();
            let mut out = std::io::stdout().lock();
            writeln!(out, "PORT {port}")?;
            out.flush()?;
            listeners.push((Arc::<str>::from(name), listener));
        }
        // Exit when the benchmark goes away (stdin closes).
        tokio::spawn(async {
            let mut stdin = tokio::io::stdin();
            let mut buf = [0u8; 64];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => std::process::exit(0),
                    Ok(_) => {}
                }
            }
        });
        let mut accepting = Vec::new();
        for (name, listener) in listeners {
            accepting.push(tokio::spawn(accept_loop(listener, name, shape)));
        }
        for task in accepting {
            task.await?;
        }
        Ok(())
    })
}

pub async fn accept_loop(listener: tokio::net::TcpListener, name: Arc<str>, shape: ResponseShape) {
    let record: Record = Arc::default();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(_) => {
                // e.g. EMFILE: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_fixed(stream, name.clone(), shape, record.clone()));
    }
}

/// What the upstream needs from a request head.
#[derive(Default)]
struct HeadInfo {
    content_length: usize,
    probe: bool,
    recorded: bool,
}

fn head_info(head: &[u8]) -> HeadInfo {
    let mut info = HeadInfo {
        recorded: head.starts_with(format!("GET {RECORDED_PATH} ").as_bytes()),
        ..HeadInfo::default()
    };
    for line in head.split(|b| *b == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            info.content_length = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
        } else if name.eq_ignore_ascii_case(PROBE_HEADER.as_bytes()) {
            info.probe = true;
        }
    }
    info
}

/// Answers every request on `stream` with the upstream's fixed response,
/// after reading the request's body (Content-Length framing), pipelined
/// ones in one write. A raw loop rather than an HTTP server: the upstreams
/// share core 0 with wrk, and every cycle they spend there is one the load
/// generator lacks; the proxy under test must be what limits a run.
pub async fn serve_fixed(
    mut stream: TcpStream,
    name: Arc<str>,
    shape: ResponseShape,
    record: Record,
) {
    let mut response = FixedResponse::new(name, shape);
    let mut buf = Vec::with_capacity(4096);
    let mut out = Vec::new();
    // Body bytes of the current request still to read, and whether its
    // head (kept in `probe_head`) is to be recorded.
    let mut body_left = 0usize;
    let mut body_len = 0usize;
    let mut probe_head: Option<Vec<u8>> = None;
    loop {
        buf.reserve(4096);
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut used = 0;
        let mut answers = 0usize;
        loop {
            if body_left > 0 {
                let take = body_left.min(buf.len() - used);
                used += take;
                body_left -= take;
                if body_left > 0 {
                    break;
                }
                if let Some(head) = probe_head.take() {
                    store(&record, head, body_len);
                }
                answers += 1;
                continue;
            }
            let Some(end) = buf[used..].windows(4).position(|w| w == b"\r\n\r\n") else {
                break;
            };
            let head = &buf[used..used + end + 4];
            used += end + 4;
            let info = head_info(head);
            if info.recorded {
                flush_answers(&mut response, &mut out, &mut answers);
                recorded_answer(&record, &mut out);
                continue;
            }
            if info.probe {
                probe_head = Some(head.to_vec());
            }
            body_len = info.content_length;
            body_left = info.content_length;
            if body_left == 0 {
                if let Some(head) = probe_head.take() {
                    store(&record, head, 0);
                }
                answers += 1;
            }
        }
        buf.drain(..used);
        let written = if out.is_empty() && answers == 1 {
            // The usual case: one answer, written from the prepared bytes.
            response.refresh();
            stream.write_all(&response.bytes).await
        } else {
            flush_answers(&mut response, &mut out, &mut answers);
            stream.write_all(&out).await
        };
        if written.is_err() {
            return;
        }
        out.clear();
    }
}

fn flush_answers(response: &mut FixedResponse, out: &mut Vec<u8>, answers: &mut usize) {
    for _ in 0..*answers {
        response.append_to(out);
    }
    *answers = 0;
}

fn store(record: &Record, head: Vec<u8>, body_len: usize) {
    if let Ok(mut r) = record.lock() {
        *r = Some((head, body_len));
    }
}

/// `200` with `<head bytes> <body bytes>\n<head>` of the last probe request
/// (and forgets it), or `404` when there is none.
fn recorded_answer(record: &Record, out: &mut Vec<u8>) {
    let last = record.lock().ok().and_then(|mut r| r.take());
    let (status, body) = match last {
        Some((head, body_len)) => {
            let mut b = format!("{} {body_len}\n", head.len()).into_bytes();
            b.extend_from_slice(&head);
            ("200 OK", b)
        }
        None => ("404 Not Found", Vec::new()),
    };
    let _ = write!(
        out,
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    out.extend_from_slice(&body);
}

/// The upstream's response of its shape, with a Date as an origin server
/// sends it; made again when the second changes.
pub struct FixedResponse {
    pub name: Arc<str>,
    pub shape: ResponseShape,
    pub second: u64,
    pub bytes: Vec<u8>,
}

impl FixedResponse {
    pub fn new(name: Arc<str>, shape: ResponseShape) -> FixedResponse {
        FixedResponse {
            name,
            shape,
            second: u64::MAX,
            bytes: Vec::new(),
        }
    }

    pub fn refresh(&mut self) {
        let now = std::time::SystemTime::now();
        let second = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if second != self.second {
            self.second = second;
            self.bytes = response_bytes(&self.name, self.shape, &httpdate::fmt_http_date(now));
        }
    }

    pub fn append_to(&mut self, out: &mut Vec<u8>) {
        self.refresh();
        out.extend_from_slice(&self.bytes);
    }
}

/// The whole response of `shape` from version `name`.
pub fn response_bytes(name: &str, shape: ResponseShape, date: &str) -> Vec<u8> {
    match shape {
        ResponseShape::Small => {
            let body = upstream_body(name);
            let mut b = format!(
                "HTTP/1.1 200 OK\r\nx-version: {name}\r\ncontent-type: text/plain\r\n\
                 content-length: {}\r\ndate: {date}\r\n\r\n",
                body.len(),
            )
            .into_bytes();
            b.extend_from_slice(&body);
            b
        }
        ResponseShape::Service(len) => {
            let body = json_body(name, len);
            let mut b = format!(
                "HTTP/1.1 200 OK\r\n{}\r\n",
                service_headers(name, len, date)
            )
            .into_bytes();
            b.extend_from_slice(body.as_bytes());
            b
        }
        ResponseShape::Chunked { len, chunk } => {
            let fields = service_headers(name, len, date).replace(
                &format!("Content-Length: {len}\r\n"),
                "Transfer-Encoding: chunked\r\n",
            );
            let mut b = format!("HTTP/1.1 200 OK\r\n{fields}\r\n").into_bytes();
            for part in json_body(name, len).as_bytes().chunks(chunk) {
                b.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                b.extend_from_slice(part);
                b.extend_from_slice(b"\r\n");
            }
            b.extend_from_slice(b"0\r\n\r\n");
            b
        }
    }
}

/// The eleven header lines a service answers with (each ending in CRLF).
pub fn service_headers(name: &str, body_len: usize, date: &str) -> String {
    format!(
        "Server: orders-service/2.14.3\r\n\
         Date: {date}\r\n\
         Content-Type: application/json\r\n\
         Content-Length: {body_len}\r\n\
         Connection: keep-alive\r\n\
         Cache-Control: no-store, max-age=0\r\n\
         Vary: Accept-Encoding, Origin\r\n\
         X-Version: {name}\r\n\
         X-Request-Id: 5f0c6a2e-8d4b-4c1f-9e3a-7b2d1c0e9f8a\r\n\
         Set-Cookie: {SET_COOKIE}\r\n\
         Strict-Transport-Security: max-age=31536000; includeSubDomains\r\n"
    )
}

/// The Set-Cookie of the service responses (the nginx upstream sends the same).
pub const SET_COOKIE: &str = "session=9f8e7d6c5b4a39281706f5e4d3c2b1a0; Path=/; Max-Age=3600; \
                              Secure; HttpOnly; SameSite=Lax";

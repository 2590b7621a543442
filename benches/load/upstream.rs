//! The raw upstream server (runs in a child process of the benchmark): a
//! fixed ~100-byte answer naming the version, on every listener.

use std::io::Write as _;
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::UPSTREAM_BODY_LEN;

pub fn upstream_body(name: &str) -> Bytes {
    let mut s = format!("{name} says hello from the canary-gateway load benchmark upstream");
    while s.len() < UPSTREAM_BODY_LEN - 1 {
        s.push('.');
    }
    s.truncate(UPSTREAM_BODY_LEN - 1);
    s.push('\n');
    Bytes::from(s)
}

pub fn run_upstream(names: &str) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut listeners = Vec::new();
        for name in names.split(',') {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let port = listener.local_addr()?.port();
            let mut out = std::io::stdout().lock();
            writeln!(out, "PORT {port}")?;
            out.flush()?;
            listeners.push((std::sync::Arc::<str>::from(name), listener));
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
            accepting.push(tokio::spawn(accept_loop(listener, name)));
        }
        for task in accepting {
            task.await?;
        }
        Ok(())
    })
}

pub async fn accept_loop(listener: tokio::net::TcpListener, name: std::sync::Arc<str>) {
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
        tokio::spawn(serve_fixed(stream, name.clone()));
    }
}

/// Answers every request head on `stream` with the upstream's fixed
/// response (the benchmark's requests carry no body), pipelined ones in one
/// write. A raw loop rather than an HTTP server: the upstreams share core 0
/// with wrk, and every cycle they spend there is one the load generator
/// lacks; the proxy under test must be what limits a run.
pub async fn serve_fixed(mut stream: TcpStream, name: std::sync::Arc<str>) {
    use tokio::io::AsyncWriteExt;
    let mut response = FixedResponse::new(name);
    let mut buf = Vec::with_capacity(4096);
    let mut out = Vec::new();
    loop {
        buf.reserve(4096);
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut used = 0;
        while let Some(end) = buf[used..].windows(4).position(|w| w == b"\r\n\r\n") {
            used += end + 4;
            response.append_to(&mut out);
        }
        buf.drain(..used);
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}

/// The upstream's response: the ~100-byte body naming the version,
/// `x-version`, and a Date as an origin server sends it; made again when the
/// second changes.
pub struct FixedResponse {
    pub name: std::sync::Arc<str>,
    pub second: u64,
    pub bytes: Vec<u8>,
}

impl FixedResponse {
    pub fn new(name: std::sync::Arc<str>) -> FixedResponse {
        FixedResponse {
            name,
            second: u64::MAX,
            bytes: Vec::new(),
        }
    }

    pub fn append_to(&mut self, out: &mut Vec<u8>) {
        let now = std::time::SystemTime::now();
        let second = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if second != self.second {
            self.second = second;
            let body = upstream_body(&self.name);
            self.bytes = format!(
                "HTTP/1.1 200 OK\r\nx-version: {}\r\ncontent-type: text/plain\r\n\
                 content-length: {}\r\ndate: {}\r\n\r\n",
                self.name,
                body.len(),
                httpdate::fmt_http_date(now)
            )
            .into_bytes();
            self.bytes.extend_from_slice(&body);
        }
        out.extend_from_slice(&self.bytes);
    }
}

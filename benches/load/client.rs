//! A minimal HTTP/1.1 client (hyper) for readiness, split checks and admin
//! calls.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HOST;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::processes::Proc;

pub struct Conn {
    pub sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    pub host: String,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Result<Self> {
        let stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connect to {addr} timed out"))??;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn {
            sender,
            host: addr.to_string(),
        })
    }

    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(hyper::header::HeaderName, String)],
        body: Bytes,
    ) -> Result<Response<Bytes>> {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, &self.host);
        for (k, v) in headers {
            b = b.header(k, v);
        }
        let req = b.body(Full::new(body))?;
        let fut = async {
            self.sender.ready().await?;
            let resp = self.sender.send_request(req).await?;
            let (parts, body) = resp.into_parts();
            let bytes = body.collect().await?.to_bytes();
            Ok::<_, anyhow::Error>(Response::from_parts(parts, bytes))
        };
        tokio::time::timeout(Duration::from_secs(5), fut)
            .await
            .map_err(|_| anyhow!("request to {} timed out", self.host))?
    }
}

pub async fn get_once(addr: SocketAddr, path: &str) -> Result<Response<Bytes>> {
    Conn::open(addr)
        .await?
        .send(Method::GET, path, &[], Bytes::new())
        .await
}

/// Poll `GET path` on `addr` until it answers 200.
pub async fn wait_ready(
    addr: SocketAddr,
    path: &str,
    proc: &mut Option<Proc>,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last;
    loop {
        if let Some(p) = proc.as_mut() {
            p.check_alive()?;
        }
        match get_once(addr, path).await {
            Ok(r) if r.status() == StatusCode::OK => return Ok(()),
            Ok(r) => last = format!("status {}", r.status()),
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() > deadline {
            bail!("http://{addr}{path} not ready after {timeout:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Poll until `addr` accepts a TCP connection (TLS targets: the bench's
/// client speaks plain HTTP only).
pub async fn wait_tcp(addr: SocketAddr, proc: &mut Option<Proc>, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(p) = proc.as_mut() {
            p.check_alive()?;
        }
        match TcpStream::connect(addr).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                bail!("{addr} does not accept connections after {timeout:?}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

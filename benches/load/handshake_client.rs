//! The load client of scenario 6 (new TLS connections): a connection, a
//! full TLS handshake, one ALB-shaped `Connection: close` request and its
//! response, again and again, on `--connections` concurrent tasks of one
//! thread (as `wrk -t1`).
//!
//! Why not wrk: its client handshake (OpenSSL 3) cost the load core about
//! 500-650 µs per connection, two to three times what any proxy spent on
//! its side, so every proxy measured the same rate (wrk's). This client is
//! rustls with ring: the same handshake for every proxy (TLS 1.3, X25519,
//! the server's ECDSA P-256 signature checked, no session offered: a full
//! handshake each time), cheaper on the load core, so the proxies' own
//! handshake cost decides the rate. Like wrk it does not check the
//! certificate chain (the bench's certificate is self-signed); it does
//! check the handshake's signature with the certificate's key.
//!
//! Run as `load --handshake-client 127.0.0.1:PORT --connections N
//! --seconds S`; prints one line, `requests=.. rps=.. p50_us=.. p99_us=..
//! non_2xx=.. errors=..`, read back by `parse_report`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::scenarios::{RequestShape, request_head};
use crate::wrk::WrkResult;

/// Gives up on one connection (connect, handshake, request, response)
/// after this long, as wrk's `--timeout 5s`.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The `load --handshake-client` entry point (a child process pinned to the
/// load core by the orchestrator).
pub fn run_from_args(args: &[String]) -> Result<()> {
    let value = |name: &str| -> Result<&str> {
        let i = args
            .iter()
            .position(|a| a == name)
            .ok_or_else(|| anyhow!("{name} is missing"))?;
        args.get(i + 1)
            .map(String::as_str)
            .ok_or_else(|| anyhow!("{name} needs a value"))
    };
    let addr: SocketAddr = value("--handshake-client")?.parse()?;
    let connections: usize = value("--connections")?.parse()?;
    let seconds: u64 = value("--seconds")?.parse()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(run(addr, connections, Duration::from_secs(seconds)))?;
    println!("{report}");
    Ok(())
}

/// What one task counted.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    non_2xx: u64,
    errors: u64,
    /// What the last handshake negotiated (version, suite, key exchange).
    negotiated: Option<String>,
}

async fn run(addr: SocketAddr, connections: usize, duration: Duration) -> Result<String> {
    let connector = TlsConnector::from(Arc::new(client_config()?));
    let shape = RequestShape {
        method: "GET",
        body_len: 0,
        close: true,
    };
    let request: Arc<[u8]> = request_head(&shape, &addr.to_string()).into_bytes().into();
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (connector, request) = (connector.clone(), request.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while Instant::now() < deadline {
                let began = Instant::now();
                match tokio::time::timeout(TIMEOUT, one_request(&connector, addr, &request)).await {
                    Ok(Ok((status, negotiated))) => {
                        tally.negotiated = Some(negotiated);
                        let us = began.elapsed().as_micros();
                        tally
                            .latencies_us
                            .push(u32::try_from(us).unwrap_or(u32::MAX));
                        if !(200..300).contains(&status) {
                            tally.non_2xx += 1;
                        }
                    }
                    Ok(Err(_)) | Err(_) => tally.errors += 1,
                }
            }
            tally
        }));
    }
    let mut all = Tally::default();
    for task in tasks {
        let t = task.await?;
        all.latencies_us.extend(t.latencies_us);
        all.non_2xx += t.non_2xx;
        all.errors += t.errors;
        all.negotiated = all.negotiated.or(t.negotiated);
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.latencies_us.sort_unstable();
    let requests = all.latencies_us.len() as u64 + all.errors;
    let (p50, p99) = (
        percentile(&all.latencies_us, 0.50),
        percentile(&all.latencies_us, 0.99),
    );
    Ok(format!(
        "requests={requests} rps={:.2} p50_us={p50} p99_us={p99} non_2xx={} errors={} tls={}",
        all.latencies_us.len() as f64 / elapsed,
        all.non_2xx,
        all.errors,
        all.negotiated.as_deref().unwrap_or("-")
    ))
}

/// The value at quantile `q` of sorted samples (0 when there are none).
pub fn percentile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// One connection: handshake, the request, the response read to its end
/// (Content-Length or the server's close); its status code and what the
/// handshake negotiated.
async fn one_request(
    connector: &TlsConnector,
    addr: SocketAddr,
    request: &[u8],
) -> Result<(u16, String)> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut tls = connector
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await?;
    let negotiated = {
        let session = tls.get_ref().1;
        let shown = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
        format!(
            "{}/{}/{}",
            shown(session.protocol_version().map(|v| format!("{v:?}"))),
            shown(
                session
                    .negotiated_cipher_suite()
                    .map(|s| format!("{:?}", s.suite()))
            ),
            shown(
                session
                    .negotiated_key_exchange_group()
                    .map(|g| format!("{:?}", g.name()))
            )
        )
    };
    tls.write_all(request).await?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        if tls.read_buf(&mut buf).await? == 0 {
            bail!("closed before the response head ended");
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(head_len) = response.parse(&buf)? else {
            continue;
        };
        let status = response.code.unwrap_or(0);
        let length = response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| {
                std::str::from_utf8(h.value)
                    .ok()?
                    .trim()
                    .parse::<usize>()
                    .ok()
            });
        let want = length.map(|l| head_len + l);
        while want.is_none_or(|w| buf.len() < w) {
            if tls.read_buf(&mut buf).await? == 0 {
                if want.is_none() {
                    return Ok((status, negotiated));
                }
                bail!(
                    "closed {} bytes short of the response's end",
                    want.unwrap_or(0) - buf.len()
                );
            }
        }
        return Ok((status, negotiated));
    }
}

/// rustls with ring; no session resumption (a full handshake per
/// connection); no ALPN (as wrk: HTTP/1.1).
fn client_config() -> Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SignatureOnly(provider)))
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// Accepts the server's certificate without a chain check (wrk's
/// `SSL_VERIFY_NONE`) but checks the handshake's signature with its key.
#[derive(Debug)]
struct SignatureOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for SignatureOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Reads the client's report line back.
pub fn parse_report(out: &str) -> Result<WrkResult> {
    let line = out
        .lines()
        .find(|l| l.starts_with("requests="))
        .ok_or_else(|| anyhow!("handshake client: no report in {out:?}"))?;
    let mut r = WrkResult::default();
    let mut seen = 0;
    for field in line.split_whitespace() {
        let (k, v) = field
            .split_once('=')
            .ok_or_else(|| anyhow!("handshake client: bad field {field:?}"))?;
        let bad = || anyhow!("handshake client: bad {k} {v:?}");
        match k {
            "requests" => r.requests = v.parse().map_err(|_| bad())?,
            "rps" => r.rps = v.parse().map_err(|_| bad())?,
            "p50_us" => r.p50_us = v.parse().map_err(|_| bad())?,
            "p99_us" => r.p99_us = v.parse().map_err(|_| bad())?,
            "non_2xx" => r.non_2xx = v.parse().map_err(|_| bad())?,
            "errors" => r.socket_errors = v.parse().map_err(|_| bad())?,
            "tls" => {
                r.negotiated = Some(v.to_owned());
                continue;
            }
            _ => continue,
        }
        seen += 1;
    }
    if seen != 6 {
        bail!("handshake client: incomplete report {line:?}");
    }
    Ok(r)
}

//! TLS plumbing for scenarios 5-7: a self-signed ECDSA P-256 certificate
//! for 127.0.0.1 made with the `openssl` command, and the lines that make
//! each proxy listen with it. The gateway gets `[listener.tls] cert/key`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Certificate and key in one file (HAProxy's `crt`).
    pub combined: PathBuf,
}

/// Makes the certificate in `dir` with `openssl` (ECDSA P-256, SAN
/// 127.0.0.1 and localhost, valid two days).
pub fn make_certificate(openssl: &Path, dir: &Path) -> Result<TlsFiles> {
    let files = TlsFiles {
        cert: dir.join("tls-cert.pem"),
        key: dir.join("tls-key.pem"),
        combined: dir.join("tls-combined.pem"),
    };
    let out = Command::new(openssl)
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:prime256v1")
        .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&files.key)
        .arg("-out")
        .arg(&files.cert)
        .output()
        .context("running openssl")?;
    if !out.status.success() {
        bail!(
            "openssl req failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut combined = std::fs::read(&files.cert)?;
    combined.extend(std::fs::read(&files.key)?);
    std::fs::write(&files.combined, combined)?;
    Ok(files)
}

impl TlsFiles {
    /// After `listen 127.0.0.1:PORT` (HTTP/2 offered by ALPN, as the
    /// gateway's HTTP/2 scenario needs).
    pub fn nginx_listen(&self) -> &'static str {
        " ssl http2"
    }

    /// Full handshakes only: no session cache, no tickets (scenario 6
    /// measures handshakes; keep-alive scenarios do one per connection).
    pub fn nginx_directives(&self) -> String {
        format!(
            "        ssl_certificate {};\n        ssl_certificate_key {};\n        \
             ssl_protocols TLSv1.2 TLSv1.3;\n        ssl_session_cache off;\n        \
             ssl_session_tickets off;\n",
            self.cert.display(),
            self.key.display()
        )
    }

    /// After `bind 127.0.0.1:PORT` (with `tune.ssl.cachesize 0` in global).
    pub fn haproxy_bind(&self) -> String {
        format!(
            " ssl crt {} alpn h2,http/1.1 no-tls-tickets",
            self.combined.display()
        )
    }
}

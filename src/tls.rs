//! TLS, on both sides of the data path (rustls with the ring provider).
//!
//! - [`listener`]: termination on the traffic listener (`[listener.tls]`),
//!   with ALPN (h2, http/1.1) and a certificate pair that is swapped whole on
//!   SIGHUP, `POST /reload` and file changes, without touching connections;
//! - [`upstream`]: TLS to a version's upstreams (`tls = true` in `[[versions]]`);
//! - [`pair`]: reading and checking a PEM certificate chain and private key;
//! - [`stream`]: the byte stream the data path reads and writes, plain or TLS.

pub mod listener;
pub mod pair;
pub mod stream;
pub mod upstream;

use std::sync::Arc;

pub use listener::ListenerTls;
pub use stream::Stream;
pub use upstream::UpstreamTls;

/// Why a certificate pair or a TLS setting was rejected. Always names the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read the file: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: not PEM: {reason}")]
    Pem { path: String, reason: String },
    #[error("{path}: no certificate found (expected PEM `CERTIFICATE` blocks)")]
    NoCertificate { path: String },
    #[error(
        "{path}: no private key found (expected a PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` block)"
    )]
    NoKey { path: String },
    #[error("{path}: unusable private key: {reason}")]
    BadKey { path: String, reason: String },
    #[error(
        "{path}: the private key is encrypted ({kind}); listener.tls.key must name an unencrypted key (the gateway takes no passphrase): decrypt it, e.g. `openssl pkey -in {path} -out NEW_KEY_FILE`"
    )]
    EncryptedKey { path: String, kind: &'static str },
    #[error("the private key in {key} does not match the certificate in {cert}")]
    Mismatch { cert: String, key: String },
    #[error(
        "the private key in {key} matches certificate {position} in {cert}, not the first: the chain must start with the leaf (server) certificate, then its intermediates"
    )]
    LeafNotFirst {
        cert: String,
        key: String,
        position: usize,
    },
    #[error("{path}: unusable certificate: {reason}")]
    BadCertificate { path: String, reason: String },
    #[error(
        "{path}: the certificate expired on {expired}, and the pair in force is valid: it keeps serving (clients that check a certificate would refuse every connection); put a valid pair in place"
    )]
    ExpiredOverValid { path: String, expired: String },
    #[error("`{0}` is not a valid TLS server name")]
    ServerName(String),
    #[error("no CA certificates: the system has none; set `ca_file`")]
    NoRoots,
    #[error("cannot make the TLS session ticket key: {0}")]
    Ticketer(String),
}

/// The one crypto provider every TLS config uses: ring (no aws-lc).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

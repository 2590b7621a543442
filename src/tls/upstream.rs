//! TLS to a version's upstreams (`tls = true`, optional `ca_file` and
//! `server_name` in `[[versions]]`). Connections are pooled and reused like
//! plain ones: the handshake happens once per connection, when it is opened.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::{CertificateError, ClientConfig, RootCertStore};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::{Stream, TlsError, pair};

/// A version's upstream TLS settings, as written in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTlsConfig {
    /// PEM CA certificates to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// The name to send (SNI) and verify; default: the endpoint's IP address.
    pub server_name: Option<String>,
}

/// The connector of one version, built (and its CA file read) when the
/// config is validated.
pub struct UpstreamTls {
    pub config: UpstreamTlsConfig,
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("config", &self.config)
            .finish()
    }
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.config == other.config
    }
}

impl UpstreamTls {
    pub fn new(config: UpstreamTlsConfig) -> Result<Arc<UpstreamTls>, TlsError> {
        let mut roots = RootCertStore::empty();
        match &config.ca_file {
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|e| TlsError::Read {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                for cert in pair::certificates(&bytes, path)? {
                    roots.add(cert).map_err(|e| TlsError::BadCertificate {
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    })?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                let _ = roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err(TlsError::NoRoots);
                }
            }
        }
        let server_name = match &config.server_name {
            None => None,
            Some(name) => Some(
                ServerName::try_from(name.clone())
                    .map_err(|_| TlsError::ServerName(name.clone()))?,
            ),
        };
        let mut client = ClientConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .map_err(|_| TlsError::NoRoots)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // The upstream client speaks HTTP/1.1 only.
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(UpstreamTls {
            config,
            connector: TlsConnector::from(Arc::new(client)),
            server_name,
        }))
    }

    /// The TLS handshake on a new connection to `addr`, by `deadline` (the
    /// connect's, which its TCP connect shares).
    pub async fn connect(
        &self,
        tcp: TcpStream,
        addr: SocketAddr,
        deadline: Instant,
    ) -> std::io::Result<Stream> {
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        match tokio::time::timeout_at(deadline, self.connector.connect(name, tcp)).await {
            Ok(Ok(tls)) => Ok(Stream::Client(Box::new(tls))),
            Ok(Err(e)) => Err(readable(e)),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        }
    }
}

/// A failed handshake's error with a certificate the upstream sent and
/// rustls refused said in words: rustls' own text for most reasons is the
/// reason's debug form (`invalid peer certificate:
/// Other(OtherError(CaUsedAsEndEntity))` for a self-signed upstream). The
/// rest of the message, and any other error, is left as it was.
fn readable(e: std::io::Error) -> std::io::Error {
    let refused = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
    let Some(rustls::Error::InvalidCertificate(cert)) = refused else {
        return e;
    };
    match certificate_problem(cert) {
        Some(problem) => {
            std::io::Error::new(e.kind(), format!("invalid peer certificate: {problem}"))
        }
        None => e,
    }
}

/// What is wrong with an upstream's certificate, in words, for the reasons
/// rustls names only by their debug form (those it writes out, such as a
/// name the certificate is not valid for, keep rustls' text).
fn certificate_problem(e: &CertificateError) -> Option<&'static str> {
    Some(match e {
        CertificateError::UnknownIssuer => {
            "the upstream's certificate is not signed by a CA the gateway trusts (the system's CAs, or `ca_file`'s when set)"
        }
        CertificateError::BadEncoding => "the upstream's certificate is malformed",
        CertificateError::Expired => "the upstream's certificate has expired",
        CertificateError::NotValidYet => "the upstream's certificate is not valid yet",
        CertificateError::Revoked => "the upstream's certificate is revoked",
        CertificateError::BadSignature => "the upstream's certificate has a bad signature",
        CertificateError::UnsupportedSignatureAlgorithmContext { .. }
        | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
            "the upstream's certificate is signed with an algorithm the gateway does not support"
        }
        // webpki's error, which rustls passes on as an opaque one; its text
        // is its variant's name.
        CertificateError::Other(other) if other.0.to_string() == "CaUsedAsEndEntity" => {
            "the upstream's certificate is a CA certificate (self-signed?), not a server certificate: give the upstream a server certificate signed by a CA, and that CA in `ca_file`"
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls_pki_types::{CertificateDer, UnixTime};

    /// What rustls' verifier, as the upstream client uses it, says of
    /// `cert` when it trusts `root`, as the handshake's error does.
    fn refused(root: CertificateDer<'static>, cert: &CertificateDer<'_>) -> std::io::Error {
        let mut roots = RootCertStore::empty();
        roots.add(root).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            super::super::provider(),
        )
        .build()
        .unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let e = verifier
            .verify_server_cert(cert, &[], &name, &[], UnixTime::now())
            .unwrap_err();
        readable(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// A self-signed CA certificate (trusted by `ca_file`) served as the
    /// upstream's: a sentence, not `Other(OtherError(CaUsedAsEndEntity))`.
    #[test]
    fn a_self_signed_upstream_certificate_is_said_in_words() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap().der().clone();
        let e = refused(ca.clone(), &ca);
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        assert!(
            e.to_string().starts_with(
                "invalid peer certificate: the upstream's certificate is a CA certificate (self-signed?), not a server certificate"
            ),
            "{e}"
        );
    }

    /// A certificate of a CA the gateway does not trust says so.
    #[test]
    fn an_untrusted_upstream_certificate_is_said_in_words() {
        // Another name than the leaf's issuer: else the root is taken for
        // its issuer, and the signature fails.
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "trusted CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let trusted = params.self_signed(&key).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let e = refused(trusted.der().clone(), other.cert.der());
        assert!(
            e.to_string().starts_with(
                "invalid peer certificate: the upstream's certificate is not signed by a CA the gateway trusts"
            ),
            "{e}"
        );
    }

    /// Reasons rustls already writes out, and errors that are no refused
    /// certificate, keep their text.
    #[test]
    fn other_errors_keep_their_text() {
        let wrong_name = rustls::Error::InvalidCertificate(CertificateError::NotValidForName);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, wrong_name.clone());
        assert_eq!(readable(io).to_string(), wrong_name.to_string());
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let said = reset.to_string();
        assert_eq!(readable(reset).to_string(), said);
    }
}

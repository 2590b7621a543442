//! TLS to a version's upstreams (`tls = true`, optional `ca_file` and
//! `server_name` in `[[versions]]`). Connections are pooled and reused like
//! plain ones: the handshake happens once per connection, when it is opened.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
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
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        }
    }
}

//! A certificate chain and its private key from PEM files: ECDSA or RSA keys,
//! PKCS#8, PKCS#1 or SEC1. The key must match the chain's first certificate.

use std::path::Path;
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::TlsError;

/// The files' bytes, read once: parsed, and hashed to notice changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairFiles {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl PairFiles {
    pub fn read(cert: &Path, key: &Path) -> Result<PairFiles, TlsError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| TlsError::Read {
                path: p.display().to_string(),
                reason: e.to_string(),
            })
        };
        Ok(PairFiles {
            cert: read(cert)?,
            key: read(key)?,
        })
    }

    /// A hash of both files' contents.
    pub fn fingerprint(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(&self.cert)
            ^ xxhash_rust::xxh3::xxh3_64(&self.key).rotate_left(1)
    }
}

/// The certificate chain of PEM `bytes` (`path` names it in errors).
pub fn certificates(bytes: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let name = || path.display().to_string();
    let chain = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: name(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: name() });
    }
    Ok(chain)
}

/// When a certificate is valid: its `notBefore` and `notAfter`, in Unix
/// seconds; `None` when its DER cannot be read so far (rustls, which
/// accepted the chain, is the judge of the rest).
pub fn validity(cert: &CertificateDer<'_>) -> Option<(i64, i64)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let validity = parsed.validity();
    Some((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

/// Parses and checks a pair read from `cert` and `key`.
pub fn certified_key(
    files: &PairFiles,
    cert: &Path,
    key: &Path,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = certificates(&files.cert, cert)?;
    let key_name = || key.display().to_string();
    let der = PrivateKeyDer::from_pem_slice(&files.key).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoKey { path: key_name() },
        other => TlsError::Pem {
            path: key_name(),
            reason: other.to_string(),
        },
    })?;
    let signing = super::provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| TlsError::BadKey {
            path: key_name(),
            reason: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => Ok(Arc::new(certified)),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::Mismatch {
                cert: cert.display().to_string(),
                key: key_name(),
            })
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(Arc::new(certified))
        }
        Err(e) => Err(TlsError::BadCertificate {
            path: cert.display().to_string(),
            reason: e.to_string(),
        }),
    }
}

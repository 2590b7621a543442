//! A certificate chain and its private key from PEM files: ECDSA or RSA keys,
//! PKCS#8, PKCS#1 or SEC1, unencrypted. The key must match the chain's first
//! certificate.

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
            reason: pem_reason(&e),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: name() });
    }
    Ok(chain)
}

/// Why a PEM file could not be read, for an operator: the PEM reader's own
/// text gives a section's name and a bad line as lists of byte values
/// (`missing section end marker: [67, 69, 82, ...]` for `CERTIFICATE`);
/// here they are text.
fn pem_reason(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { end_marker } => {
            let label = String::from_utf8_lossy(end_marker);
            format!(
                "the `{label}` section has no `-----END {label}-----` line (is the file cut short, or still being written?)"
            )
        }
        Error::IllegalSectionStart { line } => format!(
            "malformed section start line `{}`",
            String::from_utf8_lossy(line).trim_end()
        ),
        other => other.to_string(),
    }
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

/// What kind of encrypted private key the PEM `bytes` hold, if any: a
/// PKCS#8 `ENCRYPTED PRIVATE KEY` block, or a traditional (OpenSSL) key
/// with a `Proc-Type: 4,ENCRYPTED` header.
fn encrypted_key(bytes: &[u8]) -> Option<&'static str> {
    let text = String::from_utf8_lossy(bytes);
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Some("a PKCS#8 `ENCRYPTED PRIVATE KEY` block");
    }
    text.lines()
        .any(|line| {
            let line = line.trim();
            line.strip_prefix("Proc-Type:")
                .is_some_and(|v| v.trim().ends_with("ENCRYPTED"))
        })
        .then_some("a PEM block with a `Proc-Type: 4,ENCRYPTED` header")
}

/// Parses and checks a pair read from `cert` and `key`.
pub fn certified_key(
    files: &PairFiles,
    cert: &Path,
    key: &Path,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = certificates(&files.cert, cert)?;
    let key_name = || key.display().to_string();
    // An encrypted key is no key to the PEM reader (or an unreadable one):
    // say what it is instead.
    let encrypted = || {
        encrypted_key(&files.key).map(|kind| TlsError::EncryptedKey {
            path: key_name(),
            kind,
        })
    };
    let der = PrivateKeyDer::from_pem_slice(&files.key).map_err(|e| {
        encrypted().unwrap_or_else(|| match e {
            rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoKey { path: key_name() },
            other => TlsError::Pem {
                path: key_name(),
                reason: pem_reason(&other),
            },
        })
    })?;
    let signing = super::provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| {
            encrypted().unwrap_or_else(|| TlsError::BadKey {
                path: key_name(),
                reason: e.to_string(),
            })
        })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => Ok(Arc::new(certified)),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            // The leaf further down (an intermediate first): say so.
            let later = certified.cert.iter().skip(1).position(|c| {
                CertifiedKey::new(vec![c.clone()], certified.key.clone())
                    .keys_match()
                    .is_ok()
            });
            Err(match later {
                Some(index) => TlsError::LeafNotFirst {
                    cert: cert.display().to_string(),
                    key: key_name(),
                    position: index + 2,
                },
                None => TlsError::Mismatch {
                    cert: cert.display().to_string(),
                    key: key_name(),
                },
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tls")
            .join(name);
        std::fs::read(path).unwrap()
    }

    /// A file cut short names its open section as text, not as the list of
    /// its bytes; the whole error names the file.
    #[test]
    fn a_cut_short_pem_file_says_which_section_is_open() {
        let path = Path::new("/etc/tls/cert.pem");
        let e = certificates(b"-----BEGIN CERTIFICATE-----\nMIIB\n", path).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/tls/cert.pem: not PEM: the `CERTIFICATE` section has no `-----END CERTIFICATE-----` line (is the file cut short, or still being written?)"
        );
        let pair = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let key = pair.signing_key.serialize_pem();
        let files = PairFiles {
            cert: pair.cert.pem().into_bytes(),
            key: key.as_bytes()[..key.len() - 30].to_vec(),
        };
        let e = certified_key(&files, path, Path::new("key.pem")).unwrap_err();
        let said = e.to_string();
        assert!(
            said.starts_with("key.pem: not PEM: the `PRIVATE KEY` section has no `-----END PRIVATE KEY-----` line"),
            "{said}"
        );
    }

    /// A malformed `-----BEGIN` line is quoted as text.
    #[test]
    fn a_malformed_section_start_is_quoted_as_text() {
        let e = certificates(b"-----BEGIN CERTIFICATE----\nMIIB\n", Path::new("c.pem"));
        assert_eq!(
            e.unwrap_err().to_string(),
            "c.pem: not PEM: malformed section start line `-----BEGIN CERTIFICATE----`"
        );
    }

    /// Both kinds of encrypted key are told apart from keys in the clear.
    #[test]
    fn encrypted_keys_are_recognised() {
        let pkcs8 = encrypted_key(&fixture("ec-pkcs8-encrypted.key.pem"));
        assert!(pkcs8.is_some_and(|k| k.contains("ENCRYPTED PRIVATE KEY")));
        let traditional = encrypted_key(&fixture("rsa-pkcs1-encrypted.key.pem"));
        assert!(traditional.is_some_and(|k| k.contains("Proc-Type")));
        for clear in [
            "ec-pkcs8.key.pem",
            "ec-sec1.key.pem",
            "rsa-pkcs1.key.pem",
            "rsa-pkcs8.key.pem",
        ] {
            assert_eq!(encrypted_key(&fixture(clear)), None, "{clear}");
        }
    }
}

//! A CA made in the test with rcgen, and the leaf certificates it signs.
//! Shared by test binaries that each use a part of it.
#![allow(dead_code)]

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::CertificateDer;

/// A test CA that signs leaf certificates.
pub struct Ca {
    pub der: CertificateDer<'static>,
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `names` with `key_pem` (PKCS#8); its PEM and DER.
    pub fn leaf_for(&self, names: &[&str], key_pem: &str) -> (String, CertificateDer<'static>) {
        let key = KeyPair::from_pem(key_pem).unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (cert.pem(), cert.der().clone())
    }

    /// A leaf for `names`, fresh ECDSA key, that expired at the start of
    /// 2020: (cert PEM, key PEM).
    pub fn expired_leaf(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.not_before = rcgen::date_time_ymd(2019, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A leaf with a fresh ECDSA key: (cert PEM, key PEM, cert DER).
    pub fn leaf(&self, names: &[&str]) -> (String, String, CertificateDer<'static>) {
        let key = KeyPair::generate().unwrap().serialize_pem();
        let (cert, der) = self.leaf_for(names, &key);
        (cert, key, der)
    }
}

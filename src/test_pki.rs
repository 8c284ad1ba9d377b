//! Test certificates: a private CA and a server certificate for 127.0.0.1 it signs, as PEM
//! files (rustls takes no self-signed certificate as a server's own, hence the two).

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

pub struct Pki {
    /// Where the files are; gone with the value.
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub leaf: PathBuf,
    pub key: PathBuf,
    /// The leaf followed by the CA certificate.
    pub full_chain: PathBuf,
}

/// A fresh CA and a leaf for 127.0.0.1 with these extended key usages (none: any use).
pub fn pki(usages: Vec<ExtendedKeyUsagePurpose>) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    leaf.extended_key_usages = usages;
    let leaf = leaf.signed_by(&key, &ca, &ca_key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    Pki {
        ca: write("ca.pem", &ca.pem()),
        leaf: write("leaf.pem", &leaf.pem()),
        key: write("key.pem", &key.serialize_pem()),
        full_chain: write("chain.pem", &format!("{}{}", leaf.pem(), ca.pem())),
        dir,
    }
}

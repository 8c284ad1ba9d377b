//! A throwaway CA and a server certificate for 127.0.0.1 / localhost, written as PEM files.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

pub struct TestCa {
    pub dir: tempfile::TempDir,
    /// The CA certificate: what berth's `ca_file` and curl's `--cacert` take.
    pub ca_pem: PathBuf,
    /// Server certificate (signed by the CA) and its key, for 127.0.0.1 and localhost.
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
    /// A containers-style cert dir (`ca.crt`) for skopeo's `--dest-cert-dir` / `--src-cert-dir`.
    pub cert_dir: PathBuf,
    /// The CA itself, to issue more certificates ([`TestCa::issue_server`], [`TestCa::issue_client`]).
    issuer: (Certificate, KeyPair),
}

impl TestCa {
    pub fn new() -> TestCa {
        TestCa::for_names(&["127.0.0.1", "localhost"])
    }

    /// A CA whose server certificate names `names` (IP addresses become IP SANs).
    pub fn for_names(names: &[&str]) -> TestCa {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "berth test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();

        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, pem: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, pem).unwrap();
            p
        };
        let ca_pem = write("ca.pem", &ca_cert.pem());
        let cert_pem = write("server.pem", &cert.pem());
        let key_pem = write("server-key.pem", &key.serialize_pem());
        let cert_dir = dir.path().join("certs.d");
        std::fs::create_dir(&cert_dir).unwrap();
        std::fs::write(cert_dir.join("ca.crt"), ca_cert.pem()).unwrap();
        TestCa {
            dir,
            ca_pem,
            cert_pem,
            key_pem,
            cert_dir,
            issuer: (ca_cert, ca_key),
        }
    }

    /// A new server certificate (new key) for 127.0.0.1 and localhost, written as
    /// `<name>.pem` and `<name>-key.pem` in the CA's dir: what a rotation installs.
    pub fn issue_server(&self, name: &str) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        self.issue(name, params)
    }

    /// A client certificate (clientAuth) with common name `name`, signed by this CA.
    pub fn issue_client(&self, name: &str) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(name, params)
    }

    fn issue(&self, name: &str, params: CertificateParams) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let cert = params
            .signed_by(&key, &self.issuer.0, &self.issuer.1)
            .unwrap();
        let cert_path = self.dir.path().join(format!("{name}.pem"));
        let key_path = self.dir.path().join(format!("{name}-key.pem"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }
}

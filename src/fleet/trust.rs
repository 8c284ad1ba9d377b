//! What a follower trusts and presents when it streams a leader's fill. Replicas share the front
//! door's certificate setup, so the fleet's client takes it from `[server]`: it trusts the webpki
//! roots, the issuers in our own `tls_cert_file` chain and `client_ca_file`; with
//! `client_ca_file` it presents our own certificate and key as its client certificate.
//!
//! Checked at start, because a fleet that cannot connect fails quietly (each replica fetches
//! alone): with an https `advertise_url`, a client built so must accept our own certificate for
//! the advertise_url's host, and with `client_ca_file`, our certificate must pass as a client of
//! that CA. Otherwise start fails with one line naming the keys to fix.

use url::Url;

use crate::client::{Access, ClientError, load_certificates, load_private_key, verify_client};
use crate::config::ServerConfig;

/// The fleet's client cannot reach the other replicas as configured.
#[derive(Debug, thiserror::Error)]
#[error("cross-replica fills cannot work: {0}")]
pub struct FleetError(String);

impl FleetError {
    pub(super) fn new(message: String) -> FleetError {
        FleetError(message)
    }
}

/// The access of this replica's fleet client, checked against its own certificate.
pub(super) fn access(advertise_url: &Url, server: &ServerConfig) -> Result<Access, FleetError> {
    let Some(tls) = &server.tls else {
        // A plain-HTTP front door; an https advertise_url is then a TLS proxy in front of
        // each replica, with a certificate of the public roots or nothing we can check.
        return Ok(Access::new());
    };
    if advertise_url.scheme() != "https" {
        return Err(FleetError(format!(
            "advertise_url {advertise_url} is http:// but this berth serves HTTPS \
             (server.tls_cert_file); write advertise_url = \"https://…\""
        )));
    }
    let setup = |key: &str, e: ClientError| FleetError(format!("{key}: {e}"));
    let chain = load_certificates(&tls.cert_file).map_err(|e| setup("server.tls_cert_file", e))?;
    let client_ca = match &tls.client_ca_file {
        Some(path) => Some(load_certificates(path).map_err(|e| setup("server.client_ca_file", e))?),
        None => None,
    };
    let mut access = Access::new()
        .with_roots(chain.iter().skip(1).cloned())
        .with_roots(client_ca.iter().flatten().cloned());
    let host = advertise_url.host_str().unwrap_or_default();
    access.verify_server(&chain, host).map_err(|e| {
        FleetError(format!(
            "the other replicas cannot verify this replica's certificate \
             (server.tls_cert_file) as {host} ({}); append the issuing CA certificate to \
             server.tls_cert_file after the certificate (or set server.client_ca_file to it), \
             and give advertise_url a host the certificate names",
            e.detail()
        ))
    })?;
    if let Some(ca) = &client_ca {
        let key = load_private_key(&tls.key_file).map_err(|e| setup("server.tls_key_file", e))?;
        access = access
            .with_identity(chain.clone(), key)
            .map_err(|e| setup("server.tls_key_file", e))?;
        verify_client(&chain, ca).map_err(|e| {
            FleetError(format!(
                "the other replicas would refuse this replica's certificate \
                 (server.tls_cert_file) as a client of server.client_ca_file ({}); issue \
                 server.tls_cert_file from that CA, for server and client use",
                e.detail()
            ))
        })?;
    }
    Ok(access)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rcgen::ExtendedKeyUsagePurpose;

    use super::*;
    use crate::config::TlsFiles;
    use crate::test_pki::pki;

    fn server(cert: &Path, key: &Path, client_ca: Option<&Path>) -> ServerConfig {
        ServerConfig {
            tls: Some(TlsFiles {
                cert_file: cert.to_path_buf(),
                key_file: key.to_path_buf(),
                client_ca_file: client_ca.map(Path::to_path_buf),
            }),
            ..ServerConfig::default()
        }
    }

    fn url(text: &str) -> Url {
        text.parse().unwrap()
    }

    #[test]
    fn a_private_ca_is_trusted_from_the_chain_or_the_client_ca() {
        let pki = pki(vec![]);
        let advertise = url("https://127.0.0.1:5000");
        // The CA after the certificate in tls_cert_file.
        access(&advertise, &server(&pki.full_chain, &pki.key, None)).unwrap();
        // The CA as client_ca_file (mTLS between replicas).
        access(&advertise, &server(&pki.leaf, &pki.key, Some(&pki.ca))).unwrap();
        // No TLS at all: the public roots, nothing to check.
        access(&url("http://127.0.0.1:5000"), &ServerConfig::default()).unwrap();
        drop(pki.dir);
    }

    #[test]
    fn a_fleet_that_cannot_connect_fails_naming_the_keys() {
        let pki = pki(vec![]);
        let cases = [
            // Leaf only, private CA: nobody can verify it.
            (
                url("https://127.0.0.1:5000"),
                server(&pki.leaf, &pki.key, None),
                "server.tls_cert_file",
            ),
            // A host the certificate does not name.
            (
                url("https://10.27.27.11:5000"),
                server(&pki.full_chain, &pki.key, None),
                "advertise_url",
            ),
            // Plain HTTP to an HTTPS front door.
            (
                url("http://127.0.0.1:5000"),
                server(&pki.full_chain, &pki.key, None),
                "advertise_url",
            ),
        ];
        for (advertise, server, key) in cases {
            let e = access(&advertise, &server).unwrap_err().to_string();
            assert!(e.contains(key), "{advertise}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }

    #[test]
    fn a_server_only_certificate_cannot_be_the_fleets_client_certificate() {
        let pki = pki(vec![ExtendedKeyUsagePurpose::ServerAuth]);
        let e = access(
            &url("https://127.0.0.1:5000"),
            &server(&pki.leaf, &pki.key, Some(&pki.ca)),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("server.client_ca_file"), "{e}");
    }
}

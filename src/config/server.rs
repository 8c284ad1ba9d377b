//! The `[server]` table: who may reach berth, how (HTTP or HTTPS, client certificates, Basic
//! users), and the client-side limits (timeouts, connection caps). Self-contained: the raw
//! table, its defaults and its validation live here.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::ConfigError;
use super::limits::{MAX_INTERVAL, check_duration};
use super::resolve::check_pem_certificates;

/// Client networks allowed when `allow` is not set: loopback and the private ranges.
pub const DEFAULT_ALLOW: [&str; 6] = [
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "::1/128",
    "fc00::/7",
];
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Connections one client address (an IPv6 /64) may hold: containerd pulls a few layers at once
/// per image and K3s starts several pods' pulls together, well under this.
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 64;

/// The `[server]` table as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub allow: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    pub header_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    pub max_connections: Option<usize>,
    pub max_connections_per_client: Option<usize>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub client_ca_file: Option<PathBuf>,
    pub users_file: Option<PathBuf>,
    pub admin_listen: Option<String>,
}

/// The validated `[server]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Client networks that may connect (to `listen` and `admin_listen`); others are closed at
    /// accept.
    pub allow: Vec<IpNet>,
    /// A client must send a request head within this (and finish the TLS handshake).
    pub header_timeout: Duration,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Connections served at once; beyond it new ones wait up to `header_timeout`, then are closed.
    pub max_connections: usize,
    /// Connections one client address (IPv6: its /64) may have open or waiting at once; beyond
    /// it new ones are closed at accept.
    pub max_connections_per_client: usize,
    /// HTTPS instead of HTTP.
    pub tls: Option<TlsFiles>,
    /// htpasswd file (bcrypt): clients authenticate with Basic.
    pub users_file: Option<PathBuf>,
    /// Where `/_berth/*` is served instead of the main listener.
    pub admin_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Client certificates must be signed by this CA (mTLS).
    pub client_ca_file: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            allow: DEFAULT_ALLOW.iter().map(|n| n.parse().unwrap()).collect(),
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_client: DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
            tls: None,
            users_file: None,
            admin_listen: None,
        }
    }
}

impl ServerConfig {
    /// Whether `ip` may use the API. An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, what a
    /// dual-stack socket reports) counts as its IPv4 address.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allow.iter().any(|net| net.contains(&ip))
    }

    /// `allow` lets every address in (a `/0` network).
    pub fn allows_everyone(&self) -> bool {
        self.allow.iter().any(|net| net.prefix_len() == 0)
    }
}

impl RawServer {
    pub fn resolve(self) -> Result<ServerConfig, ConfigError> {
        let defaults = ServerConfig::default();
        let allow = match self.allow {
            None => defaults.allow,
            Some(list) => list
                .iter()
                .map(|text| parse_network(text))
                .collect::<Result<Vec<_>, String>>()
                .map_err(|message| ConfigError::new(key("allow"), message))?,
        };
        let header_timeout = self.header_timeout.unwrap_or(defaults.header_timeout);
        let idle_timeout = self.idle_timeout.unwrap_or(defaults.idle_timeout);
        for (field, value) in [
            ("header_timeout", header_timeout),
            ("idle_timeout", idle_timeout),
        ] {
            check_duration(&key(field), value, MAX_INTERVAL)?;
        }
        let max_connections = self.max_connections.unwrap_or(defaults.max_connections);
        if max_connections == 0 {
            return Err(ConfigError::new(
                key("max_connections"),
                "must be at least 1",
            ));
        }
        let max_connections_per_client = self
            .max_connections_per_client
            .unwrap_or(defaults.max_connections_per_client);
        if max_connections_per_client == 0 {
            return Err(ConfigError::new(
                key("max_connections_per_client"),
                "must be at least 1",
            ));
        }
        let tls = tls_files(self.tls_cert_file, self.tls_key_file, self.client_ca_file)?;
        if let Some(path) = &self.users_file {
            std::fs::metadata(path).map_err(|e| {
                ConfigError::new(
                    key("users_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
        }
        let admin_listen = match self.admin_listen {
            None => None,
            Some(text) => Some(parse_admin_listen(&text).ok_or_else(|| {
                ConfigError::new(
                    key("admin_listen"),
                    format!("`{text}` is not an address like 127.0.0.1:5080 (or a port: 5080)"),
                )
            })?),
        };
        Ok(ServerConfig {
            allow,
            header_timeout,
            idle_timeout,
            max_connections,
            max_connections_per_client,
            tls,
            users_file: self.users_file,
            admin_listen,
        })
    }
}

/// The key an error names: `server.<field>`.
fn key(field: &str) -> String {
    format!("server.{field}")
}

/// HTTPS needs both the certificate and its key; client certificates need HTTPS.
fn tls_files(
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_ca_file: Option<PathBuf>,
) -> Result<Option<TlsFiles>, ConfigError> {
    match (cert_file, key_file) {
        (Some(cert_file), Some(key_file)) => {
            check_pem_certificates(&key("tls_cert_file"), &cert_file)?;
            check_pem_private_key(&key("tls_key_file"), &key_file)?;
            if let Some(ca) = &client_ca_file {
                check_pem_certificates(&key("client_ca_file"), ca)?;
            }
            Ok(Some(TlsFiles {
                cert_file,
                key_file,
                client_ca_file,
            }))
        }
        (None, None) if client_ca_file.is_some() => Err(ConfigError::new(
            key("client_ca_file"),
            "client certificates need HTTPS: set tls_cert_file and tls_key_file too",
        )),
        (None, None) => Ok(None),
        (Some(_), None) => Err(ConfigError::new(
            key("tls_key_file"),
            "missing: tls_cert_file is set, HTTPS needs its key too",
        )),
        (None, Some(_)) => Err(ConfigError::new(
            key("tls_cert_file"),
            "missing: tls_key_file is set, HTTPS needs the certificate too",
        )),
    }
}

/// `10.27.27.0/24`, or a single address (`127.0.0.3` = `/32`).
fn parse_network(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        // `10.27.27.5/24` means the network, not a host with a mask.
        return Ok(net.trunc());
    }
    text.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
        format!("`{text}` is not a network like 10.27.27.0/24 or an address like 10.27.27.5")
    })
}

/// An address, or a bare port on loopback (the admin side stays private unless told otherwise).
fn parse_admin_listen(text: &str) -> Option<SocketAddr> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr);
    }
    let port = text.strip_prefix(':').unwrap_or(text).parse::<u16>().ok()?;
    Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
}

/// The key file must exist and hold a PEM private key (so a typo fails at start, not at the
/// first TLS handshake; certificates are checked by `check_pem_certificates`).
fn check_pem_private_key(key: &str, path: &Path) -> Result<(), ConfigError> {
    let pem = std::fs::read(path)
        .map_err(|e| ConfigError::new(key, format!("cannot read {}: {e}", path.display())))?;
    use rustls::pki_types::pem::PemObject as _;
    if rustls::pki_types::PrivateKeyDer::from_pem_slice(&pem).is_err() {
        return Err(ConfigError::new(
            key,
            format!("{} holds no PEM private key", path.display()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(text: &str) -> Result<ServerConfig, ConfigError> {
        toml::from_str::<RawServer>(text).unwrap().resolve()
    }

    #[test]
    fn defaults_allow_loopback_and_private_ranges_only() {
        let server = resolve("").unwrap();
        for ok in [
            "127.0.0.1",
            "10.27.27.9",
            "172.31.0.1",
            "192.168.1.1",
            "::1",
            "fd00::1",
        ] {
            assert!(server.allows(ok.parse().unwrap()), "{ok}");
        }
        for denied in ["8.8.8.8", "172.32.0.1", "2001:db8::1", "100.64.0.1"] {
            assert!(!server.allows(denied.parse().unwrap()), "{denied}");
        }
        assert!(!server.allows_everyone());
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_ipv4() {
        let server = resolve("allow = [\"10.27.27.0/24\"]").unwrap();
        assert!(server.allows("::ffff:10.27.27.7".parse().unwrap()));
        assert!(!server.allows("::ffff:10.27.28.7".parse().unwrap()));
        // A single address is a /32; a host with a mask means its network.
        let server = resolve("allow = [\"127.0.0.3\", \"10.1.2.3/16\"]").unwrap();
        assert!(server.allows("127.0.0.3".parse().unwrap()));
        assert!(!server.allows("127.0.0.2".parse().unwrap()));
        assert!(server.allows("10.1.200.1".parse().unwrap()));
        assert!(
            resolve("allow = [\"0.0.0.0/0\"]")
                .unwrap()
                .allows_everyone()
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            ("allow = [\"10.0.0.0/33\"]", "server.allow"),
            ("allow = [\"lan\"]", "server.allow"),
            ("header_timeout = \"0s\"", "server.header_timeout"),
            ("max_connections = 0", "server.max_connections"),
            (
                "max_connections_per_client = 0",
                "server.max_connections_per_client",
            ),
            ("tls_cert_file = \"/x\"", "server.tls_key_file"),
            ("client_ca_file = \"/x\"", "server.client_ca_file"),
            ("users_file = \"/nonexistent/users\"", "server.users_file"),
            ("admin_listen = \"loopback\"", "server.admin_listen"),
        ] {
            let e = resolve(text).unwrap_err();
            assert_eq!(e.key, key, "{text}: {e}");
        }
    }

    #[test]
    fn admin_listen_port_alone_is_loopback() {
        let server = resolve("admin_listen = \"5001\"").unwrap();
        assert_eq!(server.admin_listen, Some("127.0.0.1:5001".parse().unwrap()));
        let server = resolve("admin_listen = \"0.0.0.0:5001\"").unwrap();
        assert_eq!(server.admin_listen, Some("0.0.0.0:5001".parse().unwrap()));
    }
}

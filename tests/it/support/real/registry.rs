//! Debian's `docker-registry` (distribution 2.8) with filesystem storage in a temp dir, over
//! TLS with the test CA (or plain HTTP), optionally in pull-through proxy mode.
//!
//! Request log: distribution writes an Apache combined access log to **stdout**
//! (`127.0.0.1 - - [date] "GET /v2/x/blobs/sha256:… HTTP/1.1" 200 1234 "" "ua"`) and its
//! logrus app log to stderr; [`DockerRegistry::access_log`] parses the former.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::super::util::{free_port, kill_child, wait_until};
use super::tls::TestCa;

/// `proxy:` section: distribution becomes a pull-through cache of `remote_url`.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub remote_url: String,
    pub credentials: Option<(String, String)>,
    /// CA (PEM) to trust for an HTTPS `remote_url` (passed as `SSL_CERT_FILE`).
    pub ca_file: Option<PathBuf>,
}

/// One access-log line.
#[derive(Clone, Debug, PartialEq)]
pub struct AccessLogEntry {
    pub method: String,
    /// Path and query as requested.
    pub uri: String,
    pub status: u16,
}

impl AccessLogEntry {
    pub fn is_blob(&self) -> bool {
        self.uri.contains("/blobs/sha256:")
    }
    pub fn is_manifest(&self) -> bool {
        self.uri.contains("/manifests/")
    }
}

pub struct DockerRegistry {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    tls: bool,
    child: Option<Child>,
}

impl DockerRegistry {
    /// Plain storage registry; serves TLS with `ca`'s server cert when given.
    pub fn start(ca: Option<&TestCa>) -> DockerRegistry {
        DockerRegistry::start_with(ca, None)
    }

    /// As [`start`](Self::start), in pull-through mode when `proxy` is given. Waits (≤ 20 s)
    /// until the port accepts connections; panics with the logs otherwise.
    pub fn start_with(ca: Option<&TestCa>, proxy: Option<&ProxyConfig>) -> DockerRegistry {
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            config_yaml(dir.path().join("data"), addr, ca, proxy),
        )
        .unwrap();
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("stdout.log")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap());
        if let Some(ca_file) = proxy.and_then(|p| p.ca_file.as_ref()) {
            // Go's crypto/x509 reads its roots from SSL_CERT_FILE: lets proxy mode trust the CA.
            cmd.env("SSL_CERT_FILE", ca_file);
        }
        let child = cmd.spawn().expect("spawn docker-registry");
        let mut reg = DockerRegistry {
            addr,
            dir,
            tls: ca.is_some(),
            child: Some(child),
        };
        wait_until("docker-registry to listen", Duration::from_secs(20), || {
            if let Some(Ok(Some(status))) = reg.child.as_mut().map(|c| c.try_wait()) {
                panic!("docker-registry exited ({status}):\n{}", reg.app_log());
            }
            std::net::TcpStream::connect(reg.addr).ok().map(|_| ())
        });
        reg
    }

    /// `127.0.0.1:<port>`: the host part of image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn url(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.addr
        )
    }

    /// Kills the registry (upstream outage); the data dir stays.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_child(&mut c);
        }
    }

    pub fn access_log(&self) -> Vec<AccessLogEntry> {
        let text = std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default();
        text.lines().filter_map(parse_access_line).collect()
    }

    /// Blob GETs the registry answered (200/206/307), i.e. blob downloads started.
    pub fn blob_gets(&self) -> usize {
        self.access_log()
            .iter()
            .filter(|e| e.method == "GET" && e.is_blob() && e.status < 400)
            .count()
    }

    /// The logrus application log (stderr).
    pub fn app_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

fn parse_access_line(line: &str) -> Option<AccessLogEntry> {
    let (_, rest) = line.split_once('"')?;
    let (request, rest) = rest.split_once('"')?;
    let mut req = request.split_whitespace();
    let (method, uri) = (req.next()?.to_string(), req.next()?.to_string());
    let status = rest.split_whitespace().next()?.parse().ok()?;
    Some(AccessLogEntry {
        method,
        uri,
        status,
    })
}

fn config_yaml(
    data: PathBuf,
    addr: SocketAddr,
    ca: Option<&TestCa>,
    proxy: Option<&ProxyConfig>,
) -> String {
    let mut y = format!(
        "version: 0.1\nlog:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
         http:\n  addr: {addr}\n  secret: berth-test-secret\n",
        data.display()
    );
    if let Some(ca) = ca {
        y += &format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            ca.cert_pem.display(),
            ca.key_pem.display()
        );
    }
    if let Some(p) = proxy {
        y += &format!("proxy:\n  remoteurl: {}\n", p.remote_url);
        if let Some((user, pass)) = &p.credentials {
            y += &format!("  username: {user}\n  password: {pass}\n");
        }
    }
    y
}

//! Upstream traffic through an HTTP CONNECT proxy (`proxy`, `no_proxy`, `HTTPS_PROXY`): a real
//! CONNECT proxy on loopback (`support::connect_proxy`) in front of the fake Docker Hub behind
//! TLS (registry, token realm and CDN each behind a `TlsFront`).

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::connect_proxy::ConnectProxy;
use crate::support::fake_upstream::{FakeUpstream, Kind, Options, Role, TlsFront};
use crate::support::images::{self, Format, ImageIndex};
use crate::support::inprocess::{Berth, get_bytes, get_text, sha256};
use crate::support::log_buffer::LogBuffer;
use crate::support::real::TestCa;
use crate::support::util::{eventually, free_port};
use http::Method;

const USER: &str = "proxyuser";
const PASSWORD: &str = "pr0xy-s3cret";
const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The fake Docker Hub with registry, token realm and CDN each behind TLS on 127.0.0.1.
struct TlsHub {
    fake: FakeUpstream,
    fronts: Vec<TlsFront>,
    ca: TestCa,
    image: ImageIndex,
}

impl TlsHub {
    async fn start(seed: u64) -> TlsHub {
        let ca = TestCa::new();
        let (token_port, cdn_port) = (free_port(), free_port());
        let fake = FakeUpstream::start(Options {
            public_token_url: Some(format!("https://127.0.0.1:{token_port}")),
            public_cdn_url: Some(format!("https://127.0.0.1:{cdn_port}")),
            ..Options::default()
        })
        .await;
        let image = images::multi_arch(seed, Format::Oci);
        fake.push("library/app", "1", &image);
        let mut fronts = vec![TlsFront::start(&ca, fake.registry_addr).await];
        for (port, backend) in [(token_port, fake.token_addr), (cdn_port, fake.cdn_addr)] {
            let bind = format!("127.0.0.1:{port}").parse().unwrap();
            fronts.push(TlsFront::start_on(&ca, bind, backend).await);
        }
        TlsHub {
            fake,
            fronts,
            ca,
            image,
        }
    }

    fn url(&self) -> String {
        self.fronts[0].url()
    }

    fn ca_line(&self) -> String {
        format!("ca_file = {:?}", self.ca.ca_pem.display().to_string())
    }

    /// The three TLS fronts' `host:port`: registry, token realm, CDN.
    fn authorities(&self) -> Vec<String> {
        self.fronts.iter().map(|f| f.addr.to_string()).collect()
    }
}

/// Pulls the amd64 image (index by tag, manifest, config, layers) through `base` and checks
/// every body against its digest.
async fn pull_byte_exact(base: &str, image: &ImageIndex) {
    let (status, index) = get_bytes(&format!("{base}/v2/library/app/manifests/1")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&index));
    assert_eq!(sha256(&index), image.index.digest);
    let amd64 = image.image_for("amd64");
    let (status, manifest) = get_bytes(&format!(
        "{base}/v2/library/app/manifests/{}",
        amd64.manifest.digest
    ))
    .await;
    assert_eq!(status, 200);
    assert_eq!(sha256(&manifest), amd64.manifest.digest);
    for blob in std::iter::once(&amd64.config).chain(&amd64.layers) {
        let (status, body) =
            get_bytes(&format!("{base}/v2/library/app/blobs/{}", blob.digest)).await;
        assert_eq!(status, 200);
        assert_eq!(sha256(&body), blob.digest, "blob {}", blob.digest);
    }
}

#[tokio::test]
async fn pulls_go_through_the_proxy_and_its_credentials_stay_out_of_sight() {
    let logs = LogBuffer::default();
    let _guard = logs.install(tracing::Level::DEBUG);
    let hub = TlsHub::start(241).await;
    let proxy = ConnectProxy::start(Some((USER, PASSWORD)), &[]).await;
    let berth = Berth::builder()
        .upstream_named("docker.io", &hub.url())
        .config(&hub.ca_line())
        .config(&format!("proxy = {:?}", proxy.url(Some((USER, PASSWORD)))))
        .start()
        .await;

    pull_byte_exact(&berth.url(""), &hub.image).await;

    // Registry, token realm and CDN redirect target: each reached through a tunnel, and every
    // connection the TLS fronts accepted was one of the proxy's.
    let tunnels = proxy.tunnels();
    for (authority, front) in hub.authorities().iter().zip(&hub.fronts) {
        let through = tunnels.iter().filter(|t| *t == authority).count();
        assert!(through > 0, "no tunnel to {authority}: {tunnels:?}");
        // Accepted but not yet counted can only lag behind the proxy's count, never exceed it.
        assert!(
            front.accepted() <= through,
            "{authority} was dialled directly"
        );
    }
    assert!(hub.fake.count(Role::Cdn, Kind::Blob, Method::GET) > 0);
    assert!(hub.fake.tokens_issued() > 0);

    // The credentials went to the proxy, and nowhere a person or a scraper reads.
    assert!(
        proxy
            .authorizations()
            .iter()
            .all(|a| a.starts_with("Basic "))
    );
    let encoded = proxy.authorizations()[0]
        .trim_start_matches("Basic ")
        .to_string();
    let (code, status) = berth.get_text("/_berth/status?format=json").await;
    assert_eq!(code, 200);
    assert!(
        status.contains(&format!("http://{}", proxy.addr)),
        "the status page names the proxy: {status}"
    );
    let (_, html) = berth.get_text("/_berth/status").await;
    let metrics = berth.metrics_text().await;
    let log = logs.text();
    assert!(!log.is_empty());
    for (what, text) in [
        ("log", &log),
        ("status", &status),
        ("html", &html),
        ("metrics", &metrics),
    ] {
        for secret in [PASSWORD, encoded.as_str()] {
            assert!(!text.contains(secret), "{what} shows the proxy credentials");
        }
    }
}

#[tokio::test]
async fn a_proxy_that_wants_credentials_gives_an_error_that_names_the_fix() {
    let hub = TlsHub::start(242).await;
    let proxy = ConnectProxy::start(Some((USER, PASSWORD)), &[]).await;
    let berth = Berth::builder()
        .upstream_named("docker.io", &hub.url())
        .config(&hub.ca_line())
        .config(&format!("proxy = {:?}", proxy.url(None)))
        .config("max_attempts = 1")
        .start()
        .await;
    let (status, body) = berth.get_text("/v2/library/app/manifests/1").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("407"), "{body}");
    assert!(body.contains("demands authentication"), "{body}");
    assert!(
        body.contains("write its user and password into the URL"),
        "the fix: {body}"
    );
    assert!(proxy.refused() > 0);
    assert!(proxy.tunnels().is_empty());
    assert_eq!(hub.fronts[0].accepted(), 0, "nothing reached the registry");
}

#[tokio::test]
async fn no_proxy_sends_named_hosts_direct() {
    let hub = TlsHub::start(243).await;
    let proxy = ConnectProxy::start(None, &[]).await;
    let berth = Berth::builder()
        .upstream_named("docker.io", &hub.url())
        .config(&hub.ca_line())
        .config(&format!(
            "proxy = {:?}\nno_proxy = [\"127.0.0.1\"]",
            proxy.url(None)
        ))
        .start()
        .await;
    pull_byte_exact(&berth.url(""), &hub.image).await;
    assert!(proxy.tunnels().is_empty(), "{:?}", proxy.tunnels());
    assert!(hub.fronts[0].accepted() > 0);
}

/// The redirect target of a registry that only the proxy can resolve leads into a private
/// range: refused through the proxy just as without it; listed in `trusted_hosts`, allowed.
#[tokio::test]
async fn the_address_rule_still_refuses_a_private_redirect_target_through_the_proxy() {
    let fake = FakeUpstream::start(Options {
        token_auth: false,
        ..Options::default()
    })
    .await;
    let image = images::multi_arch(244, Format::Oci);
    fake.push("library/app", "1", &image);
    // `registry.test` resolves at the proxy only; the CDN is http://127.0.0.1:<port>.
    let proxy = ConnectProxy::start(None, &[("registry.test", LOOPBACK)]).await;
    let url = format!("http://registry.test:{}", fake.registry_addr.port());
    let layer = &image.image_for("amd64").layers[0];
    let blob = format!("/v2/library/app/blobs/{}", layer.digest);

    let berth = Berth::builder()
        .upstream_named("docker.io", &url)
        .config(&format!("proxy = {:?}\nmax_attempts = 1", proxy.url(None)))
        .start()
        .await;
    let (status, _) = berth.get_text("/v2/library/app/manifests/1").await;
    assert_eq!(
        status, 200,
        "the registry itself is reached through the proxy"
    );
    let (status, body) = berth.get_text(&blob).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("non-public") || body.contains("trusted_hosts"),
        "{body}"
    );
    let cdn = fake.cdn_addr.to_string();
    assert!(
        !proxy.tunnels().contains(&cdn),
        "CONNECT to the private target was sent: {:?}",
        proxy.tunnels()
    );
    assert_eq!(fake.count(Role::Cdn, Kind::Blob, Method::GET), 0);

    let trusted = Berth::builder()
        .upstream_named("docker.io", &url)
        .config(&format!(
            "proxy = {:?}\ntrusted_hosts = [\"127.0.0.1\"]",
            proxy.url(None)
        ))
        .start()
        .await;
    let (status, body) = get_bytes(&trusted.url(&blob)).await;
    assert_eq!(status, 200);
    assert_eq!(sha256(&body), layer.digest);
    assert!(proxy.tunnels().contains(&cdn), "{:?}", proxy.tunnels());
}

/// `berth serve` as a child process with `env`: the test process's own environment stays as
/// it is. Killed on drop.
struct Served {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    dir: tempfile::TempDir,
}

impl Served {
    /// What berth wrote to stderr (its log, at debug level) so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("berth.stderr")).unwrap_or_default()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        crate::support::util::kill_child(&mut self.child);
    }
}

async fn serve_with_env(config: &str, env: &[(&str, String)]) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.toml");
    std::fs::write(&path, config).unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_berth"));
    command
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .env("BERTH_LOG", "debug")
        .stderr(std::fs::File::create(dir.path().join("berth.stderr")).unwrap());
    for name in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        command.env_remove(name);
    }
    for (name, value) in env {
        command.env(name, value);
    }
    let served = Served {
        child: command.spawn().expect("spawn berth"),
        addr,
        dir,
    };
    let v2 = format!("http://{addr}/v2/");
    let client = crate::support::inprocess::client();
    eventually("berth to answer /v2/", Duration::from_secs(20), || async {
        // Refused until berth listens: not an answer yet.
        client
            .get(&v2)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    served
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_proxy_from_the_environment_is_used_when_the_config_is_silent() {
    let hub = TlsHub::start(245).await;
    let proxy = ConnectProxy::start(Some((USER, PASSWORD)), &[]).await;
    let config = format!(
        "[upstreams.\"docker.io\"]\nurl = {:?}\n{}\n",
        hub.url(),
        hub.ca_line()
    );
    let env_proxy = proxy.url(Some((USER, PASSWORD)));
    let served = serve_with_env(&config, &[("HTTPS_PROXY", env_proxy.clone())]).await;
    pull_byte_exact(&format!("http://{}", served.addr), &hub.image).await;
    let tunnels = proxy.tunnels();
    for authority in hub.authorities() {
        assert!(tunnels.contains(&authority), "{authority}: {tunnels:?}");
    }
    assert_eq!(
        proxy.refused(),
        0,
        "the environment's credentials were sent"
    );
    // Its log names the proxy, never the credentials from the environment.
    let log = served.log();
    assert!(
        log.contains("upstream traffic goes through a proxy")
            && log.contains(&format!("http://{}", proxy.addr)),
        "{log}"
    );
    let encoded = proxy.authorizations()[0]
        .trim_start_matches("Basic ")
        .to_string();
    for secret in [PASSWORD, encoded.as_str()] {
        assert!(!log.contains(secret), "the log shows the proxy credentials");
    }
    drop(served);

    // `proxy = "none"` wins over the environment: the proxy sees nothing new.
    let before = proxy.tunnels().len();
    let config = format!("{config}proxy = \"none\"\n");
    let served = serve_with_env(&config, &[("HTTPS_PROXY", env_proxy)]).await;
    let (status, _) = get_text(&format!(
        "http://{}/v2/library/app/manifests/1",
        served.addr
    ))
    .await;
    assert_eq!(status, 200);
    assert_eq!(proxy.tunnels().len(), before);
}

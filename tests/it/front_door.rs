//! Issue 10's proof: the front door with real clients. containerd pulls over HTTPS with the
//! `hosts.toml` tree `berth containerd-hosts --ca-file` writes, then with a client certificate;
//! skopeo logs in with the credentials of the generated K3s `registries.yaml`; a client outside
//! `allow` is closed at accept (on `admin_listen` too) and logged as a count; the certificate is
//! rotated under load; slowloris, a connection flood and idle keep-alives are closed on time
//! while a real pull succeeds; connections beyond `max_connections` wait, then are refused; a
//! stuck client never keeps berth from stopping; the admin side checks its token before reading
//! a body.
//!
//! The security review's findings, one test each, on the attackers of `attackers.rs`: denied
//! sockets holding connections while allowed clients pull; denied requests with long paths and
//! the log; wrong passwords from one client while another logs in; an HTTP/2 client granting no
//! window. `flood.rs` runs them all at once.

mod attackers;
mod flood;

use rustls::pki_types::pem::PemObject as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use tokio_util::sync::CancellationToken;

use crate::support::berth::{BerthProcess, metric_sum};
use crate::support::fake_upstream::{FakeUpstream, Options};
use crate::support::images::{self, Format, Image, ImageIndex, ImageSpec};
use crate::support::inprocess::{Berth, BerthBuilder};
use crate::support::prereq::{require_root, require_tools};
use crate::support::real::{Containerd, DockerRegistry, PullPlatform, TestCa, skopeo};
use crate::support::util::{
    accept_backlog, accepted_and_read, eventually, free_port, run, wait_until,
};
use attackers::{Tally, basic, client_from, connect_from};

const REPO: &str = "team/app";
const TAG: &str = "1.0";
/// The registry name the test image lives under (served by a local docker-registry).
const REGISTRY: &str = "ghcr.io";

/// A docker-registry holding one multi-platform image as `team/app:1.0`.
fn origin(seed: u64) -> (DockerRegistry, ImageIndex) {
    let registry = DockerRegistry::start(None);
    let index = images::multi_arch(seed, Format::Oci);
    skopeo::push(&index, &format!("{}/{REPO}:{TAG}", registry.host()), None);
    (registry, index)
}

/// berth mirroring `ghcr.io` from `origin`, with a `[server]` table.
fn mirroring(origin: &DockerRegistry, server: &str) -> BerthBuilder {
    Berth::builder()
        .default_upstream(REGISTRY)
        .top_level(&format!("[server]\n{server}"))
        .upstream_named(REGISTRY, &origin.url())
}

fn tls_keys(ca: &TestCa) -> String {
    format!(
        "tls_cert_file = {:?}\ntls_key_file = {:?}\n",
        ca.cert_pem.display().to_string(),
        ca.key_pem.display().to_string()
    )
}

/// An HTTPS client trusting `ca`, optionally presenting a client certificate. A new connection
/// and a full handshake (no session resumption) per request, so each request sees the
/// certificate berth serves now.
fn https_client(ca: &TestCa, identity: Option<(&Path, &Path)>) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(&ca.ca_pem).into()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut tls = match identity {
        Some((cert, key)) => {
            let chain = vec![der(cert).into()];
            let key_pem = std::fs::read(key).unwrap();
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&key_pem).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    tls.resumption = rustls::client::Resumption::disabled();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .use_preconfigured_tls(tls)
        .tls_info(true)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

async fn https_metric(
    client: &reqwest::Client,
    berth: &BerthProcess,
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    let text = client
        .get(format!("{}/metrics", berth.https_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metric_sum(&text, name, labels)
}

fn der(pem_file: &Path) -> Vec<u8> {
    let pem = std::fs::read(pem_file).unwrap();
    rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

fn berth_cli(args: &[&str]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(args);
    let out = run(&mut cmd, Duration::from_secs(30));
    out.expect_success();
    out.stdout
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn pull(containerd: &Containerd, hosts: &Path, index: &ImageIndex) {
    let reference = format!("{REGISTRY}/{REPO}:{TAG}");
    let out = containerd.pull(&reference, hosts, PullPlatform::All);
    assert!(
        out.success,
        "pull failed:\n{}\n{}\ncontainerd log:\n{}",
        out.stdout,
        out.stderr,
        tail(&containerd.log(), 40)
    );
    assert_eq!(
        containerd.image_digest(&reference).as_deref(),
        Some(index.index.digest.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, containerd, docker-registry, skopeo: run by scripts/test"]
async fn containerd_pulls_over_https_then_with_a_client_certificate_from_generated_trees() {
    if !(require_tools(&["docker-registry", "skopeo", "containerd", "ctr"])
        && require_root("containerd mounts snapshots"))
    {
        return;
    }
    let ca = TestCa::new();
    let (origin, index) = tokio::task::block_in_place(|| origin(7100));
    let reference = format!("{REGISTRY}/{REPO}:{TAG}");

    // HTTPS: the tree from `--ca-file` trusts berth's certificate.
    let berth = mirroring(&origin, &tls_keys(&ca)).spawn_serving();
    let hosts = tempfile::tempdir().unwrap();
    let ca_file = ca.ca_pem.display().to_string();
    let config_file = berth.dir.path().join("berth.toml");
    berth_cli(&[
        "containerd-hosts",
        "--config",
        config_file.to_str().unwrap(),
        "--mirror-url",
        &berth.https_url(),
        "--ca-file",
        &ca_file,
        "--output",
        hosts.path().to_str().unwrap(),
    ]);
    let hosts_toml =
        std::fs::read_to_string(hosts.path().join(REGISTRY).join("hosts.toml")).unwrap();
    assert!(
        hosts_toml.contains(&format!("[host.\"{}\"]", berth.https_url()))
            && hosts_toml.contains(&format!("ca = {ca_file:?}")),
        "{hosts_toml}"
    );
    let containerd = tokio::task::block_in_place(Containerd::start);
    tokio::task::block_in_place(|| pull(&containerd, hosts.path(), &index));
    let client = https_client(&ca, None);
    // berth fetched the blobs: containerd pulled through it, not from `server` directly.
    assert!(
        https_metric(
            &client,
            &berth,
            "berth_upstream_requests_total",
            &[("kind", "blob")]
        )
        .await
            > 0.0,
        "containerd did not pull through berth"
    );
    drop(berth);

    // mTLS: berth requires a certificate of the client CA; the tree from `--cert-file` has one.
    let (node_cert, node_key) = ca.issue_client("node-1");
    let server = format!("{}client_ca_file = {ca_file:?}\n", tls_keys(&ca));
    let berth = mirroring(&origin, &server).spawn_serving();
    let hosts = tempfile::tempdir().unwrap();
    let config_file = berth.dir.path().join("berth.toml");
    berth_cli(&[
        "containerd-hosts",
        "--config",
        config_file.to_str().unwrap(),
        "--mirror-url",
        &berth.https_url(),
        "--ca-file",
        &ca_file,
        "--cert-file",
        node_cert.to_str().unwrap(),
        "--key-file",
        node_key.to_str().unwrap(),
        "--output",
        hosts.path().to_str().unwrap(),
    ]);
    // Without a client certificate the handshake fails; with one, berth answers.
    let anonymous = https_client(&ca, None)
        .get(format!("{}/v2/", berth.https_url()))
        .send()
        .await;
    assert!(
        anonymous.is_err(),
        "served without a client certificate: {anonymous:?}"
    );
    let client = https_client(&ca, Some((&node_cert, &node_key)));
    let answer = client
        .get(format!("{}/v2/", berth.https_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    tokio::task::block_in_place(|| {
        containerd.forget(&reference);
        pull(&containerd, hosts.path(), &index);
    });
    assert!(
        https_metric(
            &client,
            &berth,
            "berth_upstream_requests_total",
            &[("kind", "blob")]
        )
        .await
            > 0.0,
        "containerd did not pull through the mTLS berth"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs docker-registry, skopeo: run by scripts/test"]
async fn skopeo_logs_in_with_the_credentials_of_the_generated_registries_yaml() {
    if !require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let ca = TestCa::new();
    let (origin, index) = tokio::task::block_in_place(|| origin(7200));
    let secrets = tempfile::tempdir().unwrap();
    let users = secrets.path().join("users");
    let hash = bcrypt::hash("pull-s3cret", 5).unwrap();
    std::fs::write(&users, format!("# nodes\nnode:{hash}\n")).unwrap();
    let server = format!(
        "{}users_file = {:?}\n",
        tls_keys(&ca),
        users.display().to_string()
    );
    let berth = mirroring(&origin, &server).spawn_serving();

    // /v2/ asks for credentials the way registries do.
    let client = https_client(&ca, None);
    let base = format!("{}/v2/", berth.https_url());
    let challenge = client.get(&base).send().await.unwrap();
    assert_eq!(challenge.status(), 401);
    assert_eq!(
        challenge.headers()["www-authenticate"],
        "Basic realm=\"berth\""
    );
    let body: serde_json::Value = challenge.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");
    let wrong = client
        .get(&base)
        .basic_auth("node", Some("guess"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    // The K3s file for this berth: path-prefix endpoint, the CA, the node's login.
    let config_file = berth.dir.path().join("berth.toml");
    let yaml = berth_cli(&[
        "k3s-registries",
        "--config",
        config_file.to_str().unwrap(),
        "--mirror-url",
        &berth.https_url(),
        "--path-prefix",
        "--ca-file",
        ca.ca_pem.to_str().unwrap(),
        "--username",
        "node",
        "--password",
        "pull-s3cret",
    ]);
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&yaml).unwrap();
    let endpoint = doc["mirrors"][REGISTRY]["endpoint"][0].as_str().unwrap();
    let host = berth.host();
    let login = &doc["configs"][host.as_str()];
    let (user, password) = (
        login["auth"]["username"].as_str().unwrap(),
        login["auth"]["password"].as_str().unwrap(),
    );
    let ca_file = PathBuf::from(login["tls"]["ca_file"].as_str().unwrap());
    // skopeo names the registry in the path, as the endpoint does (`<mirror>/v2/<registry>`).
    let prefix = endpoint
        .strip_prefix(&format!("{}/v2/", berth.https_url()))
        .unwrap_or_else(|| panic!("endpoint {endpoint} has no /v2/<registry> path"));
    let source = format!("docker://{host}/{prefix}/{REPO}:{TAG}");
    let cert_dir = tempfile::tempdir().unwrap();
    std::fs::copy(&ca_file, cert_dir.path().join("ca.crt")).unwrap();
    let layout = tempfile::tempdir().unwrap();
    let copy = |creds: Option<String>| {
        let mut cmd = Command::new("skopeo");
        cmd.args(["--insecure-policy", "copy", "--all", "--retry-times", "0"])
            .arg("--src-cert-dir")
            .arg(cert_dir.path());
        if let Some(creds) = creds {
            cmd.arg("--src-creds").arg(creds);
        }
        cmd.arg(&source)
            .arg(format!("oci:{}:pulled", layout.path().display()));
        run(&mut cmd, Duration::from_secs(120))
    };
    let refused = tokio::task::block_in_place(|| copy(None));
    assert!(!refused.success, "skopeo pulled without credentials");
    let text = format!("{}{}", refused.stdout, refused.stderr).to_lowercase();
    assert!(
        text.contains("unauthorized") || text.contains("authentication required"),
        "{text}"
    );
    let pulled = tokio::task::block_in_place(|| copy(Some(format!("{user}:{password}"))));
    pulled.expect_success();
    assert_eq!(
        images::layout_digest(layout.path(), "pulled").as_deref(),
        Some(index.index.digest.as_str())
    );
}

/// A client outside `allow` is closed right after accept (no TLS, no HTTP: no answer at all)
/// on every path; the log says so once per interval, as a count, naming the client.
#[tokio::test]
async fn a_client_outside_allow_is_closed_at_accept_and_logged_as_a_count() {
    let berth = Berth::builder()
        .top_level("[server]\nallow = [\"127.0.0.3/32\"]")
        .spawn_serving();
    let from = |ip: &str| {
        reqwest::Client::builder()
            .no_proxy()
            .local_address(ip.parse::<IpAddr>().unwrap())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    };
    for path in [
        "/v2/",
        "/v2/library/busybox/manifests/latest",
        "/metrics",
        "/healthz",
    ] {
        let answer = from("127.0.0.2")
            .get(format!("{}{path}", berth.url()))
            .send()
            .await;
        assert!(answer.is_err(), "{path}: answered {answer:?}");
    }
    for path in ["/v2/", "/healthz", "/metrics"] {
        let answer = from("127.0.0.3")
            .get(format!("{}{path}", berth.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{path}");
    }
    let log = berth.stderr();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("outside [server] allow"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "one line per interval, not per connection:\n{}",
        tail(&log, 20)
    );
    assert!(
        lines[0].contains("127.0.0.2") && lines[0].contains("refused=1"),
        "{}",
        lines[0]
    );
}

/// berth mirroring `docker.io` from `fake`, which holds `library/app:1` (an 8 MiB layer).
async fn fake_with_image(seed: u64) -> (FakeUpstream, Image) {
    let fake = FakeUpstream::start(Options::plain()).await;
    let image = images::image_with_layers(
        &ImageSpec::new(seed, Format::Oci),
        vec![images::big_blob(8, seed)],
    );
    fake.push("library/app", "1", &image);
    (fake, image)
}

const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
const OUTSIDER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
const NEIGHBOUR: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));

/// The review's first finding: 64 keep-alive sockets from outside `allow` (with
/// `max_connections = 64`) used to hold every slot, each kept alive by its 403s, and allowed
/// nodes got nothing. Now they are closed at accept, so they hold none: while they keep
/// connecting and sending, an allowed client's pulls all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_sockets_holding_connections_leave_every_slot_to_allowed_pulls() {
    let (fake, image) = fake_with_image(7401).await;
    let berth = Berth::builder()
        .upstream(&fake)
        .top_level(
            "[server]\nallow = [\"127.0.0.1/32\"]\nmax_connections = 64\nheader_timeout = \"2s\"\nidle_timeout = \"60s\"",
        );
    let berth = tokio::task::block_in_place(|| berth.spawn());
    let client = client_from(LOCAL);
    attackers::pull(&client, &berth.url(), "library/app", "1", &image, None)
        .await
        .expect("the first (cold) pull");

    let stop = CancellationToken::new();
    let tally = Arc::new(Tally::default());
    let attack = tokio::spawn(attackers::run(
        attackers::Attack::DeniedHolders {
            from: OUTSIDER,
            sockets: 64,
            pace: Duration::from_millis(500),
        },
        berth.addr,
        200,
        stop.clone(),
        tally.clone(),
    ));
    // Every socket has tried once: before the fix each now held a slot.
    eventually(
        "every denied socket to have sent its first request",
        Duration::from_secs(30),
        || async {
            let tried = Tally::get(&tally.attempts);
            (tried >= 64).then_some(()).ok_or(tally.summary())
        },
    )
    .await;
    let mut pulled = 0;
    for n in 0..10 {
        let fresh = client_from(LOCAL);
        let done = attackers::pull(&fresh, &berth.url(), "library/app", "1", &image, None).await;
        if let Err(e) = done {
            panic!(
                "pull {n} failed while denied sockets attacked: {e}\nattack: {}\n{}",
                tally.summary(),
                tail(&berth.stderr(), 20)
            );
        }
        pulled += 1;
    }
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), attack)
        .await
        .expect("the attackers stop")
        .unwrap();
    assert_eq!(pulled, 10);
    assert_eq!(
        Tally::get(&tally.denied) + Tally::get(&tally.ok),
        0,
        "a denied socket got an answer: {}",
        tally.summary()
    );
    eprintln!("denied holders: {}", tally.summary());
}

/// Denied requests used to log a WARN line each, with their raw path: 500 requests with
/// 60 KB paths added 29 MB of log. Now none of what they send reaches the log, and they add
/// one line per interval however many they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_requests_with_long_paths_do_not_grow_the_log() {
    let berth = Berth::builder()
        .top_level("[server]\nallow = [\"127.0.0.1/32\"]")
        .spawn_serving();
    let before = berth.stderr().len();
    let tally = Arc::new(Tally::default());
    attackers::run(
        attackers::Attack::LongPaths {
            from: OUTSIDER,
            len: 60_000,
            fill: 'd',
            pace: Duration::ZERO,
        },
        berth.addr,
        500,
        CancellationToken::new(),
        tally.clone(),
    )
    .await;
    let log = berth.stderr();
    let grown = log.len() - before;
    assert!(
        grown < 16 * 1024,
        "500 denied requests added {grown} bytes of log ({})",
        tally.summary()
    );
    assert!(
        !log.contains(&"d".repeat(1000)),
        "a denied path reached the log"
    );
    assert_eq!(Tally::get(&tally.attempts), 500, "{}", tally.summary());
    assert_eq!(Tally::get(&tally.denied), 0, "{}", tally.summary());
}

/// `admin_listen` is held to `allow` as the main listener is: a client outside it used to read
/// `/_berth/status` there.
#[tokio::test]
async fn admin_listen_closes_a_client_outside_allow() {
    let admin_port = free_port();
    let berth = Berth::builder()
        .top_level(&format!(
            "[server]\nallow = [\"127.0.0.1/32\"]\nadmin_listen = \"127.0.0.1:{admin_port}\""
        ))
        .spawn_serving();
    let url = format!("http://127.0.0.1:{admin_port}/_berth/status?format=json");
    let allowed = client_from(LOCAL).get(&url).send().await.unwrap();
    assert_eq!(allowed.status(), 200);
    let outsider = client_from(OUTSIDER).get(&url).send().await;
    assert!(
        outsider.is_err(),
        "a client outside allow read the status page: {:?}",
        outsider.map(|a| a.status())
    );
    assert!(
        berth.stderr().contains("outside [server] allow"),
        "{}",
        tail(&berth.stderr(), 10)
    );
}

/// The review's second finding: 300 wrong passwords at once made a real first login take
/// 9.9 s (an unbounded queue in front of two bcrypt turns). Now one client's guesses take two
/// places in the queue and, past 10 failures, none: a login from another client goes through
/// while they run, and the guesser is answered 429 `TOOMANYREQUESTS` with `Retry-After`
/// without a bcrypt run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_from_one_client_neither_starve_a_login_nor_get_each_checked() {
    const GUESSES: usize = 300;
    let secrets = tempfile::tempdir().unwrap();
    let users = secrets.path().join("users");
    // The recommended cost: 300 checks of it take over half a minute on two turns.
    let hash = bcrypt::hash("pull-s3cret", 12).unwrap();
    std::fs::write(&users, format!("node:{hash}\n")).unwrap();
    let berth = Berth::builder()
        .top_level(&format!(
            "[server]\nusers_file = {:?}",
            users.display().to_string()
        ))
        .spawn_serving();
    let tally = Arc::new(Tally::default());
    let guesser = tokio::spawn(attackers::run(
        attackers::Attack::WrongPasswords {
            from: NEIGHBOUR,
            user: "node".into(),
            per_wave: GUESSES,
            pace: Duration::ZERO,
        },
        berth.addr,
        1,
        CancellationToken::new(),
        tally.clone(),
    ));
    // Once berth is answering the guesses, the rest are queued (or, now, refused).
    eventually(
        "berth to answer a first guess",
        Duration::from_secs(30),
        || async {
            let answered = Tally::get(&tally.unauthorized) + Tally::get(&tally.too_many);
            (answered > 0).then_some(()).ok_or(tally.summary())
        },
    )
    .await;
    let login = client_from(LOCAL)
        .get(format!("{}/v2/", berth.url()))
        .header("authorization", basic("node", "pull-s3cret"))
        .send();
    // Generous: a few bcrypt runs. Behind the 300 guesses it took over 30 s.
    let login = tokio::time::timeout(Duration::from_secs(15), login)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the login waited behind the guesses for 15 s: {}",
                tally.summary()
            )
        })
        .unwrap();
    assert_eq!(login.status(), 200);
    tokio::time::timeout(Duration::from_secs(120), guesser)
        .await
        .expect("the guesses to be answered")
        .unwrap();
    assert_eq!(Tally::get(&tally.attempts), GUESSES as u64);
    // More waves of guesses, one after the other: the failures add up to the throttle.
    attackers::run(
        attackers::Attack::WrongPasswords {
            from: NEIGHBOUR,
            user: "node".into(),
            per_wave: 5,
            pace: Duration::ZERO,
        },
        berth.addr,
        20,
        CancellationToken::new(),
        tally.clone(),
    )
    .await;
    // Checked: at most 10 failures, plus the two in flight when the 10th came back.
    let checked = Tally::get(&tally.unauthorized);
    assert!(
        checked <= 12 && Tally::get(&tally.too_many) >= (GUESSES as u64) + 100 - 12,
        "{}",
        tally.summary()
    );
    // Throttled now, the right password included; told how long to wait, as an OCI error.
    let throttled = client_from(NEIGHBOUR)
        .get(format!("{}/v2/", berth.url()))
        .header("authorization", basic("node", "other-guess"))
        .send()
        .await
        .unwrap();
    assert_eq!(throttled.status(), 429);
    let wait: u64 = throttled.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "Retry-After: {wait}");
    let body: serde_json::Value = throttled.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "TOOMANYREQUESTS", "{body}");
    // The other client is not held to the guesser's failures.
    let again = client_from(LOCAL)
        .get(format!("{}/v2/", berth.url()))
        .header("authorization", basic("node", "pull-s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
}

/// The review's third finding: an HTTP/2 client that grants a stream no flow-control window
/// held the stream and its connection for 100 s with `idle_timeout = 30s` (hyper just stops
/// asking the body for data; no write ever blocks). Now the connection closes once the body
/// has waited `idle_timeout` for hyper to take more. An HTTP/2 connection with nothing to do
/// closes at `idle_timeout` too: the keep-alive pings do not keep it open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_the_client_grants_no_window_is_closed_at_idle_timeout() {
    let idle_timeout = Duration::from_secs(2);
    let (fake, image) = fake_with_image(7402).await;
    let berth = Berth::builder()
        .upstream(&fake)
        .top_level("[server]\nidle_timeout = \"2s\"\nheader_timeout = \"2s\"");
    let berth = tokio::task::block_in_place(|| berth.spawn());
    // Warm: the layer is in berth's cache.
    attackers::pull(
        &client_from(LOCAL),
        &berth.url(),
        "library/app",
        "1",
        &image,
        None,
    )
    .await
    .unwrap();
    let layer = &image.layers[0];
    let tally = Tally::default();
    let limit = idle_timeout + Duration::from_secs(15);
    let closed = attackers::stalled_h2(
        LOCAL,
        berth.addr,
        &format!("/v2/library/app/blobs/{}", layer.digest),
        None,
        1,
        limit,
        &tally,
    )
    .await
    .expect("an HTTP/2 connection to berth");
    assert_eq!(Tally::get(&tally.ok), 1, "{}", tally.summary());
    assert!(
        closed < limit,
        "a stalled stream kept its connection open for {limit:?} (idle_timeout {idle_timeout:?})"
    );

    // An HTTP/2 connection without requests: closed at idle_timeout, pings or not.
    let tcp = connect_from(LOCAL, berth.addr).await.unwrap();
    let (_send, connection) =
        hyper::client::conn::http2::handshake::<_, _, http_body_util::Empty<bytes::Bytes>>(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
    let idle = tokio::time::timeout(limit, connection).await;
    assert!(
        idle.is_ok(),
        "an idle HTTP/2 connection stayed open for {limit:?}"
    );
    eprintln!("stalled HTTP/2 stream closed {closed:?} after its response head");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_reaches_new_connections_without_a_failed_request() {
    let ca = TestCa::new();
    let tls = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (tls.path().join("tls.crt"), tls.path().join("tls.key"));
    std::fs::copy(&ca.cert_pem, &cert_file).unwrap();
    std::fs::copy(&ca.key_pem, &key_file).unwrap();
    let berth = Berth::builder()
        .top_level(&format!(
            "[server]\ntls_cert_file = {:?}\ntls_key_file = {:?}",
            cert_file.display().to_string(),
            key_file.display().to_string()
        ))
        .spawn_serving();
    let (new_cert, new_key) = ca.issue_server("rotated");
    let (old_der, new_der) = (der(&ca.cert_pem), der(&new_cert));

    // Rotate as a renewal job does, one file after the other (each replaced by a rename); until
    // berth has seen the certificate and key not match, the key stays old.
    let old_served = Arc::new(AtomicBool::new(false));
    let rotation = {
        let (cert_file, key_file) = (cert_file.clone(), key_file.clone());
        let (old_served, log) = (old_served.clone(), berth.stderr_file().to_path_buf());
        tokio::spawn(async move {
            eventually(
                "a request served with the old certificate",
                Duration::from_secs(30),
                || async { old_served.load(Ordering::SeqCst) },
            )
            .await;
            let staged = cert_file.with_extension("new");
            std::fs::copy(&new_cert, &staged).unwrap();
            std::fs::rename(&staged, &cert_file).unwrap();
            eventually(
                "berth to notice the mismatched pair",
                Duration::from_secs(30),
                || async {
                    std::fs::read_to_string(&log)
                        .unwrap_or_default()
                        .contains(MISMATCH_LOGGED)
                },
            )
            .await;
            std::fs::copy(&new_key, &staged).unwrap();
            std::fs::rename(&staged, &key_file).unwrap();
        })
    };
    let client = https_client(&ca, None);
    let url = format!("{}/v2/", berth.https_url());
    let (mut served, mut failed, mut old_seen, mut new_seen) = (0, Vec::new(), 0, 0);
    let started = Instant::now();
    // Requests on fresh connections until the new certificate has served 20 of them (≤ 60 s,
    // ≤ 1200 requests).
    for _ in 0..1200 {
        if new_seen >= 20 || started.elapsed() > Duration::from_secs(60) {
            break;
        }
        match client.get(&url).send().await {
            Ok(answer) if answer.status() == 200 => {
                served += 1;
                let peer = answer
                    .extensions()
                    .get::<reqwest::tls::TlsInfo>()
                    .and_then(|info| info.peer_certificate())
                    .map(<[u8]>::to_vec);
                match peer {
                    Some(der) if der == new_der => new_seen += 1,
                    Some(der) if der == old_der => {
                        assert_eq!(new_seen, 0, "the old certificate came back");
                        old_seen += 1;
                        old_served.store(true, Ordering::SeqCst);
                    }
                    other => panic!("unexpected peer certificate: {other:?}"),
                }
            }
            Ok(answer) => failed.push(format!("status {}", answer.status())),
            Err(e) => failed.push(format!("{e:?}")),
        }
        // The pace of the client load the rotation happens under (a steady stream of fresh
        // connections), not a wait for anything.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rotation.await.unwrap();
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(
        old_seen > 0 && new_seen >= 20,
        "old {old_seen}, new {new_seen} of {served}"
    );
    let log = berth.stderr();
    assert!(log.contains(MISMATCH_LOGGED), "{}", tail(&log, 20));
    assert!(
        log.contains("TLS certificate reloaded"),
        "{}",
        tail(&log, 20)
    );
}

/// berth's log line when the certificate and key on disk do not match.
const MISMATCH_LOGGED: &str = "do not load; still serving the previous certificate";

/// How long after `since` the peer closed `stream` (read returns 0 or an error), if within `limit`.
async fn closed_after(stream: &mut TcpStream, since: Instant, limit: Duration) -> Option<Duration> {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::from_std(since + limit);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(since.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Sends `GET /healthz` and reads the response (keep-alive).
async fn healthz(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: berth\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"ok\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("no answer within 10 s")
            .unwrap();
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attack {
    /// Connects and sends nothing.
    Flood,
    /// Starts a request head and sends one more byte every 250 ms.
    Slowloris,
    /// One request, then a keep-alive connection left idle.
    Idle,
}

/// One attacking connection: how long until berth closed it (from connecting, or for `Idle`
/// from the end of its one response). Counts itself in `in_place` once it is attacking.
async fn attack(
    addr: SocketAddr,
    kind: Attack,
    in_place: Arc<AtomicUsize>,
) -> (Attack, Option<Duration>) {
    let limit = Duration::from_secs(30);
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let since = Instant::now();
    let closed = match kind {
        Attack::Flood => {
            in_place.fetch_add(1, Ordering::SeqCst);
            closed_after(&mut stream, since, limit).await
        }
        Attack::Idle => {
            healthz(&mut stream).await;
            in_place.fetch_add(1, Ordering::SeqCst);
            closed_after(&mut stream, Instant::now(), limit).await
        }
        Attack::Slowloris => {
            let (mut read, mut write) = stream.into_split();
            let trickle = tokio::spawn(async move {
                let started = write
                    .write_all(b"GET /v2/ HTTP/1.1\r\nHost: berth\r\n")
                    .await;
                in_place.fetch_add(1, Ordering::SeqCst);
                if started.is_err() {
                    return;
                }
                for _ in 0..120 {
                    // The slowloris client's pause between bytes: the attack itself.
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    if write.write_all(b"X").await.is_err() {
                        return;
                    }
                }
            });
            let mut buf = [0u8; 1024];
            let deadline = tokio::time::Instant::from_std(since + limit);
            let closed = loop {
                match tokio::time::timeout_at(deadline, read.read(&mut buf)).await {
                    Err(_) => break None,
                    Ok(Ok(0)) | Ok(Err(_)) => break Some(since.elapsed()),
                    Ok(Ok(_)) => {}
                }
            };
            trickle.abort();
            closed
        }
    };
    (kind, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs docker-registry, skopeo: run by scripts/test"]
async fn slowloris_a_connection_flood_and_idle_clients_are_closed_on_time_while_a_pull_succeeds() {
    if !require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    const FLOOD: usize = 300;
    const SLOWLORIS: usize = 40;
    const IDLE: usize = 20;
    let header_timeout = Duration::from_secs(2);
    let idle_timeout = Duration::from_secs(5);
    let (origin, index) = tokio::task::block_in_place(|| origin(7300));
    // One address (127.0.0.1) plays every attacker and the puller here: the per-client cap,
    // which would reset most of them at accept, is raised to let the timeouts be tested.
    let berth = mirroring(
        &origin,
        "header_timeout = \"2s\"\nidle_timeout = \"5s\"\nmax_connections = 1024\n\
         max_connections_per_client = 1024",
    )
    .spawn_serving();
    let addr = berth.addr;
    let mut attackers = tokio::task::JoinSet::new();
    let in_place = Arc::new(AtomicUsize::new(0));
    for (kind, count) in [
        (Attack::Flood, FLOOD),
        (Attack::Slowloris, SLOWLORIS),
        (Attack::Idle, IDLE),
    ] {
        for _ in 0..count {
            attackers.spawn(attack(addr, kind, in_place.clone()));
        }
    }
    // A real client pulls the whole image (index, manifests, blobs) during the attack, once
    // every attacking connection is in place.
    eventually(
        "every attacking connection in place",
        Duration::from_secs(30),
        || async {
            let n = in_place.load(Ordering::SeqCst);
            (n == FLOOD + SLOWLORIS + IDLE)
                .then_some(())
                .ok_or(format!("{n} in place"))
        },
    )
    .await;
    let layout = tempfile::tempdir().unwrap();
    let pull_started = Instant::now();
    let pulled = tokio::task::block_in_place(|| {
        skopeo::pull_to_layout(
            &format!("{}/{REGISTRY}/{REPO}:{TAG}", berth.host()),
            layout.path(),
            "pulled",
        )
    });
    let pull_took = pull_started.elapsed();
    pulled.expect_success();
    assert_eq!(
        images::layout_digest(layout.path(), "pulled").as_deref(),
        Some(index.index.digest.as_str())
    );
    let slack = Duration::from_millis(1500);
    let mut worst = std::collections::BTreeMap::<&str, Duration>::new();
    while let Some(result) = attackers.join_next().await {
        let (kind, closed) = result.unwrap();
        let closed = closed.unwrap_or_else(|| panic!("a {kind:?} connection was never closed"));
        let (name, deadline) = match kind {
            Attack::Flood => ("flood", header_timeout),
            Attack::Slowloris => ("slowloris", header_timeout),
            Attack::Idle => ("idle", idle_timeout),
        };
        assert!(
            closed <= deadline + slack,
            "{name} closed after {closed:?}, deadline {deadline:?}"
        );
        if kind == Attack::Idle {
            // Idle keep-alive is held to idle_timeout, not cut at header_timeout.
            assert!(
                closed + slack >= idle_timeout,
                "idle closed after {closed:?}"
            );
        }
        let entry = worst.entry(name).or_default();
        *entry = (*entry).max(closed);
    }
    eprintln!(
        "front door under attack: {FLOOD} flood + {SLOWLORIS} slowloris + {IDLE} idle connections; \
         pull took {pull_took:?}; latest closes: {worst:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_connections_new_connections_wait_then_are_refused() {
    let berth = Berth::builder()
        .top_level("[server]\nmax_connections = 4\nheader_timeout = \"1s\"\nidle_timeout = \"60s\"")
        .spawn_serving();
    // Four keep-alive clients take every slot.
    let mut holders = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(berth.addr).await.unwrap();
        assert!(healthz(&mut stream).await.starts_with("HTTP/1.1 200"));
        holders.push(stream);
    }
    // A fifth is accepted by the kernel, waits for a slot (≈ header_timeout), then is closed
    // without an answer.
    let mut fifth = TcpStream::connect(berth.addr).await.unwrap();
    let started = Instant::now();
    fifth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: berth\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), fifth.read_to_end(&mut answer))
        .await
        .expect("the waiting connection was never closed");
    let waited = started.elapsed();
    assert!(
        read.is_err() || answer.is_empty(),
        "served: {}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
    // A connection waiting when a slot frees up is served.
    let mut sixth = TcpStream::connect(berth.addr).await.unwrap();
    let request = tokio::spawn(async move {
        let response = healthz(&mut sixth).await;
        (response, sixth)
    });
    // Free a slot once berth has accepted the sixth (connected before, so out of the accept
    // queue means accepted): it is waiting for a slot, its request unread.
    eventually(
        "berth to accept the sixth connection",
        Duration::from_secs(10),
        || async { accept_backlog(berth.addr) == Some(0) },
    )
    .await;
    drop(holders.pop());
    let (response, _sixth) = request.await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        berth
            .stderr()
            .contains("connection refused: server.max_connections are busy"),
        "{}",
        tail(&berth.stderr(), 20)
    );
}

#[test]
fn a_stuck_client_does_not_keep_berth_from_stopping() {
    use std::io::Write;
    let mut berth = Berth::builder()
        .top_level("[server]\nheader_timeout = \"5m\"\nidle_timeout = \"5m\"")
        .spawn_serving();
    // Half a request head, never finished: graceful shutdown cannot wait for it.
    let mut stuck = std::net::TcpStream::connect(berth.addr).unwrap();
    stuck
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: berth\r\nX-Wait: ")
        .unwrap();
    wait_until(
        "berth to accept the stuck connection and read its half head",
        Duration::from_secs(10),
        || accepted_and_read(berth.addr, stuck.local_addr().unwrap()),
    );
    let took = berth
        .terminate(Duration::from_secs(40))
        .unwrap_or_else(|| panic!("berth did not stop:\n{}", tail(&berth.stderr(), 20)));
    // The connection drain deadline is 10 s; fills are drained after it.
    assert!(took < Duration::from_secs(25), "stopping took {took:?}");
    assert!(
        berth.stderr().contains("closing them"),
        "{}",
        tail(&berth.stderr(), 20)
    );
    eprintln!("berth stopped {took:?} after SIGTERM with a stuck client");
}

#[tokio::test]
async fn admin_endpoints_check_the_token_before_the_body_and_live_on_admin_listen() {
    let admin_port = free_port();
    let token = "0123456789abcdef0123";
    let berth = Berth::builder()
        .top_level(&format!(
            "admin_token = {token:?}\n[server]\nadmin_listen = \"{admin_port}\""
        ))
        .spawn();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    // Not on the main listener any more.
    let main = client
        .get(format!("{}/_berth/pins", berth.url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(main.status(), 404);
    let listed = client
        .get(format!("http://{admin}/_berth/pins"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    let registry = client
        .get(format!("http://{admin}/v2/"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        registry.status(),
        404,
        "the registry API is not on the admin listener"
    );

    // A wrong token is refused right after the head: the 50 MB body is never waited for.
    let mut stream = TcpStream::connect(admin).await.unwrap();
    stream
        .write_all(
            b"PUT /_berth/pins/base HTTP/1.1\r\nHost: berth\r\nAuthorization: Bearer wrong\r\n\
              Content-Type: application/json\r\nContent-Length: 50000000\r\n\r\n{\"manif",
        )
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("no answer before the body was sent")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");

    // With the token, a body over the limit is cut off with 413.
    let big = format!(
        "{{\"manifests\":[{}]}}",
        vec![format!("\"sha256:{}\"", "a".repeat(64)); 20_000].join(",")
    );
    let refused = client
        .put(format!("http://{admin}/_berth/pins/base"))
        .bearer_auth(token)
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 413);
}

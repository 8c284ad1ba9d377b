//! Several berth replicas on one bucket (s3s-fs) fetch a cold blob from the upstream once for
//! all of them: one leads, the others stream its fill; a leader killed mid-fill leaves correct
//! bodies, no partial object and no stale lease.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::support::berth::BerthProcess;
use crate::support::fake_upstream::{AfterStall, FakeUpstream, Fault, Kind, Options};
use crate::support::images::{self, Blob, Format};
use crate::support::inprocess::{Berth, BerthBuilder, client};
use crate::support::prereq::require_tools;
use crate::support::real::S3Server;
use crate::support::real::s3::TOOL;
use crate::support::util::eventually;

const REPO: &str = "library/fleet";

/// A replica of the fleet: advertises its own URL, stores in the shared bucket.
fn replica(fake: &FakeUpstream, s3: &S3Server) -> BerthBuilder {
    Berth::builder()
        .default_upstream("docker.io")
        .top_level("advertise_url = \"@SELF@\"")
        .top_level(&s3.store_toml(Some("fleet")))
        .upstream(fake)
}

/// GETs the blob from `base`; the body's sha256 digest (or the error) and its length.
async fn pull(base: String, blob_digest: String) -> Result<(String, u64), String> {
    use sha2::Digest as _;
    let response = client()
        .get(format!("{base}/v2/{REPO}/blobs/{blob_digest}"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    let mut hasher = sha2::Sha256::new();
    let mut len = 0u64;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        len += chunk.len() as u64;
        hasher.update(&chunk);
    }
    Ok((format!("sha256:{}", hex::encode(hasher.finalize())), len))
}

/// Bytes of the running fill of `digest` at `replica` (`/_berth/status`), 0 if none runs.
fn fill_bytes(replica: &BerthProcess, digest: &str) -> u64 {
    let status = replica.status_json();
    status["fills"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["digest"] == digest)
        .and_then(|f| f["bytes"].as_u64())
        .unwrap_or(0)
}

fn objects_under(s3: &S3Server, prefix: &str) -> Vec<String> {
    let root = s3.object_file(prefix);
    let mut found = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                found.push(path.strip_prefix(&root).unwrap().display().to_string());
            }
        }
    }
    found
}

async fn setup(mib: usize) -> (S3Server, FakeUpstream, Blob) {
    require_tools(&[TOOL]);
    let s3 = S3Server::start("berth-fleet");
    let fake = FakeUpstream::start(Options::plain()).await;
    let layer = images::big_blob(mib, 31);
    let image = images::image_with_layers(
        &images::ImageSpec::new(31, Format::Oci),
        vec![layer.clone()],
    );
    fake.push(REPO, "v1", &image);
    (s3, fake, layer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the s3s-fs S3 server: run by scripts/test"]
async fn three_replicas_fetch_a_cold_blob_from_the_upstream_once() {
    let (s3, fake, layer) = setup(120).await;
    let replicas: Vec<BerthProcess> = (0..3).map(|_| replica(&fake, &s3).spawn()).collect();
    let bases: Vec<String> = replicas.iter().map(|r| r.url()).collect();

    let barrier = Arc::new(tokio::sync::Barrier::new(30));
    let clients: Vec<_> = (0..30)
        .map(|i| {
            let (base, digest, barrier) =
                (bases[i % 3].clone(), layer.digest.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                pull(base, digest).await
            })
        })
        .collect();
    for client in clients {
        let (digest, len) = client.await.unwrap().expect("a whole body");
        assert_eq!(
            (digest.as_str(), len),
            (layer.digest.as_str(), layer.size())
        );
    }
    let sent = fake.bytes_sent(&layer.digest);
    let logs: String = replicas
        .iter()
        .map(|r| {
            r.stderr()
                .lines()
                .filter(|l| l.contains("lease") || l.contains("leader") || l.contains("blob fill"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect::<Vec<_>>()
        .join("\n---\n");
    assert!(
        sent <= layer.size() + layer.size() / 20,
        "the upstream sent {sent} bytes for a {} byte blob: one fetch for the fleet\n{logs}",
        layer.size()
    );
    // One object, and the lease is gone once the leader finished.
    eventually(
        "the lease to be released",
        Duration::from_secs(30),
        || async { objects_under(&s3, "fleet/fills").is_empty() },
    )
    .await;
    assert_eq!(
        objects_under(&s3, "fleet/blobs"),
        [format!("sha256/{}", layer.hex())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the s3s-fs S3 server: run by scripts/test"]
async fn a_leader_killed_mid_fill_leaves_correct_bodies_and_no_stale_lease() {
    let (s3, fake, layer) = setup(40).await;
    // The first upstream transfer pauses at half the blob: the moment the leader is killed.
    let half = layer.size() / 2;
    fake.inject(
        Fault::stall(half, Duration::from_secs(8), AfterStall::Continue)
            .kind(Kind::Blob)
            .times(1),
    );
    let mut leader = replica(&fake, &s3).spawn();
    let followers: Vec<BerthProcess> = (0..2).map(|_| replica(&fake, &s3).spawn()).collect();

    let first = tokio::spawn(pull(leader.url(), layer.digest.clone()));
    // The leader holds the lease once its upstream transfer is under way.
    eventually("the leader's lease", Duration::from_secs(20), || async {
        !objects_under(&s3, "fleet/fills").is_empty()
    })
    .await;
    let clients: Vec<_> = followers
        .iter()
        .flat_map(|f| (0..3).map(move |_| f.url()))
        .map(|base| tokio::spawn(pull(base, layer.digest.clone())))
        .collect();
    eventually(
        "half the blob upstream",
        Duration::from_secs(20),
        || async { fake.bytes_sent(&layer.digest) >= half },
    )
    .await;
    // Once both followers are streaming from the leader (their own fills of the blob have
    // bytes, which only the leader can have sent them: the upstream is paused), kill it.
    eventually(
        "both followers streaming from the leader",
        Duration::from_secs(20),
        || async {
            let streaming = followers
                .iter()
                .filter(|f| fill_bytes(f, &layer.digest) > 0)
                .count();
            (streaming == followers.len()).then_some(()).ok_or(format!(
                "{streaming} of {} followers have bytes of the fill",
                followers.len()
            ))
        },
    )
    .await;
    leader.kill_9();
    let killed = Instant::now();

    for client in clients {
        let (digest, len) = client.await.unwrap().expect("a whole body from a follower");
        assert_eq!(
            (digest.as_str(), len),
            (layer.digest.as_str(), layer.size())
        );
    }
    assert!(
        killed.elapsed() < Duration::from_secs(60),
        "followers finished within a bounded time"
    );
    assert!(
        first.await.unwrap().is_err(),
        "the killed leader's client got no whole body"
    );
    eventually("the followers' upload", Duration::from_secs(30), || async {
        objects_under(&s3, "fleet/blobs") == [format!("sha256/{}", layer.hex())]
    })
    .await;
    let stored =
        std::fs::read(s3.object_file(&format!("fleet/blobs/sha256/{}", layer.hex()))).unwrap();
    assert_eq!(
        crate::support::inprocess::sha256(&stored),
        layer.digest,
        "no partial object"
    );
    eventually("no stale lease", Duration::from_secs(30), || async {
        objects_under(&s3, "fleet/fills").is_empty()
    })
    .await;
}

/// Replicas whose front doors serve HTTPS with a private CA's certificate: the fleet's client
/// takes the front door's trust and certificate, or the replica refuses to start.
mod private_ca {
    use std::path::Path;
    use std::time::Duration;

    use futures::StreamExt;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    use super::{REPO, objects_under, setup};
    use crate::support::fake_upstream::{AfterStall, FakeUpstream, Fault, Kind};
    use crate::support::inprocess::Berth;
    use crate::support::real::{S3Server, TestCa};
    use crate::support::util::{free_port, run};

    /// `[server]` with the CA's certificate, and client certificates of that CA required.
    fn replica_toml(ca: &TestCa, port: u16, store: &str) -> String {
        format!(
            "advertise_url = \"https://127.0.0.1:{port}\"\n[server]\ntls_cert_file = {:?}\n\
             tls_key_file = {:?}\nclient_ca_file = {:?}\n\n{store}\n",
            ca.cert_pem.to_str().unwrap(),
            ca.key_pem.to_str().unwrap(),
            ca.ca_pem.to_str().unwrap(),
        )
    }

    async fn replica(ca: &TestCa, fake: &FakeUpstream, s3: &S3Server) -> (Berth, String) {
        let port = free_port();
        let berth = Berth::builder()
            .top_level(&replica_toml(ca, port, &s3.store_toml(Some("fleet"))))
            .upstream(fake)
            .listen(([127, 0, 0, 1], port).into())
            .start()
            .await;
        (berth, format!("https://127.0.0.1:{port}"))
    }

    /// A node of the private CA: trusts it and presents a client certificate it issued.
    fn node_client(ca: &TestCa) -> reqwest::Client {
        let (cert, key) = ca.issue_client("node");
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(&ca.ca_pem).unwrap())
            .unwrap();
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_file(&cert).unwrap()],
            PrivateKeyDer::from_pem_file(&key).unwrap(),
        )
        .unwrap();
        reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(120))
            .use_preconfigured_tls(tls)
            .build()
            .unwrap()
    }

    /// GETs the blob with `client`; the body's sha256 digest (or the error) and its length.
    async fn pull_with(
        client: reqwest::Client,
        base: String,
        digest: String,
    ) -> Result<(String, u64), String> {
        use sha2::Digest as _;
        let response = client
            .get(format!("{base}/v2/{REPO}/blobs/{digest}"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        let mut hasher = sha2::Sha256::new();
        let mut len = 0u64;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| e.to_string())?;
            len += chunk.len() as u64;
            hasher.update(&chunk);
        }
        Ok((format!("sha256:{}", hex::encode(hasher.finalize())), len))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs the s3s-fs S3 server: run by scripts/test"]
    async fn replicas_with_a_private_ca_and_client_certificates_fetch_a_cold_blob_once() {
        let (s3, fake, layer) = setup(40).await;
        // The leader's upstream transfer pauses at half the blob: the follower meets a running fill.
        fake.inject(
            Fault::stall(
                layer.size() / 2,
                Duration::from_secs(3),
                AfterStall::Continue,
            )
            .kind(Kind::Blob)
            .times(1),
        );
        let ca = TestCa::new();
        let (_leader, leader_url) = replica(&ca, &fake, &s3).await;
        let (_follower, follower_url) = replica(&ca, &fake, &s3).await;
        let client = node_client(&ca);

        let first = tokio::spawn(pull_with(client.clone(), leader_url, layer.digest.clone()));
        crate::support::util::wait_until("the leader's lease", Duration::from_secs(20), || {
            (!objects_under(&s3, "fleet/fills").is_empty()).then_some(())
        });
        let second = tokio::spawn(pull_with(client, follower_url, layer.digest.clone()));
        for pulled in [first, second] {
            let (digest, len) = pulled.await.unwrap().expect("a whole body");
            assert_eq!(
                (digest.as_str(), len),
                (layer.digest.as_str(), layer.size())
            );
        }
        let sent = fake.bytes_sent(&layer.digest);
        assert!(
            sent <= layer.size() + layer.size() / 20,
            "the upstream sent {sent} bytes for a {} byte blob: the follower fetched alone \
             instead of streaming the leader's fill",
            layer.size()
        );
    }

    /// `berth serve` with `config` (and its data dir under `dir`) on a free port: exit code and
    /// stderr; `None` if it was still serving after `within` (then it is stopped).
    fn serve(dir: &Path, config: &str, within: Duration) -> (Option<i32>, String) {
        let file = dir.join("berth.toml");
        std::fs::write(&file, config).unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&file)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .env("BERTH_LOG", "warn");
        let out = run(&mut cmd, within);
        ((!out.timed_out).then_some(out.code).flatten(), out.stderr)
    }

    /// No S3 server needed: the check runs before the bucket is first asked.
    #[test]
    fn a_replica_whose_certificate_the_others_cannot_verify_fails_at_start() {
        let ca = TestCa::new();
        let dir = tempfile::tempdir().unwrap();
        // The leaf alone in tls_cert_file, no client_ca_file: nothing names the private CA.
        let config = format!(
            "advertise_url = \"https://127.0.0.1:5999\"\n[server]\ntls_cert_file = {:?}\n\
             tls_key_file = {:?}\n\n[store]\nkind = \"s3\"\nbucket = \"fleet\"\n\
             endpoint = \"http://127.0.0.1:9\"\nallow_http = true\naccess_key_id = \"k\"\n\
             secret_access_key = \"s\"\n\n[upstreams.\"docker.io\"]\nurl = \"http://127.0.0.1:9\"\n",
            ca.cert_pem.to_str().unwrap(),
            ca.key_pem.to_str().unwrap(),
        );
        let (code, stderr) = serve(dir.path(), &config, Duration::from_secs(20));
        assert!(
            code.is_some_and(|c| c != 0),
            "berth must refuse to start (exit {code:?}):\n{stderr}"
        );
        let last = stderr.trim().lines().last().unwrap_or_default();
        assert!(
            last.contains("cross-replica fills cannot work")
                && last.contains("server.tls_cert_file")
                && last.contains("server.client_ca_file"),
            "one line naming the keys to fix: {stderr}"
        );

        // With the CA as client_ca_file the same replica starts (and serves until stopped).
        let config = config.replace(
            "\n\n[store]",
            &format!(
                "\nclient_ca_file = {:?}\n\n[store]",
                ca.ca_pem.to_str().unwrap()
            ),
        );
        let (code, stderr) = serve(dir.path(), &config, Duration::from_secs(5));
        assert_eq!(code, None, "berth should be serving:\n{stderr}");
    }
}

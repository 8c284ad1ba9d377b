//! `berth cache stats | verify | gc` on a cache directory laid out by hand, as the binary.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::support::inprocess::sha256;
use crate::support::util::{CmdOutput, run};

const CONFIG: &[u8] = b"{\"architecture\":\"amd64\"}";

fn berth_cache(args: &[&str], data: &Path) -> CmdOutput {
    run(
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .arg("cache")
            .args(args)
            .arg("--data-dir")
            .arg(data)
            .env_remove("BERTH_CONFIG")
            .env_remove("BERTH_DATA_DIR"),
        Duration::from_secs(60),
    )
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn put_blob(data: &Path, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    write(&data.join("blobs/sha256").join(&digest[7..]), bytes);
    digest
}

/// A cache with a pinned image (manifest → config + layer), an unpinned blob, a corrupt blob,
/// a tag record and an old orphaned spool file.
struct Fixture {
    dir: tempfile::TempDir,
    layer: String,
    config: String,
    loose: String,
    corrupt: String,
    manifest: String,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        let layer = put_blob(data, &vec![1u8; 4000]);
        let config = put_blob(data, CONFIG);
        let loose = put_blob(data, &vec![2u8; 3000]);
        let corrupt = sha256(b"the real content");
        write(
            &data.join("blobs/sha256").join(&corrupt[7..]),
            b"the real c0ntent",
        );
        let body = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "config": {"digest": config, "size": CONFIG.len()},
            "layers": [{"digest": layer, "size": 4000}],
        }))
        .unwrap();
        let manifest = sha256(&body);
        let mut stored = b"application/vnd.oci.image.manifest.v1+json\n".to_vec();
        stored.extend_from_slice(&body);
        write(&data.join("manifests/sha256").join(&manifest[7..]), &stored);
        write(
            &data.join("tags/docker.io/library/app/_tags/v1"),
            b"{\"digest\":\"x\"}",
        );
        let pin = serde_json::json!({"name": "flux", "manifests": [manifest],
            "updated_unix": 1764600000});
        write(&data.join("pins/flux"), &serde_json::to_vec(&pin).unwrap());
        let orphan = data.join("spool/fill-00000000deadbeef");
        write(&orphan, b"partial");
        let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
        std::fs::File::open(&orphan)
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();
        write(&data.join("spool/fill-live"), b"in progress");
        Fixture {
            dir,
            layer,
            config,
            loose,
            corrupt,
            manifest,
        }
    }

    fn data(&self) -> &Path {
        self.dir.path()
    }

    fn blob_exists(&self, digest: &str) -> bool {
        self.data().join("blobs/sha256").join(&digest[7..]).exists()
    }
}

#[test]
fn stats_counts_objects_tags_and_pinned_bytes() {
    let f = Fixture::new();
    let out = berth_cache(&["stats", "--json"], f.data());
    out.expect_success();
    let stats: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(stats["blobs"], 4, "{stats}");
    assert_eq!(stats["manifests"], 1);
    assert_eq!(stats["tags"], 1);
    assert_eq!(stats["pin_sets"], 1);
    let manifest_size = std::fs::metadata(f.data().join("manifests/sha256").join(&f.manifest[7..]))
        .unwrap()
        .len();
    assert_eq!(
        stats["pinned_bytes"],
        manifest_size + 4000 + CONFIG.len() as u64
    );
    assert_eq!(
        stats["total_bytes"],
        manifest_size + 4000 + CONFIG.len() as u64 + 3000 + 16
    );
    assert!(stats["hit_ratio"].is_null(), "unknown without --mirror");

    let text = berth_cache(&["stats"], f.data());
    text.expect_success();
    assert!(
        text.stdout.contains("hit ratio  unknown"),
        "{}",
        text.stdout
    );
}

#[test]
fn verify_quarantines_a_corrupt_blob_names_it_and_exits_1() {
    let f = Fixture::new();
    let out = berth_cache(&["verify"], f.data());
    assert!(!out.success, "a bad blob fails the command: {out:?}");
    assert!(
        out.stdout.contains(&f.corrupt),
        "names the digest: {}",
        out.stdout
    );
    assert!(!f.blob_exists(&f.corrupt), "no longer servable");
    let quarantined = f
        .data()
        .join("quarantine")
        .join(format!("blobs-sha256-{}", &f.corrupt[7..]));
    assert_eq!(std::fs::read(quarantined).unwrap(), b"the real c0ntent");
    for good in [&f.layer, &f.config, &f.loose] {
        assert!(f.blob_exists(good), "good blobs stay");
    }
    assert!(
        out.stdout.contains("verified 5 object(s)"),
        "{}",
        out.stdout
    );
    berth_cache(&["verify"], f.data()).expect_success();
}

#[test]
fn gc_dry_run_lists_and_gc_evicts_unpinned_lru_and_orphans() {
    let f = Fixture::new();
    let dry = berth_cache(&["gc", "--dry-run", "--max-size", "5000"], f.data());
    dry.expect_success();
    assert!(dry.stdout.contains("would delete"), "{}", dry.stdout);
    assert!(dry.stdout.contains(&f.loose), "{}", dry.stdout);
    assert!(
        dry.stdout.contains("fill-00000000deadbeef"),
        "{}",
        dry.stdout
    );
    assert!(
        !dry.stdout.contains(&f.layer),
        "pinned content is never listed"
    );
    assert!(f.blob_exists(&f.loose), "a dry run deletes nothing");
    assert!(f.data().join("spool/fill-00000000deadbeef").exists());

    let gc = berth_cache(&["gc", "--max-size", "5000"], f.data());
    gc.expect_success();
    assert!(
        !f.blob_exists(&f.loose),
        "unpinned content went: {}",
        gc.stdout
    );
    for pinned in [&f.layer, &f.config] {
        assert!(f.blob_exists(pinned), "pinned blobs stay");
    }
    assert!(
        f.data()
            .join("manifests/sha256")
            .join(&f.manifest[7..])
            .exists()
    );
    assert!(
        !f.data().join("spool/fill-00000000deadbeef").exists(),
        "old orphan deleted"
    );
    assert!(
        f.data().join("spool/fill-live").exists(),
        "a recent spool file may be live"
    );
    assert!(
        f.data()
            .join("tags/docker.io/library/app/_tags/v1")
            .exists()
    );

    let again = berth_cache(&["gc"], f.data());
    again.expect_success();
    assert!(
        again.stdout.contains("nothing to evict"),
        "{}",
        again.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_reads_the_hit_ratio_from_a_running_berth() {
    use crate::support::fake_upstream::{FakeUpstream, Options};
    use crate::support::inprocess::Berth;
    let fake = FakeUpstream::start(Options::plain()).await;
    let blob = crate::support::images::big_blob(1, 90);
    fake.put_blob("library/x", &blob);
    let berth = Berth::builder().upstream(&fake).start().await;
    let path = format!("/v2/library/x/blobs/{}", blob.digest);
    for _ in 0..4 {
        let (status, body) = berth.get_bytes(&path).await;
        assert_eq!(status, 200);
        assert_eq!(sha256(&body), blob.digest);
        // The commit follows the client's last byte; the next GET should be a cache hit.
        berth.wait_committed(&blob.digest).await;
    }
    let mirror = berth.url("");
    let out = tokio::task::block_in_place(|| {
        berth_cache(&["stats", "--json", "--mirror", &mirror], berth.data.path())
    });
    out.expect_success();
    let stats: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(stats["hit_ratio"], 0.75, "1 miss, 3 hits: {stats}");
    assert_eq!(stats["blobs"], 1);
    berth.shutdown().await;
}

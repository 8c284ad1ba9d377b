//! `[store] max_size`: pulling more than fits keeps the cache under the limit, evicting the
//! least recently used, keeping pinned images, and re-fetching what was evicted.

use std::path::Path;
use std::time::Duration;

use crate::support::fake_upstream::{FakeUpstream, Options};
use crate::support::images::{self, Blob, Format, ImageSpec};
use crate::support::inprocess::{Berth, client, sha256};
use crate::support::util::eventually;

const KIB: u64 = 1024;
const MAX_SIZE: u64 = 3600 * KIB;

async fn get(berth: &Berth, path: &str) -> bytes::Bytes {
    let (status, body) = berth.get_bytes(path).await;
    assert_eq!(status, 200, "GET {path}");
    body
}

/// Pulls a blob and waits (bounded) for its commit: clients finish once the digest verifies,
/// the sync and commit follow.
async fn pull_blob(berth: &Berth, blob: &Blob) {
    let body = get(berth, &format!("/v2/library/lru/blobs/{}", blob.digest)).await;
    assert_eq!(sha256(&body), blob.digest, "verified");
    berth.wait_committed(&blob.digest).await;
}

/// Bytes of every file under `dir`, recursively.
fn bytes_under(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => bytes_under(&e.path()),
                    _ => e.metadata().map(|m| m.len()).unwrap_or(0),
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Waits until the filesystem clock, which stamps a commit's mtime (a blob's last use), has
/// moved past this moment: whatever is used or committed next is more recent than anything
/// before. (That clock is coarse: two commits a few ms apart may get the same mtime.)
async fn clock_tick() {
    let now = std::time::SystemTime::now();
    let scratch = tempfile::NamedTempFile::new().unwrap();
    eventually(
        "the filesystem clock to move past the last use",
        Duration::from_secs(10),
        || async {
            std::fs::write(scratch.path(), b"tick").unwrap();
            std::fs::metadata(scratch.path())
                .unwrap()
                .modified()
                .unwrap()
                > now
        },
    )
    .await;
}

fn cached(berth: &Berth, blob: &Blob) -> bool {
    berth.blob_file(&blob.digest).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulling_more_than_fits_evicts_lru_keeps_pins_and_refetches() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let pinned = images::image_with_layers(
        &ImageSpec::new(80, Format::Oci),
        vec![images::big_blob(1, 81)],
    );
    fake.push("library/pinned", "v1", &pinned);
    let [a, b, c] = [82, 83, 84].map(|seed| images::big_blob(1, seed));
    for blob in [&a, &b, &c] {
        fake.put_blob("library/lru", blob);
    }
    // A long interval: only the check after each fill can keep the cache in bounds here.
    let berth = Berth::builder()
        .top_level(&format!(
            "[store]\nmax_size = \"{}KiB\"\nevict_interval = \"1h\"",
            MAX_SIZE / KIB
        ))
        .upstream(&fake)
        .start()
        .await;

    // The pinned image is pulled first, so it is the least recently used of all.
    get(&berth, "/v2/library/pinned/manifests/v1").await;
    for blob in std::iter::once(&pinned.config).chain(&pinned.layers) {
        let body = get(&berth, &format!("/v2/library/pinned/blobs/{}", blob.digest)).await;
        assert_eq!(sha256(&body), blob.digest);
    }
    let pin = serde_json::json!({"name": "flux", "manifests": [pinned.manifest.digest],
        "updated_unix": 1764600000});
    std::fs::create_dir_all(berth.data.path().join("pins")).unwrap();
    std::fs::write(
        berth.data.path().join("pins/flux"),
        serde_json::to_vec(&pin).unwrap(),
    )
    .unwrap();

    pull_blob(&berth, &a).await;
    pull_blob(&berth, &b).await;
    assert!(
        bytes_under(&berth.data.path().join("blobs")) <= MAX_SIZE,
        "3 MiB fits"
    );
    // A is used again: B is now the least recently used unpinned blob.
    clock_tick().await;
    pull_blob(&berth, &a).await;

    pull_blob(&berth, &c).await; // 4 MiB: over the limit
    let blobs_dir = berth.data.path().join("blobs");
    let within_limit = || async { bytes_under(&blobs_dir) <= MAX_SIZE };
    eventually(
        "eviction after the fill",
        Duration::from_secs(10),
        within_limit,
    )
    .await;
    assert!(!cached(&berth, &b), "the least recently used blob went");
    assert!(cached(&berth, &a), "the recently used one stayed");
    assert!(cached(&berth, &c), "the newest stayed");
    for blob in std::iter::once(&pinned.config).chain(&pinned.layers) {
        assert!(
            cached(&berth, blob),
            "pinned {} survives though oldest",
            blob.digest
        );
    }
    assert!(berth.metric("berth_cache_evictions_total", &[]).await >= 1.0);

    // The evicted blob comes back from the upstream, whole and verified.
    let sent_before = fake.bytes_sent(&b.digest);
    pull_blob(&berth, &b).await;
    assert_eq!(
        fake.bytes_sent(&b.digest),
        sent_before + b.size(),
        "re-fetched"
    );
    eventually(
        "eviction after the re-fetch",
        Duration::from_secs(10),
        within_limit,
    )
    .await;
    let gauge = eventually(
        "the size gauge to follow",
        Duration::from_secs(10),
        || async {
            let bytes = berth.metric("berth_cache_bytes", &[]).await;
            if bytes > 0.0 && bytes <= MAX_SIZE as f64 {
                Ok(bytes)
            } else {
                Err(format!("berth_cache_bytes = {bytes}"))
            }
        },
    )
    .await;
    assert!(gauge <= MAX_SIZE as f64);
    for blob in std::iter::once(&pinned.config).chain(&pinned.layers) {
        assert!(cached(&berth, blob), "pinned {} still there", blob.digest);
    }
    berth.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_touch_memory_only_and_access_times_reach_the_files_at_shutdown() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let blob = images::big_blob(1, 85);
    fake.put_blob("library/lru", &blob);
    let berth = Berth::builder().upstream(&fake).start().await;
    pull_blob(&berth, &blob).await;
    let file = berth.data.path().join("blobs/sha256").join(blob.hex());
    let long_ago = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    std::fs::File::open(&file)
        .unwrap()
        .set_modified(long_ago)
        .unwrap();

    pull_blob(&berth, &blob).await; // a cache hit: read from the file
    let mtime = || std::fs::metadata(&file).unwrap().modified().unwrap();
    assert_eq!(mtime(), long_ago, "a read writes nothing to disk");

    let before_shutdown = std::time::SystemTime::now() - Duration::from_secs(60);
    let data = berth.shutdown().await;
    assert!(
        mtime() > before_shutdown,
        "the batched access time was flushed at shutdown"
    );
    drop(data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_in_progress_counts_against_max_size() {
    use crate::support::fake_upstream::{AfterStall, Fault, Kind};
    let fake = FakeUpstream::start(Options::plain()).await;
    let [old, newer] = [91, 92].map(|seed| images::big_blob(1, seed));
    let big = images::big_blob(2, 93);
    for blob in [&old, &newer, &big] {
        fake.put_blob("library/lru", blob);
    }
    // 3.5 MiB: the two cached blobs fit; the big one's spool file does not fit beside them.
    let berth = Berth::builder()
        .top_level(&format!(
            "[store]\nmax_size = \"{}KiB\"\nevict_interval = \"200ms\"",
            MAX_SIZE / KIB
        ))
        .upstream(&fake)
        .start()
        .await;
    pull_blob(&berth, &old).await;
    clock_tick().await;
    pull_blob(&berth, &newer).await;

    // The big fill pauses after 1.9 MiB: committed 2 MiB + spool 1.9 MiB is over the limit.
    fake.inject(
        Fault::stall(1900 * KIB, Duration::from_secs(4), AfterStall::Continue)
            .kind(Kind::Blob)
            .times(1),
    );
    let url = berth.url(&format!("/v2/library/lru/blobs/{}", big.digest));
    let pull = tokio::spawn(async move { client().get(url).send().await?.bytes().await });
    eventually(
        "the least recently used blob to make room for the running fill",
        Duration::from_secs(3),
        || async { !cached(&berth, &old) },
    )
    .await;
    assert!(
        !pull.is_finished(),
        "evicted while the fill was still running"
    );
    assert!(cached(&berth, &newer), "only as much as needed went");
    assert_eq!(sha256(&pull.await.unwrap().unwrap()), big.digest);
}

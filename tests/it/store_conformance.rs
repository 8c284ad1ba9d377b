//! One conformance suite for every `BlobStore`: the local disk store and the S3 store against a
//! real S3-compatible server (s3s-fs on loopback). Each test is written once, over
//! `Arc<dyn BlobStore>`, and instantiated per backend by `conformance!`.

use std::sync::Arc;
use std::time::Duration;

use crate::support::prereq::require_tools;
use crate::support::real::S3Server;
use crate::support::real::s3::TOOL;
use berth::config::{Config, StoreKind};
use berth::store::{BlobStore, DiskStore, Listed, S3Store, StoreError, TieredStore};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

/// What keeps a store's backing alive for the test (temp dir, server process).
type Guard = Box<dyn std::any::Any>;

fn disk_store() -> (Arc<dyn BlobStore>, tempfile::TempDir, Guard) {
    let data = tempfile::tempdir().unwrap();
    let store = DiskStore::open(data.path()).unwrap();
    (
        Arc::new(store),
        tempfile::tempdir().unwrap(),
        Box::new(data),
    )
}

fn s3_store_with_prefix(prefix: Option<&str>) -> Option<(Arc<dyn BlobStore>, S3Server)> {
    if !require_tools(&[TOOL]) {
        return None;
    }
    let server = S3Server::start("berth-test");
    let config = Config::from_toml(&server.store_toml(prefix)).unwrap();
    let StoreKind::S3(s3) = config.store.kind else {
        panic!("expected an S3 store config")
    };
    Some((Arc::new(S3Store::open(&s3).unwrap()), server))
}

fn s3_store() -> Option<(Arc<dyn BlobStore>, tempfile::TempDir, Guard)> {
    let (store, server) = s3_store_with_prefix(Some("conformance/run"))?;
    Some((store, tempfile::tempdir().unwrap(), Box::new(server)))
}

/// The S3 store behind a local hot tier: the same contract as either alone.
fn tiered_store() -> Option<(Arc<dyn BlobStore>, tempfile::TempDir, Guard)> {
    let (remote, server) = s3_store_with_prefix(Some("conformance/tiered"))?;
    let local_dir = tempfile::tempdir().unwrap();
    let local = Arc::new(DiskStore::open(local_dir.path()).unwrap());
    let store = TieredStore::new(local, remote).unwrap();
    Some((
        Arc::new(store),
        tempfile::tempdir().unwrap(),
        Box::new((server, local_dir)),
    ))
}

/// Deterministic content of `len` bytes (distinct per `seed`).
fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

async fn read_all(store: &dyn BlobStore, key: &str, range: std::ops::Range<u64>) -> Vec<u8> {
    let chunks: Vec<Bytes> = store
        .read(key, range.clone())
        .await
        .unwrap_or_else(|e| panic!("read {key} {range:?}: {e}"))
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("read {key} {range:?}: {e}"));
    chunks.concat()
}

/// Writes `bytes` to a new file in `dir` (a stand-in for a verified spool file).
fn spool(dir: &tempfile::TempDir, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir
        .path()
        .join(format!("spool-{:016x}", rand_u64(bytes.len())));
    std::fs::write(&path, bytes).unwrap();
    path
}

fn rand_u64(salt: usize) -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed) ^ ((salt as u64) << 32)
}

const BLOB: &str = "blobs/sha256/0f0f";
/// Larger than the single-PUT limit (16 MiB), so commits are multipart uploads of several parts.
const BIG: usize = 37 * 1024 * 1024 + 123;

async fn put_get_size_and_range_reads(store: Arc<dyn BlobStore>, dir: tempfile::TempDir) {
    let small = Bytes::from_static(b"hello world");
    store
        .put("manifests/sha256/aa", small.clone())
        .await
        .unwrap();
    assert_eq!(store.size("manifests/sha256/aa").await.unwrap(), Some(11));
    assert_eq!(
        store.get("manifests/sha256/aa").await.unwrap(),
        Some(small.clone())
    );
    assert_eq!(
        read_all(&*store, "manifests/sha256/aa", 6..11).await,
        b"world"
    );

    let big = content(BIG, 1);
    let file = spool(&dir, &big);
    store.commit_file(BLOB, &file).await.unwrap();
    assert!(
        !file.exists(),
        "after a commit the store owns the file (moved or uploaded, then removed)"
    );
    let len = big.len() as u64;
    assert_eq!(store.size(BLOB).await.unwrap(), Some(len));
    let part = 16 * 1024 * 1024u64;
    for range in [
        0..len,
        0..1,
        1..2,
        part - 10..part + 10,
        len - 1..len,
        len - 4096..len,
        12345..2 * part + 777,
    ] {
        let got = read_all(&*store, BLOB, range.clone()).await;
        assert_eq!(got.len() as u64, range.end - range.start, "{range:?}");
        assert!(
            got == big[range.start as usize..range.end as usize],
            "bytes of {range:?}"
        );
    }
    assert!(read_all(&*store, BLOB, 5..5).await.is_empty());
}

async fn absent_keys_are_none(store: Arc<dyn BlobStore>, _dir: tempfile::TempDir) {
    assert_eq!(store.size("blobs/sha256/absent").await.unwrap(), None);
    assert_eq!(store.get("blobs/sha256/absent").await.unwrap(), None);
    store.delete("blobs/sha256/absent").await.unwrap();
    assert_eq!(store.list("blobs").await.unwrap(), vec![]);
}

async fn the_same_key_written_twice_is_harmless(store: Arc<dyn BlobStore>, dir: tempfile::TempDir) {
    let big = content(BIG, 2);
    for _ in 0..2 {
        store.commit_file(BLOB, &spool(&dir, &big)).await.unwrap();
        assert_eq!(store.size(BLOB).await.unwrap(), Some(big.len() as u64));
    }
    assert!(read_all(&*store, BLOB, 0..big.len() as u64).await == big);
    for _ in 0..2 {
        store
            .put(
                "tags/docker.io/library/x/_tags/1",
                Bytes::from_static(b"{}"),
            )
            .await
            .unwrap();
    }
    assert_eq!(
        store.get("tags/docker.io/library/x/_tags/1").await.unwrap(),
        Some(Bytes::from_static(b"{}"))
    );
    // Overwrites replace (tag records are rewritten on refresh).
    store
        .put(
            "tags/docker.io/library/x/_tags/1",
            Bytes::from_static(b"{\"v\":2}"),
        )
        .await
        .unwrap();
    assert_eq!(
        store.get("tags/docker.io/library/x/_tags/1").await.unwrap(),
        Some(Bytes::from_static(b"{\"v\":2}"))
    );
}

async fn a_failed_or_dropped_commit_leaves_nothing_partial(
    store: Arc<dyn BlobStore>,
    dir: tempfile::TempDir,
) {
    // A spool file that is not there: an error, and nothing visible.
    let missing = dir.path().join("never-written");
    assert!(store.commit_file(BLOB, &missing).await.is_err());
    assert_eq!(store.size(BLOB).await.unwrap(), None);
    assert_eq!(store.get(BLOB).await.unwrap(), None);

    // Commits cancelled at different points (the future dropped): the object is either
    // absent or whole, never a prefix.
    let big = content(BIG, 3);
    for (i, after) in [0u64, 2, 20, 200].into_iter().enumerate() {
        let key = format!("blobs/sha256/cancel{i}");
        let file = spool(&dir, &big);
        let commit = store.commit_file(&key, &file);
        let _ = tokio::time::timeout(Duration::from_millis(after), commit).await;
        // Give a background rename or upload time to land or die. What is checked is that no
        // partial object ever shows, an absence no event signals: a window, not a condition.
        tokio::time::sleep(Duration::from_millis(300)).await;
        match store.size(&key).await.unwrap() {
            None => assert_eq!(store.get(&key).await.unwrap(), None),
            Some(size) => {
                assert_eq!(
                    size,
                    big.len() as u64,
                    "cancelled after {after} ms: no partial object"
                );
                assert!(read_all(&*store, &key, 0..size).await == big);
            }
        }
    }
    // Dropped small puts likewise.
    for (i, after) in [0u64, 1, 5].into_iter().enumerate() {
        let key = format!("manifests/sha256/cancel{i}");
        let bytes = Bytes::from(content(64 * 1024, 4));
        let _ = tokio::time::timeout(Duration::from_millis(after), store.put(&key, bytes.clone()))
            .await;
        // A window for a late write to show (as above): no event signals its absence.
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some(got) = store.get(&key).await.unwrap() {
            assert_eq!(got, bytes, "no partial small object");
        }
    }
}

async fn concurrent_writers_of_one_key_leave_one_whole_object(
    store: Arc<dyn BlobStore>,
    dir: tempfile::TempDir,
) {
    let big = Arc::new(content(BIG, 5));
    let writers: Vec<_> = (0..6)
        .map(|_| {
            let (store, file) = (store.clone(), spool(&dir, &big));
            tokio::spawn(async move { store.commit_file(BLOB, &file).await })
        })
        .collect();
    // Meanwhile, whatever a reader sees is the whole object or nothing: sampled until every
    // writer is done (at most 1,000 samples).
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let (store, big, writing) = (store.clone(), big.clone(), writing.clone());
        tokio::spawn(async move {
            for _ in 0..1000 {
                if !writing.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                if let Some(size) = store.size(BLOB).await.unwrap() {
                    assert_eq!(size, big.len() as u64, "never a partial object");
                }
                // The sampling pace of the reader, not a wait for anything.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    for w in writers {
        w.await.unwrap().unwrap();
    }
    writing.store(false, std::sync::atomic::Ordering::SeqCst);
    watcher.await.unwrap();
    assert_eq!(store.size(BLOB).await.unwrap(), Some(big.len() as u64));
    assert!(read_all(&*store, BLOB, 0..big.len() as u64).await == *big);
    assert_eq!(store.list("blobs").await.unwrap().len(), 1);
}

async fn listing_finds_objects_under_a_prefix(store: Arc<dyn BlobStore>, dir: tempfile::TempDir) {
    store
        .put("blobs/sha256/bb", Bytes::from_static(b"22"))
        .await
        .unwrap();
    store
        .commit_file("blobs/sha256/aa", &spool(&dir, b"1"))
        .await
        .unwrap();
    store
        .put("blobs/sha512/cc", Bytes::from_static(b"333"))
        .await
        .unwrap();
    store
        .put("manifests/sha256/dd", Bytes::from_static(b"4444"))
        .await
        .unwrap();
    store
        .put("tags/ghcr.io/a/b/_tags/v1", Bytes::from_static(b"55555"))
        .await
        .unwrap();
    let listed = |key: &str, size: u64| Listed {
        key: key.into(),
        size,
    };
    assert_eq!(
        store.list("blobs").await.unwrap(),
        vec![
            listed("blobs/sha256/aa", 1),
            listed("blobs/sha256/bb", 2),
            listed("blobs/sha512/cc", 3),
        ]
    );
    assert_eq!(
        store.list("blobs/sha256").await.unwrap(),
        vec![listed("blobs/sha256/aa", 1), listed("blobs/sha256/bb", 2)]
    );
    assert_eq!(
        store.list("tags/ghcr.io").await.unwrap(),
        vec![listed("tags/ghcr.io/a/b/_tags/v1", 5)]
    );
    assert_eq!(store.list("nothing/here").await.unwrap(), vec![]);
    store.delete("blobs/sha256/bb").await.unwrap();
    assert_eq!(store.list("blobs/sha256").await.unwrap().len(), 1);
    assert_eq!(store.get("blobs/sha256/bb").await.unwrap(), None);
}

async fn invalid_keys_are_refused(store: Arc<dyn BlobStore>, dir: tempfile::TempDir) {
    let file = spool(&dir, b"x");
    for key in ["../x", "/etc/passwd", "a/../../b", "", "./a"] {
        let invalid = |r: Result<(), StoreError>| matches!(r, Err(StoreError::InvalidKey(_)));
        assert!(
            matches!(store.size(key).await, Err(StoreError::InvalidKey(_))),
            "size {key:?}"
        );
        assert!(
            matches!(store.get(key).await, Err(StoreError::InvalidKey(_))),
            "get {key:?}"
        );
        assert!(
            invalid(store.put(key, Bytes::from_static(b"x")).await),
            "put {key:?}"
        );
        assert!(
            invalid(store.commit_file(key, &file).await),
            "commit {key:?}"
        );
        assert!(invalid(store.delete(key).await), "delete {key:?}");
        assert!(
            matches!(store.list(key).await, Err(StoreError::InvalidKey(_))),
            "list {key:?}"
        );
    }
    assert!(file.exists(), "a refused commit leaves the file alone");
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod disk {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let (store, dir, _guard) = super::disk_store();
                    super::$test(store, dir).await;
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "needs the s3s-fs S3 server: run by scripts/test"]
                async fn $test() {
                    let Some((store, dir, _guard)) = super::s3_store() else { return };
                    super::$test(store, dir).await;
                }
            )*
        }
        mod tiered {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "needs the s3s-fs S3 server: run by scripts/test"]
                async fn $test() {
                    let Some((store, dir, _guard)) = super::tiered_store() else { return };
                    super::$test(store, dir).await;
                }
            )*
        }
    };
}

/// `create` writes only when the key is free, and exactly one of concurrent creators wins.
async fn create_writes_only_when_absent(store: Arc<dyn BlobStore>, _dir: tempfile::TempDir) {
    let key = "fills/sha256/lease";
    assert!(
        store
            .create(key, Bytes::from_static(b"first"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .create(key, Bytes::from_static(b"second"))
            .await
            .unwrap()
    );
    assert_eq!(
        store.get(key).await.unwrap().unwrap(),
        Bytes::from_static(b"first")
    );
    store.delete(key).await.unwrap();
    assert!(
        store
            .create(key, Bytes::from_static(b"third"))
            .await
            .unwrap()
    );
}

/// Another replica's small object (a fill lease) is read only when small: an oversized one is
/// not loaded whole to find out.
async fn small_objects_are_read_only_when_small(
    store: Arc<dyn BlobStore>,
    _dir: tempfile::TempDir,
) {
    let key = "fills/sha256/lease";
    store
        .put(key, Bytes::from_static(b"{\"leader\":1}"))
        .await
        .unwrap();
    let small = berth::store::get_small(&*store, key, 4096).await.unwrap();
    assert_eq!(small.as_deref(), Some(&b"{\"leader\":1}"[..]));
    store
        .put(key, Bytes::from(vec![b'x'; 64 * 1024]))
        .await
        .unwrap();
    assert_eq!(
        berth::store::get_small(&*store, key, 4096).await.unwrap(),
        None
    );
    assert_eq!(
        berth::store::get_small(&*store, "fills/sha256/absent", 4096)
            .await
            .unwrap(),
        None
    );
}

conformance!(
    small_objects_are_read_only_when_small,
    create_writes_only_when_absent,
    put_get_size_and_range_reads,
    absent_keys_are_none,
    the_same_key_written_twice_is_harmless,
    a_failed_or_dropped_commit_leaves_nothing_partial,
    concurrent_writers_of_one_key_leave_one_whole_object,
    listing_finds_objects_under_a_prefix,
    invalid_keys_are_refused,
);

/// S3 only: keys live under the configured prefix, as plain objects another tool could read.
#[tokio::test]
#[ignore = "needs the s3s-fs S3 server: run by scripts/test"]
async fn s3_objects_live_under_the_prefix() {
    let Some((store, server)) = s3_store_with_prefix(Some("/team/berth/")) else {
        return;
    };
    store
        .put("manifests/sha256/ee", Bytes::from_static(b"stored"))
        .await
        .unwrap();
    let file = server.object_file("team/berth/manifests/sha256/ee");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"stored",
        "{}",
        file.display()
    );
    assert_eq!(
        store.list("manifests").await.unwrap(),
        vec![Listed {
            key: "manifests/sha256/ee".into(),
            size: 6
        }],
        "listing strips the prefix"
    );
}

/// S3 only: a server that stopped answering (frozen: it accepts connections, never replies) is a
/// clear `Remote` error at the request deadline (10 s), not a hang: for a HEAD, a small GET, and
/// the next chunk of a body.
#[tokio::test]
#[ignore = "needs the s3s-fs S3 server: run by scripts/test"]
async fn s3_frozen_is_a_prompt_clear_error() {
    let Some((store, server)) = s3_store_with_prefix(Some("frozen")) else {
        return;
    };
    // A body bigger than what the socket buffers hold, so its reader must wait on the server.
    let big = Bytes::from(vec![7u8; 64 * 1024 * 1024]);
    store.put("blobs/sha256/bb", big.clone()).await.unwrap();
    let mut body = store
        .read("blobs/sha256/bb", 0..big.len() as u64)
        .await
        .unwrap();
    server.pause();
    let bounded = Duration::from_secs(20);
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(bounded, store.size("blobs/sha256/aa"))
        .await
        .expect("size hung on a frozen server")
        .expect_err("the server is frozen");
    let waited = started.elapsed();
    assert!(
        err.to_string().contains("no answer within 10s")
            && err.to_string().contains("s3://berth-test"),
        "{err}"
    );
    assert!(waited >= Duration::from_secs(9), "gave up after {waited:?}");
    let err = tokio::time::timeout(bounded, store.get("manifests/sha256/aa"))
        .await
        .expect("get hung on a frozen server")
        .expect_err("the server is frozen");
    assert!(matches!(err, StoreError::Remote { .. }), "{err:?}");
    let mut read = 0usize;
    let broke = tokio::time::timeout(bounded, async {
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => read += chunk.len(),
                Err(e) => return Some(e),
            }
        }
        None
    })
    .await
    .expect("the body hung on a frozen server")
    .expect("the body cannot be whole: the server froze before sending it all");
    assert_eq!(broke.kind(), std::io::ErrorKind::TimedOut, "{broke}");
    assert!(read < big.len(), "read {read}");
    server.resume();
    assert_eq!(
        store.size("blobs/sha256/aa").await.unwrap(),
        None,
        "recovers"
    );
}

/// S3 only: an unreachable server is a clear `Remote` error within seconds, not a hang or panic.
#[tokio::test]
#[ignore = "needs the s3s-fs S3 server: run by scripts/test"]
async fn s3_unreachable_is_a_prompt_clear_error() {
    let Some((store, mut server)) = s3_store_with_prefix(None) else {
        return;
    };
    server.stop();
    let started = std::time::Instant::now();
    let err = store
        .size("blobs/sha256/aa")
        .await
        .expect_err("server is down");
    assert!(matches!(err, StoreError::Remote { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("blobs/sha256/aa") && text.contains("s3://berth-test"),
        "{text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    server.restart();
    assert_eq!(
        store.size("blobs/sha256/aa").await.unwrap(),
        None,
        "recovers"
    );
}

//! Crash safety with a real process: `kill -9` in the middle of a fill, and a full disk
//! (a small tmpfs) while filling. After either, no partial blob is visible or served, leftovers
//! are cleaned, berth keeps (or starts) serving, and the next pull is complete and verified.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::berth::BerthProcess;
use crate::support::fake_upstream::{AfterStall, FakeUpstream, Fault, Kind, Options};
use crate::support::images::{self, Blob};
use crate::support::inprocess::{Berth, BerthBuilder, client, sha256};
use crate::support::util::{eventually, http_get, run};
use futures::StreamExt;

const MIB: u64 = 1024 * 1024;

/// How a GET of a blob through berth ended.
#[derive(Debug, PartialEq)]
enum Pull {
    /// Status 200 and the whole body: its digest.
    Complete(String),
    /// A non-200 status.
    Status(u16),
    /// Headers came, then the body broke off after this many bytes.
    Aborted(u64),
}

async fn pull(url: &str) -> Pull {
    use sha2::Digest as _;
    let response = match client().get(url).send().await {
        Ok(r) => r,
        Err(_) => return Pull::Aborted(0),
    };
    if response.status() != 200 {
        return Pull::Status(response.status().as_u16());
    }
    let mut hasher = sha2::Sha256::new();
    let mut received = 0;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(bytes) => {
                received += bytes.len() as u64;
                hasher.update(&bytes);
            }
            Err(_) => return Pull::Aborted(received),
        }
    }
    Pull::Complete(format!("sha256:{}", hex::encode(hasher.finalize())))
}

fn berth_for(fake: &FakeUpstream) -> BerthBuilder {
    // A long stall timeout: the injected stall must hold the fill mid-way until the kill.
    Berth::builder()
        .upstream(fake)
        .config("stall_timeout = \"5m\"\nmax_attempts = 1")
}

fn blob_url(berth: &BerthProcess, blob: &Blob) -> String {
    format!("{}/v2/library/big/blobs/{}", berth.url(), blob.digest)
}

fn files_in(dir: &Path) -> Vec<(PathBuf, u64)> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| Some((e.path(), e.metadata().ok()?.len())))
                .collect()
        })
        .unwrap_or_default()
}

/// The committed blob's bytes. Clients finish once the digest verifies; the sync and commit
/// follow, so wait (bounded) for the file to appear.
async fn committed(data: &Path, blob: &Blob) -> Vec<u8> {
    eventually(
        "the verified blob to be committed",
        Duration::from_secs(10),
        || async { std::fs::read(blob_file(data, blob)).ok() },
    )
    .await
}

fn blob_file(data: &Path, blob: &Blob) -> PathBuf {
    data.join("blobs/sha256").join(blob.hex())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_fill_leaves_no_partial_blob_and_a_restart_serves_it_whole() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let blob = images::big_blob(8, 71);
    fake.put_blob("library/big", &blob);
    fake.inject(
        Fault::stall(3 * MIB, Duration::from_secs(600), AfterStall::Reset).kind(Kind::Blob),
    );
    let mut berth = tokio::task::block_in_place(|| berth_for(&fake).spawn());
    let data = berth.data_dir();
    let url = blob_url(&berth, &blob);

    let first = tokio::spawn({
        let url = url.clone();
        async move { pull(&url).await }
    });
    // The fill has 3 MiB spooled and is stuck waiting for more.
    let spool = data.join("spool");
    let (spool_file, _) = eventually("3 MiB in a spool file", Duration::from_secs(30), || async {
        files_in(&spool)
            .into_iter()
            .find(|(_, len)| *len >= 3 * MIB)
    })
    .await;
    assert!(
        !blob_file(&data, &blob).exists(),
        "nothing committed mid-fill"
    );

    let pid = berth.pid();
    berth.kill_9();
    assert!(
        std::fs::read_to_string(format!("/proc/{pid}/status")).is_err(),
        "berth {pid} is gone"
    );
    assert!(
        spool_file.exists(),
        "a SIGKILL runs no cleanup: the partial spool file is still there"
    );
    let first = tokio::time::timeout(Duration::from_secs(30), first)
        .await
        .expect("the first client notices the kill")
        .unwrap();
    assert!(
        matches!(first, Pull::Aborted(n) if n < blob.size()),
        "the client saw a broken transfer, not a complete one: {first:?}"
    );

    // What a kill during a manifest write would leave (simulated: that window is tiny).
    std::fs::write(data.join("tmp/put-00000000deadbeef"), b"half a manifest").unwrap();

    tokio::task::block_in_place(|| berth.restart());
    assert_eq!(
        files_in(&spool),
        [],
        "start-up removed the leftover spool file"
    );
    assert_eq!(files_in(&data.join("tmp")), [], "and temp files");
    assert!(
        !blob_file(&data, &blob).exists(),
        "no partial blob is visible after the restart"
    );
    assert_eq!(
        fake.pending_faults(),
        0,
        "the stall fired; the upstream is healthy now"
    );

    assert_eq!(pull(&url).await, Pull::Complete(blob.digest.clone()));
    let stored = committed(&data, &blob).await;
    assert_eq!(
        sha256(&stored),
        blob.digest,
        "the cached file is the whole, verified blob"
    );
    eventually(
        "the spool file to become the blob",
        Duration::from_secs(10),
        || async { files_in(&spool).is_empty() },
    )
    .await;
}

/// A tmpfs of a given size, unmounted (lazily, so a straggling fd cannot block it) on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        run(
            std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path()),
            Duration::from_secs(10),
        )
        .expect_success();
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = run(
            std::process::Command::new("umount")
                .arg("-l")
                .arg(self.dir.path()),
            Duration::from_secs(10),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (tmpfs mount): run by scripts/test"]
async fn a_full_disk_fails_the_fill_cleanly_and_berth_recovers_when_space_returns() {
    if !crate::support::prereq::require_root("mounting a tmpfs") {
        return;
    }
    let fs = Tmpfs::mount("24m");
    let data = fs.path().join("data");
    let fake = FakeUpstream::start(Options::plain()).await;
    let blob = images::big_blob(12, 72);
    fake.put_blob("library/big", &blob);
    let berth = tokio::task::block_in_place(|| berth_for(&fake).data_dir(&data).spawn());
    let url = blob_url(&berth, &blob);

    // Leave ~8 MiB free: the 12 MiB blob cannot fit.
    let filler = fs.path().join("filler");
    std::fs::write(&filler, vec![7u8; 16 * MIB as usize]).unwrap();

    let full = pull(&url).await;
    eprintln!("pull on a full disk ended with {full:?}");
    assert!(
        matches!(full, Pull::Status(code) if code >= 500)
            || matches!(full, Pull::Aborted(n) if n < blob.size()),
        "a clean error or an aborted transfer, never a complete response: {full:?}"
    );
    eventually(
        "the failed fill's spool file to be deleted",
        Duration::from_secs(10),
        || async { files_in(&data.join("spool")).is_empty() },
    )
    .await;
    assert!(!blob_file(&data, &blob).exists(), "nothing was committed");
    assert_eq!(
        http_get(berth.addr, "/v2/").map(|(status, _)| status),
        Some(200),
        "berth keeps serving on a full disk"
    );
    let log = berth.stderr();
    assert!(
        log.contains("cannot write the spool file") && log.contains("No space left on device"),
        "the log says why the fill failed"
    );

    std::fs::remove_file(&filler).unwrap();
    assert_eq!(pull(&url).await, Pull::Complete(blob.digest.clone()));
    let stored = committed(&data, &blob).await;
    assert_eq!(sha256(&stored), blob.digest);
    drop(berth);
}

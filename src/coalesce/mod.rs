//! One upstream fill, spooled to a local file, streamed to every waiting reader.
//!
//! The first request for an uncached object becomes the *leader*: it gets a [`FillWriter`]
//! and runs in its own task, so a client that disconnects never cancels the fill. Everyone
//! else (and the leader's own client) joins as a reader of the spool file: it reads what is
//! already there, then follows new bytes as the writer announces them. The last byte of any
//! response is held back until the writer reports the content verified, so a bad fill can
//! never be delivered as a complete response. Verified is not yet durable: readers finish as
//! soon as the digest matches, while the writer still syncs and commits (an fsync of a large
//! blob must not delay every client's last byte). A writer dropped before its commit wakes
//! its readers with [`FillFailure::Abandoned`].

mod chunk_thread;
mod hashing;
mod reader;
mod singleflight;
mod slots;
mod spooler;

use std::collections::HashMap;
use std::hash::Hash;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

pub use hashing::HashingThread;
pub use reader::{FOLLOW_CHUNK, FillReader, ReaderError};
pub use singleflight::FlightAbandoned;
pub use singleflight::Singleflight;
pub use slots::{Busy, Slot, Slots};
use spooler::Spooler;

/// Why a fill ended without content.
#[derive(Debug, Clone)]
pub enum FillFailure<E> {
    /// The producer failed with this error.
    Failed(E),
    /// The producer went away without finishing (panic, cancelled task).
    Abandoned,
}

#[derive(Debug, Clone)]
pub struct FillState<E> {
    /// Total size, once the producer knows it (from upstream headers).
    pub total: Option<u64>,
    /// The producer has started receiving content (headers are in).
    pub started: bool,
    /// Bytes in the spool file and readable (may trail what the producer has received).
    pub written: u64,
    /// The content matched its digest: readers may deliver all of it, whatever happens next.
    pub verified: bool,
    /// `Some` once the fill is over.
    pub outcome: Option<Result<(), FillFailure<E>>>,
}

impl<E> Default for FillState<E> {
    fn default() -> Self {
        FillState {
            total: None,
            started: false,
            written: 0,
            verified: false,
            outcome: None,
        }
    }
}

/// An in-progress fill that readers can follow.
pub struct Fill<E> {
    spool: Arc<std::fs::File>,
    state: watch::Receiver<FillState<E>>,
    created: std::time::Instant,
    /// Readers alive now (the status page's "waiters").
    readers: Arc<std::sync::atomic::AtomicUsize>,
}

/// A running fill as the status page shows it.
#[derive(Debug, Clone)]
pub struct FillProgress {
    pub written: u64,
    pub total: Option<u64>,
    pub age: std::time::Duration,
    pub readers: usize,
}

impl<E: Clone + std::fmt::Display + Send + Sync + 'static> Fill<E> {
    /// Waits until the producer has response headers (or failed); returns the total size if known.
    pub async fn started(&self) -> Result<Option<u64>, FillFailure<E>> {
        let mut rx = self.state.clone();
        loop {
            {
                let state = rx.borrow_and_update();
                if let Some(Err(e)) = &state.outcome {
                    return Err(e.clone());
                }
                if state.started || state.outcome.is_some() {
                    return Ok(state.total);
                }
            }
            if rx.changed().await.is_err() {
                return Err(FillFailure::Abandoned);
            }
        }
    }

    /// Waits for the end of the fill.
    pub async fn finished(&self) -> Result<(), FillFailure<E>> {
        let mut rx = self.state.clone();
        loop {
            if let Some(outcome) = &rx.borrow_and_update().outcome {
                return outcome.clone();
            }
            if rx.changed().await.is_err() {
                return Err(FillFailure::Abandoned);
            }
        }
    }

    /// The size, once the content has matched its digest (the fill may still be syncing and
    /// committing it): such a fill is as good as stored, and all of it can be read now.
    pub fn verified_size(&self) -> Option<u64> {
        let state = self.state.borrow();
        state.total.filter(|_| state.verified)
    }

    /// Streams `[start, end)` of the content (end `None` = to the end) as it arrives.
    pub fn reader(&self, start: u64, end: Option<u64>) -> FillReader<E> {
        FillReader::new(
            self.spool.clone(),
            self.state.clone(),
            reader::ReaderCount::new(self.readers.clone()),
            start,
            end,
        )
    }
}

/// Fills in flight, keyed by what they fetch (e.g. a digest).
pub struct Fills<K, E> {
    inflight: Arc<Mutex<HashMap<K, Arc<Fill<E>>>>>,
    spool_dir: PathBuf,
}

/// What [`Fills::join`] hands out: either join an existing fill, or lead a new one.
pub enum Joined<K: Hash + Eq + Clone, E: Clone> {
    Follower(Arc<Fill<E>>),
    Leader(Arc<Fill<E>>, FillWriter<K, E>),
}

/// Prefix of spool file names (`fill-<16 hex>`).
const SPOOL_PREFIX: &str = "fill-";

impl<K, E> Fills<K, E>
where
    K: Hash + Eq + Clone + Send + 'static,
    E: Clone + std::fmt::Display + Send + Sync + 'static,
{
    /// Spool files of a previous process are removed: they are never trusted (a `kill -9`
    /// mid-fill leaves one; see tests/crash_safety.rs). Only files berth named are removed.
    pub fn new(spool_dir: &Path) -> std::io::Result<Fills<K, E>> {
        crate::store::disk::remove_own_temp_files(spool_dir, &[SPOOL_PREFIX])?;
        Ok(Fills {
            inflight: Arc::default(),
            spool_dir: spool_dir.to_owned(),
        })
    }

    /// Joins the fill for `key`, or starts one (creating its spool file) if none is running.
    pub fn join(&self, key: K) -> std::io::Result<Joined<K, E>> {
        let mut inflight = self.inflight.lock().unwrap();
        if let Some(fill) = inflight.get(&key) {
            return Ok(Joined::Follower(fill.clone()));
        }
        let path = self
            .spool_dir
            .join(crate::store::disk::temp_name(SPOOL_PREFIX));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(crate::store::disk::FILE_MODE)
            .open(&path)?;
        let spool = Arc::new(file);
        let (tx, rx) = watch::channel(FillState::default());
        let fill = Arc::new(Fill {
            spool: spool.clone(),
            state: rx,
            created: std::time::Instant::now(),
            readers: Arc::default(),
        });
        inflight.insert(key.clone(), fill.clone());
        let writer = FillWriter {
            key,
            fill: fill.clone(),
            inflight: self.inflight.clone(),
            spool,
            path,
            state: Arc::new(tx),
            received: 0,
            spooler: None,
            done: false,
            committed: false,
        };
        Ok(Joined::Leader(fill, writer))
    }

    /// The fills running now and how far each has got.
    pub fn progress(&self) -> Vec<(K, FillProgress)> {
        let inflight = self.inflight.lock().unwrap();
        inflight
            .iter()
            .map(|(key, fill)| {
                let state = fill.state.borrow();
                let progress = FillProgress {
                    written: state.written,
                    total: state.total,
                    age: fill.created.elapsed(),
                    readers: fill.readers.load(std::sync::atomic::Ordering::Relaxed),
                };
                (key.clone(), progress)
            })
            .collect()
    }

    /// The running fill for `key`, if any; never starts one (a peer replica reading ours).
    pub fn running(&self, key: &K) -> Option<Arc<Fill<E>>> {
        self.inflight.lock().unwrap().get(key).cloned()
    }

    /// A running fill whose key satisfies `wanted` (a scan: fills in flight are few).
    pub fn find(&self, wanted: impl Fn(&K) -> bool) -> Option<Arc<Fill<E>>> {
        let inflight = self.inflight.lock().unwrap();
        inflight
            .iter()
            .find(|(key, _)| wanted(key))
            .map(|(_, fill)| fill.clone())
    }

    pub fn in_flight(&self) -> usize {
        self.inflight.lock().unwrap().len()
    }
}

/// The producer's end of a fill: `start` → `append`… → `verified()` → `commit()`, in that
/// order by construction. Dropping it (or a [`VerifiedFill`]) before the end fails the fill.
pub struct FillWriter<K: Hash + Eq + Clone, E: Clone> {
    key: K,
    /// The fill this writer produces: its entry in `inflight` is removed only while it is
    /// still this fill's (after [`FillWriter::close_to_joiners`] a new fill may hold the key).
    fill: Arc<Fill<E>>,
    inflight: Arc<Mutex<HashMap<K, Arc<Fill<E>>>>>,
    spool: Arc<std::fs::File>,
    path: PathBuf,
    state: Arc<watch::Sender<FillState<E>>>,
    /// Bytes handed to [`FillWriter::append`]; the spooler thread writes them behind.
    received: u64,
    spooler: Option<Spooler>,
    done: bool,
    committed: bool,
}

impl<K: Hash + Eq + Clone, E: Clone + Send + Sync + 'static> FillWriter<K, E> {
    /// Response headers are in; `total` is the size if the upstream said.
    pub fn start(&self, total: Option<u64>) {
        self.state.send_modify(|s| {
            s.started = true;
            s.total = total;
        });
    }

    /// Bytes received so far (where a resumed transfer continues).
    pub fn written(&self) -> u64 {
        self.received
    }

    /// Appends a chunk to the spool; readers see it once the spooler thread has written it.
    /// Waits only when the thread is far behind (a slow disk).
    pub async fn append(&mut self, chunk: bytes::Bytes) -> std::io::Result<()> {
        self.append_batched(chunk).await?;
        self.flush().await
    }

    /// [`FillWriter::append`] for a fast source: the chunk goes to the spooler thread with the
    /// next 256 KiB or at [`FillWriter::flush`], which the caller owes its readers whenever
    /// the source makes it wait.
    pub async fn append_batched(&mut self, chunk: bytes::Bytes) -> std::io::Result<()> {
        let (offset, len) = (self.received, chunk.len() as u64);
        let spooler = match &mut self.spooler {
            Some(spooler) => spooler,
            None => self.spooler.insert(Spooler::start(
                self.spool.clone(),
                offset,
                self.state.clone(),
            )?),
        };
        // Counted as soon as queued: a cancelled wait below loses no received byte.
        spooler.push(chunk);
        self.received = offset + len;
        spooler.write_due().await
    }

    /// Hands what [`FillWriter::append_batched`] batched to the spooler thread now: readers
    /// see it without waiting for more.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.spooler {
            Some(spooler) => spooler.flush().await,
            None => Ok(()),
        }
    }

    /// The content matched its digest: once the spooler has written every byte, readers may
    /// deliver their last one, before the (slower) sync and commit. Sets the total for
    /// upstreams that sent no length. The only way on from here is [`VerifiedFill::commit`].
    /// If the spool cannot be completed (a failed write), the fill fails: verified always
    /// means every byte can be read.
    pub async fn verified(mut self) -> std::io::Result<VerifiedFill<K, E>> {
        if let Some(mut spooler) = self.spooler.take() {
            if let Err(e) = spooler.finish().await {
                self.finish(Err(FillFailure::Abandoned));
                return Err(e);
            }
        }
        let total = self.received;
        self.state.send_modify(|s| {
            s.total = Some(total);
            s.verified = true;
        });
        Ok(VerifiedFill { writer: self })
    }

    /// Requests from now on start a fill of their own instead of joining this one; readers
    /// that joined already still get every byte. For content that may differ between two
    /// requests (a tag list): a listing that has ended must not answer a later request.
    pub fn close_to_joiners(&self) {
        self.leave_inflight();
    }

    /// Failure: readers abort their responses; the next request starts a fresh fill.
    pub fn fail(mut self, error: E) {
        self.finish(Err(FillFailure::Failed(error)));
    }
}

impl<K: Hash + Eq + Clone, E: Clone> FillWriter<K, E> {
    fn leave_inflight(&self) {
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if inflight
            .get(&self.key)
            .is_some_and(|fill| Arc::ptr_eq(fill, &self.fill))
        {
            inflight.remove(&self.key);
        }
    }

    fn finish(&mut self, outcome: Result<(), FillFailure<E>>) {
        if self.done {
            return;
        }
        self.done = true;
        // Leave the in-flight map first, so a request arriving after a failure starts afresh
        // and one arriving after success finds the object in the store.
        self.leave_inflight();
        if let (Ok(total), Ok(())) = (self.spool.metadata().map(|m| m.len()), &outcome) {
            self.state.send_modify(|s| s.total = Some(total));
        }
        self.state.send_modify(|s| s.outcome = Some(outcome));
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A fill whose content matched its digest; readers already deliver every byte.
pub struct VerifiedFill<K: Hash + Eq + Clone, E: Clone> {
    writer: FillWriter<K, E>,
}

impl<K: Hash + Eq + Clone, E: Clone> VerifiedFill<K, E> {
    /// Syncs the spool file and hands it to `store` (which moves or uploads it), then
    /// completes the fill. If the sync or the store fails, the verified bytes are still
    /// served to the readers already following, uncached; the error is returned for the log.
    pub async fn commit<F, Fut>(mut self, store: F) -> Result<(), String>
    where
        F: FnOnce(PathBuf) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let file = self.writer.spool.clone();
        let synced = tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        let result = match synced {
            Err(e) => Err(format!("cannot sync the spool file: {e}")),
            Ok(()) => store(self.writer.path.clone()).await,
        };
        if result.is_ok() {
            self.writer.committed = true;
        }
        self.writer.finish(Ok(()));
        result
    }
}

impl<K: Hash + Eq + Clone, E: Clone> Drop for FillWriter<K, E> {
    fn drop(&mut self) {
        self.finish(Err(FillFailure::Abandoned));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    type TestFills = Fills<&'static str, String>;

    fn leader(fills: &TestFills) -> (Arc<Fill<String>>, FillWriter<&'static str, String>) {
        match fills.join("k").unwrap() {
            Joined::Leader(fill, writer) => (fill, writer),
            Joined::Follower(_) => panic!("expected to lead"),
        }
    }

    /// Verifies and commits `writer` with a store that accepts anything.
    async fn complete(writer: FillWriter<&'static str, String>) {
        writer
            .verified()
            .await
            .unwrap()
            .commit(|_| async { Ok(()) })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn followers_join_the_running_fill() {
        let dir = tempfile::tempdir().unwrap();
        let fills = TestFills::new(dir.path()).unwrap();
        let (_fill, writer) = leader(&fills);
        assert!(matches!(fills.join("k").unwrap(), Joined::Follower(_)));
        complete(writer).await;
        assert_eq!(fills.in_flight(), 0);
        assert!(
            matches!(fills.join("k").unwrap(), Joined::Leader(..)),
            "a finished fill is not joined"
        );
    }

    #[tokio::test]
    async fn a_fill_closed_to_joiners_serves_its_readers_and_a_later_request_leads_anew() {
        let dir = tempfile::tempdir().unwrap();
        let fills = TestFills::new(dir.path()).unwrap();
        let (fill, mut writer) = leader(&fills);
        writer.start(None);
        let reader = fill.reader(0, None).into_stream();
        writer
            .append(bytes::Bytes::from_static(b"tags"))
            .await
            .unwrap();
        writer.close_to_joiners();
        let (_, second) = leader(&fills);
        complete(writer).await;
        let body: Vec<u8> = reader.map(|c| c.unwrap().to_vec()).concat().await;
        assert_eq!(body, b"tags", "the reader that joined gets every byte");
        assert_eq!(
            fills.in_flight(),
            1,
            "the first writer left the second fill's entry alone"
        );
        drop(second);
        assert_eq!(fills.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_dropped_leader_wakes_its_readers_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let fills = TestFills::new(dir.path()).unwrap();
        let (fill, mut writer) = leader(&fills);
        writer.start(Some(10));
        writer
            .append(bytes::Bytes::from_static(b"hello"))
            .await
            .unwrap();
        let reader = tokio::spawn(fill.reader(0, None).into_stream().collect::<Vec<_>>());
        drop(writer);
        let items = tokio::time::timeout(std::time::Duration::from_secs(5), reader)
            .await
            .unwrap()
            .unwrap();
        assert!(
            items.last().unwrap().is_err(),
            "the reader ends with an error, not a short success"
        );
        assert!(matches!(fill.finished().await, Err(FillFailure::Abandoned)));
        assert_eq!(fills.in_flight(), 0, "the next request starts a fresh fill");
    }

    #[tokio::test]
    async fn a_leader_dropped_with_chunks_queued_stops_its_spooler_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let fills = TestFills::new(dir.path()).unwrap();
        let (fill, mut writer) = leader(&fills);
        writer.start(None);
        let chunk = bytes::Bytes::from(vec![7u8; 64 * 1024]);
        for _ in 0..256 {
            writer.append(chunk.clone()).await.unwrap();
        }
        assert_eq!(
            writer.written(),
            256 * 64 * 1024,
            "received, maybe not yet on file"
        );
        // Cancelled at the worst moment: chunks still queued for the spooler thread.
        drop(writer);
        assert!(matches!(fill.finished().await, Err(FillFailure::Abandoned)));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "spool file removed"
        );
        // The thread holds the spool file while it runs: it has let go once only the fill does.
        for _ in 0..500 {
            if Arc::strong_count(&fill.spool) == 1 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the spooler thread still runs after its writer was dropped");
    }

    #[tokio::test]
    async fn readers_get_every_byte_the_spooler_writes_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let fills = TestFills::new(dir.path()).unwrap();
        let (fill, mut writer) = leader(&fills);
        writer.start(None);
        let reader = tokio::spawn(
            fill.reader(0, None)
                .into_stream()
                .map(|c| c.unwrap().to_vec())
                .concat(),
        );
        let mut expected = Vec::new();
        for i in 0..300u32 {
            let part: Vec<u8> = (0..(i % 97 + 1) * 331).map(|j| (i + j) as u8).collect();
            expected.extend_from_slice(&part);
            writer.append(part.into()).await.unwrap();
        }
        complete(writer).await;
        let body = tokio::time::timeout(std::time::Duration::from_secs(10), reader)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(body.len(), expected.len());
        assert!(body == expected, "bytes out of order or lost");
    }

    #[tokio::test]
    async fn the_last_byte_waits_for_verification() {
        let dir = tempfile::tempdir().unwrap();
        let fills = TestFills::new(dir.path()).unwrap();
        let (fill, mut writer) = leader(&fills);
        writer.start(Some(5));
        writer
            .append(bytes::Bytes::from_static(b"hello"))
            .await
            .unwrap();
        let mut stream = fill.reader(0, None).into_stream();
        assert_eq!(&stream.next().await.unwrap().unwrap()[..], b"hell");
        let pending =
            tokio::time::timeout(std::time::Duration::from_millis(100), stream.next()).await;
        assert!(
            pending.is_err(),
            "all bytes are written but unverified: the last one is held back"
        );
        writer.fail("digest mismatch".into());
        assert!(stream.next().await.unwrap().is_err());
    }

    #[tokio::test]
    async fn verified_content_is_delivered_before_the_commit_and_despite_its_failure() {
        let dir = tempfile::tempdir().unwrap();
        let fills = TestFills::new(dir.path()).unwrap();
        let (fill, mut writer) = leader(&fills);
        writer.start(None);
        writer
            .append(bytes::Bytes::from_static(b"hello"))
            .await
            .unwrap();
        let verified = writer.verified().await.unwrap();
        let body: Vec<u8> = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            fill.reader(0, None)
                .into_stream()
                .map(|c| c.unwrap().to_vec())
                .concat(),
        )
        .await
        .expect("a verified fill needs no commit to finish its readers");
        assert_eq!(body, b"hello");
        // A reader that joined before a failed commit still gets the verified bytes.
        let late = fill.reader(1, None).into_stream();
        let committed = verified
            .commit(|_| async { Err("disk full while committing".to_string()) })
            .await;
        assert!(committed.is_err());
        let rest: Vec<u8> = late.map(|c| c.unwrap().to_vec()).concat().await;
        assert_eq!(rest, b"ello");
    }

    #[tokio::test]
    async fn a_verified_fill_delivers_everything_to_late_readers() {
        let dir = tempfile::tempdir().unwrap();
        let fills = TestFills::new(dir.path()).unwrap();
        let (fill, mut writer) = leader(&fills);
        writer.start(None);
        for part in [&b"abc"[..], b"def"] {
            writer
                .append(bytes::Bytes::copy_from_slice(part))
                .await
                .unwrap();
        }
        writer
            .verified()
            .await
            .unwrap()
            .commit(|path| async move {
                assert!(path.exists(), "the store gets the synced spool file");
                Ok(())
            })
            .await
            .unwrap();
        let body: Vec<u8> = fill
            .reader(2, None)
            .into_stream()
            .map(|c| c.unwrap().to_vec())
            .concat()
            .await;
        assert_eq!(body, b"cdef");
        let ranged: Vec<u8> = fill
            .reader(1, Some(3))
            .into_stream()
            .map(|c| c.unwrap().to_vec())
            .concat()
            .await;
        assert_eq!(ranged, b"bc");
    }
}

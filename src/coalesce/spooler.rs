//! The spool file's writer thread. The fill task hands it chunks and goes on receiving and
//! hashing; the thread writes whatever has queued in one go and then tells the readers. One
//! thread handoff per batch instead of one `spawn_blocking` per network chunk (a 200 MiB blob
//! arrives in thousands of 16–64 KiB chunks).

use std::io;
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use super::FillState;
use super::chunk_thread::ChunkThread;

/// Bytes written before the readers are told, at most: on a fast stream they start early.
const MAX_BATCH: usize = 1024 * 1024;
const NAME: &str = "spooler";

pub(super) struct Spooler(ChunkThread<io::Result<()>>);

impl Spooler {
    /// Starts the thread writing at `offset`; it publishes `written` as batches land.
    pub(super) fn start<E: Send + Sync + 'static>(
        file: Arc<std::fs::File>,
        offset: u64,
        state: Arc<watch::Sender<FillState<E>>>,
    ) -> io::Result<Spooler> {
        let thread = ChunkThread::start(NAME, move |mut queue| {
            let mut offset = offset;
            while let Some(first) = queue.next() {
                let mut batch = 0;
                let mut next = Some(first);
                while let Some((chunks, _share)) = next.take() {
                    for chunk in &chunks {
                        file.write_all_at(chunk, offset)?;
                        offset += chunk.len() as u64;
                        batch += chunk.len();
                    }
                    if batch < MAX_BATCH {
                        next = queue.try_next();
                    }
                }
                state.send_modify(|s| s.written = offset);
            }
            Ok(())
        })?;
        Ok(Spooler(thread))
    }

    /// Queues `chunk` to be written after what is queued already; [`Spooler::write_due`] sends
    /// it on.
    pub(super) fn push(&mut self, chunk: Bytes) {
        self.0.push(chunk);
    }

    /// Sends a full batch to the thread. An error is the thread's (a write that failed, e.g.
    /// ENOSPC).
    pub(super) async fn write_due(&mut self) -> io::Result<()> {
        let sent = self.0.flush_if_full(NAME).await;
        self.stopped_unless(sent).await
    }

    /// The thread's own error for a send that found it stopped.
    async fn stopped_unless(&mut self, sent: io::Result<()>) -> io::Result<()> {
        if sent.is_ok() {
            return Ok(());
        }
        Err(match self.finish().await {
            Err(e) => e,
            Ok(()) => io::Error::other("the spool writer has stopped"),
        })
    }

    /// Sends what is batched to the thread now.
    pub(super) async fn flush(&mut self) -> io::Result<()> {
        let sent = self.0.flush(NAME).await;
        self.stopped_unless(sent).await
    }

    /// Waits until every queued chunk is in the file (or the thread's error).
    pub(super) async fn finish(&mut self) -> io::Result<()> {
        self.0.finish(NAME).await?
    }
}

//! The spool file's writer thread. The fill task hands it chunks and goes on receiving and
//! hashing; the thread writes whatever has queued in one go and then tells the readers. One
//! thread handoff per batch instead of one `spawn_blocking` per network chunk (a 200 MiB blob
//! arrives in thousands of 16–64 KiB chunks).

use std::io;
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::FillState;

/// Chunks queued for the thread; the fill task waits when the thread is this far behind, so a
/// slow disk slows the download instead of filling memory.
const QUEUE: usize = 64;
/// Bytes written before the readers are told, at most: on a fast stream they start early.
const MAX_BATCH: usize = 1024 * 1024;

pub(super) struct Spooler {
    chunks: Option<mpsc::Sender<Bytes>>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl Spooler {
    /// Starts the thread writing at `offset`; it publishes `written` as batches land.
    pub(super) fn start<E: Send + Sync + 'static>(
        file: Arc<std::fs::File>,
        offset: u64,
        state: Arc<watch::Sender<FillState<E>>>,
    ) -> Spooler {
        let (chunks, mut queue) = mpsc::channel::<Bytes>(QUEUE);
        let thread = tokio::task::spawn_blocking(move || {
            let mut offset = offset;
            while let Some(first) = queue.blocking_recv() {
                let mut batch = 0;
                let mut next = Some(first);
                while let Some(chunk) = next.take() {
                    file.write_all_at(&chunk, offset)?;
                    offset += chunk.len() as u64;
                    batch += chunk.len();
                    if batch < MAX_BATCH {
                        next = queue.try_recv().ok();
                    }
                }
                state.send_modify(|s| s.written = offset);
            }
            Ok(())
        });
        Spooler {
            chunks: Some(chunks),
            thread: Some(thread),
        }
    }

    /// Queues `chunk`. An error is the thread's (a write that failed, e.g. ENOSPC).
    pub(super) async fn write(&mut self, chunk: Bytes) -> io::Result<()> {
        let queued = match &self.chunks {
            Some(chunks) => chunks.send(chunk).await.is_ok(),
            None => false,
        };
        if queued {
            return Ok(());
        }
        Err(match self.finish().await {
            Err(e) => e,
            Ok(()) => io::Error::other("the spool writer has stopped"),
        })
    }

    /// Waits until every queued chunk is in the file (or the thread's error).
    pub(super) async fn finish(&mut self) -> io::Result<()> {
        self.chunks = None;
        match self.thread.take() {
            Some(thread) => thread.await.map_err(io::Error::other)?,
            None => Ok(()),
        }
    }
}

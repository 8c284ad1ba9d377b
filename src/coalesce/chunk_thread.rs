//! A thread of its own, fed a fill's chunks through a queue bounded in bytes: the spooler and
//! the hasher. Dedicated threads, not the runtime's blocking pool: each lives as long as its
//! fill, and a pool shared with short blocking jobs (spool reads, syncs, store reads) must not
//! be filled up by them.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

/// Bytes queued for one thread at most; the fill task waits when the thread is this far
/// behind, so a slow disk slows the download instead of filling memory.
const BUDGET: usize = 4 * 1024 * 1024;

/// Bytes gathered before they go to the thread in one message. An HTTP/2 upstream sends
/// 16 KiB frames: one trip through the queue (and a wakeup) each would cost a third more CPU
/// per GiB. The fill flushes early whenever the upstream makes it wait.
const BATCH: usize = 256 * 1024;

/// Queued chunks, in order; their share of the budget is given back when the thread drops them.
pub(super) type Queued = (Vec<Bytes>, OwnedSemaphorePermit);

pub(super) struct ChunkThread<T> {
    queue: Option<mpsc::UnboundedSender<Queued>>,
    budget: Arc<Semaphore>,
    result: Option<oneshot::Receiver<T>>,
    /// Chunks not yet sent, and their bytes.
    batch: Vec<Bytes>,
    batched: usize,
}

/// The thread's end of the queue.
pub(super) struct ChunkQueue(mpsc::UnboundedReceiver<Queued>);

impl ChunkQueue {
    /// The next chunk, waiting for it; `None` once the queue is closed and empty.
    pub(super) fn next(&mut self) -> Option<Queued> {
        self.0.blocking_recv()
    }

    /// The next chunk if one is queued now.
    pub(super) fn try_next(&mut self) -> Option<Queued> {
        self.0.try_recv().ok()
    }
}

fn stopped(name: &str) -> io::Error {
    io::Error::other(format!("the {name} thread stopped"))
}

impl<T: Send + 'static> ChunkThread<T> {
    /// Starts thread `name` running `work` over the queue; its return value is what
    /// [`ChunkThread::finish`] gives back.
    pub(super) fn start(
        name: &'static str,
        work: impl FnOnce(ChunkQueue) -> T + Send + 'static,
    ) -> io::Result<ChunkThread<T>> {
        let (queue, rx) = mpsc::unbounded_channel();
        let (done, result) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("berth-{name}"))
            .spawn(move || {
                let _ = done.send(work(ChunkQueue(rx)));
            })?;
        Ok(ChunkThread {
            queue: Some(queue),
            budget: Arc::new(Semaphore::new(BUDGET)),
            result: Some(result),
            batch: Vec::new(),
            batched: 0,
        })
    }

    /// Queues `chunk` (sent with the batch once it is [`BATCH`] bytes, or at [`Self::flush`]),
    /// waiting while the thread is [`BUDGET`] bytes behind. Fails when the thread has stopped
    /// (finished early with an error, or panicked).
    pub(super) async fn send(&mut self, chunk: Bytes, name: &str) -> io::Result<()> {
        self.push(chunk);
        self.flush_if_full(name).await
    }

    /// Adds `chunk` to the batch; the caller owes [`Self::flush_if_full`].
    pub(super) fn push(&mut self, chunk: Bytes) {
        self.batched += chunk.len();
        self.batch.push(chunk);
    }

    pub(super) async fn flush_if_full(&mut self, name: &str) -> io::Result<()> {
        if self.batched >= BATCH {
            self.flush(name).await?;
        }
        Ok(())
    }

    /// Sends what is batched. Cancel-safe: the batch stays until its budget is granted.
    pub(super) async fn flush(&mut self, name: &str) -> io::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let share = self.batched.clamp(1, BUDGET) as u32;
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(share)
            .await
            .map_err(|_| stopped(name))?;
        let batch = std::mem::take(&mut self.batch);
        self.batched = 0;
        match &self.queue {
            Some(queue) => queue.send((batch, permit)).map_err(|_| stopped(name)),
            None => Err(stopped(name)),
        }
    }

    /// Closes the queue and waits for the thread's result (everything queued processed).
    pub(super) async fn finish(&mut self, name: &str) -> io::Result<T> {
        // A flush fails only when the thread has stopped on its own: its result says why.
        let _ = self.flush(name).await;
        self.queue = None;
        match self.result.take() {
            Some(result) => result.await.map_err(|_| stopped(name)),
            None => Err(stopped(name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn the_queue_holds_at_most_its_budget_in_bytes() {
        let (gate, wait) = std::sync::mpsc::channel::<()>();
        let mut thread = ChunkThread::start("test", move |mut queue| {
            let _ = wait.recv();
            let mut total = 0;
            while let Some((batch, _share)) = queue.next() {
                total += batch.iter().map(Bytes::len).sum::<usize>();
            }
            total
        })
        .unwrap();
        let chunk = Bytes::from(vec![0u8; 1024 * 1024]);
        for _ in 0..4 {
            thread.send(chunk.clone(), "test").await.unwrap();
        }
        let over = tokio::time::timeout(
            Duration::from_millis(200),
            thread.send(chunk.clone(), "test"),
        )
        .await;
        assert!(
            over.is_err(),
            "a fifth MiB waits while the thread is 4 MiB behind"
        );
        gate.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), thread.send(chunk, "test"))
            .await
            .expect("room again once the thread has caught up")
            .unwrap();
        // The send given up on left its chunk in the batch: nothing received is lost.
        assert_eq!(thread.finish("test").await.unwrap(), 6 * 1024 * 1024);
    }

    /// Small chunks travel together: one message per [`BATCH`] bytes, the rest at the flush.
    #[tokio::test]
    async fn small_chunks_go_to_the_thread_in_batches_and_in_order() {
        let mut thread = ChunkThread::start("test", |mut queue| {
            let mut batches = Vec::new();
            while let Some((batch, _share)) = queue.next() {
                batches.push(batch.iter().flat_map(|c| c.to_vec()).collect::<Vec<u8>>());
            }
            batches
        })
        .unwrap();
        let chunks = BATCH / (16 * 1024) + 3;
        for i in 0..chunks {
            thread
                .send(Bytes::from(vec![i as u8; 16 * 1024]), "test")
                .await
                .unwrap();
        }
        let batches = thread.finish("test").await.unwrap();
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, [BATCH, 3 * 16 * 1024]);
        let bytes: Vec<u8> = batches.concat();
        let want: Vec<u8> = (0..chunks).flat_map(|i| vec![i as u8; 16 * 1024]).collect();
        assert!(bytes == want, "the bytes arrive in order");
    }

    #[tokio::test]
    async fn a_thread_that_died_fails_the_sender_instead_of_blocking_it() {
        let mut thread: ChunkThread<()> =
            ChunkThread::start("test", |_queue| panic!("thread died")).unwrap();
        let chunk = Bytes::from(vec![0u8; 1024 * 1024]);
        let mut failed = false;
        for _ in 0..64 {
            if thread.send(chunk.clone(), "test").await.is_err() {
                failed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(failed, "sends fail once the thread is gone");
        assert!(thread.finish("test").await.is_err());
    }
}

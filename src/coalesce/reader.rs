//! A reader that follows a fill's spool file as it grows.

use std::fmt::Display;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use tokio::sync::watch;

use super::{FillFailure, FillState};
use crate::store::{FileSpan, SpanStream};

/// Bytes per read of the spool (for a client that reads bytes, not spans). Small on purpose:
/// each waiting client holds about one chunk here and one in the server's write buffer, so
/// fan-out memory is ~2 chunks per client.
pub const FOLLOW_CHUNK: u64 = 64 * 1024;

/// Streams `[pos, end)` of a fill. Construct with [`super::Fill::reader`].
pub struct FillReader<E> {
    spool: Arc<std::fs::File>,
    state: watch::Receiver<FillState<E>>,
    _count: ReaderCount,
    pos: u64,
    end: Option<u64>,
}

/// Why a reader failed: the producer's error, kept whole (type-erased) inside the `io::Error`
/// so the API can tell its class (`ReaderError::cause::<MirrorError>()`).
pub struct ReaderError {
    message: String,
    cause: Box<dyn std::any::Any + Send + Sync>,
}

impl ReaderError {
    fn new<E: Display + Clone + Send + Sync + 'static>(e: &E) -> ReaderError {
        ReaderError {
            message: format!("upstream fill failed: {e}"),
            cause: Box::new(e.clone()),
        }
    }

    pub fn cause<E: 'static>(&self) -> Option<&E> {
        self.cause.downcast_ref()
    }
}

impl Display for ReaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::fmt::Debug for ReaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ReaderError {}

/// Counts a fill's live readers; the count drops with the reader (client gone or done).
pub(super) struct ReaderCount(Arc<AtomicUsize>);

impl ReaderCount {
    pub(super) fn new(count: Arc<AtomicUsize>) -> ReaderCount {
        count.fetch_add(1, Ordering::Relaxed);
        ReaderCount(count)
    }
}

impl Drop for ReaderCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

enum Step {
    Read(u64),
    Wait,
    Done,
    Fail(io::Error),
}

impl<E: Clone + Display + Send + Sync + 'static> FillReader<E> {
    pub(super) fn new(
        spool: Arc<std::fs::File>,
        state: watch::Receiver<FillState<E>>,
        count: ReaderCount,
        pos: u64,
        end: Option<u64>,
    ) -> Self {
        FillReader {
            spool,
            state,
            _count: count,
            pos,
            end,
        }
    }

    /// The fill's bytes, read at most 64 KiB at a time.
    pub fn into_stream(self) -> BoxStream<'static, io::Result<Bytes>> {
        crate::store::file_span::into_bytes(self.into_spans(), FOLLOW_CHUNK)
    }

    /// The fill's bytes as spans of its spool file, each as long as what had arrived.
    pub fn into_spans(self) -> SpanStream {
        futures::stream::unfold(Some(self), |reader| async move {
            let mut reader = reader?;
            match reader.next_span().await {
                Ok(Some(span)) => Some((Ok(span), Some(reader))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
        .boxed()
    }

    async fn next_span(&mut self) -> io::Result<Option<FileSpan>> {
        loop {
            match self.step() {
                Step::Read(len) => {
                    let span = FileSpan {
                        file: self.spool.clone(),
                        offset: self.pos,
                        len,
                    };
                    self.pos += len;
                    return Ok(Some(span));
                }
                Step::Done => return Ok(None),
                Step::Fail(e) => return Err(e),
                Step::Wait => {
                    if self.state.changed().await.is_err() {
                        return Err(io::Error::other("fill abandoned by its producer"));
                    }
                }
            }
        }
    }

    /// Decides what to do with the state as it is now.
    fn step(&mut self) -> Step {
        let state = self.state.borrow_and_update();
        let verified = state.verified
            || match &state.outcome {
                Some(Ok(())) => true,
                Some(Err(FillFailure::Failed(e))) => {
                    return Step::Fail(io::Error::other(ReaderError::new(e)));
                }
                Some(Err(FillFailure::Abandoned)) => {
                    return Step::Fail(io::Error::other("fill abandoned by its producer"));
                }
                None => false,
            };
        let limit = self.end.or(state.total);
        if verified
            && limit.is_none_or(|l| self.pos >= l)
            && self.pos >= state.written.min(limit.unwrap_or(u64::MAX))
        {
            return Step::Done;
        }
        let mut available = state.written;
        if let Some(l) = limit {
            available = available.min(l);
        }
        if !verified {
            // Hold back the last byte of the response until the content is verified, so an
            // unverified fill can never look like a complete response.
            available = available.min(state.written.saturating_sub(1));
            if let Some(l) = limit {
                available = available.min(l.saturating_sub(1));
            }
        }
        if self.pos < available {
            Step::Read(available - self.pos)
        } else {
            Step::Wait
        }
    }
}

//! A run of a file's bytes that nobody has read yet: either read into memory (any client), or
//! handed to the kernel to send straight from the page cache (a plain-HTTP/1.1 client, see
//! `server::zero_copy`). Blobs on local disk and fills' spool files are served as spans, so the
//! choice is made where the connection is known, not here.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};

use super::ByteStream;

#[derive(Clone)]
pub struct FileSpan {
    pub file: Arc<std::fs::File>,
    pub offset: u64,
    pub len: u64,
}

pub type SpanStream = BoxStream<'static, io::Result<FileSpan>>;

impl FileSpan {
    /// The span's bytes, all of them (a file that ends first is an error): from the page
    /// cache inline, else on the blocking pool.
    pub async fn read(&self) -> io::Result<Bytes> {
        let len = usize::try_from(self.len).map_err(io::Error::other)?;
        let first = super::page_cache::read_at(&self.file, self.offset, len).await?;
        if first.len() == len {
            return Ok(first);
        }
        // A short read (part of the span not cached, or the file ends): read on to the end.
        let mut whole = bytes::BytesMut::with_capacity(len);
        whole.extend_from_slice(&first);
        while whole.len() < len {
            let at = self.offset + whole.len() as u64;
            let more = super::page_cache::read_at(&self.file, at, len - whole.len()).await?;
            whole.extend_from_slice(&more);
        }
        Ok(whole.freeze())
    }

    /// Makes sure the span's pages are in the page cache, so that sending them does not wait
    /// for the disk on a runtime thread: one `cachestat` call when they are (the warm case),
    /// a read-ahead on the blocking pool when they are not or the kernel cannot say.
    pub async fn make_resident(&self) -> io::Result<()> {
        if is_cached(&self.file, self.offset, self.len) {
            return Ok(());
        }
        let span = self.clone();
        tokio::task::spawn_blocking(move || {
            use std::os::fd::AsRawFd;
            let len = usize::try_from(span.len).unwrap_or(usize::MAX);
            let offset = i64::try_from(span.offset).map_err(io::Error::other)?;
            // SAFETY: readahead only reads the descriptor's pages into the page cache.
            let done = unsafe { libc::readahead(span.file.as_raw_fd(), offset, len) };
            if done < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
        .await
        .map_err(io::Error::other)?
    }

    /// This span cut into spans of at most `max` bytes, in order.
    pub fn split(self, max: u64) -> impl Iterator<Item = FileSpan> {
        let max = max.max(1);
        let end = self.offset + self.len;
        (self.offset..end)
            .step_by(max as usize)
            .map(move |offset| FileSpan {
                file: self.file.clone(),
                offset,
                len: max.min(end - offset),
            })
    }
}

/// `[start, end)` of `file`, as one span.
pub fn whole(file: Arc<std::fs::File>, start: u64, end: u64) -> SpanStream {
    let span = FileSpan {
        file,
        offset: start,
        len: end.saturating_sub(start),
    };
    futures::stream::iter([Ok(span)]).boxed()
}

/// The same bytes as spans of at most `max` bytes.
pub fn pieces(spans: SpanStream, max: u64) -> SpanStream {
    spans
        .flat_map(move |span| {
            let pieces: Box<dyn Iterator<Item = io::Result<FileSpan>> + Send> = match span {
                Ok(span) => Box::new(span.split(max).map(Ok)),
                Err(e) => Box::new(std::iter::once(Err(e))),
            };
            futures::stream::iter(pieces)
        })
        .boxed()
}

/// The spans' bytes, read at most `chunk` bytes at a time: what one client holds in memory.
pub fn into_bytes(spans: SpanStream, chunk: u64) -> ByteStream {
    pieces(spans, chunk)
        .then(|span| async move { span?.read().await })
        .boxed()
}

/// Whether every page of the range is in the page cache (Linux 6.5's `cachestat`); `false`
/// when the kernel cannot say.
fn is_cached(file: &std::fs::File, offset: u64, len: u64) -> bool {
    use std::os::fd::AsRawFd;
    /// The same number on every architecture (the unified syscall table); the libc crate
    /// does not name it for all of them yet.
    const SYS_CACHESTAT: libc::c_long = 451;
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    if len == 0 {
        return true;
    }
    const PAGE: u64 = 4096;
    let pages = (offset + len).div_ceil(PAGE) - offset / PAGE;
    let range = Range { off: offset, len };
    let mut stat = Stat::default();
    // SAFETY: both pointers are to live, properly laid out structs for the call's duration.
    let result = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const Range,
            &mut stat as *mut Stat,
            0u32,
        )
    };
    result == 0 && stat.nr_cache >= pages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spans_read_back_exactly_their_range_and_a_written_file_is_cached() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = Arc::new(std::fs::File::open(&path).unwrap());
        for (start, end) in [(0, 3_000_000), (1, 2), (999_999, 2_500_001), (7, 7)] {
            let got: Vec<u8> = into_bytes(whole(file.clone(), start, end), 1 << 20)
                .map(|c| c.unwrap().to_vec())
                .concat()
                .await;
            assert!(got == data[start as usize..end as usize], "{start}..{end}");
        }
        let split: Vec<(u64, u64)> = FileSpan {
            file: file.clone(),
            offset: 10,
            len: 15,
        }
        .split(10)
        .map(|s| (s.offset, s.len))
        .collect();
        assert_eq!(split, [(10, 10), (20, 5)]);
        let past_the_end = into_bytes(whole(file.clone(), 2_999_000, 3_000_100), 1 << 20)
            .collect::<Vec<_>>()
            .await;
        assert!(
            past_the_end.last().unwrap().is_err(),
            "a range past the end is an error, not short"
        );
        // Just written: its pages are in the page cache (or the kernel cannot say, and the
        // read-ahead must still succeed).
        let span = FileSpan {
            file,
            offset: 0,
            len: 3_000_000,
        };
        span.make_resident().await.unwrap();
    }
}

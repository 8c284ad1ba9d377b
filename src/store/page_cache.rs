//! Reading a file range as the runtime's own work: each chunk is first read from the page
//! cache without blocking (`preadv2` with `RWF_NOWAIT`) on the runtime thread, and only a
//! chunk the kernel would have to fetch from disk goes to the blocking pool. A warm blob (the
//! common case for a mirror) then costs one `preadv2` per chunk and no thread hop, and a
//! client that stops reading holds no thread: the stream is simply not polled.

use std::io;
use std::sync::Arc;

use bytes::Bytes;

/// Reads from the page cache without blocking, on the calling thread; gives the buffer back
/// when the kernel would have to wait for the disk (or cannot say): then the caller reads on
/// the blocking pool, which also reports any real error.
fn read_cached(file: &std::fs::File, offset: u64, mut buf: Vec<u8>) -> Result<Bytes, Vec<u8>> {
    let read = rustix::io::preadv2(
        file,
        &mut [io::IoSliceMut::new(&mut buf)],
        offset,
        rustix::io::ReadWriteFlags::NOWAIT,
    );
    match read {
        Ok(n) if n > 0 => {
            buf.truncate(n);
            Ok(Bytes::from(buf))
        }
        _ => Err(buf),
    }
}

/// Up to `len` bytes at `offset`: from the page cache inline, else on the blocking pool.
pub async fn read_at(file: &Arc<std::fs::File>, offset: u64, len: usize) -> io::Result<Bytes> {
    let buf = match read_cached(file, offset, vec![0u8; len]) {
        Ok(bytes) => return Ok(bytes),
        Err(buf) => buf,
    };
    let file = file.clone();
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let mut buf = buf;
        let n = file.read_at(&mut buf, offset)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file ended before the range did",
            ));
        }
        buf.truncate(n);
        Ok(Bytes::from(buf))
    })
    .await
    .map_err(io::Error::other)?
}

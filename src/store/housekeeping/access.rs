//! Who uses what: last-access times kept in memory and flushed in batches, and a count of
//! open readers per key so the evictor never deletes an object while it is being read.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

/// Last access per key since the last flush. A read costs a map insert, never a disk write;
/// [`AccessLog::flush`] moves the files' mtimes forward in one batch.
#[derive(Default)]
pub struct AccessLog {
    recent: Mutex<HashMap<String, SystemTime>>,
}

impl AccessLog {
    pub fn record(&self, key: &str) {
        let now = SystemTime::now();
        let mut recent = lock(&self.recent);
        match recent.get_mut(key) {
            Some(at) => *at = now,
            None => {
                recent.insert(key.to_string(), now);
            }
        }
    }

    /// The last access recorded in memory (not yet flushed), if any.
    pub fn last(&self, key: &str) -> Option<SystemTime> {
        lock(&self.recent).get(key).copied()
    }

    pub fn forget(&self, key: &str) {
        lock(&self.recent).remove(key);
    }

    /// Takes everything recorded since the last take.
    pub fn take(&self) -> HashMap<String, SystemTime> {
        std::mem::take(&mut *lock(&self.recent))
    }
}

/// Writes a batch of access times as the files' mtimes under `root`; returns how many were
/// set. Blocking: call from `spawn_blocking`. A file evicted meanwhile is skipped.
pub fn write_mtimes(root: &Path, batch: HashMap<String, SystemTime>) -> usize {
    let mut written = 0;
    for (key, at) in batch {
        // Opening read-only is enough for futimens on a file we own.
        let set = std::fs::File::open(root.join(&key)).and_then(|f| f.set_modified(at));
        match set {
            Ok(()) => written += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(%key, error = %e, "cannot record the access time"),
        }
    }
    written
}

/// Open readers per key. The evictor deletes under the same lock a reader registers under,
/// so "no readers" and "deleted" are one step.
#[derive(Default, Clone)]
pub struct OpenReaders {
    counts: Arc<Mutex<HashMap<String, usize>>>,
}

impl OpenReaders {
    /// Registers a reader of `key` until the guard is dropped.
    pub fn open(&self, key: &str) -> ReaderGuard {
        *lock(&self.counts).entry(key.to_string()).or_default() += 1;
        ReaderGuard {
            readers: self.clone(),
            key: key.to_string(),
        }
    }

    /// Runs `delete` only if nobody reads `key`; `None` when it is busy.
    pub fn unless_read<T>(&self, key: &str, delete: impl FnOnce() -> T) -> Option<T> {
        let counts = lock(&self.counts);
        if counts.get(key).is_some_and(|&n| n > 0) {
            return None;
        }
        Some(delete())
    }

    pub fn is_read(&self, key: &str) -> bool {
        lock(&self.counts).get(key).is_some_and(|&n| n > 0)
    }
}

pub struct ReaderGuard {
    readers: OpenReaders,
    key: String,
}

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        let mut counts = lock(&self.readers.counts);
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// Poison-tolerant: a panic elsewhere must not stop reads or eviction.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_key_is_not_deleted_until_its_reader_is_gone() {
        let readers = OpenReaders::default();
        let guard = readers.open("blobs/sha256/a");
        let second = readers.open("blobs/sha256/a");
        assert_eq!(readers.unless_read("blobs/sha256/a", || ()), None);
        drop(guard);
        assert!(readers.is_read("blobs/sha256/a"));
        drop(second);
        assert_eq!(readers.unless_read("blobs/sha256/a", || 7), Some(7));
    }

    #[test]
    fn flush_moves_mtimes_forward() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k");
        std::fs::write(&file, b"x").unwrap();
        let old = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        std::fs::File::open(&file)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let log = AccessLog::default();
        log.record("k");
        log.record("gone");
        assert!(log.last("k").is_some());
        assert_eq!(write_mtimes(dir.path(), log.take()), 1);
        assert!(log.last("k").is_none(), "flushed entries leave memory");
        let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
        assert!(mtime > old + std::time::Duration::from_secs(1_000_000));
    }
}

//! Local-disk store: one file per key under the data directory, written by temp-file + rename.
//!
//! Besides the [`BlobStore`] trait it keeps what the evictor needs: bytes of blobs and
//! manifests (scanned at open, then counted on every commit and delete), last-access times in
//! memory ([`AccessLog`]) and open readers per key ([`OpenReaders`]).
//!
//! Files are created `0640` and directories `0750`: cached images may be private ones, which
//! other users of the host must not read. At start-up only the temp files berth itself named
//! (`put-<16 hex>`) are removed from `tmp/`; anything else someone put there stays.

use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::housekeeping::access::{AccessLog, OpenReaders};
use super::housekeeping::scan::{self, ObjectKind};
use super::{BlobStore, ByteStream, Content, Listed, SpanStream, StoreError};

/// Bytes per read of a stored blob: large, so a warm GET is few syscalls; one chunk is what a
/// client's response holds in flight beside the socket buffer.
pub const READ_CHUNK: u64 = 512 * 1024;

/// Mode of every file berth writes into the cache (not world-readable).
pub const FILE_MODE: u32 = 0o640;
/// Mode of every directory berth creates under the data directory.
pub const DIR_MODE: u32 = 0o750;
/// Prefix of the store's own temp files in `tmp/`.
const TEMP_PREFIX: &str = "put-";

pub struct DiskStore {
    /// Bytes of fills in progress (spool files), counted against `max_size` with `usage`.
    spooled: AtomicU64,
    root: PathBuf,
    tmp: PathBuf,
    /// Bytes of blobs and manifests.
    usage: AtomicU64,
    /// Woken on every commit of a counted object, so the evictor can check the size.
    grew: tokio::sync::Notify,
    access: AccessLog,
    readers: OpenReaders,
}

impl DiskStore {
    /// Opens (creating) the store under `root` for the server: leftover temp files of a
    /// crashed run are removed, then the objects are counted.
    pub fn open(root: &Path) -> std::io::Result<DiskStore> {
        remove_own_temp_files(&root.join("tmp"), &[TEMP_PREFIX])?;
        DiskStore::attach(root)
    }

    /// Opens the store without cleaning anything: for `berth cache` commands that may run
    /// beside a live `berth serve`, whose temp files are in use.
    pub fn attach(root: &Path) -> std::io::Result<DiskStore> {
        let usage = scan::objects(root)?.iter().map(|o| o.size).sum();
        Ok(DiskStore {
            root: root.to_owned(),
            tmp: root.join("tmp"),
            usage: AtomicU64::new(usage),
            spooled: AtomicU64::new(0),
            grew: tokio::sync::Notify::new(),
            access: AccessLog::default(),
            readers: OpenReaders::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Bytes of blobs and manifests, as counted since open.
    pub fn usage(&self) -> u64 {
        self.usage.load(Ordering::Relaxed)
    }

    /// Bytes in spool files of fills in progress (see [`BlobStore::spooling`]).
    pub fn spooled(&self) -> u64 {
        self.spooled.load(Ordering::Relaxed)
    }

    /// Replaces the running count with a fresh scan's (the evictor rescans on every run, which
    /// also picks up deletes by `berth cache gc` in another process).
    pub fn set_usage(&self, bytes: u64) {
        self.usage.store(bytes, Ordering::Relaxed);
    }

    /// Resolves after the next commit of a blob or manifest.
    pub async fn grown(&self) {
        self.grew.notified().await
    }

    pub fn access_log(&self) -> &AccessLog {
        &self.access
    }

    pub fn readers(&self) -> &OpenReaders {
        &self.readers
    }

    /// Writes the in-memory access times to the files' mtimes (one batch, off the runtime).
    pub async fn flush_access_times(&self) -> usize {
        let (root, batch) = (self.root.clone(), self.access.take());
        if batch.is_empty() {
            return 0;
        }
        tokio::task::spawn_blocking(move || super::housekeeping::access::write_mtimes(&root, batch))
            .await
            .unwrap_or(0)
    }

    /// Deletes an evictable object unless a reader has it open; `Ok(None)` when busy or gone,
    /// else the bytes freed. (A committed blob that fill followers still stream from the spool
    /// file they opened is safe too: Unix keeps an unlinked file readable through open fds.)
    pub fn evict(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let path = self.path(key)?;
        if ObjectKind::of_key(key).is_none() {
            return Err(StoreError::InvalidKey(key.into()));
        }
        let removed = self.readers.unless_read(key, || {
            let size = std::fs::metadata(&path)?.len();
            std::fs::remove_file(&path)?;
            Ok::<_, std::io::Error>(size)
        });
        match removed {
            None => Ok(None),
            Some(Ok(size)) => {
                self.usage
                    .fetch_sub(size.min(self.usage()), Ordering::Relaxed);
                self.access.forget(key);
                Ok(Some(size))
            }
            Some(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Some(Err(e)) => Err(StoreError::io(key, e)),
        }
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        let relative = Path::new(key);
        let safe = !key.is_empty()
            && relative
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        if !safe {
            return Err(StoreError::InvalidKey(key.into()));
        }
        Ok(self.root.join(relative))
    }

    async fn place(&self, key: &str, from: &Path) -> Result<(), StoreError> {
        let target = self.path(key)?;
        if let Some(parent) = target.parent() {
            tokio::fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(parent)
                .await
                .map_err(|e| StoreError::io(key, e))?;
        }
        let counted = ObjectKind::of_key(key).is_some();
        let (new_size, old_size) = if counted {
            let new = tokio::fs::metadata(from)
                .await
                .map(|m| m.len())
                .unwrap_or(0);
            let old = tokio::fs::metadata(&target)
                .await
                .map(|m| m.len())
                .unwrap_or(0);
            (new, old)
        } else {
            (0, 0)
        };
        tokio::fs::rename(from, &target)
            .await
            .map_err(|e| StoreError::io(key, e))?;
        if counted {
            self.usage.fetch_add(new_size, Ordering::Relaxed);
            self.usage
                .fetch_sub(old_size.min(self.usage()), Ordering::Relaxed);
            self.grew.notify_one();
        }
        Ok(())
    }
}

/// `<prefix><16 hex digits>`: the only names berth gives its temp and spool files.
pub fn temp_name(prefix: &str) -> String {
    format!("{prefix}{:016x}", rand::random::<u64>())
}

fn is_temp_name(name: &str, prefixes: &[&str]) -> bool {
    prefixes.iter().any(|prefix| {
        name.strip_prefix(prefix).is_some_and(|rest| {
            rest.len() == 16 && rest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
    })
}

/// Creates `dir` (mode [`DIR_MODE`]) if needed and removes the regular files in it that berth
/// named ([`temp_name`] with one of `prefixes`): leftovers of a crashed run. Anything else (a
/// directory, a symlink, a file someone else put there) is left alone. Returns how many were removed.
pub fn remove_own_temp_files(dir: &Path, prefixes: &[&str]) -> std::io::Result<usize> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    let mut removed = 0;
    let mut others = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ours = entry.file_type()?.is_file()
            && entry
                .file_name()
                .to_str()
                .is_some_and(|n| is_temp_name(n, prefixes));
        if ours {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        } else {
            others += 1;
        }
    }
    if others > 0 {
        tracing::warn!(dir = %dir.display(), entries = others,
            "left alone entries berth did not create; remove them by hand if they are not needed");
    }
    Ok(removed)
}

impl DiskStore {
    async fn spans(&self, key: &str, range: Range<u64>) -> Result<SpanStream, StoreError> {
        let path = self.path(key)?;
        // Registered before the open, so the evictor cannot delete between open and stream.
        let guard = self.readers.open(key);
        self.access.record(key);
        let file = tokio::task::spawn_blocking(move || std::fs::File::open(path))
            .await
            .map_err(|e| StoreError::io(key, std::io::Error::other(e)))?
            .map_err(|e| StoreError::io(key, e))?;
        let spans = super::file_span::whole(Arc::new(file), range.start, range.end);
        // The guard lives as long as the stream: dropped when the response ends or is cancelled.
        Ok(spans
            .map(move |span| {
                let _reading = &guard;
                span
            })
            .boxed())
    }
}

#[async_trait::async_trait]
impl BlobStore for DiskStore {
    async fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        match tokio::fs::metadata(self.path(key)?).await {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(key, e)),
        }
    }

    async fn read(&self, key: &str, range: Range<u64>) -> Result<ByteStream, StoreError> {
        let spans = self.spans(key, range).await?;
        Ok(super::file_span::into_bytes(spans, READ_CHUNK))
    }

    async fn read_content(&self, key: &str, range: Range<u64>) -> Result<Content, StoreError> {
        self.spans(key, range).await.map(Content::Spans)
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let path = self.path(key)?;
        if ObjectKind::of_key(key).is_some() {
            self.access.record(key);
        }
        match tokio::fs::read(path).await {
            Ok(bytes) => Ok(Some(bytes.into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(key, e)),
        }
    }

    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        self.path(key)?;
        let tmp = self.tmp.join(temp_name(TEMP_PREFIX));
        let result = async {
            let mut file = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .open(&tmp)
                .await?;
            file.write_all(&bytes).await?;
            file.sync_data().await?;
            Ok::<_, std::io::Error>(())
        }
        .await;
        if let Err(e) = result {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(StoreError::io(key, e));
        }
        let placed = self.place(key, &tmp).await;
        if placed.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        placed
    }

    async fn create(&self, key: &str, bytes: Bytes) -> Result<bool, StoreError> {
        let path = self.path(key)?;
        let tmp = self
            .tmp
            .join(format!("create-{:016x}", rand::random::<u64>()));
        let result = async {
            tokio::fs::write(&tmp, &bytes).await?;
            if let Some(dir) = path.parent() {
                tokio::fs::create_dir_all(dir).await?;
            }
            // A hard link never replaces an existing file: the atomic "create if absent".
            match tokio::fs::hard_link(&tmp, &path).await {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            }
        }
        .await;
        let _ = tokio::fs::remove_file(&tmp).await;
        result.map_err(|e| StoreError::io(key, e))
    }

    async fn commit_file(&self, key: &str, file: &Path) -> Result<(), StoreError> {
        self.place(key, file).await
    }

    fn spooling(&self, delta: i64) {
        if delta >= 0 {
            // A reservation: the evictor makes room for it now.
            self.spooled.fetch_add(delta as u64, Ordering::Relaxed);
            self.grew.notify_one();
        } else {
            let d = delta.unsigned_abs();
            let _ = self
                .spooled
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                    Some(v.saturating_sub(d))
                });
        }
    }

    fn touch(&self, key: &str) {
        self.access.record(key);
    }

    fn local_usage(&self) -> u64 {
        self.usage()
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let size = tokio::fs::metadata(&path).await.map(|m| m.len()).ok();
        match tokio::fs::remove_file(path).await {
            Ok(()) => {
                if let (Some(size), Some(_)) = (size, ObjectKind::of_key(key)) {
                    self.usage
                        .fetch_sub(size.min(self.usage()), Ordering::Relaxed);
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        let start = self.path(prefix)?;
        let (root, tmp) = (self.root.clone(), self.tmp.clone());
        let prefix_owned = prefix.to_string();
        tokio::task::spawn_blocking(move || {
            let mut listed = Vec::new();
            let mut dirs = vec![start.clone()];
            // The prefix may name one object.
            match std::fs::metadata(&start) {
                Ok(meta) if meta.is_file() => dirs.clear(),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(listed),
                Err(e) => return Err(StoreError::io(&prefix_owned, e)),
            }
            if dirs.is_empty() {
                let size = std::fs::metadata(&start)
                    .map_err(|e| StoreError::io(&prefix_owned, e))?
                    .len();
                listed.push(Listed {
                    key: prefix_owned.clone(),
                    size,
                });
            }
            while let Some(dir) = dirs.pop() {
                if dir == tmp {
                    continue;
                }
                let entries = match std::fs::read_dir(&dir) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(StoreError::io(&prefix_owned, e)),
                };
                for entry in entries {
                    let entry = entry.map_err(|e| StoreError::io(&prefix_owned, e))?;
                    let meta = entry
                        .metadata()
                        .map_err(|e| StoreError::io(&prefix_owned, e))?;
                    let path = entry.path();
                    if meta.is_dir() {
                        dirs.push(path);
                    } else if meta.is_file() {
                        let relative = path.strip_prefix(&root).unwrap_or(&path);
                        if let Some(key) = relative.to_str() {
                            listed.push(Listed {
                                key: key.to_string(),
                                size: meta.len(),
                            });
                        }
                    }
                }
            }
            listed.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(listed)
        })
        .await
        .map_err(|e| StoreError::io(prefix, std::io::Error::other(e)))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    #[tokio::test]
    async fn put_get_range_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path()).unwrap();
        assert_eq!(store.size("blobs/sha256/aa").await.unwrap(), None);
        store
            .put("blobs/sha256/aa", Bytes::from_static(b"hello world"))
            .await
            .unwrap();
        assert_eq!(store.size("blobs/sha256/aa").await.unwrap(), Some(11));
        let part: Vec<Bytes> = store
            .read("blobs/sha256/aa", 6..11)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(part.concat(), b"world");
        store.delete("blobs/sha256/aa").await.unwrap();
        assert_eq!(store.get("blobs/sha256/aa").await.unwrap(), None);
    }

    #[tokio::test]
    async fn usage_counts_blobs_and_manifests_only_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path()).unwrap();
        store
            .put("blobs/sha256/aa", Bytes::from(vec![0u8; 100]))
            .await
            .unwrap();
        store
            .put("manifests/sha256/bb", Bytes::from(vec![0u8; 10]))
            .await
            .unwrap();
        store
            .put("tags/docker.io/x/_tags/latest", Bytes::from(vec![0u8; 50]))
            .await
            .unwrap();
        store
            .put("pins/flux", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        assert_eq!(store.usage(), 110, "tag records and pins are not counted");
        // Digest-named files only: the scan counts what eviction may delete.
        let hex = "a".repeat(64);
        store
            .put(&format!("blobs/sha256/{hex}"), Bytes::from(vec![0u8; 7]))
            .await
            .unwrap();
        assert_eq!(store.usage(), 117);
        assert_eq!(DiskStore::attach(dir.path()).unwrap().usage(), 7);
        store.delete(&format!("blobs/sha256/{hex}")).await.unwrap();
        assert_eq!(store.usage(), 110);
        assert!(
            store.evict("tags/docker.io/x/_tags/latest").is_err(),
            "never a tag"
        );
    }

    #[tokio::test]
    async fn refuses_escaping_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path()).unwrap();
        for key in ["../x", "/etc/passwd", "a/../../b", ""] {
            assert!(
                matches!(store.size(key).await, Err(StoreError::InvalidKey(_))),
                "{key}"
            );
        }
    }

    #[test]
    fn start_up_removes_only_the_temp_files_berth_named() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(tmp.join("put-0123456789abcdef.d")).unwrap();
        let ours = tmp.join(temp_name(TEMP_PREFIX));
        std::fs::write(&ours, b"partial").unwrap();
        for keep in [
            "put-0123456789ABCDEF",
            "put-0123",
            "notes.txt",
            "fill-0123456789abcdef",
        ] {
            std::fs::write(tmp.join(keep), b"not berth's").unwrap();
        }
        std::os::unix::fs::symlink("/etc/passwd", tmp.join("put-fedcba9876543210")).unwrap();
        DiskStore::open(dir.path()).unwrap();
        assert!(!ours.exists());
        let mut left: Vec<String> = std::fs::read_dir(&tmp)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "fill-0123456789abcdef",
                "notes.txt",
                "put-0123",
                "put-0123456789ABCDEF",
                "put-0123456789abcdef.d",
                "put-fedcba9876543210",
            ]
        );
        assert!(std::fs::metadata("/etc/passwd").is_ok());
    }

    #[tokio::test]
    async fn cached_files_are_not_world_readable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path()).unwrap();
        let key = format!("blobs/sha256/{}", "a".repeat(64));
        store.put(&key, Bytes::from_static(b"x")).await.unwrap();
        let file = std::fs::metadata(dir.path().join(&key)).unwrap();
        assert_eq!(
            file.permissions().mode() & 0o007,
            0,
            "{:o}",
            file.permissions().mode()
        );
        let parent = std::fs::metadata(dir.path().join("blobs/sha256")).unwrap();
        assert_eq!(parent.permissions().mode() & 0o007, 0);
    }
}

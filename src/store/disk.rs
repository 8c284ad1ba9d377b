//! Local-disk store: one file per key under the data directory, written by temp-file + rename.

use std::io::SeekFrom;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use super::{BlobStore, ByteStream, Listed, StoreError};

const READ_CHUNK: usize = 256 * 1024;

pub struct DiskStore {
    root: PathBuf,
    tmp: PathBuf,
}

impl DiskStore {
    /// Opens (creating) the store under `root`; leftover temp files of a crashed run are removed.
    pub fn open(root: &Path) -> std::io::Result<DiskStore> {
        let tmp = root.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        Ok(DiskStore {
            root: root.to_owned(),
            tmp,
        })
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
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| StoreError::io(key, e))?;
        }
        tokio::fs::rename(from, &target)
            .await
            .map_err(|e| StoreError::io(key, e))
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
        let mut file = tokio::fs::File::open(self.path(key)?)
            .await
            .map_err(|e| StoreError::io(key, e))?;
        if range.start > 0 {
            file.seek(SeekFrom::Start(range.start))
                .await
                .map_err(|e| StoreError::io(key, e))?;
        }
        let limited = file.take(range.end.saturating_sub(range.start));
        Ok(ReaderStream::with_capacity(limited, READ_CHUNK).boxed())
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        match tokio::fs::read(self.path(key)?).await {
            Ok(bytes) => Ok(Some(bytes.into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(key, e)),
        }
    }

    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        self.path(key)?;
        let tmp = self.tmp.join(format!("put-{:016x}", rand::random::<u64>()));
        let result = async {
            let mut file = tokio::fs::File::create(&tmp).await?;
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

    async fn commit_file(&self, key: &str, file: &Path) -> Result<(), StoreError> {
        self.place(key, file).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match tokio::fs::remove_file(self.path(key)?).await {
            Ok(()) => Ok(()),
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
}

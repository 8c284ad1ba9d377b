//! What is on disk: a walk over the content-addressed objects of a disk store.
//!
//! Used for size accounting at start-up, by the evictor, and by `berth cache stats/verify/gc`.
//! Only `blobs/<alg>/<hex>` and `manifests/<alg>/<hex>` are objects that count and can be
//! evicted; tag records and pin sets are tiny and kept.

use std::path::Path;
use std::time::SystemTime;

use crate::oci::Digest;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    Blob,
    Manifest,
}

impl ObjectKind {
    pub const ALL: [ObjectKind; 2] = [ObjectKind::Blob, ObjectKind::Manifest];

    /// The top-level directory (and key prefix) of this kind.
    pub fn dir(self) -> &'static str {
        match self {
            ObjectKind::Blob => "blobs",
            ObjectKind::Manifest => "manifests",
        }
    }

    /// The kind of a store key, if it is a counted (evictable) object.
    pub fn of_key(key: &str) -> Option<ObjectKind> {
        ObjectKind::ALL
            .into_iter()
            .find(|kind| key.starts_with(kind.dir()) && key[kind.dir().len()..].starts_with('/'))
    }
}

/// One stored blob or manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub key: String,
    pub kind: ObjectKind,
    pub digest: Digest,
    pub size: u64,
    /// Last use: the file's mtime, which commits set and access-time flushes move forward.
    pub last_used: SystemTime,
}

/// Every blob and manifest under `root`. Files whose name is not a valid digest (someone
/// else's file) are skipped, never touched.
pub fn objects(root: &Path) -> std::io::Result<Vec<StoredObject>> {
    let mut out = Vec::new();
    for kind in ObjectKind::ALL {
        let top = root.join(kind.dir());
        for algorithm in read_dir_or_empty(&top)? {
            let algorithm = algorithm?;
            if !algorithm.file_type()?.is_dir() {
                continue;
            }
            let alg_name = algorithm.file_name().to_string_lossy().into_owned();
            for file in read_dir_or_empty(&algorithm.path())? {
                let file = file?;
                let name = file.file_name().to_string_lossy().into_owned();
                let Ok(digest) = format!("{alg_name}:{name}").parse::<Digest>() else {
                    continue;
                };
                // A file evicted between listing and stat is simply gone.
                let Ok(meta) = file.metadata() else { continue };
                if !meta.is_file() {
                    continue;
                }
                out.push(StoredObject {
                    key: format!("{}/{alg_name}/{name}", kind.dir()),
                    kind,
                    digest,
                    size: meta.len(),
                    last_used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
    }
    Ok(out)
}

/// Regular files anywhere under `dir`, recursively (tag records live at varying depths).
pub fn count_files(dir: &Path) -> std::io::Result<u64> {
    let mut count = 0;
    for entry in read_dir_or_empty(dir)? {
        let entry = entry?;
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            count += count_files(&entry.path())?;
        } else if file_type.is_file() {
            count += 1;
        }
    }
    Ok(count)
}

/// Files directly under `dirs` not modified for `older_than`: leftovers of a crashed process
/// (a live fill writes its spool file far more often than that).
pub fn stale_files(
    dirs: &[std::path::PathBuf],
    older_than: std::time::Duration,
) -> std::io::Result<Vec<(std::path::PathBuf, u64)>> {
    let now = SystemTime::now();
    let mut stale = Vec::new();
    for dir in dirs {
        for entry in read_dir_or_empty(dir)? {
            let entry = entry?;
            let Ok(meta) = entry.metadata() else { continue };
            let age = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            if meta.is_file() && age >= older_than {
                stale.push((entry.path(), meta.len()));
            }
        }
    }
    stale.sort();
    Ok(stale)
}

fn read_dir_or_empty(
    dir: &Path,
) -> std::io::Result<Box<dyn Iterator<Item = std::io::Result<std::fs::DirEntry>>>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => Ok(Box::new(entries)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Box::new(std::iter::empty())),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_blobs_and_manifests_and_skips_strangers() {
        let dir = tempfile::tempdir().unwrap();
        let digest = Digest::sha256_of(b"abc");
        let blob = dir.path().join("blobs/sha256").join(digest.hex());
        std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
        std::fs::write(&blob, b"abc").unwrap();
        std::fs::write(dir.path().join("blobs/sha256/not-a-digest"), b"x").unwrap();
        let manifest = dir.path().join("manifests/sha256").join(digest.hex());
        std::fs::create_dir_all(manifest.parent().unwrap()).unwrap();
        std::fs::write(&manifest, b"t\nabc").unwrap();
        let mut found = objects(dir.path()).unwrap();
        found.sort_by(|a, b| a.key.cmp(&b.key));
        let keys: Vec<_> = found.iter().map(|o| (o.key.as_str(), o.size)).collect();
        assert_eq!(
            keys,
            [
                (format!("blobs/sha256/{}", digest.hex()).as_str(), 3),
                (format!("manifests/sha256/{}", digest.hex()).as_str(), 5)
            ]
        );
        assert_eq!(ObjectKind::of_key("blobs/sha256/x"), Some(ObjectKind::Blob));
        assert_eq!(ObjectKind::of_key("blobsx/a"), None);
        assert_eq!(ObjectKind::of_key("tags/docker.io/a/_tags/b"), None);
    }
}

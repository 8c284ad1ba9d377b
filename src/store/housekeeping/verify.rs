//! `berth cache verify`: re-hash every stored blob and manifest; move mismatches to
//! `<data_dir>/quarantine/` so they are never served again (the next pull re-fetches them).
//!
//! Safe beside a running `berth serve`: a quarantine is one rename, and a reader that has the
//! file open keeps reading what it opened.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::scan::{self, ObjectKind, StoredObject};
use crate::oci::{Digest, Hasher};

const READ_BUFFER: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot scan the cache in {dir}: {source}")]
    Scan {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot quarantine {key} to {to}: {source}")]
    Quarantine {
        key: String,
        to: PathBuf,
        source: std::io::Error,
    },
}

/// A stored object whose bytes do not hash to its name.
#[derive(Debug, Clone)]
pub struct BadObject {
    pub key: String,
    pub digest: Digest,
    pub problem: String,
    /// Where it was moved.
    pub quarantined: PathBuf,
}

#[derive(Debug, Default)]
pub struct VerifyReport {
    pub checked: u64,
    pub bytes: u64,
    pub bad: Vec<BadObject>,
}

/// Verifies every object under `root`, quarantining the bad ones.
pub fn verify_all(root: &Path) -> Result<VerifyReport, VerifyError> {
    let objects = scan::objects(root).map_err(|source| VerifyError::Scan {
        dir: root.to_owned(),
        source,
    })?;
    let mut report = VerifyReport::default();
    for object in objects {
        let problem = match check(&root.join(&object.key), &object) {
            Ok(None) => {
                report.checked += 1;
                report.bytes += object.size;
                continue;
            }
            // Evicted or re-fetched between the scan and now: nothing to judge.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Ok(Some(problem)) => problem,
            Err(e) => format!("unreadable: {e}"),
        };
        report.checked += 1;
        let quarantined = quarantine(root, &object)?;
        tracing::warn!(key = %object.key, %problem, to = %quarantined.display(), "quarantined");
        report.bad.push(BadObject {
            key: object.key,
            digest: object.digest,
            problem,
            quarantined,
        });
    }
    Ok(report)
}

/// `Ok(None)` if the object hashes to its digest, `Ok(Some(why))` if not.
fn check(path: &Path, object: &StoredObject) -> std::io::Result<Option<String>> {
    if object.kind == ObjectKind::Manifest {
        return check_manifest(path, &object.digest);
    }
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Hasher::new(object.digest.algorithm());
    let mut buffer = vec![0u8; READ_BUFFER];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    let actual = hasher.finish();
    Ok((actual != object.digest).then(|| format!("content hashes to {actual}")))
}

/// A stored manifest (small: manifests are at most 4 MiB) is its header and the bytes the
/// digest covers (see `manifest_form`).
fn check_manifest(path: &Path, digest: &Digest) -> std::io::Result<Option<String>> {
    let mut stored = Vec::new();
    std::fs::File::open(path)?
        .take(crate::oci::MAX_MANIFEST_SIZE + 4096)
        .read_to_end(&mut stored)?;
    let Some((_, body)) = crate::store::manifest_form::split(&stored) else {
        return Ok(Some(
            "stored manifest has no valid media-type header".into(),
        ));
    };
    let actual = Digest::of(digest.algorithm(), body);
    Ok((&actual != digest).then(|| format!("content hashes to {actual}")))
}

fn quarantine(root: &Path, object: &StoredObject) -> Result<PathBuf, VerifyError> {
    let dir = root.join("quarantine");
    let base = object.key.replace('/', "-");
    let mut to = dir.join(&base);
    for n in 1.. {
        if !to.exists() {
            break;
        }
        to = dir.join(format!("{base}.{n}"));
    }
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::rename(root.join(&object.key), &to))
        .map_err(|source| VerifyError::Quarantine {
            key: object.key.clone(),
            to: to.clone(),
            source,
        })?;
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flipped_byte_is_found_and_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let good = Digest::sha256_of(b"good");
        let bad = Digest::sha256_of(b"bad");
        let manifest = Digest::sha256_of(b"{}");
        std::fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        std::fs::create_dir_all(dir.path().join("manifests/sha256")).unwrap();
        std::fs::write(dir.path().join("blobs/sha256").join(good.hex()), b"good").unwrap();
        std::fs::write(dir.path().join("blobs/sha256").join(bad.hex()), b"bae").unwrap();
        std::fs::write(
            dir.path().join("manifests/sha256").join(manifest.hex()),
            b"application/json\n{}",
        )
        .unwrap();
        let report = verify_all(dir.path()).unwrap();
        assert_eq!(report.checked, 3);
        assert_eq!(report.bad.len(), 1);
        assert_eq!(report.bad[0].digest, bad);
        assert!(report.bad[0].quarantined.exists());
        assert!(!dir.path().join("blobs/sha256").join(bad.hex()).exists());
        assert!(
            verify_all(dir.path()).unwrap().bad.is_empty(),
            "nothing left to find"
        );
    }
}

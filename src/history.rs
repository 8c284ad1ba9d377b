//! What the cluster pulled: every image a client pulled through berth — registry, repository,
//! the tag (when pulled by tag), the digest served, the platforms of the manifests fetched,
//! when, and from which nodes. The rebuild gate (`berth prewarm --check --from-history`) and
//! `[store] pin_history` read it.
//!
//! Recorded in memory on the pull path (a map update under a short lock); a task writes it to
//! `data_dir/history.json` when it changed, so it survives restarts. Bounded: at most
//! [`MAX_IMAGES`] images (the least recently pulled goes), [`MAX_NODES`] nodes and
//! [`MAX_PLATFORMS`] platforms each.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::NodeNames;
use crate::oci::{Digest, ManifestDoc};

pub const MAX_IMAGES: usize = 10_000;
pub const MAX_NODES: usize = 256;
pub const MAX_PLATFORMS: usize = 32;
/// A history file larger than this is not read (it cannot be one berth wrote).
const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// The file's name under `data_dir`.
pub const FILE: &str = "history.json";

/// One image as the cluster pulled it: by tag, or by digest when `tag` is `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PulledImage {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    /// What the tag (or digest) served the last time: an index, or a single manifest.
    pub digest: Digest,
    /// `os/arch[/variant]` of the index's child manifests the cluster fetched.
    pub platforms: BTreeSet<String>,
    /// Seconds since the Unix epoch.
    pub first_pulled: u64,
    pub last_pulled: u64,
    pub pulls: u64,
    pub nodes: BTreeSet<IpAddr>,
    /// Child manifest digest → its platform, from the index last served (how a later
    /// fetch of a child is known to be this image's).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub children: BTreeMap<Digest, String>,
}

/// `GET /_berth/history`: the images pulled in a window, with node names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryReport {
    /// Seconds since the Unix epoch.
    pub generated_at: u64,
    pub since_seconds: Option<u64>,
    pub images: Vec<ImageReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageReport {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: String,
    pub platforms: Vec<String>,
    pub first_pulled: u64,
    pub last_pulled: u64,
    pub pulls: u64,
    pub nodes: Vec<NodeReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    pub address: String,
    pub name: Option<String>,
}

/// One manifest a client fetched, as the API saw it.
pub struct ManifestPull<'a> {
    pub registry: &'a str,
    pub repository: &'a str,
    pub tag: Option<&'a str>,
    pub digest: &'a Digest,
    pub bytes: &'a [u8],
    pub client: Option<IpAddr>,
}

/// (registry, repository, tag or digest).
type ImageKey = (String, String, String);

pub struct History {
    path: Option<PathBuf>,
    inner: Mutex<Inner>,
    dirty: AtomicBool,
}

#[derive(Default)]
struct Inner {
    images: HashMap<ImageKey, PulledImage>,
    /// (registry, repository, digest) → the image whose root or child manifest it is.
    owners: HashMap<(String, String, Digest), ImageKey>,
}

impl Inner {
    fn from_images(images: HashMap<ImageKey, PulledImage>) -> Inner {
        let mut inner = Inner {
            images,
            owners: HashMap::new(),
        };
        let keys: Vec<ImageKey> = inner.images.keys().cloned().collect();
        for key in keys {
            inner.own(&key);
        }
        inner
    }

    /// Points the image's root and children digests at it.
    fn own(&mut self, key: &ImageKey) {
        let Some(image) = self.images.get(key) else {
            return;
        };
        let (registry, repository) = (image.registry.clone(), image.repository.clone());
        for digest in std::iter::once(&image.digest).chain(image.children.keys()) {
            self.owners.insert(
                (registry.clone(), repository.clone(), digest.clone()),
                key.clone(),
            );
        }
    }

    fn forget_oldest(&mut self) {
        let oldest = self
            .images
            .iter()
            .min_by_key(|(_, image)| image.last_pulled)
            .map(|(key, _)| key.clone());
        if let Some(key) = oldest {
            self.images.remove(&key);
            self.owners.retain(|_, owner| owner != &key);
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl History {
    /// In memory only (tests, and berth without a data directory).
    pub fn in_memory() -> History {
        History {
            path: None,
            inner: Mutex::default(),
            dirty: AtomicBool::new(false),
        }
    }

    /// Reads `data_dir/history.json` if there is one. A file berth cannot read is set aside
    /// (`history.json.bad`) with a warning: the history starts afresh rather than not at all.
    pub fn open(data_dir: &Path) -> History {
        let path = data_dir.join(FILE);
        let images = match read_file(&path) {
            Ok(images) => images,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e,
                    "cannot read the pull history; starting a new one (the old file is kept as history.json.bad)");
                let _ = std::fs::rename(&path, path.with_extension("json.bad"));
                HashMap::new()
            }
        };
        History {
            path: Some(path),
            inner: Mutex::new(Inner::from_images(images)),
            dirty: AtomicBool::new(false),
        }
    }

    /// Records a manifest a cluster client fetched: a child of an image known by its index
    /// adds its platform to that image; anything else is an image of its own.
    pub fn record(&self, pull: ManifestPull<'_>) {
        let at = now();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let owned = (
            pull.registry.to_string(),
            pull.repository.to_string(),
            pull.digest.clone(),
        );
        if pull.tag.is_none() {
            if let Some(key) = inner.owners.get(&owned).cloned() {
                if let Some(image) = inner.images.get_mut(&key) {
                    if let Some(platform) = image.children.get(pull.digest).cloned() {
                        if image.platforms.len() < MAX_PLATFORMS {
                            image.platforms.insert(platform);
                        }
                    }
                    touch(image, pull.client, at, false);
                    self.dirty.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }
        let reference = pull
            .tag
            .map_or_else(|| pull.digest.to_string(), str::to_string);
        let key = (owned.0, owned.1, reference);
        if !inner.images.contains_key(&key) && inner.images.len() >= MAX_IMAGES {
            inner.forget_oldest();
        }
        let image = inner
            .images
            .entry(key.clone())
            .or_insert_with(|| PulledImage {
                registry: pull.registry.to_string(),
                repository: pull.repository.to_string(),
                tag: pull.tag.map(str::to_string),
                digest: pull.digest.clone(),
                platforms: BTreeSet::new(),
                first_pulled: at,
                last_pulled: at,
                pulls: 0,
                nodes: BTreeSet::new(),
                children: BTreeMap::new(),
            });
        if &image.digest != pull.digest {
            // The tag moved: what its platforms were belongs to the old digest.
            image.digest = pull.digest.clone();
            image.platforms.clear();
        }
        image.children = children_of(pull.bytes);
        touch(image, pull.client, at, true);
        inner.own(&key);
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// The images pulled within `since` of now (all without), by registry, repository, tag.
    pub fn images(&self, since: Option<Duration>) -> Vec<PulledImage> {
        let oldest = since.map_or(0, |s| now().saturating_sub(s.as_secs()));
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<PulledImage> = inner
            .images
            .values()
            .filter(|i| i.last_pulled >= oldest)
            .cloned()
            .collect();
        list.sort_by(|a, b| {
            (&a.registry, &a.repository, &a.tag, &a.digest).cmp(&(
                &b.registry,
                &b.repository,
                &b.tag,
                &b.digest,
            ))
        });
        list
    }

    /// The report of the images pulled within `since`, nodes named by `names`.
    pub fn report(&self, since: Option<Duration>, names: &NodeNames) -> HistoryReport {
        let images = self
            .images(since)
            .into_iter()
            .map(|i| ImageReport {
                nodes: i
                    .nodes
                    .iter()
                    .map(|ip| NodeReport {
                        address: ip.to_string(),
                        name: names.name(*ip).map(str::to_string),
                    })
                    .collect(),
                registry: i.registry,
                repository: i.repository,
                tag: i.tag,
                digest: i.digest.to_string(),
                platforms: i.platforms.into_iter().collect(),
                first_pulled: i.first_pulled,
                last_pulled: i.last_pulled,
                pulls: i.pulls,
            })
            .collect();
        HistoryReport {
            generated_at: now(),
            since_seconds: since.map(|s| s.as_secs()),
            images,
        }
    }

    /// The digests pulled within `since` (what `pin_history` keeps).
    pub fn digests(&self, since: Duration) -> Vec<Digest> {
        self.images(Some(since))
            .into_iter()
            .map(|i| i.digest)
            .collect()
    }

    /// Writes the file if anything changed since the last write (atomically: a crash leaves
    /// the old file or the new one).
    pub fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let images = self.images(None);
        let json = serde_json::to_vec(&images).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("json.tmp");
        let written = std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, path));
        if written.is_err() {
            self.dirty.store(true, Ordering::Relaxed);
        }
        written
    }

    /// Saves every `every` until the returned task is dropped (then once more, from `app`).
    pub fn spawn_saver(
        self: &std::sync::Arc<Self>,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let history = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let history = history.clone();
                let saved = tokio::task::spawn_blocking(move || history.save()).await;
                if let Ok(Err(e)) = saved {
                    tracing::warn!(error = %e, "cannot write the pull history");
                }
            }
        })
    }
}

fn touch(image: &mut PulledImage, client: Option<IpAddr>, at: u64, root: bool) {
    image.last_pulled = image.last_pulled.max(at);
    if root {
        image.pulls += 1;
    }
    if let Some(client) = client {
        if image.nodes.len() < MAX_NODES || image.nodes.contains(&client) {
            image.nodes.insert(client);
        }
    }
}

/// The platforms of an index's entries by child digest (none for a single manifest).
fn children_of(bytes: &[u8]) -> BTreeMap<Digest, String> {
    let Ok(doc) = ManifestDoc::parse(bytes) else {
        return BTreeMap::new();
    };
    doc.entries()
        .iter()
        .filter_map(|d| Some((d.digest.clone(), d.platform.as_ref()?.to_string())))
        .take(MAX_PLATFORMS * 4)
        .collect()
}

fn read_file(path: &Path) -> std::io::Result<HashMap<ImageKey, PulledImage>> {
    let size = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(e),
    };
    if size > MAX_FILE_BYTES {
        return Err(std::io::Error::other(format!("{size} bytes is too large")));
    }
    let images: Vec<PulledImage> =
        serde_json::from_slice(&std::fs::read(path)?).map_err(std::io::Error::other)?;
    Ok(images
        .into_iter()
        .take(MAX_IMAGES)
        .map(|i| {
            let reference = i.tag.clone().unwrap_or_else(|| i.digest.to_string());
            ((i.registry.clone(), i.repository.clone(), reference), i)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    fn index(children: &[(Digest, &str)]) -> Vec<u8> {
        let manifests: Vec<serde_json::Value> = children
            .iter()
            .map(|(d, arch)| {
                serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": d.to_string(), "size": 1,
                    "platform": {"os": "linux", "architecture": arch}})
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": manifests}))
            .unwrap()
    }

    fn pull<'a>(
        tag: Option<&'a str>,
        digest: &'a Digest,
        bytes: &'a [u8],
        node: &str,
    ) -> ManifestPull<'a> {
        ManifestPull {
            registry: "docker.io",
            repository: "library/app",
            tag,
            digest,
            bytes,
            client: Some(node.parse().unwrap()),
        }
    }

    #[test]
    fn a_tag_its_index_and_the_fetched_children_are_one_image_with_its_platforms() {
        let history = History::in_memory();
        let (root, amd, arm) = (digest(1), digest(2), digest(3));
        let bytes = index(&[(amd.clone(), "amd64"), (arm.clone(), "arm64")]);
        // containerd: HEAD by tag, GET the index by digest, GET the platform's manifest.
        history.record(pull(Some("1"), &root, &bytes, "10.0.0.1"));
        history.record(pull(None, &root, &bytes, "10.0.0.1"));
        history.record(pull(None, &amd, b"{}", "10.0.0.2"));
        let images = history.images(None);
        assert_eq!(images.len(), 1, "{images:?}");
        let image = &images[0];
        assert_eq!(image.tag.as_deref(), Some("1"));
        assert_eq!(image.digest, root);
        assert_eq!(image.platforms.iter().collect::<Vec<_>>(), ["linux/amd64"]);
        assert_eq!(image.nodes.len(), 2);
        assert_eq!(image.pulls, 1, "a child fetch is not another pull");
    }

    #[test]
    fn the_file_survives_a_restart_and_a_bad_one_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let history = History::open(dir.path());
        let d = digest(9);
        history.record(pull(Some("2"), &d, b"{}", "10.0.0.3"));
        history.save().unwrap();
        let reopened = History::open(dir.path());
        assert_eq!(reopened.images(None), history.images(None));
        std::fs::write(dir.path().join(FILE), b"not json").unwrap();
        assert!(History::open(dir.path()).images(None).is_empty());
        assert!(dir.path().join("history.json.bad").exists());
    }

    #[test]
    fn bounded_in_images_the_least_recently_pulled_goes() {
        let history = History::in_memory();
        for n in 0..(MAX_IMAGES + 5) {
            let d = Digest::sha256_of(n.to_string().as_bytes());
            let tag = format!("t{n}");
            history.record(pull(Some(&tag), &d, b"{}", "10.0.0.1"));
        }
        assert_eq!(history.images(None).len(), MAX_IMAGES);
    }
}

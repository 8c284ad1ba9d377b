//! Keeping the disk cache under `max_size`: least recently used, unpinned, unread objects go
//! first, down to a low-water mark so eviction does not run on every fill.
//!
//! Last use is the file's mtime (set by the commit, moved forward by batched access-time
//! flushes) or the newer in-memory access time. What is never evicted: pinned content
//! ([`super::pins`]), an object a reader has open, tag records and pin sets (not counted), and
//! fills in progress (they live in the spool until committed, so they are not objects yet).
//! Deletes are unlinks of whole objects, so `berth cache gc` may run beside `berth serve`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::pins::{self, PinError, Pinned};
use super::scan::{self, StoredObject};
use crate::metrics::Metrics;
use crate::store::DiskStore;
use crate::store::StoreError;

/// Eviction stops once the cache is at or below this share of `max_size`.
pub const LOW_WATER_PERCENT: u64 = 90;
/// How often in-memory access times are written to the files.
pub const ACCESS_FLUSH_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum EvictError {
    #[error("cannot scan the cache in {dir}: {source}")]
    Scan {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pins(#[from] PinError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the eviction task died: {0}")]
    Task(String),
}

/// What one eviction run would delete.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Bytes of blobs and manifests before the run.
    pub total: u64,
    pub pinned_bytes: u64,
    /// Eviction brings `total` down to this (when it was over `max_size`).
    pub target: u64,
    /// Oldest first.
    pub victims: Vec<StoredObject>,
}

impl Plan {
    pub fn victim_bytes(&self) -> u64 {
        self.victims.iter().map(|o| o.size).sum()
    }
}

/// What a run deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evicted {
    pub objects: u64,
    pub bytes: u64,
    /// Victims skipped because a reader opened them meanwhile.
    pub busy: u64,
}

/// Chooses victims: nothing if `total <= max_size`, else the least recently used objects that
/// are neither pinned nor being read, until `total` is at the low-water mark.
pub fn plan(
    objects: Vec<StoredObject>,
    pinned: &Pinned,
    max_size: Option<u64>,
    last_access: impl Fn(&str) -> Option<SystemTime>,
    is_read: impl Fn(&str) -> bool,
) -> Plan {
    let total: u64 = objects.iter().map(|o| o.size).sum();
    let pinned_bytes = objects
        .iter()
        .filter(|o| pinned.contains(&o.key))
        .map(|o| o.size)
        .sum();
    let Some(max_size) = max_size.filter(|&max| total > max) else {
        return Plan {
            total,
            pinned_bytes,
            target: total,
            victims: Vec::new(),
        };
    };
    let target = max_size / 100 * LOW_WATER_PERCENT + max_size % 100 * LOW_WATER_PERCENT / 100;
    let mut candidates: Vec<StoredObject> = objects
        .into_iter()
        .filter(|o| !pinned.contains(&o.key) && !is_read(&o.key))
        .map(|mut o| {
            if let Some(at) = last_access(&o.key) {
                o.last_used = o.last_used.max(at);
            }
            o
        })
        .collect();
    // Oldest first; the key breaks ties so a plan is deterministic.
    candidates.sort_by(|a, b| a.last_used.cmp(&b.last_used).then(a.key.cmp(&b.key)));
    let mut remaining = total;
    let victims = candidates
        .into_iter()
        .take_while(|o| {
            let take = remaining > target;
            if take {
                remaining -= o.size;
            }
            take
        })
        .collect();
    Plan {
        total,
        pinned_bytes,
        target,
        victims,
    }
}

/// Manifests kept out of eviction besides the pin sets (what the cluster pulled, for
/// `pin_history`), asked at each run.
pub type ExtraPins = Arc<dyn Fn() -> Vec<crate::oci::Digest> + Send + Sync>;

/// Eviction over one disk store.
pub struct Evictor {
    store: Arc<DiskStore>,
    max_size: Option<u64>,
    extra_pins: Option<ExtraPins>,
}

impl Evictor {
    pub fn new(store: Arc<DiskStore>, max_size: Option<u64>) -> Evictor {
        Evictor {
            store,
            max_size,
            extra_pins: None,
        }
    }

    /// Also keeps `pins()` (and what they reference) as if a pin set named them.
    pub fn keeping(mut self, pins: ExtraPins) -> Evictor {
        self.extra_pins = Some(pins);
        self
    }

    pub fn store(&self) -> &Arc<DiskStore> {
        &self.store
    }

    /// Scans the store (resyncing its byte count), resolves pins and plans a run.
    pub async fn plan(&self) -> Result<Plan, EvictError> {
        let root = self.store.root().to_path_buf();
        let objects = tokio::task::spawn_blocking(move || scan::objects(&root))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r)
            .map_err(|source| EvictError::Scan {
                dir: self.store.root().to_path_buf(),
                source,
            })?;
        let names = pins::names(self.store.as_ref())
            .await
            .map_err(PinError::Store)?;
        let mut pinned = pins::resolve(self.store.as_ref(), &names).await?;
        if let Some(extra) = &self.extra_pins {
            let kept = pins::walk(self.store.as_ref(), &extra()).await?;
            pinned.keys.extend(kept.keys);
        }
        let plan = plan(
            objects,
            &pinned,
            self.limit(),
            |key| self.store.access_log().last(key),
            |key| self.store.readers().is_read(key),
        );
        self.store.set_usage(plan.total);
        Ok(plan)
    }

    /// Deletes the plan's victims, re-checking each for readers at the moment of deletion.
    /// Blocking (unlinks): the server calls it through [`Evictor::run_once`].
    pub fn apply(&self, plan: &Plan) -> Result<Evicted, EvictError> {
        apply(&self.store, plan)
    }

    pub async fn run_once(&self) -> Result<Evicted, EvictError> {
        let plan = self.plan().await?;
        if plan.victims.is_empty() {
            return Ok(Evicted::default());
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || apply(&store, &plan))
            .await
            .map_err(|e| EvictError::Task(e.to_string()))?
    }

    /// What committed content may use: `max_size` less the room reserved for running fills,
    /// so a fill that lands is already paid for, but never less than a quarter of it: fills
    /// may reserve at most the other three quarters (the mirror's spool budget), so they
    /// cannot empty the cache to make room.
    fn limit(&self) -> Option<u64> {
        self.max_size
            .map(|max| max.saturating_sub(self.store.spooled()).max(max / 4).max(1))
    }

    fn over_limit(&self) -> bool {
        self.limit().is_some_and(|max| self.store.usage() > max)
    }
}

fn apply(store: &DiskStore, plan: &Plan) -> Result<Evicted, EvictError> {
    let mut evicted = Evicted::default();
    for victim in &plan.victims {
        match store.evict(&victim.key)? {
            Some(bytes) => {
                evicted.objects += 1;
                evicted.bytes += bytes;
                tracing::info!(key = %victim.key, bytes, "evicted");
            }
            None => evicted.busy += 1,
        }
    }
    Ok(evicted)
}

/// The evictor as a background task of `berth serve`.
pub struct EvictorTask {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl EvictorTask {
    /// Checks right after every commit that takes the cache over `max_size`, and every
    /// `interval`; flushes access times every [`ACCESS_FLUSH_INTERVAL`] and at shutdown.
    pub fn spawn(evictor: Evictor, interval: Duration, metrics: Arc<Metrics>) -> EvictorTask {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut check = tokio::time::interval(interval);
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut flush = tokio::time::interval(ACCESS_FLUSH_INTERVAL);
            flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let store = evictor.store().clone();
            metrics.cache_bytes.set(store.usage() as i64);
            loop {
                let run = tokio::select! {
                    _ = &mut stopped => break,
                    _ = check.tick() => evictor.max_size.is_some(),
                    _ = store.grown() => evictor.over_limit(),
                    _ = flush.tick() => {
                        store.flush_access_times().await;
                        false
                    }
                };
                if run {
                    match evictor.run_once().await {
                        Ok(evicted) if evicted.objects > 0 => {
                            metrics.cache_evictions.inc_by(evicted.objects);
                            tracing::info!(
                                objects = evicted.objects,
                                bytes = evicted.bytes,
                                busy = evicted.busy,
                                now = store.usage(),
                                "cache over max_size: evicted"
                            );
                        }
                        Ok(_) => {}
                        Err(e) => tracing::error!(error = %e, "eviction failed"),
                    }
                    if evictor.over_limit() {
                        tracing::warn!(now = store.usage(), max_size = ?evictor.max_size,
                            "still over max_size: the rest is pinned or being read");
                    }
                }
                metrics.cache_bytes.set(store.usage() as i64);
            }
            store.flush_access_times().await;
        });
        EvictorTask { stop, task }
    }

    /// Stops the task after a last access-time flush.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Digest;
    use crate::store::scan::ObjectKind;

    fn object(name: &str, size: u64, age_secs: u64) -> StoredObject {
        let digest = Digest::sha256_of(name.as_bytes());
        StoredObject {
            key: format!("blobs/sha256/{}", digest.hex()),
            kind: ObjectKind::Blob,
            digest,
            size,
            last_used: SystemTime::now() - Duration::from_secs(age_secs),
        }
    }

    fn names(plan: &Plan, all: &[(&str, StoredObject)]) -> Vec<String> {
        plan.victims
            .iter()
            .map(|v| {
                all.iter()
                    .find(|(_, o)| o.key == v.key)
                    .unwrap()
                    .0
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn oldest_unpinned_unread_go_first_down_to_low_water() {
        let all = [
            ("pinned-oldest", object("p", 100, 500)),
            ("old", object("o", 100, 400)),
            ("being-read", object("r", 100, 300)),
            ("middle", object("m", 100, 200)),
            ("touched-in-memory", object("t", 100, 350)),
            ("new", object("n", 100, 10)),
        ];
        let mut pinned = Pinned::default();
        pinned.keys.insert(all[0].1.key.clone());
        let touched = all[4].1.key.clone();
        let read = all[2].1.key.clone();
        let plan = plan(
            all.iter().map(|(_, o)| o.clone()).collect(),
            &pinned,
            Some(400),
            |k| (k == touched).then(SystemTime::now),
            |k| k == read,
        );
        assert_eq!(plan.total, 600);
        assert_eq!(plan.target, 360);
        assert_eq!(plan.pinned_bytes, 100);
        // 600 → 300 (≤ 360): three go, oldest first; the touched one is now the newest.
        assert_eq!(names(&plan, &all), ["old", "middle", "new"]);
    }

    #[test]
    fn under_the_limit_nothing_goes() {
        let objects = vec![object("a", 10, 100), object("b", 10, 1)];
        let plan = plan(
            objects.clone(),
            &Pinned::default(),
            Some(20),
            |_| None,
            |_| false,
        );
        assert!(plan.victims.is_empty());
        let unbounded = super::plan(objects, &Pinned::default(), None, |_| None, |_| false);
        assert!(unbounded.victims.is_empty());
    }

    #[tokio::test]
    async fn a_read_blob_survives_eviction_and_usage_follows() {
        use crate::store::BlobStore;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(DiskStore::open(dir.path()).unwrap());
        let (a, b) = (Digest::sha256_of(b"a"), Digest::sha256_of(b"b"));
        for d in [&a, &b] {
            store
                .put(
                    &crate::store::keys::blob(d),
                    bytes::Bytes::from(vec![0u8; 1000]),
                )
                .await
                .unwrap();
        }
        assert_eq!(store.usage(), 2000);
        let reading = store
            .read(&crate::store::keys::blob(&a), 0..1000)
            .await
            .unwrap();
        let evictor = Evictor::new(store.clone(), Some(500));
        let evicted = evictor.run_once().await.unwrap();
        assert_eq!(evicted.objects, 1, "only the unread blob goes");
        assert_eq!(store.usage(), 1000);
        assert!(
            store
                .size(&crate::store::keys::blob(&a))
                .await
                .unwrap()
                .is_some()
        );
        drop(reading);
        assert_eq!(evictor.run_once().await.unwrap().objects, 1);
        assert_eq!(store.usage(), 0);
    }
}

//! The local disk's share for fills in progress. A fill reserves the bytes it will spool before
//! it writes them: the size the upstream announced, or, for a blob of unknown size, a step at a
//! time as it grows. Fills together may hold at most three quarters of the disk limit
//! (`max_size`, or the hot tier's `local_max_size`); the evictor keeps committed content at no
//! less than the last quarter. A reservation is counted by the store at once (its evictor makes room for it)
//! and is granted once committed content plus every reservation fits the limit. So spools
//! cannot evict the whole cache, and cache plus spools stay within the limit: a fill that
//! cannot get room waits a while, then its client is asked to come back.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::store::BlobStore;

/// How often a reservation looks whether the evictor has made its room.
const ROOM_CHECK: Duration = Duration::from_millis(20);

/// Reservations are counted in units of this many bytes (a semaphore counts in `u32`s).
const UNIT: u64 = 64 * 1024;
/// A blob of unknown size reserves this much at a time.
pub(super) const UNANNOUNCED_STEP: u64 = 64 * 1024 * 1024;

/// Why a fill got no room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NoRoom {
    /// Other fills hold the share now: try again shortly.
    Busy,
    /// Larger than the whole share: it can never be spooled here.
    TooLarge { share: u64 },
}

/// The disk limit, the share fills may hold, and the permits (units of the share).
#[derive(Clone)]
struct Share {
    limit: u64,
    bytes: u64,
    permits: Arc<Semaphore>,
}

pub(super) struct SpoolBudget {
    /// `None` without a disk limit: every reservation is granted at once.
    share: Option<Share>,
    store: Arc<dyn BlobStore>,
    wait: Duration,
}

impl SpoolBudget {
    /// Three quarters of `disk_limit` for fills in progress, counted by `store`; waits up to
    /// `wait`.
    pub fn new(disk_limit: Option<u64>, store: Arc<dyn BlobStore>, wait: Duration) -> SpoolBudget {
        let share = disk_limit.map(|limit| {
            let bytes = (limit - limit / 4).max(UNIT);
            let units = usize::try_from(bytes / UNIT).unwrap_or(Semaphore::MAX_PERMITS);
            Share {
                limit,
                bytes,
                permits: Arc::new(Semaphore::new(units.min(Semaphore::MAX_PERMITS))),
            }
        });
        SpoolBudget { share, store, wait }
    }

    /// An empty reservation, grown with [`Reservation::cover`].
    pub fn reservation(&self) -> Reservation {
        Reservation {
            share: self.share.clone(),
            store: self.store.clone(),
            wait: self.wait,
            reserved: 0,
            permits: Vec::new(),
        }
    }
}

/// Bytes a fill may spool; given back when it drops (the fill committed or failed).
pub(super) struct Reservation {
    share: Option<Share>,
    store: Arc<dyn BlobStore>,
    wait: Duration,
    reserved: u64,
    permits: Vec<OwnedSemaphorePermit>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.share.is_some() && self.reserved > 0 {
            self.store
                .spooling(-(i64::try_from(self.reserved).unwrap_or(i64::MAX)));
        }
    }
}

impl Reservation {
    /// Makes sure `total` bytes are reserved, waiting (up to the budget's wait) for room.
    pub async fn cover(&mut self, total: u64) -> Result<(), NoRoom> {
        let Some(share) = self.share.clone() else {
            self.reserved = self.reserved.max(total);
            return Ok(());
        };
        if total <= self.reserved {
            return Ok(());
        }
        if total > share.bytes {
            return Err(NoRoom::TooLarge { share: share.bytes });
        }
        let units = (total - self.reserved).div_ceil(UNIT);
        let units = u32::try_from(units).map_err(|_| NoRoom::TooLarge { share: share.bytes })?;
        let deadline = tokio::time::Instant::now() + self.wait;
        let permits = share.permits.clone().acquire_many_owned(units);
        let Ok(Ok(permit)) = tokio::time::timeout_at(deadline, permits).await else {
            return Err(NoRoom::Busy);
        };
        let bytes = u64::from(units) * UNIT;
        // Counted at once: the evictor starts making the room now.
        self.store
            .spooling(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.permits.push(permit);
        self.reserved += bytes;
        self.room(&share, deadline).await
    }

    /// Waits until committed content plus every reservation fits the limit (the evictor
    /// frees the rest down to its floor, a quarter of the limit; the share keeps reservations
    /// within the other three quarters).
    async fn room(&self, share: &Share, deadline: tokio::time::Instant) -> Result<(), NoRoom> {
        loop {
            let free = share.permits.available_permits() as u64 * UNIT;
            let reserved = share.bytes.saturating_sub(free);
            if self.store.local_usage().saturating_add(reserved) <= share.limit {
                return Ok(());
            }
            if tokio::time::Instant::now() + ROOM_CHECK > deadline {
                return Err(NoRoom::Busy);
            }
            tokio::time::sleep(ROOM_CHECK).await;
        }
    }

    /// Covers `received` bytes of a blob of unknown size, a step ahead.
    pub async fn cover_growing(&mut self, received: u64) -> Result<(), NoRoom> {
        if received <= self.reserved {
            return Ok(());
        }
        let wanted = received.saturating_add(UNANNOUNCED_STEP);
        match &self.share {
            Some(share) => self.cover(wanted.min(share.bytes).max(received)).await,
            None => self.cover(wanted).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    /// A budget over an empty disk store (nothing committed).
    fn budget(limit: Option<u64>, wait: Duration) -> (SpoolBudget, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::store::DiskStore::open(dir.path()).unwrap());
        (SpoolBudget::new(limit, store, wait), dir)
    }

    #[tokio::test(start_paused = true)]
    async fn fills_share_three_quarters_of_the_limit_and_wait_for_room() {
        let (budget, _dir) = budget(Some(40 * MIB), Duration::from_secs(30));
        let mut first = budget.reservation();
        first.cover(25 * MIB).await.unwrap();
        let mut second = budget.reservation();
        assert_eq!(
            second.cover(10 * MIB).await,
            Err(NoRoom::Busy),
            "30 MiB is the share; 25 are held"
        );
        assert_eq!(
            budget.reservation().cover(31 * MIB).await,
            Err(NoRoom::TooLarge { share: 30 * MIB })
        );
        let waiting = tokio::spawn(async move {
            let mut third = budget.reservation();
            third.cover(10 * MIB).await.map(|()| third)
        });
        tokio::task::yield_now().await;
        drop(first);
        assert!(
            waiting.await.unwrap().is_ok(),
            "room freed by a finished fill"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_blob_of_unknown_size_reserves_step_by_step_up_to_the_share() {
        let (budget, _dir) = budget(Some(200 * MIB), Duration::from_secs(1));
        let mut growing = budget.reservation();
        growing.cover_growing(1).await.unwrap();
        assert_eq!(growing.reserved, UNANNOUNCED_STEP + UNIT);
        growing.cover_growing(99 * MIB).await.unwrap();
        assert_eq!(growing.reserved, 150 * MIB, "capped at the share");
        assert_eq!(
            growing.cover_growing(150 * MIB + 1).await,
            Err(NoRoom::TooLarge { share: 150 * MIB })
        );
    }

    #[tokio::test]
    async fn without_a_limit_everything_fits() {
        let (budget, _dir) = budget(None, Duration::from_secs(1));
        let mut r = budget.reservation();
        r.cover(u64::MAX / 2).await.unwrap();
        r.cover_growing(u64::MAX / 2 + 1).await.unwrap();
    }
}

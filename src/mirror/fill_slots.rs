//! The `max_fills` caps: how many blob fills run at once, in all and per upstream, with a
//! bounded queue in front of each; past it the client is told to come back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::coalesce::{Slot, Slots};

use super::{MirrorError, Target};

/// How long a blob fill may wait for a slot under the `max_fills` caps before the client
/// is told to come back, and how long it should wait then.
pub(super) const FILL_QUEUE_WAIT: Duration = Duration::from_secs(30);
pub(super) const BUSY_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The `max_fills` caps: one for all fills, one per upstream (made on first use).
pub(super) struct FillSlots {
    global: Slots,
    per_upstream: Mutex<HashMap<String, Arc<Slots>>>,
}

impl FillSlots {
    pub fn new(max_fills: usize) -> FillSlots {
        FillSlots {
            global: Slots::new(max_fills, max_fills * 4, FILL_QUEUE_WAIT),
            per_upstream: Mutex::default(),
        }
    }

    /// Slots under the upstream's and the global cap, waiting in their bounded queues.
    pub async fn acquire(&self, target: &Target) -> Result<(Slot, Slot), MirrorError> {
        let busy = |_| MirrorError::Busy {
            upstream: target.upstream_name().into(),
            retry_after: BUSY_RETRY_AFTER,
        };
        let per_upstream = {
            let mut slots = self.per_upstream.lock().unwrap();
            // By metrics label: the registries one pattern lets in share one entry and cap.
            slots
                .entry(target.upstream.label().to_string())
                .or_insert_with(|| {
                    let cap = target.upstream.config().max_fills as usize;
                    Arc::new(Slots::new(cap, cap * 4, FILL_QUEUE_WAIT))
                })
                .clone()
        };
        let upstream_slot = per_upstream.acquire().await.map_err(busy)?;
        let global_slot = self.global.acquire().await.map_err(busy)?;
        Ok((upstream_slot, global_slot))
    }
}

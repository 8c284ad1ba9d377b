//! A cap on concurrent work with a bounded, time-limited queue: the `max_fills` caps.
//!
//! Past the cap, up to `queue` callers wait up to `max_wait` for a slot; anyone beyond that, or
//! waiting longer, is told to come back ([`Busy`]). Slots and queue places are guards: a
//! cancelled waiter or a finished (or panicking) holder gives them back.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct Slots {
    slots: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    queue: usize,
    max_wait: Duration,
}

/// No slot within the queue's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// A held slot; dropped = released.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

struct QueuePlace(Arc<AtomicUsize>);

impl Drop for QueuePlace {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Slots {
    pub fn new(cap: usize, queue: usize, max_wait: Duration) -> Slots {
        Slots {
            slots: Arc::new(Semaphore::new(cap.max(1))),
            waiting: Arc::default(),
            queue,
            max_wait,
        }
    }

    pub async fn acquire(&self) -> Result<Slot, Busy> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(Slot { _permit: permit });
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Busy);
        }
        let _place = QueuePlace(self.waiting.clone());
        match tokio::time::timeout(self.max_wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Slot { _permit: permit }),
            _ => Err(Busy),
        }
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_in_a_bounded_queue_then_refuses() {
        let slots = Arc::new(Slots::new(1, 1, Duration::from_secs(5)));
        let held = slots.acquire().await.unwrap();
        let s = slots.clone();
        let queued = tokio::spawn(async move { s.acquire().await.map(|_| ()) });
        tokio::task::yield_now().await;
        assert_eq!(slots.waiting(), 1);
        assert_eq!(
            slots.acquire().await.err(),
            Some(Busy),
            "the queue is full: refused at once"
        );
        drop(held);
        assert_eq!(
            queued.await.unwrap(),
            Ok(()),
            "the queued caller got the slot"
        );
        let _held = slots.acquire().await.unwrap();
        let s = slots.clone();
        let late = tokio::spawn(async move { s.acquire().await.map(|_| ()) });
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(late.await.unwrap(), Err(Busy), "waited too long");
        assert_eq!(slots.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_waiter_gives_its_place_back() {
        let slots = Slots::new(1, 1, Duration::from_secs(60));
        let _held = slots.acquire().await.unwrap();
        let waiter = tokio::time::timeout(Duration::from_secs(1), slots.acquire()).await;
        assert!(waiter.is_err(), "cancelled while queued");
        assert_eq!(slots.waiting(), 0, "its queue place is free again");
    }
}

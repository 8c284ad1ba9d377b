//! Concurrent calls for the same key share one execution (manifest and tag lookups).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use crate::trace::CacheResult;

/// The shared result of one running call.
type Flight<V> = Shared<BoxFuture<'static, Result<V, FlightAbandoned>>>;

pub struct Singleflight<K, V> {
    calls: Arc<Mutex<HashMap<K, Flight<V>>>>,
}

/// The shared work ended without a value (it panicked, or its task was cancelled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the shared lookup ended without an answer (it panicked or was cancelled)")]
pub struct FlightAbandoned;

impl<K, V> Default for Singleflight<K, V> {
    fn default() -> Self {
        Singleflight {
            calls: Arc::default(),
        }
    }
}

/// Removes the key when the work ends, however it ends (value, panic, abort): a later call
/// starts afresh instead of finding a poisoned entry.
struct Leave<K: Hash + Eq, V> {
    calls: Arc<Mutex<HashMap<K, V>>>,
    key: Option<K>,
}

impl<K: Hash + Eq, V> Drop for Leave<K, V> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            // Poison-tolerant: this runs during unwinding too.
            let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
            calls.remove(&key);
        }
    }
}

impl<K, V> Singleflight<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Runs `work` unless a call for `key` is already running, in which case its result is shared.
    /// The work runs in its own task: a caller that goes away does not cancel it for the others.
    /// A panic in the work is contained: every waiter gets [`FlightAbandoned`], and the key is
    /// free for the next call.
    pub async fn run<F>(&self, key: K, work: F) -> Result<V, FlightAbandoned>
    where
        F: Future<Output = V> + Send + 'static,
    {
        let shared = {
            let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(existing) = calls.get(&key) {
                crate::trace::note(CacheResult::Joined);
                existing.clone()
            } else {
                let leave = Leave {
                    calls: self.calls.clone(),
                    key: Some(key.clone()),
                };
                let task = tokio::spawn(crate::trace::carry(async move {
                    let _leave = leave;
                    work.await
                }));
                let flight: Flight<V> = async move {
                    task.await.map_err(|e| {
                        if e.is_panic() {
                            tracing::error!("a shared lookup panicked; its waiters get an error");
                        }
                        FlightAbandoned
                    })
                }
                .boxed()
                .shared();
                calls.insert(key, flight.clone());
                flight
            }
        };
        shared.await
    }

    /// Keys with work in flight.
    pub fn in_flight(&self) -> usize {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_calls_run_once() {
        let flight: Arc<Singleflight<&'static str, u32>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut handles = Vec::new();
        for _ in 0..10 {
            let (flight, runs, gate) = (flight.clone(), runs.clone(), gate.clone());
            handles.push(tokio::spawn(async move {
                flight
                    .run("k", async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        gate.notified().await;
                        7
                    })
                    .await
            }));
        }
        tokio::task::yield_now().await;
        while runs.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        gate.notify_waiters();
        for h in handles {
            assert_eq!(h.await.unwrap(), Ok(7));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_panicking_leader_does_not_poison_the_key() {
        let flight: Singleflight<&'static str, u32> = Singleflight::default();
        let gate = Arc::new(tokio::sync::Notify::new());
        let g = gate.clone();
        let leader = flight.run("k", async move {
            g.notified().await;
            panic!("bug in the lookup");
        });
        let follower = flight.run("k", async { 1 });
        let notify = async {
            tokio::task::yield_now().await;
            gate.notify_one();
        };
        let (a, b, ()) = tokio::join!(leader, follower, notify);
        assert_eq!(a, Err(FlightAbandoned), "an error, not a re-raised panic");
        assert_eq!(
            b,
            Err(FlightAbandoned),
            "the follower shared the failed call"
        );
        assert_eq!(flight.in_flight(), 0);
        assert_eq!(
            flight.run("k", async { 2 }).await,
            Ok(2),
            "the next call runs afresh"
        );
    }

    #[tokio::test]
    async fn every_caller_going_away_leaves_no_entry_behind() {
        let flight: Singleflight<&'static str, u32> = Singleflight::default();
        let call = flight.run("k", async {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            3
        });
        // The caller is cancelled at once (a client hung up); the work finishes on its own.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(1), call)
                .await
                .is_err()
        );
        for _ in 0..200 {
            if flight.in_flight() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(flight.in_flight(), 0);
        assert_eq!(flight.run("k", async { 4 }).await, Ok(4));
    }
}

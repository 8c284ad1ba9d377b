//! Concurrent calls for the same key share one execution (manifest and tag lookups).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

pub struct Singleflight<K, V> {
    calls: Arc<Mutex<HashMap<K, Shared<BoxFuture<'static, V>>>>>,
}

impl<K, V> Default for Singleflight<K, V> {
    fn default() -> Self {
        Singleflight {
            calls: Arc::default(),
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
    pub async fn run<F>(&self, key: K, work: F) -> V
    where
        F: Future<Output = V> + Send + 'static,
    {
        let shared = {
            let mut calls = self.calls.lock().unwrap();
            if let Some(existing) = calls.get(&key) {
                existing.clone()
            } else {
                let calls_ref = self.calls.clone();
                let task_key = key.clone();
                let task = tokio::spawn(async move {
                    let value = work.await;
                    calls_ref.lock().unwrap().remove(&task_key);
                    value
                });
                let fut: BoxFuture<'static, V> = async move {
                    match task.await {
                        Ok(v) => v,
                        Err(e) => std::panic::resume_unwind(e.into_panic()),
                    }
                }
                .boxed();
                let shared = fut.shared();
                calls.insert(key, shared.clone());
                shared
            }
        };
        shared.await
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
            assert_eq!(h.await.unwrap(), 7);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}

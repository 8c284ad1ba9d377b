//! What serving one client request took: where its answer came from (the cache result) and
//! how many upstream attempts it cost. The API's record layer opens a [`Trace`] per request
//! and reads it when the response body ends; the mirror and the upstream client write to the
//! trace of the task they run in, without a handle passed through every call.
//!
//! Work a request starts in its own task (a blob fill, a shared lookup) carries the starter's
//! trace along ([`carry`]); a request that joins work already running notes
//! [`CacheResult::Joined`] and is charged no attempts: they belong to the request that led.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};

/// Where a request's answer came from (the access log's `cache` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheResult {
    /// From the cache, no upstream request.
    Hit,
    /// Fetched from the upstream for this request.
    Miss,
    /// Shared another request's upstream fetch that was already running.
    Joined,
    /// A tag past its `tag_ttl`, confirmed unchanged by the upstream (a HEAD).
    Revalidated,
    /// The upstream failed; the last known answer was served.
    Stale,
    /// Never cached (tag lists, referrers): passed through from the upstream.
    Bypass,
}

impl CacheResult {
    /// In rising order of what a note says: a later entry wins over an earlier one.
    const ALL: [CacheResult; 6] = [
        CacheResult::Bypass,
        CacheResult::Hit,
        CacheResult::Joined,
        CacheResult::Miss,
        CacheResult::Revalidated,
        CacheResult::Stale,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Joined => "joined",
            CacheResult::Revalidated => "revalidated",
            CacheResult::Stale => "stale",
            CacheResult::Bypass => "bypass",
        }
    }
}

/// One request's facts, shared with the tasks it started.
#[derive(Debug, Default)]
pub struct Trace {
    /// 0 = nothing noted yet, else 1 + the highest index noted in [`CacheResult::ALL`].
    cache: AtomicU8,
    attempts: AtomicU32,
}

impl Trace {
    /// The most telling result noted: a tag's `stale` or `revalidated` over the cache hit of
    /// the manifest it points to, a `miss` over the `joined` of a shared tag lookup.
    pub fn cache_result(&self) -> Option<CacheResult> {
        match self.cache.load(Ordering::Relaxed) {
            0 => None,
            n => CacheResult::ALL.get(usize::from(n) - 1).copied(),
        }
    }

    pub fn upstream_attempts(&self) -> u32 {
        self.attempts.load(Ordering::Relaxed)
    }

    fn note(&self, result: CacheResult) {
        let index = CacheResult::ALL.iter().position(|r| *r == result);
        let value = index.map_or(0, |i| i as u8 + 1);
        self.cache.fetch_max(value, Ordering::Relaxed);
    }
}

tokio::task_local! {
    static CURRENT: Arc<Trace>;
}

/// Runs `future` with `trace` as the current request's trace.
pub async fn scope<F: Future>(trace: Arc<Trace>, future: F) -> F::Output {
    CURRENT.scope(trace, future).await
}

/// Wraps work about to be spawned so that it writes to the current request's trace (if any).
pub fn carry<F: Future>(future: F) -> impl Future<Output = F::Output> {
    let trace = CURRENT.try_with(Arc::clone).ok();
    async move {
        match trace {
            Some(trace) => CURRENT.scope(trace, future).await,
            None => future.await,
        }
    }
}

/// Notes where the current request's answer came from (the most telling note wins).
pub fn note(result: CacheResult) {
    let _ = CURRENT.try_with(|t| t.note(result));
}

/// What the current request's trace says so far (`None` outside a request, or nothing noted).
pub fn current_result() -> Option<CacheResult> {
    CURRENT.try_with(|t| t.cache_result()).ok().flatten()
}

/// Counts one upstream attempt (a request sent, the breaker having let it out).
pub fn attempt() {
    let _ = CURRENT.try_with(|t| t.attempts.fetch_add(1, Ordering::Relaxed));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn notes_reach_the_scoped_trace_and_spawned_work_carries_it() {
        let trace = Arc::new(Trace::default());
        scope(trace.clone(), async {
            attempt();
            let task = tokio::spawn(carry(async {
                note(CacheResult::Stale);
                attempt();
            }));
            task.await.unwrap();
            note(CacheResult::Hit);
            // Work spawned without `carry` writes nowhere.
            tokio::spawn(async { attempt() }).await.unwrap();
        })
        .await;
        assert_eq!(
            trace.cache_result(),
            Some(CacheResult::Stale),
            "stale outranks hit"
        );
        assert_eq!(trace.upstream_attempts(), 2);
    }

    #[test]
    fn outside_a_request_notes_are_ignored() {
        note(CacheResult::Miss);
        attempt();
        assert_eq!(Trace::default().cache_result(), None);
    }

    #[test]
    fn every_result_round_trips_through_the_atomic() {
        for result in CacheResult::ALL {
            let trace = Trace::default();
            trace.note(result);
            assert_eq!(trace.cache_result(), Some(result));
            assert_eq!(
                serde_json::to_value(result).unwrap(),
                serde_json::json!(result.as_str())
            );
        }
    }
}

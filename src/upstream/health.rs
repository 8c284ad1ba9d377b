//! Per-upstream health: a circuit breaker and a retry budget.
//!
//! The breaker opens after `threshold` consecutive failures of the path; while open every
//! request fails fast (callers serve what they have), and after `cooldown` one request is let
//! through as a probe. The probe holds a [`Permit`]: whatever happens to it — an answer, an
//! error, a dropped future, a panic — the breaker leaves `Probing`. A permit dropped without an
//! outcome counts as a failed probe, and a probe older than `probe_deadline` is replaced by the
//! next request, so no lost future can wedge the breaker.
//!
//! The retry budget caps retries per minute so a dead upstream is not hammered by the retries
//! of every waiting client; a retry taken but never sent (its future dropped while backing off)
//! is refunded.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Breaker {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// The cooldown is over and one probe request is in flight since `since`.
    Probing {
        since: Instant,
    },
}

pub struct Health {
    breaker: Mutex<Breaker>,
    budget: Mutex<Budget>,
    threshold: u32,
    cooldown: Duration,
    probe_deadline: Duration,
}

struct Budget {
    tokens: f64,
    capacity: f64,
    per_second: f64,
    refilled: Instant,
}

/// What a request learned about the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered (any status about the content counts: the path works).
    Answered,
    /// DNS, connect, TLS, timeout, reset, 5xx, 429: the path or the server is unwell.
    PathFailed,
}

/// Leave to send one request. A probe's permit settles the breaker when it is used or dropped.
pub struct Permit {
    health: Arc<Health>,
    probe: bool,
    settled: bool,
}

impl Permit {
    /// Is this request the breaker's probe (run it where no client can cancel it)?
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    pub fn record(mut self, outcome: Outcome) {
        self.settled = true;
        match outcome {
            Outcome::Answered => self.health.record_success(),
            Outcome::PathFailed => self.health.record_failure(),
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            tracing::warn!("the breaker's probe ended without an answer; counted as failed");
            self.health.record_failure();
        }
    }
}

/// A retry taken from the budget; refunded if dropped before [`RetryToken::spend`].
pub struct RetryToken {
    health: Arc<Health>,
    spent: bool,
}

impl RetryToken {
    pub fn spend(mut self) {
        self.spent = true;
    }
}

impl Drop for RetryToken {
    fn drop(&mut self) {
        if !self.spent {
            let mut budget = self.health.budget.lock().unwrap();
            budget.tokens = (budget.tokens + 1.0).min(budget.capacity);
        }
    }
}

impl Health {
    pub fn new(
        threshold: u32,
        cooldown: Duration,
        probe_deadline: Duration,
        retries_per_minute: u32,
    ) -> Health {
        let capacity = f64::from(retries_per_minute.max(1));
        Health {
            breaker: Mutex::new(Breaker::Closed { failures: 0 }),
            budget: Mutex::new(Budget {
                tokens: capacity,
                capacity,
                per_second: capacity / 60.0,
                refilled: Instant::now(),
            }),
            threshold: threshold.max(1),
            cooldown,
            probe_deadline,
        }
    }

    /// May a request go out now? `Err(wait)` while the breaker is open or a probe is out.
    pub fn admit(self: &Arc<Self>) -> Result<Permit, Duration> {
        let mut breaker = self.breaker.lock().unwrap();
        let now = Instant::now();
        let probe = match *breaker {
            Breaker::Closed { .. } => false,
            Breaker::Open { until } if now < until => return Err(until - now),
            Breaker::Open { .. } => true,
            Breaker::Probing { since } => {
                let age = now.saturating_duration_since(since);
                if age < self.probe_deadline {
                    // One probe at a time; the others fail fast until it reports.
                    return Err((self.probe_deadline - age).min(Duration::from_secs(1)));
                }
                tracing::warn!(deadline = ?self.probe_deadline,
                    "the breaker's probe did not report in time; sending a new one");
                true
            }
        };
        if probe {
            *breaker = Breaker::Probing { since: now };
        }
        Ok(Permit {
            health: self.clone(),
            probe,
            settled: false,
        })
    }

    pub fn is_down(&self) -> bool {
        match *self.breaker.lock().unwrap() {
            Breaker::Closed { .. } => false,
            Breaker::Open { until } => Instant::now() < until,
            Breaker::Probing { .. } => true,
        }
    }

    pub fn record_success(&self) {
        let mut breaker = self.breaker.lock().unwrap();
        if *breaker != (Breaker::Closed { failures: 0 }) {
            if matches!(*breaker, Breaker::Probing { .. }) {
                tracing::info!("upstream answered the probe; circuit breaker closed");
            }
            *breaker = Breaker::Closed { failures: 0 };
        }
    }

    /// A failure of the path (also reported by body readers: stalls, resets mid-transfer).
    pub fn record_failure(&self) {
        let mut breaker = self.breaker.lock().unwrap();
        let open = Breaker::Open {
            until: Instant::now() + self.cooldown,
        };
        *breaker = match *breaker {
            Breaker::Closed { failures } if failures.saturating_add(1) >= self.threshold => {
                tracing::warn!(cooldown = ?self.cooldown, "upstream failed {} times in a row; circuit breaker open", failures.saturating_add(1));
                open
            }
            Breaker::Closed { failures } => Breaker::Closed {
                failures: failures + 1,
            },
            Breaker::Probing { .. } => open,
            Breaker::Open { until } => Breaker::Open { until },
        };
    }

    /// Takes one retry from the budget; `None` when it is spent.
    pub fn take_retry(self: &Arc<Self>) -> Option<RetryToken> {
        let mut budget = self.budget.lock().unwrap();
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(budget.refilled).as_secs_f64();
        budget.tokens = (budget.tokens + elapsed * budget.per_second).min(budget.capacity);
        budget.refilled = now;
        if budget.tokens >= 1.0 {
            budget.tokens -= 1.0;
            Some(RetryToken {
                health: self.clone(),
                spent: false,
            })
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(threshold: u32, cooldown: u64, retries: u32) -> Arc<Health> {
        Arc::new(Health::new(
            threshold,
            Duration::from_secs(cooldown),
            Duration::from_secs(60),
            retries,
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_fails_fast_probes_and_closes() {
        let health = health(3, 30, 60);
        for _ in 0..2 {
            health.record_failure();
            assert!(health.admit().is_ok(), "below the threshold");
        }
        health.record_failure();
        assert!(health.is_down());
        let wait = health.admit().err().unwrap();
        assert!(wait <= Duration::from_secs(30) && wait > Duration::from_secs(29));

        tokio::time::advance(Duration::from_secs(31)).await;
        let probe = health
            .admit()
            .expect("the first request after the cooldown");
        assert!(probe.is_probe());
        assert!(health.admit().is_err(), "only one probe at a time");
        probe.record(Outcome::PathFailed);
        assert!(
            health.admit().is_err(),
            "a failed probe reopens the breaker"
        );

        tokio::time::advance(Duration::from_secs(31)).await;
        health.admit().unwrap().record(Outcome::Answered);
        assert!(!health.is_down());
        assert!(!health.admit().unwrap().is_probe());
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_reopens_the_breaker_and_the_next_cooldown_probes_again() {
        let health = health(1, 3, 60);
        health.record_failure();
        tokio::time::advance(Duration::from_secs(3)).await;
        let probe = health.admit().unwrap();
        assert!(probe.is_probe());
        // The future carrying the probe is cancelled (a client hung up, a deadline fired).
        drop(probe);
        assert!(health.is_down(), "an unfinished probe is a failed probe");
        let wait = health.admit().err().expect("open again, not wedged");
        assert!(wait <= Duration::from_secs(3));
        tokio::time::advance(Duration::from_secs(3)).await;
        health.admit().unwrap().record(Outcome::Answered);
        assert!(
            !health.is_down(),
            "recovered within one cooldown + one probe"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_never_reports_is_replaced_after_the_deadline() {
        let health = health(1, 3, 60);
        health.record_failure();
        tokio::time::advance(Duration::from_secs(3)).await;
        let lost = health.admit().unwrap();
        std::mem::forget(lost); // neither dropped nor recorded: a leaked future
        assert!(health.admit().is_err());
        tokio::time::advance(Duration::from_secs(60)).await;
        let probe = health
            .admit()
            .expect("a new probe after the probe deadline");
        assert!(probe.is_probe());
        probe.record(Outcome::Answered);
        assert!(!health.is_down());
    }

    #[tokio::test(start_paused = true)]
    async fn success_resets_the_failure_count() {
        let health = health(2, 30, 60);
        health.record_failure();
        health.record_success();
        health.record_failure();
        assert!(!health.is_down());
    }

    #[tokio::test(start_paused = true)]
    async fn retry_budget_refills_over_time_and_refunds_unspent_retries() {
        let health = health(5, 30, 6);
        for _ in 0..5 {
            health.take_retry().unwrap().spend();
        }
        // Taken, then the backoff sleep was cancelled: the retry never went out.
        drop(health.take_retry().unwrap());
        health.take_retry().expect("refunded").spend();
        assert!(health.take_retry().is_none(), "spent");
        tokio::time::advance(Duration::from_secs(10)).await;
        health
            .take_retry()
            .expect("6 per minute = one every 10 s")
            .spend();
        assert!(health.take_retry().is_none());
    }
}

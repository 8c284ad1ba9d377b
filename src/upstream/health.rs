//! Per-upstream health: a circuit breaker and a retry budget.
//!
//! The breaker opens after `threshold` consecutive failures; while open every request fails
//! fast (callers serve what they have), and after `cooldown` one request is let through as a
//! probe. The retry budget caps retries per minute so a dead upstream is not hammered by the
//! retries of every waiting client.

use std::sync::Mutex;
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
    /// The cooldown is over and one probe request is in flight.
    Probing,
}

/// What `berth_upstream_state` and the status page show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Up,
    /// One request is out to see whether the upstream is back.
    Probing,
    /// Failing fast; the next request after the cooldown becomes the probe.
    Down,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Up => "up",
            BreakerState::Probing => "probing",
            BreakerState::Down => "down",
        }
    }

    /// 0 up, 1 probing, 2 down.
    pub fn gauge(self) -> i64 {
        match self {
            BreakerState::Up => 0,
            BreakerState::Probing => 1,
            BreakerState::Down => 2,
        }
    }
}

pub struct Health {
    breaker: Mutex<Breaker>,
    budget: Mutex<Budget>,
    threshold: u32,
    cooldown: Duration,
}

struct Budget {
    tokens: f64,
    capacity: f64,
    per_second: f64,
    refilled: Instant,
}

impl Health {
    pub fn new(threshold: u32, cooldown: Duration, retries_per_minute: u32) -> Health {
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
        }
    }

    /// May a request go out now? `Err(wait)` while the breaker is open.
    pub fn admit(&self) -> Result<(), Duration> {
        let mut breaker = self.breaker.lock().unwrap();
        match *breaker {
            Breaker::Closed { .. } => Ok(()),
            Breaker::Open { until } => {
                let now = Instant::now();
                if now >= until {
                    *breaker = Breaker::Probing;
                    Ok(())
                } else {
                    Err(until - now)
                }
            }
            // One probe at a time; the others keep failing fast until it reports.
            Breaker::Probing => Err(Duration::from_secs(1)),
        }
    }

    pub fn state(&self) -> BreakerState {
        match *self.breaker.lock().unwrap() {
            Breaker::Closed { .. } => BreakerState::Up,
            Breaker::Open { .. } => BreakerState::Down,
            Breaker::Probing => BreakerState::Probing,
        }
    }

    pub fn is_down(&self) -> bool {
        match *self.breaker.lock().unwrap() {
            Breaker::Closed { .. } => false,
            Breaker::Open { until } => Instant::now() < until,
            Breaker::Probing => true,
        }
    }

    pub fn record_success(&self) {
        let mut breaker = self.breaker.lock().unwrap();
        if *breaker != (Breaker::Closed { failures: 0 }) {
            if matches!(*breaker, Breaker::Probing) {
                tracing::info!("upstream answered the probe; circuit breaker closed");
            }
            *breaker = Breaker::Closed { failures: 0 };
        }
    }

    pub fn record_failure(&self) {
        let mut breaker = self.breaker.lock().unwrap();
        let open = Breaker::Open {
            until: Instant::now() + self.cooldown,
        };
        *breaker = match *breaker {
            Breaker::Closed { failures } if failures + 1 >= self.threshold => {
                tracing::warn!(cooldown = ?self.cooldown, "upstream failed {} times in a row; circuit breaker open", failures + 1);
                open
            }
            Breaker::Closed { failures } => Breaker::Closed {
                failures: failures + 1,
            },
            Breaker::Probing => open,
            Breaker::Open { until } => Breaker::Open { until },
        };
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn take_retry(&self) -> bool {
        let mut budget = self.budget.lock().unwrap();
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(budget.refilled).as_secs_f64();
        budget.tokens = (budget.tokens + elapsed * budget.per_second).min(budget.capacity);
        budget.refilled = now;
        if budget.tokens >= 1.0 {
            budget.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_fails_fast_probes_and_closes() {
        let health = Health::new(3, Duration::from_secs(30), 60);
        for _ in 0..2 {
            health.record_failure();
            assert!(health.admit().is_ok(), "below the threshold");
        }
        health.record_failure();
        assert!(health.is_down());
        let wait = health.admit().unwrap_err();
        assert!(wait <= Duration::from_secs(30) && wait > Duration::from_secs(29));

        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(
            health.admit().is_ok(),
            "the first request after the cooldown is the probe"
        );
        assert!(health.admit().is_err(), "only one probe at a time");
        health.record_failure();
        assert!(
            health.admit().is_err(),
            "a failed probe reopens the breaker"
        );

        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(health.admit().is_ok());
        health.record_success();
        assert!(!health.is_down());
        assert!(health.admit().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn success_resets_the_failure_count() {
        let health = Health::new(2, Duration::from_secs(30), 60);
        health.record_failure();
        health.record_success();
        health.record_failure();
        assert!(!health.is_down());
    }

    #[tokio::test(start_paused = true)]
    async fn retry_budget_refills_over_time() {
        let health = Health::new(5, Duration::from_secs(30), 6);
        for _ in 0..6 {
            assert!(health.take_retry());
        }
        assert!(!health.take_retry(), "spent");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(health.take_retry(), "6 per minute = one every 10 s");
        assert!(!health.take_retry());
    }
}

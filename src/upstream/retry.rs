//! Backoff between attempts. The attempt budget is `max_attempts` header-stage attempts per
//! upstream call (manifest, tag HEAD, listing, and each blob transfer); a blob transfer that
//! breaks mid-body resumes under the same budget, reset only by progress (see
//! `UpstreamClient::fetch_blob`). Retries across all calls are capped by the health's budget.

use std::time::Duration;

/// A `Retry-After` longer than this is passed to the client instead of waited out.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Exponential backoff with jitter; `None` when the upstream asks us to wait longer than we will.
pub fn backoff(attempt: u32, retry_after: Option<Duration>) -> Option<Duration> {
    if let Some(wait) = retry_after {
        return (wait <= MAX_RETRY_AFTER).then_some(wait);
    }
    let base = Duration::from_millis(250)
        .saturating_mul(1 << attempt.min(6))
        .min(Duration::from_secs(8));
    let jitter = rand::random_range(0.5..=1.0);
    Some(base.mul_f64(jitter))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_honours_retry_after() {
        assert!(backoff(1, None).unwrap() <= Duration::from_millis(500));
        assert!(backoff(10, None).unwrap() <= Duration::from_secs(8));
        assert_eq!(
            backoff(1, Some(Duration::from_secs(3))),
            Some(Duration::from_secs(3))
        );
        assert_eq!(backoff(1, Some(Duration::from_secs(3600))), None);
    }
}

//! The bounds every duration key is held to at load, so a typo fails the start with one line
//! instead of overflowing an instant later (a panic under a lock would fail every request).

use std::time::Duration;

use super::ConfigError;

/// Longest timeout, cooldown or interval berth accepts: past a day it is a typo, and an instant
/// plus such a duration can overflow (a panic under a lock would fail every request).
pub const MAX_INTERVAL: Duration = Duration::from_secs(86_400);
/// The longest window of pull history berth keeps out of eviction or is asked about.
pub const MAX_HISTORY: Duration = Duration::from_secs(366 * 86_400);
/// Longest a tag answer may be trusted without asking.
pub const MAX_TAG_TTL: Duration = Duration::from_secs(365 * 86_400);

/// A duration key that must be longer than zero and at most `max`.
pub fn check_duration(key: &str, value: Duration, max: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::new(key, "must be longer than zero"));
    }
    if value > max {
        return Err(ConfigError::new(
            key,
            format!(
                "{} is longer than {}, the longest berth accepts",
                humantime_serde::re::humantime::format_duration(value),
                humantime_serde::re::humantime::format_duration(max)
            ),
        ));
    }
    Ok(())
}

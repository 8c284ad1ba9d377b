//! Sizes and windows of time as people write them: the one byte formatter of the status
//! page, `berth status`, `berth cache` and prewarm's report; the one parser of `--since`.

use std::time::Duration;

pub fn human_bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

/// Seconds as people say them: `30d`, `2h`, `45m`, `90s` (the largest whole unit).
pub fn human_duration(seconds: u64) -> String {
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if seconds >= size && seconds % size == 0 {
            return format!("{}{unit}", seconds / size);
        }
    }
    format!("{seconds}s")
}

/// A window of the recent past: `90s`, `30m`, `2h`, `1d` (humantime's units, as the config
/// file takes them) or plain seconds; longer than zero and at most `max`.
pub fn parse_window(text: &str, max: Duration) -> Option<Duration> {
    let text = text.trim();
    let window = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        Duration::from_secs(text.parse().ok()?)
    } else {
        humantime_serde::re::humantime::parse_duration(text).ok()?
    };
    (!window.is_zero() && window <= max).then_some(window)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_take_humantime_units_or_seconds_within_the_bound() {
        let week = Duration::from_secs(7 * 86_400);
        for (text, secs) in [
            ("90s", 90),
            ("30m", 1800),
            ("2h", 7200),
            ("1d", 86_400),
            ("45", 45),
            ("1w", 604_800),
        ] {
            assert_eq!(
                parse_window(text, week),
                Some(Duration::from_secs(secs)),
                "{text}"
            );
        }
        for bad in [
            "",
            "m",
            "0",
            "-1m",
            "8d",
            "99999999999999999999d",
            "2w",
            "1.5x",
        ] {
            assert_eq!(parse_window(bad, week), None, "{bad}");
        }
    }

    #[test]
    fn bytes_are_human() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.00 GiB");
    }
}

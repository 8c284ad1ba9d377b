//! `probe_interval` and `probe_images`: `berth probe`'s default images and `berth serve`'s
//! light probe.

use std::time::Duration;

use super::{ConfigError, DEFAULT_PROBE_IMAGES, ProbeConfig};

/// The light probe runs at most this often.
const MIN_PROBE_INTERVAL: Duration = Duration::from_secs(10);

pub(super) fn resolve(
    interval: Option<Duration>,
    images: Option<Vec<String>>,
) -> Result<ProbeConfig, ConfigError> {
    if let Some(interval) = interval {
        super::limits::check_duration("probe_interval", interval, super::limits::MAX_INTERVAL)?;
    }
    if interval.is_some_and(|i| i < MIN_PROBE_INTERVAL) {
        return Err(ConfigError::new(
            "probe_interval",
            "at least \"10s\" (the light probe runs every interval); remove the key to turn it off",
        ));
    }
    let images =
        images.unwrap_or_else(|| DEFAULT_PROBE_IMAGES.iter().map(|s| s.to_string()).collect());
    if let Some(bad) = images
        .iter()
        .find(|i| i.trim().is_empty() || i.contains(char::is_whitespace))
    {
        return Err(ConfigError::new(
            "probe_images",
            format!("`{bad}` is not an image reference like ghcr.io/fluxcd/helm-controller:v1.5.1"),
        ));
    }
    Ok(ProbeConfig { interval, images })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn probe_keys() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.probe.interval, None);
        assert_eq!(c.probe.images.len(), 3);
        let c =
            Config::from_toml("probe_interval = \"5m\"\nprobe_images = [\"a.io/b:c\"]\n").unwrap();
        assert_eq!(c.probe.interval, Some(std::time::Duration::from_secs(300)));
        assert_eq!(c.probe.images, ["a.io/b:c"]);
        let e = Config::from_toml("probe_interval = \"1s\"").unwrap_err();
        assert_eq!(e.key, "probe_interval");
        let e = Config::from_toml("probe_images = [\"a b\"]").unwrap_err();
        assert_eq!(e.key, "probe_images");
    }
}

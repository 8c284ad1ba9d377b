//! Healing a path MTU black hole without configuration.
//!
//! The signature: TCP connects, but what the server sends in full-size segments never arrives —
//! the TLS certificate flight (the handshake times out), or the first bytes of a response body
//! (the transfer stalls before its first byte). The hop with the lower MTU drops those segments
//! and the ICMP "fragmentation needed" that would shrink them never comes back. A connection
//! whose SYN announces a smaller MSS makes the server send segments that fit.
//!
//! This is the memory of it, per upstream client: which `host:port` needs which clamp
//! (`mss_fallback` steps, largest first), since when, and when to try full-size segments again
//! (so a fixed path goes back to them). The connector asks it which MSS a new connection
//! starts with and races a clamped handshake against a slow full-size one; the blob reader
//! tells it about transfers that stalled before their first byte.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::config::Transport;
use crate::metrics::{Metrics, UpstreamNameLabels};

/// How long a clamp is kept before full-size segments are tried again.
const RECHECK_AFTER: Duration = Duration::from_secs(30 * 60);
/// Hosts remembered per upstream (a registry, its token host, a few CDN hosts).
const MAX_HOSTS: usize = 64;

/// A clamp in force for one `host:port`.
#[derive(Debug, Clone)]
pub struct Clamp {
    pub host: String,
    /// The address whose connections showed the signature.
    pub address: String,
    pub mss: u32,
    pub since: SystemTime,
    /// Index into the steps; the next escalation goes one further.
    step: usize,
    recheck_at: Instant,
}

pub struct BlackHoles {
    steps: Vec<u32>,
    clamps: Mutex<HashMap<String, Clamp>>,
    upstream: String,
    metrics: Option<Arc<Metrics>>,
}

/// The memory's key for a host and port, as the connector and the blob reader both see it.
pub fn key(host: &str, port: u16) -> String {
    format!(
        "{}:{port}",
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase()
    )
}

/// The key for a URL (default ports by scheme).
pub fn key_of(url: &url::Url) -> Option<String> {
    Some(key(url.host_str()?, url.port_or_known_default()?))
}

impl BlackHoles {
    /// Off (no steps) when the transport sets `tcp_mss`: an explicit clamp always wins.
    pub fn new(transport: &Transport) -> BlackHoles {
        let steps = if transport.tcp_mss.is_some() {
            Vec::new()
        } else {
            transport.mss_fallback.clone()
        };
        BlackHoles {
            steps,
            clamps: Mutex::new(HashMap::new()),
            upstream: String::new(),
            metrics: None,
        }
    }

    pub fn with_metrics(mut self, metrics: Arc<Metrics>, upstream: &str) -> BlackHoles {
        self.upstream = upstream.to_string();
        metrics.upstream_mss.get_or_create(&self.labels()).set(0);
        self.metrics = Some(metrics);
        self
    }

    fn labels(&self) -> UpstreamNameLabels {
        UpstreamNameLabels {
            upstream: self.upstream.clone(),
        }
    }

    /// The memory; a panic elsewhere while it was held leaves it usable (it holds no invariant
    /// across entries).
    fn clamps(&self) -> std::sync::MutexGuard<'_, HashMap<String, Clamp>> {
        self.clamps.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn enabled(&self) -> bool {
        !self.steps.is_empty()
    }

    /// The clamp a new connection to `key` starts with; `None`: full-size segments. A clamp
    /// past its recheck time is dropped here, so this connection tries full size again.
    pub fn current(&self, key: &str) -> Option<u32> {
        let mut clamps = self.clamps();
        let clamp = clamps.get(key)?;
        if clamp.recheck_at > Instant::now() {
            return Some(clamp.mss);
        }
        let clamp = clamps.remove(key)?;
        drop(clamps);
        tracing::info!(upstream = %self.upstream, host = %key, mss = clamp.mss,
            "trying full-size segments again after the black-hole clamp");
        self.set_gauge();
        None
    }

    /// The clamps to try, in order, after a connection that started at `from` failed.
    pub fn steps_after(&self, from: Option<u32>) -> Vec<u32> {
        match from {
            None => self.steps.clone(),
            Some(mss) => self.steps.iter().copied().filter(|s| *s < mss).collect(),
        }
    }

    /// A connection at `mss` worked where full size did not: remember it for `key`.
    pub fn clamped(&self, key: &str, address: &str, mss: u32, why: &str) {
        let Some(step) = self.steps.iter().position(|s| *s == mss) else {
            return;
        };
        let mut clamps = self.clamps();
        if clamps.get(key).is_some_and(|c| c.mss == mss) {
            return;
        }
        if clamps.len() >= MAX_HOSTS && !clamps.contains_key(key) {
            // The oldest clamp makes room: it is rediscovered in one slow connection.
            if let Some(oldest) = clamps
                .iter()
                .min_by_key(|(_, c)| c.since)
                .map(|(k, _)| k.clone())
            {
                clamps.remove(&oldest);
            }
        }
        clamps.insert(
            key.to_string(),
            Clamp {
                host: key.to_string(),
                address: address.to_string(),
                mss,
                since: SystemTime::now(),
                step,
                recheck_at: Instant::now() + RECHECK_AFTER,
            },
        );
        drop(clamps);
        tracing::warn!(upstream = %self.upstream, host = %key, %address, mss,
            "path MTU black hole: {why}; clamping this address's connections to MSS {mss} \
             (confirm with `berth probe`)");
        if let Some(metrics) = &self.metrics {
            metrics
                .upstream_mss_fallbacks
                .get_or_create(&self.labels())
                .inc();
        }
        self.set_gauge();
    }

    /// A transfer from `key` stalled before its first body byte: the next connection goes one
    /// step smaller. Past the last step the stalls are not the MTU: the clamp is dropped.
    pub fn stalled_before_first_byte(&self, key: &str) {
        if !self.enabled() {
            return;
        }
        let next = {
            let clamps = self.clamps();
            match clamps.get(key) {
                None => Some(0),
                Some(c) => Some(c.step + 1).filter(|s| *s < self.steps.len()),
            }
        };
        match next {
            Some(step) => self.clamped(
                key,
                key,
                self.steps[step],
                "a transfer stalled before its first byte",
            ),
            None => {
                let removed = self.clamps().remove(key);
                if removed.is_some() {
                    tracing::info!(upstream = %self.upstream, host = %key,
                        "transfers stall at every clamp: not an MTU problem, back to full size");
                    self.set_gauge();
                }
            }
        }
    }

    /// The clamp in force most recently set, for the status page.
    pub fn latest(&self) -> Option<Clamp> {
        let clamps = self.clamps();
        clamps.values().max_by_key(|c| c.since).cloned()
    }

    /// `berth_upstream_mss`: the smallest clamp in force for this upstream, 0 when none.
    fn set_gauge(&self) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        let smallest = {
            let clamps = self.clamps();
            clamps.values().map(|c| c.mss).min().unwrap_or(0)
        };
        metrics
            .upstream_mss
            .get_or_create(&self.labels())
            .set(smallest.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holes(steps: &[u32], tcp_mss: Option<u32>) -> BlackHoles {
        BlackHoles::new(&Transport {
            mss_fallback: steps.to_vec(),
            tcp_mss,
            ..Transport::default()
        })
    }

    #[test]
    fn stalls_step_down_the_ladder_and_give_up_past_its_end() {
        let h = holes(&[1360, 1200], None);
        assert_eq!(h.current("r:443"), None);
        h.stalled_before_first_byte("r:443");
        assert_eq!(h.current("r:443"), Some(1360));
        h.stalled_before_first_byte("r:443");
        assert_eq!(h.current("r:443"), Some(1200));
        h.stalled_before_first_byte("r:443");
        assert_eq!(
            h.current("r:443"),
            None,
            "stalls at every clamp: not the MTU"
        );
        assert_eq!(h.current("other:443"), None, "per host");
    }

    #[test]
    fn an_explicit_tcp_mss_or_an_empty_list_turns_it_off() {
        for h in [holes(&[1360], Some(1300)), holes(&[], None)] {
            assert!(!h.enabled());
            h.stalled_before_first_byte("r:443");
            assert_eq!(h.current("r:443"), None);
        }
    }

    #[test]
    fn steps_after_a_clamp_are_the_smaller_ones() {
        let h = holes(&[1360, 1200], None);
        assert_eq!(h.steps_after(None), vec![1360, 1200]);
        assert_eq!(h.steps_after(Some(1360)), vec![1200]);
        assert!(h.steps_after(Some(1200)).is_empty());
    }

    #[test]
    fn the_memory_is_bounded() {
        let h = holes(&[1360], None);
        for i in 0..(MAX_HOSTS + 10) {
            h.clamped(&format!("h{i}:443"), "a", 1360, "test");
        }
        assert_eq!(h.clamps.lock().unwrap().len(), MAX_HOSTS);
    }

    #[test]
    fn keys_agree_between_urls_and_host_port() {
        let url = url::Url::parse("https://Registry.Example/v2/").unwrap();
        assert_eq!(key_of(&url).unwrap(), key("registry.example", 443));
        assert_eq!(key("[::1]", 5000), "::1:5000");
    }
}

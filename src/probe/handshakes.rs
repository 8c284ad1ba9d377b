//! Handshakes at each MSS: when TLS handshakes time out after TCP connects, the same handshake
//! on fresh connections at each clamp tells a PMTU black hole (fails at full size, completes
//! clamped) from a server that refuses or resets (fails at every MSS).
//!
//! Behind a black hole the manifest request dies in that same handshake, so the bulk transfer
//! cannot be the proof: this is. When the clamps work, the largest working MSS is bisected
//! with single handshakes: the server's certificate flight then arrives in segments of exactly
//! that size, so MSS + headers is the path MTU toward this host, in bytes on the wire.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::failure::{ErrorClass, Failure};
use crate::upstream::{Connector, PhaseTimes, connect_failure};

/// Handshakes per MSS in the comparison.
const ATTEMPTS: u32 = 2;
/// Single handshakes spent bisecting the largest working MSS.
const MAX_BISECT_STEPS: u32 = 7;
/// IPv4 and TCP headers without options; IPv6's header is 20 bytes longer.
const IPV4_TCP_HEADERS: u32 = 40;
const IPV6_EXTRA: u32 = 20;
/// The MSS a 1500-byte Ethernet path announces by default.
const FULL_SIZE_MSS: u32 = 1460;

/// An MSS as the reports write it: the number, or `default` for the system's own.
pub fn mss_label(mss: Option<u32>) -> String {
    mss.map_or_else(|| "default".into(), |m| m.to_string())
}

/// Handshakes at one MSS (`None`: the system default).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HandshakeRun {
    pub mss: Option<u32>,
    pub attempts: u32,
    pub ok: u32,
    /// The failure class of the last failed handshake (`tls_handshake_timeout`, ...).
    pub failure: Option<String>,
}

/// The comparison toward one address of a host whose handshakes timed out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HandshakeComparison {
    pub address: String,
    pub runs: Vec<HandshakeRun>,
    /// The largest MSS whose handshake completed (bisected between the clamps and full size).
    pub largest_mss: Option<u32>,
    /// `largest_mss` plus the IP and TCP headers: the largest packet that crossed toward us.
    pub path_mtu: Option<u32>,
}

impl HandshakeComparison {
    /// Full size failed every time and some clamp worked every time.
    pub fn is_black_hole(&self) -> bool {
        let default_failed = self
            .runs
            .iter()
            .any(|r| r.mss.is_none() && r.attempts > 0 && r.ok == 0);
        default_failed
            && self
                .runs
                .iter()
                .any(|r| r.mss.is_some() && r.attempts > 0 && r.ok == r.attempts)
    }

    /// "default 0/2 (tls_handshake_timeout), 1360 2/2, 1200 2/2".
    pub fn summary(&self) -> String {
        self.runs
            .iter()
            .map(|r| {
                let failure = r
                    .failure
                    .as_deref()
                    .filter(|_| r.ok < r.attempts)
                    .map(|f| format!(" ({f})"))
                    .unwrap_or_default();
                format!("MSS {} {}/{}{failure}", mss_label(r.mss), r.ok, r.attempts)
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One handshake on a fresh connection: `Err(failure class)` when it did not complete.
async fn handshake(connector: &Connector, host: &str, addr: SocketAddr) -> Result<(), String> {
    let mut times = PhaseTimes::default();
    connector
        .open(host, addr, true, &mut times)
        .await
        .map(drop)
        .map_err(|e| {
            connect_failure(&e)
                .unwrap_or_else(|| Failure::of_io(ErrorClass::TlsHandshake, &e))
                .name()
        })
}

/// Compares handshakes to `addr` at full size and at each clamp; `dial(mss)` gives the probe's
/// connector at that MSS.
pub async fn compare(
    host: &str,
    addr: SocketAddr,
    clamps: &[u32],
    dial: impl Fn(Option<u32>) -> Connector,
) -> HandshakeComparison {
    let mut runs = Vec::new();
    for mss in std::iter::once(None).chain(clamps.iter().map(|m| Some(*m))) {
        let connector = dial(mss);
        let mut run = HandshakeRun {
            mss,
            ..HandshakeRun::default()
        };
        for _ in 0..ATTEMPTS {
            run.attempts += 1;
            match handshake(&connector, host, addr).await {
                Ok(()) => run.ok += 1,
                Err(class) => run.failure = Some(class),
            }
        }
        runs.push(run);
    }
    let mut comparison = HandshakeComparison {
        address: addr.ip().to_string(),
        runs,
        ..HandshakeComparison::default()
    };
    if comparison.is_black_hole() {
        let largest = bisect(&comparison.runs, |mss| {
            let connector = dial(Some(mss));
            async move { handshake(&connector, host, addr).await.is_ok() }
        })
        .await;
        let headers = IPV4_TCP_HEADERS + if addr.is_ipv6() { IPV6_EXTRA } else { 0 };
        comparison.largest_mss = largest;
        comparison.path_mtu = largest.map(|m| m + headers);
    }
    comparison
}

/// The largest MSS that completes a handshake, between the largest clamp that always worked
/// and the smallest MSS known to fail (full size when no clamp failed).
async fn bisect<F, Fut>(runs: &[HandshakeRun], works: F) -> Option<u32>
where
    F: Fn(u32) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut good = runs
        .iter()
        .filter(|r| r.ok == r.attempts && r.attempts > 0)
        .filter_map(|r| r.mss)
        .max()?;
    let mut bad = runs
        .iter()
        .filter(|r| r.ok == 0)
        .filter_map(|r| r.mss)
        .filter(|m| *m > good)
        .min()
        .unwrap_or(FULL_SIZE_MSS + 1);
    for _ in 0..MAX_BISECT_STEPS {
        if bad - good <= 1 {
            break;
        }
        let mid = good + (bad - good) / 2;
        if works(mid).await {
            good = mid;
        } else {
            bad = mid;
        }
    }
    Some(good)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(mss: Option<u32>, ok: u32) -> HandshakeRun {
        HandshakeRun {
            mss,
            attempts: 2,
            ok,
            failure: (ok < 2).then(|| "tls_handshake_timeout".into()),
        }
    }

    #[test]
    fn a_black_hole_fails_at_full_size_and_works_clamped() {
        let c = |runs| HandshakeComparison {
            runs,
            ..Default::default()
        };
        assert!(c(vec![run(None, 0), run(Some(1360), 2), run(Some(1200), 2)]).is_black_hole());
        assert!(
            !c(vec![run(None, 0), run(Some(1360), 0)]).is_black_hole(),
            "every MSS fails"
        );
        assert!(
            !c(vec![run(None, 2), run(Some(1360), 2)]).is_black_hole(),
            "healthy"
        );
        assert!(
            !c(vec![run(None, 1), run(Some(1360), 2)]).is_black_hole(),
            "flaky, not a hole"
        );
    }

    #[tokio::test]
    async fn bisection_finds_the_largest_working_mss() {
        let runs = [run(None, 0), run(Some(1360), 2), run(Some(1200), 2)];
        let hop = |limit: u32| move |mss: u32| async move { mss <= limit };
        assert_eq!(bisect(&runs, hop(1360)).await, Some(1360));
        assert_eq!(bisect(&runs, hop(1400)).await, Some(1400));
        let failing_clamp = [run(None, 0), run(Some(1360), 0), run(Some(1200), 2)];
        assert_eq!(bisect(&failing_clamp, hop(1300)).await, Some(1300));
        assert_eq!(bisect(&[run(None, 0)], hop(1300)).await, None);
    }
}

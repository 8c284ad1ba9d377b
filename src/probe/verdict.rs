//! Verdicts: evidence in, named causes with their fix out. A pure function, table-tested.

use std::collections::BTreeMap;

use super::handshakes::HandshakeComparison;
use super::report::{BulkRun, Report, Verdict, mss_label};

/// What the rules look at, one entry per target host.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TargetEvidence {
    pub host: String,
    pub attempts: u32,
    pub ok: u32,
    pub failures: BTreeMap<String, u32>,
    pub dns_p90_ms: Option<f64>,
    pub v4_attempts: u32,
    pub v4_ok: u32,
    pub v6_attempts: u32,
    pub v6_ok: u32,
    /// Handshakes at each MSS, when this target's TLS handshakes timed out.
    pub handshakes: Option<HandshakeComparison>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct BulkEvidence {
    pub image: String,
    /// The host the blob bytes came from.
    pub host: String,
    pub runs: Vec<BulkRun>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evidence {
    pub targets: Vec<TargetEvidence>,
    pub bulk: Vec<BulkEvidence>,
    /// Path MTU measured with DF probes, per host (smallest over its addresses).
    pub path_mtu: BTreeMap<String, u32>,
}

/// DNS answers slower than this (p90) are worth a verdict.
const SLOW_DNS_MS: f64 = 1000.0;
/// IPv4: 20 bytes IP + 20 bytes TCP header between MTU and MSS.
const IPV4_TCP_HEADERS: u32 = 40;

impl Evidence {
    pub fn from_report(report: &Report) -> Evidence {
        let targets = report
            .targets
            .iter()
            .map(|t| {
                let fam = |f: &str| {
                    t.families
                        .get(f)
                        .map(|x| (x.attempts, x.ok))
                        .unwrap_or_default()
                };
                let (v4_attempts, v4_ok) = fam("ipv4");
                let (v6_attempts, v6_ok) = fam("ipv6");
                TargetEvidence {
                    host: t.host.clone(),
                    attempts: t.attempts,
                    ok: t.ok,
                    failures: t.failures.clone(),
                    dns_p90_ms: t.dns.time.p90_ms,
                    v4_attempts,
                    v4_ok,
                    v6_attempts,
                    v6_ok,
                    handshakes: t.handshakes.clone(),
                }
            })
            .collect();
        let bulk = report
            .bulk
            .iter()
            .filter(|b| !b.runs.is_empty())
            .map(|b| BulkEvidence {
                image: b.image.clone(),
                host: b.blob_host.clone().unwrap_or_else(|| b.upstream.clone()),
                runs: b.runs.clone(),
            })
            .collect();
        let mut path_mtu: BTreeMap<String, u32> = BTreeMap::new();
        for d in &report.path.destinations {
            if let Some(mtu) = d.path_mtu {
                for host in &d.hosts {
                    let e = path_mtu.entry(host.clone()).or_insert(mtu);
                    *e = (*e).min(mtu);
                }
            }
        }
        Evidence {
            targets,
            bulk,
            path_mtu,
        }
    }
}

fn count(t: &TargetEvidence, class: &str) -> u32 {
    t.failures.get(class).copied().unwrap_or(0)
}

fn verdict(kind: &str, target: &str, evidence: String, fix: String) -> Verdict {
    Verdict {
        kind: kind.into(),
        target: target.into(),
        evidence,
        fix,
        recommended_mss: None,
    }
}

/// The rules. Order of the output: path-level causes first, `healthy` only when nothing else.
pub fn verdicts(e: &Evidence) -> Vec<Verdict> {
    let mut out = Vec::new();
    pmtu_and_stalls(e, &mut out);
    handshake_black_holes(e, &mut out);
    tls_timeouts(e, &mut out);
    for t in &e.targets {
        let dns = count(t, "dns");
        let slow = t.dns_p90_ms.filter(|ms| *ms > SLOW_DNS_MS);
        if dns > 0 || slow.is_some() {
            let evidence = match slow {
                Some(ms) if dns == 0 => format!("DNS p90 {ms:.0} ms for {}", t.host),
                _ => format!(
                    "{dns} of {} lookups of {} failed",
                    t.attempts.max(dns),
                    t.host
                ),
            };
            out.push(verdict(
                "dns_slow_or_failing",
                &t.host,
                evidence,
                "check the resolvers listed under path facts (reachable, answering fast); on a VM \
                 compare with the host's; a local caching resolver helps"
                    .into(),
            ));
        }
        if t.v6_attempts > 0 && t.v6_ok == 0 && t.v4_ok > 0 {
            out.push(verdict(
                "ipv6_broken",
                &t.host,
                format!(
                    "AAAA returned, 0 of {} IPv6 requests succeeded, {} of {} IPv4 did",
                    t.v6_attempts, t.v4_ok, t.v4_attempts
                ),
                "set ip_preference = \"ipv4\" in berth.toml (or fix the IPv6 route)".into(),
            ));
        }
        let resets = count(t, "reset");
        if resets > 0 {
            out.push(verdict(
                "resets",
                &t.host,
                format!("{resets} of {} requests reset", t.attempts),
                "a firewall, proxy or NAT on the path resets connections: check conntrack \
                 limits and middleboxes; berth retries and resumes with Range"
                    .into(),
            ));
        }
        let connect: u32 = ["connect_timeout", "connect_refused", "connect_unreachable"]
            .iter()
            .map(|c| count(t, c))
            .sum();
        if connect > 0 {
            out.push(verdict(
                "connect_failing",
                &t.host,
                format!(
                    "{connect} of {} TCP connects failed ({})",
                    t.attempts,
                    classes(t, "connect_")
                ),
                "check the default route and the firewall egress rules for the target's port"
                    .into(),
            ));
        }
        let http: u32 = t
            .failures
            .iter()
            .filter(|(k, _)| k.starts_with("http_"))
            .map(|(_, n)| n)
            .sum();
        if http > 0 {
            out.push(verdict(
                "http_errors",
                &t.host,
                format!("{http} error answers ({})", classes(t, "http_")),
                "429: authenticate to the registry (credentials in berth.toml) or pull less \
                 often; 5xx: the registry's own trouble, berth serves cached content meanwhile"
                    .into(),
            ));
        }
        let header = count(t, "header_timeout") + count(t, "stall");
        if header > 0 {
            out.push(verdict(
                "stalls",
                &t.host,
                format!(
                    "{header} requests got no response in time ({})",
                    [
                        ("header_timeout", count(t, "header_timeout")),
                        ("stall", count(t, "stall"))
                    ]
                    .iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(k, n)| format!("{k}×{n}"))
                    .collect::<Vec<_>>()
                    .join(" ")
                ),
                "responses stop after the connection is up: check MSS/MTU (run with --image to \
                 test bulk transfers) and middleboxes"
                    .into(),
            ));
        }
    }
    let failed_runs = e
        .bulk
        .iter()
        .flat_map(|b| &b.runs)
        .filter(|r| !r.completed())
        .count();
    if out.is_empty() && failed_runs > 0 {
        out.push(verdict(
            "bulk_failures",
            "*",
            format!("{failed_runs} bulk transfers failed (see the bulk table)"),
            "read the failure class of each transfer: stall and reset point at the path, \
             http_* at the registry"
                .into(),
        ));
    }
    if out.is_empty() {
        out.push(verdict(
            "healthy",
            "*",
            format!(
                "{} targets answered every request; {} bulk transfers completed",
                e.targets.len(),
                e.bulk
                    .iter()
                    .map(|b| b.runs.iter().filter(|r| r.completed()).count())
                    .sum::<usize>()
            ),
            "nothing to fix".into(),
        ));
    }
    out
}

fn classes(t: &TargetEvidence, prefix: &str) -> String {
    t.failures
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(k, n)| format!("{k}×{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A transfer that stalls at the default MSS but completes with a smaller one, while small
/// requests to the same place work: the signature of a path MTU black hole.
fn pmtu_and_stalls(e: &Evidence, out: &mut Vec<Verdict>) {
    for b in &e.bulk {
        let Some(default) = b.runs.iter().find(|r| r.mss.is_none()) else {
            continue;
        };
        if default.completed() {
            continue;
        }
        let small_ok = e.targets.iter().any(|t| t.host == b.host && t.ok > 0)
            || e.targets.iter().all(|t| t.host != b.host);
        let working: Vec<u32> = b
            .runs
            .iter()
            .filter(|r| r.completed())
            .filter_map(|r| r.mss)
            .collect();
        // Lost full-size segments show as a stalled body, as missing response headers when the
        // headers share the first full segment with the body, or as a TLS handshake that never
        // completes when the server's certificate flight is what gets lost.
        let lost_big_packets = matches!(
            default.outcome.as_str(),
            "stall" | "header_timeout" | "reset" | "tls_handshake_timeout"
        );
        match working.iter().max() {
            Some(&best) if lost_big_packets => {
                let seen = if small_ok {
                    "small requests and TLS handshakes succeed, but"
                } else {
                    "requests at the default MSS fail too, and"
                };
                // Prefer the MSS derived from a measured path MTU when it is the tighter one.
                let from_pmtu = e
                    .path_mtu
                    .get(&b.host)
                    .map(|mtu| mtu.saturating_sub(IPV4_TCP_HEADERS));
                let mss = match from_pmtu {
                    Some(m) if m >= 536 && m < best => m,
                    _ => best,
                };
                let pmtu_note = e
                    .path_mtu
                    .get(&b.host)
                    .map(|m| {
                        format!(
                            "; DF probes: {m}-byte packets cross toward it (IP header included)"
                        )
                    })
                    .unwrap_or_default();
                let runs = b
                    .runs
                    .iter()
                    .map(|r| format!("mss {} {}", mss_label(r.mss), r.outcome))
                    .collect::<Vec<_>>()
                    .join(", ");
                out.push(Verdict {
                    kind: "pmtu_black_hole".into(),
                    target: b.host.clone(),
                    evidence: format!(
                        "{seen} the bulk transfer of {} fails at the default MSS and completes \
                         with a clamp ({runs}){pmtu_note}",
                        b.image
                    ),
                    fix: clamp_fix(mss),
                    recommended_mss: Some(mss),
                });
            }
            // Some MSS worked but the default failed another way: other verdicts say why.
            Some(_) => {}
            None => out.push(verdict(
                if default.outcome == "reset" {
                    "resets"
                } else {
                    "stalls"
                },
                &b.host,
                format!(
                    "the bulk transfer of {} failed at the default MSS ({}) and at every MSS tried",
                    b.image, default.outcome
                ),
                "not an MTU problem: the path or the blob host drops long transfers; compare \
                 with another host (berth probe compare) and check the gateway's conntrack and \
                 shaping"
                    .into(),
            )),
        }
    }
}

/// The fix for a black hole, in every form an operator can apply.
fn clamp_fix(mss: u32) -> String {
    format!(
        "clamp MSS to {mss} on the gateway for the VM subnet (iptables -t mangle -A FORWARD -p \
         tcp --tcp-flags SYN,RST SYN -j TCPMSS --set-mss {mss}, or --clamp-mss-to-pmtu), or set \
         tcp_mss = {mss} in berth.toml (berth serve also clamps by itself: mss_fallback), or \
         sysctl net.ipv4.tcp_mtu_probing=1 on this host"
    )
}

/// Handshakes that time out at full size and complete clamped: the certificate flight is what
/// the hole eats. The MSS is the largest that completed (bisected), so the path MTU it implies
/// and the clamp recommended are one figure.
fn handshake_black_holes(e: &Evidence, out: &mut Vec<Verdict>) {
    for t in &e.targets {
        let Some(h) = t.handshakes.as_ref().filter(|h| h.is_black_hole()) else {
            continue;
        };
        if out
            .iter()
            .any(|v| v.kind == "pmtu_black_hole" && v.target == t.host)
        {
            continue;
        }
        let Some(mss) = h.largest_mss else {
            continue;
        };
        let mtu = h
            .path_mtu
            .map(|m| {
                format!(
                    "; the largest packet that crossed toward us is {m} bytes on the wire \
                     (MSS {mss} + headers)"
                )
            })
            .unwrap_or_default();
        out.push(Verdict {
            kind: "pmtu_black_hole".into(),
            target: t.host.clone(),
            evidence: format!(
                "TCP connects but TLS handshakes with {}{} time out at the default MSS and \
                 complete with a clamp ({}): the server's certificate flight is lost in \
                 full-size segments{mtu}",
                t.host,
                if h.address == t.host {
                    String::new()
                } else {
                    format!(" at {}", h.address)
                },
                h.summary()
            ),
            fix: clamp_fix(mss),
            recommended_mss: Some(mss),
        });
    }
}

/// Handshake timeouts on one host may be that host; on several unrelated ones it is the path.
/// Hosts whose handshakes were shown to be a black hole have their own verdict.
fn tls_timeouts(e: &Evidence, out: &mut Vec<Verdict>) {
    let hit: Vec<(&str, u32, u32)> = e
        .targets
        .iter()
        .filter(|t| !t.handshakes.as_ref().is_some_and(|h| h.is_black_hole()))
        .map(|t| {
            (
                t.host.as_str(),
                count(t, "tls_handshake_timeout"),
                t.attempts,
            )
        })
        .filter(|(_, n, _)| *n > 0)
        .collect();
    // A registry and its token endpoint on the same host are one host, not two.
    let mut hosts: Vec<&str> = hit.iter().map(|(h, _, _)| *h).collect();
    hosts.sort_unstable();
    hosts.dedup();
    let detail = hit
        .iter()
        .map(|(h, n, a)| format!("{h} {n}/{a}"))
        .collect::<Vec<_>>()
        .join(", ");
    match hosts.len() {
        0 => {}
        1 => {
            let compared = e
                .targets
                .iter()
                .filter(|t| t.host == hosts[0])
                .find_map(|t| t.handshakes.as_ref());
            let fix = match compared {
                Some(h) => format!(
                    "handshakes fail at every MSS too ({}): not the MTU; the server or a \
                     middlebox holds them: compare from another host (berth probe compare)",
                    h.summary()
                ),
                None => "the server's certificate flight is not arriving: if bulk transfers \
                         also stall this is the MTU (clamp MSS); else compare from another host \
                         to tell the registry from the path"
                    .into(),
            };
            out.push(verdict(
                "tls_handshake_timeouts",
                hosts[0],
                format!("TLS handshakes timed out after the TCP connect succeeded: {detail}"),
                fix,
            ))
        }
        _ => out.push(verdict(
            "tls_handshake_timeouts",
            "*",
            format!(
                "TLS handshakes timed out on {} unrelated hosts ({detail}): a path problem, not \
                 a registry one",
                hosts.len()
            ),
            "large server flights are lost on the path: clamp MSS on the gateway (see \
             pmtu_black_hole) and check middleboxes doing TLS inspection"
                .into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(host: &str, attempts: u32, failures: &[(&str, u32)]) -> TargetEvidence {
        let failed: u32 = failures.iter().map(|(_, n)| n).sum();
        TargetEvidence {
            host: host.into(),
            attempts,
            ok: attempts - failed,
            failures: failures.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
            dns_p90_ms: Some(5.0),
            v4_attempts: attempts,
            v4_ok: attempts - failed,
            ..TargetEvidence::default()
        }
    }

    fn run(mss: Option<u32>, outcome: &str) -> BulkRun {
        BulkRun {
            mss,
            outcome: outcome.into(),
            bytes: if outcome == "complete" { 8 << 20 } else { 0 },
            seconds: 1.0,
            mib_per_s: 1.0,
            error: None,
        }
    }

    fn bulk(host: &str, runs: &[(Option<u32>, &str)]) -> BulkEvidence {
        BulkEvidence {
            image: "lab/big:1".into(),
            host: host.into(),
            runs: runs.iter().map(|(m, o)| run(*m, o)).collect(),
        }
    }

    /// (kind, target, recommended MSS)
    type Expected<'a> = (&'a str, &'a str, Option<u32>);

    /// (name, evidence, expected verdicts in order)
    #[test]
    fn rules_table() {
        let healthy_targets = vec![target("r.io", 3, &[]), target("cdn.io", 3, &[])];
        let cases: Vec<(&str, Evidence, Vec<Expected>)> = vec![
            (
                "all good",
                Evidence {
                    targets: healthy_targets.clone(),
                    bulk: vec![bulk(
                        "cdn.io",
                        &[
                            (None, "complete"),
                            (Some(1360), "complete"),
                            (Some(1200), "complete"),
                        ],
                    )],
                    ..Evidence::default()
                },
                vec![("healthy", "*", None)],
            ),
            (
                "black hole: default stalls, clamps complete",
                Evidence {
                    targets: healthy_targets.clone(),
                    bulk: vec![bulk(
                        "cdn.io",
                        &[
                            (None, "stall"),
                            (Some(1360), "complete"),
                            (Some(1200), "complete"),
                        ],
                    )],
                    ..Evidence::default()
                },
                vec![("pmtu_black_hole", "cdn.io", Some(1360))],
            ),
            (
                "black hole where the headers are lost with the first full segment",
                Evidence {
                    targets: healthy_targets.clone(),
                    bulk: vec![bulk(
                        "cdn.io",
                        &[(None, "header_timeout"), (Some(1360), "complete")],
                    )],
                    ..Evidence::default()
                },
                vec![("pmtu_black_hole", "cdn.io", Some(1360))],
            ),
            (
                "a clamped transfer failing alone is never healthy",
                Evidence {
                    targets: healthy_targets.clone(),
                    bulk: vec![bulk(
                        "cdn.io",
                        &[(None, "complete"), (Some(1360), "http_503")],
                    )],
                    ..Evidence::default()
                },
                vec![("bulk_failures", "*", None)],
            ),
            (
                "black hole with a measured path MTU tighter than the tried MSS",
                Evidence {
                    targets: healthy_targets.clone(),
                    bulk: vec![bulk("cdn.io", &[(None, "stall"), (Some(1360), "complete")])],
                    path_mtu: [("cdn.io".to_string(), 1300)].into(),
                },
                vec![("pmtu_black_hole", "cdn.io", Some(1260))],
            ),
            (
                "only the smallest MSS gets through",
                Evidence {
                    targets: healthy_targets.clone(),
                    bulk: vec![bulk(
                        "cdn.io",
                        &[
                            (None, "stall"),
                            (Some(1360), "stall"),
                            (Some(1200), "complete"),
                        ],
                    )],
                    ..Evidence::default()
                },
                vec![("pmtu_black_hole", "cdn.io", Some(1200))],
            ),
            (
                "certificate flights lost: handshakes time out everywhere, clamped bulk completes",
                Evidence {
                    targets: vec![target("cdn.io", 3, &[("tls_handshake_timeout", 3)])],
                    bulk: vec![bulk(
                        "cdn.io",
                        &[(None, "tls_handshake_timeout"), (Some(1360), "complete")],
                    )],
                    ..Evidence::default()
                },
                vec![
                    ("pmtu_black_hole", "cdn.io", Some(1360)),
                    ("tls_handshake_timeouts", "cdn.io", None),
                ],
            ),
            (
                "stalls at every MSS is not an MTU problem",
                Evidence {
                    targets: healthy_targets.clone(),
                    bulk: vec![bulk("cdn.io", &[(None, "stall"), (Some(1360), "stall")])],
                    ..Evidence::default()
                },
                vec![("stalls", "cdn.io", None)],
            ),
            (
                "small requests to the blob host fail too: no black-hole verdict",
                Evidence {
                    targets: vec![target("cdn.io", 2, &[("connect_timeout", 2)])],
                    bulk: vec![bulk(
                        "cdn.io",
                        &[(None, "connect_timeout"), (Some(1360), "complete")],
                    )],
                    ..Evidence::default()
                },
                vec![("connect_failing", "cdn.io", None)],
            ),
            (
                "handshake timeouts on one host",
                Evidence {
                    targets: vec![
                        target("r.io", 4, &[("tls_handshake_timeout", 3)]),
                        target("q.io", 4, &[]),
                    ],
                    ..Evidence::default()
                },
                vec![("tls_handshake_timeouts", "r.io", None)],
            ),
            (
                "handshake timeouts on one host's registry and token endpoints: still one host",
                Evidence {
                    targets: vec![
                        target("r.io", 4, &[("tls_handshake_timeout", 1)]),
                        target("q.io", 4, &[]),
                        target("r.io", 4, &[("tls_handshake_timeout", 1)]),
                    ],
                    ..Evidence::default()
                },
                vec![("tls_handshake_timeouts", "r.io", None)],
            ),
            (
                "handshake timeouts on several registries: the path",
                Evidence {
                    targets: vec![
                        target("r.io", 4, &[("tls_handshake_timeout", 1)]),
                        target("q.io", 4, &[("tls_handshake_timeout", 2)]),
                    ],
                    ..Evidence::default()
                },
                vec![("tls_handshake_timeouts", "*", None)],
            ),
            (
                "dns failures and slow dns",
                Evidence {
                    targets: vec![target("nx.invalid", 2, &[("dns", 2)]), {
                        let mut t = target("slow.io", 2, &[]);
                        t.dns_p90_ms = Some(2500.0);
                        t
                    }],
                    ..Evidence::default()
                },
                vec![
                    ("dns_slow_or_failing", "nx.invalid", None),
                    ("dns_slow_or_failing", "slow.io", None),
                ],
            ),
            (
                "ipv6 broken, ipv4 fine",
                Evidence {
                    targets: vec![TargetEvidence {
                        host: "r.io".into(),
                        attempts: 4,
                        ok: 2,
                        failures: [("connect_timeout".to_string(), 2)].into(),
                        v4_attempts: 2,
                        v4_ok: 2,
                        v6_attempts: 2,
                        v6_ok: 0,
                        ..TargetEvidence::default()
                    }],
                    ..Evidence::default()
                },
                vec![
                    ("ipv6_broken", "r.io", None),
                    ("connect_failing", "r.io", None),
                ],
            ),
            (
                "resets and rate limits",
                Evidence {
                    targets: vec![target("r.io", 5, &[("reset", 2), ("http_429", 1)])],
                    ..Evidence::default()
                },
                vec![("resets", "r.io", None), ("http_errors", "r.io", None)],
            ),
        ];
        for (name, evidence, want) in cases {
            let got: Vec<(String, String, Option<u32>)> = verdicts(&evidence)
                .into_iter()
                .map(|v| (v.kind, v.target, v.recommended_mss))
                .collect();
            let want: Vec<(String, String, Option<u32>)> = want
                .into_iter()
                .map(|(k, t, m)| (k.to_string(), t.to_string(), m))
                .collect();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn handshakes_that_work_only_clamped_are_a_black_hole() {
        use crate::probe::handshakes::HandshakeRun;
        let run = |mss, ok| HandshakeRun {
            mss,
            attempts: 2,
            ok,
            failure: (ok < 2).then(|| "tls_handshake_timeout".to_string()),
        };
        let with = |runs: Vec<HandshakeRun>, largest| TargetEvidence {
            handshakes: Some(HandshakeComparison {
                address: "10.0.0.2".into(),
                runs,
                largest_mss: largest,
                path_mtu: largest.map(|m| m + 40),
            }),
            ..target("r.io", 4, &[("tls_handshake_timeout", 4)])
        };
        let hole = with(vec![run(None, 0), run(Some(1360), 2)], Some(1360));
        let v = verdicts(&Evidence {
            targets: vec![hole],
            ..Evidence::default()
        });
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].kind, "pmtu_black_hole");
        assert_eq!(v[0].recommended_mss, Some(1360));
        assert!(
            v[0].evidence.contains("1400 bytes on the wire"),
            "{}",
            v[0].evidence
        );
        assert!(v[0].fix.contains("tcp_mtu_probing"), "{}", v[0].fix);
        // Failing at every MSS is the server or the path, not the MTU.
        let refusing = with(vec![run(None, 0), run(Some(1360), 0)], None);
        let v = verdicts(&Evidence {
            targets: vec![refusing],
            ..Evidence::default()
        });
        assert_eq!(v[0].kind, "tls_handshake_timeouts", "{v:?}");
    }

    #[test]
    fn black_hole_fix_names_the_mss_in_every_form() {
        let e = Evidence {
            targets: vec![target("cdn.io", 1, &[])],
            bulk: vec![bulk("cdn.io", &[(None, "stall"), (Some(1360), "complete")])],
            ..Evidence::default()
        };
        let v = &verdicts(&e)[0];
        assert!(v.fix.contains("--set-mss 1360"), "{}", v.fix);
        assert!(v.fix.contains("tcp_mss = 1360"), "{}", v.fix);
        assert!(v.evidence.contains("mss default stall"), "{}", v.evidence);
    }
}

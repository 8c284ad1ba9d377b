//! `berth probe compare`: two or more reports side by side (host vs VM vs worker), then the
//! differences that matter, each in one sentence.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use super::report::{REPORT_VERSION, Report, mss_label};

/// A report and the name its column gets.
pub struct Labelled {
    pub label: String,
    pub report: Report,
}

/// A report is a few hundred KiB at most; anything far bigger is not one.
const MAX_REPORT_BYTES: u64 = 64 * 1024 * 1024;

pub fn load(path: &Path) -> Result<Labelled, String> {
    let size = std::fs::metadata(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .len();
    if size > MAX_REPORT_BYTES {
        return Err(format!(
            "{} is {size} bytes, too big for a probe report",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let report: Report = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{} is not a `berth probe --json` report: {e}",
            path.display()
        )
    })?;
    if report.version != REPORT_VERSION {
        return Err(format!(
            "{} is report version {}, this berth reads version {REPORT_VERSION}",
            path.display(),
            report.version
        ));
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Labelled {
        label: format!("{} ({stem})", report.host),
        report,
    })
}

const CELL: usize = 28;

fn cell(s: impl Into<String>) -> String {
    let s: String = s.into();
    let s: String = s.chars().take(CELL - 2).collect();
    format!("{s:<CELL$}")
}

pub fn compare(reports: &[Labelled]) -> String {
    let mut out = String::new();
    let _ = write!(out, "{:<48}", "");
    for r in reports {
        let _ = write!(
            out,
            "{}",
            cell(r.label.chars().take(23).collect::<String>())
        );
    }
    out.push('\n');
    let row = |out: &mut String, name: &str, cells: Vec<String>| {
        let _ = write!(out, "{:<48}", name.chars().take(47).collect::<String>());
        for c in cells {
            let _ = write!(out, "{}", cell(c));
        }
        out.push('\n');
    };
    row(
        &mut out,
        "verdicts",
        reports
            .iter()
            .map(|r| {
                r.report
                    .verdicts
                    .iter()
                    .map(|v| v.kind.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect(),
    );

    // Requests: ok/attempts and median total per target URL.
    let urls: BTreeSet<&str> = reports
        .iter()
        .flat_map(|r| r.report.targets.iter().map(|t| t.url.as_str()))
        .collect();
    for url in &urls {
        let cells = reports
            .iter()
            .map(|r| match r.report.targets.iter().find(|t| t.url == *url) {
                None => "-".into(),
                Some(t) => {
                    let p50 = t
                        .families
                        .values()
                        .filter_map(|f| f.total.p50_ms)
                        .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.min(x))));
                    format!(
                        "{}/{} ok {}",
                        t.ok,
                        t.attempts,
                        p50.map_or("".into(), |p| format!("{p:.0}ms"))
                    )
                }
            })
            .collect();
        row(&mut out, url, cells);
    }

    // Bulk: outcome and speed per image and MSS.
    let mut keys: BTreeMap<(String, String), ()> = BTreeMap::new();
    for r in reports {
        for b in &r.report.bulk {
            for run in &b.runs {
                keys.insert((b.image.clone(), mss_label(run.mss)), ());
            }
        }
    }
    let bulk_cell = |r: &Labelled, image: &str, mss: &str| {
        r.report
            .bulk
            .iter()
            .filter(|b| b.image == image)
            .flat_map(|b| &b.runs)
            .find(|run| mss_label(run.mss) == mss)
            .cloned()
    };
    for (image, mss) in keys.keys() {
        let cells = reports
            .iter()
            .map(|r| match bulk_cell(r, image, mss) {
                None => "-".into(),
                Some(run) if run.completed() => format!("complete {:.2} MiB/s", run.mib_per_s),
                Some(run) => format!("{} after {} B", run.outcome, run.bytes),
            })
            .collect();
        row(&mut out, &format!("bulk {image} mss {mss}"), cells);
    }

    // Path MTU per destination host.
    let hosts: BTreeSet<String> = reports
        .iter()
        .flat_map(|r| {
            r.report
                .path
                .destinations
                .iter()
                .flat_map(|d| d.hosts.clone())
        })
        .collect();
    let pmtu = |r: &Labelled, host: &str| {
        r.report
            .path
            .destinations
            .iter()
            .filter(|d| d.hosts.iter().any(|h| h == host))
            .filter_map(|d| d.path_mtu)
            .min()
    };
    for host in &hosts {
        let cells = reports
            .iter()
            .map(|r| pmtu(r, host).map_or("not measured".into(), |m| m.to_string()))
            .collect();
        row(&mut out, &format!("path mtu to {host}"), cells);
    }

    out.push_str("\ndifferences that matter\n");
    let mut found = 0;
    for (image, mss) in keys.keys() {
        let runs: Vec<(&str, Option<_>)> = reports
            .iter()
            .map(|r| (r.label.as_str(), bulk_cell(r, image, mss)))
            .collect();
        let done: Vec<&str> = runs
            .iter()
            .filter(|(_, r)| r.as_ref().is_some_and(|r| r.completed()))
            .map(|(l, _)| *l)
            .collect();
        let failed: Vec<String> = runs
            .iter()
            .filter_map(|(l, r)| {
                r.as_ref()
                    .filter(|r| !r.completed())
                    .map(|r| format!("{l}: {}", r.outcome))
            })
            .collect();
        if !done.is_empty() && !failed.is_empty() {
            found += 1;
            let _ = writeln!(
                out,
                "  - bulk transfer of {image} at MSS {mss} completes on {} but not on {}: \
                 that path loses large packets{}",
                done.join(", "),
                failed.join(", "),
                if mss == "default" {
                    " (an MTU/MSS black hole when a clamped MSS completes there)"
                } else {
                    ""
                }
            );
        }
        let speeds: Vec<(&str, f64, f64)> = runs
            .iter()
            .filter_map(|(l, r)| {
                r.as_ref()
                    .filter(|r| r.completed())
                    .map(|r| (*l, r.mib_per_s, r.seconds))
            })
            .collect();
        if let (Some(fast), Some(slow)) = (
            speeds.iter().max_by(|a, b| a.1.total_cmp(&b.1)),
            speeds.iter().min_by(|a, b| a.1.total_cmp(&b.1)),
        ) {
            // Sub-second transfers are too short for their speed to mean anything.
            if slow.1 > 0.0 && slow.2 >= 1.0 && fast.1 / slow.1 >= 3.0 {
                found += 1;
                let _ = writeln!(
                    out,
                    "  - bulk transfer of {image} at MSS {mss}: {:.2} MiB/s on {} vs {:.2} on {}",
                    fast.1, fast.0, slow.1, slow.0
                );
            }
        }
    }
    for url in &urls {
        let rates: Vec<(&str, u32, u32)> = reports
            .iter()
            .filter_map(|r| {
                let t = r.report.targets.iter().find(|t| t.url == *url)?;
                Some((r.label.as_str(), t.ok, t.attempts))
            })
            .collect();
        let clean: Vec<&str> = rates
            .iter()
            .filter(|(_, ok, n)| ok == n && *n > 0)
            .map(|(l, _, _)| *l)
            .collect();
        let failing: Vec<String> = rates
            .iter()
            .filter(|(_, ok, n)| ok < n)
            .map(|(l, ok, n)| format!("{l} {}/{n} failed", n - ok))
            .collect();
        if !clean.is_empty() && !failing.is_empty() {
            found += 1;
            let _ = writeln!(
                out,
                "  - requests to {url} all succeed on {} but not on {}",
                clean.join(", "),
                failing.join(", ")
            );
        }
    }
    for host in &hosts {
        let values: BTreeSet<u32> = reports.iter().filter_map(|r| pmtu(r, host)).collect();
        if values.len() > 1 {
            found += 1;
            let _ = writeln!(
                out,
                "  - path MTU to {host} differs: {}",
                reports
                    .iter()
                    .map(|r| format!(
                        "{} {}",
                        r.label,
                        pmtu(r, host).map_or("?".into(), |m| m.to_string())
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    if found == 0 {
        out.push_str("  none: the paths behave alike\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::path::{Destination, PathFacts};
    use crate::probe::report::{BulkReport, BulkRun, Settings};

    fn report(host: &str, default_outcome: &str, path_mtu: u32) -> Labelled {
        let run = |mss: Option<u32>, outcome: &str| BulkRun {
            mss,
            outcome: outcome.into(),
            bytes: if outcome == "complete" { 8 << 20 } else { 0 },
            seconds: 2.0,
            mib_per_s: if outcome == "complete" { 4.0 } else { 0.0 },
            error: None,
        };
        let report = Report {
            version: REPORT_VERSION,
            berth_version: "0".into(),
            host: host.into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            duration_ms: 1,
            settings: Settings {
                rounds: 1,
                interval_ms: 0,
                mss: vec![1360],
                bulk_bytes: 8 << 20,
                connect_timeout_ms: 1,
                tls_timeout_ms: 1,
                header_timeout_ms: 1,
                stall_timeout_ms: 1,
            },
            path: PathFacts {
                destinations: vec![Destination {
                    address: "192.0.2.7".into(),
                    hosts: vec!["cdn.example".into()],
                    device: None,
                    gateway: None,
                    source: None,
                    route_mtu: Some(1500),
                    path_mtu: Some(path_mtu),
                    path_mtu_note: String::new(),
                }],
                ..PathFacts::default()
            },
            targets: vec![],
            bulk: vec![BulkReport {
                image: "ghcr.io/x/y:1".into(),
                upstream: "ghcr.io".into(),
                layer: None,
                layer_size: Some(30 << 20),
                blob_host: Some("cdn.example".into()),
                blob_origin: None,
                runs: vec![run(None, default_outcome), run(Some(1360), "complete")],
                error: None,
            }],
            verdicts: vec![],
            notes: vec![],
        };
        // Through JSON, as `compare` reads reports: the keys must round-trip.
        let json = serde_json::to_string(&report).unwrap();
        Labelled {
            label: host.into(),
            report: serde_json::from_str(&json).unwrap(),
        }
    }

    #[test]
    fn names_the_bulk_and_path_mtu_differences() {
        let out = compare(&[
            report("pve", "complete", 1500),
            report("cp1", "stall", 1400),
        ]);
        let diff = out.split("differences that matter").nth(1).unwrap();
        assert!(
            diff.contains(
                "bulk transfer of ghcr.io/x/y:1 at MSS default completes on pve but not on cp1: stall"
            ),
            "{out}"
        );
        assert!(
            !diff.contains("at MSS 1360"),
            "equal runs are no difference: {out}"
        );
        assert!(
            diff.contains("path MTU to cdn.example differs: pve 1500, cp1 1400"),
            "{out}"
        );

        let same = compare(&[report("a", "complete", 1500), report("b", "complete", 1500)]);
        assert!(same.contains("none: the paths behave alike"), "{same}");
    }
}

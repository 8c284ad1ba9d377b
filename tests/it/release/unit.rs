//! `deploy/berth.service` as systemd reads it: no directive it ignores, and an exposure
//! `systemd-analyze security` rates "OK" (≤ 3.0), with the directories the README relies on.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::prereq::require_tool;
use crate::support::util::run;

/// The shipped unit, with `ExecStart` pointing at the test build (offline `verify` checks that
/// the executable exists), in a temp dir of its own.
fn unit_in_temp_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/berth.service"))
            .unwrap();
    let text = shipped.replace("/usr/local/bin/berth", env!("CARGO_BIN_EXE_berth"));
    assert_ne!(
        text, shipped,
        "the unit no longer runs /usr/local/bin/berth"
    );
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("berth.service");
    std::fs::write(&unit, text).unwrap();
    (dir, unit)
}

/// "→ Overall exposure level for berth.service: 1.4 OK 🙂" → 1.4.
fn overall_exposure(report: &str) -> Option<f64> {
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))?;
    line.rsplit(": ")
        .next()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
fn the_exposure_is_read_from_systemd_analyzes_last_line() {
    let report = "✗ UMask= Files created by service are group-readable by default 0.1\n\
                  → Overall exposure level for berth.service: 1.4 OK 🙂\n";
    assert_eq!(overall_exposure(report), Some(1.4));
    assert_eq!(overall_exposure("no summary"), None);
}

#[test]
#[ignore = "needs systemd-analyze (Debian's systemd): run by scripts/test"]
fn systemd_analyze_rates_the_unit_ok_and_verify_finds_nothing_to_ignore() {
    if !require_tool("systemd-analyze") {
        return;
    }
    let (_dir, unit) = unit_in_temp_dir();
    // --threshold=30: systemd-analyze itself fails the unit above 3.0.
    let security = run(
        Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--threshold=30", "--no-pager"])
            .arg(&unit),
        Duration::from_secs(60),
    );
    security.expect_success();
    let exposure = overall_exposure(&security.stdout)
        .unwrap_or_else(|| panic!("no overall exposure in:\n{}", security.stdout));
    eprintln!("systemd-analyze security: exposure {exposure}");
    assert!(
        exposure <= 3.0,
        "exposure {exposure} > 3.0:\n{}",
        security.stdout
    );

    crate::support::prereq::assert_unit_verifies(&unit);
}

#[test]
fn the_unit_creates_the_directories_the_readme_uses_and_holds_no_capability() {
    let unit =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/berth.service"))
            .unwrap();
    let directives: Vec<&str> = unit.lines().filter(|l| !l.starts_with('#')).collect();
    // /var/lib/berth is data_dir; /var/log/berth/access.jsonl the access_log example.
    for line in [
        "StateDirectory=berth",
        "LogsDirectory=berth",
        // data_dir = "./data" (the example) resolves under the state directory.
        "WorkingDirectory=/var/lib/berth",
        "CapabilityBoundingSet=",
        "NoNewPrivileges=true",
        "SystemCallFilter=@system-service",
    ] {
        assert!(directives.contains(&line), "unit lacks `{line}`");
    }
    let config =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/berth.toml"))
            .unwrap();
    assert!(config.contains("access_log = \"/var/log/berth/"));
    // The default port needs no CAP_NET_BIND_SERVICE.
    assert!(config.contains("listen = \"0.0.0.0:5000\""));
}

//! External tools the real-component tests need. Those tests are `#[ignore]`d with the reason
//! (a plain `cargo test` lists them as ignored); run with `--include-ignored`, a missing tool fails.

use std::path::PathBuf;

/// Where `tool` lives on `PATH` (plus the sbin dirs, where Debian puts `runc`).
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

fn missing(what: &str) -> bool {
    // Tests that need a tool are `#[ignore]`d with the reason, so reaching this means the test
    // was asked for (`--include-ignored`, as scripts/test does): a missing tool is a failure,
    // never a silent pass.
    panic!("missing prerequisite: {what} (install with `scripts/test`, which apt-installs it)");
}

/// `true` if every tool is installed; panics naming the missing one otherwise. Use: `if !require_tools(&["skopeo"]) { return; }`.
pub fn require_tools(tools: &[&str]) -> bool {
    match tools.iter().find(|t| which(t).is_none()) {
        Some(t) => missing(&format!("tool `{t}`")),
        None => true,
    }
}

pub fn require_tool(tool: &str) -> bool {
    require_tools(&[tool])
}

/// Root, for `why` (containerd mounts snapshots, network namespaces, a tmpfs ...); same rule.
pub fn require_root(why: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the effective uid; avoids unsafe libc calls.
    let euid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX);
    euid == 0 || missing(&format!("root ({why})"))
}

/// `systemd-analyze verify` finds nothing to say about `unit` (no ignored directive, an
/// executable ExecStart); scripts/test installs systemd, so a missing tool fails.
pub fn assert_unit_verifies(unit: &std::path::Path) {
    require_tool("systemd-analyze");
    let verify = crate::support::util::run(
        std::process::Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(unit),
        std::time::Duration::from_secs(60),
    );
    verify.expect_success();
    assert_eq!(
        verify.stderr.trim(),
        "",
        "systemd-analyze verify complained"
    );
}

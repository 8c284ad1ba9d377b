//! External tools the real-component tests need. Missing tool: under `CI=true` the test fails
//! (CI must have run `scripts/test`, which installs them); elsewhere it prints a skip line.

use std::path::PathBuf;

/// Where `tool` lives on `PATH` (plus the sbin dirs, where Debian puts `runc`).
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn missing(what: &str) -> bool {
    let msg = format!(
        "missing prerequisite: {what} (install with `scripts/test`, which apt-installs it)"
    );
    if in_ci() {
        panic!("{msg}; CI=true, so this is a failure, not a skip");
    }
    eprintln!(
        "SKIP {}: {msg}",
        std::thread::current().name().unwrap_or("test")
    );
    false
}

/// `true` if every tool is installed; `false` (after printing a skip line) if one is missing
/// outside CI. Panics in CI. Use: `if !require_tools(&["skopeo"]) { return; }`.
pub fn require_tools(tools: &[&str]) -> bool {
    match tools.iter().find(|t| which(t).is_none()) {
        Some(t) => missing(&format!("tool `{t}`")),
        None => true,
    }
}

pub fn require_tool(tool: &str) -> bool {
    require_tools(&[tool])
}

/// containerd needs root (mounts, chown); same skip-or-fail rule.
pub fn require_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the effective uid; avoids unsafe libc calls.
    let euid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX);
    euid == 0 || missing("root (containerd mounts snapshots)")
}

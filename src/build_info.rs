//! What this binary is: the crate version and the git commit `build.rs` found.

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// `git rev-parse --short HEAD` at build time, "unknown" outside a git checkout.
pub const COMMIT: &str = env!("BERTH_COMMIT");
/// `berth --version`: "0.1.0 (commit 630df04)".
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BERTH_COMMIT"),
    ")"
);

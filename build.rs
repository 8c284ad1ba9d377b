//! Names the git commit the binary is built from (`BERTH_COMMIT`, for `berth --version` and
//! `berth_build_info`): `git rev-parse --short HEAD`, or "unknown" outside a git checkout
//! (a crate tarball, a build without git).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=BERTH_COMMIT={commit}");
    // Rebuild when HEAD moves: HEAD itself (checkout) and the branch it names (commit). In a
    // worktree both live outside `.git/`, so ask git where they are.
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    for name in ["HEAD", branch.as_deref().unwrap_or("HEAD"), "packed-refs"] {
        // A path that does not exist would rerun this script on every build.
        match git(&["rev-parse", "--git-path", name]) {
            Some(path) if std::path::Path::new(&path).exists() => {
                println!("cargo:rerun-if-changed={path}")
            }
            _ => {}
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}

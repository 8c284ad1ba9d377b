//! `berth --version` names the commit, `berth completions` and `berth man` come from the CLI
//! definitions (every subcommand in each), and `/metrics` says which build runs.

use std::process::Command;
use std::time::Duration;

use crate::support::inprocess::Berth;
use crate::support::prereq::require_tool;
use crate::support::util::{CmdOutput, run};

/// Every subcommand, as `berth --help` lists them.
const SUBCOMMANDS: [&str; 10] = [
    "serve",
    "k3s-registries",
    "containerd-hosts",
    "cache",
    "prewarm",
    "probe",
    "status",
    "completions",
    "man",
    "help",
];

fn berth(args: &[&str]) -> CmdOutput {
    run(
        Command::new(env!("CARGO_BIN_EXE_berth")).args(args),
        Duration::from_secs(30),
    )
}

/// What `git rev-parse --short HEAD` says in the source tree, if it is a git checkout.
fn source_commit() -> Option<String> {
    let out = run(
        Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .current_dir(env!("CARGO_MANIFEST_DIR")),
        Duration::from_secs(30),
    );
    out.success.then(|| out.stdout.trim().to_string())
}

#[test]
fn version_names_the_crate_version_and_the_commit_built() {
    let out = berth(&["--version"]);
    out.expect_success();
    let line = out.stdout.trim();
    let commit = source_commit().unwrap_or_else(|| "unknown".into());
    assert_eq!(
        line,
        format!("berth {} (commit {commit})", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn completions_for_each_shell_name_every_subcommand() {
    for shell in ["bash", "zsh", "fish"] {
        let out = berth(&["completions", shell]);
        out.expect_success();
        assert!(
            out.stdout.len() > 1000,
            "{shell}: {} bytes",
            out.stdout.len()
        );
        for sub in SUBCOMMANDS {
            assert!(out.stdout.contains(sub), "{shell} completion lacks `{sub}`");
        }
        // Flags of a subcommand, not only the names.
        assert!(
            out.stdout.contains("mirror-url"),
            "{shell}: no k3s-registries flags"
        );
    }
}

#[test]
fn an_unknown_shell_is_refused_naming_the_shells_there_are() {
    let out = berth(&["completions", "tcsh"]);
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr.contains("invalid value 'tcsh'"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("bash, elvish, fish, powershell, zsh"),
        "{}",
        out.stderr
    );
}

#[test]
fn bash_accepts_the_completion_script_and_completes_subcommands() {
    let out = berth(&["completions", "bash"]);
    out.expect_success();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("berth.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    // What bash does on `berth s<TAB>`: the completion function fills COMPREPLY.
    let probe = format!(
        "source {}; COMP_WORDS=(berth s); COMP_CWORD=1; COMP_LINE='berth s'; COMP_POINT=7; \
         _berth berth s berth; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display()
    );
    let completed = run(
        Command::new("bash").args(["--norc", "-c", &probe]),
        Duration::from_secs(30),
    );
    completed.expect_success();
    let words: Vec<&str> = completed.stdout.lines().collect();
    assert!(
        words.contains(&"serve") && words.contains(&"status"),
        "berth s<TAB> offered {words:?}"
    );
    assert!(!words.contains(&"cache"), "berth s<TAB> offered {words:?}");
}

#[test]
fn the_man_page_is_roff_for_berth_1_with_every_subcommand() {
    let out = berth(&["man"]);
    out.expect_success();
    assert!(
        out.stdout.starts_with(".ie \\n(.g .ds Aq"),
        "{}",
        &out.stdout[..80]
    );
    assert!(out.stdout.contains(".TH berth 1"), "no .TH berth 1");
    for sub in SUBCOMMANDS {
        // roff escapes every `-`: "berth\-k3s\-registries(1)".
        let entry = format!("berth-{sub}(1)").replace('-', "\\-");
        assert!(
            out.stdout.contains(&entry),
            "the man page lacks the subcommand {sub}"
        );
    }
}

#[test]
#[ignore = "needs man (Debian's man-db): run by scripts/test"]
fn man_renders_the_page() {
    if !require_tool("man") {
        return;
    }
    let page = berth(&["man"]);
    page.expect_success();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("berth.1");
    std::fs::write(&file, &page.stdout).unwrap();
    let rendered = run(
        Command::new("man")
            .arg("-l")
            .arg(&file)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100"),
        Duration::from_secs(60),
    );
    rendered.expect_success();
    assert!(rendered.stdout.contains("NAME"), "{}", rendered.stdout);
    assert!(
        rendered
            .stdout
            .contains("berth - A pull-through OCI registry mirror"),
        "{}",
        rendered.stdout
    );
    assert!(
        rendered.stdout.contains("SUBCOMMANDS"),
        "{}",
        rendered.stdout
    );
    assert!(
        rendered.stderr.trim().is_empty(),
        "man warned: {}",
        rendered.stderr
    );
}

#[tokio::test]
async fn metrics_carry_the_build_info() {
    let berth = Berth::builder().start().await;
    let text = reqwest::get(berth.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let commit = source_commit().unwrap_or_else(|| "unknown".into());
    let line = format!(
        "berth_build_info{{version=\"{}\",commit=\"{commit}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(
        text.lines().any(|l| l == line),
        "/metrics lacks `{line}`:\n{text}"
    );
}

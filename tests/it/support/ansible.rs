//! Running and reading ansible-playbook.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::util::{CmdOutput, run};

/// One playbook run on a loaded 2-core CI machine: tens of seconds; this bounds a hang.
pub const ANSIBLE_TIMEOUT: Duration = Duration::from_secs(300);

/// The repository's `ansible/` directory.
pub fn ansible_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ansible")
}

/// The `localhost : ok=.. changed=..` counters of the PLAY RECAP.
pub fn recap(out: &CmdOutput) -> BTreeMap<String, u32> {
    recap_of(out, "localhost")
}

/// The PLAY RECAP counters of `host`.
pub fn recap_of(out: &CmdOutput, host: &str) -> BTreeMap<String, u32> {
    let after = out
        .stdout
        .split_once("PLAY RECAP")
        .unwrap_or_else(|| panic!("no PLAY RECAP in:\n{}\n{}", out.stdout, out.stderr))
        .1;
    let line = after
        .lines()
        .find(|l| l.split_whitespace().next() == Some(host))
        .unwrap_or_else(|| panic!("no {host} line in PLAY RECAP:\n{after}"));
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
        .collect()
}

/// `ansible-playbook ansible/report.yml -i <inventory> -e <vars>` from `dir`.
pub fn report_playbook(dir: &Path, inventory: &Path, vars: &serde_json::Value) -> CmdOutput {
    let vars_file = dir.join("report-vars.json");
    std::fs::write(&vars_file, vars.to_string()).unwrap();
    run(
        Command::new("ansible-playbook")
            .arg("-i")
            .arg(inventory)
            .arg(ansible_dir().join("report.yml"))
            .arg("-e")
            .arg(format!("@{}", vars_file.display()))
            .current_dir(dir)
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_LOCAL_TEMP", dir.join("ansible-tmp"))
            .env("ANSIBLE_RETRY_FILES_ENABLED", "false")
            .env("ANSIBLE_HOST_KEY_CHECKING", "false"),
        ANSIBLE_TIMEOUT,
    )
}

/// The output of the task `name` of a playbook run: from its header to the next header.
pub fn task_output<'a>(out: &'a CmdOutput, name: &str) -> &'a str {
    let header = format!("{name}]");
    let start = out
        .stdout
        .find(&header)
        .unwrap_or_else(|| panic!("no task `{name}` in:\n{}", out.stdout));
    let rest = &out.stdout[start + header.len()..];
    let end = [
        "\nTASK [",
        "\nRUNNING HANDLER [",
        "\nPLAY [",
        "\nPLAY RECAP",
    ]
    .iter()
    .filter_map(|h| rest.find(h))
    .min()
    .unwrap_or(rest.len());
    &rest[..end]
}

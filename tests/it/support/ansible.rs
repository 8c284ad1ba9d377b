//! Reading ansible-playbook's output.

use std::collections::BTreeMap;

use super::util::CmdOutput;

/// The `localhost : ok=.. changed=..` counters of the PLAY RECAP.
pub fn recap(out: &CmdOutput) -> BTreeMap<String, u32> {
    let after = out
        .stdout
        .split_once("PLAY RECAP")
        .unwrap_or_else(|| panic!("no PLAY RECAP in:\n{}\n{}", out.stdout, out.stderr))
        .1;
    let line = after
        .lines()
        .find(|l| l.trim_start().starts_with("localhost"))
        .expect("no localhost line in PLAY RECAP");
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
        .collect()
}

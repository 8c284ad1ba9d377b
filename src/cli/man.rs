//! `berth man`: the berth(1) page as roff, from the CLI definitions (the unit file's
//! `Documentation=man:berth(1)`).

use std::io::Write;

use anyhow::Context;

/// berth(1): synopsis, options and every subcommand; `berth man | man -l -` reads it.
pub fn print(command: clap::Command) -> anyhow::Result<()> {
    let mut page = Vec::new();
    clap_mangen::Man::new(command)
        .render(&mut page)
        .context("rendering the man page")?;
    std::io::stdout()
        .write_all(&page)
        .context("writing the man page to standard output")
}

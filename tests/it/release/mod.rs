//! A release you can install: `berth --version` with its commit, shell completions and the man
//! page from the CLI definitions, the hardened systemd unit as `systemd-analyze` rates it, and
//! the container image `scripts/image` writes, run by podman.

mod cli;
mod image;
mod unit;

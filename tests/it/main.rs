//! berth's integration tests: one test binary, one module per area, sharing `support`.
//!
//! Tests that need root or external tools (containerd, skopeo, docker-registry, network
//! namespaces, ansible, an S3 server) are `#[ignore]`d with the reason, so a plain `cargo test`
//! reports them as ignored instead of passing silently; `scripts/test` installs the tools and runs
//! everything with `--include-ignored`. A test that runs and misses a prerequisite fails.
//!
//! Run one area: `cargo test --test it pull_through::` (add `-- --include-ignored` for the
//! real-component ones).

mod support;

mod ansible_node;
mod ansible_report;
mod ansible_role;
mod artifacts;
mod cache_cli;
mod cache_integrity;
mod client_access;
mod containerd_hosts;
mod crash_safety;
mod e2e_real;
mod eviction;
mod example_config;
mod fake_upstream_selftest;
mod fallback;
mod faults;
mod fleet;
mod front_door;
mod generate;
mod history;
mod mss_blackhole;
mod observe;
mod oci_model;
mod outlive_upstream;
mod parsers;
mod podman;
mod prewarm;
mod probe;
mod proxy;
mod pull_through;
mod rebuild_drill;
mod registries;
mod release;
mod s3_replicas;
mod store_conformance;
mod tls_black_hole;
mod untrusted_input;
mod upstream_trust;

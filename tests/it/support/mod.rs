//! Shared test infrastructure of the one integration-test binary (`tests/it/main.rs`).
//!
//! - [`images`]: deterministic OCI / Docker images, indexes, big blobs, OCI layout writer.
//! - [`fake_upstream`]: an in-process Docker Hub look-alike (token server, CDN, faults, counters).
//! - [`real`]: real components: test CA, Debian's docker-registry, skopeo, a private containerd.
//! - [`builder`]: the one way to start berth, `Berth::builder()`: in-process (`.start().await`)
//!   or as a child process (`.spawn()`), from one rendered config.
//! - [`inprocess`]: berth served from the test process; the tests' small HTTP helpers.
//! - [`berth`]: the berth binary as a child process, with readiness and /metrics helpers.
//! - [`util`]: `eventually` / `wait_until` (one bounded polling policy), commands with
//!   timeouts, free ports, a tiny blocking HTTP GET, `advance_clock`.
//! - [`prereq`]: fail naming the tool when an external tool is missing.
//! - [`netns`]: the path MTU black-hole lab in network namespaces; servers inside a namespace.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code, unused_imports)]

pub mod ansible;
pub mod berth;
pub mod builder;
pub mod connect_proxy;
pub mod fake_upstream;
pub mod images;
pub mod inprocess;
pub mod log_buffer;
pub mod netns;
pub mod prereq;
pub mod real;
pub mod syn_gate;
pub mod util;

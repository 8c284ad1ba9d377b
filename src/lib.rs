//! berth — a pull-through OCI registry mirror for flaky egress.
//!
//! ```text
//!   containerd / podman / curl
//!            │  OCI pull API  (?ns=<registry>, /v2/<registry>/<repo>/…, or default upstream)
//!            ▼
//!   api        the only module that names axum: routing, handlers, OCI error JSON
//!            │
//!   mirror     the use case: tag freshness, manifest and blob flows, stale serving
//!      │    \
//!      │     coalesce   one upstream fill, spooled to disk, streamed to every waiter
//!      ▼      │
//!   upstream   the only HTTP client of upstreams: token auth, redirects, own TCP/TLS connector
//!   store      content-addressed blobs, manifests and tag records (disk or S3)
//!   oci        pure types, no I/O: Digest, Reference, Repository, OciPath, ErrorCode
//!
//!   config     file → env → flags, validated once into typed config
//!   generate   K3s registries.yaml and containerd hosts.toml writers
//!   cli        one file per subcommand; glue only
//! ```
//!
//! Dependency rule: `cli → api/generate → mirror → upstream/store/coalesce → oci`.
//! `oci` imports nothing of ours.

pub mod api;
pub mod cli;
pub mod coalesce;
pub mod config;
pub mod generate;
pub mod metrics;
pub mod mirror;
pub mod oci;
pub mod serve;
pub mod store;
pub mod upstream;

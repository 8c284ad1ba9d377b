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
//!   store      content-addressed blobs, manifests and tag records (disk or S3);
//!              eviction under max_size (scan → pins → LRU plan → evict), access times, verify
//!   oci        pure types, no I/O: Digest, Reference, Repository, OciPath, ErrorCode
//!
//!   config     file → env → flags, validated once into typed config
//!   generate   K3s registries.yaml and containerd hosts.toml writers
//!   prewarm    a client of a running berth: pulls image groups as containerd would, pins
//!              them (/_berth/pins), checks offline readiness (Cache-Control: only-if-cached)
//!   probe      `berth probe`: timed requests per address (DNS/connect/TLS/TTFB), bulk transfers
//!              at several MSS through `upstream`, path facts and DF path-MTU probes, verdicts
//!              (a pure function) with evidence and fix, text/JSON report, `compare`
//!   serve      wiring: store (+ evictor task on disk) + mirror + api; drains fills on shutdown
//!   cli        one file per subcommand (serve, cache, prewarm, generators); glue only
//! ```
//!
//! Dependency rule: `cli → api/generate/prewarm/probe → mirror → upstream/store/coalesce → oci`.
//! `prewarm` uses `mirror` only for shared types (pin names); it talks to berth over HTTP.
//! `probe` uses `upstream` directly (its connector, token auth, redirects) and `prewarm` only
//! for image references. `oci` imports nothing of ours.

pub mod api;
pub mod cli;
pub mod coalesce;
pub mod config;
pub mod generate;
pub mod metrics;
pub mod mirror;
pub mod oci;
pub mod prewarm;
pub mod probe;
pub mod serve;
pub mod store;
pub mod upstream;

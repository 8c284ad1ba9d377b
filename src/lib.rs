//! berth — a pull-through OCI registry mirror for flaky egress.
//!
//! ```text
//!   containerd / podman / curl                       berth prewarm · berth status · peer replicas
//!            │  OCI pull API (?ns=, /v2/<registry>/…)            │  (client: the one client of
//!            ▼                                                   │   berth's own API)
//!   server     the front door: accept (allow, per-client cap), TLS (ALPN, reload, client CAs),
//!            │ Basic users, header/idle deadlines; serves any tower service, knows no axum
//!   api        the only module that names axum: one /v2/ route parsed into an OciPath, handlers
//!            │ (extract, one call into mirror, a response), OCI error JSON, the pull record,
//!            │ /_berth/status, pins, fills for peers, /metrics
//!   mirror     the use case, one type per flow over a shared core:
//!            │   blobs (store → running fill → new fill; blob_fill: slots, leader replica,
//!            │   download, verify, commit; spool_budget), manifests + tags (freshness, stale
//!            │   serving, verified media types), listings (tag lists, referrers); routing
//!      ┌─────┼──────────┬──────────────┐
//!   upstream  coalesce   store         fleet
//!   the only  one fill,  disk, S3, hot  one fill per blob across replicas on a bucket:
//!   HTTP      spooled,   tier; house-   leases in the store, a leader's fill streamed
//!   client of streamed   keeping (scan, through `client`
//!   upstreams to every   pins, evict,
//!   (auth,    reader;    verify)
//!   retry,    single-
//!   resume,   flight,
//!   connector, slots
//!   proxy,
//!   fallbacks)
//!      └─────┴──────────┴──────────────┘
//!   oci        pure types, no I/O: Digest, Reference, Repository, OciPath, ByteRange, Want,
//!              media types, the manifest model, the OCI error body
//! ```
//!
//! Beside the pull path:
//! - `app`: the wiring of `berth serve` (store + evictor, mirror, api, server; drains fills).
//! - `cli`: one file per subcommand, glue only (`serve`, `k3s-registries`, `containerd-hosts`,
//!   `cache`, `prewarm`, `probe`, `status`, `completions` and `man`).
//! - `client`: the one client of berth's own API (registry calls as containerd makes them,
//!   status, pins, metrics, peer fills), with TLS trust, client certificate, Basic user and
//!   admin token in one place; the only module that names reqwest.
//! - `prewarm`: pulls image groups through a running berth, pins them, checks readiness.
//! - `probe`: `berth probe` (timed requests and bulk transfers through the upstream
//!   connector, path facts, DF probes, verdicts) and `berth serve`'s light probe.
//! - `generate`: K3s `registries.yaml` and containerd `hosts.toml` writers.
//! - `pulls` (the bounded record of client requests, the access log), `status` (the report's
//!   types, HTML page and terminal text), `metrics` (Prometheus), `trace` (one request's
//!   cache result and upstream attempts).
//! - `build_info`: the version and git commit (`build.rs`), for `--version` and `/metrics`.
//! - Leaves every layer may use: `config` (file → env → flags, validated once), `failure`
//!   (the one failure vocabulary: `ErrorClass`, `Failure`), `text` (clipping and escaping
//!   outside strings), `units` (bytes and time windows as people write them).
//!
//! Dependency rule — arrows only run down: `cli → app → api → mirror → upstream / coalesce /
//! store / fleet → oci`; `cli → prewarm / probe / generate / client`; `prewarm → client`
//! (and `mirror` for pin names), `probe → upstream` (its connector) and `prewarm` (image
//! references); `fleet → client` (peer fills) and `store` (leases); `api → server` (peer
//! address) and `status`; `mirror → pulls, status, metrics, trace`. The leaves (`oci`,
//! `failure`, `text`, `units`, `trace`, `build_info`) import nothing of berth's; `config`
//! imports `oci` only. No module imports one above it, and no two modules import each other.

pub mod api;
pub mod app;
pub mod build_info;
pub mod cli;
pub mod client;
pub mod coalesce;
pub mod config;
pub mod failure;
pub mod fleet;
pub mod generate;
pub mod history;
pub mod metrics;
pub mod mirror;
pub mod oci;
pub mod prewarm;
pub mod probe;
pub mod pulls;
pub mod server;
pub mod status;
pub mod store;
#[cfg(test)]
mod test_pki;
pub mod text;
pub mod trace;
pub mod units;
pub mod upstream;

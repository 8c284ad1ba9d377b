//! berth — a pull-through OCI registry mirror for flaky egress.
//!
//! ```text
//!   containerd / podman / curl
//!            │  OCI pull API  (?ns=<registry>, /v2/<registry>/<repo>/…, or default upstream)
//!            ▼
//!   api        the only module that names axum: routing, handlers, OCI error JSON; records
//!            │ every request to its last byte (pull record, client metrics), /_berth/status
//!   mirror     the use case: tag freshness, manifest and blob flows, stale serving;
//!              routing to an [upstreams] entry or an `upstream_patterns` host, else 404
//!      │    \
//!      │     coalesce   one upstream fill, spooled to disk, streamed to every waiter;
//!      │      │         singleflight, fill caps (bounded queue) — all drop/panic safe
//!      ▼      │
//!   upstream   the only HTTP client of upstreams and the owner of its protocol: typed fetches
//!              (manifest, blob with Range resume, listings), the one retry loop, circuit
//!              breaker, token auth and credential rules, redirects, own TCP/TLS connector
//!   store      backends: content-addressed blobs, manifests and tag records (disk or S3);
//!              housekeeping: scan → pins → LRU plan → evict, access times, verify, stats
//!   oci        pure types, no I/O: Digest, Reference, Repository, OciPath, ErrorCode, the
//!              manifest model (ManifestDoc, Descriptor), the OCI error body
//!
//!   pulls      the bounded record of client requests (ring of 10,000, failures by image
//!              and by node); owned by the mirror, fed by api
//!   trace      one request's cache result and upstream attempts, written by mirror,
//!              coalesce and upstream into the task-local trace api opens per request
//!   status     the status report's types and renderings (HTML page, `berth status` text)
//!   config     file → env → flags, validated once into typed config
//!   generate   K3s registries.yaml and containerd hosts.toml writers
//!   prewarm    pulls image groups through a running berth as containerd would, pins them,
//!              checks offline readiness (only-if-cached) — over `client`
//!   client     the one client of berth's own API (prewarm, status, cache stats, fleet peer
//!              fills): typed calls, no URLs or headers in callers; TLS, client certificate,
//!              Basic user and admin token in one `Access`
//!   server     the front door: accept loop (allow and per-client caps checked at accept),
//!              connection cap, header/idle deadlines (HTTP/2 stalled bodies too), TLS (ALPN,
//!              cert reload, client CAs), htpasswd users (bounded login queue, per-client
//!              throttle); serves any tower service
//!   probe      `berth probe`: timed requests per address (DNS/connect/TLS/TTFB), bulk transfers
//!              at several MSS through `upstream`, path facts and DF path-MTU probes, verdicts
//!              (a pure function) with evidence and fix, text/JSON report, `compare`
//!   serve      wiring: store (+ evictor task on disk) + mirror + api + server; drains fills
//!              on shutdown
//!   cli        one file per subcommand (serve, cache, prewarm, probe, status, generators);
//!              glue only
//! ```
//!
//! Dependency rule: `cli → api/generate/prewarm/probe → mirror → upstream/store/coalesce → oci`,
//! plus `cli → store` for the offline cache commands (`berth cache stats|verify|gc`); `api` also
//! uses `server`'s policy types (peer address, users), and `server` knows no axum. `probe` uses
//! `upstream` directly (its connector, token auth, redirects) and `prewarm` only for image
//! references. Every layer reads `config` and `metrics` and may write to `trace`; `pulls`, `status` and `metrics` name
//! `upstream::ErrorClass` (the failure classes are the upstream client's). `oci` imports
//! nothing of ours.
//!
//! Two HTTP clients, on purpose: `upstream` is hyper on berth's own socket2/rustls connector
//! (it needs TCP_MAXSEG before connect, the address checks after DNS, its own timeouts);
//! `client` is an off-the-shelf HTTP client library (named in no other module), an ordinary
//! client of berth itself that may run on another host; `prewarm`, `fleet` and `cli` call it.

pub mod api;
pub mod app;
pub mod cli;
pub mod client;
pub mod coalesce;
pub mod config;
pub mod failure;
pub mod fleet;
pub mod generate;
pub mod metrics;
pub mod mirror;
pub mod oci;
pub mod prewarm;
pub mod probe;
pub mod pulls;
pub mod server;
pub mod status;
pub mod store;
pub mod trace;
pub mod units;
pub mod upstream;

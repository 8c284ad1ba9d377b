//! Real components, started as child processes in temp dirs and killed on drop:
//! a test CA ([`tls`]), Debian's docker-registry ([`registry`]), skopeo ([`skopeo`]) and a
//! private containerd driven by `ctr` ([`containerd`]).

pub mod containerd;
pub mod registry;
pub mod skopeo;
pub mod tls;

pub use containerd::{Containerd, PullPlatform, write_hosts_toml};
pub use registry::{AccessLogEntry, DockerRegistry, ProxyConfig};
pub use tls::TestCa;

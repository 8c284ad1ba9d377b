//! Real components, started as child processes in temp dirs and killed on drop:
//! a test CA ([`tls`]), Debian's docker-registry ([`registry`]), skopeo ([`skopeo`]), a
//! private containerd driven by `ctr` ([`containerd`]) and an S3 server, s3s-fs ([`s3`]).

pub mod containerd;
pub mod cri;
pub mod registry;
pub mod s3;
pub mod skopeo;
pub mod tls;

pub use containerd::{CRI_NAMESPACE, Containerd, PullPlatform, write_hosts_toml};
pub use registry::{AccessLogEntry, DockerRegistry, ProxyConfig};
pub use s3::S3Server;
pub use tls::TestCa;

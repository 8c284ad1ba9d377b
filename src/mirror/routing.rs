//! Which upstream a request is for: `?ns=`, a path prefix, or the default.

use std::sync::Arc;

use crate::oci::Repository;
use crate::upstream::UpstreamClient;

use super::{Mirror, MirrorError};

/// A request routed to one upstream and a repository name as that upstream knows it.
#[derive(Clone)]
pub struct Target {
    pub upstream: Arc<UpstreamClient>,
    pub repo: Repository,
}

impl Target {
    pub fn upstream_name(&self) -> &str {
        self.upstream.name()
    }
}

impl Mirror {
    /// Routes an unrouted `name` from the request path.
    ///
    /// 1. A first component naming a configured upstream is a path prefix (podman, skopeo,
    ///    containerd `override_path`): `/v2/ghcr.io/fluxcd/flux/...`.
    /// 2. Otherwise `?ns=<registry>` (containerd's mirror requests).
    /// 3. Otherwise the default upstream. A first component that looks like a registry host
    ///    but is not configured is refused: berth never becomes an open proxy.
    pub fn route(&self, name: &str, ns: Option<&str>) -> Result<Target, MirrorError> {
        let (first, rest) = name.split_once('/').unwrap_or((name, ""));
        let (upstream_name, repo) = if !rest.is_empty() && self.upstreams.contains_key(first) {
            (first, rest)
        } else if let Some(ns) = ns {
            (ns, name)
        } else if !rest.is_empty()
            && (first.contains('.') || first.contains(':') || first == "localhost")
        {
            return Err(MirrorError::UnknownRegistry(first.to_string()));
        } else {
            (self.config.default_upstream.as_str(), name)
        };
        let upstream = self
            .upstreams
            .get(upstream_name)
            .ok_or_else(|| MirrorError::UnknownRegistry(upstream_name.to_string()))?
            .clone();
        let mut repo: Repository = repo.parse()?;
        if upstream.config().official_images_prefix {
            repo = repo.with_library_prefix();
        }
        Ok(Target { upstream, repo })
    }
}

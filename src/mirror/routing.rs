//! Which upstream a request is for: `?ns=`, a path prefix, or the default; configured
//! `[upstreams]` first, then the hosts `upstream_patterns` allow.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::oci::Repository;
use crate::upstream::UpstreamClient;

use super::MirrorError;

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

/// How many pattern-matched registries keep a client (connection pool, tokens, breaker) at
/// once. A pattern like `*.pkg.dev` allows many names; the least recently used client goes.
const PATTERN_CLIENTS: u64 = 64;

/// The upstream clients requests are routed to: one per `[upstreams]` table, made at start,
/// and one per registry `upstream_patterns` allowed, made on first use.
pub(super) struct Routes {
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    upstreams: BTreeMap<String, Arc<UpstreamClient>>,
    /// Clients of pattern-allowed registries, one per registry name.
    patterns: moka::sync::Cache<String, Arc<UpstreamClient>>,
}

impl Routes {
    pub fn new(config: Arc<Config>, metrics: Arc<Metrics>) -> std::io::Result<Routes> {
        let mut upstreams = BTreeMap::new();
        for (name, upstream) in &config.upstreams {
            let client = UpstreamClient::new(upstream.clone(), metrics.clone())
                .map_err(|e| std::io::Error::new(e.kind(), format!("upstream {name}: {e}")))?;
            metrics.announce_upstream(name);
            upstreams.insert(name.clone(), Arc::new(client));
        }
        // Each pattern is one series from the start (its registries' clients come and go).
        for pattern in config.upstream_patterns.patterns() {
            metrics.announce_upstream(&pattern.to_string());
        }
        Ok(Routes {
            config,
            metrics,
            upstreams,
            // Least recently used goes, as the docs say (moka's default admits by frequency).
            patterns: moka::sync::Cache::builder()
                .max_capacity(PATTERN_CLIENTS)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .build(),
        })
    }

    /// Every client that exists now: the configured upstreams, then the pattern-allowed
    /// registries that have a client (made on first use, not yet evicted), by name.
    pub fn clients(&self) -> Vec<Arc<UpstreamClient>> {
        let mut patterns: Vec<_> = self.patterns.iter().map(|(_, client)| client).collect();
        patterns.sort_by(|a, b| a.name().cmp(b.name()));
        self.upstreams.values().cloned().chain(patterns).collect()
    }

    /// Routes an unrouted `name` from the request path.
    ///
    /// 1. A first component naming a known registry is a path prefix (podman, skopeo,
    ///    containerd `override_path`): `/v2/ghcr.io/fluxcd/flux/...`.
    /// 2. Otherwise `?ns=<registry>` (containerd's mirror requests).
    /// 3. Otherwise the default upstream. A first component that looks like a registry host
    ///    but is not known is refused: berth never becomes an open proxy.
    ///
    /// Known = an `[upstreams]` table, or a host `upstream_patterns` allows. Any other
    /// registry gets `UnknownRegistry` before anything connects anywhere.
    pub fn route(&self, name: &str, ns: Option<&str>) -> Result<Target, MirrorError> {
        let (first, rest) = name.split_once('/').unwrap_or((name, ""));
        let (upstream_name, repo) = if !rest.is_empty() && self.is_known_registry(first) {
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
        let upstream = self.upstream(upstream_name)?;
        let mut repo: Repository = repo.parse()?;
        if upstream.config().official_images_prefix {
            repo = repo.with_library_prefix();
        }
        // Before any upstream connection: a repository the rules refuse costs nothing.
        if let Err(rule) = upstream.config().repositories.check(repo.as_str()) {
            return Err(MirrorError::RepositoryRefused {
                upstream: upstream.name().to_string(),
                repo,
                rule,
            });
        }
        Ok(Target { upstream, repo })
    }

    fn is_known_registry(&self, registry: &str) -> bool {
        self.upstreams.contains_key(registry)
            || self
                .config
                .upstream_patterns
                .upstream_for(registry)
                .is_some()
    }

    /// The client of a configured upstream, else of a pattern-allowed registry (made once and
    /// shared, so its tokens, connections and breaker persist between requests).
    fn upstream(&self, registry: &str) -> Result<Arc<UpstreamClient>, MirrorError> {
        if let Some(client) = self.upstreams.get(registry) {
            return Ok(client.clone());
        }
        let unknown = || MirrorError::UnknownRegistry(registry.to_string());
        let config = self
            .config
            .upstream_patterns
            .upstream_for(registry)
            .ok_or_else(unknown)?;
        self.patterns
            .try_get_with(registry.to_string(), || {
                UpstreamClient::new(config, self.metrics.clone()).map(Arc::new)
            })
            .map_err(|e| MirrorError::BadUpstream {
                upstream: registry.to_string(),
                cause: format!("cannot set up a client: {e}"),
                class: crate::failure::ErrorClass::Other,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_clients_are_evicted_least_recently_used_first() {
        let config = Config::from_toml("upstream_patterns = [\"*.pkg.dev\"]").unwrap();
        let routes = Routes::new(Arc::new(config), Arc::new(Metrics::default())).unwrap();
        let name = |i: u64| format!("r{i}.pkg.dev");
        let use_client = |i: u64| {
            routes.upstream(&name(i)).unwrap();
            routes.patterns.run_pending_tasks();
        };
        // Every name once, then r1 is busy, then every other name again.
        for i in 0..PATTERN_CLIENTS {
            use_client(i);
        }
        for _ in 0..5 {
            use_client(1);
        }
        for i in (0..PATTERN_CLIENTS).filter(|i| *i != 1) {
            use_client(i);
        }
        // r1 is now the least recently used: it goes for a new name, however often it was used
        // before (a frequency-admitting cache would keep it and refuse the newcomer).
        use_client(PATTERN_CLIENTS);
        assert!(
            routes.patterns.contains_key(&name(0)),
            "a recently used name stays"
        );
        assert!(
            routes.patterns.contains_key(&name(PATTERN_CLIENTS)),
            "newcomer admitted"
        );
        assert!(
            !routes.patterns.contains_key(&name(1)),
            "least recently used goes"
        );
        assert_eq!(routes.patterns.entry_count(), PATTERN_CLIENTS);
    }
}

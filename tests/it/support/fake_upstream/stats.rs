//! What the fake saw: per (role, kind, method) counters, bytes sent per blob, a request log.

use std::collections::HashMap;

use http::{HeaderMap, Method};

/// Which of the fake's three servers answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Registry,
    Token,
    Cdn,
}

/// What a request asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `GET /v2/`
    Ping,
    Manifest,
    Blob,
    Tags,
    Referrers,
    Token,
    Other,
}

impl Kind {
    /// Classifies a registry path (`/v2/<name>/manifests/<ref>` …) or token/CDN path.
    pub fn of_path(role: Role, path: &str) -> Kind {
        match role {
            Role::Token => Kind::Token,
            Role::Cdn => Kind::Blob,
            Role::Registry if path == "/v2/" || path == "/v2" => Kind::Ping,
            Role::Registry if path.contains("/manifests/") => Kind::Manifest,
            Role::Registry if path.contains("/blobs/") => Kind::Blob,
            Role::Registry if path.ends_with("/tags/list") => Kind::Tags,
            Role::Registry if path.contains("/referrers/") => Kind::Referrers,
            Role::Registry => Kind::Other,
        }
    }
}

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct LoggedRequest {
    pub role: Role,
    pub kind: Kind,
    pub method: Method,
    /// Path and query, e.g. `/v2/library/busybox/manifests/1.36`.
    pub uri: String,
    pub headers: HeaderMap,
    /// Response status (0 if the handler never answered).
    pub status: u16,
}

impl LoggedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Default)]
pub struct Stats {
    pub counts: HashMap<(Role, Kind, Method), usize>,
    pub blob_bytes_sent: HashMap<String, u64>,
    pub log: Vec<LoggedRequest>,
}

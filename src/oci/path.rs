//! Parsing of `/v2/...` request paths into a typed endpoint, once, at the edge.
//!
//! Repository names contain `/`, so the endpoint is read from the end of the path:
//! `<name>/manifests/<ref>`, `<name>/blobs/<digest>`, `<name>/tags/list`, `<name>/referrers/<digest>`.

use super::{Digest, DigestError, NameError, Reference, Tag};

/// A parsed `/v2/` request path. `name` is still unrouted: it may start with a registry
/// component (`ghcr.io/fluxcd/flux`), which routing strips.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OciPath {
    /// `/v2/`
    Base,
    Endpoint {
        name: String,
        endpoint: Endpoint,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Manifest(Reference),
    Blob(Digest),
    Tags,
    Referrers(Digest),
}

impl Endpoint {
    /// What kind of request this is, as a metric label and a log field.
    pub fn kind(&self) -> &'static str {
        match self {
            Endpoint::Manifest(_) => "manifest",
            Endpoint::Blob(_) => "blob",
            Endpoint::Tags => "tags",
            Endpoint::Referrers(_) => "referrers",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("no such endpoint: {0}")]
    NotFound(String),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Digest(#[from] DigestError),
}

impl OciPath {
    /// Parses the raw (still percent-encoded) URI path.
    pub fn parse(path: &str) -> Result<OciPath, PathError> {
        let rest = path
            .strip_prefix("/v2")
            .ok_or_else(|| PathError::NotFound(path.into()))?;
        if rest.is_empty() || rest == "/" {
            return Ok(OciPath::Base);
        }
        let rest = rest
            .strip_prefix('/')
            .ok_or_else(|| PathError::NotFound(path.into()))?;
        // No valid name, tag or digest contains these; refusing them up front closes
        // `%2e%2e`, NUL and backslash tricks before anything is decoded.
        if let Some(bad) = rest
            .chars()
            .find(|c| matches!(c, '%' | '\\' | '\0') || c.is_control())
        {
            return Err(NameError::BadComponent(format!("{bad:?} in {rest}")).into());
        }
        let parts: Vec<&str> = rest.split('/').collect();
        let n = parts.len();
        if n < 3 {
            return Err(PathError::NotFound(path.into()));
        }
        let (name_parts, endpoint) = match (parts[n - 2], parts[n - 1]) {
            ("tags", "list") => (&parts[..n - 2], Endpoint::Tags),
            ("manifests", reference) => (
                &parts[..n - 2],
                Endpoint::Manifest(parse_reference(reference)?),
            ),
            ("blobs", digest) => (&parts[..n - 2], Endpoint::Blob(digest.parse()?)),
            ("referrers", digest) => (&parts[..n - 2], Endpoint::Referrers(digest.parse()?)),
            _ => return Err(PathError::NotFound(path.into())),
        };
        let name = name_parts.join("/");
        check_unrouted_name(name_parts)?;
        Ok(OciPath::Endpoint { name, endpoint })
    }
}

fn parse_reference(text: &str) -> Result<Reference, PathError> {
    if text.contains(':') {
        Ok(Reference::Digest(text.parse()?))
    } else {
        Ok(Reference::Tag(text.parse::<Tag>()?))
    }
}

/// Every component must be a valid name component, except that the first may be a
/// registry host with a port (`localhost:5000`) — routing decides what it means.
fn check_unrouted_name(parts: &[&str]) -> Result<(), NameError> {
    if parts.is_empty() || parts.iter().all(|p| p.is_empty()) {
        return Err(NameError::Empty);
    }
    // Clients cap `host[:port]/name` at 255 characters; so do we, before routing.
    if parts.iter().map(|p| p.len() + 1).sum::<usize>() - 1 > super::reference::MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    for (i, part) in parts.iter().enumerate() {
        let ok = super::reference::valid_component(part)
            || (i == 0 && parts.len() > 1 && is_host_port(part));
        if !ok {
            return Err(NameError::BadComponent((*part).into()));
        }
    }
    Ok(())
}

fn is_host_port(part: &str) -> bool {
    part.rsplit_once(':').is_some_and(|(host, port)| {
        super::reference::valid_component(host)
            && !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn ep(name: &str, endpoint: Endpoint) -> Result<OciPath, ()> {
        Ok(OciPath::Endpoint {
            name: name.into(),
            endpoint,
        })
    }

    #[test]
    fn parse_table() {
        let digest: Digest = D.parse().unwrap();
        let tag = |t: &str| Endpoint::Manifest(Reference::Tag(t.parse().unwrap()));
        let cases: Vec<(String, Result<OciPath, ()>)> = vec![
            ("/v2/".into(), Ok(OciPath::Base)),
            ("/v2".into(), Ok(OciPath::Base)),
            (
                "/v2/busybox/manifests/latest".into(),
                ep("busybox", tag("latest")),
            ),
            (
                "/v2/library/busybox/manifests/1.37".into(),
                ep("library/busybox", tag("1.37")),
            ),
            (
                format!("/v2/library/busybox/manifests/{D}"),
                ep(
                    "library/busybox",
                    Endpoint::Manifest(Reference::Digest(digest.clone())),
                ),
            ),
            (
                format!("/v2/ghcr.io/fluxcd/flux/blobs/{D}"),
                ep("ghcr.io/fluxcd/flux", Endpoint::Blob(digest.clone())),
            ),
            ("/v2/a/b/c/tags/list".into(), ep("a/b/c", Endpoint::Tags)),
            (
                format!("/v2/a/referrers/{D}"),
                ep("a", Endpoint::Referrers(digest.clone())),
            ),
            // A repository may itself contain a component named like an endpoint.
            (
                "/v2/x/blobs/y/manifests/v1".into(),
                ep("x/blobs/y", tag("v1")),
            ),
            (
                format!("/v2/localhost:5000/app/blobs/{D}"),
                ep("localhost:5000/app", Endpoint::Blob(digest)),
            ),
            // Refused.
            ("/v2/busybox/manifests".into(), Err(())),
            ("/v2/busybox/uploads/x".into(), Err(())),
            ("/v2/../etc/manifests/latest".into(), Err(())),
            ("/v2/%2e%2e/etc/manifests/latest".into(), Err(())),
            ("/v2/a/manifests/%2e%2e".into(), Err(())),
            ("/v2//etc/manifests/latest".into(), Err(())),
            ("/v2/a\0b/manifests/latest".into(), Err(())),
            ("/v2/a/manifests/..".into(), Err(())),
            ("/v2/a/blobs/sha256:abc".into(), Err(())),
            ("/v2/a/blobs/latest".into(), Err(())),
            ("/v2/Upper/manifests/latest".into(), Err(())),
            ("/v2/localhost:5000/manifests/latest".into(), Err(())),
            (format!("/v2/{}/manifests/latest", "a".repeat(300)), Err(())),
            ("/v3/a/manifests/latest".into(), Err(())),
        ];
        for (path, want) in cases {
            let got = OciPath::parse(&path).map_err(|_| ());
            assert_eq!(got, want, "{path}");
        }
    }
}

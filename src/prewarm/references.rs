//! Image references as users write them: `[registry/]repo[:tag][@digest]`, with Docker's
//! defaults (`busybox` → `docker.io/library/busybox:latest`).

use std::fmt;
use std::str::FromStr;

use crate::oci::{Digest, Reference, Repository, Tag};

const DOCKER_HUB: &str = "docker.io";

/// A parsed image reference. `repository` is as the registry knows it (`library/` added on Hub).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    pub registry: String,
    pub repository: Repository,
    pub tag: Option<Tag>,
    pub digest: Option<Digest>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad image reference `{reference}`: {reason}; write it as registry/repository:tag, e.g. ghcr.io/fluxcd/helm-controller:v1.5.1"
)]
pub struct ReferenceError {
    pub reference: String,
    pub reason: String,
}

impl ImageRef {
    /// An image as the history says it was pulled: by its tag, or by its digest; `None` when
    /// the history's names are not valid ones.
    pub fn pulled(image: &crate::history::ImageReport) -> Option<ImageRef> {
        Some(ImageRef {
            registry: image.registry.clone(),
            repository: image.repository.parse().ok()?,
            tag: match &image.tag {
                Some(tag) => Some(tag.parse().ok()?),
                None => None,
            },
            digest: match &image.tag {
                Some(_) => None,
                None => Some(image.digest.parse().ok()?),
            },
        })
    }

    /// What to ask the registry for: the digest when pinned, else the tag.
    pub fn reference(&self) -> Reference {
        match (&self.digest, &self.tag) {
            (Some(d), _) => Reference::Digest(d.clone()),
            (None, Some(t)) => Reference::Tag(t.clone()),
            (None, None) => Reference::Tag("latest".parse().expect("valid tag")),
        }
    }
}

impl FromStr for ImageRef {
    type Err = ReferenceError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = |reason: String| ReferenceError {
            reference: text.to_string(),
            reason,
        };
        let trimmed = text.trim();
        if trimmed.is_empty() || trimmed.contains(char::is_whitespace) {
            return Err(fail("it is empty or contains spaces".into()));
        }
        let (rest, digest) = match trimmed.split_once('@') {
            Some((r, d)) => (
                r,
                Some(d.parse::<Digest>().map_err(|e| fail(e.to_string()))?),
            ),
            None => (trimmed, None),
        };
        // A `:` after the last `/` starts the tag; one before it is a registry port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &rest[last_slash + i + 1..];
                let tag = tag.parse::<Tag>().map_err(|e| fail(e.to_string()))?;
                (&rest[..last_slash + i], Some(tag))
            }
            None => (rest, None),
        };
        let (registry, repo) = match name.split_once('/') {
            Some((first, remainder))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), remainder)
            }
            _ => (DOCKER_HUB.to_string(), name),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
            _ => registry,
        };
        if registry.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(fail(format!("registry `{registry}` must be lowercase")));
        }
        let mut repository: Repository = repo.parse().map_err(|e| fail(format!("{e}")))?;
        if registry == DOCKER_HUB {
            repository = repository.with_library_prefix();
        }
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".parse().expect("valid tag")),
            (tag, _) => tag,
        };
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_defaults_and_registries() {
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("rancher/shell:v0.3.0", "docker.io/rancher/shell:v0.3.0"),
            ("docker.io/busybox:1.37", "docker.io/library/busybox:1.37"),
            (
                "index.docker.io/grafana/grafana:11.4.0",
                "docker.io/grafana/grafana:11.4.0",
            ),
            (
                "ghcr.io/fluxcd/helm-controller:v1.5.1",
                "ghcr.io/fluxcd/helm-controller:v1.5.1",
            ),
            ("localhost:5000/a/b", "localhost:5000/a/b:latest"),
            ("registry.local:5000/a:1", "registry.local:5000/a:1"),
        ];
        for (text, want) in cases {
            assert_eq!(
                text.parse::<ImageRef>().unwrap().to_string(),
                want,
                "{text}"
            );
        }
        let pinned: ImageRef = format!("quay.io/x/y:v1@{d}").parse().unwrap();
        assert_eq!(pinned.reference().to_string(), d);
        let digest_only: ImageRef = format!("quay.io/x/y@{d}").parse().unwrap();
        assert_eq!(digest_only.tag, None);
        assert_eq!(digest_only.to_string(), format!("quay.io/x/y@{d}"));
    }

    #[test]
    fn bad_references_name_themselves_and_the_fix() {
        for bad in [
            "",
            "Ghcr.io/x/y",
            "ghcr.io/X/y:1",
            "x:bad tag",
            "a/b:",
            "a@sha256:zz",
            "a//b",
        ] {
            let e = bad.parse::<ImageRef>().expect_err(bad).to_string();
            assert!(e.contains(&format!("`{bad}`")), "{e}");
            assert!(e.contains("registry/repository:tag"), "{e}");
        }
    }
}

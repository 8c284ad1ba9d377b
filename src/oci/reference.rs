//! Repository names and tags, validated against the distribution-spec grammar.

use std::fmt;
use std::str::FromStr;

use super::Digest;

/// Longest repository name accepted (distribution/reference's total limit).
pub const MAX_NAME_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("repository name is empty")]
    Empty,
    #[error("repository name is longer than {MAX_NAME_LEN} characters")]
    TooLong,
    #[error(
        "repository name component `{0}` is invalid (lowercase letters, digits and . _ __ - separators)"
    )]
    BadComponent(String),
    #[error("tag `{0}` is invalid ([A-Za-z0-9_][A-Za-z0-9._-]{{0,127}})")]
    BadTag(String),
}

/// A repository path such as `library/busybox`: components matching
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` joined by `/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Repository(String);

impl Repository {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// Docker Hub's official images live under `library/`.
    pub fn with_library_prefix(self) -> Repository {
        if self.0.contains('/') {
            self
        } else {
            Repository(format!("library/{}", self.0))
        }
    }
}

impl FromStr for Repository {
    type Err = NameError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        if let Some(bad) = name.split('/').find(|c| !valid_component(c)) {
            return Err(NameError::BadComponent(bad.into()));
        }
        Ok(Repository(name.into()))
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
pub(crate) fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or "-+", always followed by an alphanumeric.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !alnum(b[i]) {
            return false;
        }
    }
    true
}

/// A tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = NameError;

    fn from_str(tag: &str) -> Result<Self, Self::Err> {
        let b = tag.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 128
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b.iter()
                .all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'));
        if ok {
            Ok(Tag(tag.into()))
        } else {
            Err(NameError::BadTag(tag.into()))
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a manifest request names: a mutable tag or an immutable digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

/// `host` or `host:port`, lowercase, as registries are named in image references.
pub fn is_registry_name(name: &str) -> bool {
    let (host, port) = match name.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (name, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok());
    host_ok && port_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_grammar() {
        for ok in [
            "busybox",
            "library/busybox",
            "a/b/c",
            "a.b",
            "a_b",
            "a__b",
            "a---b",
            "fluxcd/helm-controller",
            "0",
        ] {
            assert!(ok.parse::<Repository>().is_ok(), "{ok}");
        }
        for bad in [
            "", "Busybox", "a//b", "/a", "a/", "..", "a/../b", "a/./b", "a___b", "a.-b", "-a",
            "a-", "a b", "a\0b", "a%2eb", "a:b",
        ] {
            assert!(bad.parse::<Repository>().is_err(), "{bad:?}");
        }
        assert_eq!(
            "a".repeat(256).parse::<Repository>(),
            Err(NameError::TooLong)
        );
        assert!("a".repeat(255).parse::<Repository>().is_ok());
    }

    #[test]
    fn library_prefix_only_for_single_component() {
        let r: Repository = "busybox".parse().unwrap();
        assert_eq!(r.with_library_prefix().as_str(), "library/busybox");
        let r: Repository = "fluxcd/flux".parse().unwrap();
        assert_eq!(r.with_library_prefix().as_str(), "fluxcd/flux");
    }

    #[test]
    fn tag_grammar() {
        for ok in ["latest", "v1.2.3", "_x", "1.37.0-musl", &"a".repeat(128)] {
            assert!(ok.parse::<Tag>().is_ok(), "{ok}");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", "..", &"a".repeat(129), "a\0"] {
            assert!(bad.parse::<Tag>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn registry_names() {
        for ok in [
            "docker.io",
            "registry.k8s.io",
            "localhost:5000",
            "a-b.example",
        ] {
            assert!(is_registry_name(ok), "{ok}");
        }
        for bad in [
            "",
            "Docker.io",
            "a/b",
            "a..b",
            "-a.io",
            "a.io:http",
            "a.io:99999",
        ] {
            assert!(!is_registry_name(bad), "{bad}");
        }
    }
}

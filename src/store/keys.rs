//! Store key layout. Every key is built here from validated types, never from raw input.

use crate::oci::{Digest, Repository, Tag};

pub fn blob(digest: &Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm().as_str(), digest.hex())
}

pub fn manifest(digest: &Digest) -> String {
    format!("manifests/{}/{}", digest.algorithm().as_str(), digest.hex())
}

/// `_tags` cannot collide with a repository component (components start with [a-z0-9]).
pub fn tag(upstream: &str, repo: &Repository, tag: &Tag) -> String {
    format!("tags/{upstream}/{repo}/_tags/{tag}")
}

/// The last tag list an upstream gave for a repository (served when the upstream is down).
pub fn tag_list(upstream: &str, repo: &Repository) -> String {
    format!("tags/{upstream}/{repo}/_list")
}

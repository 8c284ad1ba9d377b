//! Manifest media types and `Accept` matching.

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// What berth asks upstreams for when the client's `Accept` is absent or too narrow.
pub const MANIFEST_MEDIA_TYPES: [&str; 4] = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// Docker schema 1 (`…manifest.v1+prettyjws`, unsigned `…v1+json`), which containerd 2 refuses.
pub fn is_docker_schema1(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.docker.distribution.manifest.v1")
}

/// Larger manifests are refused (distribution's push limit; containerd's is ~4.39 MB).
pub const MAX_MANIFEST_SIZE: u64 = 4 * 1024 * 1024;

/// Does an `Accept` list (already split into bare media types) admit `media_type`?
/// An empty list means the client did not say, which admits anything.
pub fn accepts(accept: &[String], media_type: &str) -> bool {
    accept.is_empty()
        || accept.iter().any(|a| {
            a == media_type
                || a == "*/*"
                || a.strip_suffix("/*")
                    .is_some_and(|top| media_type.split('/').next() == Some(top))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_matching() {
        let list = vec![OCI_INDEX.to_string(), DOCKER_MANIFEST.to_string()];
        assert!(accepts(&list, OCI_INDEX));
        assert!(!accepts(&list, OCI_MANIFEST));
        assert!(accepts(&[], OCI_MANIFEST));
        assert!(accepts(&["*/*".into()], "text/plain"));
        assert!(accepts(&["application/*".into()], OCI_MANIFEST));
        assert!(!accepts(&["text/*".into()], OCI_MANIFEST));
        assert!(is_docker_schema1(
            "application/vnd.docker.distribution.manifest.v1+prettyjws"
        ));
        assert!(!is_docker_schema1(DOCKER_MANIFEST));
    }
}

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

/// A media type berth keeps and sends as a `Content-Type`: `type/subtype` of token
/// characters with optional `;` parameters of visible ASCII, at most 255 bytes. Media types
/// come from upstreams (headers, a manifest's own `mediaType`): untrusted text.
pub fn is_media_type(text: &str) -> bool {
    if text.is_empty() || text.len() > 255 {
        return false;
    }
    let essence = text.split(';').next().unwrap_or("").trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    token(kind) && token(subtype) && text.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
}

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
    fn media_types_from_upstreams_are_checked() {
        for ok in [
            OCI_MANIFEST,
            DOCKER_MANIFEST,
            "application/json; charset=utf-8",
        ] {
            assert!(is_media_type(ok), "{ok}");
        }
        let long = format!("application/{}", "x".repeat(300));
        for bad in [
            "",
            "json",
            "application/",
            "/json",
            "application/json\r\nSet-Cookie: a=b",
            "application/json\n",
            "text/html\u{7f}",
            "appl ication/json",
            "application/jsön",
            long.as_str(),
        ] {
            assert!(!is_media_type(bad), "{bad:?}");
        }
    }

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

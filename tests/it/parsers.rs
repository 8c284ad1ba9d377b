//! Property tests of the parsers that read untrusted text: request paths (clients), `Range`
//! headers (clients), `WWW-Authenticate` challenges (upstreams). Arbitrary input never panics;
//! what a well-behaved peer sends parses back to what it meant.

use berth::oci::ByteRange;
use berth::oci::{Endpoint, OciPath, Reference};
use berth::upstream::{Challenge, parse_challenges};
use proptest::prelude::*;

/// A repository path component as the distribution spec allows it.
fn component() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,8}([._-][a-z0-9]{1,6}){0,2}"
}

fn tag() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_][A-Za-z0-9_.-]{0,40}"
}

fn digest() -> impl Strategy<Value = String> {
    "[0-9a-f]{64}".prop_map(|hex| format!("sha256:{hex}"))
}

/// A quoted-string value with the characters that need escaping.
fn quoted(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn request_paths_never_panic(path in "\\PC{0,200}", tail in "(/[a-z%.\\\\]{0,6}){0,8}") {
        let _ = OciPath::parse(&path);
        let _ = OciPath::parse(&format!("/v2{tail}"));
        let _ = OciPath::parse(&format!("/v2/{path}/manifests/{tail}"));
    }

    #[test]
    fn manifest_and_blob_paths_round_trip(
        parts in prop::collection::vec(component(), 1..5),
        tag in tag(),
        digest in digest(),
    ) {
        let name = parts.join("/");
        match OciPath::parse(&format!("/v2/{name}/manifests/{tag}")) {
            Ok(OciPath::Endpoint { name: parsed, endpoint: Endpoint::Manifest(Reference::Tag(t)) }) => {
                prop_assert_eq!(parsed, name.clone());
                prop_assert_eq!(t.to_string(), tag);
            }
            other => prop_assert!(false, "{name}:{tag} parsed as {other:?}"),
        }
        match OciPath::parse(&format!("/v2/{name}/blobs/{digest}")) {
            Ok(OciPath::Endpoint { name: parsed, endpoint: Endpoint::Blob(d) }) => {
                prop_assert_eq!(parsed, name.clone());
                prop_assert_eq!(d.to_string(), digest.clone());
            }
            other => prop_assert!(false, "{name}@{digest} parsed as {other:?}"),
        }
        match OciPath::parse(&format!("/v2/{name}/manifests/{digest}")) {
            Ok(OciPath::Endpoint { endpoint: Endpoint::Manifest(Reference::Digest(d)), .. }) => {
                prop_assert_eq!(d.to_string(), digest);
            }
            other => prop_assert!(false, "{name}@{digest} parsed as {other:?}"),
        }
    }

    #[test]
    fn range_headers_never_panic_and_resolve_inside_the_blob(header in "\\PC{0,60}", size in 0u64..u64::MAX) {
        if let Some(range) = ByteRange::parse(&header) {
            if let Some((start, end)) = range.resolve(size) {
                prop_assert!(start <= end && end < size);
            }
        }
        let _ = ByteRange::parse(&format!("bytes={header}"));
    }

    #[test]
    fn range_headers_round_trip(a in any::<u64>(), b in any::<u64>(), size in 1u64..u64::MAX) {
        let (lo, hi) = (a.min(b), a.max(b));
        prop_assert_eq!(ByteRange::parse(&format!("bytes={lo}-{hi}")), Some(ByteRange::FromTo(lo, hi)));
        prop_assert_eq!(ByteRange::parse(&format!("bytes={a}-")), Some(ByteRange::From(a)));
        prop_assert_eq!(ByteRange::parse(&format!("bytes=-{b}")), Some(ByteRange::Suffix(b)));
        if hi > lo {
            prop_assert_eq!(ByteRange::parse(&format!("bytes={hi}-{lo}")), None);
        }
        if let Some((start, end)) = ByteRange::From(a).resolve(size) {
            prop_assert_eq!((start, end), (a, size - 1));
        }
    }

    #[test]
    fn challenges_never_panic(header in "\\PC{0,200}") {
        let _ = parse_challenges(&header);
    }

    #[test]
    fn bearer_challenges_round_trip(
        realm in "https://[a-z]{1,10}\\.example/[a-z/]{0,10}",
        service in "\\PC{0,30}",
        scope in "repository:[a-z/]{1,20}:pull(,push)?",
        basic_first in any::<bool>(),
    ) {
        let bearer = format!(
            "Bearer realm={},service={},scope={}",
            quoted(&realm), quoted(&service), quoted(&scope)
        );
        let header = if basic_first { format!("Basic realm=\"x\", {bearer}") } else { bearer };
        let challenges = parse_challenges(&header);
        let expected = Challenge::Bearer {
            realm,
            service: Some(service),
            scope: Some(scope),
        };
        prop_assert!(challenges.contains(&expected), "{header} → {challenges:?}");
        prop_assert_eq!(challenges.contains(&Challenge::Basic), basic_first);
    }
}

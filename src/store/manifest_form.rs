//! How a manifest is kept in the store: a header that names its media type with an explicit
//! length, then the exact bytes the registry sent (so the digest of what follows the header is
//! the manifest's). Length-prefixed, so no media type can move where the body starts.
//!
//! `#2 <length>\n<media type><body>`; objects of earlier versions (`<media type>\n<body>`) are
//! still read when their media type is a valid one.

use bytes::{BufMut, Bytes, BytesMut};

use crate::oci::is_media_type;

const MAGIC: &[u8] = b"#2 ";
/// A header's length field has at most this many digits (media types are ≤ 255 bytes).
const MAX_LENGTH_DIGITS: usize = 3;

/// The stored form of a manifest. `media_type` must be a valid one ([`is_media_type`]).
pub fn encode(media_type: &str, bytes: &[u8]) -> Bytes {
    let length = media_type.len().to_string();
    let mut out =
        BytesMut::with_capacity(MAGIC.len() + length.len() + 1 + media_type.len() + bytes.len());
    out.put_slice(MAGIC);
    out.put_slice(length.as_bytes());
    out.put_u8(b'\n');
    out.put_slice(media_type.as_bytes());
    out.put_slice(bytes);
    out.freeze()
}

/// `(media type, manifest bytes)` of a stored manifest; `None` for an object that is not one
/// (or whose media type is not valid).
pub fn split(stored: &[u8]) -> Option<(&str, &[u8])> {
    let (media_type, body) = match stored.strip_prefix(MAGIC) {
        Some(rest) => {
            let newline = rest
                .iter()
                .take(MAX_LENGTH_DIGITS + 1)
                .position(|&b| b == b'\n')?;
            let length: usize = std::str::from_utf8(&rest[..newline]).ok()?.parse().ok()?;
            let rest = &rest[newline + 1..];
            (rest.get(..length)?, &rest[length..])
        }
        None => {
            let newline = stored.iter().position(|&b| b == b'\n')?;
            (&stored[..newline], &stored[newline + 1..])
        }
    };
    let media_type = std::str::from_utf8(media_type).ok()?;
    is_media_type(media_type).then_some((media_type, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_exact_bytes_and_refuses_headerless_objects() {
        let body = b"{\n \"schemaVersion\": 2 }\n\n";
        let stored = encode("application/x-odd", body);
        assert_eq!(split(&stored), Some(("application/x-odd", &body[..])));
        assert_eq!(split(b"no newline"), None);
        assert_eq!(
            split(b"#2 999999\nx"),
            None,
            "a length past the field's digits"
        );
        assert_eq!(split(b"#2 40\nshort"), None, "a length past the object");
    }

    #[test]
    fn earlier_objects_read_only_with_a_valid_media_type() {
        let legacy = b"application/vnd.oci.image.manifest.v1+json\n{}";
        assert_eq!(
            split(legacy),
            Some(("application/vnd.oci.image.manifest.v1+json", &b"{}"[..]))
        );
        assert_eq!(split(b"application/json\x7f\n{}"), None, "not a media type");
        // An earlier object written with a newline inside its media type splits in the wrong
        // place; what would catch it is the digest check of every manifest read from the store.
    }
}

//! How a manifest is kept in the store: its media type on the first line, then the exact bytes
//! the registry sent (so the digest of the bytes after the first newline is the manifest's).

use bytes::{BufMut, Bytes, BytesMut};

/// The stored form of a manifest.
pub fn encode(media_type: &str, bytes: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(media_type.len() + 1 + bytes.len());
    out.put_slice(media_type.as_bytes());
    out.put_u8(b'\n');
    out.put_slice(bytes);
    out.freeze()
}

/// `(media type, manifest bytes)` of a stored manifest; `None` without a UTF-8 header line.
pub fn split(stored: &[u8]) -> Option<(&str, &[u8])> {
    let newline = stored.iter().position(|&b| b == b'\n')?;
    let media_type = std::str::from_utf8(&stored[..newline]).ok()?;
    Some((media_type, &stored[newline + 1..]))
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
    }
}

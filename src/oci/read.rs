//! What a pull asks of a piece of content: its headers only (HEAD) or its bytes (GET), and of
//! a blob's bytes, which ones (a client's `Range`).

/// Headers only, or the content too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// HEAD: does it exist, how big, which digest. No download starts for it.
    Headers,
    /// GET: the bytes.
    Body,
}

/// A client's `Range: bytes=...` request (one range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `a-b`, inclusive.
    FromTo(u64, u64),
    /// `a-`
    From(u64),
    /// `-n`: the last n bytes.
    Suffix(u64),
}

impl ByteRange {
    /// Parses a `Range` header; `None` for anything but one byte range (then the whole blob is sent).
    pub fn parse(header: &str) -> Option<ByteRange> {
        let spec = header.trim().strip_prefix("bytes=")?.trim();
        if spec.contains(',') {
            return None;
        }
        let (a, b) = spec.split_once('-')?;
        let (a, b) = (a.trim(), b.trim());
        match (a.is_empty(), b.is_empty()) {
            (false, false) => Some(ByteRange::FromTo(a.parse().ok()?, b.parse().ok()?))
                .filter(|r| matches!(r, ByteRange::FromTo(x, y) if x <= y)),
            (false, true) => Some(ByteRange::From(a.parse().ok()?)),
            (true, false) => Some(ByteRange::Suffix(b.parse().ok()?)),
            (true, true) => None,
        }
    }

    /// The inclusive byte span within a blob of `size` bytes, or `None` if unsatisfiable.
    pub fn resolve(self, size: u64) -> Option<(u64, u64)> {
        let (start, end) = match self {
            ByteRange::FromTo(a, b) => (a, b.min(size.checked_sub(1)?)),
            ByteRange::From(a) => (a, size.checked_sub(1)?),
            ByteRange::Suffix(0) => return None,
            ByteRange::Suffix(n) => (size.saturating_sub(n), size.checked_sub(1)?),
        };
        (start <= end && start < size).then_some((start, end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_parse_and_resolve() {
        let cases = [
            ("bytes=0-9", 100, Some((0, 9))),
            ("bytes=90-", 100, Some((90, 99))),
            ("bytes=90-200", 100, Some((90, 99))),
            ("bytes=-10", 100, Some((90, 99))),
            ("bytes=-200", 100, Some((0, 99))),
            ("bytes=100-", 100, None),
            ("bytes=0-0", 0, None),
        ];
        for (header, size, want) in cases {
            let r = ByteRange::parse(header).unwrap();
            assert_eq!(r.resolve(size), want, "{header} of {size}");
        }
        for ignored in [
            "bytes=5-1",
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=-",
            "bytes=a-b",
        ] {
            assert_eq!(ByteRange::parse(ignored), None, "{ignored}");
        }
    }
}

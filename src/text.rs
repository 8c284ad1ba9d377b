//! Text from outside (clients, upstreams, a remote berth's report) made safe to keep and to
//! show: clipped to a bound before it is stored, its control characters escaped before it
//! reaches a terminal or a log a person reads. A leaf: it imports nothing of berth's.

use std::borrow::Cow;
use std::fmt::Write as _;

/// At most `max` bytes of `text`, cut at a character boundary, with `…` when cut.
pub fn clip(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &text[..end]))
}

/// Clips `text` in place (see [`clip`]).
pub fn clip_owned(text: &mut String, max: usize) {
    if let Cow::Owned(clipped) = clip(text, max) {
        *text = clipped;
    }
}

/// `text` with every control character (C0, DEL, C1, and the bidirectional overrides that
/// reorder what a terminal shows) written as `\u{…}`: a string from outside cannot move the
/// cursor, recolour, rewrite a line or forge one.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// The first `n` characters of `text` (not bytes: a non-ASCII string must not split a char).
pub fn first_chars(text: &str, n: usize) -> &str {
    match text.char_indices().nth(n) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_keeps_characters_whole() {
        assert_eq!(clip("short", 10), "short");
        let long = "é".repeat(100);
        let clipped = clip(&long, 11);
        assert!(clipped.len() <= 11, "{clipped}");
        assert!(clipped.ends_with('…'));
        let mut owned = "x".repeat(1000);
        clip_owned(&mut owned, 300);
        assert_eq!(owned.len(), 300);
    }

    #[test]
    fn control_characters_cannot_reach_a_terminal() {
        let forged = "app\r\n  all good\u{1b}[32m\u{202e}";
        let shown = printable(forged);
        assert!(!shown.chars().any(|c| c.is_control()), "{shown}");
        assert_eq!(shown, "app\\u{d}\\u{a}  all good\\u{1b}[32m\\u{202e}");
        assert!(matches!(printable("ghcr.io/org/app"), Cow::Borrowed(_)));
    }

    #[test]
    fn first_chars_counts_characters() {
        assert_eq!(first_chars("sha256:abc", 3), "sha");
        assert_eq!(first_chars("ééééé", 2), "éé");
        assert_eq!(first_chars("ab", 5), "ab");
    }
}

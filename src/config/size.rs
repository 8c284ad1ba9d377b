//! Byte sizes as people write them: `"50GiB"`, `"500MiB"`, `"10GB"`, `"1024"`, or a plain integer.

use serde::Deserialize;

/// A size in the file: a TOML integer (bytes) or a string with an optional unit.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    Bytes(u64),
    Text(String),
}

impl RawSize {
    pub fn bytes(&self) -> Result<u64, String> {
        match self {
            RawSize::Bytes(n) => Ok(*n),
            RawSize::Text(text) => parse_size(text),
        }
    }
}

/// Binary units (KiB, MiB, GiB, TiB) are powers of 1024; decimal ones (KB, MB, GB, TB) of 1000;
/// `B` or no unit is bytes. Case-insensitive, optional space, fractions allowed (`"1.5GiB"`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "m" | "mb" => 1000_u64.pow(2),
        "g" | "gb" => 1000_u64.pow(3),
        "t" | "tb" => 1000_u64.pow(4),
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "`{text}`: unknown unit `{other}`; write e.g. \"50GiB\", \"500MiB\" or \"10GB\""
            ));
        }
    };
    if number.is_empty() {
        return Err(format!("`{text}` has no number; write e.g. \"50GiB\""));
    }
    if let Ok(whole) = number.parse::<u64>() {
        return whole
            .checked_mul(multiplier)
            .ok_or_else(|| format!("`{text}` is too large"));
    }
    let fraction: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size like \"50GiB\""))?;
    let bytes = fraction * multiplier as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("`{text}` is too large"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        let cases = [
            ("0", 0),
            ("1024", 1024),
            ("12B", 12),
            ("1KiB", 1024),
            ("500MiB", 500 << 20),
            ("50GiB", 50 << 30),
            ("2TiB", 2 << 40),
            ("10GB", 10_000_000_000),
            ("3 mb", 3_000_000),
            ("1.5GiB", 3 << 29),
            (" 7 KB ", 7000),
        ];
        for (text, want) in cases {
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn bad_sizes_say_why() {
        for bad in [
            "",
            "GiB",
            "ten",
            "5 parsecs",
            "1.2.3MiB",
            "-1GiB",
            "99999999999TiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}

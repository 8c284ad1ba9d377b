//! Platforms as `os/arch[/variant]`, matched against an index entry's `platform`.

use std::fmt;
use std::str::FromStr;

/// Deserialises from an index entry's `platform` object (`os`, `architecture`, `variant`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("platform `{0}` is not of the form os/arch[/variant], e.g. linux/amd64 or linux/arm/v7")]
pub struct PlatformError(pub String);

impl FromStr for Platform {
    type Err = PlatformError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let part_ok = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        let parts: Vec<&str> = s.split('/').collect();
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(|p| part_ok(p)) {
            return Err(PlatformError(s.to_string()));
        }
        Ok(Platform {
            os: parts[0].into(),
            architecture: parts[1].into(),
            variant: parts.get(2).map(|v| v.to_string()),
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl Platform {
    /// Does an index entry for `os`/`architecture`/`variant` serve this platform?
    /// A wanted platform without a variant takes any variant (`linux/arm64` ← `linux/arm64/v8`).
    pub fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        self.os == os
            && self.architecture == architecture
            && self.variant.as_deref().is_none_or(|v| Some(v) == variant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_match() {
        let p: Platform = "linux/arm64".parse().unwrap();
        assert!(p.matches("linux", "arm64", Some("v8")));
        assert!(p.matches("linux", "arm64", None));
        assert!(!p.matches("linux", "amd64", None));
        let v7: Platform = "linux/arm/v7".parse().unwrap();
        assert_eq!(v7.to_string(), "linux/arm/v7");
        assert!(!v7.matches("linux", "arm", Some("v6")));
        for bad in ["linux", "linux/", "Linux/amd64", "a/b/c/d", ""] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
    }
}

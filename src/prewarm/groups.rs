//! Image groups: the TOML group file (`[groups.<name>] description, images`), validated once.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::mirror::PinName;

use super::references::{ImageRef, ReferenceError};

/// The group file shipped with berth (`config/image-groups.toml`), used without `--groups-file`.
pub const SHIPPED: &str = include_str!("../../config/image-groups.toml");

#[derive(Debug, Clone)]
pub struct Group {
    pub name: PinName,
    pub description: String,
    pub images: Vec<ImageRef>,
}

/// Every group of one file, by name.
#[derive(Debug, Clone, Default)]
pub struct Groups(BTreeMap<PinName, Group>);

#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("cannot read the groups file {file}: {message}")]
    Read { file: String, message: String },
    #[error("groups file {file}: {message}")]
    Format { file: String, message: String },
    #[error("groups file {file}: group `{group}`: {source}")]
    Reference {
        file: String,
        group: String,
        source: ReferenceError,
    },
    #[error("unknown group `{name}`; known groups: {known} (add it to the --groups-file)")]
    Unknown { name: String, known: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    groups: BTreeMap<String, RawGroup>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    #[serde(default)]
    description: String,
    images: Vec<String>,
}

impl Groups {
    pub fn shipped() -> Result<Groups, GroupError> {
        Groups::parse(SHIPPED, "config/image-groups.toml (built in)")
    }

    pub fn load(path: &Path) -> Result<Groups, GroupError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| GroupError::Read {
            file: file.clone(),
            message: e.to_string(),
        })?;
        Groups::parse(&text, &file)
    }

    /// Parses `text`; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Groups, GroupError> {
        let format = |message: String| GroupError::Format {
            file: file.to_string(),
            message: message.trim().replace('\n', " "),
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| format(e.message().to_string()))?;
        let mut groups = BTreeMap::new();
        for (name, raw_group) in raw.groups {
            let name: PinName = name
                .parse()
                .map_err(|e: crate::mirror::PinNameError| format(format!("group {e}")))?;
            if raw_group.images.is_empty() {
                return Err(format(format!("group `{name}` lists no images")));
            }
            let mut images = Vec::new();
            for text in &raw_group.images {
                let image = text.parse().map_err(|source| GroupError::Reference {
                    file: file.to_string(),
                    group: name.to_string(),
                    source,
                })?;
                if !images.contains(&image) {
                    images.push(image);
                }
            }
            let group = Group {
                name: name.clone(),
                description: raw_group.description,
                images,
            };
            groups.insert(name, group);
        }
        Ok(Groups(groups))
    }

    pub fn names(&self) -> impl Iterator<Item = &PinName> {
        self.0.keys()
    }

    pub fn get(&self, name: &str) -> Option<&Group> {
        self.0.values().find(|g| g.name.as_str() == name)
    }

    /// The named groups in the order given (every group when `names` is empty).
    pub fn select(&self, names: &[String]) -> Result<Vec<Group>, GroupError> {
        if names.is_empty() {
            return Ok(self.0.values().cloned().collect());
        }
        let mut chosen: Vec<Group> = Vec::new();
        for name in names {
            let group = self.get(name).ok_or_else(|| GroupError::Unknown {
                name: name.clone(),
                known: self.known(),
            })?;
            if !chosen.iter().any(|g| g.name == group.name) {
                chosen.push(group.clone());
            }
        }
        Ok(chosen)
    }

    fn known(&self) -> String {
        let names: Vec<&str> = self.0.keys().map(PinName::as_str).collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_contract_format() {
        let text = r#"
            [groups.flux]
            description = "Flux controllers"
            images = ["ghcr.io/fluxcd/helm-controller:v1.5.1", "ghcr.io/fluxcd/source-controller:v1.5.0"]
            [groups.tools]
            images = ["busybox:1.37"]
        "#;
        let groups = Groups::parse(text, "g.toml").unwrap();
        let flux = groups.get("flux").unwrap();
        assert_eq!(flux.description, "Flux controllers");
        assert_eq!(flux.images.len(), 2);
        let chosen = groups.select(&["tools".into()]).unwrap();
        assert_eq!(
            chosen[0].images[0].to_string(),
            "docker.io/library/busybox:1.37"
        );
        assert_eq!(groups.select(&[]).unwrap().len(), 2);
    }

    #[test]
    fn errors_are_one_line_and_name_the_fix() {
        let groups = Groups::parse("[groups.flux]\nimages = [\"a:1\"]", "g.toml").unwrap();
        let e = groups.select(&["fluxx".into()]).unwrap_err().to_string();
        assert!(
            e.contains("`fluxx`") && e.contains("known groups: flux"),
            "{e}"
        );
        let cases = [
            ("[groups.Flux]\nimages = [\"a:1\"]", "Flux"),
            ("[groups.a]\nimages = [\"A/b:1\"]", "A/b:1"),
            ("[groups.a]\nimages = []", "no images"),
            ("[groups.a]\nimage = [\"a\"]", "image"),
            ("[group.a]\nimages = [\"a\"]", "group"),
        ];
        for (text, needle) in cases {
            let e = Groups::parse(text, "g.toml").unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains("g.toml"), "{text:?} → {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn shipped_file_is_valid_and_has_the_issues_groups() {
        let groups = Groups::shipped().unwrap();
        for name in [
            "k3s",
            "kube-vip",
            "flux",
            "external-secrets",
            "tailscale",
            "rancher",
            "traefik",
            "cert-manager",
            "observability",
            "nfs",
        ] {
            let group = groups.get(name).unwrap_or_else(|| panic!("group {name}"));
            assert!(!group.description.is_empty(), "{name}");
        }
        let all: Vec<String> = groups
            .select(&[])
            .unwrap()
            .iter()
            .flat_map(|g| g.images.iter().map(ToString::to_string))
            .collect();
        for named_in_issue in [
            "ghcr.io/fluxcd/helm-controller:v1.5.1",
            "oci.external-secrets.io/external-secrets/external-secrets:v2.1.0",
            "ghcr.io/external-secrets/external-secrets:v2.1.0",
            "ghcr.io/tailscale/tailscale:v1.96.5",
            "quay.io/prometheus/node-exporter:v1.8.2",
            "docker.io/rancher/mirrored-library-busybox:1.37.0",
        ] {
            assert!(all.iter().any(|i| i == named_in_issue), "{named_in_issue}");
        }
        for image in groups.select(&[]).unwrap().iter().flat_map(|g| &g.images) {
            assert!(
                image.tag.is_some(),
                "{image}: pin a tag, not latest by default"
            );
            assert_ne!(image.tag.as_ref().unwrap().as_str(), "latest", "{image}");
        }
    }
}

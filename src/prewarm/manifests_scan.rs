//! `--from-manifests DIR`: every `image:` string in rendered Kubernetes YAML under DIR.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml_ng::Value;

use super::references::{ImageRef, ReferenceError};

/// Deep enough for a repo of kustomize overlays, shallow enough never to wander off.
const MAX_DEPTH: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(
        "cannot read {path}: {message}; pass a directory of rendered manifests to --from-manifests"
    )]
    Read { path: PathBuf, message: String },
    #[error("{path}: not valid YAML: {message}")]
    Yaml { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Reference {
        path: PathBuf,
        source: ReferenceError,
    },
    #[error("no `image:` references found in any *.yaml/*.yml under {0}")]
    Empty(PathBuf),
}

/// The deduplicated images under `dir`, in reference order.
pub fn scan(dir: &Path) -> Result<Vec<ImageRef>, ScanError> {
    let mut files = Vec::new();
    walk(dir, 0, &mut files)?;
    files.sort();
    let mut images = BTreeSet::new();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|e| ScanError::Read {
            path: path.clone(),
            message: e.to_string(),
        })?;
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = Value::deserialize(document).map_err(|e| ScanError::Yaml {
                path: path.clone(),
                message: e.to_string(),
            })?;
            let mut found = Vec::new();
            collect_images(&value, &mut found);
            for text in found {
                let image = text.parse().map_err(|source| ScanError::Reference {
                    path: path.clone(),
                    source,
                })?;
                images.insert(image);
            }
        }
    }
    if images.is_empty() {
        return Err(ScanError::Empty(dir.to_owned()));
    }
    Ok(images.into_iter().collect())
}

fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<(), ScanError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ScanError::Read {
        path: dir.to_owned(),
        message: e.to_string(),
    })?;
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir()
            && depth < MAX_DEPTH
            && !entry.file_name().to_string_lossy().starts_with('.')
        {
            walk(&path, depth + 1, out)?;
        } else if kind.is_file() && path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    Ok(())
}

/// Helm (`{{ }}`) and shell/envsubst (`${ }`) placeholders: not a reference yet.
fn templated(s: &str) -> bool {
    s.contains("{{") || s.contains("${")
}

/// String values of keys named `image`, anywhere in the tree; templated ones are skipped.
fn collect_images(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Mapping(map) => {
            for (key, child) in map {
                match (key.as_str(), child) {
                    (Some("image"), Value::String(s)) if !templated(s) && !s.trim().is_empty() => {
                        out.push(s.trim().to_string())
                    }
                    _ => collect_images(child, out),
                }
            }
        }
        Value::Sequence(items) => items.iter().for_each(|v| collect_images(v, out)),
        Value::Tagged(tagged) => collect_images(&tagged.value, out),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_images_from_rendered_yaml() {
        let dir = tempfile::tempdir().unwrap();
        let deploy = r#"
apiVersion: apps/v1
kind: Deployment
spec:
  template:
    spec:
      initContainers:
        - name: init
          image: docker.io/rancher/mirrored-library-busybox:1.37.0
      containers:
        - name: helm
          image: ghcr.io/fluxcd/helm-controller:v1.5.1
        - name: templated
          image: "{{ .Values.image }}"
        - name: envsubst
          image: ${IMAGE}
---
apiVersion: v1
kind: ConfigMap
data:
  image: busybox:1.37
"#;
        let values = "controller:\n  image: ghcr.io/fluxcd/helm-controller:v1.5.1\n  imagePullPolicy: IfNotPresent\n";
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/deploy.yaml"), deploy).unwrap();
        std::fs::write(dir.path().join("a/b/values.yml"), values).unwrap();
        std::fs::write(dir.path().join("README.md"), "image: not-yaml:1").unwrap();
        let images: Vec<String> = scan(dir.path())
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            images,
            [
                "docker.io/library/busybox:1.37",
                "docker.io/rancher/mirrored-library-busybox:1.37.0",
                "ghcr.io/fluxcd/helm-controller:v1.5.1",
            ]
        );
    }

    #[test]
    fn empty_and_missing_directories_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(scan(dir.path()), Err(ScanError::Empty(_))));
        assert!(matches!(
            scan(&dir.path().join("nope")),
            Err(ScanError::Read { .. })
        ));
    }
}
